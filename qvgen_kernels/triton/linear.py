"""The deployed Triton path: weights prepacked once at load, then per call the fused per-token quantize
(int8 operand) and the tensor-core GEMM with its fused epilogue. Layouts: ``layout.py``."""

from __future__ import annotations

import torch

from ..errors import fail
from ._configs import GEMM_BLOCK_K_MIN, gemm_block_k, gemm_kernel, launch_facts
from .gemm_tc import tc_gemm
from .layout import repack_weight, weight_colsum
from .quantize_i8 import quantize_act_i8


def check_group_size(op: str, k: int, groups: int) -> None:
    """The GEMM's K tiles are >= 32 columns and never straddle a weight group."""
    if groups > 1 and gemm_block_k(k, k // groups) < GEMM_BLOCK_K_MIN:
        fail(op, "w_scale", f"groups of a multiple of {GEMM_BLOCK_K_MIN} columns (Triton GEMM K tile)",
             f"{k // groups} (K={k}, G={groups})")


def prepack_weight(w_packed: torch.Tensor, w_scale: torch.Tensor, w_zero: torch.Tensor, w_bits: int,
                   a_bits: int, k: int) -> tuple[torch.Tensor, ...]:
    """Load-time layout of one packed weight for ``prepacked_linear``.

    w_packed uint8 [N, packed_width(k, w_bits)] (checkpoint layout), w_scale / w_zero fp32 [N] or [N, G]
    (groups of a multiple of 32 columns). Returns plain tensors ``(w_kernel, colsum, scale, zero)``:
    w_kernel the tensor-core layout of ``layout.py`` (3/4 bits: uint8 [NP / 2, KP], two 4-bit codes per
    byte; 8 bits: int8 [NP, KP]), colsum int32 [N, G] (sums of the codes per group), scale / zero fp32
    [N, G] contiguous (G = 1 per channel). ``a_bits`` is accepted for the registry's uniform signature.
    """
    del a_bits
    n = w_packed.shape[0]
    scale = w_scale.reshape(n, -1).float().contiguous()
    check_group_size("prepack_weight (triton)", k, scale.shape[1])
    zero = w_zero.reshape(n, -1).float().contiguous()
    return (repack_weight(w_packed, w_bits, k), weight_colsum(w_packed, w_bits, k, scale.shape[1]),
            scale, zero)


def prepacked_linear(x: torch.Tensor, weights: tuple[torch.Tensor, ...], bias: torch.Tensor | None,
                     w_bits: int, a_bits: int, k: int, n: int, clip_lo: torch.Tensor,
                     clip_hi: torch.Tensor) -> torch.Tensor:
    """Fused per-token quantize of x [M, K] (fp32/fp16/bf16, contiguous; clips fp32 [M] or [1]) and the packed
    GEMM with the weights of ``prepack_weight``; bias [N] or None -> [M, N] in x.dtype. Numerically the
    reference ``lowbit_linear``: exact integer core, fp32 epilogue in format.py's order."""
    w_kernel, colsum, scale, zero = weights
    assert x.dim() == 2 and x.shape[1] == k and colsum.shape[0] == n
    grouped = scale.shape[1] > 1
    a8, sx, zx, rowsum, chunks = quantize_act_i8(x, a_bits, clip_lo, clip_hi, chunk_sums=grouped)
    if gemm_kernel(x.shape[0], w_bits, a_bits, grouped, launch_facts(x.device)[2]) == "gluon":
        from .gemm_gluon import gluon_gemm  # Gluon: imported only where it runs (sm_90)
        return gluon_gemm(a8, sx, rowsum, w_kernel, scale, zero, bias, k, n, x.dtype)
    return tc_gemm(a8, sx, zx, chunks if grouped else rowsum, w_kernel, colsum, scale, zero, bias,
                   w_bits, a_bits, k, n, x.dtype)


__all__ = ["check_group_size", "prepack_weight", "prepacked_linear"]
