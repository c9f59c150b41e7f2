"""The static estimate's split-K terms on a hand-built design (no compiler): each expected figure is worked out
by hand from the model in ``benchmarks/static_estimate.py`` and the H200 basis ``HW``."""

from __future__ import annotations

import pytest

from benchmarks import static_estimate as se

CLK = se.HW["clock_hz"]


def _design(**kw) -> se.Design:
    base = dict(kernel="test", name="t", tile_rows=128, tile_tokens=16, block_k=128, stages=3, mma_warpgroups=1,
                threads=128, registers=80, shared_bytes=22 * 1024, w_bits=4, group_size=-1, persistent=False,
                macs_per_warpgroup=64 * 16 * 128 * 2, wgmma_n_bytes=2 * 16 * 128, waits_to_0=2, waits_pending=0,
                cta_barriers=2, loop_instructions=120, serial_instructions=100, prologue_instructions=0,
                epilogue_instructions=0, epilogue_load_rounds=4, register_operand_bytes=0, split_k=True)
    base.update(kw)
    return se.Design(**base)


def test_split_k_m16():
    # 16 x 13824 x 5120 (M x K x N), 18 splits: 40 tiles x 18 = 720 programs of ceil(108 / 18) = 6 K tiles.
    # Occupancy 6 (80 registers: 10240 per CTA; 23 KB of shared memory -> 9) -> 792 slots: one partial wave,
    # ceil(720 / 132) = 6 per SM. Per K tile at 6 CTAs: tensor 6 x 64 / min(1, 6 x 64 / (64 + 408)) = 472,
    # issue 6 x 120 = 720, shared memory 6 x (16 x 128 + 128 x 64 + 2 x 16 x 128) / 128 = 672, latency 350:
    # 720. Prologue 700 (one HBM trip), epilogue 4 rounds x 300 = 1200, shared by 6: 6 x 720 + 1900 / 6.
    d = _design()
    assert se.occupancy(d) == 6
    e = se.estimate(d, 16, 5120, 13824, 18)
    assert e["tiles"] == 720 and e["k_tiles"] == 6
    assert e["compute_s"] == pytest.approx((6 * 720 + 1900 / 6) / CLK)
    # Reductions: 720 programs x 128 x 16 int32 at 768 B/clk; memset: 40 x (128 x 16 + 1) int32 at 4.8 TB/s.
    assert e["l2_atomics_s"] == pytest.approx(720 * 128 * 16 * 4 / (768 * CLK))
    assert e["workspace_memset_s"] == pytest.approx(40 * 2049 * 4 / 4.8e12)
    # The 4-bit weights' bytes still decide; the memset runs before the GEMM.
    assert e["bound"] == "memory"
    assert e["seconds"] == pytest.approx(e["hbm_s"] + e["workspace_memset_s"])


def test_split_k_needs_a_split_program():
    assert "error" in se.estimate(_design(split_k=False), 16, 5120, 13824, 2)
    # One split is the plain kernel: no reductions, no workspace.
    e = se.estimate(_design(split_k=False), 16, 5120, 13824, 1)
    assert e["l2_atomics_s"] == 0 and e["workspace_memset_s"] == 0 and e["tiles"] == 40


def test_split_k_atomics_leg_binds():
    # Many splits of a cheap loop: the reductions' bytes exceed HBM and compute and decide the time.
    d = _design(tile_tokens=64, registers=64, shared_bytes=16 * 1024, macs_per_warpgroup=64 * 64 * 128 * 2)
    e = se.estimate(d, 256, 13824, 5120, 27)
    assert e["bound"] == "l2_atomics"
    assert e["seconds"] == pytest.approx(e["l2_atomics_s"] + e["workspace_memset_s"])
    # 256 x 5120 x 13824: 4 x 108 tiles x 27 splits.
    assert e["l2_atomics_s"] == pytest.approx(4 * 108 * 27 * 128 * 64 * 4 / (768 * CLK))
