"""Tensor-core GEMM on the load-time layout of ``layout.py``: Y^T[n, m] = W[n, :] . a8[m, :] per block of
128 weight rows x BLOCK_M tokens, the fp32 epilogue of format.py fused, the output stored as Y [M, N].

Main loop (per K tile of BLOCK_K): one [64, BLOCK_K] byte tile of weights (3/4 bits: both 64-row halves
in its nibbles; 8 bits: two int8 tiles) and one [BLOCK_K, BLOCK_M] int8 activation tile (K-major, as the
8-bit MMA wants both operands), two int8 dots into two int32 accumulators. The weight halves are the
register operand (``b & 15``, ``b >> 4``: the unpack is two bitwise ops per 4 bytes), the activation tile
the shared-memory operand. Triton software-pipelines the loads over ``num_stages`` buffers (cp.async on
sm_80+; on sm_90 the next tiles' loads are in flight during the wgmmas). The wgmmas themselves are not kept in
flight: Triton (3.6 to 3.9) makes a wgmma "properly async" only with an fp32 accumulator, so each int32 dot
ends in a wait to 0, and the cp.async hand-off adds CTA-wide barriers per K tile: the warpgroups of a CTA
run in lockstep and the tensor cores idle between dots. Overlap comes from other resident CTAs (small token
tiles, several CTAs per SM); ``benchmarks.static_estimate`` predicts what that reaches. Token indices wrap
modulo M so the loads need no masks; the store masks the wrapped rows.

Epilogue (``layout.py`` for the integer identity): per channel, with r = S + e K,
    y = (s_x s_w) (float(dot + c S + e colsum) - z_w float(r)) + bias        (the reference's order)
per group (GROUP_SIZE a compile-time constant, 0 per channel): a fresh int32 accumulator per group, promoted as s_w[n, g] (float(...) - z_w[n, g] float(r_g)),
summed in fp32, then s_x * sum + bias. S comes from the quantize (per channel: the row sum of a8; per
group: the sum of the group's 32-column chunks).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._configs import gemm_configs, prune_gemm_configs
from ._utils import empty_out, interpreting
from .layout import CHUNK, ROW_BLOCK

HALF = ROW_BLOCK // 2
INTERPRET = tl.constexpr(interpreting())


@triton.jit
def _weight_halves(w_ptr, rows, k, KP, BLOCK_K: tl.constexpr, W8: tl.constexpr, HALF_: tl.constexpr):
    """int8 weight tiles [64, BLOCK_K] of the block's rows [0, 64) and [64, 128) at K offset k."""
    cols = k + tl.arange(0, BLOCK_K)
    if W8:
        lo = tl.load(w_ptr + rows[:, None] * KP + cols[None, :])
        hi = tl.load(w_ptr + (rows + HALF_)[:, None] * KP + cols[None, :])
    else:
        b = tl.load(w_ptr + rows[:, None] * KP + cols[None, :])
        lo, hi = _nibbles(b, INTERPRET)
    return lo, hi


@triton.jit
def _nibbles(b, INTERPRET_: tl.constexpr):
    """(b & 15, b >> 4) as int8. Compiled: one 32-bit op per 4 bytes (LLVM would work byte by byte);
    the interpreter has no inline asm and takes the same arithmetic in numpy."""
    if INTERPRET_:
        lo = (b & 15).to(tl.int8)
        hi = (b >> 4).to(tl.int8)
    else:
        lo = tl.inline_asm_elementwise("and.b32 $0, $1, 0x0F0F0F0F;", "=r,r", [b], dtype=tl.int8,
                                       is_pure=True, pack=4)
        hi = tl.inline_asm_elementwise("{ .reg .b32 t; shr.u32 t, $1, 4; and.b32 $0, t, 0x0F0F0F0F; }",
                                       "=r,r", [b], dtype=tl.int8, is_pure=True, pack=4)
    return lo, hi


@triton.jit
def _dot_tile(w_ptr, w_rows, a_cols, k, KP, acc_lo, acc_hi,
              BLOCK_K: tl.constexpr, W8: tl.constexpr, HALF_: tl.constexpr):
    """acc += W_half . a8^T over columns [k, k + BLOCK_K)."""
    lo, hi = _weight_halves(w_ptr, w_rows, k, KP, BLOCK_K, W8, HALF_)
    x = tl.load(a_cols + (k + tl.arange(0, BLOCK_K))[:, None])
    return tl.dot(lo, x, acc_lo, out_dtype=tl.int32), tl.dot(hi, x, acc_hi, out_dtype=tl.int32)


@triton.jit
def _exact(acc, S, e, cs, W8: tl.constexpr, A8: tl.constexpr):
    """sum_k (q_x - z_x) q_w as int32 [64, BM] from the dot of the stored operands (layout.py)."""
    if W8:
        acc += 128 * S[None, :]
    if A8:
        acc += cs[:, None] * e[None, :]
    return acc


@triton.jit
def _act_offset(zx_ptr, tok, BLOCK_M: tl.constexpr, A8: tl.constexpr):
    """e = 128 - z_x for 8-bit activations (a8 = q - 128), else 0 (a8 = q - z_x)."""
    if A8:
        e = 128 - tl.load(zx_ptr + tok)
    else:
        e = tl.zeros((BLOCK_M,), tl.int32)
    return e


@triton.jit
def _store(out_ptr, y, n, tok, N, M, stride_o):
    ptrs = out_ptr + tok.to(tl.int64)[None, :] * stride_o + n[:, None]
    tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=(n < N)[:, None] & (tok < M)[None, :])


@triton.autotune(configs=gemm_configs(), key=["M_BUCKET", "N", "KP", "GROUP_SIZE", "A_BITS", "W_BITS"],
                 prune_configs_by={"early_config_prune": prune_gemm_configs})
@triton.jit
def _tc_gemm_kernel(w_ptr, a_ptr, sx_ptr, zx_ptr, s_ptr, sw_ptr, zw_ptr, cs_ptr, bias_ptr, out_ptr,
                    M, N, K, KP, GROUPS, NCHUNK, stride_o, M_BUCKET, GROUP_SIZE: tl.constexpr,
                    W_BITS: tl.constexpr, A_BITS: tl.constexpr, GROUPED: tl.constexpr,
                    HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
                    SWIZZLE: tl.constexpr, HALF_: tl.constexpr):
    # Swizzled order: SWIZZLE weight blocks share each activation block while it is in L2.
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(N, 2 * HALF_)
    m_blocks = tl.cdiv(M, BLOCK_M)
    per_group = SWIZZLE * m_blocks
    first_n = (pid // per_group) * SWIZZLE
    size_n = tl.minimum(n_blocks - first_n, SWIZZLE)
    pid_n = first_n + (pid % per_group) % size_n
    pid_m = (pid % per_group) // size_n

    h = tl.arange(0, HALF_)
    w_rows = pid_n * (2 * HALF_ if W_BITS == 8 else HALF_) + h
    n_lo = pid_n * (2 * HALF_) + h
    n_hi = n_lo + HALF_
    tok = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tok_c = tok % M
    a_cols = a_ptr + tok_c.to(tl.int64)[None, :] * KP
    nl = tl.minimum(n_lo, N - 1)
    nh = tl.minimum(n_hi, N - 1)
    zero_acc = tl.zeros((HALF_, BLOCK_M), tl.int32)
    if GROUPED:
        y_lo = tl.zeros((HALF_, BLOCK_M), tl.float32)
        y_hi = tl.zeros((HALF_, BLOCK_M), tl.float32)
        # One pipelined loop over groups (a group is GROUP_SIZE // BLOCK_K K tiles, unrolled): a fresh
        # int32 accumulator per group, promoted to fp32 in the loop.
        for g in range(0, GROUPS):
            acc_lo = zero_acc
            acc_hi = zero_acc
            for t in tl.static_range(GROUP_SIZE // BLOCK_K):
                acc_lo, acc_hi = _dot_tile(w_ptr, w_rows, a_cols, g * GROUP_SIZE + t * BLOCK_K, KP, acc_lo,
                                           acc_hi, BLOCK_K, W_BITS == 8, HALF_)
            e = _act_offset(zx_ptr, tok_c, BLOCK_M, A_BITS == 8)
            S = tl.zeros((BLOCK_M,), tl.int32)
            for c in tl.static_range(GROUP_SIZE // 32):
                S += tl.load(s_ptr + tok_c * NCHUNK + g * (GROUP_SIZE // 32) + c)
            r = (S + e * GROUP_SIZE).to(tl.float32)
            y_lo += _promote(acc_lo, nl * GROUPS + g, S, e, r, sw_ptr, zw_ptr, cs_ptr, W_BITS == 8, A_BITS == 8)
            y_hi += _promote(acc_hi, nh * GROUPS + g, S, e, r, sw_ptr, zw_ptr, cs_ptr, W_BITS == 8, A_BITS == 8)
        sx = tl.load(sx_ptr + tok_c)
        _finish(out_ptr, sx[None, :] * y_lo, bias_ptr, nl, n_lo, tok, N, M, stride_o, HAS_BIAS)
        _finish(out_ptr, sx[None, :] * y_hi, bias_ptr, nh, n_hi, tok, N, M, stride_o, HAS_BIAS)
    else:
        acc_lo = zero_acc
        acc_hi = zero_acc
        for k in range(0, KP, BLOCK_K):
            acc_lo, acc_hi = _dot_tile(w_ptr, w_rows, a_cols, k, KP, acc_lo, acc_hi, BLOCK_K, W_BITS == 8, HALF_)
        # Per-token operands are loaded after the loop (they would hold registers across it), and each
        # half is finished and stored before the other (the two int32 accumulators fill the registers).
        sx = tl.load(sx_ptr + tok_c)
        e = _act_offset(zx_ptr, tok_c, BLOCK_M, A_BITS == 8)
        S = tl.load(s_ptr + tok_c)
        r = (S + e * K).to(tl.float32)
        y = _per_channel(acc_lo, nl, sx, S, e, r, sw_ptr, zw_ptr, cs_ptr, W_BITS == 8, A_BITS == 8)
        _finish(out_ptr, y, bias_ptr, nl, n_lo, tok, N, M, stride_o, HAS_BIAS)
        y = _per_channel(acc_hi, nh, sx, S, e, r, sw_ptr, zw_ptr, cs_ptr, W_BITS == 8, A_BITS == 8)
        _finish(out_ptr, y, bias_ptr, nh, n_hi, tok, N, M, stride_o, HAS_BIAS)


@triton.jit
def _promote(acc, idx, S, e, r, sw_ptr, zw_ptr, cs_ptr, W8: tl.constexpr, A8: tl.constexpr):
    """One group's s_w (float(sum a q_w) - z_w r_g), [64, BM] fp32."""
    t = _exact(acc, S, e, tl.load(cs_ptr + idx), W8, A8).to(tl.float32)
    return tl.load(sw_ptr + idx)[:, None] * (t - tl.load(zw_ptr + idx)[:, None] * r[None, :])


@triton.jit
def _per_channel(acc, n, sx, S, e, r, sw_ptr, zw_ptr, cs_ptr, W8: tl.constexpr, A8: tl.constexpr):
    """(s_x s_w) (float(sum a q_w) - z_w r), the reference's order."""
    t = _exact(acc, S, e, tl.load(cs_ptr + n), W8, A8).to(tl.float32)
    return (sx[None, :] * tl.load(sw_ptr + n)[:, None]) * (t - tl.load(zw_ptr + n)[:, None] * r[None, :])


@triton.jit
def _finish(out_ptr, y, bias_ptr, n_c, n, tok, N, M, stride_o, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        y += tl.load(bias_ptr + n_c).to(tl.float32)[:, None]
    _store(out_ptr, y, n, tok, N, M, stride_o)


def gemm_block_k_for(k: int, groups: int) -> int:
    from ._configs import gemm_block_k
    return gemm_block_k(k, k // groups if groups > 1 else -1)


def tc_gemm(a8: torch.Tensor, sx: torch.Tensor, zx: torch.Tensor, s: torch.Tensor, w: torch.Tensor,
            colsum: torch.Tensor, sw: torch.Tensor, zw: torch.Tensor, bias: torch.Tensor | None,
            w_bits: int, a_bits: int, k: int, n: int, out_dtype: torch.dtype) -> torch.Tensor:
    """a8 int8 [M, KP], sx fp32 [M], zx int32 [M], s int32 [M] (per channel: row sums of a8) or
    [M, KP / 32] (per group: 32-column sums); weights in the layout of ``layout.py`` with colsum int32
    [N, G], sw / zw fp32 [N, G]; bias [N] or None -> out_dtype [M, N]. Arguments are validated upstream."""
    m, kp = a8.shape
    groups = sw.shape[1]
    block_k = gemm_block_k_for(k, groups)
    out = empty_out((m, n), out_dtype, a8.device)
    if m == 0 or n == 0:
        return out.to(out_dtype)

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, ROW_BLOCK),)

    from ._configs import m_bucket
    _tc_gemm_kernel[grid](
        w, a8, sx, zx, s, sw, zw, colsum, bias if bias is not None else sw, out,
        m, n, k, kp, groups, s.shape[1] if s.dim() == 2 else 0, out.stride(0), m_bucket(m),
        GROUP_SIZE=k // groups if groups > 1 else 0,
        W_BITS=w_bits, A_BITS=a_bits, GROUPED=groups > 1, HAS_BIAS=bias is not None, BLOCK_K=block_k,
        HALF_=HALF)
    return out.to(out_dtype)
