"""Load time and peak host memory of from_pretrained: a Wan transformer of ~215M parameters, FP (diffusers'
WanTransformer3DModel) vs W4A4 deployed (qvgen.QuantizedWanTransformer3DModel). Each load runs in a fresh
process; peak memory is VmHWM of that process, and the figure given is its growth over the RSS just before
the call (imports done, classes resolved). Weights are random (their values do not change the cost).

    python -m benchmarks.bench_load [--dir runs/bench_load] [--repeats 2]

Prints a markdown table and writes it with the raw figures to ``<dir>/load_bench.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks._ratios import x_faster

CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=128, in_channels=16, out_channels=16,
              text_dim=4096, freq_dim=256, ffn_dim=4096, num_layers=12, cross_attn_norm=True,
              qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)

_CHILD = r'''
import json, sys, time
import diffusers, qvgen

def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

kind, path = sys.argv[1], sys.argv[2]
cls = diffusers.WanTransformer3DModel if kind == "fp" else qvgen.QuantizedWanTransformer3DModel
before = status("VmRSS")
t = time.perf_counter()
cls.from_pretrained(path)
print(json.dumps({"kind": kind, "load_s": time.perf_counter() - t, "rss_added_bytes": status("VmHWM") - before}))
'''


def build(root: Path) -> dict:
    import diffusers
    import torch

    import qvgen

    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(**CONFIG)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(root / "fp")
    cfg = qvgen.QuantConfig.preset("w4a4", rank=0)
    qvgen.to_deploy(qvgen.quantize_model(model, cfg, calibrate=False)).save_pretrained(root / "q")
    return {"params": params, **{f"{k}_bytes": sum(f.stat().st_size for f in (root / k).iterdir()) for k in ("fp", "q")}}


def markdown(result: dict) -> str:
    """One row per checkpoint: median load time and host-memory growth over the repeats, and the ratios."""
    from statistics import median

    def med(kind: str, key: str) -> float:
        return median(r[key] for r in result[kind])

    lines = [f"# Load benchmark: from_pretrained of a {result['params'] / 1e6:.0f}M-parameter Wan transformer", "",
             f"Median of {len(result['fp'])} loads, each in a fresh process; memory is the RSS high-water growth "
             "over the call. x faster than FP: FP's load time / this row's (above 1 = faster).", "",
             "| checkpoint | files MiB | load s | x faster than FP | host memory added MiB |",
             "|---|---:|---:|---:|---:|"]
    for kind, name in (("fp", "FP (WanTransformer3DModel)"), ("q", "W4A4 deployed (QuantizedWanTransformer3DModel)")):
        lines.append(f"| {name} | {result[f'{kind}_bytes'] / 2**20:.1f} | {med(kind, 'load_s'):.2f} | "
                     f"{x_faster(med('fp', 'load_s'), med(kind, 'load_s')):.2f} | "
                     f"{med(kind, 'rss_added_bytes') / 2**20:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="runs/bench_load", help="where the two checkpoints and the results are "
                    "written (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="loads of each checkpoint (default: %(default)s)")
    args = ap.parse_args(argv)
    root = Path(args.dir)
    result = build(root)
    for kind in ("fp", "q") * args.repeats:
        out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(root / kind)], check=True,
                             capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        result.setdefault(kind, []).append(row)
    (root / "load_bench.json").write_text(json.dumps(result, indent=2))
    (root / "load_bench.md").write_text(markdown(result))
    print(markdown(result) + f"\nwrote {root}/load_bench.json and .md")
    return result


if __name__ == "__main__":
    main()
