"""Output of the model benchmark: one-line progress rows, and the JSON + PNG + markdown summary."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from benchmarks._harness import write_json
from benchmarks._ratios import x_faster


def device_dir(device: torch.device) -> str:
    """Results sub-folder: 'cpu', or the GPU name as a slug (e.g. 'nvidia-h100-80gb-hbm3')."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def row_line(row: dict) -> str:
    head = f"{row['shape']:>20} {row['scope']:>5} {row['variant']:>12}"
    if "error" in row:
        return f"{head}  {row['error']}"
    lat = row["latency"]
    return (f"{head}  {lat['median_ms']:10.2f} ms (p10 {lat['p10_ms']:.2f}, p90 {lat['p90_ms']:.2f})  "
            f"peak {_mib(row['memory']['peak_bytes'])} MiB  module {_mib(row['module_bytes'])} MiB")


def markdown(result: dict) -> str:
    prov = result["provenance"]
    lines = [
        "# Model-level benchmark", "",
        f"Command: `{prov['command']}`  ", f"Device: {prov['device']} ({prov['device_name']}, "
        f"{prov['cpu_count']} CPUs, {prov['torch_threads']} torch threads), torch {prov['torch']}, "
        f"commit {prov['commit']}, {prov['utc']}, load average {prov.get('load_average_1_5_15')}  ",
        f"dtype {result['dtype']}, batch {result['batch']}, QAT Phi rank {result['qat_rank']}.", "",
        "Latency: median (p10-p90) over the timed calls. Peak: " +
        next((r["memory"]["method"] for r in result["rows"] if "memory" in r), "n/a") +
        ". Module bytes: parameters + buffers of the benchmarked module (packed weights at their real size;"
        " QAT rows include the latent weights, Phi and quantizer parameters). x faster than fp: the fp row's median"
        " latency / this row's (above 1 = faster, below 1 = slower; QAT rows are a training step, not a"
        " forward).", "",
        "| shape | scope | variant | latency ms | p10-p90 | peak MiB | module MiB | x faster than fp |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    fp = {(r["shape"], r["scope"]): r for r in result["rows"] if r["variant"] == "fp" and "latency" in r}
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['scope']} | {r['variant']} | {r['error']} | | | | |")
            continue
        lat, base = r["latency"], fp.get((r["shape"], r["scope"]))
        ratio = f"{x_faster(base['latency']['median_ms'], lat['median_ms']):.2f}" if base else "n/a"
        lines.append(f"| {r['shape']} | {r['scope']} | {r['variant']} | {lat['median_ms']:.2f} | "
                     f"{lat['p10_ms']:.2f}-{lat['p90_ms']:.2f} | {_mib(r['memory']['peak_bytes'])} | "
                     f"{_mib(r['module_bytes'])} | {ratio} |")
    lines += ["", "![latency and memory](model_bench.png)", ""]
    return "\n".join(lines)


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "latency" in r]
    groups = sorted({(r["shape"], r["scope"]) for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        for ax, key in zip(axes, ("latency", "memory")):
            vals = []
            for g in groups:
                r = next((r for r in rows if (r["shape"], r["scope"]) == g and r["variant"] == v), None)
                val = None if r is None else (r["latency"]["median_ms"] if key == "latency"
                                               else r["memory"]["peak_bytes"])
                vals.append(0.0 if val is None else (val if key == "latency" else val / 2**20))
            ax.bar([j + i * width for j in range(len(groups))], vals, width, label=v)
    for ax, title in zip(axes, ("forward / QAT-step latency (ms, median)", "peak memory (MiB)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
        ax.set_xticklabels([f"{s}\n{sc}" for s, sc in groups], fontsize=7)
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result['provenance']['device_name']}  |  {result['provenance']['command']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "model_bench.json", result)
    plot(out / "model_bench.png", result)
    (out / "model_bench.md").write_text(markdown(result))


__all__ = ["device_dir", "markdown", "plot", "row_line", "write_all"]
