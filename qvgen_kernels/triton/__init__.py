"""Triton backend of qvgen_kernels: the reference's 2-D op signatures under the reference's names.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (set before this package is
imported: kernels read it when they are defined). Every op follows ``qvgen_kernels.format`` bit for
bit (integer outputs) or to fp32 rounding (epilogues, reductions).

    pack(codes, bits) -> packed                      uint8 [..., K] -> uint8 [..., packed_width(K, bits)]
    unpack(packed, bits, k) -> codes                 inverse
    quantize_per_token(x, bits, clip_lo, clip_hi) -> (packed, scale, zero, rowsum)
        x [M, K] fp32/fp16/bf16, clips [M]; packed uint8 [M, packed_width(K, bits)] (padding code z_x),
        scale fp32 [M], zero int32 [M], rowsum int32 [M] = sum_k (q_x - z_x)
    lowbit_gemm(a_packed, a_scale, a_zero, a_rowsum, w_packed, w_scale, w_zero, bias,
                w_bits, a_bits, k, out_dtype) -> [M, N] out_dtype (fp32/fp16/bf16)
        w_scale / w_zero fp32 [N] (per channel) or [N, G] (groups of k // G columns, a multiple of 32)
    fake_quant_weight(w, scale, zero, bits, grad_scale=1.0) -> w_hat (w.dtype)
    fake_quant_weight_backward(grad, w, scale, zero, bits, grad_scale) -> (grad_w, grad_scale, grad_zero)
    fake_quant_act(x, bits, clip_lo, clip_hi) -> x_hat (x.dtype)
    fake_quant_act_backward(grad, x, bits, clip_lo, clip_hi) -> (grad_x, grad_clip_lo, grad_clip_hi)

The deployed path (registered by the op registry; arguments arrive validated):

    prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k) -> weights (tuple of tensors)
        once at load: the checkpoint layout -> the tensor-core layout of ``layout.py`` (4 bits per weight
        at rest for 3/4-bit weights), per-group code sums, fp32 [N, G] scale / zero
    prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi) -> [M, N] in x.dtype
        per call: the fused per-token quantize emitting the int8 GEMM operand, then the tensor-core GEMM
        with the epilogue fused; numerically the reference ``lowbit_linear``

Bits: 3, 4 or 8 for every packed operand; weight groups are multiples of 32 columns (the GEMM's K tile).
``lowbit_gemm`` runs the same GEMM on packed activations (repacking both operands per call).
"""

from .fake_quant import (
    fake_quant_act, fake_quant_act_backward, fake_quant_weight, fake_quant_weight_backward,
)
from .gemm import lowbit_gemm
from .linear import prepack_weight, prepacked_linear
from .pack import pack, unpack
from .quantize_act import quantize_per_token

__all__ = [
    "fake_quant_act", "fake_quant_act_backward", "fake_quant_weight", "fake_quant_weight_backward",
    "lowbit_gemm", "pack", "prepack_weight", "prepacked_linear", "quantize_per_token", "unpack",
]
