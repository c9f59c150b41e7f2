"""Pure-PyTorch reference implementations: the spec every backend is tested against.

The 2-D op signatures here are the ones the dispatcher calls on every backend.
"""

from .fake_quant import (
    fake_quant_act, fake_quant_act_backward, fake_quant_weight, fake_quant_weight_backward, round_ste,
    scale_grad,
)
from .gemm import lowbit_gemm, weight_only_linear
from .linear import lowbit_linear, prepack_weight, prepacked_linear
from .pack import pack, unpack
from .quant import (
    act_qparams, dequantize_act, dequantize_weight, quantize_act_codes, quantize_per_token,
    quantize_weight,
)

__all__ = [
    "act_qparams", "dequantize_act", "dequantize_weight", "fake_quant_act", "fake_quant_act_backward",
    "fake_quant_weight", "fake_quant_weight_backward", "lowbit_gemm", "lowbit_linear", "pack",
    "prepack_weight", "prepacked_linear", "quantize_act_codes",
    "quantize_per_token", "quantize_weight", "round_ste", "scale_grad", "unpack", "weight_only_linear",
]
