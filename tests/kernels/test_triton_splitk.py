"""Split K, the small-M launch table and the Hopper-only tiles of the Triton GEMM: bit-exact against the
unsplit kernel and the reference, the workspace left zero, and the table's choices.

Runs compiled on a GPU, else under TRITON_INTERPRET=1 on CPU (``conftest.py``).
"""

from __future__ import annotations

import math

import pytest
import torch

from qvgen_kernels import reference as ref
from tests.kernels._tc_cases import gemm_case, spy_workspaces, tc_gemm
from qvgen_kernels.triton._configs import HOPPER_GEMM_TILES

BITS = (3, 4, 8)


def _gemm(mod, dev, c: dict, w_bits: int, a_bits: int, k: int, split_k):
    """The tensor-core GEMM on the case's operands with the given K splits (None: the launch table's)."""
    return tc_gemm(mod, dev, c, w_bits, a_bits, k, split_k=split_k)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    tol = 1e-5 * (want.abs().max().item() + 1.0)
    assert (got.float() - want.float()).abs().max().item() <= tol


@pytest.mark.parametrize("w_bits", BITS)
@pytest.mark.parametrize("a_bits", BITS)
@pytest.mark.parametrize("mnk", ((1, 130, 300), (16, 67, 257), (19, 5, 513)))
def test_split_k_bit_identical(tk, w_bits, a_bits, mnk):
    """Every split (off, 2, 3, one per K tile, more than K tiles) gives the unsplit result bit for bit, and
    the reference's to fp32 rounding."""
    mod, dev = tk
    m, n, k = mnk
    c = gemm_case(m, n, k, w_bits, a_bits, seed=m * 7 + n + k + 10 * w_bits + a_bits)
    k_tiles = mod.layout.kernel_k(k) // 128
    base = _gemm(mod, dev, c, w_bits, a_bits, k, 1)
    _close(base, c["want"])
    for split in sorted({2, 3, k_tiles, k_tiles + 2}):
        assert torch.equal(_gemm(mod, dev, c, w_bits, a_bits, k, split), base), split


@pytest.mark.parametrize("w_bits,a_bits", ((4, 4), (3, 3), (8, 8), (4, 8)))
@pytest.mark.parametrize("split", (1, 2, 5))
def test_split_k_integer_core_exact(tk, w_bits, a_bits, split):
    """Unit scales, zero weight zero point, no bias: the output is the exact integer sum."""
    mod, dev = tk
    m, n, k = 16, 33, 640
    c = gemm_case(m, n, k, w_bits, a_bits, seed=split + w_bits, unit=True)
    got = _gemm(mod, dev, c, w_bits, a_bits, k, split)
    a = ref.unpack(c["a_packed"], a_bits, k).long() - c["a_zero"].long()[:, None]
    assert torch.equal(got, (a @ c["codes"].long().T).float())


def test_split_k_leaves_workspace_zero(tk, monkeypatch):
    mod, dev = tk
    seen = spy_workspaces(mod, monkeypatch)
    c = gemm_case(5, 200, 300, 4, 4, seed=3)
    for split in (2, 3):
        _close(_gemm(mod, dev, c, 4, 4, 300, split), c["want"])
    assert len(seen) == 2 and all(not w.any() for w in seen)


def test_table_split_through_the_public_ops(tk):
    """M = 16 at a K the launch table splits (2 output tiles on 132 SMs), through lowbit_gemm and
    prepacked_linear, per channel and per group (groups: no split)."""
    mod, dev = tk
    m, n, k = 16, 130, 2048
    launch = mod._configs.gemm_launch(m, n, k, 128, 4, 4, False)
    assert launch is not None and launch.split_k > 1
    c = gemm_case(m, n, k, 4, 4, seed=11)
    t = {name: v.to(dev) for name, v in c.items() if isinstance(v, torch.Tensor)}
    got = mod.lowbit_gemm(t["a_packed"], t["a_scale"], t["a_zero"], t["a_rowsum"], t["w_packed"], t["w_scale"],
                          t["w_zero"], t["bias"], 4, 4, k, torch.float32)
    _close(got.cpu(), c["want"])
    clo, chi = torch.ones(m), torch.full((m,), 0.9)
    for groups in (1, 4):
        shape = (n,) if groups == 1 else (n, groups)
        scale, zero = 0.01 + torch.rand(shape), 15 * torch.rand(shape)
        weights = mod.prepack_weight(t["w_packed"], scale.to(dev), zero.to(dev), 4, 4, k)
        got = mod.prepacked_linear(t["x"], weights, t["bias"], 4, 4, k, n, clo.to(dev), chi.to(dev))
        _close(got.cpu(), ref.lowbit_linear(c["x"], c["w_packed"], scale, zero, c["bias"], 4, 4, clo, chi))


# ------------------------------------------------------------------------------------------ the table

def test_launch_table_small_m_fills_the_gpu(tk):
    mod, _ = tk
    cfg = mod._configs
    for m, k, n in ((16, 5120, 13824), (16, 13824, 5120), (1, 1536, 1536), (256, 13824, 5120)):
        launch = cfg.gemm_launch(m, n, k, 128, 4, 4, False, sms=132)
        resident = next(t[5] for t in cfg.SMALL_M_TILES if t[1] == launch.block_m)
        tiles = math.ceil(m / launch.block_m) * math.ceil(n / 128)
        k_tiles = k // 128
        assert launch.split_k == 1 or k_tiles // launch.split_k >= cfg.SPLIT_K_MIN_K_TILES
        assert tiles * launch.split_k <= 2 * 132 * resident + tiles
        # every SM has work, as far as splits of >= SPLIT_K_MIN_K_TILES K tiles allow
        assert tiles * launch.split_k >= min(132, tiles * (k_tiles // cfg.SPLIT_K_MIN_K_TILES)), (m, k, n, launch)
    # M = 16 at the Wan-14B FFN down projection: 40 output tiles would leave 92 of 132 SMs idle.
    assert cfg.gemm_launch(16, 5120, 13824, 128, 4, 4, False, sms=132).split_k >= 4


def test_launch_table_rules(tk):
    mod, _ = tk
    cfg = mod._configs
    assert cfg.gemm_launch(cfg.SMALL_M_MAX + 1, 5120, 5120, 128, 4, 4, False) is None     # autotuned
    assert cfg.gemm_launch(16, 5120, 5120, 128, 4, 4, True) is None                       # groups
    with pytest.raises(ValueError, match="split_k"):
        cfg.gemm_launch(16, 5120, 5120, 128, 4, 4, True, split_k=2)
    assert cfg.gemm_launch(4096, 64, 5120, 128, 4, 4, False, split_k=3).split_k == 3       # override
    assert cfg.gemm_launch(16, 256, 128, 128, 4, 4, False).split_k == 1                    # one K tile
    big = cfg.gemm_launch(200, 13824, 5120, 128, 8, 8, False, shared_limit=99 * 1024)
    assert cfg.gemm_shared_bytes(big.block_m, 128, big.num_stages, 8) <= 99 * 1024 and big.num_stages >= 3
    for m in (1, 16, 17, 32, 33, 256):
        bm = cfg.gemm_launch(m, 4096, 4096, 128, 4, 4, False).block_m
        assert bm >= min(m, 64) and bm in {t[1] for t in cfg.SMALL_M_TILES}


def test_launch_table_sm90(tk):
    """On sm_90 the 3/4-bit variants take the one-warpgroup 128-token tile above 64 tokens; 8-bit operands
    and older devices keep the common table."""
    mod, _ = tk
    cfg = mod._configs
    for m, want in ((16, 16), (64, 64), (65, 128), (256, 128)):
        assert cfg.gemm_launch(m, 5120, 13824, 128, 4, 4, False, capability=90).block_m == want
        assert cfg.gemm_launch(m, 5120, 13824, 128, 3, 3, False, capability=90).block_m == want
    assert cfg.gemm_launch(256, 5120, 13824, 128, 4, 8, False, capability=90).block_m == 64
    assert cfg.gemm_launch(256, 5120, 13824, 128, 4, 4, False, capability=89).block_m == 64
    hopper = {t[:4] for t in cfg.HOPPER_GEMM_TILES}
    assert all(t[1:5] in hopper or t[1:] in {r[1:] for r in cfg.SMALL_M_TILES} for t in cfg.SMALL_M_TILES_SM90)
    # M = 256 at the Wan-14B FFN down projection: 80 output tiles of 128 tokens, split to fill 2 x 132 slots.
    launch = cfg.gemm_launch(256, 5120, 13824, 128, 4, 4, False, sms=132, capability=90)
    assert launch.split_k == 3


@pytest.mark.parametrize("w_bits,a_bits", ((4, 4), (3, 3), (8, 8)))
def test_large_m_autotuned_path(tk, w_bits, a_bits):
    """Above SMALL_M_MAX the autotuner's launch (no split) runs; same result as a forced split."""
    mod, dev = tk
    m, n, k = mod._configs.SMALL_M_MAX + 7, 9, 300
    assert mod._configs.gemm_launch(m, n, 384, 128, w_bits, a_bits, False) is None
    c = gemm_case(m, n, k, w_bits, a_bits, seed=w_bits * a_bits)
    got = _gemm(mod, dev, c, w_bits, a_bits, k, None)
    assert mod.gemm_tc.last_launch().startswith("autotuned: BLOCK_M")  # what benchmarks report as run
    _close(got, c["want"])
    assert torch.equal(got, _gemm(mod, dev, c, w_bits, a_bits, k, 3))
    assert mod.gemm_tc.last_launch().endswith("SPLIT_K 3")


@pytest.mark.parametrize("tile", HOPPER_GEMM_TILES)
@pytest.mark.parametrize("w_bits,a_bits", ((4, 4), (3, 3)))
def test_hopper_tiles(tk, tile, w_bits, a_bits):
    """The sm_90-only autotune tiles (one warpgroup on 128 tokens), forced: M across two token tiles, odd N / K."""
    mod, dev = tk
    bm, warps, stages, swizzle = tile
    m, n, k = bm + 5, 131, 300
    c = gemm_case(m, n, k, w_bits, a_bits, seed=bm + w_bits)
    from qvgen_kernels.triton.gemm import _act_operand

    weights = mod.prepack_weight(c["w_packed"].to(dev), c["w_scale"].to(dev), c["w_zero"].to(dev), w_bits, a_bits, k)
    a8, sums = _act_operand(c["a_packed"].to(dev), c["a_zero"].to(dev), a_bits, k, False)
    base = _gemm(mod, dev, c, w_bits, a_bits, k, None)
    _close(base, c["want"])
    for split in (1, 2, 3):     # the sm_90 launch table runs this tile with split K as well
        launch = mod._configs.GemmLaunch(bm, warps, stages, swizzle, split)
        got = mod.gemm_tc.tc_gemm(a8, c["a_scale"].to(dev), c["a_zero"].to(dev), sums, *weights, c["bias"].to(dev),
                                  w_bits, a_bits, k, n, torch.float32, launch=launch).cpu()
        assert torch.equal(got, base), split


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", ((16, 13824, 5120), (16, 5120, 13824), (256, 13824, 5120), (1, 1536, 1536)))
def test_split_k_at_model_shapes_gpu(tk, m, k, n):
    """The launch table's split at Wan shapes, hundreds of programs racing on the workspace: bit-identical
    to the unsplit kernel (itself checked against the reference by the small shapes above), launch after
    launch on the stream's kept workspace (each launch must leave it zero for the next: a race in the sums or in
    the reset shows as a difference)."""
    mod, dev = tk
    if dev != "cuda":
        pytest.skip("needs a CUDA GPU")
    launch = mod._configs.gemm_launch(m, n, mod.layout.kernel_k(k), 128, 4, 4, False,
                                      sms=torch.cuda.get_device_properties(0).multi_processor_count)
    assert launch is not None and launch.split_k > 1
    c = gemm_case(m, n, k, 4, 4, seed=m + k, want=False)
    base = _gemm(mod, dev, c, 4, 4, k, 1)
    for _ in range(5):
        assert torch.equal(_gemm(mod, dev, c, 4, 4, k, None), base)
