"""Tables, curves and the generated ``quality.md`` of the quality study (every number read from the JSONs)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Sequence

from benchmarks.quality import mechanism

# (key, header, format, higher is better)
METRICS = (
    ("denoise_mse", "denoise MSE vs teacher", "{:.4f}", False),
    ("psnr", "PSNR dB", "{:.2f}", True),
    ("ssim", "SSIM", "{:.3f}", True),
    ("motion_ratio", "motion ratio (1 = FP)", "{:.3f}", None),
    ("trajectory_error", "trajectory err px", "{:.2f}", False),
    ("temporal_consistency", "temporal consist.", "{:.3f}", None),  # read against the FP row, not ranked
)


def run_line(run: dict) -> str:
    return (f"[{run['label']:>24} seed {run['seed']}] mse {run['denoise_mse']:.4f}  psnr {run['psnr']:.2f}  "
            f"ssim {run['ssim']:.3f}  motion {run['motion_ratio']:.3f}  traj {run['trajectory_error']:.2f}  "
            f"tc {run['temporal_consistency']:.3f}  ({run['seconds']:.0f} s)")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); infinities propagate to the mean."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std: argument 'values' expected a non-empty sequence, got []")
    if any(math.isinf(v) for v in vals):
        return math.inf, 0.0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def aggregate(runs: Sequence[dict]) -> dict[str, dict]:
    """{label: {metric: (mean, std), "n": seeds, "bytes": ..., "spec": ...}} in first-seen order."""
    out: dict[str, dict] = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r for r in runs if r["label"] == label]
        out[label] = {k: mean_std([r[k] for r in rs]) for k, *_ in METRICS}
        out[label].update(n=len(rs), bytes=rs[0]["bytes"], spec=rs[0]["spec"],
                          seconds=statistics.fmean(r["seconds"] for r in rs))
    return out


def table(agg: dict[str, dict]) -> str:
    head = "| method | " + " | ".join(h for _, h, *_ in METRICS) + " | KiB | s/run |"
    lines = [head, "|---" * (len(METRICS) + 3) + "|"]
    for label, a in agg.items():
        cells = [f"{fmt.format(a[k][0])} +- {fmt.format(a[k][1])}" for k, _, fmt, _ in METRICS]
        lines.append(f"| {label} (n={a['n']}) | " + " | ".join(cells) + f" | {a['bytes'] / 1024:.1f} | "
                     f"{a['seconds']:.0f} |")
    return "\n".join(lines)


def _curve_mean(runs: Sequence[dict], key: str) -> list[float]:
    curves = [r["log"][key] for r in runs if r.get("log") and r["log"].get(key)]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [statistics.fmean(c[i] for c in curves) for i in range(n)]


def plot_study(path: Path, result: dict) -> None:
    """Gradient-norm (latent weights) and loss curves (mean over seeds) of every trained configuration, and
    the Phi-free held-out error every 10% of training when the runs logged it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    bits = mechanism.bit_settings(runs)
    has_curves = any(r.get("log", {}).get("curve") for r in runs)
    ncols = 2 + (len(bits) if has_curves else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.5))
    if has_curves:
        for ax, b in zip(axes[2:], bits):
            for label in [k for k in dict.fromkeys(r["label"] for r in runs) if k.endswith(b)]:
                rs = [r for r in runs if r["label"] == label and r["log"].get("curve")]
                if rs:
                    n = min(len(r["log"]["curve"]) for r in rs)
                    x = [100 * pt["frac"] for pt in rs[0]["log"]["curve"][:n]]
                    y = [statistics.fmean(r["log"]["curve"][i]["phi_free"] for r in rs) for i in range(n)]
                    ax.plot(x, y, marker="o", ms=3, label=label)
            ax.set_title(f"{b}: held-out error without Phi (gamma = 0), mean over seeds", fontsize=9)
            ax.set_xlabel("% of training")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r for r in runs if r["label"] == label]
        for ax, key in zip(axes, ("grad_norm_weights", "loss")):
            c = _curve_mean(rs, key)
            if c:
                ax.plot(range(len(c)), c, label=label, lw=1.2)
    axes[0].set_title("gradient norm of the latent weights (pre-clip, mean over seeds)")
    axes[1].set_title("distillation loss (mean over seeds)")
    for ax in axes[:2]:
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(result["provenance"]["command"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cmp(agg: dict, a: str, b: str, key: str) -> str | None:
    """'a is better/worse than b on key' with the means, stds and whether the gap exceeds one std."""
    if a not in agg or b not in agg:
        return None
    (ma, sa), (mb, sb) = agg[a][key], agg[b][key]
    name, fmt, higher = next((h, f, hi) for k, h, f, hi in METRICS if k == key)
    better = ma > mb if higher else ma < mb
    clear = abs(ma - mb) > max(sa, sb)
    verdict = ("better" if better else "worse") + ("" if clear else " (within one std: not resolved)")
    return (f"{a} vs {b}, {name}: {fmt.format(ma)} +- {fmt.format(sa)} vs {fmt.format(mb)} +- {fmt.format(sb)}"
            f" -> {verdict}")


def _grad_norm_line(runs: Sequence[dict], a: str, b: str) -> str | None:
    ca = _curve_mean([r for r in runs if r["label"] == a], "grad_norm_weights")
    cb = _curve_mean([r for r in runs if r["label"] == b], "grad_norm_weights")
    if not ca or not cb:
        return None
    n = min(len(ca), len(cb))
    ma, mb = statistics.fmean(ca[:n]), statistics.fmean(cb[:n])
    return (f"mean gradient norm of the latent weights over training: {a} {ma:.4g} vs {b} {mb:.4g} "
            f"({'lower' if ma < mb else 'higher'} with Phi, ratio {ma / mb:.2f})")


def _best_lines(agg: dict, bits: str) -> list[str]:
    """Which quantized method ranks first at ``bits`` on each metric with a direction."""
    labels = [k for k in agg if k.endswith(bits)]
    out = []
    for key, name, fmt, higher in METRICS:
        if higher is None or not labels:
            continue
        best = (max if higher else min)(labels, key=lambda k: agg[k][key][0])
        out.append(f"{bits}: best {name}: {best} ({fmt.format(agg[best][key][0])} +- {fmt.format(agg[best][key][1])})")
    return out


def reading(result_by_study: dict[str, dict]) -> list[str]:
    """Generated comparison lines (every number from the JSON)."""
    lines = []
    meth = result_by_study.get("methods")
    if meth:
        agg = aggregate(meth["runs"])
        fp_bytes = agg.get("fp teacher", {}).get("bytes")
        for bits in ("W4A4", "W3A3"):
            lines += _best_lines(agg, bits)
            if fp_bytes:
                lines.append(f"{bits}: deployed size relative to the FP teacher: " + ", ".join(
                    f"{k.rsplit(' ', 1)[0]} {agg[k]['bytes'] / fp_bytes:.2f}x" for k in agg if k.endswith(bits)))
            q = next((k for k in agg if k.startswith("qvgen") and k.endswith(bits)), None)
            for other in ("ptq", "svdquant", "lsq", "qalora"):
                for key in ("denoise_mse", "psnr"):
                    line = _cmp(agg, q, f"{other} {bits}", key) if q else None
                    if line:
                        lines.append(line)
            g = _grad_norm_line(meth["runs"], q, f"lsq {bits}") if q else None
            if g:
                lines.append(g)
    abl = result_by_study.get("ablations")
    if abl:
        agg = aggregate(abl["runs"])
        main = next((k for k in agg if k.startswith("qvgen") and "cosine" in k and
                     agg[k]["spec"]["rank"] == abl["settings"]["rank"]), None)
        for other in [k for k in agg if k not in (main, "fp teacher")]:
            line = _cmp(agg, main, other, "denoise_mse") if main else None
            if line:
                lines.append(line)
    return lines


GUIDANCE = """\
Every Phi configuration of the mechanism studies against LSQ QAT (the same recipe with Phi rank 0) on the same seeds,
best first. A configuration is worth its cost only where its interval lies below 0; "not resolved" means the seeds
at hand cannot tell it from LSQ. The per-study sections below say why (convergence, gradient ratio, decomposition)."""

CAVEATS = """\
How to read this at this scale (fixed text; every number above is generated from the study JSONs):
- The studies above the width sweep use the shipped demo teacher: a 4-layer Wan-architecture DiT (hidden width 64, FFN 128) on 16x16x8
  sprite clips, trained for 1.6k steps on CPU (`python -m qvgen.apps.demo.teacher`). The paper's regime (1.3B-14B
  parameters, thousands of steps on 8 GPUs) is far away; the width sweep (its own teachers, widths 64-256, and a
  GPU slice at width 512) asks how the answer moves with width.
- Phi's rank is scaled to the width as in the paper (rank 32 on 1536-5120 wide layers is 0.6-2%): the power of two
  nearest 2% of the width, at least 2, i.e. rank 2 on 64-wide layers (3%). Higher ranks hold most of a narrow
  layer's weight error and answer another question.
- The learning rate (5e-4) is the study's, not the official 3e-5 (the tiny model needs it to move in 60 steps).
- Paired differences: each seed fixes the training batches, the held-out clips and the sampling noise, so a
  method is compared with LSQ seed by seed; the interval is a Student-t 95% interval of the mean relative difference.
  With 2-4 seeds only large effects resolve; "not resolved" is not "equal".
- The SVDQuant-style baseline keeps a floating-point low-rank branch of the same rank as Phi at inference; its
  deployed bytes are in the cost table (per-byte comparison), with no outlier smoothing.
- The gradient ratio uses the latent weights' gradients only (Phi's own excluded), before clipping.
- Training seconds are wall time on a 2-core machine shared with other jobs: they move by tens of percent from
  run to run. Phi's arithmetic at rank r adds r (N + K) multiply-adds per token to an N x K layer (6% at rank 2
  on 64-wide layers) in training, and nothing after it is removed.
- "motion ratio" is frame-difference energy relative to the FP model's clips from the same noise (1 = same
  amount of motion); "trajectory err" is the mean distance between foreground centroids; "temporal consist."
  (cosine of consecutive frames) is read as closeness to the FP row, not ranked.
"""


MECHANISM_STUDIES = ("mechanism", "budget")
STUDIES = MECHANISM_STUDIES + ("methods", "ablations")


def mechanism_sections(study: str, res: dict) -> list[str]:
    """The paired, convergence, gradient, decomposition and cost tables of a mechanism-style study."""
    runs = res["runs"]
    table_paired, _ = mechanism.paired_table(runs)
    out = ["### Paired differences vs LSQ (same seed: same data, held-out set and noise)", "",
           "Relative difference of the deployed model's held-out denoising MSE, (method - LSQ) / LSQ per seed; "
           "mean, 95% Student-t interval of the mean, and the number of seeds where the method is lower. "
           "'verdict' is 'not resolved' when the interval contains 0.", "", table_paired, "",
           "### Convergence: held-out error without Phi (gamma = 0) every 10% of training, mean over seeds", "",
           "The error the deployed model would have if Phi were dropped at that point (LSQ has no Phi).", "",
           mechanism.convergence_table(runs), "",
           "### Latent-weight gradient norm, ratio to LSQ per decay stage (same seed, same steps)", "",
           "Stages are the runs of equal Phi rank in the training log; r0 is after Phi is gone. Below 1: Phi "
           "absorbs part of the error the weights' gradient would otherwise carry (the paper's argument).", "",
           mechanism.grad_ratio_table(runs), ""]
    if any(r.get("log", {}).get("decomposition_init") for r in runs):
        out += ["### Error decomposition (held-out MSE, mean over seeds)", "",
                "'weights': only the weights quantized; 'acts': only the activations; '+phi': with Phi (init: as "
                "initialised from the SVD of W - Q(W)). Phi acts on the quantized activation, so it can only "
                "repair the weight share. 'end' is after training (Phi gone, except keep).", "",
                mechanism.decomposition_table(runs), ""]
    out += ["### Cost", "", mechanism.cost_table(runs), ""]
    return out


def mechanism_reading(by_study: dict[str, dict]) -> list[str]:
    lines = []
    for res in by_study.values():
        if res["study"] in MECHANISM_STUDIES:
            lines += mechanism.verdict_lines(res["runs"], res["budget"]["steps"])
    return lines


def _study_order(path: Path) -> tuple[int, str]:
    """Mechanism studies first, then budget, methods, ablations; parts of a study by name."""
    name = path.stem.removeprefix("quality_")
    base = name.split("-")[0]
    return (STUDIES.index(base) if base in STUDIES else len(STUDIES), name)


def write_markdown(results_dir: Path) -> Path:
    """Regenerate ``quality.md`` from the study JSONs present in ``results_dir``."""
    by_study = {}
    for p in sorted(results_dir.glob("quality_*.json"), key=_study_order):
        by_study[p.stem.removeprefix("quality_")] = json.loads(p.read_text())
    lines = ["# Quality study (generated by benchmarks/quality/report.py; do not edit by hand)", "",
             "Each study's command is below; `python -m benchmarks.quality.report` regenerates this page from "
             "the study JSONs.", ""]
    mech = [res for res in by_study.values() if res["study"] in MECHANISM_STUDIES]
    if mech:
        lines += ["## Phi (QVGen) or plain LSQ QAT?", "", GUIDANCE, "", mechanism.decision_table(mech), ""]
    for study, res in by_study.items():
        prov = res["provenance"]
        lines += [f"## {study}", "", f"Command: `{prov['command']}`  ",
                  f"{prov['device']} ({prov['cpu_count']} CPUs, {prov['torch_threads']} torch threads), torch "
                  f"{prov['torch']}, commit {prov['commit']}, {prov['utc']}, {res['total_seconds'] / 60:.1f} min  ",
                  f"Budget per trained run: {res['budget']}; seeds: {res.get('seeds_done', res['settings']['seeds'])} "
                  f"of {res['settings']['seeds']}; Phi rank: "
                  f"{res['settings']['rank']}; teacher: {res['teacher_config']}", "", "Mean +- std over seeds.", "",
                  table(aggregate(res["runs"])), "", f"![curves](quality_{study}.png)", ""]
        if res["study"] in MECHANISM_STUDIES:
            lines += mechanism_sections(study, res)
    from benchmarks.quality import width_report  # the sweep sections (width_report imports nothing from here)

    lines += width_report.sections(results_dir)
    lines += ["## Reading (generated)", ""] + [f"- {line}" for line in mechanism_reading(by_study) + reading(by_study)]
    lines += ["", CAVEATS]
    path = results_dir / "quality.md"
    path.write_text("\n".join(lines))
    return path


__all__ = ["aggregate", "main", "mean_std", "plot_study", "reading", "run_line", "table", "write_markdown"]


def main() -> None:
    """Regenerate ``benchmarks/results/quality.md`` from the study JSONs."""
    path = write_markdown(Path(__file__).resolve().parent.parent / "results")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

