"""Forward speed of the deployed model against the FP model on the machine the demo runs on.

The same batch goes through the FP teacher (fp32, and a bf16 copy) and the deployed model (as deployed: its
non-quantized modules in fp32, its low-bit layers quantizing their fp32 inputs per token),
each timed in turn within every round so that load from other processes hits all of them alike; the best
round of each is kept. On a CPU with int8 matrix units the deployed layers run on them (AMX or AVX512-VNNI,
through the ``cpu_int8`` kernel backend); at the demo's tiny widths per-call overhead weighs more than at
real model widths (``benchmarks/bench_cpu_linear.py`` measures the real shapes).
"""

from __future__ import annotations

import copy
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from qvgen.apps.demo.metrics import EvalSet
from qvgen.apps.demo.sampling import model_velocity


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _forward(model: torch.nn.Module, ev: EvalSet, dtype: torch.dtype, batch: int) -> Callable[[], torch.Tensor]:
    x, t = ev.x_t[:batch].to(dtype), ev.t[:batch]
    cond = {k: v[:batch].to(dtype) if v.is_floating_point() else v[:batch] for k, v in ev.cond.items()}
    return lambda: model_velocity(model, x, t, cond)


@torch.no_grad()
def forward_speed(teacher: torch.nn.Module, deployed: torch.nn.Module, ev: EvalSet, device: torch.device,
                  rounds: int = 7, batch: int = 16) -> dict:
    """Best-of-``rounds`` forward milliseconds of the FP model (fp32, bf16) and the deployed model."""
    bf16_teacher = copy.deepcopy(teacher).to(torch.bfloat16)
    calls = {"fp32": _forward(teacher, ev, torch.float32, batch),
             "bf16": _forward(bf16_teacher, ev, torch.bfloat16, batch),
             "deployed": _forward(deployed, ev, torch.float32, batch)}
    best = {k: float("inf") for k in calls}
    for f in calls.values():
        f()
    for _ in range(rounds):
        for name, f in calls.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            f()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_name()}, {torch.get_num_threads()} threads"
    return {"ms": {k: v * 1e3 for k, v in best.items()}, "vs_fp32": best["fp32"] / best["deployed"],
            "vs_bf16": best["bf16"] / best["deployed"], "where": where, "batch": min(batch, ev.x_t.shape[0])}


def speed_line(speed: dict, label: str) -> str:
    ms = speed["ms"]
    return (f"Deployed {label} forward ({speed['batch']} clips): {ms['deployed']:.2f} ms vs FP {ms['fp32']:.2f} ms "
            f"fp32 ({speed['vs_fp32']:.2f}x) and {ms['bf16']:.2f} ms bf16 ({speed['vs_bf16']:.2f}x) on "
            f"{speed['where']}.")


__all__ = ["cpu_name", "forward_speed", "speed_line"]
