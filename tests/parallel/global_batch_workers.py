"""Workers of the global-batch test (importable: the processes are spawned)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

TRAIN = ["--steps", "3", "--rank", "2", "--no-progress", "--ckpt-every", "0", "--seed", "7"]
VIEW_WARNING = "returned a view tensor"


def cli_args(dit: str, out: Path, batch: int, *extra: str) -> list[str]:
    """`qvgen train` on random latents (no --data): the batch is drawn from the step's generator."""
    return ["train", "--model", dit, "--batch-size", str(batch), "--out", str(out), *TRAIN, *extra]


def worker(rank: int, world: int, dit: str, root: str) -> None:
    from qvgen.apps.cli import main

    root = Path(root)
    try:
        main(cli_args(dit, root / "odd", 3, "--parallel", "ddp"))
        refused = None
    except ValueError as e:
        refused = str(e)
    seen = {}
    for mode in ("ddp", "fsdp"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            main(cli_args(dit, root / mode, 2, "--parallel", mode))
        seen[mode] = [str(w.message) for w in caught if VIEW_WARNING in str(w.message)]
    (root / f"rank{rank}.json").write_text(json.dumps({"refused": refused, "view_warnings": seen}))
