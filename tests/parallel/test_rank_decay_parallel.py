"""Rank decay under DDP and FSDP2 (gloo, 2 CPU processes): the same weights as one process on the same
global batch, through every re-SVD and the end of Phi, with the previous loss kept alive."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from qvgen import iter_qlinears

sys.path.insert(0, str(Path(__file__).parent))
import rank_decay_workers as w  # noqa: E402
from gloo_workers import run_workers  # noqa: E402


def test_rank_decay_parallel_matches_single_process(tmp_path):
    out = tmp_path / "state.pt"
    run_workers(w.worker, str(out), timeout=90)
    ref_model = w.make_model()
    w.train(ref_model, ref_model, 0, 1)
    ref = ref_model.state_dict()
    assert all(q.phi_l is None for _, q in iter_qlinears(ref_model))
    for mode in ("ddp", "fsdp"):
        got = torch.load(f"{out}.{mode}", weights_only=True)
        if mode == "fsdp":
            # Sharded Phi cannot be removed: it ends masked (zero factors, gamma 0); to_deploy drops it.
            phi = [k for k in got if "phi_" in k]
            assert phi and all(not got[k].any() for k in phi)
            got = {k: v for k, v in got.items() if "phi_" not in k}
        assert sorted(got) == sorted(ref)
        # The gradient of a 2-process mean is the all-reduced (summed, halved) per-rank gradient: fp32
        # summation order differs from one process, so 10 AdamW steps agree to ~1e-6, not bit for bit.
        for k, v in ref.items():
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, msg=f"{mode}: {k}")
