"""Latency-aware static estimate of the GPU GEMMs on an H200, read from their sm_90a SASS (no GPU needed).

    python -m benchmarks.static_estimate [--json benchmarks/results/static/estimate.json] [--no-cuda]

A prediction from a model, not a measurement. One model for every kernel (Triton GEMM, the Gluon GEMM of 3/4-bit
per-channel weights above the small-M table, CUDA wgmma GEMM; per channel and per group of 128): the SASS gives each kernel's main-loop facts (``loop_facts``), the tile and
launch facts come from the kernel's config, and ``estimate`` turns them into a time per GEMM shape.

Basis (``HW``; KERNELS.md "what an estimate from the SASS rests on", 2.1): 132 SMs at 1.83 GHz, 4096 int8
MAC/clk/SM on wgmma (1979 dense INT8 TOPS; BF16 half of it), 4 schedulers per SM issuing one warp instruction
per clock each, shared memory 128 B/clk/SM, HBM3e 4.8 TB/s, 228 KB shared memory and 64K registers per SM.
A wgmma m64nNk32 occupies the SM's tensor cores N/2 clk (m64n128k32: 64 clk). Latencies marked (assumed) are
round figures of published Hopper microbenchmarks' order of magnitude, not measured here.

Model, per CTA tile of ``tile_rows`` weight rows x ``tile_tokens`` tokens and per K tile of ``block_k``:
- tensor clk  T = MACs of the CTA's wgmmas / 4096.
- serial clk  S: what the scheduling unit (the CTA when a CTA-wide barrier runs every K tile, else one
  warpgroup) does while its own wgmmas are not running. With a wait to 0 pending wgmmas every wait drains
  the tensor pipe: S = waits_to_0 x (wgmma tail + shared-memory latency of the next register operand)
  + CTA barriers x barrier latency + instructions outside the wgmma-in-flight window x warps per scheduler.
  A wait that leaves wgmmas in flight hides S up to the in-flight tensor work.
- cycle: SM clocks in which the c resident CTAs each finish one K tile = max(tensor, issue, shared-memory
  bytes / 128, HBM latency / (stages - 1)); the tensor leg is c x T / min(1, sum over resident units of
  T_u / (T_u + S_u)) (other units' wgmmas fill one unit's gaps: warpgroups without a CTA barrier, other CTAs).
- prologue: issue of its instructions plus one HBM round trip (the pipeline fill); epilogue: the longer of
  its issue and its dependent L2 round trips (runs of loads separated by arithmetic on them). No kernel here
  overlaps its own epilogue with a main loop; other resident CTAs do: a wave of c CTAs per SM costs
  K tiles x cycle + (prologue + epilogue) / c (occupancy from registers, threads and shared memory).
- waves: tiles = ceil(M / tokens) x ceil(N / rows); non-persistent grids run ceil(tiles / (132 x occ))
  waves, persistent ones ceil(tiles / grid) tiles per CTA: partial last waves count in full.
- split K (Triton, per channel, small M; the launch table ``qvgen_kernels.triton._configs.gemm_launch`` picks
  tile and splits, and the estimate models that choice, not the best config): tiles x splits programs of
  ceil(K tiles / splits) K tiles each. Each program reduces its int32 partial tile into an L2 workspace
  (RED.ADD), then counts its arrival (a GPU-scope fence and an atomic round trip); the last one takes the sums
  (atomic exchange, which also zeroes the workspace) and runs the epilogue. The epilogue's instructions are the
  whole split-K epilogue of the SASS for every program (an over-count: only one program per tile runs the
  final epilogue); its rounds count value-returning atomics like loads and a GPU-scope fence as one round.
  The reductions' bytes (tiles x splits x rows x tokens x 4) run at the assumed L2 atomic throughput, a leg
  beside compute and HBM; the workspace is zeroed by a memset before the launch (bytes at HBM rate, serial).
- memory: unique bytes (int8 activations, packed weights, bf16 output, per-token and per-channel vectors)
  at 4.8 TB/s.
- L2 to SM: every CTA reads its operand tiles from L2 each K tile (tiles x K tiles x (tokens x BK int8
  activations + rows x BK weights at their stored width)), whatever the tile order: a swizzle changes the HBM
  traffic, not these bytes. They cross at ``l2_bytes_per_clk`` for the whole L2 at the SM clock (5120 B/clk,
  9.37 TB/s: NVIDIA's published A100 L2 read bandwidth per clock, assumed for the H200 because no Hopper
  figure is published; an assumption, not a measurement). Each row also reports its prediction at 4096 and
  6144 B/clk (``l2_sensitivity``).
- time = max(compute, memory, L2 to SM, L2 atomics) (+ the split-K workspace memset); ``bound`` names the leg
  that decides ("l2" for the L2-to-SM bytes; the K-tile leg when compute decides).
- cuBLAS BF16: max(2MNK / (0.75 x 989.4 TFLOPS), bf16 bytes / 4.8 TB/s) unless measured.
Not modelled: L2 hit rates (HBM bytes are the unique bytes), the L2's split into two partitions, bank
conflicts, clock throttling, launch overhead, the separate activation quantize kernel.

Against a GPU run (``--measured``, default the committed H200 results): every measured time of the Triton GEMM
at a shape here sits beside the prediction at the measured SM clock, with the L2 -> SM bandwidth it implies if the
kernel was L2-bound (``calibration`` in the JSON). The basis is not fitted to them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HW = dict(
    gpu="H200 SXM (sm_90a)", compute_capability=90,
    sms=132, clock_hz=1.83e9, int8_macs_per_clk_sm=4096, bf16_macs_per_clk_sm=2048,
    schedulers_per_sm=4, smem_bytes_per_clk_sm=128, hbm_bytes_per_s=4.8e12, smem_per_sm=228 * 1024,
    regs_per_sm=65536, max_threads_per_sm=2048, max_ctas_per_sm=32,
    # (assumed) latencies in SM clocks
    wgmma_tail_clk=100,      # last wgmma of a group done -> wait returns, plus the next group's start-up
    smem_latency_clk=30,     # LDS / LDSM -> register operand
    barrier_clk=24,          # one CTA-wide bar.sync once every warp has arrived
    l2_latency_clk=300,      # global load served by L2 (epilogue vectors)
    hbm_latency_clk=700,     # global load from HBM (operand tiles in flight in the pipeline)
    # (assumed) throughput of int32 reductions (RED.ADD, coalesced, distinct addresses) in the L2, whole GPU:
    # a quarter of its ~5.5 TB/s hit bandwidth; only split-K programs issue them
    l2_atomic_bytes_per_clk=768,
    # (assumed) L2 -> SM read bandwidth of the whole L2 per SM clock: 5120 B/clk is NVIDIA's published A100 L2
    # read bandwidth (A100 whitepaper: 5120 bytes/clk), taken for the H200 because no Hopper figure is
    # published; 9.37 TB/s at 1.83 GHz. The predictions are also given at L2_SENSITIVITY_BYTES_PER_CLK.
    l2_bytes_per_clk=5120,
    l2_bytes_per_clk_source=("assumption, not a measurement: NVIDIA's published A100 L2 read bandwidth per clock "
                             "(A100 whitepaper, 5120 bytes/clk), assumed for the H200 because no Hopper figure is "
                             "published"),
    cublas_bf16_fraction=0.75,
)
INT8_PEAK_OPS = 2 * HW["sms"] * HW["int8_macs_per_clk_sm"] * HW["clock_hz"]   # 1.979e15
BF16_PEAK_FLOPS = INT8_PEAK_OPS / 2
L2_SENSITIVITY_BYTES_PER_CLK = (4096, 6144)

# (name, M, K, N): Wan2.1 linear shapes; 32760 video tokens.
SHAPES = (
    ("wan1.3b-attn", 32760, 1536, 1536),
    ("wan14b-ffn-up", 32760, 5120, 13824),
    ("wan14b-ffn-down", 32760, 13824, 5120),
    ("wan14b-ffn-up-m16", 16, 5120, 13824),
    ("wan14b-ffn-down-m16", 16, 13824, 5120),
    ("wan14b-ffn-up-m256", 256, 5120, 13824),
    ("wan14b-ffn-down-m256", 256, 13824, 5120),
)


@dataclass
class Design:
    """What the estimate needs of one kernel config: tile, launch and the SASS facts of its main loop."""
    kernel: str                    # "triton" / "triton-gluon" / "cuda-tc"
    name: str
    tile_rows: int                 # weight rows (output channels) per CTA tile
    tile_tokens: int               # tokens per CTA tile
    block_k: int
    stages: int
    mma_warpgroups: int            # warpgroups issuing wgmma
    threads: int
    registers: int
    shared_bytes: int
    w_bits: int
    group_size: int                # -1 per channel
    persistent: bool
    # per K tile, per warp of a wgmma warpgroup (from the SASS):
    macs_per_warpgroup: float      # tensor work of one warpgroup per K tile (MACs)
    wgmma_n_bytes: float           # shared-memory operand bytes its wgmmas read per K tile
    waits_to_0: float              # wgmma waits with 0 pending
    waits_pending: float           # wgmma waits that leave groups in flight
    cta_barriers: float            # CTA-wide bar.sync per K tile
    loop_instructions: float       # per warp
    serial_instructions: float     # per warp, outside the wgmma-in-flight windows
    prologue_instructions: float = 0.0     # per warp, per tile
    epilogue_instructions: float = 0.0     # per warp, per tile
    epilogue_load_rounds: int = 1          # dependent global round trips in the epilogue
    register_operand_bytes: float = 0.0    # per warpgroup per K tile: shared -> register weight loads
    split_k: bool = False                  # the split-K program (partial sums through an L2 workspace)
    autotuned: bool = True                 # among the autotuner's configs (else run only by a launch table)

    def w_bytes(self) -> float:
        """Bytes per weight in the operand tiles (3/4-bit weights travel as nibbles)."""
        return 0.5 if self.w_bits in (3, 4) else 1.0


def occupancy(d: Design) -> int:
    """Resident CTAs per SM: the tightest of registers (allocated per warp in 256-register units), threads,
    shared memory (+1 KB reserved per CTA) and the CTA limit."""
    warps = d.threads // 32
    regs_per_warp = math.ceil(d.registers * 32 / 256) * 256
    by_regs = HW["regs_per_sm"] // (regs_per_warp * warps)
    by_threads = HW["max_threads_per_sm"] // d.threads
    by_smem = HW["smem_per_sm"] // (d.shared_bytes + 1024) if d.shared_bytes else HW["max_ctas_per_sm"]
    return max(0, min(by_regs, by_threads, by_smem, HW["max_ctas_per_sm"]))


def k_tile_cycles(d: Design, occ: int) -> dict:
    """SM clocks per K tile of one CTA when ``occ`` CTAs share the SM (module docstring)."""
    warps = d.threads // 32
    mma_warps = 4 * d.mma_warpgroups
    t_wg = d.macs_per_warpgroup / HW["int8_macs_per_clk_sm"]
    t_cta = t_wg * d.mma_warpgroups
    lockstep = d.cta_barriers > 0
    unit_t = t_cta if lockstep else t_wg
    unit_warps = mma_warps if lockstep else 4
    wps = max(1.0, unit_warps / HW["schedulers_per_sm"])
    serial = (d.waits_to_0 * (HW["wgmma_tail_clk"] + HW["smem_latency_clk"]) + d.cta_barriers * HW["barrier_clk"]
              + d.serial_instructions * wps)
    # A wait that leaves a group in flight hides serial work behind that group's tensor time.
    exposed = serial if d.waits_to_0 else max(0.0, serial - unit_t)
    units = occ * (1 if lockstep else d.mma_warpgroups)
    busy = min(1.0, units * unit_t / (unit_t + exposed)) if unit_t else 0.0
    tensor = occ * t_cta / busy if busy else float("inf")          # SM clocks for occ CTAs' K tiles
    issue = occ * d.loop_instructions * mma_warps / HW["schedulers_per_sm"]   # producer warps: a few per tile
    smem_bytes = (d.tile_tokens * d.block_k + d.tile_rows * d.block_k * d.w_bytes()
                  + d.mma_warpgroups * (d.wgmma_n_bytes + d.register_operand_bytes))
    smem = occ * smem_bytes / HW["smem_bytes_per_clk_sm"]
    latency = HW["hbm_latency_clk"] / max(1, d.stages - 1)          # one CTA's loads in flight
    sm_clk = max(tensor, issue, smem, latency)
    legs = dict(tensor=tensor, issue=issue, shared_memory=smem, load_latency=latency)
    return dict(sm_clk=sm_clk, bound=max(legs, key=legs.get), tensor_busy=busy,
                serial_clk=serial, exposed_serial_clk=exposed, tensor_clk_cta=t_cta,
                smem_bytes=smem_bytes, warps=warps, **{f"{k}_clk": round(v, 1) for k, v in legs.items()})


def _tile_extra_cycles(instructions: float, warps: int) -> float:
    return instructions * max(1.0, warps / HW["schedulers_per_sm"])


def hbm_bytes(m: int, n: int, k: int, w_bits: int, groups: int) -> float:
    kp = math.ceil(k / 128) * 128
    w = n * kp * (0.5 if w_bits in (3, 4) else 1.0)
    return m * kp + w + 2 * m * n + 12 * m + 12 * n * groups + 4 * m * (kp // 32 if groups > 1 else 1)


def l2_to_sm_bytes(d: Design, programs: int, k_tiles: int) -> float:
    """Operand bytes ``programs`` CTAs of ``k_tiles`` K tiles each read from L2 (module docstring)."""
    return programs * k_tiles * (d.tile_tokens * d.block_k + d.tile_rows * d.block_k * d.w_bytes())


def estimate(d: Design, m: int, n: int, k: int, split: int = 1, l2_bytes_per_clk: float | None = None) -> dict:
    """Predicted time of one GEMM (M tokens, K, N) and its fraction of the INT8 peak (module docstring);
    ``split``: K splits of a split-K design; ``l2_bytes_per_clk``: the L2 -> SM bandwidth (default the
    basis's)."""
    occ = occupancy(d)
    if occ == 0:
        return dict(error="does not fit on an SM")
    if split > 1 and not d.split_k:
        return dict(error="not a split-K program")
    kp = math.ceil(k / 128) * 128
    k_tiles = math.ceil(kp // d.block_k / split)
    cyc = k_tile_cycles(d, occ)
    mma_warps = 4 * d.mma_warpgroups
    # Issue of the instructions by the warps that run them, and the global round trips they wait for: other
    # warps issue while one waits, so the longer of the two (an optimistic overlap).
    prologue = _tile_extra_cycles(d.prologue_instructions, mma_warps) + HW["hbm_latency_clk"]
    epilogue = max(_tile_extra_cycles(d.epilogue_instructions, mma_warps),
                   d.epilogue_load_rounds * HW["l2_latency_clk"])
    tile_latency = prologue + k_tiles * cyc["sm_clk"] + epilogue
    out_tiles = math.ceil(m / d.tile_tokens) * math.ceil(n / d.tile_rows)
    tiles = out_tiles * split                     # programs
    slots = HW["sms"] * occ
    if d.persistent:
        grid = min(tiles, slots)
        per_cta = math.ceil(tiles / grid)
        # A persistent CTA pays its prologue once; each tile's epilogue stays serial with its main loop.
        compute_clk = prologue + per_cta * (k_tiles * cyc["sm_clk"] + epilogue)
        waves = per_cta
    else:
        waves = math.ceil(tiles / slots)
        full, rest = divmod(tiles, slots)

        def wave(c: int) -> float:
            # c CTAs per SM each finish a K tile per SM cycle; one CTA's prologue and epilogue run under the
            # others' main loops.
            return k_tiles * k_tile_cycles(d, c)["sm_clk"] + (prologue + epilogue) / c
        compute_clk = full * wave(occ) + (wave(math.ceil(rest / HW["sms"])) if rest else 0.0)
    compute_s = compute_clk / HW["clock_hz"]
    groups = kp // d.group_size if d.group_size > 0 else 1
    mem_s = hbm_bytes(m, n, k, d.w_bits, groups) / HW["hbm_bytes_per_s"]
    atomic_s = memset_s = 0.0
    if split > 1:
        atomic_s = tiles * d.tile_rows * d.tile_tokens * 4 / (HW["l2_atomic_bytes_per_clk"] * HW["clock_hz"])
        memset_s = out_tiles * (d.tile_rows * d.tile_tokens + 1) * 4 / HW["hbm_bytes_per_s"]
    l2_bytes = l2_to_sm_bytes(d, tiles, k_tiles)
    l2_bpc = HW["l2_bytes_per_clk"] if l2_bytes_per_clk is None else l2_bytes_per_clk
    l2_s = l2_bytes / (l2_bpc * HW["clock_hz"])
    legs = dict(compute=compute_s, memory=mem_s, l2_atomics=atomic_s, l2=l2_s)
    t = max(legs.values()) + memset_s
    bound = max(legs, key=legs.get)
    return dict(seconds=t, int8_peak_fraction=2 * m * n * k / t / INT8_PEAK_OPS,
                bound=cyc["bound"] if bound == "compute" else bound, split_k=split,
                l2_atomics_s=atomic_s, workspace_memset_s=memset_s, compute_s=compute_s, hbm_s=mem_s, l2_s=l2_s,
                l2_bytes_per_clk=l2_bpc, l2_to_sm_bytes=l2_bytes,
                implied_l2_to_sm_tb_per_s=round(l2_bytes / t / 1e12, 2), tiles=tiles,
                occupancy=occ, waves_or_tiles_per_cta=waves, k_tiles=k_tiles, tile_latency_clk=round(tile_latency),
                prologue_clk=round(prologue), epilogue_clk=round(epilogue),
                k_tile=dict(cycle_clk=round(cyc["sm_clk"], 1), tensor_clk=round(cyc["tensor_clk_cta"], 1),
                            serial_clk=round(cyc["serial_clk"], 1), tensor_busy=round(cyc["tensor_busy"], 3),
                            smem_bytes=cyc["smem_bytes"], legs_sm_clk={k: cyc[f"{k}_clk"] for k in (
                                "tensor", "issue", "shared_memory", "load_latency")}))


def cublas_bf16_seconds(m: int, n: int, k: int) -> float:
    """cuBLAS BF16 taken at 75% of the BF16 peak, or the bf16 bytes at full HBM bandwidth when slower."""
    compute = 2 * m * n * k / (HW["cublas_bf16_fraction"] * BF16_PEAK_FLOPS)
    return max(compute, 2 * (m * k + n * k + m * n) / HW["hbm_bytes_per_s"])


# ------------------------------------------------------------------------------------------ SASS facts

def _is_cta_barrier(op: str, arg: str) -> bool:
    # BAR.SYNC 0x0 (all threads); a named barrier with a thread count ("BAR.SYNC 0x1, 0x100") is partial.
    return op.startswith(("BAR.SYNC", "BAR.RED")) and "," not in arg


def loop_facts(rows: list, promotion_weight: float | None = None) -> dict:
    """Main-loop facts of one warp's SASS: per K tile, the wgmma work and the waits, barriers and
    instructions around it; the prologue / epilogue instruction counts around the loop (the enclosing
    tile loop of a persistent kernel, else the function). ``promotion_weight``: basic blocks of the loop
    that convert int to float (the CUDA kernels' in-loop group promotion) count this much."""
    from benchmarks import sass_roofline as sr

    compute = [(f, l) for f, l in sr._loops(rows)
               if any(sr._opclass(op) == "tensor" for _, op, _ in sr._instrs(rows, f, l))]
    if not compute:
        raise ValueError("no wgmma main loop in the SASS")
    first, last = min(compute, key=lambda fl: fl[1] - fl[0])
    body = sr._instrs(rows, first, last)
    promo = sr._promotion_rows(rows, first, last) if promotion_weight is not None else set()
    macs = n_bytes = waits0 = waitsp = bars = serial = count = 0.0
    in_flight = False
    for r in body:
        _, op, arg = r
        w = promotion_weight if id(r) in promo else 1.0
        count += w
        if op.split(".")[0].endswith("GMMA"):
            mm, nn, kk = (int(v) for v in op.split(".")[1].split("x"))
            macs += w * mm * nn * kk
            n_bytes += w * nn * kk * (2 if op.startswith("HGMMA") else 1)
            in_flight = True
            continue
        if op.startswith("WARPGROUP.DEPBAR"):
            pend = int(re.search(r"0x([0-9a-f]+)", arg).group(1), 16)
            waits0 += w * (pend == 0)
            waitsp += w * (pend > 0)
            in_flight = pend > 0
            continue
        bars += w * _is_cta_barrier(op, arg)
        serial += w * (not in_flight)
    outer = [fl for fl in sr._loops(rows) if fl[0] < first and fl[1] > last]
    lo, hi = (min(outer, key=lambda fl: fl[1] - fl[0]) if outer else (0, len(rows) - 1))
    pro = [r for r in sr._instrs(rows, lo, first - 1)]
    epi = [r for r in sr._instrs(rows, last + 1, hi)]
    return dict(macs_per_warpgroup=macs, wgmma_n_bytes=n_bytes, waits_to_0=waits0, waits_pending=waitsp,
                cta_barriers=bars, loop_instructions=count, serial_instructions=serial,
                prologue_instructions=len(pro), epilogue_instructions=len(epi), epilogue_load_rounds=_load_rounds(epi))


def _load_rounds(rows: list) -> int:
    """Runs of global loads (or value-returning atomics) separated by arithmetic on loaded data (load ->
    compute -> store blocks), plus one per GPU-scope memory barrier."""
    from benchmarks import sass_roofline as sr

    rounds, in_run = 0, False
    for _, op, _ in rows:
        cls = sr._opclass(op)
        if op.startswith(("LDG", "ATOMG")):       # loads and value-returning atomics
            rounds += not in_run
            in_run = True
        elif op.startswith("MEMBAR") and ".GPU" in op:   # waits for the CTA's earlier writes / reductions
            rounds += 1
            in_run = False
        elif cls in ("fp_alu", "convert") or op.startswith("STG"):
            in_run = False
    return max(1, rounds)


# ------------------------------------------------------------------------------------------ kernels

def triton_designs(only: str | None = None) -> list[Design]:
    from qvgen_kernels.triton._specs import gemm_compile_specs

    # Every shape here has N a multiple of 16: the binary Triton builds for such an N (vectorised output stores).
    assert all(n % 16 == 0 for _, _, _, n in SHAPES)
    return [_compiled_design("triton", spec) for spec in gemm_compile_specs(n_divisible=True)
            if spec.meta["variant"] == "W4A4" and not (only and only not in spec.name)]


def gluon_designs() -> list[Design]:
    """The Gluon GEMM (``gemm_gluon.py``: both dots of a K tile left in flight), as launched with a bias."""
    from qvgen_kernels.triton._specs import gluon_compile_specs

    return [_compiled_design("triton-gluon", spec) for spec in gluon_compile_specs() if spec.constexprs["HAS_BIAS"]]


def _compiled_design(kernel: str, spec) -> Design:
    """A Triton (or Gluon) compile spec's Design: compiled for sm_90a, its SASS read by ``loop_facts``."""
    import os
    os.environ.pop("TRITON_INTERPRET", None)
    from benchmarks import sass_roofline as sr

    c = sr.compile_triton(spec, "sm_90a")
    rows = sr.disassemble(c["cubin"])[c["name"]]
    res = sr.resource_usage(c["cubin"]).get(c["name"], {})
    bm, rows_w, bk = spec.block
    gs = spec.meta["group_size"]
    f = _per_k_tile(loop_facts(rows), bk, gs)
    return Design(
        kernel=kernel, name=spec.name, tile_rows=rows_w, tile_tokens=bm, block_k=bk,
        stages=spec.meta.get("stages", spec.num_stages), mma_warpgroups=spec.num_warps // 4,
        threads=32 * spec.num_warps, registers=res.get("REG", 255), shared_bytes=c["shared"], w_bits=spec.meta["w_bits"],
        group_size=gs, persistent=False,
        # Each warpgroup loads a whole [64, BK] nibble tile (both halves of its rows come from it).
        register_operand_bytes=64 * bk, split_k=spec.meta["split_k"] > 1, autotuned=spec.meta["autotuned"], **f)


def _per_k_tile(f: dict, bk: int, gs: int) -> dict:
    """The Triton grouped loop runs group_size / BK K tiles per iteration: scale its facts to one K tile."""
    per = max(1, gs // bk) if gs > 0 else 1
    keys = ("macs_per_warpgroup", "wgmma_n_bytes", "waits_to_0", "waits_pending", "cta_barriers",
            "loop_instructions", "serial_instructions")
    return {k: (v / per if k in keys else v) for k, v in f.items()}


def cuda_designs(only: str | None = None) -> list[Design]:
    from benchmarks import sass_roofline as sr

    out = []
    for rec, rows in sr.tc_kernels("sm_90a"):
        if rec["w8"] or (only and only not in rec["name"]):
            continue
        wgs = rec["num_warps"] // 4
        # The K-stage loop holds a promotion block per k32 step; at groups of 128 a stage runs one of its 4.
        f = loop_facts(rows, 32 / sr.TC_GROUP if rec["grouped"] else None)
        rows_w, tokens, bk = rec["block"]   # tc_configs: (weight rows, tokens, K)
        out.append(Design(
            kernel="cuda-tc", name=rec["name"], tile_rows=rows_w, tile_tokens=tokens, block_k=bk, stages=rec["pipeline_stages"],
            mma_warpgroups=wgs, threads=rec["threads"], registers=rec["registers"], shared_bytes=rec["shared_bytes"],
            w_bits=4, group_size=rec["group_size"], persistent=True,
            # Both consumer warpgroups ldmatrix the same [64, BK] nibble bytes.
            register_operand_bytes=64 * bk, **f))
    return out


def _choose(kernel: str, grouping: str, ds: list[Design], m: int, n: int, k: int,
            l2_bytes_per_clk: float | None = None) -> tuple[dict, Design, str]:
    """The config a launch runs: for Triton the launch table's choice where it fixes one (small M), else the
    best autotuned config by this model (what an autotuner picking by it would run)."""
    if kernel == "triton":
        from qvgen_kernels.triton._configs import gemm_launch

        d0 = ds[0]
        launch = gemm_launch(m, n, math.ceil(k / 128) * 128, d0.block_k, d0.w_bits, d0.w_bits,
                             grouping != "per_channel", sms=HW["sms"], capability=HW["compute_capability"])
        if launch is not None:
            d = next(d for d in ds if (d.tile_tokens, d.tile_rows, d.threads, d.stages, d.split_k) == (
                launch.block_m, 128 * launch.row_blocks, 32 * launch.num_warps, launch.num_stages, launch.split_k > 1))
            return (estimate(d, m, n, k, launch.split_k, l2_bytes_per_clk), d,
                    f"table: {launch.block_m} tokens, split K {launch.split_k}")
        ds = [d for d in ds if d.autotuned]
    how = ("QVGEN_TRITON_GEMM=gluon (above the small-M table)" if kernel == "triton-gluon"
           else "autotuned (best config by this model)")
    cands = [(estimate(d, m, n, k, l2_bytes_per_clk=l2_bytes_per_clk), d) for d in ds]
    e, d = min(((e, d) for e, d in cands if "error" not in e), key=lambda ed: ed[0]["seconds"])
    return e, d, how


def evaluate(designs: list[Design]) -> list[dict]:
    """Per kernel family and shape: the best config (what an autotuner picking by this model would run)."""
    families: dict[tuple, list[Design]] = {}
    for d in designs:
        fam = (d.kernel, "per_channel" if d.group_size < 0 else f"g{d.group_size}")
        families.setdefault(fam, []).append(d)
    from qvgen_kernels.triton._configs import SMALL_M_MAX

    out = []
    for (kernel, grouping), ds in families.items():
        for name, m, k, n in SHAPES:
            if kernel == "triton-gluon" and m <= SMALL_M_MAX:
                continue  # the small-M table's split-K launches run there (_configs.gemm_kernel)
            e, d, how = _choose(kernel, grouping, ds, m, n, k)
            cub = cublas_bf16_seconds(m, n, k)
            # The same choice rule at other L2 -> SM bandwidths (an autotuner would pick on the real machine).
            sens = {}
            for bpc in L2_SENSITIVITY_BYTES_PER_CLK:
                es, ds_, _ = _choose(kernel, grouping, ds, m, n, k, bpc)
                sens[str(bpc)] = dict(int8_peak_fraction=round(es["int8_peak_fraction"], 3),
                                      x_cublas_bf16=round(cub / es["seconds"], 2), bound=es["bound"], config=ds_.name)
            out.append(dict(kernel=kernel, grouping=grouping, variant="W4A4 (W3A3 runs the same code)", shape=name,
                            m=m, k=k, n=n, config=d.name, launch=how, predicted_us=round(e["seconds"] * 1e6, 2),
                            int8_peak_fraction=round(e["int8_peak_fraction"], 3),
                            x_cublas_bf16=round(cub / e["seconds"], 2), cublas_bf16_us=round(cub * 1e6, 2),
                            bound=e["bound"], l2_bytes_per_clk=HW["l2_bytes_per_clk"], l2_sensitivity=sens,
                            detail=e))
    return out


# ------------------------------------------------------------------------------------------ against a GPU run

MEASURED_DIR = ROOT / "benchmarks/results/nvidia-h200"
# Below this many tokens CUDA events around one call read the host's launch time, not the kernel's (bench_gemm).
EVENTS_MIN_M = 4096


def measured_triton_gemm(results_dir: Path) -> list[dict]:
    """Measured times of the Triton GEMM kernel alone (W4A4 per channel, the deployed layout) from a GPU run's
    committed results: ``gemm_bench.json`` (``deployed_gemm`` rows: CUDA events after an L2 flush, median, with
    the SM clock nvidia-smi read; from EVENTS_MIN_M tokens) and ``deployed_breakdown.jsonl`` (the kernel's device
    time from torch.profiler over 10 calls, L2 warm; no clock recorded)."""
    out = []
    bench = results_dir / "gemm_bench.json"
    if bench.exists():
        for r in json.loads(bench.read_text())["rows"]:
            if r.get("provider") == "triton:deployed_gemm:w4a4" and r.get("us") and r["m"] >= EVENTS_MIN_M:
                out.append(dict(m=r["m"], k=r["k"], n=r["n"], us=r["us"], sm_clock_mhz=r.get("sm_clock_mhz"),
                                method="CUDA events after an L2 flush (gemm_bench.json)"))
    breakdown = results_dir / "deployed_breakdown.jsonl"
    if breakdown.exists():
        for line in breakdown.read_text().splitlines():
            r = json.loads(line)
            us = r.get("kernels", {}).get("_tc_gemm_kernel") if isinstance(r.get("kernels"), dict) else None
            if us:
                out.append(dict(m=r["m"], k=r["k"], n=r["n"], us=us, sm_clock_mhz=None,
                                method="kernel device time, torch.profiler (deployed_breakdown.jsonl)"))
    return out


def calibrate(results: list[dict], measured: list[dict]) -> list[dict]:
    """Each measured Triton GEMM time beside the prediction for its shape (per channel): the prediction rescaled to
    the measured SM clock where one was recorded (the SM-clocked legs scale with it, the HBM leg does not),
    measured / predicted, and the L2 -> SM bandwidth the measured time implies if the kernel was bound by it."""
    out = []
    for meas in measured:
        row = next((r for r in results if r["kernel"] == "triton" and r["grouping"] == "per_channel"
                    and (r["m"], r["k"], r["n"]) == (meas["m"], meas["k"], meas["n"])), None)
        if row is None:
            continue
        e = row["detail"]
        clock = meas["sm_clock_mhz"] * 1e6 if meas["sm_clock_mhz"] else HW["clock_hz"]
        at = HW["clock_hz"] / clock
        predicted = max(e["compute_s"] * at, e["hbm_s"], e["l2_s"] * at, e["l2_atomics_s"] * at) + e[
            "workspace_memset_s"]
        seconds = meas["us"] * 1e-6
        out.append(dict(shape=row["shape"], m=meas["m"], k=meas["k"], n=meas["n"], method=meas["method"],
                        measured_us=round(meas["us"], 2), sm_clock_mhz=meas["sm_clock_mhz"],
                        predicted_us_at_that_clock=round(predicted * 1e6, 2), predicted_bound=row["bound"],
                        measured_over_predicted=round(seconds / predicted, 2),
                        implied_l2_bytes_per_clk_if_l2_bound=round(e["l2_to_sm_bytes"] / (seconds * clock))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/static/estimate.json")
    p.add_argument("--no-cuda", action="store_true", help="Triton only (no nvcc / CUTLASS)")
    p.add_argument("--measured", type=Path, default=MEASURED_DIR,
                   help="a GPU run's results directory to set the predictions beside (its Triton GEMM times)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import triton

    designs = triton_designs() + gluon_designs()
    if not args.no_cuda:
        designs += cuda_designs()
    results = evaluate(designs)
    calibration = calibrate(results, measured_triton_gemm(args.measured))
    for r in results:
        print(f"{r['kernel']:8} {r['grouping']:11} {r['shape']:22} {r['predicted_us']:9.1f} us "
              f"{100 * r['int8_peak_fraction']:5.1f}% INT8  {r['x_cublas_bf16']:5.2f}x cuBLAS-BF16  "
              f"{r['bound']:14} {r['config']}  (L2 " + " / ".join(
                  f"{b} B/clk {100 * v['int8_peak_fraction']:.1f}% {v['bound']}" for b, v in r["l2_sensitivity"].items())
              + ")")
    for c in calibration:
        print(f"measured {c['shape']:22} {c['measured_us']:9.1f} us against {c['predicted_us_at_that_clock']:9.1f} us "
              f"predicted ({c['measured_over_predicted']:.2f}x; L2 -> SM {c['implied_l2_bytes_per_clk_if_l2_bound']} "
              f"B/clk if L2-bound)  {c['method']}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    doc = dict(tool="benchmarks.static_estimate", what="prediction of a static model, not a measurement",
               command=" ".join(["python -m benchmarks.static_estimate", *(argv if argv is not None else sys.argv[1:])]),
               triton=triton.__version__, commit=commit, shapes="M x K x N (tokens x in x out features)",
               basis=HW, int8_peak_tops=round(INT8_PEAK_OPS / 1e12, 1),
               l2_to_sm_tb_per_s=round(HW["l2_bytes_per_clk"] * HW["clock_hz"] / 1e12, 2),
               l2_sensitivity_bytes_per_clk=list(L2_SENSITIVITY_BYTES_PER_CLK), model=__doc__.split("Model, per CTA")[1],
               designs=[asdict(d) for d in designs], results=results,
               measured_dir=str(args.measured.relative_to(ROOT)) if args.measured.is_relative_to(ROOT) else str(
                   args.measured), calibration=calibration)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
