"""Smoke runs of the kernel benchmarks (benchmarks.bench_gemm, benchmarks.bench_fake_quant) into a tmp dir:
the JSON has provenance, peaks, one row per provider and shape, timings or a skip reason, roofline fields."""

from __future__ import annotations

import json

import pytest

from benchmarks import _kernels_common as kc
from benchmarks import bench_fake_quant, bench_gemm


def _load(path) -> dict:
    assert path.with_suffix(".png").stat().st_size > 0
    return json.loads(path.read_text())


def _check_provenance(doc: dict, module: str) -> None:
    prov = doc["provenance"]
    for key in ("device", "device_name", "torch", "triton", "commit", "command", "utc"):
        assert key in prov, key
    assert prov["command"].startswith("python -m ")
    assert prov["device"] == "cpu"
    peaks = doc["peaks"]
    assert peaks["bandwidth_gbs"] > 0
    assert peaks["peak_8bit_tops"] is None or peaks["peak_8bit_tops"] > 0


def _timed_or_skipped(row: dict) -> None:
    assert ("us" in row) != ("skipped" in row), row
    if "us" in row:
        assert row["p10_us"] <= row["us"] <= row["p90_us"] and row["repeats"] == 2
    else:
        assert row["skipped"]


def test_gemm_smoke(tmp_path) -> None:
    bench_gemm.main(["--smoke", "--device", "cpu", "--warmup", "1", "--repeats", "2", "--out", str(tmp_path)])
    doc = _load(tmp_path / "gemm_bench.json")
    _check_provenance(doc, "bench_gemm")
    rows = doc["rows"]
    shapes = {(r["m"], r["k"], r["n"]) for r in rows}
    assert shapes == {(s.m, s.k, s.n) for s in kc.gemm_shapes(smoke=True)}
    expected = {"bf16", "fp8_rowwise", "int8"} | {f"{b}:{mode}:w{w}a{a}" for b in bench_gemm.BACKENDS
                                                  for mode in bench_gemm.MODES for w, a in bench_gemm.BITS}
    for shape in shapes:
        assert {r["provider"] for r in rows if (r["m"], r["k"], r["n"]) == shape} == expected
    for r in rows:
        _timed_or_skipped(r)
        if "us" in r:
            flops = 2 * r["m"] * r["k"] * r["n"]
            assert r["tops"] == pytest.approx(flops / r["us"] / 1e6)
            assert r["speedup_vs_bf16"] > 0 and r["bytes_model"] > 0 and r["frac_bandwidth"] > 0
    # The reference and the extension's CPU kernels run everywhere; bf16 (fp32 here) always runs.
    ran = {r["provider"] for r in rows if "us" in r}
    assert {"bf16", "reference:gemm:w4a4", "reference:linear:w3a3"} <= ran
    assert all(r["speedup_vs_bf16"] == pytest.approx(1.0) for r in rows if r["provider"] == "bf16")


def test_fake_quant_smoke(tmp_path) -> None:
    bench_fake_quant.main(["--smoke", "--device", "cpu", "--warmup", "1", "--repeats", "2", "--out", str(tmp_path)])
    doc = _load(tmp_path / "fake_quant_bench.json")
    _check_provenance(doc, "bench_fake_quant")
    provs = {r["provider"] for r in doc["rows"]}
    assert provs == {f"{b}:{k}" for b in bench_fake_quant.BACKENDS for k in ("weight", "act")}
    for r in doc["rows"]:
        _timed_or_skipped(r)
        if "us" in r:
            rows_ = r["n"] if r["kind"] == "weight" else r["m"]
            assert r["bytes_model"] == 5 * rows_ * r["k"] * 4  # fp32 on CPU
    steps = {r["provider"]: r for r in doc["steps"]}
    assert {"step:nn.Linear", "step:qlinear[auto]", "step:qlinear[reference]"} <= set(steps)
    for r in steps.values():
        _timed_or_skipped(r)
    assert steps["step:qlinear[reference]"]["resolved_backend"] == "reference"
    assert steps["step:qlinear[auto]"]["x_faster_than_linear"] > 0


def test_bad_backend_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="bench_gemm"):
        bench_gemm.main(["--smoke", "--backends", "cublas", "--out", str(tmp_path)])
