"""Triton fake-quant forward / backward kernels vs the reference (closed form and autograd).

Runs compiled on a GPU, else under TRITON_INTERPRET=1 on CPU (``conftest.py``).
"""

from __future__ import annotations

import pytest
import torch

from qvgen_kernels import reference as ref
from qvgen_kernels.format import qmax


def _assert_sum_close(got: torch.Tensor, want: torch.Tensor, terms_abs: torch.Tensor) -> None:
    # Per-row fp32 sums reduced in a different order: bounded by ~K ulp of the sum of |terms|.
    tol = 1e-6 * terms_abs.shape[-1] * (terms_abs.sum(-1) + 1e-3)
    assert ((got.cpu().float() - want.float()).abs().reshape(tol.shape) <= tol).all()


def _weights(n: int, k: int, groups: int, bits: int, seed: int):
    """Weights whose qparams put some entries outside the clamp range (exercises the STE mask)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    shape = (n,) if groups == 1 else (n, groups)
    scale = (0.5 + torch.rand(shape, generator=gen)) * 2.0 / qmax(bits)
    zero = qmax(bits) * (0.2 + 0.6 * torch.rand(shape, generator=gen))
    return w, scale, zero, torch.randn(n, k, generator=gen)


@pytest.mark.parametrize("bits", (3, 4, 8))
@pytest.mark.parametrize("n,k,groups", ((1, 1, 1), (5, 67, 1), (67, 130, 1), (7, 96, 3), (3, 130, 2)))
def test_weight_fake_quant(tk, bits, n, k, groups):
    mod, dev = tk
    w, scale, zero, grad = _weights(n, k, groups, bits, seed=n * k + bits)
    gs = 1.0 / (k * qmax(bits)) ** 0.5
    w_hat = mod.fake_quant_weight(w.to(dev), scale.to(dev), zero.to(dev), bits, gs)
    assert torch.equal(w_hat.cpu(), ref.fake_quant_weight(w, scale, zero, bits))  # same fp32 ops
    gw, gsc, gz = mod.fake_quant_weight_backward(grad.to(dev), w.to(dev), scale.to(dev), zero.to(dev),
                                                 bits, gs)
    rw, rs, rz = ref.fake_quant_weight_backward(grad, w, scale, zero, bits, gs)
    assert torch.equal(gw.cpu(), rw)  # the STE mask times grad: exact
    assert gsc.shape == scale.shape and gz.shape == zero.shape
    bound = (grad.abs() * (w.abs().reshape(n, groups, -1).amax(-1).repeat_interleave(k // groups, 1)
                           / scale.reshape(n, -1).repeat_interleave(k // groups, 1) + qmax(bits)))
    _assert_sum_close(gsc, rs, gs * bound.reshape(n, groups, -1))
    _assert_sum_close(gz, rz, gs * (grad.abs() * 10).reshape(n, groups, -1))


def test_weight_backward_matches_autograd(tk):
    """The kernel's closed form equals torch autograd through the reference forward (the spec)."""
    mod, dev = tk
    w, scale, zero, grad = _weights(9, 40, 2, 4, seed=3)
    leaves = [t.clone().requires_grad_(True) for t in (w, scale, zero)]
    ref.fake_quant_weight(*leaves, 4, grad_scale=0.25).backward(grad)
    got = mod.fake_quant_weight_backward(grad.to(dev), w.to(dev), scale.to(dev), zero.to(dev), 4, 0.25)
    for g, leaf in zip(got, leaves):
        # autograd multiplies by w / s^2 * s instead of w / s: a few fp32 ulp per term, summed over K.
        assert torch.allclose(g.cpu(), leaf.grad, rtol=1e-4, atol=1e-4)


def _acts(m: int, k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * 2
    x[0] = 0.0  # zero-range row: scale floored at ACT_EPS, no clip gradient
    if m > 2:
        x[1] = x[1].abs()  # no negative part: min clamps to 0, no clip_lo gradient
    clip_lo = 0.4 + 0.6 * torch.rand(m, generator=gen)
    clip_hi = 0.4 + 0.6 * torch.rand(m, generator=gen)
    return x, clip_lo, clip_hi, torch.randn(m, k, generator=gen)


@pytest.mark.parametrize("bits", (3, 4, 8))
@pytest.mark.parametrize("m,k", ((1, 1), (3, 5), (67, 130), (5, 67)))
def test_act_fake_quant(tk, bits, m, k):
    mod, dev = tk
    x, clip_lo, clip_hi, grad = _acts(m, k, seed=m + k + bits)
    args = (bits, clip_lo.to(dev), clip_hi.to(dev))
    assert torch.equal(mod.fake_quant_act(x.to(dev), *args).cpu(),
                       ref.fake_quant_act(x, bits, clip_lo, clip_hi))
    gx, glo, ghi = mod.fake_quant_act_backward(grad.to(dev), x.to(dev), *args)
    rx, rlo, rhi = ref.fake_quant_act_backward(grad, x, bits, clip_lo, clip_hi)
    assert torch.equal(gx.cpu(), rx)
    bound = grad.abs() * (qmax(bits) + 1.0 / clip_lo.min().item())
    mag = x.abs().amax(1, keepdim=True) / qmax(bits)
    _assert_sum_close(glo, rlo, bound * mag)
    _assert_sum_close(ghi, rhi, bound * mag)
    assert glo[0].item() == ghi[0].item() == 0.0
    if m > 2:
        assert glo[1].item() == 0.0


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_act_fake_quant_half(tk, dtype):
    mod, dev = tk
    x, clip_lo, clip_hi, grad = _acts(6, 33, seed=9)
    x, grad = x.to(dtype), grad.to(dtype)
    out = mod.fake_quant_act(x.to(dev), 4, clip_lo.to(dev), clip_hi.to(dev))
    assert out.dtype == dtype and torch.equal(out.cpu(), ref.fake_quant_act(x, 4, clip_lo, clip_hi))
    gx = mod.fake_quant_act_backward(grad.to(dev), x.to(dev), 4, clip_lo.to(dev), clip_hi.to(dev))[0]
    assert gx.dtype == dtype and torch.equal(gx.cpu(), ref.fake_quant_act_backward(grad, x, 4, clip_lo, clip_hi)[0])


def test_act_backward_matches_autograd(tk):
    mod, dev = tk
    x, clip_lo, clip_hi, grad = _acts(8, 50, seed=4)
    leaves = [t.clone().requires_grad_(True) for t in (x, clip_lo, clip_hi)]
    ref.fake_quant_act(leaves[0], 4, leaves[1], leaves[2]).backward(grad)
    got = mod.fake_quant_act_backward(grad.to(dev), x.to(dev), 4, clip_lo.to(dev), clip_hi.to(dev))
    for g, leaf in zip(got, leaves):
        # autograd's chain (x / s^2 * s, then / P, * max) rounds differently: fp32 ulps over K terms.
        assert torch.allclose(g.cpu(), leaf.grad, rtol=1e-4, atol=1e-4)


def test_fake_quant_errors(tk):
    mod, dev = tk
    w = torch.randn(4, 6, device=dev)
    with pytest.raises(ValueError, match="fake_quant_weight.*scale.*dividing K=6"):
        mod.fake_quant_weight(w, torch.ones(4, 4, device=dev), torch.ones(4, 4, device=dev), 4)
    with pytest.raises(ValueError, match="fake_quant_weight.*zero.*shape"):
        mod.fake_quant_weight(w, torch.ones(4, device=dev), torch.ones(3, device=dev), 4)
    with pytest.raises(TypeError, match="grad_scale"):
        mod.fake_quant_weight_backward(w, w, torch.ones(4, device=dev), torch.ones(4, device=dev), 4, "x")
    with pytest.raises(ValueError, match="fake_quant_act_backward.*grad.*shape"):
        mod.fake_quant_act_backward(w[:, :5], w, 4, torch.ones(4, device=dev), torch.ones(4, device=dev))
    with pytest.raises(TypeError, match="fake_quant_act.*'x'.*dtype"):
        mod.fake_quant_act(w.double(), 4, torch.ones(4, device=dev), torch.ones(4, device=dev))
