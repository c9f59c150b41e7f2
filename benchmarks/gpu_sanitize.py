"""compute-sanitizer memcheck + synccheck of the CUDA extension's tensor-core GEMMs (``tc_linear``) on three small
shapes that reach the per-token padding, several tiles per block and several laps of the stage ring.

    python -m benchmarks.gpu_sanitize --plan                  # the shapes and tools; no device touched
    python -m benchmarks.gpu_sanitize --run-tools --budget 38 # each tool over --shapes, time-bounded
    python -m benchmarks.gpu_sanitize --shapes                # the workload the tools run (one pass)

Without compute-sanitizer (PATH or $CUDA_HOME/bin) the run prints one line saying so and exits 0. A tool that
reports an error fails the step (--error-exitcode); one cut by its time share is reported as such.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

# (M, N, K, groups, max_blocks): grouped M in (192, 256] and (480, 512] (the reads past a 256-token padding);
# K = 640 per channel on one block (5 K stages per tile x 6 tiles: several laps of the ring).
SHAPES = ((200, 129, 256, 4, 0), (500, 300, 384, 3, 2), (300, 259, 640, 1, 1))
TOOLS = ("memcheck", "synccheck")


def sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = os.path.join(home, "bin", "compute-sanitizer")
    return path if os.path.exists(path) else None


def run_shapes() -> int:
    import torch

    from qvgen_kernels import _extension
    from qvgen_kernels import reference as ref

    if not _extension.available() or not hasattr(torch.ops.qvgen_ext, "tc_linear"):
        print("gpu_sanitize: the extension has no tensor-core GEMMs (built without the CUTLASS headers)")
        return 1
    ext = torch.ops.qvgen_ext
    kernel = 90 if torch.cuda.get_device_capability()[0] == 9 else 80
    gen = torch.Generator(device="cuda").manual_seed(0)
    for m, n, k, groups, max_blocks in SHAPES:
        codes = torch.randint(0, 16, (n, k), generator=gen, device="cuda", dtype=torch.uint8)
        shape = (n,) if groups == 1 else (n, groups)
        scale = 0.01 + torch.rand(shape, generator=gen, device="cuda")
        zero = 15 * torch.rand(shape, generator=gen, device="cuda")
        weights = ext.tc_prepack_weight(ref.pack(codes, 4), scale, zero, 4, 4, k)
        x = torch.randn(m, k, generator=gen, device="cuda", dtype=torch.bfloat16)
        clip = torch.ones(m, device="cuda")
        y = ext.tc_linear(x, *weights, None, 4, 4, k, n, clip, clip, kernel, max_blocks)
        torch.cuda.synchronize()
        print(f"tc_linear sm_{kernel} M={m} N={n} K={k} G={groups} max_blocks={max_blocks}: "
              f"{tuple(y.shape)} finite={bool(y.isfinite().all())}", flush=True)
    return 0


def run_tools(budget: float) -> int:
    tool_path = sanitizer()
    if tool_path is None:
        print("compute-sanitizer not found (PATH, $CUDA_HOME/bin): sanitizer step skipped")
        return 0
    rc = 0
    for i, tool in enumerate(TOOLS):
        share = budget / len(TOOLS)
        t0 = time.perf_counter()
        cmd = [tool_path, "--tool", tool, "--error-exitcode", "3", sys.executable, "-m", "benchmarks.gpu_sanitize",
               "--shapes"]
        try:
            r = subprocess.run(cmd, timeout=share)
            verdict = "clean" if r.returncode == 0 else f"FAILED (exit {r.returncode})"
            rc = rc or r.returncode
        except subprocess.TimeoutExpired:
            verdict = f"cut at its {share:.0f} s share (no error reported before)"
        print(f"compute-sanitizer --tool {tool}: {verdict} in {time.perf_counter() - t0:.1f} s", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_sanitize", description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", action="store_true", help="print the shapes and tools, touch no device")
    mode.add_argument("--run-tools", action="store_true", help="run each tool over --shapes")
    mode.add_argument("--shapes", action="store_true", help="the workload (run under a tool)")
    ap.add_argument("--budget", type=float, default=38.0, help="seconds for all tools together")
    args = ap.parse_args(argv)
    if args.plan:
        for m, n, k, groups, max_blocks in SHAPES:
            print(f"tc_linear W4A4 M={m} N={n} K={k} groups={groups} max_blocks={max_blocks or 'SMs'}")
        tool = sanitizer()
        print(f"tools: {', '.join(TOOLS)} in {args.budget:.0f} s; "
              + (f"compute-sanitizer at {tool}" if tool else "compute-sanitizer not found here (skipped where absent)"))
        return 0
    return run_tools(args.budget) if args.run_tools else run_shapes()


if __name__ == "__main__":
    sys.exit(main())
