"""Nsight Compute's view of the deployed GEMM kernels on a GPU: speed of light (SM, tensor pipe, L2, DRAM), memory
workload and warp stall reasons, per kernel and shape: what the timings alone cannot say (why Wan-1.3B attention
runs at half its estimate; whether the Gluon GEMM keeps the tensor pipe busy).

    python -m benchmarks.gpu_profile --out DIR      # on a GPU with ncu: DIR/gemm_profile.json (and the raw CSV)
    python -m benchmarks.gpu_profile --plan         # what it profiles; no device

It runs ``ncu`` on itself (``--run``), which calls each (kernel, shape) once: the default Triton GEMM
(``gemm_tc``, its launch as ``gemm_launch`` / the autotuner's first config) and the Gluon GEMM, W4A4, at the Wan
shapes below. ncu fixes the SM clock at base and flushes the caches before each kernel (its defaults), so its
durations are not the benchmarks'. Without ncu it says so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from qvgen_kernels.triton._configs import SMALL_M_MAX

ROOT = Path(__file__).resolve().parents[1]
SHAPES = (("wan-1.3b attn", 32760, 1536, 1536), ("wan-14b ffn_up", 32760, 5120, 13824), ("wan-14b ffn_up m256", 256,
                                                                                          5120, 13824))
KERNELS = ("tc", "gluon")
SECTIONS = ("SpeedOfLight", "MemoryWorkloadAnalysis", "WarpStateStats", "Occupancy")
KERNEL_REGEX = "regex:_tc_gemm_kernel|_gluon_gemm_kernel"


def run_kernels() -> None:
    """Under ncu: each (kernel, shape) once, operands made first (their kernels are not profiled)."""
    import torch

    from benchmarks._kernels_common import random_weight
    from qvgen_kernels import ops
    from qvgen_kernels.triton import gemm_tc
    from qvgen_kernels.triton.quantize_i8 import quantize_act_i8

    dev = torch.device("cuda")
    for label, m, k, n in SHAPES:
        gen = torch.Generator(dev).manual_seed(m + k + n)
        x = torch.randn(m, k, generator=gen, device=dev).to(torch.bfloat16)
        packed = ops.prepack_linear(*random_weight(n, k, 4, gen, dev), w_bits=4, a_bits=4, k=k, backend="triton")
        ones = torch.ones(1, device=dev)
        a8, sx, zx, rs, _ = quantize_act_i8(x, 4, ones, ones, False)
        w, colsum, sw, zw = packed.tensors
        for kernel in KERNELS:
            print(f"profiling {kernel} {label} {m}x{k}x{n}", flush=True)
            if kernel == "tc":
                gemm_tc.tc_gemm(a8, sx, zx, rs, w, colsum, sw, zw, None, 4, 4, k, n, x.dtype)
            elif m > SMALL_M_MAX:  # the Gluon kernel runs above the small-M table
                from qvgen_kernels.triton.gemm_gluon import gluon_gemm
                gluon_gemm(a8, sx, rs, w, sw, zw, None, k, n, x.dtype)
        torch.cuda.synchronize()


def parse_ncu_csv(text: str) -> list[dict[str, Any]]:
    """ncu ``--csv --page details`` rows -> one record per profiled launch: kernel, grid, block and
    ``metrics[section][name] = {"value", "unit"}`` (numbers as floats where they parse)."""
    start = text.find('"ID"')
    rows = csv.DictReader(io.StringIO(text[start:] if start >= 0 else ""))
    launches: dict[str, dict[str, Any]] = {}
    for r in rows:
        rec = launches.setdefault(r["ID"], dict(id=int(r["ID"]), kernel=r.get("Kernel Name", ""),
                                               grid=r.get("Grid Size"), block=r.get("Block Size"), metrics={}))
        value: Any = r.get("Metric Value", "")
        try:
            value = float(str(value).replace(",", ""))
        except ValueError:
            pass
        rec["metrics"].setdefault(r.get("Section Name", ""), {})[r.get("Metric Name", "")] = dict(
            value=value, unit=r.get("Metric Unit", ""))
    return sorted(launches.values(), key=lambda x: x["id"])


def plan() -> list[str]:
    out = []
    for label, m, k, n in SHAPES:
        for kernel in KERNELS:
            if kernel == "gluon" and m <= SMALL_M_MAX:
                continue
            out.append(f"{kernel} GEMM W4A4 {label} {m}x{k}x{n}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plan", action="store_true", help="print what is profiled and exit; no device")
    ap.add_argument("--run", action="store_true", help=argparse.SUPPRESS)  # the process ncu profiles
    args = ap.parse_args(argv)
    if args.run:
        run_kernels()
        return 0
    if args.plan:
        print(f"ncu sections {', '.join(SECTIONS)} on: " + "; ".join(plan()))
        return 0
    if args.out is None:
        ap.error("--out is required (except with --plan)")
    ncu = shutil.which("ncu") or next((p for p in ("/usr/local/cuda/bin/ncu", "/opt/nvidia/nsight-compute/ncu")
                                       if os.path.exists(p)), None)
    if ncu is None:
        print("ncu (Nsight Compute) is not installed here: nothing profiled")
        return 0
    cmd = [ncu, "--csv", "--page", "details", "--kernel-name", KERNEL_REGEX, *[a for s in SECTIONS
                                                                             for a in ("--section", s)],
           sys.executable, "-m", "benchmarks.gpu_profile", "--run"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gemm_profile.csv").write_text(proc.stdout)
    launches = parse_ncu_csv(proc.stdout)
    doc = dict(command="python -m benchmarks.gpu_profile --out " + str(args.out), ncu=" ".join(cmd[:-4]),
               returncode=proc.returncode, stderr_tail=proc.stderr[-2000:], profiled=plan(), launches=launches)
    (args.out / "gemm_profile.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(launches)} launches profiled (ncu exit {proc.returncode}): {args.out / 'gemm_profile.json'}")
    for rec in launches:
        sol = rec["metrics"].get("GPU Speed Of Light Throughput", {})
        short = {k: v["value"] for k, v in sol.items() if k in ("Duration", "Compute (SM) Throughput",
                                                                 "Memory Throughput", "L2 Cache Throughput")}
        print(rec["kernel"][:40], rec["grid"], short)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
