"""Packed low-bit GEMM on packed activations (the reference's ``lowbit_gemm`` signature), any weight bits x
activation bits in {3, 4, 8}, per-channel or per-group weight scales: Y = s_x * s_w * (sum_k a * q_w -
z_w * r) + bias (format.py).

A thin adapter onto the tensor-core GEMM of ``gemm_tc.py``: the weight goes through the load-time repack
(``layout.py``) and the packed activation codes become the kernel's int8 operand (a8 = q - z, or q - 128
for 8 bits) with their row / 32-column sums, all with torch ops. The deployed path does neither per call:
``linear.prepack_weight`` once at load, ``linear.prepacked_linear`` per call (quantize emits a8 directly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..format import check_bits

from ..errors import fail
from ..reference.pack import unpack
from ._utils import check_k, check_packed, check_same_device, check_tensor, check_vector
from .gemm_tc import tc_gemm
from .layout import CHUNK, kernel_k
from .linear import check_group_size, prepack_weight

_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_weight_qparams(op: str, w_scale: object, w_zero: object, n: int, k: int, ref: torch.Tensor
                          ) -> int:
    """fp32 [N] or [N, G] scale and zero (same shape); returns G."""
    check_tensor(op, "w_scale", w_scale, dtypes=(torch.float32,))
    check_tensor(op, "w_zero", w_zero, dtypes=(torch.float32,))
    check_same_device(op, ref, w_scale=w_scale, w_zero=w_zero)
    if w_scale.dim() not in (1, 2) or w_scale.shape[0] != n:
        fail(op, "w_scale", f"shape ({n},) or ({n}, G)", f"shape {tuple(w_scale.shape)}")
    if w_zero.shape != w_scale.shape:
        fail(op, "w_zero", f"the shape of w_scale {tuple(w_scale.shape)}", f"shape {tuple(w_zero.shape)}")
    groups = 1 if w_scale.dim() == 1 else w_scale.shape[1]
    if groups == 0 or k % groups:
        fail(op, "w_scale", f"a group count G dividing K={k}", groups)
    check_group_size(op, k, groups)
    return groups


def _act_operand(a_packed: torch.Tensor, a_zero: torch.Tensor, a_bits: int, k: int, grouped: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a8 int8 [M, KP], sums): the GEMM's activation operand from packed codes (layout.py)."""
    codes = unpack(a_packed, a_bits, k).to(torch.int32)
    off = torch.full_like(a_zero, 128) if a_bits == 8 else a_zero
    a8 = F.pad(codes - off[:, None], (0, kernel_k(k) - k))
    if grouped:
        sums = a8.view(a8.shape[0], -1, CHUNK).sum(-1, dtype=torch.int32)
    else:
        sums = a8.sum(-1, dtype=torch.int32)
    return a8.to(torch.int8).contiguous(), sums.contiguous()


def lowbit_gemm(a_packed: torch.Tensor, a_scale: torch.Tensor, a_zero: torch.Tensor,
                a_rowsum: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor,
                w_zero: torch.Tensor, bias: torch.Tensor | None, w_bits: int, a_bits: int, k: int,
                out_dtype: torch.dtype) -> torch.Tensor:
    """Packed activations [M, packed_width(k, a_bits)] x packed weights [N, packed_width(k, w_bits)]
    -> out_dtype [M, N]. a_scale fp32 [M], a_zero/a_rowsum int32 [M]; w_scale/w_zero fp32 [N] (per
    channel) or [N, G] (G groups of k // G columns, a multiple of 32); bias [N] or None. The row sums
    are recomputed from the codes (``a_rowsum`` is checked, not read)."""
    op = "lowbit_gemm (triton)"
    check_bits(op, "w_bits", w_bits, (3, 4, 8))
    check_bits(op, "a_bits", a_bits, (3, 4, 8))
    check_k(op, k)
    if out_dtype not in _OUT_DTYPES:
        fail(op, "out_dtype", f"one of {[str(d) for d in _OUT_DTYPES]}", out_dtype, TypeError)
    a_packed = check_packed(op, "a_packed", a_packed, None, k, a_bits)
    w_packed = check_packed(op, "w_packed", w_packed, None, k, w_bits)
    check_same_device(op, a_packed, w_packed=w_packed)
    m, n = a_packed.shape[0], w_packed.shape[0]
    a_scale = check_vector(op, "a_scale", a_scale, m, (torch.float32,), a_packed)
    a_zero = check_vector(op, "a_zero", a_zero, m, (torch.int32,), a_packed)
    check_vector(op, "a_rowsum", a_rowsum, m, (torch.int32,), a_packed)
    groups = _check_weight_qparams(op, w_scale, w_zero, n, k, a_packed)
    if bias is not None:
        bias = check_vector(op, "bias", bias, n, _FLOAT_DTYPES, a_packed)
    w_kernel, colsum, sw, zw = prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k)
    a8, sums = _act_operand(a_packed, a_zero, a_bits, k, groups > 1)
    return tc_gemm(a8, a_scale, a_zero, sums, w_kernel, colsum, sw, zw, bias, w_bits, a_bits, k, n, out_dtype)
