"""Triton pack / unpack of low-bit codes in the checkpoint layout of format.py (bit-exact)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..format import check_bits, packed_width, padded_k, qmax

from ..errors import fail
from ._configs import ELEMENTWISE_BLOCK_K, ELEMENTWISE_BLOCK_M
from ._utils import check_k, check_packed, check_tensor, pack_and_store, unpack_codes


@triton.jit
def _pack_kernel(codes_ptr, out_ptr, R, K, K8, stride_c, stride_o,
                 BM: tl.constexpr, BK: tl.constexpr, BITS: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    k0 = tl.program_id(1) * BK
    cols = k0 + tl.arange(0, BK)
    row_mask = (rows < R)[:, None]
    rows64 = rows.to(tl.int64)[:, None]
    # Columns in [K, K8) are padding: code 0.
    codes = tl.load(codes_ptr + rows64 * stride_c + cols[None, :],
                    mask=row_mask & (cols[None, :] < K), other=0).to(tl.int32)
    pack_and_store(out_ptr + rows64 * stride_o, codes, row_mask, k0, K8, BM, BK, BITS)


@triton.jit
def _unpack_kernel(packed_ptr, out_ptr, R, K, K8, stride_p, stride_o,
                   BM: tl.constexpr, BK: tl.constexpr, BITS: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BK + tl.arange(0, BK)
    mask = (rows < R)[:, None] & (cols < K)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    codes = unpack_codes(packed_ptr + rows64 * stride_p, cols[None, :], mask, K8, BITS)
    tl.store(out_ptr + rows64 * stride_o + cols[None, :], codes.to(tl.uint8), mask=mask)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [..., K] in [0, 2^bits - 1] -> packed uint8 [..., packed_width(K, bits)]."""
    op = "pack (triton)"
    check_bits(op, "bits", bits, (3, 4, 8))
    check_tensor(op, "codes", codes, dtypes=(torch.uint8,))
    if codes.dim() == 0 or codes.shape[-1] == 0:
        fail(op, "codes", "a tensor [..., K] with K >= 1", f"shape {tuple(codes.shape)}")
    k = codes.shape[-1]
    flat = codes.reshape(-1, k).contiguous()
    if flat.numel() and int(flat.max()) > qmax(bits):
        fail(op, "codes", f"values in [0, {qmax(bits)}] for bits={bits}", f"max {int(flat.max())}")
    out = torch.empty(flat.shape[0], packed_width(k, bits), dtype=torch.uint8, device=codes.device)
    if flat.shape[0]:
        k8 = padded_k(k, bits)
        grid = (triton.cdiv(flat.shape[0], ELEMENTWISE_BLOCK_M), triton.cdiv(k8, ELEMENTWISE_BLOCK_K))
        _pack_kernel[grid](flat, out, flat.shape[0], k, k8, flat.stride(0), out.stride(0),
                           BM=ELEMENTWISE_BLOCK_M, BK=ELEMENTWISE_BLOCK_K, BITS=bits)
    return out.reshape(*codes.shape[:-1], out.shape[-1])


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Packed uint8 [..., packed_width(k, bits)] -> uint8 codes [..., k]."""
    op = "unpack (triton)"
    check_bits(op, "bits", bits, (3, 4, 8))
    check_k(op, k)
    check_tensor(op, "packed", packed, dtypes=(torch.uint8,))
    if packed.dim() == 0:
        fail(op, "packed", "a tensor [..., packed_width]", "a 0-D tensor")
    flat = check_packed(op, "packed", packed.reshape(-1, packed.shape[-1]), None, k, bits)
    out = torch.empty(flat.shape[0], k, dtype=torch.uint8, device=packed.device)
    if flat.shape[0]:
        grid = (triton.cdiv(flat.shape[0], ELEMENTWISE_BLOCK_M), triton.cdiv(k, ELEMENTWISE_BLOCK_K))
        _unpack_kernel[grid](flat, out, flat.shape[0], k, padded_k(k, bits), flat.stride(0),
                             out.stride(0), BM=ELEMENTWISE_BLOCK_M, BK=ELEMENTWISE_BLOCK_K, BITS=bits)
    return out.reshape(*packed.shape[:-1], k)
