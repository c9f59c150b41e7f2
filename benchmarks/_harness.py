"""Timing and peak-memory measurement shared by the benchmarks, plus the provenance every JSON carries.

Timing: ``warmup`` untimed calls, then ``repeats`` timed calls; median, p10 and p90 in milliseconds.
  GPU: CUDA events around each call, with a 256 MiB buffer overwritten before each call to flush the L2.
  CPU: time.perf_counter around each call.
Peak memory:
  GPU: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus what was allocated before the
       call (so it is the call's own transient + output memory, on top of the resident model).
  CPU: the process's resident-set high-water mark (VmHWM) after resetting it through /proc/self/clear_refs,
       minus VmRSS before the call (Linux only; None elsewhere). glibc is first told (mallopt) to serve
       every block >= 64 KiB by mmap with a fixed threshold, so freed tensors go back to the OS and each call's
       transient memory shows up in the RSS instead of being recycled from earlier calls' heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from qvgen_kernels.errors import fail

_FLUSH_BYTES = 256 << 20


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default rule) of a non-empty list."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(ms: list[float]) -> dict[str, float]:
    """{"median_ms", "p10_ms", "p90_ms", "n"} of a list of timings."""
    if not ms:
        fail("summarize", "ms", "a non-empty list of timings", ms)
    return {"median_ms": statistics.median(ms), "p10_ms": _quantile(ms, 0.1), "p90_ms": _quantile(ms, 0.9),
            "n": len(ms)}


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """Time ``fn()`` on ``device`` (see the module docstring for the method)."""
    if repeats < 1 or warmup < 0:
        fail("time_fn", "repeats/warmup", "repeats >= 1 and warmup >= 0", (repeats, warmup))
    for _ in range(warmup):
        fn()
    ms: list[float] = []
    if device.type == "cuda":
        flush = torch.empty(_FLUSH_BYTES, dtype=torch.uint8, device=device)
        for _ in range(repeats):
            flush.fill_(1)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            ms.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t0) * 1e3)
    return summarize(ms)


def _proc_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@functools.lru_cache(maxsize=None)
def _fixed_mmap_threshold() -> bool:
    """glibc mallopt(M_MMAP_THRESHOLD = 64 KiB) and M_TRIM_THRESHOLD; False where unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 64 << 10)) and bool(libc.mallopt(-1, 64 << 10))  # M_MMAP/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Run ``fn()`` once and return {"peak_bytes", "method"} (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - base,
                "method": "cuda max_memory_allocated - allocated before"}
    fixed = _fixed_mmap_threshold()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        fn()
        return {"peak_bytes": None, "method": "unavailable (no /proc/self/clear_refs)"}
    before = _proc_kib("VmRSS")
    fn()
    hwm = _proc_kib("VmHWM")
    peak = None if before is None or hwm is None else max(0, hwm - before) * 1024
    method = "RSS high-water delta (/proc/self VmHWM after clear_refs=5" + (", mmap threshold 64 KiB)" if fixed
                                                                          else ", glibc default malloc)")
    return {"peak_bytes": peak, "method": method}


def git_commit() -> str | None:
    """The working tree's HEAD commit, or None (no git or no commit yet)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(device: torch.device) -> dict[str, Any]:
    """Device, software versions, commit, command line and time: recorded in every results JSON."""
    dev = (torch.cuda.get_device_name(device) if device.type == "cuda" else
           "shapes only" if device.type == "meta" else platform.processor() or "cpu")
    return {"device": str(device), "device_name": dev, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
            "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "commit": git_commit(), "command": "python -m " + " ".join([_module_name()] + sys.argv[1:]),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def kernel_device_us(fn: Callable[[], Any], calls: int) -> dict[str, float]:
    """Device time per call of each GPU kernel ``fn`` launches (torch.profiler over ``calls`` back-to-back calls,
    L2 warm; keys cut to 80 characters): unlike CUDA events around a call, host launch time does not enter."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t and e.key and not e.key.startswith(("cudaDeviceSynchronize", "ProfilerStep")):
            out[e.key[:80]] = round(t / calls, 2)
    return out


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


__all__ = ["git_commit", "kernel_device_us", "peak_memory", "provenance", "summarize", "time_fn", "write_json"]
