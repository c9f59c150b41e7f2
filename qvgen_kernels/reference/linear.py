"""Reference linear layer ops: ``lowbit_linear`` as the composition of the per-token quantize and the
packed GEMM, and the deployed pair ``prepack_weight`` / ``prepacked_linear`` with the checkpoint
layout as its own "prepacked" layout (nothing to convert).

Clips are fp32 ``[M]`` or ``[1]`` (one pair for every row).
"""

from __future__ import annotations

from typing import Callable

import torch

from .gemm import lowbit_gemm, weight_only_linear
from .quant import quantize_per_token


def composite_linear(quantize: Callable, gemm: Callable, weight_only: Callable = weight_only_linear) -> Callable:
    """``lowbit_linear`` of a backend that has a quantize op and a GEMM op (and a weight-only path)."""
    def lowbit_linear(x, w_packed, w_scale, w_zero, bias, w_bits, a_bits, clip_lo, clip_hi):
        k = x.shape[1]
        if a_bits == 16:
            return weight_only(x, w_packed, w_scale, w_zero, bias, w_bits, k)
        m = x.shape[0]
        q = quantize(x, a_bits, clip_lo.expand(m).contiguous(), clip_hi.expand(m).contiguous())
        return gemm(*q, w_packed, w_scale, w_zero, bias, w_bits, a_bits, k, x.dtype)
    return lowbit_linear


lowbit_linear = composite_linear(quantize_per_token, lowbit_gemm)


def prepack_weight(w_packed: torch.Tensor, w_scale: torch.Tensor, w_zero: torch.Tensor, w_bits: int,
                   a_bits: int, k: int) -> tuple[torch.Tensor, ...]:
    """The checkpoint layout itself: ``(w_packed, w_scale, w_zero)``."""
    return w_packed, w_scale, w_zero


# Activations a deployed layer may apply to its own output (the name a fused op takes -> the function it computes).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_tanh": lambda y: torch.nn.functional.gelu(y, approximate="tanh"),
}


def prepacked_linear(x: torch.Tensor, weights: tuple[torch.Tensor, ...], bias: torch.Tensor | None,
                     w_bits: int, a_bits: int, k: int, n: int, clip_lo: torch.Tensor,
                     clip_hi: torch.Tensor) -> torch.Tensor:
    return lowbit_linear(x, *weights, bias, w_bits, a_bits, clip_lo, clip_hi)


__all__ = ["ACTIVATIONS", "composite_linear", "lowbit_linear", "prepack_weight", "prepacked_linear"]
