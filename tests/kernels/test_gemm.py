"""lowbit_gemm / lowbit_linear: exact integer core, fp32 epilogue within a stated bound, groups, dtypes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qvgen_kernels import ops
from qvgen_kernels.format import padded_k, qmax
from tests._utils import assert_close_verbose, id_formatter, seed_all

FP32_ULP = 2.0 ** -24


def _problem(m: int, n: int, k: int, a_bits: int, w_bits: int, groups: int, gen: torch.Generator,
             integral: bool = False) -> dict:
    """Random codes on the grid: activation codes / zero points, weight codes, scales and zeros."""
    q_x = torch.randint(0, qmax(a_bits) + 1, (m, k), generator=gen, dtype=torch.uint8)
    z_x = torch.randint(0, qmax(a_bits) + 1, (m,), generator=gen, dtype=torch.int32)
    q_w = torch.randint(0, qmax(w_bits) + 1, (n, k), generator=gen, dtype=torch.uint8)
    pshape = (n,) if groups == 0 else (n, groups)
    if integral:  # unit scales, integer zero points: the whole result is an exact integer
        s_x, s_w = torch.ones(m), torch.ones(pshape)
        z_w = torch.randint(0, qmax(w_bits) + 1, pshape, generator=gen).float()
    else:
        s_x = torch.rand(m, generator=gen) * 0.1 + 1e-3
        s_w = torch.rand(pshape, generator=gen) * 0.05 + 1e-3
        z_w = torch.rand(pshape, generator=gen) * qmax(w_bits)
    a = q_x.int() - z_x[:, None]
    return dict(q_x=q_x, z_x=z_x, q_w=q_w, s_x=s_x, s_w=s_w, z_w=z_w, rowsum=a.sum(1, dtype=torch.int32))


def _run(p: dict, a_bits: int, w_bits: int, bias, out_dtype=torch.float32, backend=None) -> torch.Tensor:
    k = p["q_x"].shape[1]
    pad = p["z_x"].to(torch.uint8)[:, None]  # activation padding uses code z_x (a = 0)
    a_codes = torch.cat([p["q_x"], pad.expand(-1, padded_k(k, a_bits) - k)], 1)
    return ops.lowbit_gemm(ops.pack(a_codes, a_bits), p["s_x"], p["z_x"], p["rowsum"], ops.pack(p["q_w"], w_bits),
                           p["s_w"], p["z_w"], bias, w_bits=w_bits, a_bits=a_bits, k=k, out_dtype=out_dtype,
                           backend=backend)


def _float64_terms(p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group float64 Y and the magnitude bound sum_g s_x s_w (|acc_g| + |z_w r_g|) of its terms."""
    a = p["q_x"].double() - p["z_x"].double()[:, None]
    q_w = p["q_w"].double()
    s_w = p["s_w"].double().reshape(q_w.shape[0], -1)
    z_w = p["z_w"].double().reshape(q_w.shape[0], -1)
    gs = a.shape[1] // s_w.shape[1]
    y = torch.zeros(a.shape[0], q_w.shape[0], dtype=torch.float64)
    mag = torch.zeros_like(y)
    for g in range(s_w.shape[1]):
        cols = slice(g * gs, (g + 1) * gs)
        acc, r = a[:, cols] @ q_w[:, cols].T, a[:, cols].sum(1, keepdim=True)
        y += s_w[:, g] * (acc - z_w[:, g] * r)
        mag += s_w[:, g] * (acc.abs() + (z_w[:, g] * r).abs())
    s_x = p["s_x"].double()[:, None]
    return s_x * y, s_x * mag


# Group sizes here are multiples of 32 (the models use 64 / 128; the Triton GEMM's 8-bit K tiles require it); odd
# group sizes are covered on the reference alone by test_odd_group_sizes_reference.
@pytest.mark.parametrize("a_bits, w_bits", [(4, 4), (3, 3), (8, 4), (8, 8), (4, 3)], ids=id_formatter("aw"))
@pytest.mark.parametrize("groups, k", [(0, 141), (1, 144), (3, 192)], ids=id_formatter("groups_k"))
def test_integer_core_exact(a_bits: int, w_bits: int, groups: int, k: int, backend: str) -> None:
    # |acc| < 2^24 at these K, and unit scales with integer zeros make every fp32 step exact.
    gen = seed_all(a_bits * 7 + w_bits + groups)
    p = _problem(9, 10, k, a_bits, w_bits, groups, gen, integral=True)
    want, _ = _float64_terms(p)
    assert_close_verbose(_run(p, a_bits, w_bits, None, backend=backend), want, atol=0.0)


def _check_epilogue(p: dict, a_bits: int, w_bits: int, gen: torch.Generator, backend=None) -> None:
    bias = torch.randn(p["q_w"].shape[0], generator=gen)
    want, mag = _float64_terms(p)
    got = _run(p, a_bits, w_bits, bias, backend=backend)
    # fp32 epilogue: float(acc), z_w * r, the difference, two scale products and the group sum each
    # round once, so |err| <= 8 ulp of the term magnitudes (+1 ulp of |Y + bias| for the bias add).
    tol = 8 * FP32_ULP * mag + FP32_ULP * (want + bias.double()).abs()
    err = (got.double() - (want + bias.double())).abs()
    assert (err <= tol).all(), f"max err/tol {float((err / tol).max())}"


@pytest.mark.parametrize("a_bits, w_bits", [(4, 4), (3, 3), (8, 4), (8, 8)], ids=id_formatter("aw"))
@pytest.mark.parametrize("mnk, groups", [((1, 1, 64), 0), ((1, 1, 64), 2), ((5, 3, 37), 0),
                                         ((13, 7, 128), 4), ((67, 24, 256), 0), ((67, 24, 256), 4)],
                         ids=id_formatter("mnk_groups"))
def test_epilogue_vs_float64(a_bits, w_bits, mnk, groups, backend: str) -> None:
    gen = seed_all(sum(mnk) + groups)
    _check_epilogue(_problem(*mnk, a_bits, w_bits, groups, gen), a_bits, w_bits, gen, backend)


@pytest.mark.parametrize("groups", [3, 7], ids=id_formatter("groups"))
def test_odd_group_sizes_reference(groups: int) -> None:
    gen = seed_all(groups)
    _check_epilogue(_problem(6, 5, 147, 4, 4, groups, gen), 4, 4, gen, "reference")


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32], ids=id_formatter("out"))
def test_out_dtype_is_the_fp32_result_cast(out_dtype: torch.dtype) -> None:
    gen = seed_all(5)
    p = _problem(5, 6, 33, 4, 4, 0, gen)
    bias = torch.randn(6, generator=gen).to(torch.bfloat16)
    got = _run(p, 4, 4, bias, out_dtype=out_dtype)
    assert got.dtype == out_dtype
    assert torch.equal(got, _run(p, 4, 4, bias.float()).to(out_dtype))


def test_bias_none_vs_zero_bias() -> None:
    p = _problem(4, 5, 16, 4, 4, 0, seed_all(6))
    assert torch.equal(_run(p, 4, 4, None), _run(p, 4, 4, torch.zeros(5)))


def _weights(n: int, k: int, bits: int, groups: int, gen: torch.Generator):
    w = torch.randn(n, k, generator=gen)
    wg = w.reshape(n, max(groups, 1), -1)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = (hi - lo) / qmax(bits)
    zero = -lo / scale
    if groups == 0:
        scale, zero = scale[:, 0], zero[:, 0]
    codes = ops.quantize_weight(w, scale, zero, bits)
    return ops.pack(codes, bits), scale, zero, ops.dequantize_weight(codes, scale, zero)


@pytest.mark.parametrize("bits", [(4, 4), (3, 3), (4, 8)], ids=id_formatter("wa"))
@pytest.mark.parametrize("groups", [0, 3], ids=id_formatter("groups"))
def test_linear_matches_fake_quant_math(bits, groups, backend: str) -> None:
    w_bits, a_bits = bits
    gen = seed_all(w_bits + a_bits + groups)
    x = torch.randn(2, 5, 96, generator=gen)
    w_packed, scale, zero, w_hat = _weights(24, 96, w_bits, groups, gen)
    bias = torch.randn(24, generator=gen)
    y = ops.lowbit_linear(x, w_packed, scale, zero, bias, w_bits, a_bits, 0.9, 0.95, backend=backend)
    assert y.shape == (2, 5, 24) and y.dtype == torch.float32
    want = F.linear(ops.fake_quant_act(x, a_bits, 0.9, 0.95).double(), w_hat.double(), bias.double())
    # Same codes on both sides; only fp32 rounding of the epilogue vs a float64 GEMM differs.
    assert_close_verbose(y, want, atol=2e-5 * float(want.abs().max()), rtol=1e-5)
    qx = ops.quantize_per_token(x, a_bits, 0.9, 0.95)
    direct = ops.lowbit_gemm(*qx, w_packed, scale, zero, bias, w_bits=w_bits, a_bits=a_bits, k=96,
                             out_dtype=torch.float32, backend=backend)
    assert torch.equal(y, direct)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=id_formatter("dtype"))
def test_weight_only(dtype: torch.dtype, backend: str) -> None:
    gen = seed_all(9)
    x = torch.randn(3, 4, 45, generator=gen).to(dtype)
    w_packed, scale, zero, w_hat = _weights(7, 45, 4, 0, gen)
    bias = torch.randn(7, generator=gen)
    y = ops.lowbit_linear(x, w_packed, scale, zero, bias, w_bits=4, a_bits=16, backend=backend)
    assert y.dtype == dtype and y.shape == (3, 4, 7)
    want = F.linear(x.double(), w_hat.double(), bias.double())
    # W_hat and bias are rounded once to dtype (unit roundoff u; 2u below covers it with margin), the sum
    # is accumulated in at least fp32 (K * 2^-24 per unit of magnitude), the result rounded once (u |y|).
    # With cancellation the error scales with sum_k |x_k| |W_hat_k| + |bias|, not with |y|.
    u = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -9, torch.float16: 2.0 ** -12}[dtype]
    mag = F.linear(x.double().abs(), w_hat.double().abs(), bias.double().abs())
    bound = (2 * u + 45 * FP32_ULP) * mag + 2 * u * want.abs()
    err = (y.double() - want).abs()
    assert bool((err <= bound).all()), f"max err/bound {float((err / bound).max()):.3f}"


def test_empty_tokens() -> None:
    w_packed, scale, zero, _ = _weights(6, 16, 4, 0, seed_all(3))
    assert ops.lowbit_linear(torch.zeros(0, 16), w_packed, scale, zero, None).shape == (0, 6)


def _err(call, exc: type, op: str, arg: str) -> None:
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).startswith(f"{op}:") and f"'{arg}'" in str(info.value), str(info.value)


_G = seed_all(11)
WP, WS, WZ, _ = _weights(6, 16, 4, 0, _G)
X = torch.randn(3, 16)
QX = ops.quantize_per_token(X, 4)


@pytest.mark.parametrize("kwargs, exc, arg", [
    (dict(x=torch.randn(3, 13)), ValueError, "w_packed"),
    (dict(x=X.int()), TypeError, "x"),
    (dict(x=X.double()), TypeError, "x"),
    (dict(x=X.clone().fill_(float("nan"))), ValueError, "x"),
    (dict(w_packed=WP.float()), TypeError, "w_packed"),
    (dict(w_packed=WP.reshape(-1)), ValueError, "w_packed"),
    (dict(w_scale=WS[:5]), ValueError, "w_scale"),
    (dict(w_scale=torch.ones(6, 3), w_zero=torch.ones(6, 3)), ValueError, "w_scale"),
    (dict(w_zero=WZ[:, None]), ValueError, "w_zero"),
    (dict(bias=torch.ones(5)), ValueError, "bias"),
    (dict(bias=torch.ones(6, dtype=torch.int32)), TypeError, "bias"),
    (dict(w_bits=5), ValueError, "w_bits"),
    (dict(a_bits=2), ValueError, "a_bits"),
    (dict(clip_lo=torch.ones(4)), ValueError, "clip_lo"),
    (dict(clip_hi=-0.5), ValueError, "clip_hi"),
])
def test_linear_bad_input(kwargs: dict, exc: type, arg: str) -> None:
    args = dict(x=X, w_packed=WP, w_scale=WS, w_zero=WZ, bias=None) | kwargs
    _err(lambda: ops.lowbit_linear(**args), exc, "lowbit_linear", arg)


@pytest.mark.parametrize("index, value, kw, exc, arg", [
    (0, QX[0][:, :-1], {}, ValueError, "a_packed"),
    (1, QX[1].int(), {}, TypeError, "a_scale"),
    (2, QX[2].float(), {}, TypeError, "a_zero"),
    (3, QX[3][:2], {}, ValueError, "a_rowsum"),
    (4, WP[:, :3], {}, ValueError, "w_packed"),
    (None, None, dict(out_dtype=torch.int32), TypeError, "out_dtype"),
    (None, None, dict(a_bits=16), ValueError, "a_bits"),
    (None, None, dict(k=0), ValueError, "k"),
    (None, None, dict(backend="nope"), ValueError, "backend"),
])
def test_gemm_bad_input(index, value, kw: dict, exc: type, arg: str) -> None:
    args = [*QX, WP, WS, WZ, None]
    if index is not None:
        args[index] = value
    kwargs = dict(w_bits=4, a_bits=4, k=16, out_dtype=torch.float32) | kw
    _err(lambda: ops.lowbit_gemm(*args, **kwargs), exc, "lowbit_gemm", arg)
