"""Triton pack / unpack and fused per-token quantization vs the reference: bit-exact.

Runs compiled on a GPU, else under TRITON_INTERPRET=1 on CPU (``conftest.py``).
"""

from __future__ import annotations


import pytest
import torch

from qvgen_kernels import reference as ref
from qvgen_kernels.format import padded_k, qmax

SHAPES_K = (1, 3, 5, 8, 67, 130)


@pytest.mark.parametrize("bits", (3, 4, 8))
@pytest.mark.parametrize("k", SHAPES_K)
def test_pack_unpack_match_reference(tk, bits, k):
    mod, dev = tk
    gen = torch.Generator().manual_seed(1000 * bits + k)
    codes = torch.randint(0, qmax(bits) + 1, (2, 3, k), generator=gen, dtype=torch.uint8)
    codes[0, 0] = qmax(bits)  # edge values: all-max and all-zero rows
    codes[0, 1] = 0
    packed = mod.pack(codes.to(dev), bits)
    assert torch.equal(packed.cpu(), ref.pack(codes, bits))
    assert torch.equal(mod.unpack(packed, bits, k).cpu(), codes)


def test_pack_3bit_format_example(tk):
    mod, dev = tk
    codes = torch.tensor([[5, 3, 7, 0, 1, 2, 6, 4]], dtype=torch.uint8, device=dev)
    assert mod.pack(codes, 3).cpu().tolist() == [[0x3D, 0x29, 0xC5]]


def test_pack_errors(tk):
    mod, dev = tk
    with pytest.raises(ValueError, match="pack.*codes.*\\[0, 15\\]"):
        mod.pack(torch.full((2, 4), 16, dtype=torch.uint8, device=dev), 4)
    with pytest.raises(TypeError, match="pack.*codes.*uint8"):
        mod.pack(torch.zeros(2, 4, dtype=torch.int32, device=dev), 4)
    with pytest.raises(ValueError, match="bits"):
        mod.pack(torch.zeros(2, 4, dtype=torch.uint8, device=dev), 5)
    with pytest.raises(ValueError, match="unpack.*packed.*shape"):
        mod.unpack(torch.zeros(2, 3, dtype=torch.uint8, device=dev), 4, 7)


def _act_rows(m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Random rows plus edge rows: all zero, constant, all positive, all negative, one outlier."""
    x = torch.randn(m, k, generator=gen) * 3
    edges = [torch.zeros(k), torch.full((k,), 0.7), x[0].abs(), -x[0].abs(), torch.zeros(k)]
    edges[4][k // 2] = 1e4
    return torch.cat([x, torch.stack(edges)])


def _clips(m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    clip_lo = 0.3 + 0.7 * torch.rand(m, generator=gen)
    clip_hi = 0.3 + 0.7 * torch.rand(m, generator=gen)
    clip_lo[0] = clip_hi[0] = 1.0
    return clip_lo, clip_hi


def _check_quantize(mod, dev: str, x: torch.Tensor, bits: int, gen: torch.Generator) -> None:
    clip_lo, clip_hi = _clips(x.shape[0], gen)
    got = mod.quantize_per_token(x.to(dev), bits, clip_lo.to(dev), clip_hi.to(dev))
    want = ref.quantize_per_token(x, bits, clip_lo, clip_hi)
    for name, g, w in zip(("packed", "scale", "zero", "rowsum"), got, want):
        assert g.dtype == w.dtype and torch.equal(g.cpu(), w), name


@pytest.mark.parametrize("bits", (3, 4, 8))
@pytest.mark.parametrize("k", SHAPES_K)
def test_quantize_per_token_bit_exact(tk, bits, k):
    mod, dev = tk
    gen = torch.Generator().manual_seed(7 * bits + k)
    _check_quantize(mod, dev, _act_rows(6, k, gen), bits, gen)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_quantize_per_token_half_inputs(tk, dtype):
    mod, dev = tk
    gen = torch.Generator().manual_seed(3)
    _check_quantize(mod, dev, _act_rows(9, 67, gen).to(dtype), 4, gen)


@pytest.mark.parametrize("bits", (3, 4, 8))
def test_quantize_per_token_two_pass(tk, bits, row_pass):
    """Rows longer than the single-pass limit take the chunked two-pass path."""
    mod, dev = tk
    row_pass(ROW_SINGLE_PASS_MAX_K=16)
    gen = torch.Generator().manual_seed(11 + bits)
    for k in (17, 130, 300):
        assert padded_k(k, bits) > 16
        _check_quantize(mod, dev, _act_rows(4, k, gen), bits, gen)


def test_quantize_per_token_no_rows(tk):
    mod, dev = tk
    none = torch.ones(0, device=dev)
    packed, scale, zero, rowsum = mod.quantize_per_token(torch.zeros(0, 5, device=dev), 3, none, none)
    assert packed.shape == (0, 3) and zero.shape == rowsum.shape == (0,)


def test_quantize_per_token_errors(tk):
    mod, dev = tk
    x = torch.randn(4, 8, device=dev)
    ones = torch.ones(4, device=dev)
    with pytest.raises(ValueError, match="quantize_per_token.*clip_lo.*\\(4,\\)"):
        mod.quantize_per_token(x, 4, torch.ones(3, device=dev), ones)
    with pytest.raises(ValueError, match="quantize_per_token.*'x'.*2-D"):
        mod.quantize_per_token(x[None], 4, ones, ones)
    with pytest.raises(TypeError, match="quantize_per_token.*'x'.*dtype"):
        mod.quantize_per_token(x.to(torch.int32), 4, ones, ones)
    with pytest.raises(ValueError, match="bits"):
        mod.quantize_per_token(x, 16, ones, ones)
