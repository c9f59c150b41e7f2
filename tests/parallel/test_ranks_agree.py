"""Decisions every rank takes together under torch.distributed (gloo, 2 processes): a non-finite input sample
is skipped at the same step on every rank, named by the rank holding it, and the ranks stay equal (no rank
stops alone in fake_quant_act); a Ctrl-C reaching one rank stops every rank at the same step boundary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).parent)]

import agree_workers as w  # noqa: E402
from gloo_workers import run_workers  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("agree")
    run_workers(w.agree, str(root), timeout=120)
    return root, [json.loads((root / f"results-{r}.json").read_text()) for r in range(2)]


def test_nan_sample_is_skipped_on_every_rank_and_named(results):
    tmp_path, (r0, r1) = results
    for r in (r0, r1):
        assert r["outcome"] == "ok" and r["finite"], r["outcome"]
        skips = [m for m in r["messages"] if "skipped" in m]
        assert len(skips) == 1 and f"step {w.BAD_STEP} skipped" in skips[0], r["messages"]
    assert f"sample(s) [{w.BAD_ROW}] of step {w.BAD_STEP}'s global batch (rows [1] on rank 1)" \
        in r1["messages"][0], r1["messages"]
    assert "held by another rank" in r0["messages"][0], r0["messages"]
    assert r0["state"] == r1["state"]  # the ranks took the same steps
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2] and metrics[1]["loss"] != metrics[1]["loss"]  # NaN: skipped


def test_an_interrupt_stops_every_rank_at_the_same_step(results):
    for r, got in enumerate(r["interrupted"] for r in results[1]):
        assert got.startswith("training interrupted at step 2 of 4; no checkpoint written yet"), (r, got)
