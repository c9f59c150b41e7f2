"""A non-finite input sample under torch.distributed (gloo, 2 processes): every rank skips the same step,
the rank holding the sample names it, and the ranks stay equal (no rank stops alone in fake_quant_act)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent)]

import nan_sample_workers as w  # noqa: E402
from gloo_workers import run_workers  # noqa: E402


def test_nan_sample_is_skipped_on_every_rank_and_named(tmp_path):
    run_workers(w.nan_sample, str(tmp_path), timeout=120)
    r0, r1 = (json.loads((tmp_path / f"results-{r}.json").read_text()) for r in range(2))
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
