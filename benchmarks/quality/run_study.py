"""Small-scale quality study on the demo's tiny Wan teacher (moving-sprite clips), end to end:

    python -m benchmarks.quality.run_study --study mechanism  # 60 steps, W3A3/W4A4/W3A16: PTQ, SVDQuant-style,
                                                              # LSQ, QVGen (paper schedule and decay_end 0.5), keep-Phi
    python -m benchmarks.quality.run_study --study budget     # 300 steps, W3A3: LSQ vs QVGen (both schedules)
    python -m benchmarks.quality.run_study --study methods    # PTQ, SVDQuant-style, LSQ, QA-LoRA, QVGen x W4A4/W3A3
    python -m benchmarks.quality.run_study --study ablations  # Phi rank, cosine vs linear gamma, decay vs drop/keep

Each configuration runs for every seed (training data, LoRA init, held-out noise and sampling noise all follow
the seed; the teacher is the demo's shipped one), so configurations are compared per seed (paired). Every trained
run also logs the held-out error with and without Phi every 10% of training, the latent weights' gradient norm
per step and the error decomposition (weights only / activations only / both) before and after training.
The Phi rank defaults to the power of two nearest 2% of the model width (the paper's rank 32 on 1536-5120), at
least 2. Results: ``benchmarks/results/quality_<study>.json`` and ``.png``, and
``benchmarks/results/quality.md`` regenerated from every study JSON present.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import _harness
from benchmarks.quality import report
from benchmarks.quality.methods import Budget, MethodSpec, build
from qvgen.quant.rank_decay import DEFAULT_DECAY_END, PAPER_DECAY_END
from benchmarks.quality.video_metrics import motion_ratio, temporal_consistency, trajectory_error

RESULTS = Path(__file__).resolve().parent.parent / "results"


STUDIES = ("mechanism", "budget", "methods", "ablations")
DEFAULT_STEPS = {"mechanism": 60, "budget": 300}


def rank_for_width(width: int, fraction: float = 0.02) -> int:
    """The power of two nearest ``fraction * width`` (log scale), at least 2 (so there is a decay)."""
    target = max(fraction * width, 2.0)
    return 1 << round(math.log2(target))


def study_specs(study: str, rank: int, bits: tuple[str, ...] = ("w3a3", "w4a4", "w3a16")) -> list[MethodSpec]:
    """The configurations of a study (see the module docstring)."""
    ends = (PAPER_DECAY_END, DEFAULT_DECAY_END) if DEFAULT_DECAY_END != PAPER_DECAY_END else (PAPER_DECAY_END, 0.5)
    if study == "mechanism":
        return [MethodSpec("fp")] + [s for b in bits for s in (
            MethodSpec("ptq", b), MethodSpec("svdquant", b, rank), MethodSpec("lsq", b),
            *(MethodSpec("qvgen", b, rank, decay_end=e) for e in ends), MethodSpec("keep", b, rank))]
    if study == "budget":
        return [MethodSpec("lsq", "w3a3")] + [MethodSpec("qvgen", "w3a3", rank, decay_end=e) for e in ends]
    if study == "methods":
        return [MethodSpec("fp")] + [MethodSpec(m, bits, rank) for bits in ("w4a4", "w3a3")
                for m in ("ptq", "svdquant", "lsq", "qalora", "qvgen")]
    if study == "ablations":
        return ([MethodSpec("fp"), MethodSpec("lsq", "w4a4")] + [MethodSpec("qvgen", "w4a4", r) for r in (8, 16, 32)]
                + [MethodSpec("qvgen", "w4a4", rank, "linear"), MethodSpec("drop", "w4a4", rank),
                   MethodSpec("keep", "w4a4", rank)])
    raise ValueError(f"run_study: argument 'study' expected one of {STUDIES}, got {study!r}")


def evaluate(spec: MethodSpec, model: torch.nn.Module, probe, demo_cfg) -> dict:
    """The demo's metrics (denoising MSE, PSNR, SSIM, bytes) plus motion and temporal consistency."""
    from qvgen.apps.demo.pipeline import evaluate as demo_evaluate

    row, samples = demo_evaluate(spec.label, model, probe, demo_cfg)
    s, ref = samples.clamp(-1, 1), probe.fp_samples.clamp(-1, 1)
    row.update(motion_ratio=motion_ratio(s, ref), trajectory_error=trajectory_error(s, ref),
               temporal_consistency=temporal_consistency(s))
    return row


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality.run_study", description=__doc__.split("\n")[0])
    ap.add_argument("--study", required=True, choices=STUDIES)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="default: 60 (budget study: 300)")
    ap.add_argument("--batch-size", type=int, default=Budget.batch_size)
    ap.add_argument("--rank", type=int, default=None, help="Phi rank (default: 2%% of the model width, >= 2)")
    ap.add_argument("--bits", nargs="+", default=["w3a3", "w4a4", "w3a16"], help="bit settings (mechanism)")
    ap.add_argument("--methods", nargs="+", default=None, help="keep only these methods (default: all)")
    ap.add_argument("--name", default=None, help="results name: quality_<name>.json (default: the study)")
    ap.add_argument("--teacher-layers", type=int, default=None, help="default: the shipped teacher")
    ap.add_argument("--teacher-width", type=int, default=None, help="heads x 32; default: the shipped teacher")
    ap.add_argument("--eval-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("--teacher-steps", type=int, default=None, help="default: the demo's teacher")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(RESULTS))
    return ap.parse_args(argv)


def _teacher(args, device, log):
    from qvgen.apps.demo.sprites import SpriteData
    from qvgen.apps.demo.teacher import TeacherConfig, get_teacher

    over = {k: v for k, v in (("steps", args.teacher_steps), ("num_layers", args.teacher_layers)) if v is not None}
    if args.teacher_width is not None:
        over.update(num_heads=args.teacher_width // 32, head_dim=32, ffn_dim=2 * args.teacher_width)
    tcfg = TeacherConfig(**over)
    teacher, info = get_teacher(tcfg, device, log=log)
    teacher.requires_grad_(False)
    data = SpriteData(tcfg.sprites(), batch_size=args.batch_size, device=device)
    return teacher, data, {"teacher_config": dataclasses.asdict(tcfg), "teacher_path": info["path"]}


def main(argv: list[str] | None = None) -> dict:
    from qvgen.apps.demo.pipeline import DemoConfig, make_probe
    from qvgen.distributed.devices import resolve_device

    args = _parse(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    teacher, data, tinfo = _teacher(args, device, print)
    budget = Budget(steps=args.steps or DEFAULT_STEPS.get(args.study, Budget.steps), batch_size=args.batch_size)
    width = tinfo["teacher_config"]["num_heads"] * tinfo["teacher_config"]["head_dim"]
    args.rank = args.rank or rank_for_width(width)
    specs = [s for s in study_specs(args.study, args.rank, tuple(args.bits))
             if args.methods is None or s.method in args.methods or s.method == "fp"]
    runs = []
    out, name = Path(args.out), args.name or args.study
    prov = _harness.provenance(device)

    def result(seeds_done: int) -> dict:
        return {"study": args.study, "provenance": prov, "budget": dataclasses.asdict(budget),
                "settings": dict(vars(args)), "seeds_done": seeds_done, **tinfo, "runs": runs,
                "total_seconds": time.perf_counter() - t0}

    with tempfile.TemporaryDirectory(prefix="qvgen-study-") as tmp:
        for seed in range(args.seeds):
            demo_cfg = DemoConfig(eval_size=args.eval_size, num_samples=args.samples,
                                  sample_steps=args.sample_steps, seed=seed, progress=False)
            probe = make_probe(teacher, data, demo_cfg, device)
            for spec in specs:
                start = time.perf_counter()
                model, log = build(spec, teacher, data, budget, seed, Path(tmp) / f"{spec.label}-{seed}", probe)
                row = evaluate(spec, model, probe, demo_cfg)
                runs.append({"spec": dataclasses.asdict(spec), "label": spec.label, "seed": seed, **row,
                             "log": log, "seconds": time.perf_counter() - start})
                print(report.run_line(runs[-1]), flush=True)
            # Every finished seed is written: a study stopped early keeps its complete (paired) seeds.
            _harness.write_json(out / f"quality_{name}.json", result(seed + 1))
    final = result(args.seeds)
    _harness.write_json(out / f"quality_{name}.json", final)
    report.plot_study(out / f"quality_{name}.png", final)
    md = report.write_markdown(out)
    print(f"wrote {out}/quality_{name}.json, .png and {md} ({final['total_seconds']:.0f} s)")
    return final


if __name__ == "__main__":
    main()
