"""Compile specifications of the Triton GEMM kernel: every (bit widths, weight grouping, autotune config)
variant that can launch on a GPU, as the inputs of ``triton.compile`` (no device needed).

One table for the two consumers: the static roofline (``benchmarks.sass_roofline``) and the test that
compiles every autotune config for sm_80, sm_89 and sm_90 (``tests/kernels/test_triton_configs.py``); a
spec's ``meta["min_capability"]`` (90 for the Hopper-only tiles) says which architectures run it.
Integer arguments that are multiples of 16 at every real shape (KP, the output stride) and the pointers
(torch allocations) carry Triton's divisibility-16 specialization, as they do at launch. N (output features) is a
multiple of 16 at every real model's shape but not at every shape the kernel runs: Triton compiles a second
binary when it is (the output mask is then constant over 16 columns: 16-byte stores instead of 2-byte ones), and
``n_divisible=True`` gives that variant's specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The GEMM variants the library ships: (name, weight bits, activation bits).
BIT_VARIANTS = (("W4A4", 4, 4), ("W3A3", 3, 3), ("W4A8", 4, 8), ("W8A8", 8, 8))
# Weight groupings compiled: per channel for every variant, groups of 128 columns for the 3/4-bit ones.
GROUPINGS = (("per_channel", -1), ("g128", 128))

_TYPES = dict(w_ptr="*u8", a_ptr="*i8", sx_ptr="*fp32", zx_ptr="*i32", s_ptr="*i32", sw_ptr="*fp32",
              zw_ptr="*fp32", cs_ptr="*i32", bias_ptr="*fp32", out_ptr="*bf16", ws_ptr="*i32")
_DIVISIBLE = ("KP", "stride_o")


@dataclass(frozen=True)
class CompileSpec:
    name: str                      # e.g. "W4A4/per_channel/256x128x128/w8s3" (tokens x weight rows x K;
                                   # + "-splitk": split-K program)
    kernel: object                 # the @triton.jit function (autotuner unwrapped)
    signature: dict                # argument name -> Triton type ("*u8", "i32", "constexpr")
    constexprs: dict               # constexpr argument name -> value
    attrs: dict                    # (arg index,) -> [["tt.divisibility", 16]]
    num_warps: int
    num_stages: int
    block: tuple[int, int, int]    # (tokens, weight rows, K) of one program's tile and K step
    meta: dict = field(default_factory=dict)   # variant facts for reports (bits, group size, ...)


def gemm_compile_specs(n_divisible: bool = False) -> list[CompileSpec]:
    """Every GEMM variant x GPU autotune config (``n_divisible``: as launched with N a multiple of 16)."""
    from . import gemm_tc  # late: the kernels are defined on import
    from ._configs import (GEMM_MAX_BLOCK_M_8BIT, GEMM_WEIGHT_ROWS, HOPPER_CAPABILITY, gemm_block_k, gemm_shared_bytes,
                           gemm_tiles, small_m_tiles, tile_key)

    fn = gemm_tc._tc_gemm_kernel.fn
    names = fn.arg_names
    specs = []
    for vname, wb, ab in BIT_VARIANTS:
        for gname, gs in GROUPINGS:
            if gs != -1 and wb == 8:
                continue
            bk = gemm_block_k(4096, gs)
            # The autotuned tiles, then (per channel) the small-M tiles of the launch tables, without split K
            # (where not autotuned too) and with it (the code depends on the number of splits only through
            # constants: 2 stands for all): (tile, splits, autotuned, lowest compute capability).
            everywhere = gemm_tiles(wb, ab, gs != -1)
            tiles = [(t, 1, True, 80 if t in everywhere else HOPPER_CAPABILITY)
                     for t in gemm_tiles(wb, ab, gs != -1, HOPPER_CAPABILITY)]
            if gs == -1:
                for cap in (80, HOPPER_CAPABILITY):
                    for row in small_m_tiles(wb, ab, cap):
                        t = (min(row[1], GEMM_MAX_BLOCK_M_8BIT) if 8 in (wb, ab) else row[1],) + row[2:5]
                        for split in (1, 2):
                            if not any(x[:2] == (t, split) for x in tiles):
                                tiles.append((t, split, False, cap))
            for tile, split, autotuned, min_cap in tiles:
                bm, warps, stages, swizzle, row_blocks = tile_key(tile)
                rows = GEMM_WEIGHT_ROWS * row_blocks
                consts = dict(W_BITS=wb, A_BITS=ab, GROUPED=gs != -1, HAS_BIAS=True, BLOCK_K=bk, GROUP_SIZE=max(gs, 0),
                              BLOCK_M=bm, SWIZZLE=swizzle, HALF_=GEMM_WEIGHT_ROWS // 2, SPLIT_K=split,
                              ROW_BLOCKS=row_blocks)
                sig, attrs = _signature(names, consts, "*i8" if wb == 8 else "*u8", n_divisible)
                specs.append(CompileSpec(
                    f"{vname}/{gname}/{bm}x{rows}x{bk}/w{warps}s{stages}"
                    + ("-splitk" if split > 1 else ""),
                    fn, sig, consts, attrs, warps, stages, (bm, rows, bk),
                    dict(variant=vname, w_bits=wb, a_bits=ab, group_size=gs, split_k=split, autotuned=autotuned,
                         min_capability=min_cap, n_divisible=n_divisible,
                         shared_estimate=gemm_shared_bytes(bm, bk, stages, wb, row_blocks))))
    return specs


def gluon_compile_specs() -> list[CompileSpec]:
    """The Gluon GEMM (``gemm_gluon.py``; sm_90 only) as launched at the real shapes: W4A4 and W3A3 run the same
    binary, with and without bias, N a multiple of 16."""
    from . import gemm_gluon as gg
    from ._configs import GEMM_WEIGHT_ROWS, gemm_shared_bytes

    fn = gg._gluon_gemm_kernel
    names = fn.arg_names
    out = []
    for has_bias in (True, False):
        consts = dict(HAS_BIAS=has_bias, BLOCK_M=gg.GLUON_BLOCK_M, BLOCK_K=gg.GLUON_BLOCK_K, STAGES=gg.GLUON_STAGES,
                      NUM_WARPS=gg.GLUON_WARPS, SWIZZLE=gg.GLUON_SWIZZLE)
        sig, attrs = _signature(names, consts, "*u8", n_divisible=True)
        rows = 2 * GEMM_WEIGHT_ROWS
        out.append(CompileSpec(
            f"W4A4/per_channel/{gg.GLUON_BLOCK_M}x{rows}x{gg.GLUON_BLOCK_K}/gluon-w{gg.GLUON_WARPS}s{gg.GLUON_STAGES}"
            + ("" if has_bias else "-nobias"),
            fn, sig, consts, attrs, gg.GLUON_WARPS, 1, (gg.GLUON_BLOCK_M, rows, gg.GLUON_BLOCK_K),
            dict(variant="W4A4", w_bits=4, a_bits=4, group_size=-1, split_k=1, autotuned=False, min_capability=90,
                 n_divisible=True, gluon=True, stages=gg.GLUON_STAGES,
                 shared_estimate=gemm_shared_bytes(gg.GLUON_BLOCK_M, gg.GLUON_BLOCK_K, gg.GLUON_STAGES, 4, 2))))
    return out


def _signature(names: list[str], consts: dict, w_type: str, n_divisible: bool) -> tuple[dict, dict]:
    """(signature, attrs) of a GEMM kernel's compile: pointer and integer types, the constexprs, and the
    divisibility-16 specialization of the pointers, KP, the output stride and (``n_divisible``) N."""
    sig = {a: _TYPES.get(a, "i32") for a in names}
    sig["w_ptr"] = w_type
    sig.update({k: "constexpr" for k in consts})
    divisible = _DIVISIBLE + (("N",) if n_divisible else ())
    return sig, {(names.index(a),): [["tt.divisibility", 16]]
                 for a in names if sig[a].startswith("*") or a in divisible}
