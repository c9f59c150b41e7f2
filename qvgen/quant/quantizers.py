"""Weight and activation fake quantizers of a QLinear (parameters + calibration; the arithmetic is in
`qvgen_kernels.ops`, which guarantees fake quant == deployment codes)."""

from __future__ import annotations

import math

import torch
from torch import nn

from qvgen_kernels import ops
from qvgen_kernels.format import check_group_size, qmax
from qvgen_kernels.errors import fail

from qvgen.quant.config import QuantConfig

# Shrink factors of the MSE init: p = 1 - i/100 for i = 0..79, and the error norm |.|^2.4.
_MSE_SHRINKS = tuple(1.0 - i / 100.0 for i in range(80))
_MSE_NORM = 2.4
# Scale floor for an all-zero weight row/group: its codes are then z = 0 and it dequantizes to exactly 0.
_W_EPS = 1e-8
# Elements of W evaluated per fake-quant call of the MSE search (bounds its memory to ~1 GiB in fp32).
_MSE_CHUNK_ELEMS = 1 << 26


class WeightQuantizer(nn.Module):
    """LSQ+ weight fake quant: learnable fp32 `scale`, `zero` of shape [N] (per channel) or [N, G]."""

    def __init__(self, out_features: int, in_features: int, cfg: QuantConfig,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        groups = check_group_size("WeightQuantizer", cfg.w_group_size, in_features)
        shape = (out_features,) if cfg.w_group_size == -1 else (out_features, groups)
        self.bits = cfg.w_bits
        self.group_size = cfg.w_group_size
        self.init_method = cfg.w_init
        k_per_scale = in_features if cfg.w_group_size == -1 else cfg.w_group_size
        self.grad_scale = 1.0 / math.sqrt(k_per_scale * qmax(cfg.w_bits)) if cfg.w_grad_scale else 1.0
        self.scale = nn.Parameter(torch.ones(shape, dtype=torch.float32, device=device))
        self.zero = nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=device))

    def _grouped(self, w: torch.Tensor) -> torch.Tensor:
        """w [N, K] -> [N, G, Kg] (G = 1 per channel)."""
        return w.reshape(w.shape[0], self.scale.reshape(w.shape[0], -1).shape[1], -1)

    def _range_params(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = ((hi - lo) / qmax(self.bits)).clamp_min(_W_EPS)
        return s, -lo / s

    @torch.no_grad()
    def calibrate(self, w: torch.Tensor) -> None:
        """Initialise scale/zero from w [N, K]: min/max (range widened to contain 0) or the MSE shrink search."""
        if w.dim() != 2 or w.shape[0] != self.scale.shape[0]:
            fail("WeightQuantizer.calibrate", "w", f"a [N={self.scale.shape[0]}, K] tensor", tuple(w.shape))
        w = w.detach().float()
        wg = self._grouped(w)
        lo, hi = wg.amin(-1).clamp_max(0.0), wg.amax(-1).clamp_min(0.0)
        s, z = self._mse_search(w, lo, hi) if self.init_method == "mse" else self._range_params(lo, hi)
        self.scale.copy_(s.reshape(self.scale.shape))
        self.zero.copy_(z.reshape(self.zero.shape))

    def _mse_search(self, w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Every candidate over the whole weight at once, candidates in chunks of at most _MSE_CHUNK_ELEMS
        # elements: w [N, G, Kg] broadcast against s, z [C, N, G, 1]. The fp32 operations and their order are
        # fake_quant_weight's (w_hat = s (clamp(round(w / s + z), 0, P) - z)), done in place on one buffer and
        # without the custom op's data checks, so the time is a few passes over C x the weight per chunk and grows
        # linearly with the parameters.
        shrinks = torch.tensor(_MSE_SHRINKS, dtype=torch.float32, device=w.device)
        wg = self._grouped(w)
        chunk = max(1, min(len(_MSE_SHRINKS), _MSE_CHUNK_ELEMS // max(w.numel(), 1)))
        errs, scales, zeros = [], [], []
        for start in range(0, len(_MSE_SHRINKS), chunk):
            p = shrinks[start:start + chunk].reshape(-1, 1, 1)
            s, z = self._range_params(lo * p, hi * p)  # [C, N, G]
            s4, z4 = s.unsqueeze(-1), z.unsqueeze(-1)
            t = wg / s4
            t.add_(z4).round_().clamp_(0, qmax(self.bits)).sub_(z4).mul_(s4)
            errs.append(t.sub_(wg).abs_().pow_(_MSE_NORM).sum(-1))
            scales.append(s)
            zeros.append(z)
            del t
        # argmin returns the first minimum: ties keep the wider range.
        best = torch.cat(errs).argmin(0, keepdim=True)
        return torch.cat(scales).gather(0, best)[0], torch.cat(zeros).gather(0, best)[0]

    def effective_scale(self) -> torch.Tensor:
        """The scale used everywhere (training and deployment): floored at a tiny positive value, since
        gradient steps may push a learnable scale of a near-zero channel to or below 0."""
        return self.scale.clamp_min(_W_EPS)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Fake-quantized weight (STE for w; LSQ gradients for scale and zero)."""
        return ops.fake_quant_weight(w, self.effective_scale(), self.zero, self.bits, grad_scale=self.grad_scale)

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes uint8 [N, K] of w (the deployment codes)."""
        return ops.quantize_weight(w, self.effective_scale(), self.zero.detach(), self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, group_size={self.group_size}, shape={tuple(self.scale.shape)}"


class ActQuantizer(nn.Module):
    """Per-token dynamic activation fake quant with clip pairs learnable per timestep group.

    clip = clip_max * sigmoid(logit); `clip_lo_logit`, `clip_hi_logit` are [clip_groups].
    """

    def __init__(self, cfg: QuantConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.bits = cfg.a_bits
        self.clip_max = float(cfg.a_clip_max)
        init = torch.full((cfg.clip_groups,), cfg.clip_init_logit, dtype=torch.float32, device=device)
        self.clip_lo_logit = nn.Parameter(init.clone(), requires_grad=cfg.a_clip_learnable)
        self.clip_hi_logit = nn.Parameter(init.clone(), requires_grad=cfg.a_clip_learnable)

    @property
    def num_groups(self) -> int:
        return self.clip_lo_logit.shape[0]

    def clip_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_lo, c_hi) for every group, fp32 [clip_groups]."""
        return (self.clip_max * torch.sigmoid(self.clip_lo_logit),
                self.clip_max * torch.sigmoid(self.clip_hi_logit))

    def clips(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_lo, c_hi) at group index (any shape, int64)."""
        lo, hi = self.clip_table()
        # index_select, not lo[index] (indexing with a 0-d tensor calls .item(), a graph break under
        # torch.compile) nor take (Inductor's decomposition of take guards on the index's value).
        flat = index.reshape(-1)
        return lo.index_select(0, flat).view(index.shape), hi.index_select(0, flat).view(index.shape)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Fake-quantize x [..., K] per token; index (from `row_group_index`) broadcasts to x.shape[:-1]."""
        c_lo, c_hi = self.clips(index)
        return ops.fake_quant_act(x, self.bits, c_lo, c_hi)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, clip_groups={self.num_groups}"


__all__ = ["ActQuantizer", "WeightQuantizer"]
