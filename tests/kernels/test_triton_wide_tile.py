"""The sm_90 two-warpgroup tile of 256 weight rows (two layout blocks) x 128 tokens (``_configs.HOPPER_WIDE_GEMM_TILES``,
ROW_BLOCKS = 2), forced: bit-identical to the default launch and to the reference to fp32 rounding, on small and
odd shapes (M across two token tiles, N within one or across several 256-row tiles, including row blocks past
the last one that wrap), with and without split K; its workspace left zero.

Runs compiled on a GPU, else under TRITON_INTERPRET=1 on CPU (``conftest.py``).
"""

from __future__ import annotations

import pytest
import torch

from qvgen_kernels import reference as ref
from tests.kernels._tc_cases import gemm_case, spy_workspaces, tc_gemm
from qvgen_kernels.triton._configs import HOPPER_WIDE_GEMM_TILES, tile_key


def _gemm(mod, dev, c: dict, w_bits: int, a_bits: int, k: int, launch=None) -> torch.Tensor:
    return tc_gemm(mod, dev, c, w_bits, a_bits, k, launch=launch)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    tol = 1e-5 * (want.abs().max().item() + 1.0)
    assert (got.float() - want.float()).abs().max().item() <= tol


def _launch(mod, tile, split: int):
    bm, warps, stages, swizzle, row_blocks = tile_key(tile)
    return mod._configs.GemmLaunch(bm, warps, stages, swizzle, split, row_blocks)


def test_wide_tile_is_sm90_only_and_fits(tk):
    mod, _ = tk
    cfg = mod._configs
    for tile in HOPPER_WIDE_GEMM_TILES:
        assert tile_key(tile)[4] == 2
        assert tile in cfg.gemm_tiles(4, 4, False, 90) and tile in cfg.gemm_tiles(3, 3, False, 90)
        assert tile not in cfg.gemm_tiles(4, 4, False, 89) and tile not in cfg.gemm_tiles(4, 8, False, 90)
        assert tile not in cfg.gemm_tiles(4, 4, True, 90)
        # stages x (128 x 128 int8 activations + 128 x 128 weight bytes of 256 rows in nibbles) = 128 KiB
        assert cfg.gemm_shared_bytes(128, 128, 4, 4, 2) == 4 * (128 * 128 + 128 * 128) <= 227 * 1024


@pytest.mark.parametrize("tile", HOPPER_WIDE_GEMM_TILES)
@pytest.mark.parametrize("w_bits,a_bits", ((4, 4), (3, 3), (4, 8), (8, 8)))
@pytest.mark.parametrize("n", (131, 300, 1, 257))
def test_wide_tile_bit_identical(tk, tile, w_bits, a_bits, n):
    """N = 131 (one 256-row tile, its second layout block past N), 300 (the second tile's second block wraps to
    the first block of the weights), 1, 257 (one row past a tile); M across two token tiles, odd K."""
    mod, dev = tk
    m, k = tile_key(tile)[0] + 5, 300
    c = gemm_case(m, n, k, w_bits, a_bits, seed=n + 10 * w_bits + a_bits)
    base = _gemm(mod, dev, c, w_bits, a_bits, k)
    _close(base, c["want"])
    for split in (1, 2, 3):
        assert torch.equal(_gemm(mod, dev, c, w_bits, a_bits, k, _launch(mod, tile, split)), base), split


@pytest.mark.parametrize("tile", HOPPER_WIDE_GEMM_TILES)
@pytest.mark.parametrize("w_bits,a_bits", ((4, 4), (3, 3)))
def test_wide_tile_integer_core_exact(tk, tile, w_bits, a_bits):
    """Unit scales, zero weight zero point, no bias: the output is the exact integer sum."""
    mod, dev = tk
    m, n, k = 7, 389, 515
    c = gemm_case(m, n, k, w_bits, a_bits, seed=w_bits, unit=True)
    a = ref.unpack(c["a_packed"], a_bits, k).long() - c["a_zero"].long()[:, None]
    exact = (a @ c["codes"].long().T).float()
    for split in (1, 2):
        assert torch.equal(_gemm(mod, dev, c, w_bits, a_bits, k, _launch(mod, tile, split)), exact), split


def test_wide_tile_split_leaves_workspace_zero(tk, monkeypatch):
    mod, dev = tk
    seen = spy_workspaces(mod, monkeypatch)
    c = gemm_case(5, 300, 300, 4, 4, seed=3)
    for split in (2, 3):
        _close(_gemm(mod, dev, c, 4, 4, 300, _launch(mod, HOPPER_WIDE_GEMM_TILES[0], split)), c["want"])
    # two 256-row tiles x (256 x 128 partial sums + a counter)
    assert len(seen) == 2 and all(w.numel() == 2 * (256 * 128 + 1) and not w.any() for w in seen)
