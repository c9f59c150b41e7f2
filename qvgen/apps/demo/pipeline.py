"""The ``qvgen demo`` job: FP teacher -> W4A4 PTQ, LSQ QAT and QVGen W4A4 QAT -> deploy -> evaluate -> report.

Steps, all offline and deterministic from ``--seed``:
  (a) the tiny Wan-architecture FP teacher, trained on moving-sprite clips or loaded from its cache;
  (b) the round-to-nearest PTQ baseline: a copy quantized with ``rank=0`` (weight calibration only), deployed;
  (c) LSQ QAT: the same distillation (same seed, data and steps) without Phi, so the report can say whether Phi
      paid off (``qat_baseline``, on by default);
  (d) QVGen: a copy quantized with Phi (rank ``rank``), distilled from the teacher by ``qvgen.train`` with rank
      decay to 0, deployed with ``to_deploy`` (no Phi left), saved with ``save_quantized`` and reloaded with
      ``load_quantized`` (the reload must reproduce the outputs exactly);
  (e) evaluation against the teacher: denoising MSE on held-out noisy clips, PSNR/SSIM of sampled clips from the
      same noise and captions, model bytes, sampling time;
  (f) ``report.md`` + ``samples.png`` + ``curves.png`` + ``results.json`` in the output folder, and a summary.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from qvgen.apps.demo import report
from qvgen.progress import Ticker, auto_threads, interactive
from qvgen.apps.demo.metrics import EvalSet, denoising_error, make_eval_set, model_bytes, predict, psnr, ssim
from qvgen.apps.demo.sampling import make_noise, sample_model
from qvgen.apps.demo.speed import forward_speed, speed_line
from qvgen.apps.demo.sprites import NUM_CLASSES, SpriteData, class_name
from qvgen.apps.demo.teacher import TeacherConfig, get_teacher
from qvgen.distributed.devices import resolve_device
from qvgen_kernels.errors import fail

BITS = ("w4a4", "w3a3")


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo does; :meth:`fast` gives the smoke-test sizes.

    steps: QVGen distillation steps; rank: initial Phi rank (power of two); lr: student learning rate
    (weights, quantizer scales, Phi), clip_lr: activation-clip logits; teacher_steps: FP teacher training steps;
    teacher_batch / teacher_layers: the teacher's batch size and depth;
    sample_steps / shift: the Euler sampler; num_samples: sampled clips compared; eval_size: held-out noisy clips.
    qat_baseline: also distil a copy without Phi (plain LSQ QAT, same seed and steps): the report's verdict then
    says whether Phi paid off. threads: torch threads (0: the cores the load leaves free, see ``auto_threads``).
    """

    out: str = "runs/demo"
    bits: str = "w4a4"
    steps: int = 600
    rank: int = 16
    batch_size: int = 8
    lr: float = 5e-4
    clip_lr: float = 1e-2
    teacher_steps: int = TeacherConfig.steps  # the shipped teacher's recipe: loaded, not trained
    teacher_batch: int = TeacherConfig.batch_size
    teacher_layers: int = TeacherConfig.num_layers
    sample_steps: int = 20
    shift: float = 1.0
    num_samples: int = 8
    eval_size: int = 64
    seed: int = 0
    device: str = "auto"
    cache_dir: str | None = None
    retrain_teacher: bool = False
    qat_baseline: bool = True
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            fail("DemoConfig", "bits", f"one of {BITS}", repr(self.bits))
        for name in ("steps", "batch_size", "teacher_steps", "teacher_batch", "teacher_layers", "sample_steps",
                     "num_samples", "eval_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                fail("DemoConfig", name, "a positive int", repr(v))
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            fail("DemoConfig", "threads", "a non-negative int (0: automatic)", repr(self.threads))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1 or self.rank & (
                self.rank - 1):
            fail("DemoConfig", "rank", "a positive power of two", repr(self.rank))

    @classmethod
    def fast(cls, **overrides) -> "DemoConfig":
        """Smoke-test sizes (well under a minute on a 2-core CPU); numbers are not meaningful at this size."""
        base = dict(steps=4, rank=2, batch_size=2, teacher_steps=6, teacher_batch=2, teacher_layers=1,
                    sample_steps=3, num_samples=2, eval_size=4)
        return cls(**{**base, **overrides})

    def teacher(self) -> TeacherConfig:
        return TeacherConfig(steps=self.teacher_steps, batch_size=self.teacher_batch, num_layers=self.teacher_layers,
                             seed=self.seed)


def _phi_ranks(model: torch.nn.Module) -> list[int]:
    from qvgen import iter_qlinears

    return [layer.phi_rank for _, layer in iter_qlinears(model)]


def quantize_copy(teacher: torch.nn.Module, bits: str, rank: int) -> torch.nn.Module:
    """A deep copy of the teacher with every nn.Linear swapped for a calibrated QLinear (Phi of ``rank``)."""
    from qvgen import QuantConfig, quantize_model

    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    return quantize_model(student, QuantConfig.preset(bits, rank=rank))


def deploy(model: torch.nn.Module) -> torch.nn.Module:
    """``to_deploy`` after checking that no layer still carries Phi (the deployed model has none)."""
    from qvgen import to_deploy

    left = [r for r in _phi_ranks(model) if r > 0]
    if left:
        fail("deploy", "model", "every QLinear with Phi removed (rank 0)", f"{len(left)} layers with Phi")
    to_deploy(model)
    return model.eval()


def distill_qvgen(student: torch.nn.Module, teacher: torch.nn.Module, data, cfg: DemoConfig,
                  out_dir: Path) -> Path:
    """QAT with ``qvgen.train``: distil from the frozen teacher, Phi (if any) decayed to rank 0; returns
    metrics.jsonl. ``data``: the sprite data or a progress-reporting wrapper of it."""
    from qvgen.models.adapters import adapter_for
    from qvgen.train import Distiller, TrainConfig

    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, clip_lr=cfg.clip_lr,
                       seed=cfg.seed, out_dir=str(out_dir), log_every=1, ckpt_every=0,
                       # off a terminal the demo's Ticker reports over all its runs; the trainer's lines would repeat it
                       progress=cfg.progress and interactive())
    Distiller(student, teacher, adapter_for(teacher), data, tcfg, rank_decay=True).run()
    return out_dir / "metrics.jsonl"


@dataclass
class Probe:
    """Fixed evaluation inputs shared by every model: held-out noisy clips and the sampling noise/captions."""

    ev: EvalSet
    teacher_v: torch.Tensor
    noise: torch.Tensor
    cond: dict[str, torch.Tensor]
    captions: list[str]
    fp_samples: torch.Tensor


def make_probe(teacher: torch.nn.Module, data: SpriteData, cfg: DemoConfig, device: torch.device) -> Probe:
    """Build the probe from seeds disjoint from training's (training draws from seed * 1_000_003 + step)."""
    ev = make_eval_set(data, cfg.eval_size, seed=cfg.seed + 7_000_001)
    labels = torch.arange(cfg.num_samples) * 7 % NUM_CLASSES  # spread over shapes, colours and directions
    s = data.cfg
    noise = make_noise((cfg.num_samples, 3, s.frames, s.size, s.size), seed=cfg.seed + 9_000_001, device=device)
    cond = {"encoder_hidden_states": data.embed(labels)}
    fp = sample_model(teacher, cond, noise, cfg.sample_steps, cfg.shift)
    return Probe(ev, predict(teacher, ev), noise, cond, [class_name(int(c)) for c in labels], fp)


def evaluate(name: str, model: torch.nn.Module, probe: Probe, cfg: DemoConfig) -> tuple[dict, torch.Tensor]:
    """One results row (denoising MSE, sample PSNR/SSIM vs FP, bytes, Phi rank, sampling time) + the samples."""
    start = time.perf_counter()
    samples = sample_model(model, probe.cond, probe.noise, cfg.sample_steps, cfg.shift)
    seconds = time.perf_counter() - start
    row = {
        "name": name,
        "denoise_mse": denoising_error(model, probe.teacher_v, probe.ev),
        "psnr": psnr(samples.clamp(-1, 1), probe.fp_samples.clamp(-1, 1)),
        "ssim": ssim(samples.clamp(-1, 1), probe.fp_samples.clamp(-1, 1)),
        "bytes": model_bytes(model),
        "phi_rank": max(_phi_ranks(model), default=0),
        "sample_seconds": seconds,
    }
    return row, samples


def check_round_trip(model: torch.nn.Module, teacher: torch.nn.Module, path: Path, probe: Probe) -> str:
    """``save_quantized`` then ``load_quantized`` into a fresh FP copy; outputs must be bit-identical."""
    from qvgen import load_quantized, save_quantized

    save_quantized(model, path)
    fresh = load_quantized(copy.deepcopy(teacher), path).eval()
    a, b = predict(model, probe.ev), predict(fresh, probe.ev)
    if not torch.equal(a, b):
        fail("check_round_trip", "load_quantized", "outputs identical to the saved model",
             f"max abs diff {float((a - b).abs().max()):.3e}")
    return f"saved to {path} and reloaded; outputs identical on {a.shape[0]} held-out inputs"


def _train_variants(teacher: torch.nn.Module, data: SpriteData, cfg: DemoConfig, out: Path,
                    ticker: Ticker) -> tuple[list[tuple[str, str, torch.nn.Module]], dict[str, Path], float]:
    """The deployed quantized models to compare ((role, name, model); role ptq / lsq / qvgen), their metrics logs
    and QVGen's train time."""
    label = cfg.bits.upper()
    ticker.heartbeat(f"{label} PTQ baseline (round-to-nearest weights, calibration only)")
    models = [("ptq", f"{label} PTQ (RTN)", deploy(quantize_copy(teacher, cfg.bits, rank=0).eval()))]
    logs = {}
    if cfg.qat_baseline:
        ticker.heartbeat(f"LSQ QAT {label} (QVGen without Phi; same seed, data and {cfg.steps} steps)")
        plain = quantize_copy(teacher, cfg.bits, rank=0)
        logs["LSQ QAT"] = distill_qvgen(plain, teacher, ticker.wrap(data, "LSQ QAT", cfg.steps), cfg,
                                        out / "train-lsq")
        models.append(("lsq", f"LSQ QAT {label} (deployed)", deploy(plain)))
    ticker.heartbeat(f"QVGen {label}: Phi rank {cfg.rank}, {cfg.steps} distillation steps with rank decay to 0")
    start = time.perf_counter()
    student = quantize_copy(teacher, cfg.bits, rank=cfg.rank)
    logs["QVGen"] = distill_qvgen(student, teacher, ticker.wrap(data, "QVGen", cfg.steps), cfg, out / "train")
    seconds = time.perf_counter() - start
    models.append(("qvgen", f"QVGen {label} (deployed)", deploy(student)))
    return models, logs, seconds


def _print(line: str) -> None:
    print(line, flush=True)  # progress lines must show up promptly when stdout is a file or a pipe


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = _print) -> dict:
    """Run the whole demo; returns {"rows", "summary", "report", "settings"} and writes the report to ``cfg.out``."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu" and (cfg.threads or "OMP_NUM_THREADS" not in os.environ):
        torch.set_num_threads(cfg.threads or auto_threads())  # OMP_NUM_THREADS set by the user wins over auto
    log(f"[demo] device {device}, {torch.get_num_threads()} torch threads; output {out}")
    ticker = Ticker(log, cfg.steps * (2 if cfg.qat_baseline else 1))
    teacher, tinfo = get_teacher(cfg.teacher(), device, cfg.cache_dir, cfg.retrain_teacher, log)
    teacher.requires_grad_(False)
    log(f"[demo] FP teacher {'loaded from' if tinfo['cached'] else 'trained and cached in'} {tinfo['path']}")
    data = SpriteData(cfg.teacher().sprites(), batch_size=cfg.batch_size, device=device)
    probe = make_probe(teacher, data, cfg, device)
    models, logs, train_seconds = _train_variants(teacher, data, cfg, out, ticker)
    qvgen_model = models[-1][2]
    round_trip = check_round_trip(qvgen_model, teacher, out / f"qvgen-{cfg.bits}", probe)
    log(f"[demo] {round_trip}")

    rows, samples, by_role = [], {}, {}
    for role, name, model in [("fp", "FP teacher", teacher), *models]:
        ticker.heartbeat(f"evaluating {name}")
        row, samples[name.split(" (")[0]] = evaluate(name, model, probe, cfg)
        rows.append(row)
        by_role[role] = row
    summary = report.verdict(by_role["ptq"], by_role["qvgen"], cfg.bits.upper())
    if "lsq" in by_role:
        summary += "\n" + report.lsq_verdict(by_role["lsq"], by_role["qvgen"], cfg.bits.upper(), cfg.steps)
    speed = forward_speed(teacher, qvgen_model, probe.ev, device)
    summary += "\n" + speed_line(speed, f"QVGen {cfg.bits.upper()}")
    report.save_sample_grid(out / "samples.png", samples, probe.captions)
    report.save_curves(out / "curves.png", {k: report.read_metrics_jsonl(p) for k, p in logs.items()},
                       tinfo.get("loss_curve", ()))
    settings = {**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"},
                "device": str(device), "teacher cache": tinfo["path"], "teacher cached": tinfo["cached"],
                "QVGen training seconds": round(train_seconds, 1), "round trip": round_trip,
                "torch threads": torch.get_num_threads(),
                "expected seconds (after the first steps)": None if ticker.expected is None else round(ticker.expected),
                "forward ms (fp32 / bf16 / deployed)": " / ".join(f"{v:.2f}" for v in speed["ms"].values()),
                "total seconds": round(time.perf_counter() - t0, 1),
                "load average at the end (1 / 5 / 15 min)": " / ".join(f"{v:.1f}" for v in os.getloadavg())}
    path = report.write_report(out, rows, summary, settings,
                               {"sampled clips (" + " | ".join(samples) + ")": "samples.png",
                                "training curves": "curves.png"})
    log(report.results_table(rows))
    log(summary)
    log(f"[demo] report: {path} ({settings['total seconds']} s)")
    return {"rows": rows, "summary": summary, "report": path, "settings": settings, "speed": speed}
