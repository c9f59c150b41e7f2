"""`qvgen train --batch-size` is the global batch (gloo, 2 processes on CPU): DDP and FSDP2 runs at batch 2
log the loss of one process at batch 2 step by step, a batch the processes cannot share evenly is refused,
and FSDP2 warns about no view tensor returned by a sharded module."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "data")]

import global_batch_workers as w  # noqa: E402
import tiny_pipeline as tp  # noqa: E402
from gloo_workers import run_workers  # noqa: E402


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from qvgen.apps.cli import main

    root = tmp_path_factory.mktemp("global")
    dit = str(tp.make_wan_transformer(root / "dit"))
    run_workers(w.worker, dit, str(root), timeout=120)
    main(w.cli_args(dit, root / "single", 2))  # one process, batch 2
    return root, [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_log_the_loss_of_one_process(runs, mode):
    root, _ = runs
    ref, got = _losses(root / "single"), _losses(root / mode)
    assert len(got) == len(ref) == 3
    # Same samples, noise and timesteps; the loss differs only by fp32 summation order: the mean of the two
    # ranks' 1-row means instead of one 2-row mean, and (steps 1, 2) weights after gradients averaged by
    # all-reduce / reduce-scatter (~1e-7 apart). Measured 6.4e-8 relative; 1e-5 leaves room across BLAS
    # builds; another sample or noise draw, or rank 0's own loss, is far outside it.
    assert got == pytest.approx(ref, rel=1e-5, abs=0), mode


def test_batch_not_divisible_by_processes_is_refused(runs):
    _, per_rank = runs
    for r in per_rank:
        assert r["refused"] and "--batch-size" in r["refused"] and "multiple of the 2 processes" in r["refused"]


def test_fsdp_sharded_modules_return_no_view_tensor(runs):
    _, per_rank = runs
    for r in per_rank:
        assert r["view_warnings"] == {"ddp": [], "fsdp": []}
