"""Smoke run of benchmarks.bench_real_size (a 2-block, width-64 Wan): convert and load in fresh processes, every
figure written, the saved folder loaded by the plain diffusers class, the round trip output-identical."""

from __future__ import annotations

import json

from benchmarks import bench_real_size


def test_real_size_smoke(tmp_path) -> None:
    bench_real_size.main(["--smoke", "--bits", "w4a4", "--tokens", "64", "--text-tokens", "8", "--rounds", "1",
                          "--threads", "1", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "real_size_smoke.json").read_text())
    (row,) = doc["rows"]
    assert row["bits"] == "w4a4" and row["round_trip_identical"] is True
    assert row["loaded_class"] == "QuantizedWanTransformer3DModel"
    assert row["disk_bytes"] > 0 and row["resident_bytes"] > 0 and row["bf16_resident_bytes"] > 0
    assert abs(row["resident_vs_bf16"] - row["resident_bytes"] / row["bf16_resident_bytes"]) < 1e-12
    assert row["convert_peak_rss"] >= row["rss_before_convert"] and row["load_peak_rss"] >= row["rss_before_load"]
    for key in ("convert_s", "load_s", "first_forward_s", "forward_s", "bf16_forward_s", "mse_init_s_per_billion_params"):
        assert row[key] > 0, key
    md = (tmp_path / "real_size_smoke.md").read_text()
    assert "resident vs bf16" in md and "round trip output-identical | yes" in md


def test_real_configs_have_the_published_sizes() -> None:
    """The architectures the benchmark builds, on the meta device: Wan2.1-1.3B 1.419 B and Wan2.1-14B 14.29 B
    parameters (dim 5120 = 40 x 128, FFN 13824, 40 blocks)."""
    import torch
    sizes = {name: sum(p.numel() for p in bench_real_size.build(cfg, torch.device("meta")).parameters())
             for name, (_, cfg) in bench_real_size.MODELS.items() if name != "smoke"}
    assert round(sizes["wan2.1-1.3b"] / 1e9, 3) == 1.419 and round(sizes["wan2.1-14b"] / 1e9, 2) == 14.29
