"""Fake quantization for QAT: forward (W_hat / X_hat) and backward kernels, format.py numerics.

Weights (LSQ+, per channel or per group; G = scale.shape[1] groups of K // G columns):
    v = W / s + z, q = clamp(round(v), 0, P), W_hat = s * (q - z); inside = round(v) in [0, P]
    dW = g * inside
    ds = grad_scale * sum_group g * ((q - z) - inside * W / s)
    dz = grad_scale * sum_group g * s * (inside - 1)
Activations (per token, clip pair per row; the row min/max are constants for x's gradient, the
integer zero point has no gradient, so the clips receive gradient through the scale only):
    dx = g * inside
    S = sum_k g * ((q - z) - inside * x / s);  gated to 0 where the scale sits at ACT_EPS
    dclip_hi = (S / P) * max(0, max_k x);  dclip_lo = -(S / P) * min(0, min_k x)
Per-row sums are reduced tile by tile (fp32), so they match a torch reduction to fp32 rounding only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..format import ACT_EPS, check_bits, qmax

from ..errors import fail
from ._configs import ELEMENTWISE_BLOCK_K, ELEMENTWISE_BLOCK_M, EXACT_FP
from ._utils import (
    FLOATS as _FLOATS, act_codes, act_qparams, check_act_inputs, check_same_device, check_tensor, empty_out,
    round_clamped,
)
from .quantize_act import row_tiles



@triton.jit
def _weight_fq_kernel(w_ptr, s_ptr, z_ptr, g_ptr, out_ptr, ds_ptr, dz_ptr, N, GROUPS, GROUP_SIZE,
                      grad_scale, stride_w, stride_g, stride_o, P: tl.constexpr,
                      BN: tl.constexpr, BK: tl.constexpr, BACKWARD: tl.constexpr):
    """One program per (row block, group). Forward writes W_hat; backward writes dW and ds, dz."""
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    grp = tl.program_id(1)
    in_rows = rows < N
    rows64 = rows.to(tl.int64)[:, None]
    s = tl.load(s_ptr + rows * GROUPS + grp, mask=in_rows, other=1.0)[:, None]
    z = tl.load(z_ptr + rows * GROUPS + grp, mask=in_rows, other=0.0)[:, None]
    ds = tl.full((BN,), 0, tl.float32)
    dz = tl.full((BN,), 0, tl.float32)
    for kk in range(0, GROUP_SIZE, BK):
        cols = grp * GROUP_SIZE + kk + tl.arange(0, BK)
        mask = in_rows[:, None] & (kk + tl.arange(0, BK) < GROUP_SIZE)[None, :]
        w = tl.load(w_ptr + rows64 * stride_w + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        w_over_s = tl.math.div_rn(w, s)
        r = round_clamped(w_over_s + z)
        inside = (r >= 0.0) & (r <= P)
        q = tl.minimum(tl.maximum(r, 0.0), P)
        if BACKWARD:
            g = tl.load(g_ptr + rows64 * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + rows64 * stride_o + cols[None, :],
                     tl.where(inside, g, 0.0).to(out_ptr.dtype.element_ty), mask=mask)
            ds += tl.sum(g * ((q - z) - tl.where(inside, w_over_s, 0.0)), axis=1)
            dz += tl.sum(tl.where(inside, 0.0, -g * s), axis=1)
        else:
            tl.store(out_ptr + rows64 * stride_o + cols[None, :],
                     (s * (q - z)).to(out_ptr.dtype.element_ty), mask=mask)
    if BACKWARD:
        tl.store(ds_ptr + rows * GROUPS + grp, ds * grad_scale, mask=in_rows)
        tl.store(dz_ptr + rows * GROUPS + grp, dz * grad_scale, mask=in_rows)


@triton.jit
def _act_fq_kernel(x_ptr, clo_ptr, chi_ptr, g_ptr, out_ptr, dlo_ptr, dhi_ptr, M, K,
                   stride_x, stride_g, stride_o, P: tl.constexpr, EPS: tl.constexpr,
                   BM: tl.constexpr, BK: tl.constexpr, BACKWARD: tl.constexpr):
    """One program per row block: pass 1 the row min/max, pass 2 X_hat (forward) or dx and the
    clip gradients (backward). Rows of up to BK columns are one tile (x re-read from cache)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    in_rows = rows < M
    rows64 = rows.to(tl.int64)[:, None]
    mn = tl.full((BM,), 0, tl.float32)  # 0 start: only min(0, min x) / max(0, max x) matter
    mx = tl.full((BM,), 0, tl.float32)
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        mask = in_rows[:, None] & (cols < K)[None, :]
        x = tl.load(x_ptr + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mn = tl.minimum(mn, tl.min(x, axis=1))
        mx = tl.maximum(mx, tl.max(x, axis=1))
    clip_lo = tl.load(clo_ptr + rows, mask=in_rows, other=1.0)
    clip_hi = tl.load(chi_ptr + rows, mask=in_rows, other=1.0)
    lo, hi, scale, zero = act_qparams(mn, mx, clip_lo, clip_hi, P, EPS)
    acc = tl.full((BM,), 0, tl.float32)
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        mask = in_rows[:, None] & (cols < K)[None, :]
        x = tl.load(x_ptr + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        q, inside = act_codes(x, scale[:, None], zero[:, None], P)
        if BACKWARD:
            g = tl.load(g_ptr + rows64 * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + rows64 * stride_o + cols[None, :],
                     tl.where(inside, g, 0.0).to(out_ptr.dtype.element_ty), mask=mask)
            x_over_s = tl.math.div_rn(x, scale[:, None])
            acc += tl.sum(g * ((q - zero[:, None]) - tl.where(inside, x_over_s, 0.0)), axis=1)
        else:
            tl.store(out_ptr + rows64 * stride_o + cols[None, :],
                     (scale[:, None] * (q - zero[:, None])).to(out_ptr.dtype.element_ty), mask=mask)
    if BACKWARD:
        # d scale / d (hi - lo) = 1 / P unless the scale is floored at EPS (clamp_min's gradient).
        ds = tl.where(tl.math.div_rn(hi - lo, tl.full(lo.shape, P, tl.float32)) >= EPS,
                      tl.math.div_rn(acc, tl.full(acc.shape, P, tl.float32)), 0.0)
        tl.store(dhi_ptr + rows, ds * tl.maximum(mx, 0.0), mask=in_rows)
        tl.store(dlo_ptr + rows, -ds * tl.minimum(mn, 0.0), mask=in_rows)


def _check_weight(op: str, w: object, scale: object, zero: object) -> tuple[torch.Tensor, ...]:
    check_tensor(op, "w", w, ndim=2, dtypes=_FLOATS)
    check_tensor(op, "scale", scale, dtypes=_FLOATS)
    check_tensor(op, "zero", zero, dtypes=_FLOATS)
    check_same_device(op, w, scale=scale, zero=zero)
    n, k = w.shape
    if scale.dim() not in (1, 2) or scale.shape[0] != n:
        fail(op, "scale", f"shape ({n},) or ({n}, G)", f"shape {tuple(scale.shape)}")
    if zero.shape != scale.shape:
        fail(op, "zero", f"the shape of scale {tuple(scale.shape)}", f"shape {tuple(zero.shape)}")
    groups = 1 if scale.dim() == 1 else scale.shape[1]
    if k == 0 or groups == 0 or k % groups:
        fail(op, "scale", f"a group count G >= 1 dividing K={k}", groups)
    return (w.contiguous(), scale.reshape(n, groups).float().contiguous(),
            zero.reshape(n, groups).float().contiguous())


def _check_grad(op: str, grad: object, like: torch.Tensor) -> torch.Tensor:
    check_tensor(op, "grad", grad, ndim=2, dtypes=_FLOATS)
    if grad.shape != like.shape:
        fail(op, "grad", f"shape {tuple(like.shape)}", f"shape {tuple(grad.shape)}")
    check_same_device(op, like, grad=grad)
    return grad.contiguous()


def _run_weight(op: str, w, scale, zero, bits: int, grad, grad_scale: float):
    check_bits(op, "bits", bits, (3, 4, 8))
    w, s, z = _check_weight(op, w, scale, zero)
    backward = grad is not None
    g = _check_grad(op, grad, w) if backward else w
    n, k = w.shape
    groups = s.shape[1]
    out = empty_out(w.shape, w.dtype, w.device)
    ds = torch.empty_like(s)
    dz = torch.empty_like(z)
    if n:
        gsize = k // groups
        bk = max(16, min(ELEMENTWISE_BLOCK_K, triton.next_power_of_2(gsize)))
        _weight_fq_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK_M), groups)](
            w, s, z, g, out, ds, dz, n, groups, gsize, float(grad_scale), w.stride(0), g.stride(0),
            out.stride(0), P=qmax(bits), BN=ELEMENTWISE_BLOCK_M, BK=bk, BACKWARD=backward, **EXACT_FP)
    return out.to(w.dtype), ds.reshape(scale.shape).to(scale.dtype), dz.reshape(zero.shape).to(zero.dtype)


def _check_grad_scale(op: str, grad_scale: object) -> float:
    if isinstance(grad_scale, bool) or not isinstance(grad_scale, (int, float)):
        fail(op, "grad_scale", "a float", repr(grad_scale), TypeError)
    return float(grad_scale)


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                      grad_scale: float = 1.0) -> torch.Tensor:
    """W_hat = s * (clamp(round(W / s + z), 0, P) - z) in w.dtype; w [N, K], scale/zero [N] or [N, G].

    ``grad_scale`` only affects the backward; it is accepted (and checked) for signature parity.
    """
    op = "fake_quant_weight (triton)"
    _check_grad_scale(op, grad_scale)
    return _run_weight(op, w, scale, zero, bits, None, 1.0)[0]


def fake_quant_weight_backward(grad: torch.Tensor, w: torch.Tensor, scale: torch.Tensor,
                               zero: torch.Tensor, bits: int, grad_scale: float
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dW in w.dtype, d scale, d zero in the dtypes and shape of scale / zero); see the module doc."""
    op = "fake_quant_weight_backward (triton)"
    return _run_weight(op, w, scale, zero, bits, grad, _check_grad_scale(op, grad_scale))


def _run_act(op: str, x, bits: int, clip_lo, clip_hi, grad):
    x, clo, chi = check_act_inputs(op, x, bits, clip_lo, clip_hi)
    m, k = x.shape
    x = x.contiguous()
    backward = grad is not None
    g = _check_grad(op, grad, x) if backward else x
    out = empty_out(x.shape, x.dtype, x.device)
    dlo = torch.empty(m, dtype=torch.float32, device=x.device)
    dhi = torch.empty_like(dlo)
    if m:
        bm, bk, _ = row_tiles(k)
        _act_fq_kernel[(triton.cdiv(m, bm),)](
            x, clo, chi, g, out, dlo, dhi, m, k, x.stride(0), g.stride(0), out.stride(0),
            P=qmax(bits), EPS=ACT_EPS, BM=bm, BK=bk, BACKWARD=backward, **EXACT_FP)
    return out.to(x.dtype), dlo.to(clip_lo.dtype), dhi.to(clip_hi.dtype)


def fake_quant_act(x: torch.Tensor, bits: int, clip_lo: torch.Tensor, clip_hi: torch.Tensor
                   ) -> torch.Tensor:
    """X_hat per token (format.py); x [M, K] float, clips [M] float; returns x.dtype [M, K]."""
    return _run_act("fake_quant_act (triton)", x, bits, clip_lo, clip_hi, None)[0]


def fake_quant_act_backward(grad: torch.Tensor, x: torch.Tensor, bits: int, clip_lo: torch.Tensor,
                            clip_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx in x.dtype, d clip_lo, d clip_hi in the clips' dtypes, [M]); see the module docstring."""
    return _run_act("fake_quant_act_backward (triton)", x, bits, clip_lo, clip_hi, grad)
