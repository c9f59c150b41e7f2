"""BENCHMARK BASELINE ONLY: QAT linear layers written the way the official QVGen code runs them.

Not part of the library. It reproduces the official implementation's execution pattern so the model
benchmark can compare qvgen's fused fake-quant path against it:
  - the weight LSQ+ fake quant and the per-token activation fake quant are chains of separate PyTorch ops
    (divide, round with a straight-through estimator, clamp, subtract, multiply), each materialising its
    intermediates;
  - each quantizer's forward is wrapped in ``torch.utils.checkpoint`` (recomputed in the backward);
  - Phi is folded into the weight every step: W_eff = Q(W) + (L * gamma) R, then F.linear(Q_a(x), W_eff, b).
The numbers it computes follow the same definitions as qvgen (so its outputs are comparable), but its speed
and memory are what the benchmark measures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from qvgen_kernels.format import ACT_EPS, qmax

from qvgen_kernels.errors import fail


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


def eager_weight_fq(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """LSQ+ weight fake quant, per output channel, as separate ops: s * (clamp(round(w/s + z), 0, P) - z)."""
    s, z = scale[:, None], zero[:, None]
    q = torch.clamp(_round_ste(w / s + z), 0, qmax(bits))
    return (q - z) * s


def eager_act_fq(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-token dynamic fake quant with sigmoid clip factors, as separate ops."""
    p = qmax(bits)
    xmin = x.amin(-1, keepdim=True).clamp(max=0).detach() * torch.sigmoid(lower)
    xmax = x.amax(-1, keepdim=True).clamp(min=0).detach() * torch.sigmoid(upper)
    s = ((xmax - xmin) / p).clamp(min=ACT_EPS)
    z = torch.clamp(_round_ste(-xmin / s), 0, p)
    q = torch.clamp(_round_ste(x / s) + z, 0, p)
    return (q - z) * s


class EagerQuantLinear(nn.Module):
    """Official-style QAT linear: parameters w, b, LSQ+ scale/zero, clip logits, and Phi (L, R, gamma)."""

    def __init__(self, linear: nn.Linear, w_bits: int, a_bits: int, rank: int) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            fail("EagerQuantLinear", "linear", "an nn.Linear", type(linear).__name__, TypeError)
        w = linear.weight.detach()
        self.w_bits, self.a_bits = w_bits, a_bits
        self.w = nn.Parameter(w.clone())
        self.b = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        lo, hi = w.float().amin(1).clamp(max=0), w.float().amax(1).clamp(min=0)
        scale = ((hi - lo) / qmax(w_bits)).clamp(min=1e-8)
        self.scale = nn.Parameter(scale.to(w.dtype))
        self.zero = nn.Parameter((-lo / scale).to(w.dtype))
        logit = torch.full((1,), 2.94, dtype=w.dtype, device=w.device)  # sigmoid(2.94) = 0.95
        self.lower, self.upper = nn.Parameter(logit.clone()), nn.Parameter(logit.clone())
        self.rank = rank
        if rank:
            n, k = w.shape
            self.L = nn.Parameter(torch.randn(n, rank, dtype=w.dtype, device=w.device) * 1e-3)
            self.R = nn.Parameter(torch.randn(rank, k, dtype=w.dtype, device=w.device) * 1e-3)
            self.register_buffer("gamma", torch.ones(rank, dtype=w.dtype, device=w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = checkpoint(eager_act_fq, x, self.lower, self.upper, self.a_bits, use_reentrant=False)
        w_q = checkpoint(eager_weight_fq, self.w, self.scale, self.zero, self.w_bits, use_reentrant=False)
        if self.rank:
            w_q = w_q + (self.L * self.gamma) @ self.R
        return F.linear(x_q, w_q, self.b)


def eager_quantize(model: nn.Module, w_bits: int, a_bits: int, rank: int) -> nn.Module:
    """Replace every nn.Linear of ``model`` by an EagerQuantLinear, in place; returns the model."""
    targets = [(n, m) for n, m in model.named_modules() if n and type(m) is nn.Linear]
    for name, m in targets:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, EagerQuantLinear(m, w_bits, a_bits, rank))
    return model


__all__ = ["EagerQuantLinear", "eager_act_fq", "eager_quantize", "eager_weight_fq"]
