"""The output folder of `qvgen train`: one run per folder, so a new run never overwrites or mixes with an
earlier one's model, checkpoints or metrics.

A folder that already holds anything is refused unless the run resumes it (``--resume``) or replaces it
(``--overwrite``: the outputs qvgen writes there, ``train/`` and ``quantized/``, are removed first; other
files are left alone).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qvgen_kernels.errors import fail

OUTPUTS = ("train", "quantized")


def claim_out_dir(out: str | Path, resume: bool, overwrite: bool, is_main: bool = True) -> Path:
    """Check (every rank) and prepare (rank 0) ``out`` for a run; see the module docstring."""
    out = Path(out)
    if resume and overwrite:
        fail("qvgen train", "--overwrite", "not together with --resume (one continues the run in --out, the "
             "other replaces it)", "both")
    if out.exists() and not out.is_dir():
        fail("qvgen train", "--out", "a folder", f"a file {out}")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not (resume or overwrite):
        fail("qvgen train", "--out", "an empty or new folder (pass --resume to continue the run there, or "
             "--overwrite to replace it)", f"{out} holding {entries[:5]}")
    if overwrite and is_main:
        for name in OUTPUTS:
            shutil.rmtree(out / name, ignore_errors=True)
    return out


__all__ = ["OUTPUTS", "claim_out_dir"]
