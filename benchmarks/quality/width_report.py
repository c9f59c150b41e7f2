"""Statistics, figure and ``quality.md`` section of the width sweep, every number read from its JSON lines.

Per (bits, width) point: each method's held-out denoising MSE relative to LSQ QAT on the same seed (mean, 95%
Student-t interval, sign count), QVGen's latent-weight gradient norm relative to LSQ's over the steps where Phi is
present, and the error decomposition (weights only / activations only / both quantized).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Sequence

from benchmarks.quality.paired import Paired, paired, paired_ratio

REF = "lsq"
COMPARED = ("qvgen", "qalora", "svdquant", "ptq")
NAMES = {"ptq": "PTQ (RTN)", "svdquant": "SVDQuant-style", "lsq": "LSQ QAT", "qalora": "QA-LoRA (EfficientDM)",
         "qvgen": "QVGen"}


def _cell(p: Paired | None) -> dict | None:
    return None if p is None else {"mean": p.mean, "half_width": p.half_width, "lower": p.lower, "n": p.n,
                                   "verdict": p.verdict, "cell": p.cell()}


def _phi_grad_ratio(a: dict, b: dict) -> float | None:
    """Mean latent-weight gradient norm of run a over the steps where its Phi is present, over b's same steps."""
    la, lb = a.get("log") or {}, b.get("log") or {}
    steps = [i for i, r in enumerate(la.get("rank") or []) if r > 0]
    ga, gb = la.get("grad_norm_weights") or [], lb.get("grad_norm_weights") or []
    steps = [i for i in steps if i < len(ga) and i < len(gb)]
    if not steps:
        return None
    return statistics.fmean(ga[i] for i in steps) / statistics.fmean(gb[i] for i in steps)


def _decomposition(runs: Sequence[dict], method: str, when: str) -> dict[str, float]:
    ds = [r["log"][f"decomposition_{when}"] for r in runs if r["label"] == method
          and r.get("log", {}).get(f"decomposition_{when}")]
    if not ds:
        return {}
    return {k: statistics.fmean(d[k] for d in ds) for k in ds[0] if all(k in d for d in ds)}


def point(lines: Sequence[dict]) -> dict:
    """Statistics of one (bits, width) point from its lines (one per seed)."""
    runs = [r for ln in lines for r in ln["runs"]]
    methods = list(dict.fromkeys(r["label"] for r in runs))
    absolute = {}
    for m in methods:
        rs = [r for r in runs if r["label"] == m]
        mse = [r["denoise_mse"] for r in rs]
        absolute[m] = {"mse_mean": statistics.fmean(mse), "mse_std": statistics.stdev(mse) if len(mse) > 1 else 0.0,
                       "psnr_mean": statistics.fmean(r["psnr"] for r in rs), "bytes": rs[0]["bytes"],
                       "train_seconds": statistics.fmean((r.get("log") or {}).get("train_seconds", 0.0) for r in rs)}
    return {"bits": lines[0]["bits"].upper(), "width": lines[0]["width"], "rank": lines[0]["rank"],
            "seeds": sorted(ln["seed"] for ln in lines), "absolute": absolute,
            "delta_vs_lsq": {m: _cell(paired(runs, m, REF)) for m in COMPARED if m in methods and REF in methods},
            "grad_ratio_phi": _cell(paired_ratio(runs, "qvgen", REF, _phi_grad_ratio)),
            "decomposition": {"qvgen init": _decomposition(runs, "qvgen", "init"),
                              "lsq end": _decomposition(runs, REF, "end"),
                              "qvgen end": _decomposition(runs, "qvgen", "end")}}


def summarize(lines: Sequence[dict], command: str = "") -> dict:
    """Every point of the sweep (bits, then width), the provenance and the wall time of the lines present."""
    keys = sorted({(ln["bits"], ln["width"]) for ln in lines}, key=lambda k: (k[0], k[1]))
    teachers = {ln["width"]: ln["teacher"] for ln in lines}
    loads = [ln["load_average"][0] for ln in lines if ln.get("load_average")]
    first = lines[0] if lines else {}
    env = " ".join(f"{k}={v}" for k, v in first.get("env", {}).items())
    command = command or first.get("provenance", {}).get("command", "")
    return {"command": f"{env} {command}" if env and not command.startswith(env) else command,
            "provenance": first.get("provenance", {}), "preset": first.get("preset", {}),
            "jobs": len(lines), "job_seconds": sum(ln["seconds"] for ln in lines),
            "teacher_seconds": {w: t.get("seconds") for w, t in sorted(teachers.items())},
            "teachers": teachers, "load_average_1min": [round(min(loads), 1), round(max(loads), 1)] if loads else None,
            "points": [point([ln for ln in lines if (ln["bits"], ln["width"]) == k]) for k in keys]}


def plot(path: Path, summary: dict) -> None:
    """Per bit setting: Δ vs LSQ against width with 95% intervals (QVGen, QA-LoRA), QVGen's gradient-norm ratio
    while Phi is present, and every method's absolute error."""
    from matplotlib.figure import Figure

    bits = list(dict.fromkeys(pt["bits"] for pt in summary["points"]))
    fig = Figure(figsize=(15, 3.8 * len(bits) + 0.6), dpi=110)
    for row, b in enumerate(bits):
        pts = [pt for pt in summary["points"] if pt["bits"] == b]
        widths = [pt["width"] for pt in pts]
        ax = fig.add_subplot(len(bits), 3, 3 * row + 1)
        for k, m in enumerate(("qvgen", "qalora")):
            pts_m = [(pt["width"] * (1 + 0.04 * k), c["mean"], min(c["half_width"], 1e3))  # offset: no overlap
                     for pt in pts if (c := pt["delta_vs_lsq"].get(m))]
            if pts_m:
                xs, ys, es = zip(*pts_m)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, label=NAMES[m])
        for pt in pts:
            ax.annotate(f"n={len(pt['seeds'])}", (pt["width"], 0), textcoords="offset points", xytext=(4, -12),
                        fontsize=7)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{b}: held-out error vs LSQ QAT, % (mean, 95% CI; below 0 = better)", fontsize=9)
        ax2 = fig.add_subplot(len(bits), 3, 3 * row + 2)
        g = [(pt["width"], 1 + c["mean"] / 100, c["half_width"] / 100) for pt in pts if (c := pt["grad_ratio_phi"])]
        if g:
            xs, ys, es = zip(*g)
            ax2.errorbar(xs, ys, yerr=es, marker="o", capsize=4, color="C2")
        ax2.axhline(1, color="k", lw=0.8)
        ax2.set_title(f"{b}: QVGen / LSQ latent-weight grad norm while Phi is present", fontsize=9)
        ax3 = fig.add_subplot(len(bits), 3, 3 * row + 3)
        for m in ("ptq", "svdquant", "lsq", "qalora", "qvgen"):
            ys = [pt["absolute"][m]["mse_mean"] for pt in pts if m in pt["absolute"]]
            if len(ys) == len(widths):
                ax3.plot(widths, ys, marker="o", label=NAMES[m])
        ax3.set_yscale("log")
        ax3.set_title(f"{b}: held-out MSE vs the FP teacher of that width (mean over seeds)", fontsize=9)
        for a in (ax, ax2, ax3):
            a.set_xscale("log", base=2)
            a.set_xticks(widths, [str(w) for w in widths])
            a.set_xlabel("model width (teacher of that width)", fontsize=8)
        ax.legend(fontsize=7)
        ax3.legend(fontsize=7)
    prov = summary["provenance"]
    fig.suptitle(f"{summary['command']}  |  {prov.get('device_name', '')}, {prov.get('cpu_count')} CPUs, "
                 f"{prov.get('torch_threads')} thread(s)  |  {summary['jobs']} (bits, width, seed) jobs", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def advice(summary: dict) -> list[str]:
    """Plain-word reading generated from the intervals: the trend of QVGen vs LSQ with width, and what to pick."""
    out = []
    for b in dict.fromkeys(pt["bits"] for pt in summary["points"]):
        pts = [pt for pt in summary["points"] if pt["bits"] == b and pt["delta_vs_lsq"].get("qvgen")]
        if not pts:
            continue
        cells = [(pt["width"], pt["delta_vs_lsq"]["qvgen"]) for pt in pts]
        trend = ", ".join(f"width {w}: {c['cell']}" for w, c in cells)
        out.append(f"{b}, QVGen vs LSQ QAT (same seeds): {trend}.")
        better = [w for w, c in cells if c["verdict"] == "lower"]
        worse = [w for w, c in cells if c["verdict"] == "higher"]
        if len(cells) > 1:
            d = cells[-1][1]["mean"] - cells[0][1]["mean"]
            out.append(f"{b}: from width {cells[0][0]} to {cells[-1][0]} the mean gap moves by {d:+.1f} points "
                       f"({'towards QVGen' if d < 0 else 'away from QVGen'}); "
                       + ("the intervals overlap, so the seeds at hand do not establish a trend."
                          if _overlap(cells[0][1], cells[-1][1]) else "the end intervals do not overlap."))
        if better:
            out.append(f"{b}: choose QVGen at width(s) {better} (its interval lies below LSQ's error).")
        if worse:
            out.append(f"{b}: choose plain LSQ QAT at width(s) {worse} (QVGen's interval lies above).")
        rest = [w for w, c in cells if c["verdict"] == "not resolved"]
        if rest:
            out.append(f"{b}: at width(s) {rest} the difference is not resolved: LSQ QAT deploys the same model "
                       f"without Phi's extra parameters and schedule, so it is the simpler choice; Phi is a bet these "
                       f"seeds neither confirm nor rule out.")
        qa = [(pt["width"], pt["delta_vs_lsq"].get("qalora")) for pt in pts if pt["delta_vs_lsq"].get("qalora")]
        if qa:
            out.append(f"{b}, QA-LoRA vs LSQ QAT: " + ", ".join(f"width {w}: {c['cell']}" for w, c in qa) + ".")
        out += _best_and_reach(b, pts)
    return out


def _best_and_reach(bits: str, pts: Sequence[dict]) -> list[str]:
    """What to pick per width (at LSQ's deployed bytes, and overall with its bytes) and how much of the error
    Phi can reach."""
    picks, best = [], []
    for pt in pts:
        a, d = pt["absolute"], pt["delta_vs_lsq"]
        ratio = {m: a[m]["bytes"] / a[REF]["bytes"] for m in a} if REF in a else {m: 1.0 for m in a}
        same = [m for m in a if abs(ratio[m] - 1) <= 0.005
                and (m == REF or (d.get(m) or {}).get("verdict") == "lower")]
        pick = min(same, key=lambda k: a[k]["mse_mean"]) if same else REF
        picks.append(f"width {pt['width']}: {NAMES.get(pick, pick)}")
        m = min(a, key=lambda k: a[k]["mse_mean"])
        best.append(f"width {pt['width']}: {NAMES.get(m, m)} ({a[m]['mse_mean']:.4f}"
                    + (f", {ratio[m]:.2f}x LSQ's deployed bytes)" if abs(ratio[m] - 1) > 0.005 else ")"))
    ptq = [f"width {pt['width']}: {pt['delta_vs_lsq']['ptq']['cell']}" for pt in pts if pt["delta_vs_lsq"].get("ptq")]
    out = [f"{bits}, what to pick at LSQ's deployed bytes (LSQ unless a method's interval lies below it): "
           + "; ".join(picks) + ".",
           f"{bits}: lowest mean error of all: " + "; ".join(best) + "."]
    if ptq:
        out.append(f"{bits}: PTQ vs LSQ QAT (what the QAT steps buy): " + "; ".join(ptq) + ".")
    reach = []
    for pt in pts:
        d = pt["decomposition"]["qvgen init"]
        if d.get("both") and d.get("weights") and "weights+phi" in d:
            reach.append(f"width {pt['width']}: activations alone {d['acts'] / d['both']:.2f} of the error, Phi as "
                         f"initialised removes {100 * (1 - d['weights+phi'] / d['weights']):.0f}% of the "
                         f"weights-only error")
    if reach:
        out.append(f"{bits}, what Phi can reach (before training): " + "; ".join(reach) + ".")
    return out


def limits(summary: dict) -> str:
    """Where the evidence stops (the scale is read from the summary)."""
    pre, widest = summary["preset"], max((pt["width"] for pt in summary["points"]), default=0)
    return (f"Where this evidence stops: the widest point here is {widest} against the paper's 1536-5120 wide, "
            f"30-40 layer video DiTs; the teachers are {pre.get('layers')}-layer sprite-clip models trained for "
            f"{pre.get('teacher_steps')} steps; every QAT run is {pre.get('steps')} steps, not thousands; seeds are "
            f"few, so only large gaps resolve ('not resolved' is not 'equal'). A trend read off a few widths is a "
            f"direction to test at the next scale, not a law.")


def _overlap(a: dict, b: dict) -> bool:
    return not (a["mean"] + a["half_width"] < b["mean"] - b["half_width"]
                or b["mean"] + b["half_width"] < a["mean"] - a["half_width"])


def _fmt_decomp(d: dict) -> str:
    return " / ".join(f"{d[k]:.4f}" if k in d else "-" for k in ("both", "weights", "acts", "weights+phi"))


def section(summary: dict, name: str) -> list[str]:
    """The sweep's part of quality.md."""
    prov, pre = summary["provenance"], summary["preset"]
    tsec = [s for s in summary["teacher_seconds"].values() if s]
    wall = (summary["job_seconds"] + sum(tsec)) / 60
    lines = [f"## Width sweep ({name})", "", f"Command: `{summary['command']}`  ",
             f"{prov.get('device_name', '')} ({prov.get('cpu_count')} CPUs, {prov.get('torch_threads')} torch "
             f"thread), torch {prov.get('torch')}, commit {prov.get('commit')}, started {prov.get('utc')}; "
             f"{summary['jobs']} (bits, width, seed) jobs in {summary['job_seconds'] / 60:.1f} min"
             + (f" + teachers {sum(tsec) / 60:.1f} min" if tsec else " (teachers cached)")
             + f" = {wall:.1f} min; 1-minute load average during the jobs "
             f"{summary['load_average_1min']}  ",
             f"Settings: {pre}; Phi rank = power of two nearest 3% of the width; QVGen: paper schedule, decay_end "
             f"0.5; QA-LoRA rank 64 (capped at the layer's size), alpha 64; SVDQuant-style: FP branch of Phi's "
             f"rank kept at inference (the bytes of keep-Phi); its branch reads the unquantized activation, so "
             f"unlike Phi it also repairs part of the activation error, at the bytes shown below.", "",
             f"![width sweep]({name}.png)", "",
             "### Δ vs LSQ QAT per point (held-out denoising MSE, same seeds)", "",
             "| bits | width | Phi rank | seeds | " + " | ".join(NAMES[m] for m in COMPARED)
             + " | QVGen/LSQ grad norm while Phi present |", "|---" * (5 + len(COMPARED)) + "|"]
    for pt in summary["points"]:
        d, g = pt["delta_vs_lsq"], pt["grad_ratio_phi"]
        cells = [f"{d[m]['cell']} {d[m]['verdict']}" if d.get(m) else "-" for m in COMPARED]
        gcell = (f"{1 + g['mean'] / 100:.2f} ± {g['half_width'] / 100:.2f} ({g['lower']}/{g['n']} below 1)"
                 if g else "-")
        lines.append(f"| {pt['bits']} | {pt['width']} | {pt['rank']} | {len(pt['seeds'])} | " + " | ".join(cells)
                     + f" | {gcell} |")
    lines += ["", "### Absolute error and cost per point (mean over seeds)", "",
              "| bits | width | method | denoise MSE (± std) | PSNR dB | deployed KiB | train s/run |",
              "|---" * 7 + "|"]
    for pt in summary["points"]:
        for m, a in pt["absolute"].items():
            lines.append(f"| {pt['bits']} | {pt['width']} | {NAMES.get(m, m)} | {a['mse_mean']:.4f} ± "
                         f"{a['mse_std']:.4f} | {a['psnr_mean']:.2f} | {a['bytes'] / 1024:.1f} | "
                         f"{a['train_seconds']:.0f} |")
    lines += ["", "### Error decomposition (held-out MSE: both / weights only / activations only / weights with "
              "Phi as initialised)", "",
              "Phi acts on the quantized activation, so it can only repair the weight share; 'end' is after "
              "training (Phi gone). After training, 'activations only' runs the trained latent weights "
              "unquantized; they were fitted to their quantized form, so this can exceed 'both'.", "",
              "| bits | width | QVGen init | LSQ end | QVGen end | acts share at init |",
              "|---|---|---|---|---|---|"]
    for pt in summary["points"]:
        dc = pt["decomposition"]
        init = dc["qvgen init"]
        share = f"{init['acts'] / init['both']:.2f}" if init.get("both") else "-"
        lines.append(f"| {pt['bits']} | {pt['width']} | {_fmt_decomp(init)} | {_fmt_decomp(dc['lsq end'])} | "
                     f"{_fmt_decomp(dc['qvgen end'])} | {share} |")
    lines += ["", "### Reading (generated from the intervals above)", ""] + [f"- {s}" for s in advice(summary)]
    return lines + ["", limits(summary), ""]


def write(results: Path, name: str, lines: Sequence[dict], command: str = "") -> list[Path]:
    """``<name>.json`` (statistics) and ``<name>.png`` from the lines (``report.write_markdown`` then puts them
    into quality.md)."""
    from benchmarks import _harness

    summary = summarize(lines, command)
    js = _harness.write_json(results / f"{name}.json", summary)
    png = results / f"{name}.png"
    plot(png, summary)
    return [js, png]


def sections(results: Path) -> list[str]:
    """The quality.md sections of every width sweep summary in ``results``."""
    out = []
    for p in sorted(results.glob("width_sweep*.json")):
        out += section(json.loads(p.read_text()), p.stem)
    return out


__all__ = ["advice", "plot", "point", "section", "sections", "summarize", "write"]
