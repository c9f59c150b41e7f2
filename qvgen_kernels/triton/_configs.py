"""Launch configurations of the Triton kernels.

GEMM (``gemm_tc.py``): a program computes 128 weight rows x BLOCK_M tokens (on sm_90 also 256 rows:
ROW_BLOCKS = 2). Autotuned on GPU over
BLOCK_M (the MMA's N: 16..256 tokens, so decode-like M keeps the full 64-row MMA), warps (4 = one
warpgroup, 8 = two splitting the tokens, or the rows of the 256-row tile; on sm_90 one warpgroup also takes
128 tokens), pipeline stages (>= 3) and the L2 swizzle; configs whose
shared memory exceeds the device's limit are pruned before benchmarking. The autotune key buckets M (next
power of two) so decode-like and prefill-like shapes get their own winners. Under TRITON_INTERPRET=1 a
single small config runs (no benchmarking; programs execute sequentially through numpy).

Small M (up to ``SMALL_M_MAX`` tokens, per channel) is not autotuned: ``gemm_launch`` is the one place that
chooses the tile by M and the K splits that fill the GPU when the output tiles alone cannot (``gemm_tc.py``,
split K); the static estimate (``benchmarks.static_estimate``) models the same choice.

BLOCK_K of the GEMM is not tuned: the host picks it (``gemm_block_k``) so a K tile never straddles a
weight group; 8-bit ``tl.dot`` needs K >= 32, so group sizes must be multiples of 32.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import triton

from ._utils import interpreting

# (BLOCK_M, num_warps, num_stages, SWIZZLE): every one compiles without spills for sm_80, sm_89 and
# sm_90 (tests/kernels/test_triton_configs.py); shared memory decides which ones a device keeps.
GPU_GEMM_TILES = (
    (256, 8, 3, 8),
    (256, 8, 4, 8),
    (128, 8, 4, 8),
    (64, 4, 4, 8),
    (32, 4, 4, 8),
    (16, 4, 3, 8),
)
# sm_90 only, 3/4-bit weights and activations: one warpgroup on 128 tokens (two 64 x 128 int32 accumulators in
# wgmma's registers, 250 per thread, two programs per SM): twice the tensor work per shared-memory byte of the
# 64-token tile, whose operand traffic (activation and weight tiles in, the wgmma's activation reads, the
# weights' ldmatrix) exceeds the tensor time. It spills on sm_80 / sm_89 (mma.sync) and with an 8-bit operand.
HOPPER_GEMM_TILES = (
    (128, 4, 4, 8),
)
# sm_90 only, 3/4-bit weights and activations: two warpgroups on 256 weight rows (two layout blocks) x 128 tokens,
# (BLOCK_M, num_warps, num_stages, SWIZZLE, ROW_BLOCKS). Each warpgroup holds what the one-warpgroup tile holds
# (254 registers, one program per SM); the program reads 2/3 of the L2 bytes per MAC of the 128 x 128 tiles
# (the activation tile serves 256 rows), at the price of two warpgroups in lockstep (CTA barriers per K tile);
# both weight halves go through one dot per K tile (one wgmma wait, ``gemm_tc._dot_tile_joined``). No launch
# table runs it with split K (that program, reached only by a forced launch, spills on sm_90a).
HOPPER_WIDE_GEMM_TILES = (
    (128, 8, 4, 8, 2),
)
HOPPER_CAPABILITY = 90
INTERPRETER_GEMM_TILE = (32, 4, 1, 2)
# With an 8-bit operand the epilogue's corrections need more registers than 256 tokens x 8 warps leave.
GEMM_MAX_BLOCK_M_8BIT = 128
# Weight groups keep an fp32 sum next to the two int32 accumulators: 32 tokens per warpgroup at most
# (64 spills on sm_80, and with 8-bit activations on sm_90).
GROUPED_GEMM_TILES = (
    (32, 4, 4, 8),
    (32, 4, 3, 8),
    (16, 4, 3, 8),
)
GEMM_WEIGHT_ROWS = 128          # weight rows per program (layout.ROW_BLOCK)

# Small M (decode-like and short prompts): the launch is chosen by M here instead of by the autotuner: a
# token tile that M fills and, when its output tiles cannot fill the GPU, split K (per channel only: the int32
# partial sums are exact in any order, while per-group results are fp32 sums of the groups' promotions).
# (max M, BLOCK_M, num_warps, num_stages, SWIZZLE, resident programs per SM); the first row whose max M >= M
# applies. Residency: what registers and shared memory of the sm_90a compile allow (the split-K program's,
# the tighter); the 64-token row's 6 stages hold it at 2 per SM, which loses no throughput (two programs
# already saturate the SM's shared memory bandwidth) and halves the tail of a partly filled last wave.
SMALL_M_MAX = 256
SMALL_M_TILES = (
    (16, 16, 4, 3, 8, 6),
    (32, 32, 4, 4, 8, 4),
    (SMALL_M_MAX, 64, 4, 6, 8, 2),
)
# sm_90 with 3/4-bit weights and activations: above 64 tokens the one-warpgroup 128-token tile of
# HOPPER_GEMM_TILES (its split-K program: 254 registers, 0 spills on sm_90a; 2 per SM).
SMALL_M_TILES_SM90 = SMALL_M_TILES[:2] + (
    (64, 64, 4, 6, 8, 2),
    (SMALL_M_MAX, 128, 4, 4, 8, 2),
)
SPLIT_K_MIN_K_TILES = 4         # every split runs at least this many K tiles (prologue / epilogue amortised)
SPLIT_K_MAX = 32
DEFAULT_SMS = 132               # H200 / H100 SXM, used without a GPU (interpreter, static estimate)

GEMM_BLOCK_K_MAX = 128          # largest K tile (four k32 int8 MMA steps per weight half)
GEMM_BLOCK_K_MIN = 32           # 8-bit tl.dot's minimum K on sm_80 / sm_90


def tile_key(tile: tuple[int, ...]) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, num_warps, num_stages, SWIZZLE, ROW_BLOCKS) of a tile (four-field tiles: one row block)."""
    return tuple(tile[:4]) + (tile[4] if len(tile) > 4 else 1,)


def gemm_tiles(w_bits: int, a_bits: int, grouped: bool, capability: int = 80
               ) -> tuple[tuple[int, ...], ...]:
    """The GPU tiles a variant may run on a device of compute ``capability`` (major x 10 + minor)."""
    if grouped:
        return GROUPED_GEMM_TILES
    if 8 in (w_bits, a_bits):
        return tuple(t for t in GPU_GEMM_TILES if t[0] <= GEMM_MAX_BLOCK_M_8BIT)
    hopper = HOPPER_GEMM_TILES + HOPPER_WIDE_GEMM_TILES
    return (hopper if capability >= HOPPER_CAPABILITY else ()) + GPU_GEMM_TILES


def gemm_configs() -> list[triton.Config]:
    tiles = (INTERPRETER_GEMM_TILE,) if interpreting() else tuple(dict.fromkeys(tile_key(t) for t in (
        HOPPER_GEMM_TILES + HOPPER_WIDE_GEMM_TILES + GPU_GEMM_TILES + GROUPED_GEMM_TILES)))
    return [triton.Config({"BLOCK_M": t[0], "SWIZZLE": t[3], "ROW_BLOCKS": tile_key(t)[4]}, num_warps=t[1],
                          num_stages=t[2]) for t in tiles]


def gemm_shared_bytes(block_m: int, block_k: int, num_stages: int, w_bits: int, row_blocks: int = 1) -> int:
    """Operand buffers of one program: stages x (activation tile + weight tile(s))."""
    rows = GEMM_WEIGHT_ROWS * row_blocks
    w_tile = rows * block_k if w_bits == 8 else rows // 2 * block_k
    return num_stages * (block_m * block_k + w_tile)


def device_shared_limit() -> int | None:
    import torch
    if not torch.cuda.is_available():
        return None
    return _device_props(torch.cuda.current_device())[1]


def prune_gemm_configs(configs: list, named_args: dict, **kwargs) -> list:
    """Keep the variant's tiles (``gemm_tiles``) whose operand buffers fit the device's shared memory
    (sm_89: 99 KiB). ``QVGEN_TRITON_TUNE=0`` keeps the first of them only (no autotuning, one compile per
    kernel variant: what a time-boxed test run on a GPU wants)."""
    if interpreting():
        return configs
    args = {**named_args, **kwargs}
    bk, wb, ab = args["BLOCK_K"], args["W_BITS"], args["A_BITS"]
    tiles = {tile_key(t) for t in gemm_tiles(wb, ab, args["GROUPED"], device_capability() or 80)}
    limit = device_shared_limit() or float("inf")
    kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.num_warps, c.num_stages, c.kwargs["SWIZZLE"],
                                   c.kwargs.get("ROW_BLOCKS", 1)) in tiles
            and gemm_shared_bytes(c.kwargs["BLOCK_M"], bk, c.num_stages, wb, c.kwargs.get("ROW_BLOCKS", 1)) <= limit
            ] or configs[-1:]
    if os.environ.get("QVGEN_TRITON_TUNE", "1") == "0":  # no benchmarking: compile one config (GPU tests)
        kept = kept[:1]
    return kept


def gemm_block_k(k: int, group_size: int) -> int:
    """K tile: per channel (group_size -1) the largest tile; with groups the largest of 128, 64, 32
    dividing group_size (0 when none does: the caller rejects the group size)."""
    if group_size == -1:
        return GEMM_BLOCK_K_MAX
    for bk in (128, 64, 32):
        if bk <= GEMM_BLOCK_K_MAX and group_size % bk == 0:
            return bk
    return 0


@dataclass(frozen=True)
class GemmLaunch:
    """A launch fixed by the table (no autotuning): tile, warps, stages, swizzle, K splits and layout row blocks
    of 128 weight rows per program."""
    block_m: int
    num_warps: int
    num_stages: int
    swizzle: int
    split_k: int
    row_blocks: int = 1


def gemm_split_k(tiles: int, k_tiles: int, slots: int) -> int:
    """K splits of ``tiles`` output tiles of ``k_tiles`` K tiles each on ``slots`` resident programs (SMs x
    programs per SM). 1 while the tiles fill the slots (a split only adds reduction traffic); else the
    split minimising waves x K tiles per program, ceil(tiles s / slots) ceil(k_tiles / s) (smallest s on
    ties), with at least ``SPLIT_K_MIN_K_TILES`` K tiles per split and at most two slot-fillings."""
    if tiles >= slots:
        return 1
    most = max(1, min(SPLIT_K_MAX, k_tiles // SPLIT_K_MIN_K_TILES, 2 * math.ceil(slots / tiles)))
    return min(range(1, most + 1), key=lambda s: (math.ceil(tiles * s / slots) * math.ceil(k_tiles / s), s))


def small_m_tiles(w_bits: int, a_bits: int, capability: int = 80) -> tuple[tuple[int, ...], ...]:
    """The small-M launch table of a variant on a device of compute ``capability``."""
    if capability >= HOPPER_CAPABILITY and 8 not in (w_bits, a_bits):
        return SMALL_M_TILES_SM90
    return SMALL_M_TILES


@functools.lru_cache(maxsize=4096)  # a pure function of its arguments, asked once per layer call
def gemm_launch(m: int, n: int, kp: int, block_k: int, w_bits: int, a_bits: int, grouped: bool,
                sms: int | None = None, split_k: int | None = None, shared_limit: int | None = None,
                capability: int | None = None) -> GemmLaunch | None:
    """The one place that chooses the GEMM launch per shape: None for large M (the autotuner picks among
    ``gemm_tiles``), else the small-M tile of ``small_m_tiles`` for M and the device's ``capability``, and
    its K splits (``gemm_split_k``; ``split_k`` overrides them, 1 = no split), with fewer stages where the
    device's shared memory (``shared_limit``) asks for it. Per group there is no split (the result is an fp32
    sum of the groups' promotions, in K order) and the autotuner keeps the choice."""
    if grouped:
        if split_k not in (None, 1):
            raise ValueError(f"lowbit GEMM (triton): split_k={split_k} with weight groups (per channel only)")
        return None
    if m > SMALL_M_MAX and split_k is None:
        return None
    table = small_m_tiles(w_bits, a_bits, capability or 80)
    bm, warps, stages, sw, resident = next((t[1:] for t in table if m <= t[0]), table[-1][1:])
    if 8 in (w_bits, a_bits):
        bm = min(bm, GEMM_MAX_BLOCK_M_8BIT)
    while shared_limit is not None and stages > 3 and gemm_shared_bytes(bm, block_k, stages, w_bits) > shared_limit:
        stages -= 1
    tiles = math.ceil(m / bm) * math.ceil(n / GEMM_WEIGHT_ROWS)
    if split_k is None:
        split_k = gemm_split_k(tiles, kp // block_k, (sms or DEFAULT_SMS) * resident)
    return GemmLaunch(bm, warps, stages, sw, max(1, split_k))


# Which GEMM kernel a deployed call runs: "tc" (gemm_tc.py, every variant and device) or "gluon" (gemm_gluon.py: sm_90,
# 3/4-bit weights and activations per channel, above the small-M table). "tc" unless this variable says "gluon": the
# Gluon kernel becomes the automatic choice only where a GPU run measures it faster.
GEMM_KERNEL_ENV = "QVGEN_TRITON_GEMM"


def gluon_gemm_runs(w_bits: int, a_bits: int, grouped: bool, capability: int | None) -> bool:
    """Whether the Gluon GEMM can run this variant on a device of compute ``capability``: 3/4-bit weights and
    activations per channel, Hopper only (wgmma does not exist before sm_90 nor after: Blackwell's compile of the
    kernel aborts)."""
    return (capability is not None and HOPPER_CAPABILITY <= capability < 100 and w_bits in (3, 4)
            and a_bits in (3, 4) and not grouped)


def gemm_kernel(m: int, w_bits: int, a_bits: int, grouped: bool, capability: int | None) -> str:
    """The GEMM kernel of one deployed call ("tc" or "gluon"; ``GEMM_KERNEL_ENV``)."""
    if os.environ.get(GEMM_KERNEL_ENV, "tc") != "gluon":
        return "tc"
    return "gluon" if m > SMALL_M_MAX and gluon_gemm_runs(w_bits, a_bits, grouped, capability) else "tc"


def gpu_sm_count() -> int | None:
    import torch
    if not torch.cuda.is_available():
        return None
    return _device_props(torch.cuda.current_device())[0]


def launch_facts(device: object) -> tuple[int | None, int | None, int | None]:
    """(SM count, shared-memory limit, compute capability) of the CUDA device a launch runs on (the tensor's
    own, not the current device), read once per device; (None, None, None) elsewhere (the interpreter)."""
    if getattr(device, "type", None) != "cuda":
        return None, None, None
    return _device_props(device.index)


def cdiv(a: int, b: int) -> int:
    """Ceiling division of host ints (``triton.cdiv`` costs a few microseconds per call in recent Triton)."""
    return -(-a // b)


def device_capability() -> int | None:
    import torch
    if not torch.cuda.is_available():
        return None
    return _device_props(torch.cuda.current_device())[2]


@functools.lru_cache(maxsize=None)
def _device_props(index: int) -> tuple[int, int | None, int]:
    """(SM count, opt-in shared memory per block, compute capability x 10) of a CUDA device, read once."""
    import torch
    props = torch.cuda.get_device_properties(index)
    return (props.multi_processor_count, getattr(props, "shared_memory_per_block_optin", None),
            10 * props.major + props.minor)


def m_bucket(m: int) -> int:
    """Autotune key for M: next power of two, capped (large M all share one winner)."""
    return min(1 << (max(1, m) - 1).bit_length(), 8192)


# Row-block x column-chunk tiles of the elementwise / per-row kernels (pack, quantize, fake quant).
# BLOCK_K is a multiple of 8 so 3-bit bytes never straddle two tiles.
ELEMENTWISE_BLOCK_M = 16
ELEMENTWISE_BLOCK_K = 128
# Per-token kernels read a whole row in one pass when K fits in this many columns (else two passes).
ROW_SINGLE_PASS_MAX_K = 4096
# Column chunk of the two passes of the per-token quantize over longer rows (fewer, wider dependent loads).
ROW_PASS_BLOCK_K = 1024


# Launch option of every kernel here (quantization, fake quant, the GEMM): no FMA contraction, so `c * m - lo`
# and the GEMM epilogue's `t - z_w r` round the product first, as torch does, and the results match the reference
# bit for bit. Triton contracts by default on NVIDIA (3.6 and 3.9 alike); its interpreter never does, so only a GPU shows it.
EXACT_FP = {"enable_fp_fusion": False}
