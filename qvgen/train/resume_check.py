"""What a resumed run may change: the checkpoint's training and quantization config against the current one.

Every TrainConfig field must match the checkpoint's, except
  - RUNTIME fields, which do not change the computation (output folder, logging, checkpoint period,
    gradient checkpointing, the skip limit): accepted, logged at INFO;
  - OVERRIDABLE fields (learning rates, weight decay, gradient-norm clip): accepted only when named in
    ``override`` (``Distiller.run(resume=True, override=("lr",))``, ``qvgen train --resume-override lr``),
    logged as a WARNING, and applied from the resume step on (``apply_overrides``).
The student's QuantConfig must equal the checkpoint's: another bit width or rank is another model.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.quant.swap import model_config
from qvgen.train.config import TrainConfig
from qvgen.train.optim import group_lrs

OVERRIDABLE = ("lr", "clip_lr", "phi_lr", "quant_lr", "weight_decay", "max_grad_norm")
RUNTIME = ("out_dir", "progress", "log_every", "ckpt_every", "grad_checkpointing", "max_skipped_steps")
_OP = "Distiller.resume"
log = logging.getLogger("qvgen.train")


def _pairs(diffs: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {a!r} (checkpoint) vs {b!r} (now)" for k, (a, b) in diffs.items())


def check_train_config(saved: Any, cfg: TrainConfig, override: Iterable[str] = ()) -> list[str]:
    """Refuse a resume under a different TrainConfig (see the module docstring); returns the overridden fields."""
    override = list(override)
    unknown = [k for k in override if k not in OVERRIDABLE]
    if unknown:
        fail(_OP, "override", f"fields among {OVERRIDABLE}", unknown)
    if not isinstance(saved, dict):
        fail(_OP, "checkpoint", "a checkpoint that records its TrainConfig", type(saved).__name__)
    now, defaults = cfg.to_dict(), TrainConfig().to_dict()  # a field added since then had its default
    diffs = {k: (saved.get(k, defaults[k]), v) for k, v in now.items() if saved.get(k, defaults[k]) != v}
    runtime = {k: d for k, d in diffs.items() if k in RUNTIME}
    if runtime:
        log.info("resume: run-time settings changed: %s", _pairs(runtime))
    refused = {k: d for k, d in diffs.items() if k not in RUNTIME and k not in override}
    if refused:
        hint = [k for k in refused if k in OVERRIDABLE]
        note = f"; {hint} may change on resume when named in override (--resume-override)" if hint else ""
        fail(_OP, ", ".join(f"cfg.{k}" for k in refused), "the checkpoint's training config",
             f"{_pairs(refused)}{note}")
    applied = [k for k in diffs if k in override]
    if applied:
        log.warning("resume: overriding the checkpoint's %s", _pairs({k: diffs[k] for k in applied}))
    return applied


def check_quant_config(saved: Any, student: nn.Module) -> None:
    """The student is quantized exactly as the checkpoint's (or, both unquantized)."""
    cfg = model_config(student)
    now = None if cfg is None else cfg.to_dict()
    if saved == now:
        return
    if isinstance(saved, dict) and isinstance(now, dict):
        got = _pairs({k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v})
    else:
        got = f"{saved!r} (checkpoint) vs {now!r} (now)"
    fail(_OP, "student", "a model quantized with the checkpoint's QuantConfig", got)


def apply_overrides(optimizer: torch.optim.Optimizer, scheduler: Any, cfg: TrainConfig) -> None:
    """After loading a checkpoint's optimizer and scheduler state (which carry the old hyper-parameters),
    put the current config's learning rates and weight decay in, at the restored schedule position."""
    lrs = group_lrs(cfg.lr, cfg.clip_lr, cfg.phi_lr, cfg.quant_lr)
    for i, group in enumerate(optimizer.param_groups):
        base = float(lrs[group["name"]])
        group["initial_lr"] = scheduler.base_lrs[i] = base
        group["lr"] = base * scheduler.lr_lambdas[i](scheduler.last_epoch)
        group["weight_decay"] = cfg.weight_decay


__all__ = ["OVERRIDABLE", "RUNTIME", "apply_overrides", "check_quant_config", "check_train_config"]
