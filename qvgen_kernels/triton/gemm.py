"""Packed low-bit GEMM, any weight bits x activation bits in {3, 4, 8}, per-channel or per-group
weight scales: Y = s_x * s_w * (sum_k a * q_w - z_w * r) + bias (format.py).

Both operands are read in the checkpoint layout and unpacked in registers to int8, then one
``tl.dot`` int8 x int8 -> int32 per K tile (on Hopper: the 8-bit tensor cores). Operand values:

- activations, 3/4 bits: a = q_x - z_x in [-15, 15], exact in int8;
- activations, 8 bits: a ranges over [-255, 255], so the kernel uses a' = q_x - 128 in [-128, 127]
  and adds d[m] * colsum(w') with d = 128 - z_x (a = a' + d; exact in int32);
- weights, 3/4 bits: q_w as is; 8 bits: w' = q_w - 128, and 128 * sum_k a is added back.

The integer part is exact; the epilogue is fp32: per channel ``(s_x * s_w) * (acc - z_w * r) + bias``
(the reference's order); per group a fresh int32 accumulator per group, promoted with
``s_w[n, g] * (acc_g - z_w[n, g] * r_g)``, summed in fp32, then ``s_x * sum + bias``, where r_g is
the group's row sum of a, computed in the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..format import check_bits, fail
from ._configs import GEMM_BLOCK_K_MIN, gemm_block_k, gemm_configs, m_bucket
from ._utils import (
    check_k, check_packed, check_same_device, check_tensor, check_vector, empty_out, unpack_codes,
)

_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _group_dot(a_rows, zx, w_cols, row_mask, col_mask, k_base, GROUP_SIZE, K, KA8, KW8,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               A_BITS: tl.constexpr, W_BITS: tl.constexpr, ROWSUM: tl.constexpr):
    """(sum_k a * q_w as int32 [BM, BN], sum_k a as int32 [BM]) over columns [k_base, k_base + GROUP_SIZE).

    The row sum is only computed when ROWSUM (zeros otherwise); it costs CUDA-core work per tile.
    """
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)
    a_sum = tl.full((BLOCK_M,), 0, tl.int32)
    w_sum = tl.full((BLOCK_N,), 0, tl.int32)
    for kk in range(0, GROUP_SIZE, BLOCK_K):
        k = k_base + kk + tl.arange(0, BLOCK_K)
        k_ok = k < K
        a_mask = row_mask[:, None] & k_ok[None, :]
        w_mask = k_ok[:, None] & col_mask[None, :]
        a_code = unpack_codes(a_rows, k[None, :], a_mask, KA8, A_BITS)
        w_code = unpack_codes(w_cols, k[:, None], w_mask, KW8, W_BITS)
        if A_BITS == 8:
            a = tl.where(a_mask, a_code - 128, 0)
        else:
            a = tl.where(a_mask, a_code - zx[:, None], 0)
        if W_BITS == 8:
            w = tl.where(w_mask, w_code - 128, 0)
        else:
            w = w_code
        acc += tl.dot(a.to(tl.int8), w.to(tl.int8), out_dtype=tl.int32)
        if ROWSUM:
            a_sum += tl.sum(a, axis=1)
        if A_BITS == 8:
            w_sum += tl.sum(w, axis=0)
    if A_BITS == 8:
        d = 128 - zx  # a = a' + d on every real column
        acc += d[:, None] * w_sum[None, :]
        n_real = tl.minimum(GROUP_SIZE, K - k_base)
        if ROWSUM:
            a_sum += d * n_real
    if W_BITS == 8:
        acc += 128 * a_sum[:, None]
    return acc, a_sum


@triton.autotune(configs=gemm_configs(), key=["M_BUCKET", "N", "K", "GROUP_SIZE", "A_BITS", "W_BITS"])
@triton.jit
def _lowbit_gemm_kernel(a_ptr, sx_ptr, zx_ptr, r_ptr, w_ptr, sw_ptr, zw_ptr, bias_ptr, out_ptr,
                        M, N, K, KA8, KW8, stride_a, stride_w, stride_o, GROUPS, GROUP_SIZE, M_BUCKET,
                        A_BITS: tl.constexpr, W_BITS: tl.constexpr, GROUPED: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    a_rows = a_ptr + rows.to(tl.int64)[:, None] * stride_a
    w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_w
    zx = tl.load(zx_ptr + rows, mask=row_mask, other=0)
    sx = tl.load(sx_ptr + rows, mask=row_mask, other=0.0)
    if GROUPED:
        y = tl.full((BLOCK_M, BLOCK_N), 0, tl.float32)
        for g in range(0, GROUPS):
            acc, r_g = _group_dot(a_rows, zx, w_cols, row_mask, col_mask, g * GROUP_SIZE, GROUP_SIZE,
                                  K, KA8, KW8, BLOCK_M, BLOCK_N, BLOCK_K, A_BITS, W_BITS, True)
            sw = tl.load(sw_ptr + cols * GROUPS + g, mask=col_mask, other=0.0)
            zw = tl.load(zw_ptr + cols * GROUPS + g, mask=col_mask, other=0.0)
            y += sw[None, :] * (acc.to(tl.float32) - zw[None, :] * r_g.to(tl.float32)[:, None])
        y = sx[:, None] * y
    else:
        acc, _ = _group_dot(a_rows, zx, w_cols, row_mask, col_mask, 0, K, K, KA8, KW8,
                            BLOCK_M, BLOCK_N, BLOCK_K, A_BITS, W_BITS, W_BITS == 8)
        r = tl.load(r_ptr + rows, mask=row_mask, other=0).to(tl.float32)
        sw = tl.load(sw_ptr + cols, mask=col_mask, other=0.0)
        zw = tl.load(zw_ptr + cols, mask=col_mask, other=0.0)
        y = (sx[:, None] * sw[None, :]) * (acc.to(tl.float32) - zw[None, :] * r[:, None])
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows.to(tl.int64)[:, None] * stride_o + cols[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def _check_weight_qparams(op: str, w_scale: object, w_zero: object, n: int, k: int, ref: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """fp32 [N] or [N, G] scale and zero (same shape) -> contiguous [N, G] views and G."""
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
    return w_scale.reshape(n, groups).contiguous(), w_zero.reshape(n, groups).contiguous(), groups


def lowbit_gemm(a_packed: torch.Tensor, a_scale: torch.Tensor, a_zero: torch.Tensor,
                a_rowsum: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor,
                w_zero: torch.Tensor, bias: torch.Tensor | None, w_bits: int, a_bits: int, k: int,
                out_dtype: torch.dtype) -> torch.Tensor:
    """Packed activations [M, packed_width(k, a_bits)] x packed weights [N, packed_width(k, w_bits)]
    -> out_dtype [M, N]. a_scale fp32 [M], a_zero/a_rowsum int32 [M]; w_scale/w_zero fp32 [N] (per
    channel) or [N, G] (G groups of k // G columns, k // G a multiple of 16); bias [N] or None."""
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
    a_rowsum = check_vector(op, "a_rowsum", a_rowsum, m, (torch.int32,), a_packed)
    sw, zw, groups = _check_weight_qparams(op, w_scale, w_zero, n, k, a_packed)
    if bias is not None:
        bias = check_vector(op, "bias", bias, n, _FLOAT_DTYPES, a_packed)
    group_size = k // groups
    block_k = gemm_block_k(k, group_size if groups > 1 else -1)
    if groups > 1 and block_k < GEMM_BLOCK_K_MIN:
        fail(op, "w_scale", f"groups of a multiple of {GEMM_BLOCK_K_MIN} columns", f"{group_size} (K={k}, G={groups})")
    out = empty_out((m, n), out_dtype, a_packed.device)
    if m == 0 or n == 0:
        return out.to(out_dtype)

    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"])

    _lowbit_gemm_kernel[grid](
        a_packed, a_scale, a_zero, a_rowsum, w_packed, sw, zw, bias if bias is not None else sw, out,
        m, n, k, a_packed.shape[1] * 8 // a_bits, w_packed.shape[1] * 8 // w_bits,
        a_packed.stride(0), w_packed.stride(0), out.stride(0), groups, group_size, m_bucket(m),
        A_BITS=a_bits, W_BITS=w_bits, GROUPED=groups > 1, HAS_BIAS=bias is not None, BLOCK_K=block_k)
    return out.to(out_dtype)
