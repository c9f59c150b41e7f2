"""Every autotune config of the Triton GEMM compiles for sm_80 and sm_90 (the Hopper-only tiles for sm_90
only) without a GPU, with no register spills, K tiles >= 32, >= 3 pipeline stages and shared memory within the
pruner's estimate (so the sm_89 / sm_80 / sm_90 limits the pruner applies are safe); on sm_90 the main loop
runs on wgmma.

Compiles in a subprocess without TRITON_INTERPRET (kernels defined in interpreter mode cannot compile).
Every config is compiled for each architecture with one bit-width variant, the variants taken in turn so
each appears; ``QVGEN_COMPILE_ALL=1`` compiles the full variant x config matrix (also for sm_89), as
``benchmarks.sass_roofline`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = r"""
import itertools, json, os, sys
from benchmarks import sass_roofline as sr
from qvgen_kernels.triton._specs import gemm_compile_specs

archs = [("sm_80", 80), ("sm_90a", 90)] + ([("sm_89", 89)] if os.environ.get("QVGEN_COMPILE_ALL") else [])


def select(specs):
    if os.environ.get("QVGEN_COMPILE_ALL"):
        return specs
    # each config once, the variants (bits x grouping) taken in turn
    variants = sorted({s.name.rsplit("/", 2)[0] for s in specs})
    by_config, seen = {}, set()
    turn = itertools.cycle(variants)
    for s in specs:
        by_config.setdefault(s.name.split("/", 2)[2], []).append(s)
    chosen = []
    for cfg, group in by_config.items():
        names = {s.name.rsplit("/", 2)[0]: s for s in group}
        for _ in range(len(variants)):
            v = next(turn)
            if v in names:
                chosen.append(names[v])
                break
    missing = set(variants) - {s.name.rsplit("/", 2)[0] for s in chosen}
    return chosen + [next(s for s in specs if s.name.startswith(v + "/")) for v in sorted(missing)]


# Both binaries Triton may build per config: N any, and N a multiple of 16 (every real model's shapes).
chosen = select(gemm_compile_specs()) + select(gemm_compile_specs(n_divisible=True))
out = []
for (arch, cap), spec in itertools.product(archs, chosen):
    if cap < spec.meta["min_capability"]:   # Hopper-only tiles (wgmma accumulators)
        continue
    sr.ARCHS.setdefault(arch, dict(sr.ARCHS["sm_80"], capability=cap))
    c = sr.compile_triton(spec, arch)
    rows = sr.disassemble(c["cubin"])[c["name"]]
    res = sr.resource_usage(c["cubin"])[c["name"]]
    prof = sr.main_loop_profile(rows) or {}
    out.append(dict(name=spec.name, n_divisible=spec.meta["n_divisible"], arch=arch, spills=res["STACK"], regs=res["REG"], shared=c["shared"],
                    estimate=spec.meta["shared_estimate"], block_k=spec.block[2], stages=spec.num_stages,
                    tensor=prof.get("tensor_opcodes", {})))
print(json.dumps(out))
"""


def _compile_records(script: str) -> list[dict]:
    """Run a compile script in a fresh interpreter without TRITON_INTERPRET (kernels defined for the interpreter
    cannot compile) and return the JSON records it prints last."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1800,
                          cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_gemm_config_compiles_for_sm80_and_sm90():
    pytest.importorskip("triton")
    records = _compile_records(_SCRIPT)
    assert {r["arch"] for r in records} >= {"sm_80", "sm_90a"}
    assert {r["n_divisible"] for r in records} == {False, True}
    hopper = [r for r in records if r["name"].split("/", 2)[2].startswith("128x128x128/w4s")]
    assert hopper and {r["arch"] for r in hopper} == {"sm_90a"}, hopper
    # The two-warpgroup tile of 256 weight rows (HOPPER_WIDE_GEMM_TILES): sm_90a only, at most 255 registers.
    wide = [r for r in records if r["name"].split("/", 2)[2].startswith("128x256x128/w8s")]
    assert wide and {r["arch"] for r in wide} == {"sm_90a"}, wide
    assert all(r["regs"] <= 255 for r in wide), wide
    for r in records:
        assert r["spills"] == 0, r
        assert r["block_k"] >= 32 and r["stages"] >= 3, r
        assert r["shared"] <= r["estimate"], r
        ops = " ".join(r["tensor"])
        assert ("IGMMA" in ops) if r["arch"] == "sm_90a" else ("IMMA" in ops), r


_TABLE_SCRIPT = r"""
import json
from benchmarks import sass_roofline as sr
from qvgen_kernels.triton._configs import SMALL_M_TILES, SMALL_M_TILES_SM90
from qvgen_kernels.triton._specs import gemm_compile_specs

out = []
for spec in gemm_compile_specs() + gemm_compile_specs(n_divisible=True):
    bm, warps, stages = spec.block[0], spec.num_warps, spec.num_stages
    row = next((t for t in SMALL_M_TILES + SMALL_M_TILES_SM90 if t[1:4] == (bm, warps, stages)), None)
    if spec.meta["variant"] not in ("W4A4", "W3A3") or spec.meta["group_size"] != -1 or row is None:
        continue
    c = sr.compile_triton(spec, "sm_90a")
    res = sr.resource_usage(c["cubin"])[c["name"]]
    out.append(dict(name=spec.name, resident=row[5], regs=res["REG"], spills=res["STACK"], shared=c["shared"],
                    threads=32 * warps))
print(json.dumps(out))
"""


def test_launch_table_residency_matches_the_sm90_compile():
    """The small-M launch table's programs per SM (which sizes its K splits) is what the sm_90a compile of
    the tile allows (registers, shared memory; the tighter of the split-K and plain programs), by the
    static estimate's occupancy rule."""
    pytest.importorskip("triton")
    from benchmarks.static_estimate import Design, occupancy

    records = _compile_records(_TABLE_SCRIPT)
    by_tile: dict = {}
    for r in records:
        assert r["spills"] == 0, r
        d = Design(kernel="triton", name=r["name"], tile_rows=128, tile_tokens=0, block_k=128, stages=0,
                   mma_warpgroups=1, threads=r["threads"], registers=r["regs"], shared_bytes=r["shared"], w_bits=4,
                   group_size=-1, persistent=False, macs_per_warpgroup=0, wgmma_n_bytes=0, waits_to_0=0,
                   waits_pending=0, cta_barriers=0, loop_instructions=0, serial_instructions=0)
        key = r["name"].split("/", 2)[2].removesuffix("-splitk")
        by_tile.setdefault(key, []).append((occupancy(d), r["resident"]))
    assert len(by_tile) == 4, by_tile
    for key, occ in by_tile.items():
        assert min(o for o, _ in occ) == occ[0][1], (key, occ)
