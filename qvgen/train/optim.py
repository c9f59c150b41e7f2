"""AdamW with QVGen's parameter groups, the cosine-with-warmup LR schedule and gradient clipping.

Groups (always all four, in this order, possibly empty, so that a rebuilt optimizer lines up with a
saved one): ``clip`` (activation clip logits, ``clip_lr``), ``phi`` (the low-rank Phi factors,
``phi_lr`` or ``lr``), ``quant`` (weight quantizer scale / zero point, ``quant_lr`` or ``lr``),
``other`` (latent weights, biases, norms, embeddings: ``lr``). Weight decay applies to every group,
as in the method's training scripts.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.distributed.sharding import is_sharded, local_value, squared_norm

GROUPS = ("clip", "phi", "quant", "other")
# Name suffixes (the frontend's QLinear naming, matched at a "." boundary) that select a group.
GROUP_SUFFIXES: dict[str, tuple[str, ...]] = {
    "clip": ("clip_lo_logit", "clip_hi_logit"),
    "phi": ("phi_l", "phi_r"),
    "quant": ("weight_quant.scale", "weight_quant.zero"),
}


def group_of(name: str) -> str:
    """The optimizer group of a parameter, from its qualified name."""
    dotted = "." + name
    for group, suffixes in GROUP_SUFFIXES.items():
        if any(dotted.endswith("." + s) for s in suffixes):
            return group
    return "other"


def named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, param) of every parameter that requires grad, in the model's registration order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def group_lrs(lr: float, clip_lr: float = 1e-2, phi_lr: float | None = None,
              quant_lr: float | None = None) -> dict[str, float]:
    """The base learning rate of each group (None: ``lr``)."""
    return {"clip": clip_lr, "phi": lr if phi_lr is None else phi_lr,
            "quant": lr if quant_lr is None else quant_lr, "other": lr}


def param_groups(model: nn.Module, lr: float, clip_lr: float = 1e-2, phi_lr: float | None = None,
                 quant_lr: float | None = None, weight_decay: float = 1e-4) -> list[dict]:
    """AdamW parameter groups (see module docstring); each dict carries its ``name``."""
    lrs = group_lrs(lr, clip_lr, phi_lr, quant_lr)
    for g, v in lrs.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            fail("param_groups", f"{g} learning rate", "a float >= 0", repr(v))
    buckets: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, p in named_trainable(model):
        buckets[group_of(name)].append(p)
    return [{"name": g, "params": buckets[g], "lr": float(lrs[g]), "weight_decay": weight_decay}
            for g in GROUPS]


def build_optimizer(model: nn.Module, lr: float = 3e-5, clip_lr: float = 1e-2, phi_lr: float | None = None,
                    quant_lr: float | None = None, weight_decay: float = 1e-4,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, ...)``."""
    groups = param_groups(model, lr, clip_lr, phi_lr, quant_lr, weight_decay)
    if not any(g["params"] for g in groups):
        fail("build_optimizer", "model", "at least one parameter with requires_grad", "none")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear 1/w .. 1 over ``warmup_steps``, then a cosine from 1 to 0 at ``total_steps``."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        fail("warmup_cosine", "total_steps", "a positive int", repr(total_steps))
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
        fail("warmup_cosine", "warmup_steps", f"an int in [0, {total_steps}]", repr(warmup_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine schedule with linear warmup over ``warmup`` (fraction of ``total_steps``)."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0.0 <= warmup <= 1.0:
        fail("build_scheduler", "warmup", "a fraction in [0, 1]", repr(warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, int(warmup * total_steps)))


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Clip the global L2 grad norm to ``max_norm`` (in place); returns the pre-clip norm.

    The norm is accumulated in the given order (pass the model's registration order) so that it is
    reproducible bit for bit across a resume. A non-finite norm (NaN/Inf in a gradient, or overflow)
    leaves the gradients untouched and is returned as is: the caller must not step on them.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
        fail("clip_gradients", "max_norm", "a float > 0", repr(max_norm))
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    sharded = any(is_sharded(g) for g in grads)
    if sharded:  # FSDP2: sum of squares over this rank's shards, all-reduced (a collective)
        total = squared_norm(grads).sqrt()
    else:
        total = torch.stack([g.detach().float().norm(2).to(grads[0].device) for g in grads]).norm(2)
    if not math.isfinite(float(total)):
        return float(total)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        local_value(g).detach().mul_(scale.to(g.dtype))
    return float(total)
