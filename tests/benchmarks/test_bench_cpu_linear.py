"""Smoke run of benchmarks.bench_cpu_linear into a tmp dir: every provider timed at every shape, ratios
consistent with the times, the markdown table and the plot written, the CPU identified."""

from __future__ import annotations

import json

from benchmarks import bench_cpu_linear


def test_cpu_linear_smoke(tmp_path) -> None:
    bench_cpu_linear.main(["--smoke", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "linear_bench_smoke.json").read_text())
    assert (tmp_path / "linear_bench_smoke.png").stat().st_size > 0
    md = (tmp_path / "linear_bench_smoke.md").read_text()
    assert doc["provenance"]["command"].startswith("python -m ") and "isa" in doc["cpu"]
    expected = {"fp32", "bf16", "int_mm", "onednn_qlinear", "reference"}
    expected |= {f"w{w}a{a}{s}" for w, a in bench_cpu_linear.BITS for s in ("", ":gemm")}
    for label in ("33×64×48", "5×1×24"):
        rows = [r for r in doc["rows"] if f"{r['m']}×{r['k']}×{r['n']}" == label]
        assert {r["provider"] for r in rows} == expected and label in md
        bf16 = next(r for r in rows if r["provider"] == "bf16")
        for r in rows:
            assert r["ms"] > 0 and abs(r["vs_bf16"] - bf16["ms"] / r["ms"]) < 1e-9 * r["vs_bf16"]
    assert [m["cpu_int8_layout_bytes"] for m in doc["memory"]] == [48 * 64 + 3 * 48 * 4, 24 * 2 + 3 * 24 * 4]
