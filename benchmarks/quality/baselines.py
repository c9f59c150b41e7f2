"""Baselines of the quality study, as thin compositions around qvgen's QLinear (no second quantizer):

- EfficientDM-style QA-LoRA QAT: a LoRA delta (rank 64, alpha 64) added to the latent weight through a
  ``torch.nn.utils.parametrize`` parametrization, so QLinear's own forward fake-quantizes W + (alpha/r) B A;
  the base weight is frozen; merged into W at deploy.
  The LoRA learning rate is scaled by the layer's mean weight scale s: the factors are stored as raw tensors
  and used as s * raw. Adam's update is invariant to the gradient's scale, so the effective factors move by
  about s * lr per step: the per-layer lr scaling without per-layer optimizer groups.
- SVDQuant-style PTQ: W = L R (rank 32 from the SVD of W) + residual; a QLinear quantizes the residual, and
  the low-rank branch runs in floating point on the unquantized input and is kept at inference. (SVDQuant's
  outlier smoothing is not reproduced.)
- ``GradNormProbe``: a rank-decay stand-in for ``qvgen.train.Distiller`` that records the gradient norm of the
  latent weights at every step (before clipping), wrapping a real ``qvgen.RankDecay`` or nothing.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from qvgen import QLinear, QuantConfig, iter_qlinears
from qvgen.quant.swap import attach
from qvgen_kernels.errors import fail


class LoRADelta(nn.Module):
    """Parametrization W -> W + (alpha / rank) (s B_raw)(s A_raw); B starts at zero (so W is unchanged)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, lr_scale: float,
                 generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        if rank < 1 or not lr_scale > 0:
            fail("LoRADelta", "rank/lr_scale", "rank >= 1 and lr_scale > 0", (rank, lr_scale))
        self.scaling = alpha / rank
        self.lr_scale = float(lr_scale)
        a = torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features)  # LoRA's A init
        self.lora_a = nn.Parameter((a / self.lr_scale).to(device, dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))

    def delta(self) -> torch.Tensor:
        return (self.scaling * self.lr_scale ** 2) * (self.lora_b @ self.lora_a)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.delta()


def add_qalora(model: nn.Module, rank: int = 64, alpha: float = 64.0, seed: int = 0) -> nn.Module:
    """Attach a LoRADelta to every QLinear's weight (rank capped at min(N, K)) and freeze the base weights."""
    g = torch.Generator().manual_seed(seed)
    layers = list(iter_qlinears(model))
    if not layers:
        fail("add_qalora", "model", "a quantized model (QLinear layers)", "none")
    for _, q in layers:
        r = min(rank, q.in_features, q.out_features)
        s = float(q.weight_quant.scale.detach().float().mean())
        q.weight.requires_grad_(False)
        delta = LoRADelta(q.out_features, q.in_features, r, alpha * r / rank, s, g, q.weight.device, q.weight.dtype)
        parametrize.register_parametrization(q, "weight", delta)
    return model


def merge_qalora(model: nn.Module) -> nn.Module:
    """Fold every LoRA delta into its weight (QLinear is then plain again, ready for ``to_deploy``)."""
    for _, q in iter_qlinears(model):
        if parametrize.is_parametrized(q, "weight"):
            parametrize.remove_parametrizations(q, "weight", leave_parametrized=True)
    return model


class SVDQuantLinear(nn.Module):
    """y = QLinear(W - L R)(x) + L (R x): the low-rank branch in floating point on the unquantized x."""

    def __init__(self, linear: nn.Linear, cfg: QuantConfig, rank: int) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = min(rank, s.numel())
        l, rr = u[:, :r] * s[:r].sqrt(), s[:r].sqrt()[:, None] * vh[:r]
        resid = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None,
                          device=w.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            resid.weight.copy_(w - l @ rr)
            if linear.bias is not None:
                resid.bias.copy_(linear.bias)
        self.q = QLinear.from_linear(resid, cfg)
        self.register_buffer("lr_l", l.to(linear.weight.dtype))
        self.register_buffer("lr_r", rr.to(linear.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x) + F.linear(F.linear(x, self.lr_r), self.lr_l).to(x.dtype)


def svdquant_model(model: nn.Module, cfg: QuantConfig, rank: int = 32, max_fraction: float = 0.5) -> nn.Module:
    """Swap every nn.Linear for an SVDQuantLinear in place (rank capped at max_fraction * min(N, K), so a small
    layer keeps a residual to quantize), then share the timestep state with the inner QLinears."""
    if cfg.rank != 0:
        fail("svdquant_model", "cfg.rank", "0 (the low-rank branch replaces Phi)", cfg.rank)
    targets = [(n, m) for n, m in model.named_modules() if n and type(m) is nn.Linear]
    for name, m in targets:
        r = max(1, min(rank, int(max_fraction * min(m.in_features, m.out_features))))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, SVDQuantLinear(m, cfg, r))
    attach(model, cfg)
    return model


class GradNormProbe:
    """Passed to ``Distiller(rank_decay=...)``: forwards to an optional RankDecay and records, per step, the
    L2 norm of the gradients of every QLinear's latent weight (summed in backward hooks, before clipping)."""

    def __init__(self, model: nn.Module, decay: Any | None = None) -> None:
        self.decay = decay
        self.norms: list[float] = []
        self._acc: torch.Tensor | None = None
        self._steps = 0
        self.layers = [q for _, q in iter_qlinears(model)]
        self.handles = [q.weight.register_post_accumulate_grad_hook(self._hook)
                        for q in self.layers if q.weight is not None and q.weight.requires_grad]

    def _hook(self, p: torch.Tensor) -> None:
        sq = p.grad.detach().float().pow(2).sum()
        self._acc = sq if self._acc is None else self._acc + sq

    def _flush(self) -> None:
        if self._acc is not None:
            self.norms.append(float(self._acc.sqrt()))
            self._acc = None

    @property
    def optimizer(self):
        return None if self.decay is None else self.decay.optimizer

    @optimizer.setter
    def optimizer(self, opt) -> None:
        if self.decay is not None:
            self.decay.optimizer = opt

    @property
    def current_rank(self) -> int:
        """The decay's rank, or without one the widest Phi present (0 when none)."""
        if self.decay is not None:
            return int(self.decay.current_rank)
        return max((q.phi_rank for q in self.layers), default=0)

    def step(self, i: int) -> None:
        self._flush()  # the previous step's backward is complete
        if self.decay is not None:
            self.decay.step(i)

    def finish(self) -> list[float]:
        """Record the last step and remove the hooks; returns the per-step norms."""
        self._flush()
        for h in self.handles:
            h.remove()
        return self.norms

    def state_dict(self) -> dict:
        return {} if self.decay is None else self.decay.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.decay is not None:
            self.decay.load_state_dict(state)


__all__ = ["GradNormProbe", "LoRADelta", "SVDQuantLinear", "add_qalora", "merge_qalora", "svdquant_model"]
