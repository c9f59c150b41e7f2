"""Fused per-token activation quantization: clipped min/max, scale, zero, codes, packing to the
checkpoint layout and the row sum of (q - z), bit-exact with format.py.

One program per block of rows. When the padded row (K8 columns) fits in ROW_SINGLE_PASS_MAX_K the
row is read once (min/max and codes from the same registers); longer rows take two passes over K
chunks (pass 1: min/max, pass 2: codes + packing + row sum), reading x twice.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..format import ACT_EPS, packed_width, padded_k, qmax
from ._configs import (DEFAULT_SMS, ELEMENTWISE_BLOCK_K, EXACT_FP, ROW_PASS_BLOCK_K, ROW_SINGLE_PASS_MAX_K, cdiv,
                       launch_facts)
from ._utils import act_codes, act_qparams, check_act_inputs, pack_and_store

_TILE_ELEMS = 8192  # elements per program tile: bounds register use when a whole row is one tile


@triton.jit
def _load_x(x_ptr, rows64, row_mask, cols, K, stride_x):
    """fp32 tile of x; columns >= K read 0, which leaves min(0, min x) and max(0, max x) unchanged."""
    return tl.load(x_ptr + rows64 * stride_x + cols[None, :],
                   mask=row_mask & (cols[None, :] < K), other=0.0).to(tl.float32)


@triton.jit
def row_min_max(x_ptr, rows64, row_mask, cols, K, stride_x, BM: tl.constexpr, BK: tl.constexpr):
    """Per-row min and max of x over K in tiles of BK (starting from 0: the range always contains 0)."""
    mn = tl.full((BM,), 0, tl.float32)
    mx = tl.full((BM,), 0, tl.float32)
    for k0 in range(0, K, BK):
        xc = _load_x(x_ptr, rows64, row_mask, k0 + cols, K, stride_x)
        mn = tl.minimum(mn, tl.min(xc, axis=1))
        mx = tl.maximum(mx, tl.max(xc, axis=1))
    return mn, mx


@triton.jit
def row_qparams(clo_ptr, chi_ptr, rows, in_rows, mn, mx, P: tl.constexpr, EPS: tl.constexpr, lo_stride, hi_stride):
    """Per-row (scale, zero) from the row min/max and the rows' clip factors (stride 0: one for every row)."""
    clip_lo = tl.load(clo_ptr + rows * lo_stride, mask=in_rows, other=1.0)
    clip_hi = tl.load(chi_ptr + rows * hi_stride, mask=in_rows, other=1.0)
    _, _, scale, zero = act_qparams(mn, mx, clip_lo, clip_hi, P, EPS)
    return scale, zero


@triton.jit
def _emit_tile(x, cols, k0, out_rows, row_mask, scale, zero, K, K8,
               BM: tl.constexpr, BK: tl.constexpr, BITS: tl.constexpr, P: tl.constexpr):
    """Codes of one tile, packed and stored; returns the tile's row sum of (q - z) (int32)."""
    q, _ = act_codes(x, scale[:, None], zero[:, None], P)
    q = tl.where(cols[None, :] < K, q, zero[:, None])  # padding columns carry code z (a = 0)
    pack_and_store(out_rows, q.to(tl.int32), row_mask, k0, K8, BM, BK, BITS)
    return tl.sum((q - zero[:, None]).to(tl.int32), axis=1)


@triton.jit
def _quantize_act_kernel(x_ptr, clo_ptr, chi_ptr, packed_ptr, scale_ptr, zero_ptr, rowsum_ptr,
                         M, K, K8, stride_x, stride_p,
                         BM: tl.constexpr, BK: tl.constexpr, BITS: tl.constexpr, P: tl.constexpr,
                         EPS: tl.constexpr, SINGLE_PASS: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    in_rows = rows < M
    row_mask = in_rows[:, None]
    rows64 = rows.to(tl.int64)[:, None]
    out_rows = packed_ptr + rows64 * stride_p
    cols = tl.arange(0, BK)
    if SINGLE_PASS:
        x = _load_x(x_ptr, rows64, row_mask, cols, K, stride_x)
        mn = tl.min(x, axis=1)
        mx = tl.max(x, axis=1)
    else:
        mn, mx = row_min_max(x_ptr, rows64, row_mask, cols, K, stride_x, BM, BK)
    scale, zero = row_qparams(clo_ptr, chi_ptr, rows, in_rows, mn, mx, P, EPS, 1, 1)
    if SINGLE_PASS:
        rowsum = _emit_tile(x, cols, 0, out_rows, row_mask, scale, zero, K, K8, BM, BK, BITS, P)
    else:
        rowsum = tl.full((BM,), 0, tl.int32)
        for k0 in range(0, K8, BK):
            xc = _load_x(x_ptr, rows64, row_mask, k0 + cols, K, stride_x)
            rowsum += _emit_tile(xc, k0 + cols, k0, out_rows, row_mask, scale, zero, K, K8,
                                 BM, BK, BITS, P)
    tl.store(scale_ptr + rows, scale, mask=in_rows)
    tl.store(zero_ptr + rows, zero.to(tl.int32), mask=in_rows)
    tl.store(rowsum_ptr + rows, rowsum, mask=in_rows)


def row_tiles(k8: int) -> tuple[int, int, bool]:
    """(BLOCK_M, BLOCK_K, single_pass) for per-token kernels over rows of k8 padded columns."""
    single = k8 <= ROW_SINGLE_PASS_MAX_K
    bk = max(8, triton.next_power_of_2(k8)) if single else ELEMENTWISE_BLOCK_K
    return max(1, min(16, _TILE_ELEMS // bk)), bk, single


@functools.lru_cache(maxsize=4096)  # a pure function of its arguments, asked once per layer call
def token_tiles(k8: int, m: int, sms: int | None = None) -> tuple[int, int, bool, int]:
    """``row_tiles`` for the per-token quantize of m rows on ``sms`` SMs (None: ``DEFAULT_SMS``), and the launch's
    warps: long rows in wide column chunks, and fewer rows per program while the programs would not fill the SMs.
    Each chunk is a dependent load, so a program's time is about its chunk count (on an H200, 16 x 5120 bf16 in
    128-column chunks of 16 rows: 80 chunks, 42 us)."""
    bm, bk, single = row_tiles(k8)
    if not single:
        bk = ROW_PASS_BLOCK_K
        bm = max(1, min(16, _TILE_ELEMS // bk))
    sms = sms or DEFAULT_SMS
    while bm > 1 and cdiv(m, bm) < sms:
        bm //= 2
    return bm, bk, single, 4 if bm * bk <= 2048 else 8


def quantize_per_token(x: torch.Tensor, bits: int, clip_lo: torch.Tensor, clip_hi: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] fp32/fp16/bf16, clips [M] (fp32; fp16/bf16 are upcast) -> (packed uint8 [M, packed_width(K, bits)],
    scale fp32 [M], zero int32 [M], rowsum int32 [M]); rowsum[m] = sum_k (q_x - z_x)."""
    x, clip_lo, clip_hi = check_act_inputs("quantize_per_token (triton)", x, bits, clip_lo, clip_hi)
    m, k = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    dev = x.device
    packed = torch.empty(m, packed_width(k, bits), dtype=torch.uint8, device=dev)
    scale = torch.empty(m, dtype=torch.float32, device=dev)
    zero = torch.empty(m, dtype=torch.int32, device=dev)
    rowsum = torch.empty(m, dtype=torch.int32, device=dev)
    if m:
        k8 = padded_k(k, bits)
        bm, bk, single, warps = token_tiles(k8, m, launch_facts(dev)[0])
        _quantize_act_kernel[(cdiv(m, bm),)](
            x, clip_lo, clip_hi, packed, scale, zero, rowsum, m, k, k8, x.stride(0),
            packed.stride(0), BM=bm, BK=bk, BITS=bits, P=qmax(bits), EPS=ACT_EPS,
            SINGLE_PASS=single, num_warps=warps, **EXACT_FP)
    return packed, scale, zero, rowsum
