"""TrainConfig: the distillation run's hyper-parameters (defaults: the method's training scripts)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from qvgen.quant.rank_decay import DEFAULT_DECAY_END
from qvgen_kernels.errors import fail

_OP = "TrainConfig"
AUTOCAST = ("auto", "off", "bf16")


def _pos_int(name: str, v: Any, allow_zero: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
        fail(_OP, name, "an int >= 0" if allow_zero else "a positive int", repr(v))


def _float(name: str, v: Any, lo: float, hi: float, expected: str, closed_lo: bool = True) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (lo <= v if closed_lo else lo < v) and v <= hi
    if not ok:
        fail(_OP, name, expected, repr(v))


@dataclass(frozen=True)
class TrainConfig:
    """Distillation hyper-parameters.

    steps / batch_size: optimizer steps and the batch size the data function is asked for.
    lr: every trainable parameter not in another group; clip_lr: activation clip logits;
        phi_lr / quant_lr: Phi factors / weight-quantizer scale and zero (None = lr).
    weight_decay, betas, eps: AdamW; warmup: fraction of steps of linear warmup before the cosine decay;
    max_grad_norm: global gradient-norm clip.
    max_skipped_steps: a step whose loss or gradients are not finite is skipped (logged, no weight update);
        one more consecutive skip than this is an error.
    seed: every step draws from its own generator seeded with seed * 1_000_003 + step.
    rank_schedule: gamma schedule of the rank decay ("cosine" or "linear").
    decay_end: fraction of training by whose end Phi is gone (the weights train on without it after);
        1.0 is the paper's schedule (see qvgen.quant.rank_decay).
    target: objective target ("auto": velocity for flow models, x0 for v-prediction models).
    grad_checkpointing: use the model's enable_gradient_checkpointing() when it has one.
    caption_dropout: per-step probability of replacing the whole batch's conditioning by the null one
        (cond["null"] from the data function, else zeros); 0 disables it (the method uses 0.05).
    autocast: "auto" (bf16 on CUDA, off on CPU), "off" or "bf16".
    log_every / ckpt_every: metric and checkpoint period in steps (0: checkpoint only at the end).
    out_dir: metrics.jsonl, metrics.png and ckpt-last/ go here. progress: show a tqdm bar on a TTY.
    """

    steps: int = 1000
    batch_size: int = 1
    lr: float = 3e-5
    clip_lr: float = 1e-2
    phi_lr: float | None = None
    quant_lr: float | None = None
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup: float = 0.1
    max_grad_norm: float = 1.0
    max_skipped_steps: int = 3
    seed: int = 0
    rank_schedule: str = "cosine"
    decay_end: float = DEFAULT_DECAY_END
    target: str = "auto"
    grad_checkpointing: bool = False
    caption_dropout: float = 0.0
    autocast: str = "auto"
    log_every: int = 1
    ckpt_every: int = 0
    out_dir: str = "runs/train"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.out_dir, os.PathLike):
            object.__setattr__(self, "out_dir", os.fspath(self.out_dir))
        _pos_int("steps", self.steps)
        _pos_int("batch_size", self.batch_size)
        for name in ("lr", "clip_lr", "phi_lr", "quant_lr"):
            v = getattr(self, name)
            if v is not None or name in ("lr", "clip_lr"):
                _float(name, v, 0.0, 1e3, "a float >= 0")
        _float("weight_decay", self.weight_decay, 0.0, 1e3, "a float >= 0")
        if (not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas)):
            fail(_OP, "betas", "a pair of floats in [0, 1)", repr(self.betas))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _float("eps", self.eps, 0.0, 1.0, "a float in (0, 1]", closed_lo=False)
        _float("warmup", self.warmup, 0.0, 1.0, "a fraction in [0, 1]")
        _float("caption_dropout", self.caption_dropout, 0.0, 1.0, "a probability in [0, 1]")
        _float("max_grad_norm", self.max_grad_norm, 0.0, float("inf"), "a float > 0", closed_lo=False)
        _pos_int("seed", self.seed, allow_zero=True)
        _pos_int("max_skipped_steps", self.max_skipped_steps, allow_zero=True)
        if self.rank_schedule not in ("cosine", "linear"):
            fail(_OP, "rank_schedule", "'cosine' or 'linear'", repr(self.rank_schedule))
        _float("decay_end", self.decay_end, 0.0, 1.0, "a fraction of training in (0, 1]", closed_lo=False)
        if self.target not in ("auto", "x0", "eps", "v"):
            fail(_OP, "target", "'auto', 'x0', 'eps' or 'v'", repr(self.target))
        if self.autocast not in AUTOCAST:
            fail(_OP, "autocast", f"one of {AUTOCAST}", repr(self.autocast))
        for name in ("grad_checkpointing", "progress"):
            if not isinstance(getattr(self, name), bool):
                fail(_OP, name, "a bool", repr(getattr(self, name)))
        _pos_int("log_every", self.log_every)
        _pos_int("ckpt_every", self.ckpt_every, allow_zero=True)
        if not isinstance(self.out_dir, str) or not self.out_dir:
            fail(_OP, "out_dir", "a non-empty path string", repr(self.out_dir))

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d
