"""The compared methods: each builds a deployed model from the FP teacher with qvgen's own machinery.

Every trained method uses ``qvgen.train.Distiller`` with the same data (the demo's sprite clips), teacher,
step budget, batch size, learning rates and seed; they differ only in the QuantConfig and what is attached:

  fp       the FP teacher itself (the reference row: motion ratio 1, its own temporal consistency)
  ptq      round-to-nearest PTQ: quantize_model(rank=0) (weight range calibration only), deployed
  svdquant SVDQuant-style PTQ: rank-32 FP low-rank branch + quantized residual, branch kept at inference
  lsq      LSQ QAT: the QVGen config with rank 0 (no Phi)
  qalora   EfficientDM-style QA-LoRA QAT (rank 64, alpha 64, frozen base weights), merged before deploy
  qvgen    QVGen: Phi of rank ``rank`` with rank decay to 0 (``gamma`` schedule cosine or linear), Phi gone at
           ``decay_end`` of training (1.0: the paper's schedule)
  drop     Phi of rank ``rank`` trained at full rank, then removed at once before deploy
  keep     Phi of rank ``rank`` trained at full rank and kept at inference (to_deploy(keep_phi=True))
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

import qvgen
from benchmarks.quality.baselines import GradNormProbe, add_qalora, merge_qalora, svdquant_model
from benchmarks.quality.probes import MechanismProbe, decomposition, heldout_error
from qvgen_kernels.errors import fail

METHODS = ("fp", "ptq", "svdquant", "lsq", "qalora", "qvgen", "drop", "keep")
TRAINED = ("lsq", "qalora", "qvgen", "drop", "keep")
BITS = ("w4a4", "w3a3", "w3a16")


def quant_config(bits: str, rank: int) -> qvgen.QuantConfig:
    """The QuantConfig of a bit setting; "w3a16" (weights only, 3 bits) is the w4a16 preset with w_bits 3."""
    if bits not in BITS:
        fail("quant_config", "bits", f"one of {BITS}", repr(bits))
    if bits == "w3a16":
        return qvgen.QuantConfig.preset("w4a16", w_bits=3, rank=rank)
    return qvgen.QuantConfig.preset(bits, rank=rank)


@dataclass(frozen=True)
class MethodSpec:
    """One configuration: method, bit preset, Phi rank (Phi methods and the SVDQuant branch), gamma schedule
    and decay end (qvgen)."""

    method: str
    bits: str = "w4a4"
    rank: int = 16
    schedule: str = "cosine"
    decay_end: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            fail("MethodSpec", "method", f"one of {METHODS}", repr(self.method))
        if self.bits not in BITS:
            fail("MethodSpec", "bits", f"one of {BITS}", repr(self.bits))

    @property
    def label(self) -> str:
        if self.method == "fp":
            return "fp teacher"
        extra = ""
        if self.method in ("qvgen", "drop", "keep", "svdquant"):
            extra = f" r{self.rank}"
        if self.method == "qvgen":
            extra += (" linear" if self.schedule == "linear" else "") + f" end{self.decay_end:g}"
        return f"{self.method}{extra} {self.bits.upper()}"


@dataclass(frozen=True)
class Budget:
    """Training recipe shared by every trained method."""

    steps: int = 60
    batch_size: int = 8
    lr: float = 5e-4
    clip_lr: float = 1e-2


def _copy(teacher: nn.Module) -> nn.Module:
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def _train(student: nn.Module, teacher: nn.Module, data, budget: Budget, seed: int, out: Path,
           decay) -> dict:
    from qvgen.train import Distiller, TrainConfig

    cfg = TrainConfig(steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr, clip_lr=budget.clip_lr,
                      seed=seed, out_dir=str(out), log_every=1, ckpt_every=0, progress=False)
    start = time.perf_counter()
    dist = Distiller(student, teacher, "wan", data, cfg, rank_decay=decay)
    dist.run()
    records = dist.metrics.read()
    return {"train_seconds": time.perf_counter() - start, "loss": [r["loss"] for r in records],
            "grad_norm_total": [r["grad_norm"] for r in records], "rank": [r["rank"] for r in records]}


def build(spec: MethodSpec, teacher: nn.Module, data, budget: Budget, seed: int, out: Path,
          probe=None) -> tuple[nn.Module, dict]:
    """The deployed model of ``spec`` and its training log ({} for PTQ methods). With the held-out ``probe``
    (``qvgen.apps.demo.pipeline.Probe``) the log also holds the convergence curve (held-out error with and
    without Phi every 10% of training) and the error decomposition before and after training."""
    if spec.method == "fp":
        return teacher, {}
    if spec.method == "ptq":
        return qvgen.to_deploy(qvgen.quantize_model(_copy(teacher), quant_config(spec.bits, 0))), {}
    if spec.method == "svdquant":
        model = svdquant_model(_copy(teacher), quant_config(spec.bits, 0), rank=spec.rank)
        return qvgen.to_deploy(model), {}
    rank = spec.rank if spec.method in ("qvgen", "drop", "keep") else 0
    student = qvgen.quantize_model(_copy(teacher), quant_config(spec.bits, rank))
    recorder = None
    log: dict = {}
    if probe is not None:
        log["decomposition_init"] = decomposition(student, probe)
    if spec.method == "qalora":
        add_qalora(student, seed=seed)
        decay = False
    else:
        inner = (qvgen.RankDecay(student, budget.steps, schedule=spec.schedule, decay_end=spec.decay_end)
                 if spec.method == "qvgen" else None)
        recorder = decay = (GradNormProbe(student, inner) if probe is None else MechanismProbe(
            student, inner, budget.steps, lambda m, phi: heldout_error(m, probe, phi)))
    log.update(_train(student, teacher, data, budget, seed, out, decay))
    if recorder is not None:
        log["grad_norm_weights"] = recorder.finish()
    if isinstance(recorder, MechanismProbe):
        log["curve"] = recorder.finish_curve()
        log["train_seconds"] -= recorder.seconds
        log["decomposition_end"] = decomposition(student, probe)
    if spec.method == "qalora":
        merge_qalora(student)
    if spec.method == "drop":
        for _, q in qvgen.iter_qlinears(student):
            q.remove_phi()
    return qvgen.to_deploy(student, keep_phi=spec.method == "keep").eval(), log


__all__ = ["BITS", "METHODS", "TRAINED", "Budget", "MethodSpec", "build", "quant_config"]
