"""Per-token activation quantize that emits the tensor-core GEMM's operand (``layout.py``): int8 a8 [M, KP]
(q - z for 3/4 bits, q - 128 for 8 bits; padding 0), scale fp32 [M], zero int32 [M], the row sum of a8
int32 [M] and, for weight groups, its sums per 32 columns int32 [M, KP / 32].

Same quantization arithmetic as ``quantize_act.py`` (bit-exact with format.py); only the output differs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..format import ACT_EPS, qmax
from ._configs import EXACT_FP, cdiv, launch_facts
from ._utils import act_codes
from .layout import CHUNK, kernel_k
from .quantize_act import _load_x, row_min_max, row_qparams, token_tiles


@triton.jit
def _emit_i8(x, cols, k0, a_rows, chunk_rows, row_mask, scale, off, zero, K, KP, NCHUNK,
             BM: tl.constexpr, BK: tl.constexpr, P: tl.constexpr, CHUNKS: tl.constexpr,
             CH: tl.constexpr):
    """Store a8 of one tile (and its 32-column sums); returns the tile's row sum of a8."""
    q, _ = act_codes(x, scale[:, None], zero[:, None], P)
    a = tl.where(cols[None, :] < K, q - off[:, None], 0.0).to(tl.int32)
    tl.store(a_rows + cols[None, :], a.to(tl.int8), mask=row_mask & (cols[None, :] < KP))
    if CHUNKS:
        ch = k0 // CH + tl.arange(0, BK // CH)
        tl.store(chunk_rows + ch[None, :], tl.sum(tl.reshape(a, (BM, BK // CH, CH)), axis=2),
                 mask=row_mask & (ch[None, :] < NCHUNK))
    return tl.sum(a, axis=1)


@triton.jit
def _quantize_i8_kernel(x_ptr, clo_ptr, chi_ptr, a_ptr, scale_ptr, zero_ptr, rowsum_ptr, chunk_ptr,
                        M, K, KP, NCHUNK, stride_x, lo_stride, hi_stride,
                        BM: tl.constexpr, BK: tl.constexpr, P: tl.constexpr, EPS: tl.constexpr,
                        A8: tl.constexpr, SINGLE_PASS: tl.constexpr, CHUNKS: tl.constexpr,
                        CH: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    in_rows = rows < M
    row_mask = in_rows[:, None]
    rows64 = rows.to(tl.int64)[:, None]
    a_rows = a_ptr + rows64 * KP
    chunk_rows = chunk_ptr + rows64 * NCHUNK
    cols = tl.arange(0, BK)
    if SINGLE_PASS:
        x = _load_x(x_ptr, rows64, row_mask, cols, K, stride_x)
        mn = tl.min(x, axis=1)
        mx = tl.max(x, axis=1)
    else:
        mn, mx = row_min_max(x_ptr, rows64, row_mask, cols, K, stride_x, BM, BK)
    scale, zero = row_qparams(clo_ptr, chi_ptr, rows, in_rows, mn, mx, P, EPS, lo_stride, hi_stride)
    off = tl.full((BM,), 128.0, tl.float32) if A8 else zero  # 8 bits: q - z spans [-255, 255]
    if SINGLE_PASS:
        rowsum = _emit_i8(x, cols, 0, a_rows, chunk_rows, row_mask, scale, off, zero, K, KP, NCHUNK,
                          BM, BK, P, CHUNKS, CH)
    else:
        rowsum = tl.full((BM,), 0, tl.int32)
        for k0 in range(0, KP, BK):
            xc = _load_x(x_ptr, rows64, row_mask, k0 + cols, K, stride_x)
            rowsum += _emit_i8(xc, k0 + cols, k0, a_rows, chunk_rows, row_mask, scale, off, zero, K, KP,
                               NCHUNK, BM, BK, P, CHUNKS, CH)
    tl.store(scale_ptr + rows, scale, mask=in_rows)
    tl.store(zero_ptr + rows, zero.to(tl.int32), mask=in_rows)
    tl.store(rowsum_ptr + rows, rowsum, mask=in_rows)


def _clip_stride(clip: torch.Tensor) -> int:
    return 0 if clip.numel() == 1 else clip.stride(0)


def quantize_act_i8(x: torch.Tensor, bits: int, clip_lo: torch.Tensor, clip_hi: torch.Tensor,
                    chunk_sums: bool, tiles: tuple[int, int, bool, int] | None = None) -> tuple[torch.Tensor, ...]:
    """x [M, K] fp32/fp16/bf16 (unit stride along K), clips fp32 [M] (or [1]: one
    pair for every row) -> (a8 int8 [M, KP], scale fp32 [M],
    zero int32 [M], rowsum int32 [M] (of a8), chunks int32 [M, KP / 32] (sums of a8 per 32 columns; [M, 0]
    unless ``chunk_sums``)). Arguments are validated by the caller. ``tiles`` (rows per program, column tile, one
    pass, warps) replaces ``token_tiles``' choice (launch sweeps; one pass needs a column tile covering KP)."""
    assert x.dim() == 2 and x.stride(1) == 1 and bits in (3, 4, 8)
    m, k = x.shape
    kp = kernel_k(k)
    dev = x.device
    a8 = torch.empty(m, kp, dtype=torch.int8, device=dev)
    scale = torch.empty(m, dtype=torch.float32, device=dev)
    zero = torch.empty(m, dtype=torch.int32, device=dev)
    rowsum = torch.empty(m, dtype=torch.int32, device=dev)
    nchunk = kp // CHUNK if chunk_sums else 0
    chunks = torch.empty(m, nchunk, dtype=torch.int32, device=dev)
    if m:
        bm, bk, single, warps = tiles or token_tiles(kp, m, launch_facts(dev)[0])
        _quantize_i8_kernel[(cdiv(m, bm),)](
            x, clip_lo, clip_hi, a8, scale, zero, rowsum, chunks if nchunk else rowsum, m, k, kp, nchunk,
            x.stride(0), _clip_stride(clip_lo), _clip_stride(clip_hi), BM=bm, BK=max(bk, CHUNK), P=qmax(bits),
            EPS=ACT_EPS, A8=bits == 8, SINGLE_PASS=single, CHUNKS=nchunk > 0, CH=CHUNK, num_warps=warps, **EXACT_FP)
    return a8, scale, zero, rowsum, chunks
