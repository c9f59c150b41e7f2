"""qvgen_kernels: packed low-bit quantize / GEMM ops (reference, Triton, compiled extension).

The public API is the functional one of ``qvgen_kernels.ops``, re-exported here; the numeric format is
``qvgen_kernels.format``. Importing registers the ``qvgen::*`` custom ops and does nothing else.
"""

from . import format, ops, registry
from .ops import (
    PackedLinear, dequantize_weight, fake_quant_act, fake_quant_weight, lowbit_gemm, lowbit_linear, pack,
    prepack_linear, prepacked_linear, quantize_per_token, quantize_weight, unpack,
)

__all__ = [
    "PackedLinear", "dequantize_weight", "fake_quant_act", "fake_quant_weight", "format", "lowbit_gemm",
    "lowbit_linear", "ops", "pack", "prepack_linear", "prepacked_linear", "quantize_per_token", "quantize_weight",
    "registry", "unpack",
]
