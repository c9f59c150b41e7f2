"""Reference quantizers (pure torch), in the exact fp32 operation order of ``qvgen_kernels.format``.

Notation: M tokens, K features, N output channels, G weight groups along K, b bits, P = 2^b - 1.

Activations are per token (rows of a 2-D ``x``), weights per output channel (``scale [N]``) or per group
(``scale [N, G]``, column k uses group ``k // (K / G)``). Inputs are upcast to fp32 first (fp64 inputs stay
fp64, which only the differentiable fake quant uses, for gradcheck). Divisions by P use a tensor divisor:
on CUDA, torch turns a division by a Python scalar into a multiplication by its reciprocal, which is not
the IEEE division the format prescribes.
"""

from __future__ import annotations

import torch

from ..format import ACT_EPS, padded_k, qmax
from .pack import pack


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for every input dtype except fp64 (kept for gradcheck of the differentiable paths)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def act_range(xf: torch.Tensor, bits: int, clip_lo: torch.Tensor,
              clip_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token scale and (float, integral) zero point of the last dim of an upcast ``xf``.

    Differentiable in the clips (through the scale only: ``torch.round`` has a zero gradient, as the
    format's integer zero point requires). Returns ``(scale, zero)`` of shape ``xf.shape[:-1]``.
    """
    p = qmax(bits)
    lo = clip_lo * torch.clamp_max(xf.amin(dim=-1), 0.0)
    hi = clip_hi * torch.clamp_min(xf.amax(dim=-1), 0.0)
    rng = hi - lo
    scale = torch.clamp_min(rng / torch.full_like(rng, p), ACT_EPS)
    zero = torch.clamp(torch.round(-lo / scale), 0, p)
    return scale, zero


def act_qparams(x2d: torch.Tensor, bits: int, clip_lo: torch.Tensor,
                clip_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``(scale fp32 [M], zero int32 [M])`` of ``x2d [M, K]``; clips fp32 ``[M]``."""
    scale, zero = act_range(x2d.float(), bits, clip_lo.float(), clip_hi.float())
    return scale, zero.to(torch.int32)


def quantize_act_codes(x2d: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                       bits: int) -> torch.Tensor:
    """``q_x = clamp(round(x / s_x) + z_x, 0, P)`` as uint8 ``[M, K]``."""
    xf = x2d.float()
    q = torch.round(xf / scale.float()[:, None]) + zero.to(xf.dtype)[:, None]
    return torch.clamp(q, 0, qmax(bits)).to(torch.uint8)


def quantize_per_token(x2d: torch.Tensor, bits: int, clip_lo: torch.Tensor, clip_hi: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization of ``x2d [M, K]`` (fp32/fp16/bf16), clips fp32 ``[M]``.

    Returns ``(packed uint8 [M, packed_width(K, bits)], scale fp32 [M], zero int32 [M], rowsum int32 [M])``
    with ``rowsum[m] = sum_k (q_x - z_x)``. Padding columns carry code ``z_x`` (a = 0 in the GEMM).
    """
    scale, zero = act_qparams(x2d, bits, clip_lo, clip_hi)
    codes = quantize_act_codes(x2d, scale, zero, bits)
    rowsum = (codes.to(torch.int32) - zero[:, None]).sum(dim=-1, dtype=torch.int32)
    k = x2d.shape[-1]
    if padded_k(k, bits) != k:
        pad = zero.to(torch.uint8)[:, None].expand(-1, padded_k(k, bits) - k)
        codes = torch.cat([codes, pad], dim=-1)
    return pack(codes, bits), scale, zero, rowsum


def expand_groups(t: torch.Tensor, k: int) -> torch.Tensor:
    """Per-channel ``[N]`` or per-group ``[N, G]`` parameters -> broadcastable to ``[N, K]``."""
    if t.dim() == 1:
        return t[:, None]
    return t.repeat_interleave(k // t.shape[1], dim=1)


def quantize_weight(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """``q_w = clamp(round(W / s_w + z_w), 0, P)``: uint8 codes ``[N, K]`` of ``w [N, K]``."""
    wf = w.float()
    s = expand_groups(scale.float(), w.shape[1])
    z = expand_groups(zero.float(), w.shape[1])
    return torch.clamp(torch.round(wf / s + z), 0, qmax(bits)).to(torch.uint8)


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``W_hat = s_w * (q_w - z_w)``, fp32 ``[N, K]``."""
    k = codes.shape[1]
    return expand_groups(scale.float(), k) * (codes.float() - expand_groups(zero.float(), k))


def dequantize_act(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``X_hat = s_x * (q_x - z_x)``, fp32 ``[M, K]``."""
    return scale.float()[:, None] * (codes.float() - zero.float()[:, None])


__all__ = [
    "act_qparams", "act_range", "compute_dtype", "dequantize_act", "dequantize_weight", "expand_groups",
    "quantize_act_codes", "quantize_per_token", "quantize_weight",
]
