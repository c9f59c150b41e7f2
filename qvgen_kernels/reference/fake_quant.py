"""Differentiable fake quantization for QAT (pure torch), forward identical to the deployment codes.

Two forms of the same math:
- ``fake_quant_weight`` / ``fake_quant_act``: plain torch autograd (the spec of the gradients);
- ``fake_quant_weight_backward`` / ``fake_quant_act_backward``: the same gradients as closed-form
  elementwise masks plus per-row reductions, as a fused kernel computes them. The custom ops of
  ``qvgen_kernels._ops`` use these for their registered autograd.

Weights (LSQ+), v = w / s + z, r = round(v), q = clamp(r, 0, P), inside = (0 <= r <= P):
    w_hat = s * (q - z)
    dw_hat/dw = inside                          (straight-through estimator, zero where clamped)
    dw_hat/ds = (q - z) - inside * w / s        (times grad_scale)
    dw_hat/dz = -s * (1 - inside)               (times grad_scale)
Activations, per token (last dim), s and z from ``quant.act_range``, r = round(x / s) + z:
    x_hat = s * (q - z);   dx_hat/dx = inside;   dx_hat/ds = (q - z) - inside * x / s
    ds/dc_hi = [raw >= eps] * max(0, max x) / P,  ds/dc_lo = -[raw >= eps] * min(0, min x) / P
The per-token min/max are constants for x's gradient: the backward stays a pure elementwise mask (what
the fused kernels compute), and differentiating through the argmin/argmax would only move the gradient
of the two extreme elements of each token.
"""

from __future__ import annotations

import torch

from ..format import ACT_EPS, qmax
from .quant import act_range, compute_dtype, expand_groups


class _RoundSTE(torch.autograd.Function):
    """``torch.round`` forward (half to even, exact), identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient multiplied by ``g`` (LSQ gradient scaling).

    An exact identity, unlike ``(v - v*g).detach() + v*g``, whose fp32 value can differ from v by one
    ulp and would then move codes away from the deployment ones.
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, g: float) -> torch.Tensor:  # noqa: D102
        ctx.g = g
        return v.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad * ctx.g, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even with a straight-through gradient (the project's one STE rounding)."""
    return _RoundSTE.apply(x)


def scale_grad(v: torch.Tensor, g: float) -> torch.Tensor:
    """``v`` unchanged, its gradient multiplied by ``g``."""
    return v if g == 1.0 else _ScaleGrad.apply(v, g)


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                      grad_scale: float = 1.0) -> torch.Tensor:
    """LSQ+ weight fake quant, ``w [N, K]``, ``scale`` / ``zero`` ``[N]`` or ``[N, G]``; returns w.dtype."""
    cd = compute_dtype(w)
    k = w.shape[1]
    s = expand_groups(scale_grad(scale, grad_scale).to(cd), k)
    z = expand_groups(scale_grad(zero, grad_scale).to(cd), k)
    q = torch.clamp(round_ste(w.to(cd) / s + z), 0, qmax(bits))
    return (s * (q - z)).to(w.dtype)


def fake_quant_act(x: torch.Tensor, bits: int, clip_lo: torch.Tensor, clip_hi: torch.Tensor
                   ) -> torch.Tensor:
    """Per-token fake quant of ``x [..., K]``; clips broadcastable to ``x.shape[:-1]``; returns x.dtype."""
    cd = compute_dtype(x)
    xf = x.to(cd)
    s, z = act_range(xf.detach(), bits, clip_lo.to(cd), clip_hi.to(cd))
    s, z = s[..., None], z.detach()[..., None]
    q = torch.clamp(round_ste(xf / s) + z, 0, qmax(bits))
    return (s * (q - z)).to(x.dtype)


def _group_sum(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum ``[N, K]`` over K per channel (``like [N]``) or per group (``like [N, G]``)."""
    if like.dim() == 1:
        return t.sum(dim=1)
    return t.reshape(t.shape[0], like.shape[1], -1).sum(dim=2)


def fake_quant_weight_backward(grad: torch.Tensor, w: torch.Tensor, scale: torch.Tensor,
                               zero: torch.Tensor, bits: int, grad_scale: float
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form gradients of ``fake_quant_weight``: ``(grad_w, grad_scale_param, grad_zero)``."""
    cd = compute_dtype(w)
    k = w.shape[1]
    s, z = expand_groups(scale.to(cd), k), expand_groups(zero.to(cd), k)
    ws = w.to(cd) / s
    r = torch.round(ws + z)
    q = torch.clamp(r, 0, qmax(bits))
    inside = (r >= 0) & (r <= qmax(bits))
    g = grad.to(cd)
    d_s = (q - z) - torch.where(inside, ws, 0.0)
    d_z = torch.where(inside, 0.0, -s)
    grad_s = _group_sum(g * d_s, scale) * grad_scale
    grad_z = _group_sum(g * d_z, zero) * grad_scale
    grad_w = torch.where(inside, g, 0.0)
    return grad_w.to(w.dtype), grad_s.to(scale.dtype), grad_z.to(zero.dtype)


def fake_quant_act_backward(grad: torch.Tensor, x: torch.Tensor, bits: int, clip_lo: torch.Tensor,
                            clip_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form gradients of ``fake_quant_act`` for 2-D ``x [M, K]`` and clips ``[M]``.

    Returns ``(grad_x, grad_clip_lo, grad_clip_hi)``.
    """
    cd = compute_dtype(x)
    p = qmax(bits)
    xf = x.to(cd)
    s, z = act_range(xf, bits, clip_lo.to(cd), clip_hi.to(cd))
    xs = xf / s[:, None]
    r = torch.round(xs) + z[:, None]
    q = torch.clamp(r, 0, p)
    inside = (r >= 0) & (r <= p)
    g = grad.to(cd)
    d_s = (g * ((q - z[:, None]) - torch.where(inside, xs, 0.0))).sum(dim=1)
    mn = torch.clamp_max(xf.amin(dim=1), 0.0)
    mx = torch.clamp_min(xf.amax(dim=1), 0.0)
    rng = clip_hi.to(cd) * mx - clip_lo.to(cd) * mn
    live = rng / torch.full_like(rng, p) >= ACT_EPS  # s = max(raw, eps): no gradient below the floor
    d_s = torch.where(live, d_s, 0.0)
    grad_x = torch.where(inside, g, 0.0)
    return grad_x.to(x.dtype), (-d_s * mn / p).to(clip_lo.dtype), (d_s * mx / p).to(clip_hi.dtype)


__all__ = [
    "fake_quant_act", "fake_quant_act_backward", "fake_quant_weight", "fake_quant_weight_backward",
    "round_ste", "scale_grad",
]
