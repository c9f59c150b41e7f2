"""Hopper GEMM of the deployed 3/4-bit path written in Gluon (Triton's explicit-layout dialect): the same
operands, layout (``layout.py``) and epilogue arithmetic as ``gemm_tc.py``, with the wgmmas kept in flight.

Why a second kernel: Triton's pipeliner makes a wgmma asynchronous only with an fp32 accumulator and operands
it can multi-buffer, so every int32 dot of ``gemm_tc.py`` (its weight operand unpacked in registers) ends in a
wait for the tensor cores to drain; in Gluon the waits are written by hand. A program takes two layout blocks
(256 weight rows) x BLOCK_M tokens with two warpgroups, one block each; per K tile each warpgroup runs

    b  = weight byte tile (shared -> registers);  lo = b & 15
    issue  acc_lo += lo . x^T                      (async)
    wait   until 1 group is pending                (the previous tile's hi dot is done: its registers free)
    hi = b >> 4;  issue  acc_hi += hi . x^T        (async)
    wait   until 1 group is pending                (this tile's lo dot is done)

so one dot is always queued on the tensor cores while the other half is unpacked. The waits name only the
accumulators: ptxas keeps a pending dot's register operand (lo, hi) from being reused before the wait that retires it
(read in the sm_90a SASS; tests/kernels/test_gluon_gemm.py checks that no wgmma is serialised). The activation and
weight tiles come in by cp.async over STAGES shared-memory buffers, issued STAGES - 2 tiles ahead: a buffer is
refilled only after every warpgroup has passed the waits of the tile that read it (the kernel's CTA barrier per K
tile; Triton adds two or three of its own around the waits, which keep the warpgroups in step without draining
the queued dots).

Scope: per-channel weight scales, 3/4-bit weights and activations, sm_90 only (wgmma); launched with
``gluon_gemm``. Not the automatic choice: ``QVGEN_TRITON_GEMM=gluon`` selects it for the deployed calls it covers
(``_configs.gemm_kernel``), until a GPU run measures it against ``gemm_tc.py``. The first K tile is peeled off the
loop (see there). No CPU path: Triton's interpreter does not run Gluon. Epilogue as ``gemm_tc._per_channel`` and ``_finish``,
in the same order, compiled without FMA contraction (``EXACT_FP``): its outputs equal that kernel's bit for bit.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, warpgroup_mma, warpgroup_mma_init,
                                                              warpgroup_mma_wait)

from ._configs import EXACT_FP, cdiv
from ._utils import empty_out
from .layout import ROW_BLOCK

# Triton 3.6 and the pinned 3.9 name two Gluon builtins differently.
_ASYNC_LOAD = getattr(cp, "async_load", None) or cp.async_copy_global_to_shared
_BARRIER = getattr(gl, "barrier", None) or gl.thread_barrier

GLUON_BLOCK_M = 128   # tokens per program (the wgmma's N)
GLUON_BLOCK_K = 128
GLUON_STAGES = 5      # shared-memory buffers of (activation tile + weight byte tile): 5 x 32 KiB
GLUON_WARPS = 8       # two warpgroups: one 128-row layout block each
GLUON_SWIZZLE = 8     # weight blocks of 256 rows per tile-order group (K = 5120: 8 x 640 KiB of weights in L2)
ROW_BLOCK_ = gl.constexpr(ROW_BLOCK)


@gluon.jit
def _gluon_gemm_kernel(w_ptr, a_ptr, sx_ptr, s_ptr, sw_ptr, zw_ptr, bias_ptr, out_ptr, M, N, K, KP, stride_o,
                       HAS_BIAS: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_K: gl.constexpr,
                       STAGES: gl.constexpr, NUM_WARPS: gl.constexpr, SWIZZLE: gl.constexpr):
    ROWS: gl.constexpr = 2 * 64           # weight byte rows per program: two layout blocks of 64 byte rows
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                  instr_shape=[16, BLOCK_M, 32])
    w_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
    ld: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [NUM_WARPS, 1], [1, 0])
    tile_l: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)
    x_smem = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_M, BLOCK_K], tile_l)
    w_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, ROWS, BLOCK_K], tile_l)

    # Tile order (gemm_tc's): groups of SWIZZLE weight blocks sweep the tokens, the group's blocks side by side, so
    # the group's weights stay in L2 while each activation block is read by SWIZZLE neighbouring programs.
    pid = gl.program_id(0)
    n_blocks = gl.cdiv(N, 2 * ROW_BLOCK_)
    per_group = SWIZZLE * gl.cdiv(M, BLOCK_M)
    first_n = (pid // per_group) * SWIZZLE
    size_n = gl.minimum(n_blocks - first_n, SWIZZLE)
    pid_n = first_n + (pid % per_group) % size_n
    pid_m = (pid % per_group) // size_n

    # Loads need no masks: tokens wrap modulo M, byte rows modulo the layout's (the stores mask both).
    tok_l = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld))
    rows_l = (pid_n * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, ld))) % (gl.cdiv(N, ROW_BLOCK_) * 64)
    cols = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, ld))
    x_ptrs = a_ptr + (tok_l % M).to(gl.int64)[:, None] * KP + cols[None, :]
    w_ptrs = w_ptr + rows_l.to(gl.int64)[:, None] * KP + cols[None, :]
    n_k = KP // BLOCK_K
    AHEAD: gl.constexpr = STAGES - 2
    for p in gl.static_range(AHEAD):
        _ASYNC_LOAD(x_smem.index(p), x_ptrs + p * BLOCK_K, mask=(tok_l[:, None] >= 0) & (p < n_k))
        _ASYNC_LOAD(w_smem.index(p), w_ptrs + p * BLOCK_K, mask=(rows_l[:, None] >= 0) & (p < n_k))
        cp.commit_group()

    # The first K tile is peeled off the loop: every path to the last wait then carries accumulators that dots
    # wrote (a path around an empty loop would define them with moves, and ptxas serialises every wgmma of a
    # kernel where an instruction other than a wgmma defines a pending dot's accumulator).
    acc_lo = gl.zeros([ROWS, BLOCK_M], gl.int32, layout=mma)
    acc_hi = gl.zeros([ROWS, BLOCK_M], gl.int32, layout=mma)
    acc_lo, acc_hi = _k_tile(0, n_k, acc_lo, acc_hi, x_smem, w_smem, x_ptrs, w_ptrs, tok_l, rows_l, w_op,
                             BLOCK_K, STAGES)
    for i in range(1, n_k):
        acc_lo, acc_hi = _k_tile(i, n_k, acc_lo, acc_hi, x_smem, w_smem, x_ptrs, w_ptrs, tok_l, rows_l, w_op,
                                 BLOCK_K, STAGES)
    acc_lo, acc_hi = warpgroup_mma_wait(0, deps=[acc_lo, acc_hi])
    cp.wait_group(0)

    # Epilogue (gemm_tc._token_terms, _per_channel, _finish; 3/4-bit activations: e = 0, r = S).
    tok = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma))
    tok_c = tok % M
    sx = gl.load(sx_ptr + tok_c)
    r = gl.load(s_ptr + tok_c).to(gl.float32)
    h = gl.arange(0, ROWS, layout=gl.SliceLayout(1, mma))
    n_lo = pid_n * (2 * ROW_BLOCK_) + (h // 64) * ROW_BLOCK_ + h % 64
    # Stored from a layout with 8 consecutive output channels per thread (16-byte stores along Y's rows).
    st: gl.constexpr = gl.BlockedLayout([8, 1], [16, 2], [1, NUM_WARPS], [0, 1])
    _finish_half(acc_lo, n_lo, tok, sx, r, sw_ptr, zw_ptr, bias_ptr, out_ptr, M, N, stride_o, HAS_BIAS, st)
    _finish_half(acc_hi, n_lo + 64, tok, sx, r, sw_ptr, zw_ptr, bias_ptr, out_ptr, M, N, stride_o, HAS_BIAS, st)


@gluon.jit
def _k_tile(i, n_k, acc_lo, acc_hi, x_smem, w_smem, x_ptrs, w_ptrs, tok_l, rows_l, w_op: gl.constexpr,
            BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
    """K tile i: refill the buffer tile i - 2 used, then both dots, each left in flight (module docstring)."""
    AHEAD: gl.constexpr = STAGES - 2
    s = i % STAGES
    cp.wait_group(AHEAD - 1)        # tile i has landed (this thread's copies) ...
    fence_async_shared()            # ... is visible to the wgmma's async proxy ...
    _BARRIER()                      # ... for every thread; and every warpgroup is past tile i - 1's waits
    nxt = i + AHEAD                 # into the buffer tile i - 2 used: all its dots are done
    _ASYNC_LOAD(x_smem.index(nxt % STAGES), x_ptrs + nxt * BLOCK_K, mask=(tok_l[:, None] >= 0) & (nxt < n_k))
    _ASYNC_LOAD(w_smem.index(nxt % STAGES), w_ptrs + nxt * BLOCK_K, mask=(rows_l[:, None] >= 0) & (nxt < n_k))
    cp.commit_group()

    xt = x_smem.index(s).permute((1, 0))
    b = w_smem.index(s).load(w_op)
    lo = gl.inline_asm_elementwise("and.b32 $0, $1, 0x0F0F0F0F;", "=r,r", [b], dtype=gl.int8, is_pure=True, pack=4)
    acc_lo = warpgroup_mma(lo, xt, acc_lo, is_async=True)
    acc_hi = warpgroup_mma_wait(1, deps=[acc_hi])      # tile i - 1's hi dot is done: its registers are free
    hi = gl.inline_asm_elementwise("{ .reg .b32 t; shr.u32 t, $1, 4; and.b32 $0, t, 0x0F0F0F0F; }", "=r,r", [b],
                                   dtype=gl.int8, is_pure=True, pack=4)
    acc_hi = warpgroup_mma(hi, xt, acc_hi, is_async=True)
    acc_lo = warpgroup_mma_wait(1, deps=[acc_lo])      # tile i's lo dot is done
    return acc_lo, acc_hi


@gluon.jit
def _finish_half(acc, n, tok, sx, r, sw_ptr, zw_ptr, bias_ptr, out_ptr, M, N, stride_o, HAS_BIAS: gl.constexpr,
                 st: gl.constexpr):
    """(s_x s_w) (float(acc) - z_w r) (+ bias), stored as out's dtype: gemm_tc's order, operation by operation."""
    n_c = gl.minimum(n, N - 1)
    t = acc.to(gl.float32)
    y = (sx[None, :] * gl.load(sw_ptr + n_c)[:, None]) * (t - gl.load(zw_ptr + n_c)[:, None] * r[None, :])
    if HAS_BIAS:
        y += gl.load(bias_ptr + n_c).to(gl.float32)[:, None]
    y = gl.convert_layout(y.to(out_ptr.dtype.element_ty), st)
    n_s = gl.convert_layout(n, gl.SliceLayout(1, st))
    tok_s = gl.convert_layout(tok, gl.SliceLayout(0, st))
    ptrs = out_ptr + tok_s.to(gl.int64)[None, :] * stride_o + n_s[:, None]
    gl.store(ptrs, y, mask=(n_s < N)[:, None] & (tok_s < M)[None, :])


def gluon_gemm(a8: torch.Tensor, sx: torch.Tensor, s: torch.Tensor, w: torch.Tensor, sw: torch.Tensor,
               zw: torch.Tensor, bias: torch.Tensor | None, k: int, n: int, out_dtype: torch.dtype) -> torch.Tensor:
    """``gemm_tc.tc_gemm``'s per-channel 3/4-bit case: a8 int8 [M, KP], sx fp32 [M], s int32 [M] (row sums of a8),
    the nibble weight layout w uint8 [NP / 2, KP] with sw / zw fp32 [N, 1], bias [N] or None -> out_dtype [M, N].
    Arguments are validated upstream (``_configs.gemm_kernel`` says which calls it takes)."""
    m, kp = a8.shape
    out = empty_out((m, n), out_dtype, a8.device)
    if m == 0 or n == 0:
        return out.to(out_dtype)
    grid = (cdiv(m, GLUON_BLOCK_M) * cdiv(n, 2 * ROW_BLOCK),)
    _gluon_gemm_kernel[grid](w, a8, sx, s, sw, zw, bias if bias is not None else sw, out, m, n, k, kp, out.stride(0),
                             HAS_BIAS=bias is not None, BLOCK_M=GLUON_BLOCK_M, BLOCK_K=GLUON_BLOCK_K,
                             STAGES=GLUON_STAGES, NUM_WARPS=GLUON_WARPS, SWIZZLE=GLUON_SWIZZLE,
                             num_warps=GLUON_WARPS, **EXACT_FP)
    return out.to(out_dtype)


__all__ = ["GLUON_BLOCK_K", "GLUON_BLOCK_M", "GLUON_STAGES", "GLUON_SWIZZLE", "GLUON_WARPS", "gluon_gemm"]
