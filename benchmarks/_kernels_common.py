"""Shared parts of the kernel benchmarks (``bench_gemm``, ``bench_fake_quant``): the per-layer GEMM shapes of the
real models, in-run hardware peaks, timing of one provider (or the reason it was skipped), the results JSON
and a bar plot.

Layer shapes come from ``benchmarks.shapes`` (the model configs): dim = heads x head_dim, FFN = ``ffn_dim``
(Wan) or 4 x dim (CogVideoX). M is the token count a linear sees: Wan video tokens (32 760; cross-attention
K/V read the 512 text tokens), CogVideoX video + text tokens (17 550 + 226 = 17 776, it attends jointly).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks import _harness
from benchmarks.report_model import device_dir
from benchmarks.shapes import FULL, get_shape
from qvgen_kernels import ops, registry
from qvgen_kernels.format import qmax

SMALL_M = (1, 4, 16, 64, 256)


@dataclass(frozen=True)
class LayerShape:
    """One linear: y [m, n] = x [m, k] W^T."""

    model: str
    layer: str
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    @property
    def label(self) -> str:
        return f"{self.model}:{self.layer} {self.m}x{self.k}x{self.n}"


def random_weight(n: int, k: int, bits: int, gen: torch.Generator, device: torch.device | str = "cpu"
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A checkpoint-layout weight of random codes: (w_packed uint8 [N, packed width], w_scale fp32 [N] in
    [0.001, 0.021), w_zero fp32 [N] in [0, P)). Kernel speed does not depend on the values."""
    codes = torch.randint(0, qmax(bits) + 1, (n, k), generator=gen, device=device, dtype=torch.uint8)
    w_packed = ops.pack(codes, bits, backend="reference")
    del codes
    w_scale = torch.rand(n, generator=gen, device=device) * 0.02 + 0.001
    return w_packed, w_scale, torch.rand(n, generator=gen, device=device) * qmax(bits)


def model_layers(name: str) -> list[LayerShape]:
    """The distinct linear shapes of one transformer block of the named real model."""
    s = get_shape(name)
    dim = s.kwargs["num_attention_heads"] * s.kwargs["attention_head_dim"]
    ffn = s.kwargs.get("ffn_dim", 4 * dim)
    m = s.video_tokens + (s.text_len if s.arch == "cogvideox" else 0)
    out = [LayerShape(name, "attn_qkvo", m, dim, dim), LayerShape(name, "ffn_up", m, dim, ffn),
           LayerShape(name, "ffn_down", m, ffn, dim)]
    if s.arch == "wan":
        out.append(LayerShape(name, "cross_kv", s.text_len, dim, dim))
    return out


def gemm_shapes(smoke: bool, small_m: bool = True) -> list[LayerShape]:
    """Full: every model's block shapes, then the small-M sweep on each model's FFN up-projection.
    Smoke: tiny odd shapes (K a multiple of 16 so that every provider's layout rules can hold)."""
    if smoke:
        return [LayerShape("tiny", "linear", 33, 64, 48), LayerShape("tiny", "small_m", 1, 64, 48)]
    shapes = [sh for name in FULL for sh in model_layers(name)]
    if small_m:
        for name in FULL:
            up = next(sh for sh in model_layers(name) if sh.layer == "ffn_up")
            shapes += [LayerShape(name, f"ffn_up_m{m}", m, up.k, up.n) for m in SMALL_M]
    return shapes


def add_common_args(ap: argparse.ArgumentParser, backends: tuple[str, ...]) -> None:
    ap.add_argument("--backends", default=",".join(backends), help="comma list of qvgen backends")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU-friendly smoke test)")
    ap.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu' or 'cuda'")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls (default 3 on GPU, 1 on CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls (default 20 on GPU, 3 on CPU)")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results/<device>)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: on a small shared machine more "
                    "OpenMP threads than idle cores make spin-waits dominate)")


def resolve_run(args: argparse.Namespace) -> tuple[torch.device, torch.dtype, int, int]:
    """(device, activation dtype, warmup, repeats). bf16 on CUDA; fp32 on CPU (bf16 GEMMs are slow there and
    the Triton interpreter mis-rounds bf16)."""
    torch.set_num_threads(args.threads)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    gpu = dev.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    repeats = args.repeats if args.repeats is not None else (20 if gpu else 3)
    return dev, (torch.bfloat16 if gpu else torch.float32), warmup, repeats


def out_dir(args: argparse.Namespace, device: torch.device) -> Path:
    return Path(args.out) if args.out else Path(__file__).parent / "results" / device_dir(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Median / p10 / p90 in microseconds via the shared harness, or {"skipped": reason} when fn raises."""
    try:
        s = _harness.time_fn(fn, device, warmup, repeats)
    except (RuntimeError, ValueError, TypeError) as e:  # also catches unimplemented-op errors (RuntimeError subclasses)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return {"us": s["median_ms"] * 1e3, "p10_us": s["p10_ms"] * 1e3, "p90_us": s["p90_ms"] * 1e3, "repeats": s["n"]}


def measure_peaks(device: torch.device, smoke: bool, warmup: int, repeats: int) -> dict[str, Any]:
    """In-run peaks: int8 (torch._int_mm) and fp8 e4m3 (torch._scaled_mm, per-tensor scales) TOPS on a square
    GEMM, and the bandwidth of a device copy (bytes read + written). The 8-bit peak is the larger of the two."""
    n = 256 if smoke else 16384
    a8 = torch.randint(-8, 8, (n, n), dtype=torch.int8, device=device)
    b8 = torch.randint(-8, 8, (n, n), dtype=torch.int8, device=device).t()  # column-major, as cuBLASLt wants
    f8 = a8.to(torch.float8_e4m3fn)
    g8 = b8.t().contiguous().to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=device)
    runs = {"int8 torch._int_mm": lambda: torch._int_mm(a8, b8),
            "fp8 torch._scaled_mm": lambda: torch._scaled_mm(f8, g8, scale_a=one, scale_b=one,
                                                             out_dtype=torch.bfloat16)}
    peaks: dict[str, Any] = {"gemm_n": n}
    for name, fn in runs.items():
        t = timed(fn, device, warmup, repeats)
        peaks[name] = t if "skipped" in t else {**t, "tops": 2 * n**3 / t["us"] / 1e6}
    ok = {k: v["tops"] for k, v in peaks.items() if isinstance(v, dict) and "tops" in v}
    peaks["peak_8bit_tops"], peaks["peak_8bit_source"] = (max(ok.values()), max(ok, key=ok.get)) if ok else (None, None)
    del a8, b8, f8, g8
    nbytes = (16 << 20) if smoke else (2 << 30)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), device, warmup, repeats)
    peaks["copy_bytes"] = nbytes
    peaks["bandwidth_gbs"] = None if "skipped" in t else 2 * nbytes / t["us"] / 1e3
    peaks["bandwidth_source"] = f"device copy of {nbytes >> 20} MiB (read + write counted)"
    return peaks


def roofline(row: dict[str, Any], flops: int, nbytes: int, peaks: dict[str, Any]) -> None:
    """Add TOPS, achieved GB/s, the fractions of the 8-bit peak and of the bandwidth, and which bound applies
    (the arithmetic intensity flops / bytes against the ridge point peak / bandwidth)."""
    if "us" not in row:
        return
    row["tops"] = flops / row["us"] / 1e6
    row["gbs"] = nbytes / row["us"] / 1e3
    row["bytes_model"] = nbytes
    peak, bw = peaks.get("peak_8bit_tops"), peaks.get("bandwidth_gbs")
    row["frac_peak_8bit"] = row["tops"] / peak if peak else None
    row["frac_bandwidth"] = row["gbs"] / bw if bw else None
    if peak and bw:
        row["bound"] = "memory" if flops / nbytes < peak * 1e12 / (bw * 1e9) else "compute"


def versions() -> dict[str, Any]:
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    return {"triton": triton, "cuda": torch.version.cuda}


def write_results(out: Path, stem: str, device: torch.device, payload: dict[str, Any],
                  plot: Callable[[Path], None]) -> Path:
    """``<out>/<stem>.json`` with provenance and versions, and ``<out>/<stem>.png`` drawn by ``plot``."""
    doc = {"provenance": {**_harness.provenance(device), **versions()}, **payload}
    path = _harness.write_json(out / f"{stem}.json", doc)
    if has_matplotlib():
        plot(out / f"{stem}.png")
    else:
        print(f"{stem}: no matplotlib, no .png (the .json holds every figure)")
    return path


class JsonLines:
    """``<out>/<stem>.jsonl``: one line per result, flushed as it is measured, so a run cut short keeps what
    it measured. Starts with a header line (provenance) and truncates an earlier file of the same name."""

    def __init__(self, out: Path, stem: str, header: dict[str, Any]):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / f"{stem}.jsonl"
        self._f = self.path.open("w")
        self.write({"header": header})

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, default=str) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def sm_clock(device: torch.device) -> dict[str, Any]:
    """The device's current and maximum SM clock in MHz (nvidia-smi; None where it cannot be read), so a
    timing can be read against the clock it ran at (a throttled or boosted SM changes every figure)."""
    if device.type != "cuda":
        return {}
    idx = device.index if device.index is not None else torch.cuda.current_device()
    out: dict[str, Any] = {"sm_clock_mhz": None, "sm_clock_max_mhz": None}
    try:
        text = subprocess.run(["nvidia-smi", "-i", str(idx), "--query-gpu=clocks.sm,clocks.max.sm",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        cur, mx = (int(v) for v in text.split(","))
        out.update(sm_clock_mhz=cur, sm_clock_max_mhz=mx, sm_clock_source="nvidia-smi")
    except (OSError, ValueError, subprocess.SubprocessError):
        try:  # torch's query needs pynvml
            out.update(sm_clock_mhz=torch.cuda.clock_rate(device), sm_clock_source="torch.cuda.clock_rate")
        except Exception as e:  # noqa: BLE001 - any failure means "unknown", recorded as such
            out["sm_clock_source"] = f"unavailable ({type(e).__name__})"
    return out


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def markdown_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """A markdown table of the given columns (floats to 4 significant digits, missing values blank)."""
    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def bar_plot(path: Path, title: str, groups: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    """Grouped bars (one group per shape, one bar per series); missing values are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(groups) * max(len(series), 1) ** 0.5), 5))
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + i * width for g, v in enumerate(vals) if v is not None]
        ax.bar(xs, [v for v in vals if v is not None], width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shape_dict(sh: LayerShape) -> dict[str, Any]:
    return asdict(sh)


def parse_run(ap: argparse.ArgumentParser, argv: list[str] | None, prog: str
              ) -> tuple[argparse.Namespace, torch.device, torch.dtype, dict[str, Any]]:
    """Parse the arguments, check the backend names, resolve the run and measure the in-run peaks:
    (args with args.backends as a list, device, dtype, peaks)."""
    args = ap.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    for b in args.backends:
        registry.normalize(prog, b)
    device, dtype, args.warmup, args.repeats = resolve_run(args)
    peaks = measure_peaks(device, args.smoke, args.warmup, args.repeats)
    return args, device, dtype, peaks
