"""Reference low-bit GEMM (pure torch): exact integer core, fp32 epilogue, as in ``format.py``.

Notation: M tokens, N output channels, K input features, G weight groups along K.

    a = q_x - z_x                               int in [-P, P], [M, K]
    acc[m, n] = sum_k a[m, k] * q_w[n, k]       exact integer
    per channel: Y = (s_x[:, None] * s_w[None, :]) * (float(acc) - z_w[None, :] * r[:, None]) + bias
    per group:   Y = s_x[:, None] * sum_g s_w[:, g] * (float(acc_g) - z_w[:, g] * r_g[:, None]) + bias
                 (the group sum in fp32, in group order)

torch has no integer matmul on CPU, so the integer core runs in float64: every product and partial sum
is an integer below 2^53 (|a| <= 255, q_w <= 255, K < 2^37), hence exact in any summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .pack import unpack
from .quant import dequantize_weight


def _int_matmul(a: torch.Tensor, q_w: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ q_w.T`` for small integers (see the module docstring), as int64 ``[M, N]``."""
    return (a.double() @ q_w.double().T).to(torch.int64)


def _epilogue_terms(acc: torch.Tensor, rowsum: torch.Tensor, w_zero: torch.Tensor) -> torch.Tensor:
    """``float(acc) - z_w * r`` in fp32 (the integer sums are cast first, as the kernels do)."""
    return acc.to(torch.float32) - w_zero.float()[None, :] * rowsum.to(torch.float32)[:, None]


def lowbit_gemm(a_packed: torch.Tensor, a_scale: torch.Tensor, a_zero: torch.Tensor,
                a_rowsum: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor,
                w_zero: torch.Tensor, bias: torch.Tensor | None, w_bits: int, a_bits: int, k: int,
                out_dtype: torch.dtype) -> torch.Tensor:
    """Packed activations ``[M, pw(k, a_bits)]`` times packed weights ``[N, pw(k, w_bits)]`` -> ``[M, N]``.

    ``a_scale`` fp32 ``[M]``, ``a_zero`` / ``a_rowsum`` int32 ``[M]``; ``w_scale`` / ``w_zero`` fp32 ``[N]``
    or ``[N, G]``; ``bias`` ``[N]`` or None. Per channel the given ``a_rowsum`` is used; per group the
    group row sums are recomputed from the codes (they are not an input of the op).
    """
    a = unpack(a_packed, a_bits, k).to(torch.int64) - a_zero.to(torch.int64)[:, None]
    q_w = unpack(w_packed, w_bits, k)
    s_x = a_scale.float()[:, None]
    if w_scale.dim() == 1:
        y = (s_x * w_scale.float()[None, :]) * _epilogue_terms(_int_matmul(a, q_w), a_rowsum, w_zero)
    else:
        gs = k // w_scale.shape[1]
        y = torch.zeros(a.shape[0], q_w.shape[0], dtype=torch.float32, device=a.device)
        for g in range(w_scale.shape[1]):
            cols = slice(g * gs, (g + 1) * gs)
            acc = _int_matmul(a[:, cols], q_w[:, cols])
            y = y + w_scale[:, g].float()[None, :] * _epilogue_terms(acc, a[:, cols].sum(1), w_zero[:, g])
        y = s_x * y
    if bias is not None:
        y = y + bias.float()[None, :]
    return y.to(out_dtype)


def weight_only_linear(x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor,
                       w_zero: torch.Tensor, bias: torch.Tensor | None, w_bits: int, k: int) -> torch.Tensor:
    """W{b}A16: ``F.linear(x, W_hat, bias)`` in x.dtype; ``x [M, k]`` -> x.dtype.

    ``W_hat = s * (q - z)`` is computed in fp32 and cast once to x.dtype (no fp32 copy of x, no fp32
    GEMM). Tolerance: each weight then carries one x.dtype rounding (2^-9 relative for bf16, 2^-12 for
    fp16, exact for fp32), so ``|y - y_exact| <~ 2u * sum_k |x_k| |W_hat_k| + u |y|`` with u the unit
    roundoff of x.dtype, instead of ``u |y|`` alone; x itself is taken exactly. fp16 weights below
    2^-14 are subnormal there (absolute error <= 2^-25 each).
    """
    w_hat = dequantize_weight(unpack(w_packed, w_bits, k), w_scale, w_zero).to(x.dtype)
    return F.linear(x, w_hat, None if bias is None else bias.to(x.dtype))


__all__ = ["lowbit_gemm", "weight_only_linear"]
