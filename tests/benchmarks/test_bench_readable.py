"""Benchmarks people can read: speed ratios read "x faster than" (above 1 = faster) everywhere, every choice
is listed in --help, and a markdown table sits beside every JSON."""

from __future__ import annotations

import pytest

from benchmarks import bench_fake_quant, bench_load, bench_model, report_model
from benchmarks._ratios import x_faster


def _row(variant: str, ms: float) -> dict:
    return {"shape": "s", "scope": "model", "variant": variant, "module_bytes": 2**20,
            "latency": {"median_ms": ms, "p10_ms": ms, "p90_ms": ms}, "memory": {"peak_bytes": 2**20, "method": "m"}}


def test_x_faster_reads_above_one_as_faster():
    assert x_faster(10.0, 5.0) == 2.0 and x_faster(10.0, 20.0) == 0.5


def test_model_markdown_ratio_is_x_faster_than_fp():
    prov = {k: "x" for k in ("command", "device", "device_name", "cpu_count", "torch_threads", "torch", "commit",
                             "utc")}
    md = report_model.markdown({"provenance": prov, "dtype": "fp32", "batch": 1, "qat_rank": 32,
                                "rows": [_row("fp", 10.0), _row("w4a4-deploy", 5.0), _row("qat-fused", 40.0)]})
    assert "x faster than fp |" in md and "vs fp" not in md
    cells = {line.split("|")[3].strip(): line.split("|")[-2].strip() for line in md.splitlines()
             if line.startswith("| s |")}
    assert cells == {"fp": "1.00", "w4a4-deploy": "2.00", "qat-fused": "0.25"}


def test_bench_model_help_lists_every_choice(capsys):
    with pytest.raises(SystemExit):
        bench_model.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (*bench_model.VARIANTS, "block", "model", *bench_model.FULL, *bench_model.SMALL):
        assert name in text.replace("- ", "-"), name  # argparse may wrap at a hyphen


def test_fake_quant_markdown_and_ratio_direction():
    sh = {"model": "tiny", "layer": "ffn_up", "m": 2, "k": 4, "n": 8}
    rows = [{"provider": "reference:act", "us": 30.0, **sh},
            {"provider": "triton:act", "us": 10.0, "x_faster_than_reference": 3.0, "frac_bandwidth": 0.5, **sh},
            {"provider": "triton:weight", "skipped": "no GPU", **sh}]
    steps = [{"provider": "step:nn.Linear", "us": 10.0, "x_faster_than_linear": 1.0, **sh},
             {"provider": "step:qlinear[auto]", "us": 40.0, "x_faster_than_linear": 0.25, **sh}]
    md = bench_fake_quant.markdown({"dtype": "fp32", "bits": 4, "rows": rows, "steps": steps}, "cpu")
    assert "| tiny:ffn_up 2x4x8 | triton:act | 10.0 | 3.00 | 0.500 |" in md
    assert "| 2x4x8 | step:qlinear[auto] | 40.0 | 0.25 |" in md and "skipped: no GPU" in md


def test_bench_load_markdown():
    result = {"params": 215e6, "fp_bytes": 800 * 2**20, "q_bytes": 200 * 2**20,
              "fp": [{"load_s": 4.0, "rss_added_bytes": 900 * 2**20}, {"load_s": 2.0, "rss_added_bytes": 2**30}],
              "q": [{"load_s": 1.0, "rss_added_bytes": 300 * 2**20}, {"load_s": 1.0, "rss_added_bytes": 300 * 2**20}]}
    md = bench_load.markdown(result)
    assert "| FP (WanTransformer3DModel) | 800.0 | 3.00 | 1.00 | 962.0 |" in md
    assert "| W4A4 deployed (QuantizedWanTransformer3DModel) | 200.0 | 1.00 | 3.00 | 300.0 |" in md
