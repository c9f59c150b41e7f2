"""Fake quant (QAT): codes identical to deployment, gradients against closed forms, gradcheck, errors."""

from __future__ import annotations

import pytest
import torch

from qvgen_kernels import ops, reference
from qvgen_kernels.format import ACT_EPS, qmax
from tests._utils import assert_close_verbose, id_formatter, seed_all

# Both implementations: the pure-autograd reference and the public custom op (registered autograd).
IMPLS = {
    "autograd": (lambda w, s, z, b, g: reference.fake_quant_weight(w, s, z, b, g),
                 lambda x, b, lo, hi: reference.fake_quant_act(x, b, lo, hi)),
    "custom_op": (lambda w, s, z, b, g: ops.fake_quant_weight(w, s, z, b, g),
                  lambda x, b, lo, hi: ops.fake_quant_act(x, b, lo, hi)),
}


def _weight_setup(n: int, k: int, groups: int, bits: int, dtype: torch.dtype, seed: int):
    gen = seed_all(seed)
    w = torch.randn(n, k, generator=gen, dtype=torch.float64)
    pshape = (n,) if groups == 0 else (n, groups)
    # A scale ~20% too small and a shifted zero point: some entries clamp at 0 and at P.
    scale = (w.abs().amax(1).reshape(n, *([1] * (groups > 0))) * 2 / qmax(bits) * 0.8).expand(pshape)
    zero = torch.full(pshape, qmax(bits) / 2) + torch.rand(pshape, generator=gen, dtype=torch.float64)
    return [t.to(dtype).contiguous().requires_grad_() for t in (w, scale, zero)]


def _expand(t: torch.Tensor, k: int) -> torch.Tensor:
    return t[:, None] if t.dim() == 1 else t.repeat_interleave(k // t.shape[1], 1)


def _closed_form_weight(grad, w, s, z, bits, g):
    """d w_hat for LSQ+: inside the range dw = 1, ds = round(v) - z - w/s, dz = 0; clamped at code c:
    dw = 0, ds = c - z, dz = -s. s / z gradients are summed per channel / group and scaled by g."""
    k = w.shape[1]
    se, ze = _expand(s.detach(), k), _expand(z.detach(), k)
    v = w.detach() / se + ze
    r = torch.round(v)
    inside = (r >= 0) & (r <= qmax(bits))
    d_s = torch.where(inside, r - ze - w.detach() / se, r.clamp(0, qmax(bits)) - ze)
    d_z = torch.where(inside, torch.zeros_like(se.expand_as(v)), -se.expand_as(v))
    red = (lambda t: t.sum(1)) if s.dim() == 1 else (lambda t: t.reshape(t.shape[0], s.shape[1], -1).sum(2))
    return grad * inside, g * red(grad * d_s), g * red(grad * d_z)


@pytest.mark.parametrize("impl", IMPLS, ids=id_formatter("impl"))
@pytest.mark.parametrize("bits", [3, 4, 8], ids=id_formatter("bits"))
@pytest.mark.parametrize("groups", [0, 4], ids=id_formatter("groups"))
def test_weight_gradients_closed_form(impl: str, bits: int, groups: int) -> None:
    w, s, z = _weight_setup(12, 48, groups, bits, torch.float64, bits + groups)
    grad = torch.randn(12, 48, dtype=torch.float64)
    IMPLS[impl][0](w, s, z, bits, 0.3).backward(grad)
    want = _closed_form_weight(grad, w, s, z, bits, 0.3)
    for got, exp in zip((w.grad, s.grad, z.grad), want):
        assert_close_verbose(got, exp, rtol=1e-12, atol=1e-12)  # fp64 both sides: rounding noise only
    assert 0 < int((w.grad == 0).sum()) < w.numel()  # the STE mask is exercised on both sides


def _closed_form_act(grad, x, bits, lo_c, hi_c):
    """Per token: inside dx = 1, ds = round(x/s) - x/s; clamped at c: dx = 0, ds = c - z.
    ds/dc_hi = max(0, max x) / P and ds/dc_lo = -min(0, min x) / P unless s sits at its floor."""
    p = qmax(bits)
    mn, mx = x.amin(1).clamp_max(0), x.amax(1).clamp_min(0)
    raw = (hi_c * mx - lo_c * mn) / p
    s = raw.clamp_min(ACT_EPS)
    z = torch.round(-lo_c * mn / s).clamp(0, p)
    r = torch.round(x / s[:, None]) + z[:, None]
    inside = (r >= 0) & (r <= p)
    d_s = torch.where(inside, r - z[:, None] - x / s[:, None], r.clamp(0, p) - z[:, None])
    d_s = (grad * d_s).sum(1) * (raw >= ACT_EPS)
    return grad * inside, -d_s * mn / p, d_s * mx / p


@pytest.mark.parametrize("impl", IMPLS, ids=id_formatter("impl"))
@pytest.mark.parametrize("bits", [3, 4, 8], ids=id_formatter("bits"))
def test_act_gradients_closed_form(impl: str, bits: int) -> None:
    gen = seed_all(bits)
    x = (torch.randn(7, 33, generator=gen, dtype=torch.float64) + 0.3).requires_grad_()
    x.data[3] = 0.0  # zero-range token: scale at its floor, no clip gradient
    lo = torch.rand(7, generator=gen, dtype=torch.float64).mul(0.5).add(0.5).requires_grad_()
    hi = torch.rand(7, generator=gen, dtype=torch.float64).mul(0.5).add(0.5).requires_grad_()
    grad = torch.randn(7, 33, generator=gen, dtype=torch.float64)
    IMPLS[impl][1](x, bits, lo, hi).backward(grad)
    want = _closed_form_act(grad, x.detach(), bits, lo.detach(), hi.detach())
    for got, exp in zip((x.grad, lo.grad, hi.grad), want):
        assert_close_verbose(got, exp, rtol=1e-12, atol=1e-12)  # fp64 both sides
    assert lo.grad[3] == 0 and hi.grad[3] == 0 and 0 < int((x.grad == 0).sum()) < x.numel()


def test_custom_op_matches_autograd_fp32() -> None:
    w, s, z = _weight_setup(16, 64, 0, 4, torch.float32, 1)
    w2, s2, z2 = (t.detach().clone().requires_grad_() for t in (w, s, z))
    grad = torch.randn(16, 64)
    ops.fake_quant_weight(w, s, z, 4, 0.05).backward(grad)
    reference.fake_quant_weight(w2, s2, z2, 4, 0.05).backward(grad)
    assert torch.equal(w.grad == 0, w2.grad == 0)  # the same STE mask
    # Autograd forms (g * s) / s, the closed form passes g: at most 2 fp32 roundings apart.
    assert_close_verbose(w.grad, w2.grad, rtol=2 ** -22)
    # Per-channel sums of 64 fp32 terms, evaluated in different orders: rtol 1e-5, atol for near-zero sums.
    assert_close_verbose(s.grad, s2.grad, rtol=1e-5, atol=1e-6)
    assert_close_verbose(z.grad, z2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [3, 4, 8], ids=id_formatter("bits"))
@pytest.mark.parametrize("groups", [0, 2], ids=id_formatter("groups"))
def test_weight_fake_quant_equals_deploy(bits: int, groups: int) -> None:
    w, s, z = (t.detach() for t in _weight_setup(10, 40, groups, bits, torch.float32, 7))
    deploy = ops.dequantize_weight(ops.quantize_weight(w, s, z, bits), s, z)
    assert torch.equal(ops.fake_quant_weight(w, s, z, bits), deploy)
    assert torch.equal(reference.fake_quant_weight(w, s, z, bits, 0.01), deploy)


@pytest.mark.parametrize("bits", [3, 4, 8], ids=id_formatter("bits"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=id_formatter("dtype"))
def test_act_fake_quant_equals_deploy(bits: int, dtype: torch.dtype, backend: str) -> None:
    gen = seed_all(bits)
    x = (torch.randn(2, 9, 37, generator=gen) * 3).to(dtype)
    packed, scale, zero, _ = ops.quantize_per_token(x, bits, 0.9, 0.8, backend=backend)
    codes = reference.unpack(packed.reshape(18, -1), bits, 37)
    deploy = reference.dequantize_act(codes, scale.reshape(18), zero.reshape(18)).reshape(2, 9, 37)
    got = ops.fake_quant_act(x, bits, 0.9, 0.8, backend=backend)
    assert got.dtype == dtype and torch.equal(got, deploy.to(dtype))


def test_round_ste_and_grad_scale() -> None:
    v = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5], requires_grad=True)
    out = reference.round_ste(v)
    assert out.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]
    out.sum().backward()
    assert v.grad.tolist() == [1.0] * 5
    p = torch.tensor([3.0], requires_grad=True)
    y = reference.scale_grad(p, 0.25)
    assert torch.equal(y, p) and y is not p
    (y * 2).sum().backward()
    assert p.grad.item() == 0.5


def test_clip_broadcast_gradient_sums() -> None:
    gen = seed_all(4)
    x = torch.randn(2, 3, 20, generator=gen, dtype=torch.float64)
    hi = torch.tensor([[0.9], [0.7]], dtype=torch.float64, requires_grad=True)
    ops.fake_quant_act(x, 4, 1.0, hi).sum().backward()
    per_row = torch.full((2, 3), 0.9, dtype=torch.float64)
    per_row[1] = 0.7
    per_row.requires_grad_()
    ops.fake_quant_act(x, 4, 1.0, per_row).sum().backward()
    assert_close_verbose(hi.grad, per_row.grad.sum(1, keepdim=True), rtol=1e-12)


def test_gradcheck_clamped_weights() -> None:
    # Every entry clamps, so the fake quant is smooth in (w, s, z) and STE = true derivative.
    w = torch.tensor([[-5.0, 9.0, 7.5], [8.0, -6.0, 10.0]], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.2, 0.3], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([1.3, 2.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ops.fake_quant_weight(*a, 3), (w, s, z))


def test_gradcheck_clip_chain_rule() -> None:
    # Constant tokens with clips < 1: each element clamps at a boundary code, x_hat = s * (c - z) is
    # smooth in the clips, which checks ds/dclip (x itself is a constant here).
    x = torch.tensor([[2.0] * 4, [-3.0] * 4, [1.5] * 4], dtype=torch.float64)
    lo = torch.tensor([0.7, 0.8, 0.9], dtype=torch.float64, requires_grad=True)
    hi = torch.tensor([0.6, 0.75, 0.85], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.fake_quant_act(x, 4, a, b), (lo, hi))


def _err(call, exc: type, op: str, arg: str) -> None:
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).startswith(f"{op}:") and f"'{arg}'" in str(info.value), str(info.value)


W, S, Z = torch.randn(4, 8), torch.ones(4), torch.zeros(4)


@pytest.mark.parametrize("call, exc, arg", [
    (lambda: ops.fake_quant_weight(W, S, Z, 16), ValueError, "bits"),
    (lambda: ops.fake_quant_weight(W, S, Z, 4, 0.0), ValueError, "grad_scale"),
    (lambda: ops.fake_quant_weight(W, S, Z, 4, "1"), ValueError, "grad_scale"),
    (lambda: ops.fake_quant_weight(W[0], S, Z, 4), ValueError, "w"),
    (lambda: ops.fake_quant_weight(W.int(), S, Z, 4), TypeError, "w"),
    (lambda: ops.fake_quant_weight(W, S[:3], Z, 4), ValueError, "scale"),
    (lambda: ops.fake_quant_weight(W, -S, Z, 4), ValueError, "scale"),
    (lambda: ops.fake_quant_weight(W / 0, S, Z, 4), ValueError, "w"),
])
def test_weight_bad_input(call, exc: type, arg: str) -> None:
    _err(call, exc, "fake_quant_weight", arg)


@pytest.mark.parametrize("call, exc, arg", [
    (lambda: ops.fake_quant_act(W, 16), ValueError, "bits"),
    (lambda: ops.fake_quant_act(W.long(), 4), TypeError, "x"),
    (lambda: ops.fake_quant_act(W, 4, torch.ones(8)), ValueError, "clip_lo"),
    (lambda: ops.fake_quant_act(W, 4, 1.0, 0.0), ValueError, "clip_hi"),
    (lambda: ops.fake_quant_act(W, 4, 1.0, torch.full((4,), 1.2)), ValueError, "clip_hi"),
    (lambda: ops.fake_quant_act(W.clone().fill_(float("nan")), 4), ValueError, "x"),
])
def test_act_bad_input(call, exc: type, arg: str) -> None:
    _err(call, exc, "fake_quant_act", arg)
