"""The static estimate's arithmetic on hand-built kernel designs (no compiler): each expected figure is worked
out by hand from the model in ``benchmarks/static_estimate.py`` and the H200 basis ``HW``."""

from __future__ import annotations

import math

import pytest

from benchmarks import static_estimate as se

CLK = se.HW["clock_hz"]


def _design(**kw) -> se.Design:
    base = dict(kernel="test", name="t", tile_rows=128, tile_tokens=256, block_k=128, stages=3, mma_warpgroups=2,
                threads=256, registers=240, shared_bytes=100 * 1024, w_bits=4, group_size=-1, persistent=False,
                macs_per_warpgroup=64 * 256 * 128, wgmma_n_bytes=256 * 128, waits_to_0=0, waits_pending=1,
                cta_barriers=0, loop_instructions=40, serial_instructions=40, prologue_instructions=0,
                epilogue_instructions=0, epilogue_load_rounds=1, register_operand_bytes=0)
    base.update(kw)
    return se.Design(**base)


def test_peak_basis():
    assert se.INT8_PEAK_OPS == pytest.approx(1.979e15, rel=1e-3)
    assert se.BF16_PEAK_FLOPS == pytest.approx(989.4e12, rel=1e-3)


def test_occupancy_limits():
    # 240 registers x 32 lanes = 7680 -> 7680 per warp (256-register units); 8 warps: 61440 of 65536 -> 1.
    assert se.occupancy(_design()) == 1
    # 4 warps at 128 registers: 16384 per CTA -> 4 by registers; 40 KB + 1 KB of shared memory -> 5; 4 wins.
    assert se.occupancy(_design(threads=128, registers=128, shared_bytes=40 * 1024)) == 4
    assert se.occupancy(_design(shared_bytes=230 * 1024)) == 0


def test_serialised_wait_and_barrier_cost():
    # One CTA, lockstep (a barrier per tile): T = 2 x 64*256*128 / 4096 = 1024 clk; S = 2 waits x (100 + 30)
    # + 3 barriers x 24 + 100 serial instructions x (8 warps / 4) = 260 + 72 + 200 = 532; busy = 1024 / 1556.
    d = _design(waits_to_0=2, waits_pending=0, cta_barriers=3, serial_instructions=100, loop_instructions=150)
    c = se.k_tile_cycles(d, 1)
    assert c["serial_clk"] == pytest.approx(532)
    assert c["tensor_busy"] == pytest.approx(1024 / 1556)
    assert c["sm_clk"] == pytest.approx(1556)
    assert c["bound"] == "tensor"


def test_in_flight_wait_hides_serial_work():
    # No barrier: each warpgroup is a unit (T = 512); S = 40 instructions x 1 warp per scheduler = 40 < 512,
    # and the wait leaves a group in flight: nothing exposed, the tensor pipe stays busy.
    c = se.k_tile_cycles(_design(), 1)
    assert c["exposed_serial_clk"] == 0
    assert c["tensor_busy"] == 1.0
    # The shared-memory leg: 256 x 128 activations + 128 x 128 / 2 nibbles + 2 x 32 KB wgmma reads = 106496 B.
    assert c["smem_bytes"] == 256 * 128 + 128 * 64 + 2 * 32768
    assert c["shared_memory_clk"] == pytest.approx(106496 / 128)


def test_compute_bound_large_shape():
    # 32768 x 4096 x 4096 (M x K x N): 128 x 32 = 4096 tiles, 32 K tiles of 1024 tensor clk each; one CTA per
    # SM -> 32 waves (4096 / 132 = 31.03); per tile 700 (prologue) + 32 x 1024 + 300 (epilogue) = 33768 clk.
    d = _design()
    e = se.estimate(d, 32768, 4096, 4096)
    assert e["tiles"] == 4096 and e["waves_or_tiles_per_cta"] == 32
    assert e["tile_latency_clk"] == 700 + 32 * 1024 + 300
    # 31 full waves, then 4 tiles on 4 SMs: one CTA per SM again.
    assert e["compute_s"] == pytest.approx(32 * 33768 / CLK)
    assert e["int8_peak_fraction"] == pytest.approx(2 * 32768 * 4096 * 4096 / (32 * 33768 / CLK) / se.INT8_PEAK_OPS)
    assert e["bound"] == "tensor"


def test_bytes_bound_small_m():
    # M = 16 at 16 x 5120 x 13824 with a cheap loop and 5 stages: per K tile max(tensor 64, load latency
    # 700 / 4 = 175) -> 700 + 40 x 175 + 300 = 8000 clk = 4.4 us, below the bytes: the 4-bit weights decide.
    # HBM bytes: a8 16 x 5120, weights 13824 x 5120 / 2, bf16 out 16 x 13824 x 2, vectors 12 x 16 + 12 x 13824
    # + 4 x 16.
    d = _design(tile_tokens=16, stages=5, macs_per_warpgroup=64 * 16 * 128, wgmma_n_bytes=16 * 128)
    e = se.estimate(d, 16, 13824, 5120)
    assert e["compute_s"] == pytest.approx(8000 / CLK)
    want = (16 * 5120 + 13824 * 5120 / 2 + 2 * 16 * 13824 + 12 * 16 + 12 * 13824 + 4 * 16) / 4.8e12
    assert e["hbm_s"] == pytest.approx(want)
    assert e["bound"] == "memory" and e["seconds"] == pytest.approx(want)
    # cuBLAS BF16 at this shape is bytes-bound too: 2 x (16 x 5120 + 13824 x 5120 + 16 x 13824) / 4.8 TB/s.
    cub = se.cublas_bf16_seconds(16, 13824, 5120)
    assert cub == pytest.approx(2 * (16 * 5120 + 13824 * 5120 + 16 * 13824) / 4.8e12)
    assert cub / e["seconds"] == pytest.approx(3.94, abs=0.01)


def test_latency_bound_few_ctas():
    # 40 CTAs for 132 SMs, each its own SM, a serialised loop: per K tile T = 64 x 16 x 128 x 2 / 4096 = 64,
    # S = 2 x 130 + 2 x 24 + 100 x 2 = 508 -> 572 clk per K tile, above the load-latency leg (700 / 2).
    d = _design(tile_tokens=16, macs_per_warpgroup=64 * 16 * 128, wgmma_n_bytes=16 * 128, waits_to_0=2,
                waits_pending=0, cta_barriers=2, serial_instructions=100, loop_instructions=120)
    e = se.estimate(d, 16, 5120, 13824)
    assert e["tiles"] == 40
    k_tiles = 13824 // 128
    assert e["compute_s"] == pytest.approx((700 + k_tiles * 572 + 300) / CLK)
    assert e["bound"] == "tensor" and e["compute_s"] > e["hbm_s"]


def test_persistent_pays_prologue_once():
    d = _design(persistent=True, prologue_instructions=400)
    e = se.estimate(d, 32768, 4096, 4096)
    per_cta = math.ceil(4096 / 132)
    assert e["compute_s"] == pytest.approx((400 * 2 + 700 + per_cta * (32 * 1024 + 300)) / CLK)


def test_cublas_compute_bound():
    m, n, k = 32760, 13824, 5120
    assert se.cublas_bf16_seconds(m, n, k) == pytest.approx(2 * m * n * k / (0.75 * se.BF16_PEAK_FLOPS))


def test_l2_to_sm_bound_binds():
    # 32768 x 4096 x 4096 (M x K x N) on 32-token tiles of one warpgroup: 1024 x 32 = 32768 tiles of 32 K tiles;
    # each K tile reads 32 x 128 int8 activations + 128 x 128 / 2 weight nibbles = 12288 B from L2:
    # 32768 x 32 x 12288 = 12884901888 B at 5120 B/clk x 1.83 GHz (9.3696 TB/s) = 1375.2 us, above the compute
    # (tensor work alone: 32768 tiles x 32 x 128 clk / 132 SMs = 556 us) and the HBM bytes.
    d = _design(tile_tokens=32, mma_warpgroups=1, threads=128, registers=96, shared_bytes=40 * 1024,
                macs_per_warpgroup=128 * 32 * 128, wgmma_n_bytes=2 * 32 * 128)
    e = se.estimate(d, 32768, 4096, 4096)
    assert e["tiles"] == 32768 and e["k_tiles"] == 32
    assert e["l2_to_sm_bytes"] == 32768 * 32 * 12288 == 12884901888
    assert se.HW["l2_bytes_per_clk"] == 5120
    assert e["l2_s"] == pytest.approx(12884901888 / (5120 * CLK))
    assert e["l2_s"] == pytest.approx(1375.2e-6, rel=1e-4)
    assert e["bound"] == "l2" and e["compute_s"] < e["l2_s"] and e["hbm_s"] < e["l2_s"]
    assert e["seconds"] == pytest.approx(e["l2_s"])
    assert e["int8_peak_fraction"] == pytest.approx(2 * 32768 * 4096 * 4096 / 1375.2e-6 / se.INT8_PEAK_OPS, rel=1e-4)
    # Sensitivity: at 6144 B/clk 1146.0 us, still above compute.
    e6 = se.estimate(d, 32768, 4096, 4096, l2_bytes_per_clk=6144)
    assert e6["seconds"] == pytest.approx(12884901888 / (6144 * CLK)) and e6["bound"] == "l2"


def test_l2_to_sm_bound_sensitivity():
    # The compute-bound case above (128 rows x 256 tokens, 2 warpgroups): 4096 tiles x 32 K tiles x (256 x 128
    # + 128 x 64) B = 5368709120 B. At 5120 B/clk that is 573.0 us, under the 590.5 us of compute (the tensor
    # leg decides); at 4096 B/clk it is 716.3 us and the L2 decides.
    d = _design()
    e = se.estimate(d, 32768, 4096, 4096)
    assert e["l2_to_sm_bytes"] == 4096 * 32 * (256 * 128 + 128 * 64) == 5368709120
    assert e["l2_s"] == pytest.approx(573.0e-6, rel=1e-3) and e["compute_s"] == pytest.approx(590.5e-6, rel=1e-3)
    assert e["bound"] == "tensor"
    e4 = se.estimate(d, 32768, 4096, 4096, l2_bytes_per_clk=4096)
    assert e4["l2_s"] == pytest.approx(5368709120 / (4096 * CLK)) == pytest.approx(716.3e-6, rel=1e-3)
    assert e4["bound"] == "l2" and e4["seconds"] == pytest.approx(e4["l2_s"])
    assert e4["int8_peak_fraction"] == pytest.approx(2 * 32768 * 4096 ** 2 / e4["l2_s"] / se.INT8_PEAK_OPS)


def test_committed_estimate_reports_the_l2_leg():
    """The committed estimate (benchmarks/results/static/estimate.json): every row carries its L2-to-SM leg at the
    basis's 5120 B/clk, names the L2 when it decides, and gives its prediction at 4096 and 6144 B/clk."""
    import json
    from pathlib import Path

    doc = json.loads((Path(se.__file__).parent / "results/static/estimate.json").read_text())
    assert doc["basis"]["l2_bytes_per_clk"] == 5120 and "assumption" in doc["basis"]["l2_bytes_per_clk_source"]
    assert doc["l2_to_sm_tb_per_s"] == pytest.approx(9.37, abs=0.01)
    for r in doc["results"]:
        e = r["detail"]
        assert e["l2_s"] == pytest.approx(e["l2_to_sm_bytes"] / (5120 * CLK))
        legs = {"l2": e["l2_s"], "memory": e["hbm_s"], "l2_atomics": e["l2_atomics_s"], "compute": e["compute_s"]}
        top = max(legs, key=legs.get)
        assert r["bound"] == top if top != "compute" else r["bound"] not in legs, r["shape"]
        assert set(r["l2_sensitivity"]) == {"4096", "6144"}
        low, high = r["l2_sensitivity"]["4096"], r["l2_sensitivity"]["6144"]
        assert low["int8_peak_fraction"] <= r["int8_peak_fraction"] <= high["int8_peak_fraction"], r["shape"]
    # The Gluon GEMM (both dots of a K tile in flight) is estimated where it runs: above the small-M table.
    gluon = {r["shape"] for r in doc["results"] if r["kernel"] == "triton-gluon"}
    assert gluon == {name for name, m, _, _ in se.SHAPES if m > 256}, gluon
    # The H200 run's Triton GEMM times beside the predictions, every large shape among them.
    assert {c["shape"] for c in doc["calibration"]} >= {"wan1.3b-attn", "wan14b-ffn-up", "wan14b-ffn-down"}
    assert all(c["measured_over_predicted"] > 0 for c in doc["calibration"])
    # The sm_90 tile of 256 weight rows reads 2/3 of the L2 bytes per MAC of the 128 x 128 tile: at the Wan-14B FFN
    # its L2 leg is under its compute (it does not bind), where the 128 x 128 tile's binds.
    designs = {d["name"]: se.Design(**d) for d in doc["designs"]}
    wide = designs["W4A4/per_channel/128x256x128/w8s4"]
    narrow = designs["W4A4/per_channel/128x128x128/w4s4"]
    for _, m, k, n in se.SHAPES[1:3]:
        ew, en = se.estimate(wide, m, n, k), se.estimate(narrow, m, n, k)
        assert ew["l2_to_sm_bytes"] == pytest.approx(en["l2_to_sm_bytes"] * 2 / 3)
        assert ew["bound"] != "l2" and en["bound"] == "l2"


def test_calibration_against_a_measured_run(tmp_path):
    """A measured Triton GEMM time sits beside the prediction rescaled to its SM clock: at 1.5x the basis clock the
    clock-bound legs take 2/3 of their time (the HBM leg keeps its own), measured / predicted and the implied L2 ->
    SM bytes per clock follow; rows of other shapes, providers, or too few tokens for CUDA events are left out."""
    import json

    d = _design(tile_tokens=32, mma_warpgroups=1, threads=128, registers=96, shared_bytes=40 * 1024,
                macs_per_warpgroup=128 * 32 * 128, wgmma_n_bytes=2 * 32 * 128)
    m, k, n = 32768, 4096, 4096
    e = se.estimate(d, m, n, k)
    results = [dict(kernel="triton", grouping="per_channel", shape="s", m=m, k=k, n=n, bound=e["bound"], detail=e)]
    clock_mhz = 1.5 * CLK / 1e6
    rows = [dict(provider="triton:deployed_gemm:w4a4", m=m, k=k, n=n, us=2000.0, sm_clock_mhz=clock_mhz),
            dict(provider="triton:deployed_gemm:w4a4", m=16, k=k, n=n, us=50.0, sm_clock_mhz=clock_mhz),
            dict(provider="bf16", m=m, k=k, n=n, us=900.0, sm_clock_mhz=clock_mhz)]
    (tmp_path / "gemm_bench.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / "deployed_breakdown.jsonl").write_text(
        json.dumps({"provenance": {}}) + "\n"
        + json.dumps(dict(m=m, k=k, n=n, provider="w4a4", kernels={"_tc_gemm_kernel": 1500.0})) + "\n")
    measured = se.measured_triton_gemm(tmp_path)
    assert [(r["m"], r["us"]) for r in measured] == [(m, 2000.0), (m, 1500.0)]
    cal = se.calibrate(results, measured)
    assert len(cal) == 2
    at_clock = max(e["compute_s"], e["l2_s"]) / 1.5
    assert e["hbm_s"] < at_clock and cal[0]["predicted_us_at_that_clock"] == pytest.approx(at_clock * 1e6, abs=0.01)
    assert cal[0]["measured_over_predicted"] == pytest.approx(2000e-6 / at_clock, abs=0.01)
    assert cal[0]["implied_l2_bytes_per_clk_if_l2_bound"] == round(e["l2_to_sm_bytes"] / (2000e-6 * 1.5 * CLK))
    # No clock recorded (profiler rows): the basis clock.
    assert cal[1]["predicted_us_at_that_clock"] == pytest.approx(e["seconds"] * 1e6, abs=0.01)
    assert cal[1]["implied_l2_bytes_per_clk_if_l2_bound"] == round(e["l2_to_sm_bytes"] / (1500e-6 * CLK))
