"""The CPU int8 backend: deployed linear layers on the CPU's 8-bit matrix engine.

Per call, one compiled op (``qvgen_ext::int8_linear``): x is quantized per token straight to the int8
operand in one pass (with the data checks folded in), oneDNN's s8 x s8 -> s32 GEMM (``at::_int_mm``:
AMX on Sapphire Rapids and later, AVX512-VNNI elsewhere) runs per cache-sized output tile, and the
format's epilogue is applied to each tile while it is in cache. Exact: the integer core equals the
reference's, the fp32 epilogue follows its operation order (identities in ``csrc/include/qvgen/int8.h``).

Load-time layout (``prepack_weight``), in the order ``int8_linear`` takes them:
    w_int8   int8 [N, K]  w' = q_w - c_w, c_w = 128 for 8-bit weights, else 0 (codes fit int8 as they are);
                          K = 1 is padded with a zero column (oneDNN's s8 GEMM is wrong for K = 1, N > 1)
    colsum   int32 [G, N] sum of the codes q_w over each group's columns (G = 1 per channel)
    scale    fp32 [G, N]  w_scale, group-major; [N] per channel (the 1-D shape selects the per-channel
    zero     fp32 [G, N]  w_zero, likewise                         epilogue, whose rounding differs)
The int8 copy costs 1 byte per weight in memory (the 4-bit checkpoint codes stay what is saved); it is
what makes small batches fast (unpacking per call would cost more than the GEMM at M <= 256).
Weight-only layers (a_bits = 16) keep the checkpoint layout and run the reference's dequantize +
``F.linear``.
"""

from __future__ import annotations

import torch

from .. import _extension, registry
from ..reference import linear as reference_linear
from ..reference.pack import unpack


def _probe(device: torch.device) -> str | None:
    if device.type != "cpu":
        return "the int8 matrix-engine path runs on CPU tensors"
    if not _extension.available():
        return "the compiled extension qvgen_kernels._C is not built"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("qvgen_ext::int8_linear", "CPU"):
        return "qvgen_kernels._C has no int8_linear (rebuild the extension)"
    return None


registry.register_backend("cpu_int8", probe=_probe, auto={"cpu": 10}, traceable=True)


@registry.register_impl("prepack_weight", "cpu_int8")
def prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k):
    if a_bits == 16:
        return reference_linear.prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k)
    codes = unpack(w_packed, w_bits, k).to(torch.int32)
    n = codes.shape[0]
    groups = w_scale.shape[1] if w_scale.dim() == 2 else 1
    colsum = codes.view(n, groups, k // groups).sum(-1, dtype=torch.int32).t().contiguous()
    w_int8 = (codes - (128 if w_bits == 8 else 0)).to(torch.int8)
    if k == 1:  # oneDNN's s8 GEMM sums K = 1 wrongly when N > 1: a zero column makes it K = 2
        w_int8 = torch.nn.functional.pad(w_int8, (0, 1))
    if w_scale.dim() == 1:
        return w_int8, colsum, w_scale.float().contiguous(), w_zero.float().contiguous()
    return w_int8, colsum, *(t.t().float().contiguous() for t in (w_scale, w_zero))


@registry.register_impl("prepacked_linear", "cpu_int8")
def prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi):
    if a_bits == 16:
        return reference_linear.prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi)
    w_int8, colsum, scale, zero = weights
    return torch.ops.qvgen_ext.int8_linear(x, w_int8, colsum, scale, zero, bias, w_bits, a_bits,
                                           scale.dim() == 2, clip_lo, clip_hi)


@registry.register_impl("lowbit_linear", "cpu_int8")
def lowbit_linear(x, w_packed, w_scale, w_zero, bias, w_bits, a_bits, clip_lo, clip_hi):
    """The unprepacked op: prepacks per call (for one-off calls; layers prepack once)."""
    k, n = x.shape[1], w_packed.shape[0]
    weights = prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k)
    return prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi)
