"""Triton packed low-bit GEMM vs the reference: exact integer core, fp32 epilogue.

Runs compiled on a GPU, else under TRITON_INTERPRET=1 on CPU (``conftest.py``).
"""

from __future__ import annotations

import pytest
import torch

from qvgen_kernels import reference as ref
from qvgen_kernels.format import qmax

BITS = (3, 4, 8)


def _operands(m: int, n: int, k: int, w_bits: int, a_bits: int, groups: int, seed: int,
              zero_rows: bool = False) -> dict:
    """Reference-quantized activations and random packed weights with their qparams (CPU)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    if zero_rows:
        x[::2] = 0.0
    ones = torch.ones(m)
    a_packed, a_scale, a_zero, a_rowsum = ref.quantize_per_token(x, a_bits, ones, 0.9 * ones)
    codes = torch.randint(0, qmax(w_bits) + 1, (n, k), generator=gen, dtype=torch.uint8)
    shape = (n,) if groups == 1 else (n, groups)
    w_scale = 0.01 + torch.rand(shape, generator=gen)
    w_zero = qmax(w_bits) * torch.rand(shape, generator=gen)
    return dict(a_packed=a_packed, a_scale=a_scale, a_zero=a_zero, a_rowsum=a_rowsum,
                w_packed=ref.pack(codes, w_bits), w_scale=w_scale, w_zero=w_zero)


def _run(fn, ops: dict, bias, w_bits, a_bits, k, out_dtype, dev="cpu"):
    t = {name: v.to(dev) for name, v in ops.items()}
    return fn(t["a_packed"], t["a_scale"], t["a_zero"], t["a_rowsum"], t["w_packed"], t["w_scale"],
              t["w_zero"], None if bias is None else bias.to(dev), w_bits, a_bits, k, out_dtype)


def _assert_close_fp32(got: torch.Tensor, want: torch.Tensor) -> None:
    # Same integer sums and the same fp32 epilogue order as the reference; only per-group fp32
    # accumulation and possible FMA contraction on GPU differ: a few ulp of the largest term.
    tol = 1e-5 * (want.abs().max().item() + 1.0)
    assert (got.cpu().float() - want.float()).abs().max().item() <= tol


@pytest.mark.parametrize("w_bits", BITS)
@pytest.mark.parametrize("a_bits", BITS)
@pytest.mark.parametrize("mnk", ((1, 1, 1), (3, 5, 67), (67, 130, 130)))
def test_gemm_matches_reference(tk, w_bits, a_bits, mnk):
    mod, dev = tk
    m, n, k = mnk
    ops = _operands(m, n, k, w_bits, a_bits, 1, seed=m * n + k + 10 * w_bits + a_bits)
    bias = torch.randn(n) if a_bits != w_bits else None
    got = _run(mod.lowbit_gemm, ops, bias, w_bits, a_bits, k, torch.float32, dev)
    want = _run(ref.lowbit_gemm, ops, bias, w_bits, a_bits, k, torch.float32)
    assert got.shape == (m, n) and got.dtype == torch.float32
    _assert_close_fp32(got, want)


@pytest.mark.parametrize("w_bits,a_bits", ((4, 4), (3, 3), (8, 8), (4, 8)))
@pytest.mark.parametrize("mnk", ((5, 3, 130), (67, 1, 5), (1, 67, 3)))
def test_gemm_integer_core_exact(tk, w_bits, a_bits, mnk):
    """Unit scales, zero weight zero point, no bias: the output is the exact integer sum."""
    mod, dev = tk
    m, n, k = mnk
    ops = _operands(m, n, k, w_bits, a_bits, 1, seed=m + n + k, zero_rows=True)
    ops.update(a_scale=torch.ones(m), w_scale=torch.ones(n), w_zero=torch.zeros(n))
    got = _run(mod.lowbit_gemm, ops, None, w_bits, a_bits, k, torch.float32, dev)
    a = ref.unpack(ops["a_packed"], a_bits, k).long() - ops["a_zero"].long()[:, None]
    exact = a @ ref.unpack(ops["w_packed"], w_bits, k).long().T
    assert torch.equal(got.cpu(), exact.float())  # |sums| < 2^24: exact in fp32


@pytest.mark.parametrize("w_bits,a_bits", ((4, 4), (3, 3), (8, 4), (4, 8), (8, 8)))
@pytest.mark.parametrize("k,groups", ((128, 2), (96, 3), (192, 2)))
def test_gemm_per_group(tk, w_bits, a_bits, k, groups):
    mod, dev = tk
    ops = _operands(37, 19, k, w_bits, a_bits, groups, seed=k + groups + w_bits, zero_rows=True)
    bias = torch.randn(19)
    got = _run(mod.lowbit_gemm, ops, bias, w_bits, a_bits, k, torch.float32, dev)
    _assert_close_fp32(got, _run(ref.lowbit_gemm, ops, bias, w_bits, a_bits, k, torch.float32))


@pytest.mark.parametrize("out_dtype", (torch.float16, torch.bfloat16))
def test_gemm_half_outputs(tk, out_dtype):
    mod, dev = tk
    ops = _operands(9, 11, 40, 4, 4, 1, seed=5)
    bias = torch.randn(11).to(out_dtype)
    got = _run(mod.lowbit_gemm, ops, bias, 4, 4, 40, out_dtype, dev)
    want = _run(ref.lowbit_gemm, ops, bias, 4, 4, 40, out_dtype)
    assert got.dtype == out_dtype
    # Both round the same fp32 value to out_dtype; fp32 differences of a few ulp can flip one
    # rounding step: one unit of the output dtype's precision.
    eps = torch.finfo(out_dtype).eps
    assert torch.allclose(got.cpu().float(), want.float(), rtol=eps, atol=eps)


def test_gemm_errors(tk):
    mod, dev = tk
    ops = _operands(4, 3, 40, 4, 4, 1, seed=0)
    with pytest.raises(TypeError, match="lowbit_gemm.*out_dtype"):
        _run(mod.lowbit_gemm, ops, None, 4, 4, 40, torch.int32, dev)
    with pytest.raises(ValueError, match="lowbit_gemm.*a_packed.*shape"):
        _run(mod.lowbit_gemm, ops, None, 4, 4, 43, torch.float32, dev)
    with pytest.raises(ValueError, match="lowbit_gemm.*a_scale.*\\(4,\\)"):
        _run(mod.lowbit_gemm, {**ops, "a_scale": torch.ones(5)}, None, 4, 4, 40, torch.float32, dev)
    with pytest.raises(ValueError, match="lowbit_gemm.*w_scale.*multiple of 32"):
        grouped = _operands(4, 3, 48, 4, 4, 3, seed=0)  # groups of 16 columns: no 8-bit MMA K tile
        _run(mod.lowbit_gemm, grouped, None, 4, 4, 48, torch.float32, dev)
    with pytest.raises(ValueError, match="lowbit_gemm.*bias"):
        _run(mod.lowbit_gemm, ops, torch.ones(4), 4, 4, 40, torch.float32, dev)
