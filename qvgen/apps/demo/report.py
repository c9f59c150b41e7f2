"""Rendering of the demo's results: ``report.md``, the sample grid PNG, the training-curve PNG, the summary.

Plots use ``matplotlib.figure.Figure`` directly (the Agg canvas), never pyplot's global state, so rendering
works headless and leaves no figures behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch

from qvgen_kernels.errors import fail

# Columns of the results table: (key in a result row, header, format).
COLUMNS = (
    ("name", "model", "{}"),
    ("denoise_mse", "denoising MSE vs FP (lower is better)", "{:.6f}"),
    ("psnr", "sample PSNR vs FP, dB (higher is better)", "{:.2f}"),
    ("ssim", "sample SSIM vs FP", "{:.4f}"),
    ("bytes", "model bytes", "{:,}"),
    ("phi_rank", "Phi rank", "{}"),
)


def _fmt(fmt: str, value: object) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return fmt.format(value)


def results_table(rows: Sequence[dict]) -> str:
    """A Markdown table of the result rows (missing keys print as '-')."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(f, r[k]) if k in r else "-" for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def verdict(ptq: dict, qvgen: dict, label: str = "W4A4") -> str:
    """One plain sentence: is deployed QVGen closer to the FP teacher than PTQ on both printed metrics?"""
    better_mse = qvgen["denoise_mse"] < ptq["denoise_mse"]
    better_psnr = qvgen["psnr"] > ptq["psnr"]
    if better_mse and better_psnr:
        head = f"YES: deployed QVGen {label} (no Phi) is closer to the FP teacher than {label} PTQ"
    elif better_mse or better_psnr:
        head = f"MIXED: deployed QVGen {label} is closer to the FP teacher than {label} PTQ on one metric only"
    else:
        head = f"NO: deployed QVGen {label} is not closer to the FP teacher than {label} PTQ"
    return (f"{head} (denoising MSE {qvgen['denoise_mse']:.6f} vs {ptq['denoise_mse']:.6f}; "
            f"sample PSNR {_fmt('{:.2f}', qvgen['psnr'])} dB vs {_fmt('{:.2f}', ptq['psnr'])} dB).")


def lsq_verdict(lsq: dict, qvgen: dict, label: str = "W4A4", steps: int | None = None) -> str:
    """One plain sentence: did Phi pay off? Deployed QVGen against LSQ QAT (QVGen without Phi) trained on the same
    seed, data and steps; a single seed, so it points to the paired multi-seed study for the interval."""
    rel = 100.0 * (qvgen["denoise_mse"] - lsq["denoise_mse"]) / lsq["denoise_mse"]
    better_psnr = qvgen["psnr"] > lsq["psnr"]
    if rel < 0 and better_psnr:
        head = f"PHI PAID OFF on this seed: deployed QVGen {label} is closer to the FP teacher than LSQ QAT {label}"
    elif rel < 0 or better_psnr:
        head = f"PHI MIXED on this seed: deployed QVGen {label} beats LSQ QAT {label} on one metric only"
    else:
        head = f"PHI DID NOT PAY OFF on this seed: LSQ QAT {label} (no Phi) is as close or closer to the FP teacher"
    same = f"same seed, data and {steps} steps" if steps else "same seed, data and steps"
    return (f"{head} (denoising MSE {qvgen['denoise_mse']:.6f} vs {lsq['denoise_mse']:.6f}, {rel:+.1f}%; sample "
            f"PSNR {_fmt('{:.2f}', qvgen['psnr'])} dB vs {_fmt('{:.2f}', lsq['psnr'])} dB; {same}). One seed "
            f"cannot separate a gap of a few percent from seed noise: benchmarks/results/quality.md compares them "
            f"over paired seeds and model widths.")


def clips_to_image(clips: Sequence[torch.Tensor], gap: int = 2) -> torch.Tensor:
    """Tile clips (each (B, 3, F, H, W) in [-1, 1]) into one (rows*H', cols*W', 3) image in [0, 1].

    Row b shows sample b; the clips come side by side, each as its F frames left to right, separated by
    white gaps (2 * gap wide between clips).
    """
    if not clips or any(c.dim() != 5 or c.shape != clips[0].shape for c in clips):
        fail("clips_to_image", "clips", "a non-empty list of equal-shape (B, 3, F, H, W) tensors",
             [tuple(c.shape) for c in clips])
    b, ch, f, h, w = clips[0].shape
    cell_h, cell_w = h + gap, w + gap
    strip_w = f * cell_w + gap
    img = torch.ones(b * cell_h + gap, len(clips) * strip_w + gap, ch)
    for j, clip in enumerate(clips):
        frames = ((clip.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)  # B F H W C
        for i in range(b):
            for k in range(f):
                y, x = gap + i * cell_h, gap + j * strip_w + k * cell_w
                img[y:y + h, x:x + w] = frames[i, k]
    return img


def save_sample_grid(path: Path, clips: dict[str, torch.Tensor], captions: Sequence[str]) -> None:
    """PNG: one row per sample, the named clips side by side (e.g. FP | PTQ | LSQ | QVGen), frames left to right."""
    from matplotlib.figure import Figure

    names = list(clips)
    img = clips_to_image([clips[n] for n in names]).numpy()
    rows = img.shape[0]
    fig = Figure(figsize=(max(6.0, img.shape[1] / 40), max(2.5, rows / 40 + 0.8)), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img, interpolation="nearest")
    ax.set_xticks([(j + 0.5) * img.shape[1] / len(names) for j in range(len(names))], names)
    cell = (rows - 2) / max(1, len(captions))
    ax.set_yticks([2 + (i + 0.5) * cell for i in range(len(captions))], list(captions), fontsize=7)
    ax.tick_params(length=0)
    ax.set_title("sampled clips, frames left to right (same noise and caption per row)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def read_metrics_jsonl(path: Path) -> list[dict]:
    """The trainer's metrics log, one JSON object per line (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_curves(path: Path, runs: dict[str, Sequence[dict]], teacher_curve: Sequence[Sequence[float]] = ()
                ) -> None:
    """PNG: distillation loss, pre-clip grad norm and Phi rank against step for each named run (records of the
    trainer's metrics.jsonl), and the FP teacher's training loss when given."""
    from matplotlib.figure import Figure

    panels = [("loss", "distillation loss", True), ("grad_norm", "grad norm (pre-clip)", True),
              ("rank", "Phi rank", False)]
    fig = Figure(figsize=(13, 3.2), dpi=110)
    for i, (key, title, log_y) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels) + 1, i + 1)
        for name, records in runs.items():
            pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), lw=1, label=name)
                if log_y and min(p[1] for p in pts) > 0:
                    ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if len(runs) > 1:
            ax.legend(fontsize=7)
    ax = fig.add_subplot(1, len(panels) + 1, len(panels) + 1)
    if teacher_curve:
        ax.plot(*zip(*[(s, v) for s, v in teacher_curve]), lw=1, color="k")
        ax.set_yscale("log")
    ax.set_title("FP teacher flow-matching loss", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def write_report(out_dir: Path, rows: Sequence[dict], summary: str, settings: dict, images: dict[str, str]
                 ) -> Path:
    """Write ``report.md`` (settings, results table, verdict, images) and a ``results.json``; returns the md path."""
    out_dir = Path(out_dir)
    lines = ["# qvgen demo report", "", "## Verdict", "", summary, "", "## Results", "",
             "Quality is measured against the FP teacher: denoising MSE on held-out noisy clips (velocity, same "
             "inputs), and PSNR/SSIM of sampled clips from the same noise and captions.", "",
             results_table(rows), "", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "## Figures", ""]
    lines += [f"![{title}]({name})" for title, name in images.items()]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    clean = [{k: "inf" if isinstance(v, float) and math.isinf(v) else v for k, v in r.items()} for r in rows]
    payload = {"rows": clean, "summary": summary, "settings": settings}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    return path
