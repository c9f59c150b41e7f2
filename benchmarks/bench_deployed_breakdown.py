"""Where the time of one deployed W4A4 linear goes on a GPU: host, activation quantize, GEMM.

``bench_gemm`` times a call between two CUDA events, so a call whose host side is slower than its kernels
reads as the host's time. This splits it, per shape, for the Triton backend (``ops.prepacked_linear``) beside
cuBLAS BF16 (``F.linear``):

    host_us       wall time per call of 50 calls queued back to back, no synchronisation in between
                  (the Python + launch cost; the GPU keeps up unless the kernels are longer)
    events_us     median of CUDA events around one call after an L2 flush (bench_gemm's method)
    graph_us      one call captured in a CUDA graph and replayed 50 times back to back (device time without
                  host gaps; L2 warm between replays)
    kernels       device time per call of each kernel, from torch.profiler over 10 calls

    python -m benchmarks.bench_deployed_breakdown --out DIR                    # on a GPU
    python -m benchmarks.bench_deployed_breakdown --smoke --device cpu ...     # CPU: host_us and events only
    python -m benchmarks.bench_deployed_breakdown --plan                       # what a run measures; no device

Each Triton row also names the GEMM launch that ran (``gemm_launch``: the small-M table's tile and K splits, or
the autotuner's config; with ``QVGEN_TRITON_TUNE=0`` the autotuner keeps its first config).

Results: ``<out>/deployed_breakdown.jsonl`` (one line per shape and provider, written as measured).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks import _harness
from benchmarks._kernels_common import LayerShape, random_weight, versions
from qvgen_kernels import ops

SHAPES = [LayerShape("wan-14b", "ffn_up", m, 5120, 13824) for m in (16, 256, 1024, 4096, 32760)] + [
    LayerShape("wan-14b", "attn_qkvo", 1024, 5120, 5120), LayerShape("wan-1.3b", "attn_qkvo", 32760, 1536, 1536),
    LayerShape("wan-1.3b", "ffn_up", 1024, 1536, 8960)]
SMOKE = [LayerShape("tiny", "ffn_up", m, 256, 384) for m in (16, 300)]


def host_us(fn: Callable[[], Any], device: torch.device, calls: int) -> float:
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    _sync(device)
    return (t1 - t0) / calls * 1e6


def graph_us(fn: Callable[[], Any], device: torch.device, replays: int) -> float:
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm up off the default stream, as capture requires
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    _sync(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    _sync(device)
    return start.elapsed_time(end) / replays * 1e3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def providers(sh: LayerShape, device: torch.device, dtype: torch.dtype, gen: torch.Generator
              ) -> list[tuple[str, Callable[[], Any]]]:
    x = torch.randn(sh.m, sh.k, generator=gen, device=device).to(dtype)
    w = (torch.randn(sh.n, sh.k, generator=gen, device=device) * 0.02).to(dtype)
    w_packed, scale, zero = random_weight(sh.n, sh.k, 4, gen, device)
    backend = "triton" if device.type == "cuda" else None
    packed = ops.prepack_linear(w_packed, scale, zero, w_bits=4, a_bits=4, k=sh.k, backend=backend)
    return [("bf16 F.linear", lambda: F.linear(x, w)), (f"w4a4 prepacked_linear ({packed.backend})",
                                                         lambda: ops.prepacked_linear(x, packed))]


def measure(name: str, fn: Callable[[], Any], device: torch.device, smoke: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"provider": name}
    if "(triton)" in name:
        from qvgen_kernels.triton import gemm_tc
        fn()  # the first call picks the launch (the autotuner benchmarks its configs here)
        _sync(device)
        row["gemm_launch"] = gemm_tc.last_launch()
    steps = [("host_us", lambda: host_us(fn, device, 5 if smoke else 50)),
             ("events_us", lambda: _harness.time_fn(fn, device, 2, 3 if smoke else 20)["median_ms"] * 1e3)]
    if device.type == "cuda":
        steps += [("graph_us", lambda: graph_us(fn, device, 50)),
                  ("kernels", lambda: _harness.kernel_device_us(fn, 10))]
    for key, step in steps:
        try:
            v = step()
            row[key] = round(v, 2) if isinstance(v, float) else v
        except Exception as e:  # noqa: BLE001  a step that fails is reported, the others still run
            _sync(device)
            row[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, few calls (a test of the script)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plan", action="store_true", help="print what a run measures and exit; touches no device")
    args = ap.parse_args(argv)
    if args.plan:
        for sh in SMOKE if args.smoke else SHAPES:
            print(f"{sh.label}: bf16 F.linear vs w4a4 prepacked_linear (triton): host_us, events_us, graph_us, "
                  f"kernels, gemm_launch")
        return []
    if args.out is None:
        ap.error("--out is required (except with --plan)")
    device = torch.device(args.device)
    dtype = torch.bfloat16
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "deployed_breakdown.jsonl"
    rows = []
    with path.open("w") as f:
        f.write(json.dumps({"provenance": {**_harness.provenance(device), **versions()}}) + "\n")
        for sh in SMOKE if args.smoke else SHAPES:
            for name, fn in providers(sh, device, dtype, torch.Generator(device).manual_seed(sh.m + sh.k)):
                row = {"shape": sh.label, "m": sh.m, "k": sh.k, "n": sh.n, **measure(name, fn, device, args.smoke)}
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(json.dumps(row), flush=True)
            _sync(device)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
