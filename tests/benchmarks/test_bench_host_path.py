"""The host-path benchmark runs (its own process: it replaces the Triton backend's kernels with no-ops) and
writes one row per M with the call split into the backend's function and the dispatch around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_host_path_smoke(tmp_path) -> None:
    out = tmp_path / "host_path.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "benchmarks.bench_host_path", "--m", "16", "300", "--k", "256", "--n",
                    "384", "--repeats", "1", "--calls", "3", "--out", str(out)], cwd=ROOT, env=env, check=True,
                   timeout=300, capture_output=True)
    doc = json.loads(out.read_text())
    assert [r["m"] for r in doc["rows"]] == [16, 300]
    for r in doc["rows"]:
        assert r["call_us"] > 0 and r["backend_fn_us"] > 0
        assert abs(r["call_us"] - r["backend_fn_us"] - r["dispatch_us"]) < 0.2
    assert doc["provenance"]["command"].startswith("python -m benchmarks.bench_host_path")
