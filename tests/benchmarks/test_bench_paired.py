"""Paired statistics and the mechanism tables of the quality report, on hand-made runs."""

import math

import pytest

from benchmarks.quality import mechanism
from benchmarks.quality.paired import Paired, paired, t975


def _run(label, bits, seed, mse, steps=4, rank=None):
    method = label.split()[0]
    ranks = rank or [0] * steps
    return {"label": label, "seed": seed, "denoise_mse": mse, "bytes": 1024,
            "spec": {"method": method, "bits": bits, "rank": 2},
            "log": {"train_seconds": 1.0, "rank": ranks, "grad_norm_weights": [1.0 if method == "lsq" else 0.5] * steps,
                    "curve": [{"step": i, "frac": i / steps, "phi_free": mse, "with_phi": mse} for i in range(steps + 1)],
                    "decomposition_init": {"both": 1.0, "weights": 0.3, "acts": 0.7},
                    "decomposition_end": {"both": mse, "weights": 0.2, "acts": 0.6}}}


def test_paired_interval_and_signs():
    p = Paired((-2.0, -4.0, -3.0))
    assert p.n == 3 and p.mean == -3.0 and p.lower == 3
    assert p.half_width == pytest.approx(t975(2) * 1.0 / math.sqrt(3))
    assert p.verdict == "lower"
    assert Paired((-1.0, 1.0)).verdict == "not resolved" and Paired((1.0,)).half_width == math.inf
    with pytest.raises(ValueError, match="df"):
        t975(0)


def test_tables_from_runs():
    runs = []
    for seed, (a, b) in enumerate([(1.0, 0.9), (1.0, 0.95), (2.0, 1.9)]):
        runs += [_run("lsq W3A3", "w3a3", seed, a), _run("qvgen r2 end0.5 W3A3", "w3a3", seed, b, rank=[2, 1, 0, 0])]
    text, found = mechanism.paired_table(runs)
    p = found[("W3A3", "qvgen r2 end0.5 W3A3")]
    assert p.lower == 3 and p.mean < 0 and "qvgen r2 end0.5 W3A3" in text
    assert "r2 [0, 1): 0.50" in mechanism.grad_ratio_table(runs) and "r0 [2, 4)" in mechanism.grad_ratio_table(runs)
    assert "| 0% |" in mechanism.convergence_table(runs)
    assert "0.3000" in mechanism.decomposition_table(runs)
    assert "1.00x" in mechanism.cost_table(runs)
    line = mechanism.verdict_lines(runs, 60)[0]  # -10%, -5%, -5%: 3 of 3 lower, but t(2) keeps 0 inside
    assert line.startswith("60 steps, W3A3: qvgen r2 end0.5 W3A3: no resolved difference") and "(3/3 lower)" in line
    assert paired(runs, "lsq W3A3", "missing") is None
