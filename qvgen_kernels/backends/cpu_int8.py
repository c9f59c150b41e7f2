"""The CPU int8 backend: deployed linear layers on the CPU's 8-bit matrix engine.

Per call, one compiled op (``qvgen_ext::int8_linear``): x is quantized per token straight to the int8
operand in one pass (with the data checks folded in), oneDNN's s8 x s8 -> s32 GEMM (``at::_int_mm``:
AMX on Sapphire Rapids and later, AVX512-VNNI elsewhere) runs per cache-sized output tile, and the
format's epilogue is applied to each tile while it is in cache. Exact: the integer core equals the
reference's, the fp32 epilogue follows its operation order (identities in ``csrc/include/qvgen/int8.h``).

Load-time layout (``prepack_weight``), in the order ``int8_linear`` takes them:
    w_packed uint8 [N, packed_width(K, w_bits)]  the checkpoint codes themselves (the same tensor: the weights
                          are held once, at 3, 4 or 8 bits per weight); each column block is unpacked to the
                          int8 operand w' = q_w - c_w (c_w = 128 for 8-bit weights, else 0) in a cache-sized
                          buffer just before its GEMM tiles, and reused by every row tile of up to 2048 rows
    colsum   int32 [G, N] sum of the codes q_w over each group's columns (G = 1 per channel)
    scale    fp32 [G, N]  w_scale, group-major; [N] per channel (the 1-D shape selects the per-channel
    zero     fp32 [G, N]  w_zero, likewise                         epilogue, whose rounding differs)
Per channel, scale and zero are the layer's own fp32 tensors (no copy); grouped, a transposed copy
(2 x 4 bytes per group and channel). ``ops.checkpoint_codes`` gives the codes back: the first tensor.
Weight-only layers (a_bits = 16) keep the checkpoint layout and run the reference's dequantize +
``F.linear``.
"""

from __future__ import annotations

import torch

from .. import _extension, registry
from ..reference import linear as reference_linear


def _probe(device: torch.device) -> str | None:
    if device.type != "cpu":
        return "the int8 matrix-engine path runs on CPU tensors"
    if not _extension.available():
        return "the compiled extension qvgen_kernels._C is not built"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("qvgen_ext::int8_linear", "CPU"):
        return "qvgen_kernels._C has no int8_linear (rebuild the extension)"
    return None


registry.register_backend("cpu_int8", probe=_probe, auto={"cpu": 10}, traceable=True)


def _int8_linear_fake(x, w_packed, w_colsum, w_scale, w_zero, bias, w_bits, a_bits, grouped, clip_lo, clip_hi,
                      activation=0):
    """[M, N] in x's dtype, from shapes alone, so torch.compile traces the op with symbolic sizes (dynamic=True,
    group offload); the compiled extension checks the arguments when the op runs."""
    return x.new_empty(x.shape[0], w_packed.shape[0])


if _extension.available() and not torch._C._dispatch_has_kernel_for_dispatch_key("qvgen_ext::int8_linear", "Meta"):
    torch.library.register_fake("qvgen_ext::int8_linear")(_int8_linear_fake)


def _colsum(w_packed: torch.Tensor, w_bits: int, k: int, groups: int) -> torch.Tensor:
    """int32 [G, N]: the sums of the codes over each group's columns, from the extension's unpack (w' + c_w)."""
    n, rows = w_packed.shape[0], max(1, (1 << 24) // max(k, 1))  # blocks of <= 16 MB of int8
    out = torch.empty(groups, n, dtype=torch.int32)
    for r0 in range(0, n, rows):
        w = torch.ops.qvgen_ext.int8_unpack_weight(w_packed[r0:r0 + rows], w_bits, k, k)
        sums = w.view(w.shape[0], groups, k // groups).sum(-1, dtype=torch.int32)
        out[:, r0:r0 + rows] = (sums + (128 * (k // groups) if w_bits == 8 else 0)).t()
    return out


@registry.register_impl("prepack_weight", "cpu_int8")
def prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k):
    if a_bits == 16:
        return reference_linear.prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k)
    w_packed = w_packed.contiguous()
    groups = w_scale.shape[1] if w_scale.dim() == 2 else 1
    colsum = _colsum(w_packed, w_bits, k, groups)
    if w_scale.dim() == 1:
        return w_packed, colsum, w_scale.float().contiguous(), w_zero.float().contiguous()
    return w_packed, colsum, *(t.t().float().contiguous() for t in (w_scale, w_zero))


@registry.register_impl("prepacked_linear", "cpu_int8")
def prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi):
    if a_bits == 16:
        return reference_linear.prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi)
    w_packed, colsum, scale, zero = weights
    return torch.ops.qvgen_ext.int8_linear(x, w_packed, colsum, scale, zero, bias, w_bits, a_bits,
                                           scale.dim() == 2, clip_lo, clip_hi)


# Activation codes of the extension's epilogue (csrc/include/qvgen/activation.h).
_ACTIVATION_CODES = {"gelu_tanh": 1}


@registry.register_impl("prepacked_linear_fused", "cpu_int8")
def prepacked_linear_fused(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi, activation):
    """``prepacked_linear`` followed by ``activation``, the activation applied in the epilogue to each output as
    it is stored (no second pass over [M, N])."""
    if a_bits == 16:
        y = reference_linear.prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi)
        return reference_linear.ACTIVATIONS[activation](y)
    w_packed, colsum, scale, zero = weights
    return torch.ops.qvgen_ext.int8_linear(x, w_packed, colsum, scale, zero, bias, w_bits, a_bits,
                                           scale.dim() == 2, clip_lo, clip_hi, _ACTIVATION_CODES[activation])


@registry.register_impl("lowbit_linear", "cpu_int8")
def lowbit_linear(x, w_packed, w_scale, w_zero, bias, w_bits, a_bits, clip_lo, clip_hi):
    """The unprepacked op: prepacks per call (for one-off calls; layers prepack once)."""
    k, n = x.shape[1], w_packed.shape[0]
    weights = prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k)
    return prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi)
