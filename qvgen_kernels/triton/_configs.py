"""Launch configurations of the Triton kernels.

GEMM: autotuned on GPU over Hopper-oriented tiles (int8 wgmma wants BLOCK_M % 64 == 0, 8 warps =
two warpgroups, 3-4 stages); the autotune key buckets M (next power of two) so decode-like and
prefill-like shapes get their own winners. Under TRITON_INTERPRET=1 a single small config runs
(no benchmarking; programs execute sequentially through numpy).

BLOCK_K of the GEMM is not tuned: the host picks it so a K tile never straddles a weight group.
"""

from __future__ import annotations

import triton

from ._utils import interpreting

# (BLOCK_M, BLOCK_N, num_warps, num_stages)
HOPPER_GEMM_TILES = (
    (128, 128, 8, 3),
    (128, 128, 8, 4),
    (128, 256, 8, 3),
    (64, 128, 4, 4),
    (64, 64, 4, 4),    # small M (decode-like); wgmma still needs BLOCK_M % 64 == 0
)
INTERPRETER_GEMM_TILE = (32, 32, 4, 1)

GEMM_BLOCK_K_MAX = 128          # largest K tile on GPU (two k64 int8 wgmma steps)
GEMM_BLOCK_K_MAX_INTERP = 64    # small tiles keep the interpreter fast on tiny shapes
GEMM_BLOCK_K_MIN = 16           # tl.dot's minimum K

# Row-block x column-chunk tiles of the elementwise / per-row kernels (pack, quantize, fake quant).
# BLOCK_K is a multiple of 8 so 3-bit bytes never straddle two tiles.
ELEMENTWISE_BLOCK_M = 16
ELEMENTWISE_BLOCK_K = 128
# Per-token kernels read a whole row in one pass when K fits in this many columns (else two passes).
ROW_SINGLE_PASS_MAX_K = 4096


def gemm_configs() -> list[triton.Config]:
    tiles = (INTERPRETER_GEMM_TILE,) if interpreting() else HOPPER_GEMM_TILES
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in tiles]


def gemm_block_k(k: int, group_size: int) -> int:
    """K tile: per channel (group_size -1) the power of two covering K, capped; with groups the
    largest power of two dividing group_size, capped, so a tile never straddles two groups."""
    cap = GEMM_BLOCK_K_MAX_INTERP if interpreting() else GEMM_BLOCK_K_MAX
    if group_size == -1:
        return max(GEMM_BLOCK_K_MIN, min(cap, triton.next_power_of_2(k)))
    return min(cap, group_size & -group_size)


def m_bucket(m: int) -> int:
    """Autotune key for M: next power of two, capped (large M all share one winner)."""
    return min(triton.next_power_of_2(max(1, m)), 8192)

# Launch option of the kernels whose float results must match the reference bit for bit
# (quantization, fake quant): no FMA contraction, so `c * m - lo` rounds the product first, as torch
# does. The GEMM keeps contraction: its epilogue is compared at fp32 tolerance.
EXACT_FP = {"enable_fp_fusion": False}
