"""Width sweep: does QVGen's Phi pay off against plain LSQ QAT as the model grows?

    python -m benchmarks.quality.width_sweep --teachers-only   # train (once) and cache the teachers
    python -m benchmarks.quality.width_sweep                   # the CPU preset (resumes where it stopped)
    python -m benchmarks.quality.width_sweep --preset gpu      # the GPU-sized slice (one <= 8-minute command)
    python -m benchmarks.quality.width_sweep --dry-run         # print the plan, run nothing
    python -m benchmarks.quality.width_sweep --report-only     # json, png and quality.md from the lines present

Teachers of every width share depth, data and recipe (the demo teacher's architecture, heads x 32 wide, FFN twice
the width); each is trained once and cached (``$QVGEN_CACHE`` or ``~/.cache/qvgen``, keyed by its config). At every
(bits, width) point and seed, PTQ, SVDQuant-style PTQ (floating-point branch of Phi's rank, the bytes of keep-Phi),
LSQ QAT, EfficientDM-style QA-LoRA QAT and QVGen (the paper's schedule, ``decay_end`` 0.5) are built by
``benchmarks.quality.methods`` with the same data, held-out set and noise (paired). Phi's rank is the power of two
nearest 3% of the width. Every finished (bits, width, seed) is appended to ``<name>.jsonl`` at once, so an
interrupted sweep resumes; ``<name>.json`` (statistics), ``<name>.png`` and the sweep's section of
``quality.md`` are regenerated from the lines present.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import _harness
from benchmarks.quality.methods import Budget, MethodSpec, build
from benchmarks.quality.run_study import RESULTS, evaluate, rank_for_width

RANK_FRACTION = 0.03
DECAY_END = 0.5
METHODS = ("ptq", "svdquant", "lsq", "qalora", "qvgen")
ENV_RECORDED = ("OMP_NUM_THREADS", "QVGEN_BACKEND")  # part of the command that produced a line


@dataclass(frozen=True)
class Preset:
    """Sizes of one sweep. seeds: per width (a wider point may get fewer); the rest as in the quality study."""

    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    bits: tuple[str, ...] = ("w3a3", "w4a4")
    layers: int = 2
    size: int = 16
    frames: int = 8
    teacher_steps: int = 800
    steps: int = 40
    batch_size: int = 8
    eval_size: int = 16
    samples: int = 4
    sample_steps: int = 8
    methods: tuple[str, ...] = METHODS
    name: str = "width_sweep"
    note: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.seeds) != len(self.widths) or any(w % 32 or w < 32 for w in self.widths):
            raise ValueError(f"Preset: widths {self.widths} must be multiples of 32 with one seed count each "
                             f"(seeds {self.seeds})")

    def fingerprint(self) -> dict:
        """What a stored line must match to count as done (seed counts may grow between runs)."""
        d = dataclasses.asdict(self)
        for k in ("seeds", "widths", "bits", "note", "name"):
            d.pop(k)
        return json.loads(json.dumps(d))  # as stored (tuples become lists)


PRESETS = {
    # Sized for a 2-core CPU shared with other jobs, one thread (measured: see benchmarks/results/quality.md).
    "cpu": Preset(widths=(64, 128, 256), seeds=(6, 6, 4),
                  note="2 layers, 800 teacher steps, 40 QAT steps, 6 seeds at widths 64 and 128, 4 at 256"),
    # One GPU command of <= 8 minutes: a wider, deeper teacher, two seeds.
    "gpu": Preset(widths=(512,), seeds=(2,), layers=4, teacher_steps=1600, steps=60, eval_size=32, samples=8,
                  sample_steps=10, name="width_sweep_gpu", note="width 512, 4 layers, 60 QAT steps, 2 seeds"),
    # Test size: seconds.
    "tiny": Preset(widths=(32, 64), seeds=(2, 2), bits=("w3a3",), layers=1, size=8, frames=2, teacher_steps=2,
                   steps=2, batch_size=2, eval_size=2, samples=1, sample_steps=2, name="width_sweep_tiny"),
}


def rank_of(width: int) -> int:
    return rank_for_width(width, RANK_FRACTION)


def teacher_config(p: Preset, width: int):
    from qvgen.apps.demo.teacher import TeacherConfig

    return TeacherConfig(size=p.size, frames=p.frames, num_layers=p.layers, num_heads=width // 32, head_dim=32,
                         ffn_dim=2 * width, steps=p.teacher_steps)


def specs(p: Preset, bits: str, width: int) -> list[MethodSpec]:
    r = rank_of(width)
    return [MethodSpec(m, bits, r, decay_end=DECAY_END if m == "qvgen" else 1.0) for m in p.methods]


def jobs(p: Preset) -> list[tuple[str, int, int]]:
    """(bits, width, seed) in run order: bits first (the first bit setting completes before the next), then
    seed-major over widths, so a sweep stopped early keeps every width at a similar seed count."""
    return [(b, w, s) for b in p.bits for s in range(max(p.seeds))
            for w, n in zip(p.widths, p.seeds) if s < n]


def read_lines(path: Path) -> list[dict]:
    """The finished jobs in ``path`` (a torn last line from an interrupted write is ignored)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def pending(p: Preset, lines: list[dict]) -> list[tuple[str, int, int]]:
    """The jobs of ``p`` not yet in ``lines``; lines from another configuration are an error (another --name)."""
    fp = p.fingerprint()
    for ln in lines:
        if ln["preset"] != fp:
            raise ValueError(f"width_sweep: results file holds lines of another configuration ({ln['preset']}); "
                             f"use another --name or remove it")
    done = {(ln["bits"], ln["width"], ln["seed"]) for ln in lines}
    return [j for j in jobs(p) if j not in done]


def append_line(path: Path, line: dict) -> None:
    """Append one finished job and flush it to disk (the resume point)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(line, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def plan_text(p: Preset, lines: list[dict]) -> str:
    """What a run would do: teachers (cached or to train), jobs done and to run, training steps."""
    from qvgen.apps.demo.teacher import cache_dir_for

    todo = pending(p, lines)
    trained = sum(m in ("lsq", "qalora", "qvgen") for m in p.methods)
    out = [f"preset: {p.note or p.name}",
           f"Phi rank per width: " + ", ".join(f"{w}: {rank_of(w)}" for w in p.widths)]
    for w in p.widths:
        cached = (cache_dir_for(teacher_config(p, w)) / "teacher.json").is_file()
        out.append(f"teacher width {w}: {p.layers} layers, {p.teacher_steps} steps, "
                   f"{'cached' if cached else 'to train'}")
    out.append(f"jobs: {len(jobs(p)) - len(todo)} done, {len(todo)} to run "
               f"({trained} trained methods x {p.steps} QAT steps each)")
    out += [f"  {b} width {w} seed {s}" for b, w, s in todo]
    return "\n".join(out)


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality.width_sweep", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--bits", nargs="+", default=None, help="override the preset's bit settings")
    ap.add_argument("--teachers-only", action="store_true", help="train and cache the teachers, then stop")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    ap.add_argument("--report-only", action="store_true",
                    help="regenerate <name>.json, .png and quality.md from the lines present, run nothing")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="start no job that would end past this (the longest job so far as the estimate); the "
                         "finished jobs are kept and a later run resumes")
    ap.add_argument("--out", default=str(RESULTS))
    return ap.parse_args(argv)


def run(p: Preset, out: Path, device: torch.device, log=print, max_seconds: float | None = None) -> list[dict]:
    """Run every pending job of ``p``, appending each to ``<out>/<name>.jsonl``; returns all lines. With
    ``max_seconds``, stop before a job that would likely end past it (teacher training included)."""
    t_start = time.perf_counter()
    from qvgen.apps.demo.pipeline import DemoConfig, make_probe
    from qvgen.apps.demo.sprites import SpriteData
    from qvgen.apps.demo.teacher import get_teacher

    path = out / f"{p.name}.jsonl"
    todo = pending(p, read_lines(path))
    teachers = {}
    for w in dict.fromkeys(w for _, w, _ in todo):
        tcfg = teacher_config(p, w)
        model, info = get_teacher(tcfg, device, log=log)
        teachers[w] = (model.requires_grad_(False), tcfg, {"key": tcfg.key(), "path": info["path"],
                                                          "seconds": info.get("seconds")})
    prov = _harness.provenance(device)
    longest = 0.0
    for bits, w, seed in todo:
        start = time.perf_counter()
        if max_seconds is not None and start - t_start + longest > max_seconds:
            log(f"[sweep] stopping before {bits} width {w} seed {seed}: the time limit would be passed")
            break
        teacher, tcfg, tinfo = teachers[w]
        data = SpriteData(tcfg.sprites(), batch_size=p.batch_size, device=device)
        demo_cfg = DemoConfig(eval_size=p.eval_size, num_samples=p.samples, sample_steps=p.sample_steps, seed=seed,
                              progress=False)
        probe = make_probe(teacher, data, demo_cfg, device)
        budget = Budget(steps=p.steps, batch_size=p.batch_size)
        runs = []
        with tempfile.TemporaryDirectory(prefix="qvgen-sweep-") as tmp:
            for spec in specs(p, bits, w):
                t = time.perf_counter()
                model, mlog = build(spec, teacher, data, budget, seed, Path(tmp) / spec.label, probe)
                row = evaluate(spec, model, probe, demo_cfg)
                runs.append({"spec": dataclasses.asdict(spec), "label": spec.method, "seed": seed, **row,
                             "log": mlog, "seconds": time.perf_counter() - t})
        line = {"preset": p.fingerprint(), "bits": bits, "width": w, "seed": seed, "rank": rank_of(w),
                "teacher": tinfo, "runs": runs, "seconds": time.perf_counter() - start,
                "load_average": list(os.getloadavg()), "provenance": prov,
                "env": {k: os.environ[k] for k in ENV_RECORDED if k in os.environ}}
        append_line(path, line)
        longest = max(longest, line["seconds"])
        mse = "  ".join(f"{r['label']} {r['denoise_mse']:.4f}" for r in runs)
        log(f"[sweep] {bits} width {w} seed {seed}: {mse}  ({line['seconds']:.0f} s)")
    return read_lines(path)


def main(argv: list[str] | None = None) -> None:
    from qvgen.distributed.devices import resolve_device

    args = _parse(argv)
    p = PRESETS[args.preset]
    if args.bits:
        p = dataclasses.replace(p, bits=tuple(args.bits))
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    if args.dry_run:
        print(plan_text(p, read_lines(out / f"{p.name}.jsonl")))
        return
    device = resolve_device(args.device)
    if args.teachers_only:
        from qvgen.apps.demo.teacher import get_teacher

        for w in p.widths:
            _, info = get_teacher(teacher_config(p, w), device, log=print)
            print(f"teacher width {w}: {info['path']} ({'cached' if info['cached'] else 'trained'})")
        return
    if args.report_only:
        lines = read_lines(out / f"{p.name}.jsonl")
        pending(p, lines)  # refuses lines of another configuration
    else:
        lines = run(p, out, device, max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    if not lines:
        print(f"no finished jobs in {out / (p.name + '.jsonl')}")
        return
    from benchmarks.quality import report, width_report

    paths = width_report.write(out, p.name, lines, command=lines[0]["provenance"]["command"])
    paths.append(report.write_markdown(out))
    print("wrote " + ", ".join(str(x) for x in paths))


if __name__ == "__main__":
    main()
