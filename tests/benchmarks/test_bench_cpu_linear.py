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
    # every byte of the layer: codes (the layout's own), int32 column sums, fp32 scale, zero, 2 clips, bf16 bias
    for mem, (k, n) in zip(doc["memory"], ((64, 48), (1, 24))):
        consts = 4 * n + 8 * n + 8 + 2 * n
        assert mem["w4a4_bytes"] == n * ((k + 1) // 2) + consts
        assert mem["w3a3_bytes"] == n * 3 * ((k + 7) // 8) + consts
        assert mem["w8a8_bytes"] == n * k + consts
        assert mem["w4a4_layout_bytes"] == n * ((k + 1) // 2) + 12 * n
    small = doc["small_call"]["rows"]
    assert [r["dtype"] for r in small] == ["float32", "bfloat16"] and all(r["deployed_us"] > 0 for r in small)
    assert "Small calls" in md
