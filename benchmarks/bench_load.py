"""Load time and peak host memory of from_pretrained: a Wan transformer of ~215M parameters, FP (diffusers'
WanTransformer3DModel) vs W4A4 deployed (qvgen.QuantizedWanTransformer3DModel). Each load runs in a fresh
process; peak memory is VmHWM of that process, and the figure given is its growth over the RSS just before
the call (imports done, classes resolved). Weights are random (their values do not change the cost).

    python -m benchmarks.bench_load [--dir runs/bench_load] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="runs/bench_load", help="where the two checkpoints are written")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    root = Path(args.dir)
    result = build(root)
    for kind in ("fp", "q") * args.repeats:
        out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(root / kind)], check=True,
                             capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        result.setdefault(kind, []).append(row)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
