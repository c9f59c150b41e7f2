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
tiles, several CTAs per SM); ``benchmarks.static_estimate`` predicts what that reaches. (Triton's pipeliner also
keeps a register operand computed inside the loop from going asynchronous. ``gemm_gluon.py`` writes the waits by
hand in Gluon and keeps one dot in flight; it runs where ``_configs.gemm_kernel`` chooses it.) On sm_90 the 3/4-bit
variants also have a one-warpgroup tile of 128 tokens (``_configs.HOPPER_GEMM_TILES``): two resident CTAs fill
each other's gaps, and it reads half the shared-memory bytes per MAC of the 64-token tile. A program may also
take two layout blocks (ROW_BLOCKS = 2: 256 weight rows, a [128, BLOCK_K] byte tile whose halves are [128, BLOCK_K]
int8 operands, two warpgroups splitting the rows; ``_configs.HOPPER_WIDE_GEMM_TILES``): the activation tile then
serves 256 rows, 2/3 of the L2-to-SM bytes per MAC of a 128 x 128 tile. Token indices wrap modulo M (and the
weight rows of the 256-row tile modulo the layout's rows) so the loads need no masks; the store masks the
wrapped rows.

Epilogue (``layout.py`` for the integer identity): per channel, with r = S + e K,
    y = (s_x s_w) (float(dot + c S + e colsum) - z_w float(r)) + bias        (the reference's order)
per group (GROUP_SIZE a compile-time constant, 0 per channel): a fresh int32 accumulator per group, promoted as s_w[n, g] (float(...) - z_w[n, g] float(r_g)),
summed in fp32, then s_x * sum + bias. S comes from the quantize (per channel: the row sum of a8; per
group: the sum of the group's 32-column chunks).

Split K (per channel, small M; ``_configs.gemm_launch`` decides): a grid of (output tiles, SPLIT_K) programs,
each summing its share of the K tiles. The int32 partial tiles meet in a zeroed workspace through relaxed
atomic adds in L2 (integer addition: the total is the same in any order, so the result is bit-identical to
the unsplit kernel); after a CTA barrier one thread counts the program's arrival with an acq_rel atomic (the
release publishes the whole CTA's adds); the last of a tile's programs exchanges the sums for zeros (atomic
exchange: read and reset in L2), resets the counter and runs the same epilogue. The workspace is zero again
when the launch ends.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._configs import (EXACT_FP, GemmLaunch, cdiv, gemm_block_k, gemm_configs, gemm_launch, launch_facts, m_bucket,
                       prune_gemm_configs)
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
def _split_rows(a):
    """Inverse of ``_joined_rows``: [2R, C] -> ([R, C], [R, C])."""
    return tl.split(tl.permute(tl.reshape(a, (2, a.shape[0] // 2, a.shape[1])), (1, 2, 0)))


@triton.jit
def _joined_rows(lo, hi):
    """[R, C] and [R, C] -> [2R, C]: the rows of lo, then the rows of hi (in registers)."""
    return tl.reshape(tl.permute(tl.join(lo, hi), (2, 0, 1)), (2 * lo.shape[0], lo.shape[1]))


@triton.jit
def _dot_tile_joined(w_ptr, w_rows, a_cols, k, KP, acc, BLOCK_K: tl.constexpr, W8: tl.constexpr,
                     HALF_: tl.constexpr):
    """acc += [W_lo; W_hi] . a8^T over columns [k, k + BLOCK_K): one dot for both halves."""
    lo, hi = _weight_halves(w_ptr, w_rows, k, KP, BLOCK_K, W8, HALF_)
    x = tl.load(a_cols + (k + tl.arange(0, BLOCK_K))[:, None])
    return tl.dot(_joined_rows(lo, hi), x, acc, out_dtype=tl.int32)


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
def _tc_gemm_kernel(w_ptr, a_ptr, sx_ptr, zx_ptr, s_ptr, sw_ptr, zw_ptr, cs_ptr, bias_ptr, out_ptr, ws_ptr,
                    M, N, K, KP, GROUPS, NCHUNK, stride_o, M_BUCKET, GROUP_SIZE: tl.constexpr,
                    W_BITS: tl.constexpr, A_BITS: tl.constexpr, GROUPED: tl.constexpr,
                    HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
                    SWIZZLE: tl.constexpr, HALF_: tl.constexpr, SPLIT_K: tl.constexpr = 1,
                    ROW_BLOCKS: tl.constexpr = 1):
    # Swizzled order: SWIZZLE weight blocks share each activation block while it is in L2.
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(N, 2 * HALF_ * ROW_BLOCKS)
    m_blocks = tl.cdiv(M, BLOCK_M)
    per_group = SWIZZLE * m_blocks
    first_n = (pid // per_group) * SWIZZLE
    size_n = tl.minimum(n_blocks - first_n, SWIZZLE)
    pid_n = first_n + (pid % per_group) % size_n
    pid_m = (pid % per_group) // size_n

    if ROW_BLOCKS == 1:
        h = tl.arange(0, HALF_)
        w_rows = pid_n * (2 * HALF_ if W_BITS == 8 else HALF_) + h
        n_lo = pid_n * (2 * HALF_) + h
    else:
        # ROW_BLOCKS layout blocks of 128 rows per program: the accumulators' row i holds output row
        # 128 (ROW_BLOCKS pid_n + i // 64) + i % 64 (lo) and that + 64 (hi). Rows past the last layout block
        # (the weights hold whole blocks only) wrap to the first ones, like the tokens: no masked loads; their
        # outputs are not stored.
        h = tl.arange(0, ROW_BLOCKS * HALF_)
        n_lo = pid_n * (2 * HALF_ * ROW_BLOCKS) + (h // HALF_) * (2 * HALF_) + h % HALF_
        if W_BITS == 8:
            w_rows = n_lo % (tl.cdiv(N, 2 * HALF_) * (2 * HALF_))
        else:
            w_rows = (pid_n * (HALF_ * ROW_BLOCKS) + h) % (tl.cdiv(N, 2 * HALF_) * HALF_)
    n_hi = n_lo + HALF_
    tok = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tok_c = tok % M
    a_cols = a_ptr + tok_c.to(tl.int64)[None, :] * KP
    nl = tl.minimum(n_lo, N - 1)
    nh = tl.minimum(n_hi, N - 1)
    zero_acc = tl.zeros((ROW_BLOCKS * HALF_, BLOCK_M), tl.int32)
    if GROUPED:
        y_lo = tl.zeros((ROW_BLOCKS * HALF_, BLOCK_M), tl.float32)
        y_hi = tl.zeros((ROW_BLOCKS * HALF_, BLOCK_M), tl.float32)
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
        if SPLIT_K == 1:
            k_first = 0
            k_end = KP
        else:
            # Split K: this program sums K tiles [split * per, (split + 1) * per) of its output tile.
            per = tl.cdiv(KP // BLOCK_K, SPLIT_K) * BLOCK_K
            k_first = tl.program_id(1) * per
            k_end = tl.minimum(KP, k_first + per)
        if ROW_BLOCKS == 1:
            acc_lo = zero_acc
            acc_hi = zero_acc
            for k in range(k_first, k_end, BLOCK_K):
                acc_lo, acc_hi = _dot_tile(w_ptr, w_rows, a_cols, k, KP, acc_lo, acc_hi, BLOCK_K, W_BITS == 8,
                                           HALF_)
        else:
            # The 256-row tile: both halves in one dot per K tile (operand rows: the lo rows, then the hi rows):
            # one wgmma wait per K tile instead of two. The accumulator splits back into its halves (registers).
            acc_all = tl.zeros((2 * ROW_BLOCKS * HALF_, BLOCK_M), tl.int32)
            for k in range(k_first, k_end, BLOCK_K):
                acc_all = _dot_tile_joined(w_ptr, w_rows, a_cols, k, KP, acc_all, BLOCK_K, W_BITS == 8, HALF_)
            acc_lo, acc_hi = _split_rows(acc_all)
        if SPLIT_K == 1:
            _epilogue(acc_lo, acc_hi, sx_ptr, zx_ptr, s_ptr, sw_ptr, zw_ptr, cs_ptr, bias_ptr, out_ptr, nl, nh,
                      n_lo, n_hi, tok, tok_c, N, M, K, stride_o, BLOCK_M, W_BITS, A_BITS, HAS_BIAS)
        else:
            # The int32 partial sums meet in the tile's workspace (exact: integer addition in any order);
            # the last of the SPLIT_K programs to arrive takes the sums, leaves the workspace and its
            # counter at zero for the next launch, and runs the epilogue.
            tile = pid_n * m_blocks + pid_m
            ws = (ws_ptr + tile * (2 * HALF_ * ROW_BLOCKS * BLOCK_M)
                  + (h[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]))
            cnt = ws_ptr + tl.num_programs(0) * (2 * HALF_ * ROW_BLOCKS * BLOCK_M) + tile
            tl.atomic_add(ws, acc_lo, sem="relaxed")
            tl.atomic_add(ws + HALF_ * ROW_BLOCKS * BLOCK_M, acc_hi, sem="relaxed")
            # Every thread's partial sums are issued before one thread releases them with the count.
            tl.debug_barrier()
            if tl.atomic_add(cnt, 1, sem="acq_rel") == SPLIT_K - 1:
                tl.atomic_xchg(cnt, 0, sem="relaxed")
                # One half at a time: the sums of a half are taken just before its epilogue (registers).
                sx, e, S, r = _token_terms(sx_ptr, zx_ptr, s_ptr, tok_c, K, BLOCK_M, A_BITS == 8)
                acc = tl.atomic_xchg(ws, zero_acc, sem="relaxed")
                _half_epilogue(acc, nl, n_lo, sx, S, e, r, sw_ptr, zw_ptr, cs_ptr, bias_ptr, out_ptr, tok, N, M,
                               stride_o, W_BITS, A_BITS, HAS_BIAS)
                acc = tl.atomic_xchg(ws + HALF_ * ROW_BLOCKS * BLOCK_M, zero_acc, sem="relaxed")
                _half_epilogue(acc, nh, n_hi, sx, S, e, r, sw_ptr, zw_ptr, cs_ptr, bias_ptr, out_ptr, tok, N, M,
                               stride_o, W_BITS, A_BITS, HAS_BIAS)


@triton.jit
def _token_terms(sx_ptr, zx_ptr, s_ptr, tok_c, K, BLOCK_M: tl.constexpr, A8: tl.constexpr):
    """Per-token epilogue operands (s_x, e, S, r = S + e K): loaded after the main loop (they would hold
    registers across it)."""
    sx = tl.load(sx_ptr + tok_c)
    e = _act_offset(zx_ptr, tok_c, BLOCK_M, A8)
    S = tl.load(s_ptr + tok_c)
    return sx, e, S, (S + e * K).to(tl.float32)


@triton.jit
def _half_epilogue(acc, n_c, n, sx, S, e, r, sw_ptr, zw_ptr, cs_ptr, bias_ptr, out_ptr, tok, N, M, stride_o,
                   W_BITS: tl.constexpr, A_BITS: tl.constexpr, HAS_BIAS: tl.constexpr):
    y = _per_channel(acc, n_c, sx, S, e, r, sw_ptr, zw_ptr, cs_ptr, W_BITS == 8, A_BITS == 8)
    _finish(out_ptr, y, bias_ptr, n_c, n, tok, N, M, stride_o, HAS_BIAS)


@triton.jit
def _epilogue(acc_lo, acc_hi, sx_ptr, zx_ptr, s_ptr, sw_ptr, zw_ptr, cs_ptr, bias_ptr, out_ptr, nl, nh, n_lo, n_hi,
              tok, tok_c, N, M, K, stride_o, BLOCK_M: tl.constexpr, W_BITS: tl.constexpr, A_BITS: tl.constexpr,
              HAS_BIAS: tl.constexpr):
    """Per channel: each half is finished and stored before the other (the two int32 accumulators fill the
    registers)."""
    sx, e, S, r = _token_terms(sx_ptr, zx_ptr, s_ptr, tok_c, K, BLOCK_M, A_BITS == 8)
    _half_epilogue(acc_lo, nl, n_lo, sx, S, e, r, sw_ptr, zw_ptr, cs_ptr, bias_ptr, out_ptr, tok, N, M, stride_o,
                   W_BITS, A_BITS, HAS_BIAS)
    _half_epilogue(acc_hi, nh, n_hi, sx, S, e, r, sw_ptr, zw_ptr, cs_ptr, bias_ptr, out_ptr, tok, N, M, stride_o,
                   W_BITS, A_BITS, HAS_BIAS)


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
    return gemm_block_k(k, k // groups if groups > 1 else -1)


# Zeroed split-K workspaces kept between launches, one per (device, stream): every launch leaves its workspace
# zero, so the next launch on the same stream (ordered after it) takes it as it is: no allocation and no memset per
# call. Launches on other streams get their own; the WORKSPACES_KEPT most recent streams keep theirs.
_WORKSPACES: dict[tuple, torch.Tensor] = {}
WORKSPACES_KEPT = 8


def split_workspace(tiles: int, block_m: int, device: torch.device, row_blocks: int = 1) -> torch.Tensor:
    """Zeroed int32 workspace of a split-K launch: every output tile's partial sums [128 row_blocks, BLOCK_M],
    then one arrival counter per tile. The kernel leaves it zero again (the last program of a tile exchanges
    the sums for zeros and resets the counter), so it is kept for the stream's next launch (grown when one needs
    more)."""
    size = tiles * (ROW_BLOCK * row_blocks * block_m + 1)
    key = (device, torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None)
    ws = _WORKSPACES.get(key)
    if ws is None or ws.numel() < size:
        _WORKSPACES.pop(key, None)  # re-inserted last: the newest
        ws = _WORKSPACES[key] = torch.zeros(size, dtype=torch.int32, device=device)
        while len(_WORKSPACES) > WORKSPACES_KEPT:  # oldest first (insertion order): streams come and go
            _WORKSPACES.pop(next(iter(_WORKSPACES)))
    return ws[:size]


_LAST: list = [None]  # the launch table's choice of the last call, None when the autotuner chose


def last_launch() -> str:
    """How the last ``tc_gemm`` call in this process was launched: the launch table's tile and K splits, or the
    autotuner's config (its best for that call's key). For benchmarks that report what ran."""
    launch = _LAST[0]
    if launch is not None:
        return (f"table: BLOCK_M {launch.block_m}, ROW_BLOCKS {launch.row_blocks}, warps {launch.num_warps}, "
                f"stages {launch.num_stages}, SPLIT_K {launch.split_k}")
    return f"autotuned: {getattr(_tc_gemm_kernel, 'best_config', None)}"


def tc_gemm(a8: torch.Tensor, sx: torch.Tensor, zx: torch.Tensor, s: torch.Tensor, w: torch.Tensor,
            colsum: torch.Tensor, sw: torch.Tensor, zw: torch.Tensor, bias: torch.Tensor | None,
            w_bits: int, a_bits: int, k: int, n: int, out_dtype: torch.dtype, split_k: int | None = None,
            launch: GemmLaunch | None = None) -> torch.Tensor:
    """a8 int8 [M, KP], sx fp32 [M], zx int32 [M], s int32 [M] (per channel: row sums of a8) or
    [M, KP / 32] (per group: 32-column sums); weights in the layout of ``layout.py`` with colsum int32
    [N, G], sw / zw fp32 [N, G]; bias [N] or None -> out_dtype [M, N]. Arguments are validated upstream.
    The launch comes from ``_configs.gemm_launch`` (``split_k`` overrides its K splits, ``launch`` the whole
    choice: tests)."""
    m, kp = a8.shape
    groups = sw.shape[1]
    block_k = gemm_block_k_for(k, groups)
    out = empty_out((m, n), out_dtype, a8.device)
    if m == 0 or n == 0:
        return out.to(out_dtype)
    args = (w, a8, sx, zx, s, sw, zw, colsum, bias if bias is not None else sw, out)
    scalars = (m, n, k, kp, groups, s.shape[1] if s.dim() == 2 else 0, out.stride(0), m_bucket(m))
    consts = dict(GROUP_SIZE=k // groups if groups > 1 else 0, W_BITS=w_bits, A_BITS=a_bits, GROUPED=groups > 1,
                  HAS_BIAS=bias is not None, BLOCK_K=block_k, HALF_=HALF)
    if launch is None:
        sms, shared_limit, capability = launch_facts(a8.device)
        launch = gemm_launch(m, n, kp, block_k, w_bits, a_bits, groups > 1, sms, split_k, shared_limit, capability)
    if launch is None:
        def grid(meta: dict) -> tuple[int]:
            return (cdiv(m, meta["BLOCK_M"]) * cdiv(n, ROW_BLOCK * meta["ROW_BLOCKS"]),)

        _tc_gemm_kernel[grid](*args, s, *scalars, **consts, **EXACT_FP)   # ws_ptr (int32) unused without split
        _LAST[0] = None
        return out.to(out_dtype)
    _LAST[0] = launch
    tiles = cdiv(m, launch.block_m) * cdiv(n, ROW_BLOCK * launch.row_blocks)
    ws = split_workspace(tiles, launch.block_m, a8.device, launch.row_blocks) if launch.split_k > 1 else s
    _tc_gemm_kernel.fn[(tiles, launch.split_k)](
        *args, ws, *scalars, **consts, BLOCK_M=launch.block_m, SWIZZLE=launch.swizzle, SPLIT_K=launch.split_k,
        ROW_BLOCKS=launch.row_blocks, num_warps=launch.num_warps, num_stages=launch.num_stages, **EXACT_FP)
    return out.to(out_dtype)
