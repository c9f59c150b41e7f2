"""Tables of the mechanism study, every number read from a study JSON: paired differences vs LSQ, the Phi-free
convergence curves, the weight-gradient-norm ratio per decay stage, the error decomposition and the cost."""

from __future__ import annotations

import statistics
from typing import Sequence

from benchmarks.quality.paired import Paired, paired, paired_ratio

REFERENCE = "lsq"


def _labels(runs: Sequence[dict], bits: str) -> list[str]:
    return [k for k in dict.fromkeys(r["label"] for r in runs) if k.endswith(bits.upper()) or k == bits]


def bit_settings(runs: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["spec"]["bits"].upper() for r in runs if r["spec"]["method"] != "fp"))


def _ref(runs: Sequence[dict], bits: str) -> str | None:
    return next((k for k in _labels(runs, bits) if k.startswith(REFERENCE + " ")), None)


def paired_table(runs: Sequence[dict]) -> tuple[str, dict[tuple[str, str], Paired]]:
    """Per bit setting, each method's denoise-MSE difference vs LSQ: mean, 95% t interval, sign count."""
    lines = ["| bits | method | Δ denoise MSE vs LSQ (mean ± 95% CI, seeds lower) | verdict |", "|---|---|---|---|"]
    found = {}
    for bits in bit_settings(runs):
        ref = _ref(runs, bits)
        for label in _labels(runs, bits):
            p = paired(runs, label, ref) if ref and label != ref else None
            if p:
                found[(bits, label)] = p
                lines.append(f"| {bits} | {label} | {p.cell()} | {p.verdict} |")
    return "\n".join(lines), found


def _curves(runs: Sequence[dict], label: str, key: str) -> list[list[float]]:
    return [[pt[key] for pt in r["log"]["curve"]] for r in runs if r["label"] == label and r["log"].get("curve")]


def convergence_table(runs: Sequence[dict]) -> str:
    """Phi-free held-out error (mean over seeds) at every 10% of training, per trained configuration."""
    rows, head = [], None
    for bits in bit_settings(runs):
        for label in _labels(runs, bits):
            curves = _curves(runs, label, "phi_free")
            if not curves:
                continue
            n = min(len(c) for c in curves)
            fracs = [pt["frac"] for pt in next(r for r in runs if r["label"] == label)["log"]["curve"]][:n]
            head = head or ("| method | " + " | ".join(f"{100 * f:.0f}%" for f in fracs) + " |")
            means = [statistics.fmean(c[i] for c in curves) for i in range(n)]
            rows.append(f"| {label} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    if not head:
        return "(no curves)"
    return "\n".join([head, "|---" * (head.count("|") - 1) + "|"] + rows)


def _stage_spans(ranks: Sequence[int]) -> list[tuple[int, int, int]]:
    """(rank, first step, end step) of each run of equal rank in a per-step rank log."""
    spans, start = [], 0
    for i in range(1, len(ranks) + 1):
        if i == len(ranks) or ranks[i] != ranks[start]:
            spans.append((ranks[start], start, i))
            start = i
    return spans


def grad_ratio_table(runs: Sequence[dict]) -> str:
    """Latent-weight gradient norm of each Phi configuration / LSQ's, per decay stage (same seed, same steps)."""
    lines = ["| method | " + "stage (rank, steps): ratio to LSQ, mean ± 95% CI (seeds below 1) | ", "|---|---|"]
    for bits in bit_settings(runs):
        ref = _ref(runs, bits)
        for label in _labels(runs, bits):
            if label == ref or not ref:
                continue
            sample = next(r for r in runs if r["label"] == label)
            ranks, norms = sample["log"].get("rank"), sample["log"].get("grad_norm_weights")
            if not ranks or not norms:
                continue
            cells = []
            for rank, lo, hi in _stage_spans(ranks):
                def ratio(a, b, lo=lo, hi=hi):
                    ga, gb = a["log"]["grad_norm_weights"][lo:hi], b["log"]["grad_norm_weights"][lo:hi]
                    return statistics.fmean(ga) / statistics.fmean(gb) if ga and gb else None
                p = paired_ratio(runs, label, ref, ratio)
                if p:
                    cells.append(f"r{rank} [{lo}, {hi}): {1 + p.mean / 100:.2f} ± {p.half_width / 100:.2f} "
                                 f"({p.lower}/{p.n})")
            lines.append(f"| {label} | " + "; ".join(cells) + " |")
    return "\n".join(lines)


def _mean_dict(dicts: Sequence[dict]) -> dict[str, float]:
    keys = [k for k in dicts[0] if all(k in d for d in dicts)]
    return {k: statistics.fmean(d[k] for d in dicts) for k in keys}


def decomposition_table(runs: Sequence[dict]) -> str:
    """Held-out error with only the weights, only the activations, or both quantized (mean over seeds), before
    training (with Phi as initialised from the SVD of W - Q(W), and without) and after (Phi-free)."""
    cols = ("both", "both+phi", "weights", "weights+phi", "acts")
    lines = ["| method | when | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for bits in bit_settings(runs):
        for label in _labels(runs, bits):
            rs = [r for r in runs if r["label"] == label and r["log"].get("decomposition_init")]
            for when in ("init", "end"):
                ds = [r["log"][f"decomposition_{when}"] for r in rs]
                if not ds:
                    continue
                m = _mean_dict(ds)
                lines.append(f"| {label} | {when} | " + " | ".join(f"{m[c]:.4f}" if c in m else "" for c in cols)
                             + " |")
    return "\n".join(lines)


def cost_table(runs: Sequence[dict]) -> str:
    """Training seconds per run and deployed bytes, relative to LSQ at the same bits."""
    lines = ["| method | train s/run | vs LSQ | deployed KiB | vs LSQ |", "|---|---|---|---|---|"]
    for bits in bit_settings(runs):
        ref = _ref(runs, bits)
        ref_runs = [r for r in runs if r["label"] == ref]
        for label in _labels(runs, bits):
            rs = [r for r in runs if r["label"] == label]
            secs = [r["log"]["train_seconds"] for r in rs if r.get("log", {}).get("train_seconds")]
            s = statistics.fmean(secs) if secs else None
            s_ref = statistics.fmean(r["log"]["train_seconds"] for r in ref_runs) if ref_runs else None
            kib, kib_ref = rs[0]["bytes"] / 1024, (ref_runs[0]["bytes"] / 1024 if ref_runs else None)
            lines.append(f"| {label} | {f'{s:.1f}' if s else '-'} | {f'{s / s_ref:.2f}x' if s and s_ref else '-'} | "
                         f"{kib:.1f} | {f'{kib / kib_ref:.2f}x' if kib_ref else '-'} |")
    return "\n".join(lines)


def verdict_lines(runs: Sequence[dict], steps: int) -> list[str]:
    """One generated sentence per Phi configuration: its paired difference vs LSQ and whether it is resolved."""
    _, found = paired_table(runs)
    out = []
    for (bits, label), p in found.items():
        if not label.startswith(("qvgen", "keep")):
            continue
        word = {"lower": "lower error than LSQ", "higher": "higher error than LSQ",
                "not resolved": "no resolved difference from LSQ"}[p.verdict]
        out.append(f"{steps} steps, {bits}: {label}: {word} ({p.cell()})")
    return out


def decision_table(results: Sequence[dict]) -> str:
    """Per study and bit setting: every Phi configuration against LSQ with its paired difference, verdict and
    training-time cost, best first (the answer to 'Phi or plain LSQ QAT, and with which schedule')."""
    lines = ["| QAT steps | bits | Phi configuration | Δ vs LSQ (95% CI, seeds lower) | verdict | train time vs LSQ |",
             "|---|---|---|---|---|---|"]
    for res in results:
        runs = res["runs"]
        _, found = paired_table(runs)
        for bits in bit_settings(runs):
            ref = _ref(runs, bits)
            rows = sorted(((p.mean, label, p) for (b, label), p in found.items()
                           if b == bits and label.startswith(("qvgen", "keep"))), key=lambda t: t[0])
            for _, label, p in rows:
                secs = [r["log"]["train_seconds"] for r in runs if r["label"] == label]
                ref_secs = [r["log"]["train_seconds"] for r in runs if r["label"] == ref]
                cost = statistics.fmean(secs) / statistics.fmean(ref_secs) if secs and ref_secs else None
                lines.append(f"| {res['budget']['steps']} | {bits} | {label} | {p.cell()} | {p.verdict} | "
                             + (f"{cost:.2f}x" if cost else "-") + " |")
    return "\n".join(lines)


__all__ = ["bit_settings", "convergence_table", "cost_table", "decision_table", "decomposition_table",
           "grad_ratio_table", "paired_table", "verdict_lines"]
