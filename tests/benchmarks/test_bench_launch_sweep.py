"""The launch sweep runs end to end on the CPU through the Triton interpreter (its own process: the interpreter is
chosen when triton is imported): every candidate checked equal to the rule's output, a ``best`` line per shape
that names the rule's choice; and its plan lists the Wan shapes' candidates, the rule's first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-m", "benchmarks.bench_launch_sweep", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_launch_sweep_smoke(tmp_path) -> None:
    pytest.importorskip("triton")
    r = _run("--smoke", "--device", "cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "launch_sweep.jsonl").read_text().splitlines()]
    assert "provenance" in rows[0]
    cands = [r for r in rows[1:] if not r.get("best")]
    best = [r for r in rows[1:] if r.get("best")]
    assert {r["kernel"] for r in cands} == {"quantize", "gemm"} and len(best) == 2
    assert all(r.get("same_as_rule") is True and r["device_us"] > 0 for r in cands), cands
    assert sum(r["rule"] for r in cands) == 2
    for b in best:
        assert b["mismatches"] == 0 and b["timed"] == b["candidates"] >= 2 and b["rule_over_fastest"] >= 1.0


def test_launch_sweep_plan() -> None:
    pytest.importorskip("triton")
    r = _run("--plan")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "quantize wan-1.3b x 32760x1536: 14 tile candidates" in r.stdout
    assert "gemm wan-14b ffn_up m16 16x5120x13824: K splits [7, 1, 2, 4, 8, 16]" in r.stdout
