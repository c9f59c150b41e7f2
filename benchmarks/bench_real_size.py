"""Real size on the CPU: the full Wan2.1-1.3B transformer converted, saved, loaded in a fresh process and run beside
the bf16 model.

    python -m benchmarks.bench_real_size                       # W4A4, W3A3, W8A8 at Wan2.1-1.3B, 1024 video tokens
    python -m benchmarks.bench_real_size --smoke               # a 2-block, width-64 Wan (the test suite runs it)
    python -m benchmarks.bench_real_size --device cuda --model wan2.1-14b --bits w4a4 --out DIR   # on a GPU

Per format, two fresh processes (so that each RSS figure is that stage's own):
    convert   builds the architecture from its diffusers config (``WanTransformer3DModel``: 30 blocks, dim 1536 =
              12 heads x 128, FFN 8960, text 4096, in/out channels 16, patch (1, 2, 2)) with random fp32 weights
              (seeded; nothing is downloaded), converts it (``quantize_model`` + ``to_deploy``, Φ rank 0, minmax
              init), times the MSE init (80 shrink candidates) of one FFN weight apart, writes it with ``save_pretrained`` and runs one forward in bf16 (the round-trip reference)
    load      ``from_pretrained(..., torch_dtype=torch.bfloat16)`` and its first forward, then the same
              architecture (same seed) cast to bf16 in the same process; then ``--rounds`` rounds of one forward
              of each model in turn (the best time of each is kept)
On CUDA the model is built, converted and run on the GPU (loaded on the host, then moved), times wait for the
GPU, and each stage also reports its peak GPU memory (``torch.cuda.max_memory_allocated``).
Figures: bytes on disk (the saved folder); resident bytes after one forward (``model_bytes``: every parameter,
buffer and deployed layout, each storage once); peak extra RSS while converting (over the RSS with the fp32 model
built) and while loading (over the RSS before loading); convert / load / first-forward / forward seconds; whether
the loaded model's output equals the converted model's bit for bit. Writes
``benchmarks/results/cpu/real_size.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import _harness

OUT = Path(__file__).resolve().parent / "results" / "cpu"
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_14B = dict(WAN_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)  # 5120 = 40 x 128
SMOKE = dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=32, text_dim=48, ffn_dim=128, num_layers=2)
MODELS = {"wan2.1-1.3b": ("Wan2.1-1.3B (random weights)", WAN_1_3B), "wan2.1-14b": ("Wan2.1-14B (random weights)", WAN_14B),
          "smoke": ("tiny Wan", SMOKE)}
BITS = ("w4a4", "w3a3", "w8a8")
SEED = 0


class PeakRSS:
    """Peak resident set size of this process, all of it and its anonymous part (not file pages mapped in, such
    as a memory-mapped safetensors file), sampled every 10 ms from /proc while in the ``with`` block."""

    def __init__(self) -> None:
        self.start = self.peak = rss()
        self.start_anon = self.peak_anon = rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, rss())
        self.peak_anon = max(self.peak_anon, rss_anon())

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self._sample()

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss()
        self.start_anon = self.peak_anon = rss_anon()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_anon() -> int:
    """Anonymous resident bytes (RssAnon of /proc/self/status; 0 where the kernel does not report it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def build(config: dict[str, Any], device: torch.device = torch.device("cpu")) -> torch.nn.Module:
    import diffusers
    torch.manual_seed(SEED)
    with device:  # built where it runs (a 14B fp32 model is 57 GB: on a GPU, not through the host)
        return diffusers.WanTransformer3DModel(**config).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_peak(device: torch.device, reset: bool = False) -> int | None:
    """Peak bytes allocated on the GPU since the last reset (None on the CPU)."""
    if device.type != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.max_memory_allocated(device)


def inputs(config: dict[str, Any], tokens: int, text_tokens: int, dtype: torch.dtype,
           device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """Latents [1, C, F, H, W] with F * (H / 2) * (W / 2) = tokens video tokens (F = 4 frames of a square grid)."""
    side = int(round((tokens / 4) ** 0.5)) * 2
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, config["in_channels"], 4, side, side, generator=g)
    text = torch.randn(1, text_tokens, config["text_dim"], generator=g)
    return {"hidden_states": x.to(device, dtype), "encoder_hidden_states": text.to(device, dtype),
            "timestep": torch.tensor([500], device=device), "return_dict": False}


def timed_forward(model: torch.nn.Module, args: dict[str, Any]) -> tuple[float, torch.Tensor]:
    device = args["hidden_states"].device
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(**args)[0]
    sync(device)
    return time.perf_counter() - t0, out


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def mse_init_time(config: dict[str, Any], device: torch.device) -> tuple[float, int]:
    """Seconds of the MSE weight init (80 shrink candidates) of one FFN weight [ffn_dim, dim], and its size."""
    from qvgen.quant.config import QuantConfig
    from qvgen.quant.quantizers import WeightQuantizer
    n, k = config["ffn_dim"], config["num_attention_heads"] * config["attention_head_dim"]
    w = (torch.randn(n, k, generator=torch.Generator().manual_seed(2)) * 0.02).to(device)
    q = WeightQuantizer(n, k, QuantConfig.preset("w4a4", rank=0, w_init="mse")).to(device)
    sync(device)
    t0 = time.perf_counter()
    q.calibrate(w)
    sync(device)
    return time.perf_counter() - t0, n * k


def stage_convert(config: dict[str, Any], bits: str, work: Path, tokens: int, text_tokens: int,
                  device: torch.device) -> dict[str, Any]:
    import qvgen
    from qvgen.artifact.pretrained import cast
    model = build(config, device)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = qvgen.QuantConfig.preset(bits, rank=0, w_init="minmax")
    before_gpu = gpu_peak(device, reset=True)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        model = qvgen.to_deploy(qvgen.quantize_model(model, cfg))
        sync(device)
        convert_s = time.perf_counter() - t0
    convert_gpu = gpu_peak(device)
    mse_s, mse_params = mse_init_time(config, device)
    t0 = time.perf_counter()
    model.save_pretrained(work / "model")
    save_s = time.perf_counter() - t0
    cast(model, torch.bfloat16)
    _, out = timed_forward(model, inputs(config, tokens, text_tokens, torch.bfloat16, device))
    torch.save(out.cpu(), work / "convert_out.pt")
    gpu = {} if before_gpu is None else {"gpu_bytes_before_convert": before_gpu, "convert_gpu_peak": convert_gpu}
    return {**gpu, "params": n_params, "convert_s": convert_s, "convert_s_per_billion_params": convert_s / n_params * 1e9,
            "save_s": save_s, "mse_init_s_per_billion_params": mse_s / mse_params * 1e9, "mse_init_params": mse_params, "rss_before_convert": mem.start, "convert_peak_rss": mem.peak,
            "convert_peak_extra_rss": mem.peak - mem.start, "disk_bytes": folder_bytes(work / "model")}


def stage_load(config: dict[str, Any], work: Path, tokens: int, text_tokens: int, rounds: int,
               device: torch.device) -> dict[str, Any]:
    import diffusers
    import qvgen  # noqa: F401  (registers the diffusers backend)
    from qvgen.apps.demo.metrics import model_bytes
    from qvgen.artifact.pretrained import cast
    from qvgen.artifact.fuse import fuse_activations
    args = inputs(config, tokens, text_tokens, torch.bfloat16, device)
    gpu_peak(device, reset=True)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        model = diffusers.WanTransformer3DModel.from_pretrained(work / "model", torch_dtype=torch.bfloat16)
        model.to(device)  # loaded on the host, then moved: the deployed layouts are built on the device
        sync(device)
        load_s = time.perf_counter() - t0
    first_s, out = timed_forward(model, args)
    resident = model_bytes(model)
    want = torch.load(work / "convert_out.pt").to(device)
    row = {"load_s": load_s, "rss_before_load": mem.start, "load_peak_rss": mem.peak,
           "load_peak_extra_rss": mem.peak - mem.start, "load_peak_extra_anon_rss": mem.peak_anon - mem.start_anon,
           "first_forward_s": first_s, "resident_bytes": resident,
           "loaded_class": type(model).__name__}
    if device.type == "cuda":
        row["load_and_first_forward_gpu_peak"] = gpu_peak(device)
    bf16 = cast(build(config, device), torch.bfloat16)  # diffusers' keep-in-fp32 modules stay fp32, as when loaded
    row["bf16_resident_bytes"] = model_bytes(bf16)
    row["bf16_first_forward_s"], _ = timed_forward(bf16, args)
    # Rounds alternate the models (the machine is shared: load from other processes hits all alike): the deployed
    # model as loaded (its FFN GELU fused into the projection), bf16, and the deployed model with the fusion off.
    times: dict[str, list[float]] = {"deployed": [], "bf16": [], "deployed_unfused": []}
    identical = torch.equal(out, want)
    fused = fuse_activations(model)
    for _ in range(rounds):
        sec, again = timed_forward(model, args)
        times["deployed"].append(sec)
        identical = identical and torch.equal(again, want)
        times["bf16"].append(timed_forward(bf16, args)[0])
        fuse_activations(model, enabled=False)
        times["deployed_unfused"].append(timed_forward(model, args)[0])
        fuse_activations(model)
    row.update(forward_s=min(times["deployed"]), bf16_forward_s=min(times["bf16"]),
               unfused_forward_s=min(times["deployed_unfused"]), fused_modules=fused, forward_rounds_s=times,
               round_trip_identical=bool(identical))
    row["unfused_speed_vs_bf16"] = row["bf16_forward_s"] / row["unfused_forward_s"]
    row["resident_vs_bf16"] = resident / row["bf16_resident_bytes"]
    row["speed_vs_bf16"] = row["bf16_forward_s"] / row["forward_s"]
    return row


def run_stage(stage: str, bits: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One stage in a fresh interpreter; its figures come back through a JSON file."""
    cmd = [sys.executable, "-m", "benchmarks.bench_real_size", "--stage", stage, "--bits", bits, "--work", str(work),
           "--tokens", str(args.tokens), "--text-tokens", str(args.text_tokens), "--rounds", str(args.rounds),
           "--model", args.model, "--device", args.device]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)
    return json.loads((work / f"{stage}.json").read_text())


def markdown(doc: dict[str, Any]) -> str:
    gb = 1e9
    prov = doc["provenance"]
    where = "the CPU" if prov["device"] == "cpu" else prov["device_name"]
    lines = [f"# Real size on {where}: {doc['model']} ({doc['params'] / 1e9:.3f} B parameters)", "",
             f"Command: `{prov['command']}`; torch {prov['torch']}, {prov['torch_threads']} threads; commit "
             f"{str(prov['commit'])[:10]}; load average at start {prov['load_average_1_5_15']}.", "",
             f"Forward: {doc['tokens']} video tokens + {doc['text_tokens']} text tokens, batch 1, bf16 compute; "
             "forward times are the best of the rounds, which alternate the deployed model as loaded (its FFN GELU "
             "fused into the projection's epilogue), the bf16 model and the deployed model with the fusion off. "
             "Resident bytes: every parameter, buffer and deployed layout after one forward, each storage once. "
             "Peak extra RSS: over the RSS before the stage (converting: with the fp32 model built).", "",
             "| measure | " + " | ".join(r["bits"] for r in doc["rows"]) + " |", "|---" * (len(doc["rows"]) + 1) + "|"]
    rows = [("bytes on disk (GB)", lambda r: f"{r['disk_bytes'] / gb:.3f}"),
            ("resident bytes (GB)", lambda r: f"{r['resident_bytes'] / gb:.3f}"),
            ("bf16 model resident (GB)", lambda r: f"{r['bf16_resident_bytes'] / gb:.3f}"),
            ("resident vs bf16", lambda r: f"{r['resident_vs_bf16']:.3f}×"),
            ("convert time (s)", lambda r: f"{r['convert_s']:.1f}"),
            ("convert time per 1B parameters (s)", lambda r: f"{r['convert_s_per_billion_params']:.1f}"),
            ("MSE init per 1B parameters (s, one FFN weight)", lambda r: f"{r['mse_init_s_per_billion_params']:.0f}"),
            ("convert peak extra RSS (GB)", lambda r: f"{r['convert_peak_extra_rss'] / gb:.2f}"),
            ("convert peak extra RSS vs bf16 bytes", lambda r: f"{r['convert_peak_extra_rss'] / r['bf16_resident_bytes']:.2f}×"),
            ("load time (s)", lambda r: f"{r['load_s']:.1f}"),
            ("load peak extra RSS (GB)", lambda r: f"{r['load_peak_extra_rss'] / gb:.2f}"),
            ("load peak extra anonymous RSS (GB; file pages mapped in left out)",
             lambda r: f"{r['load_peak_extra_anon_rss'] / gb:.2f}"),
            ("first forward (s)", lambda r: f"{r['first_forward_s']:.2f}"),
            ("forward (s)", lambda r: f"{r['forward_s']:.2f}"),
            ("bf16 forward (s)", lambda r: f"{r['bf16_forward_s']:.2f}"),
            ("speed vs bf16", lambda r: f"{r['speed_vs_bf16']:.2f}×"),
            ("forward without the GELU fusion (s)", lambda r: f"{r['unfused_forward_s']:.2f}"),
            ("speed vs bf16 without the GELU fusion", lambda r: f"{r['unfused_speed_vs_bf16']:.2f}×"),
            ("round trip output-identical", lambda r: "yes" if r["round_trip_identical"] else "NO")]
    if "convert_gpu_peak" in doc["rows"][0]:
        rows += [("GPU peak while converting (GB, fp32 model included)", lambda r: f"{r['convert_gpu_peak'] / gb:.2f}"),
                 ("GPU peak while loading + first forward (GB)",
                  lambda r: f"{r['load_and_first_forward_gpu_peak'] / gb:.2f}")]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in doc["rows"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", nargs="+", default=list(BITS), choices=BITS)
    ap.add_argument("--tokens", type=int, default=1024, help="video tokens (4 frames of a square grid)")
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--rounds", type=int, default=2, help="timed forward rounds per model (best kept)")
    ap.add_argument("--smoke", action="store_true", help="a 2-block, width-64 Wan and 64 tokens (for tests)")
    ap.add_argument("--model", choices=[m for m in MODELS if m != "smoke"], default="wan2.1-1.3b")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--stage", choices=("convert", "load"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name, config = MODELS["smoke" if args.smoke else args.model]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if args.stage:
        if args.stage == "convert":
            row = stage_convert(config, args.bits[0], args.work, args.tokens, args.text_tokens, device)
        else:
            row = stage_load(config, args.work, args.tokens, args.text_tokens, args.rounds, device)
        (args.work / f"{args.stage}.json").write_text(json.dumps(row))
        return None
    rows = []
    for bits in args.bits:
        with tempfile.TemporaryDirectory(prefix="qvgen-real-size-") as tmp:
            row = {"bits": bits, **run_stage("convert", bits, Path(tmp), args), **run_stage("load", bits, Path(tmp), args)}
        rows.append(row)
        print(f"{bits}: resident {row['resident_vs_bf16']:.3f}x bf16, forward {row['speed_vs_bf16']:.2f}x bf16, "
              f"convert {row['convert_s']:.1f} s (peak extra RSS {row['convert_peak_extra_rss'] / 1e9:.2f} GB), "
              f"load {row['load_s']:.1f} s, first forward {row['first_forward_s']:.2f} s vs {row['forward_s']:.2f} s, "
              f"round trip identical: {row['round_trip_identical']}", flush=True)
    doc = {"provenance": _harness.provenance(device), "model": name, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
           "params": rows[0]["params"], "tokens": args.tokens, "text_tokens": args.text_tokens, "rows": rows}
    stem = "real_size_smoke" if args.smoke else "real_size" if args.model == "wan2.1-1.3b" else f"real_size_{args.model}"
    args.out.mkdir(parents=True, exist_ok=True)
    _harness.write_json(args.out / f"{stem}.json", doc)
    (args.out / f"{stem}.md").write_text(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
