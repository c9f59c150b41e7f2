"""QLinear: the drop-in quantized nn.Linear (QAT fake quant with the auxiliary module Phi, or packed deploy)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qvgen_kernels import ops
from qvgen_kernels.format import fail

from .config import QuantConfig
from .lowrank import init_phi
from .quantizers import ActQuantizer, WeightQuantizer
from .timestep import STATE_ATTR, TimestepState, row_group_index

_PHI_KEYS = ("phi_l", "phi_r", "phi_gamma")
_DEPLOY_KEYS = ("w_packed", "w_scale", "w_zero")


class QLinear(nn.Linear):
    """nn.Linear with QVGen quantization. Keeps the `weight` / `bias` names.

    mode "qat":    y = Qw(W) Qa(x) + b + (L * gamma) (R Qa(x))   (Phi while its rank > 0)
    mode "deploy": packed weight codes + the low-bit GEMM of `qvgen_kernels.ops.lowbit_linear`.
    Activation clips are chosen per sample from the model's timestep groups (see qvgen.timestep).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, cfg: QuantConfig | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup(cfg if cfg is not None else QuantConfig(), self.weight.device)

    def _setup(self, cfg: QuantConfig, device: torch.device) -> None:
        if not isinstance(cfg, QuantConfig):
            fail("QLinear", "cfg", "a QuantConfig", type(cfg).__name__, TypeError)
        self.cfg = cfg
        self.mode = "qat"
        self.weight_quant = WeightQuantizer(self.out_features, self.in_features, cfg, device)
        self.act_quant = ActQuantizer(cfg, device) if cfg.a_bits != 16 else None
        setattr(self, STATE_ATTR, TimestepState(cfg.clip_groups, cfg.num_train_timesteps))
        self._set_phi_shape(cfg.rank, device)

    def _set_phi_shape(self, rank: int, device: torch.device | None = None) -> None:
        """(Re)allocate Phi with width `rank` (zeros, gamma ones); rank 0 removes it."""
        if rank == 0:
            self.register_parameter("phi_l", None)
            self.register_parameter("phi_r", None)
            self.register_buffer("phi_gamma", None)
            return
        device = device if device is not None else self.weight_device
        dtype = self.weight_dtype
        self.register_parameter("phi_l", nn.Parameter(torch.zeros(self.out_features, rank, device=device,
                                                                  dtype=dtype)))
        self.register_parameter("phi_r", nn.Parameter(torch.zeros(rank, self.in_features, device=device,
                                                                  dtype=dtype)))
        self.register_buffer("phi_gamma", torch.ones(rank, device=device, dtype=torch.float32))

    @property
    def weight_device(self) -> torch.device:
        src = self.weight if self.weight is not None else self.w_scale
        return src.device

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.weight.dtype if self.weight is not None else self._weight_dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, cfg: QuantConfig, calibrate: bool = True) -> "QLinear":
        """Wrap `linear` (its weight and bias Parameters are reused, not copied). With calibrate (and a
        non-meta weight) the weight quantizer is initialised and Phi is set from the SVD of W - Q(W)."""
        if not isinstance(linear, nn.Linear):
            fail("QLinear.from_linear", "linear", "an nn.Linear", type(linear).__name__, TypeError)
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, cfg,
                device="meta", dtype=linear.weight.dtype)
        q.weight = linear.weight
        q.bias = linear.bias
        q._setup(cfg, linear.weight.device)
        if calibrate and not linear.weight.is_meta:
            q.calibrate()
        return q

    @torch.no_grad()
    def calibrate(self) -> None:
        """Initialise the weight quantizer from W, then Phi from the rank-r SVD of W - Q(W)."""
        self._require_mode("qat", "calibrate")
        self.weight_quant.calibrate(self.weight)
        if self.phi_l is not None:
            residual = self.weight.float() - self.weight_quant(self.weight).float()
            l, r = init_phi(residual, self.phi_l.shape[1], self.cfg.svd)
            self.phi_l.copy_(l)
            self.phi_r.copy_(r)
            self.phi_gamma.fill_(1.0)

    def _require_mode(self, mode: str, what: str) -> None:
        if self.mode != mode:
            fail(f"QLinear.{what}", "mode", repr(mode), repr(self.mode))

    # --- Phi -----------------------------------------------------------------------------------------------

    @property
    def phi_rank(self) -> int:
        """Number of nonzero gamma entries (0 when Phi is removed)."""
        return 0 if self.phi_gamma is None else int((self.phi_gamma != 0).sum())

    @property
    def phi_width(self) -> int:
        """Allocated Phi columns (0 when removed)."""
        return 0 if self.phi_l is None else self.phi_l.shape[1]

    def remove_phi(self) -> None:
        """Delete L, R and gamma: the layer becomes a plain quantized linear."""
        self._set_phi_shape(0)

    def _phi(self, x_hat: torch.Tensor) -> torch.Tensor:
        # (L * gamma) (R x): two thin GEMMs, no N x K product materialised.
        return F.linear(F.linear(x_hat, self.phi_r), self.phi_l * self.phi_gamma.to(self.phi_l.dtype))

    # --- forward -------------------------------------------------------------------------------------------

    def _row_index(self, x: torch.Tensor) -> torch.Tensor:
        state = getattr(self, STATE_ATTR)
        return row_group_index(state, x, self.cfg.clip_groups, "QLinear")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            fail("QLinear", "x", f"a tensor [..., {self.in_features}]", tuple(x.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.mode == "deploy":
            return self._forward_deploy(x)
        x_hat = x if self.act_quant is None else self.act_quant(x, self._row_index(x))
        y = F.linear(x_hat, self.weight_quant(self.weight), self.bias)
        return y if self.phi_l is None else y + self._phi(x_hat)

    def _deploy_clips(self, x: torch.Tensor) -> tuple[Any, Any]:
        if self.cfg.a_bits == 16:
            return 1.0, 1.0
        index = self._row_index(x)
        # take, not [index]: a 0-d tensor index calls .item(), a graph break under torch.compile.
        return torch.take(self.a_clip_lo, index), torch.take(self.a_clip_hi, index)

    def _forward_deploy(self, x: torch.Tensor) -> torch.Tensor:
        c_lo, c_hi = self._deploy_clips(x)
        y = ops.lowbit_linear(x, self.w_packed, self.w_scale, self.w_zero, self.bias,
                              w_bits=self.cfg.w_bits, a_bits=self.cfg.a_bits, clip_lo=c_lo, clip_hi=c_hi)
        if self.phi_l is None:
            return y
        with torch.no_grad():
            x_hat = x if self.cfg.a_bits == 16 else ops.fake_quant_act(x, self.cfg.a_bits, c_lo, c_hi)
        return y + self._phi(x_hat).to(y.dtype)

    # --- conversion ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def to_deploy(self, keep_phi: bool = False) -> "QLinear":
        """Switch to packed weights + low-bit kernels; the latent fp `weight` is dropped. Refuses while Phi
        has rank > 0 unless keep_phi (Phi is then evaluated on the fake-quantized activation)."""
        if self.mode == "deploy":
            return self
        if self.phi_l is not None and not keep_phi:
            if self.phi_rank > 0:
                fail("QLinear.to_deploy", "keep_phi", "True while Phi has rank > 0 (finish rank decay first)",
                     f"False with Phi rank {self.phi_rank}")
            self.remove_phi()
        wq = self.weight_quant
        codes = wq.codes(self.weight)
        self.register_buffer("w_packed", ops.pack(codes, self.cfg.w_bits))
        self.register_buffer("w_scale", wq.effective_scale().detach().float().clone())
        self.register_buffer("w_zero", wq.zero.detach().float().clone())
        if self.act_quant is not None:
            c_lo, c_hi = self.act_quant.clip_table()
            self.register_buffer("a_clip_lo", c_lo.detach().float().clone())
            self.register_buffer("a_clip_hi", c_hi.detach().float().clone())
        self._weight_dtype = self.weight.dtype
        self.weight = None
        self.weight_quant = None
        self.act_quant = None
        self.mode = "deploy"
        return self

    def _dequantized_weight(self) -> torch.Tensor:
        if self.mode == "qat":
            return self.weight_quant(self.weight).detach().float()
        codes = ops.unpack(self.w_packed, self.cfg.w_bits, self.in_features)
        return ops.dequantize_weight(codes, self.w_scale, self.w_zero)

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """An nn.Linear with the dequantized weight (plus Phi folded in, when present); activations are no
        longer quantized, so it matches this layer only up to the activation quantization error."""
        w = self._dequantized_weight()
        if self.phi_l is not None:
            w = w + (self.phi_l.float() * self.phi_gamma) @ self.phi_r.float()
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device=w.device, dtype=self.weight_dtype)
        out.weight.copy_(w)
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    @torch.no_grad()
    def set_phi(self, l: torch.Tensor, r: torch.Tensor) -> None:
        """Replace Phi's factors by l [N, r'] and r [r', K] in place (the Parameter objects are kept, so an
        optimizer still refers to them); gamma is reset to ones of width r'."""
        if self.phi_l is None:
            fail("QLinear.set_phi", "self", "a layer with Phi", "Phi removed")
        if l.shape[0] != self.out_features or r.shape[1] != self.in_features or l.shape[1] != r.shape[0]:
            fail("QLinear.set_phi", "l, r", f"[{self.out_features}, r] and [r, {self.in_features}]",
                 (tuple(l.shape), tuple(r.shape)))
        for p, new in ((self.phi_l, l), (self.phi_r, r)):
            p.data = new.to(p.dtype).contiguous()
            p.grad = None  # a stale gradient would have the old shape
        self.register_buffer("phi_gamma", torch.ones(l.shape[1], device=self.phi_l.device,
                                                   dtype=torch.float32))

    def set_phi_width(self, rank: int) -> None:
        """Resize Phi to `rank` columns (contents then come from a state dict); 0 removes it."""
        if rank != self.phi_width:
            self._set_phi_shape(rank)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Rank decay shrinks Phi in place and finally deletes it, so a checkpoint may hold a narrower Phi
        # than this module (or none): adopt the checkpoint's width before the regular loading.
        key_l = prefix + "phi_l"
        layer_present = any(prefix + k in state_dict for k in ("weight", "weight_quant.scale", "w_packed"))
        if key_l in state_dict:
            width = state_dict[key_l].shape[1]
            if self.phi_l is None or self.phi_l.shape[1] != width:
                shrink = self.phi_l is not None
                old = (self.phi_l, self.phi_r) if shrink else None
                self._set_phi_shape(width)
                if old is not None:  # keep Parameter identity (optimizers hold references)
                    old[0].data, old[1].data = self.phi_l.data, self.phi_r.data
                    self.phi_l, self.phi_r = old
        elif layer_present and self.phi_l is not None:
            self.remove_phi()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        group = "per-channel" if self.cfg.w_group_size == -1 else f"group={self.cfg.w_group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, W{self.cfg.w_bits}A{self.cfg.a_bits}, {group}, "
                f"mode={self.mode}, phi_rank={self.phi_rank}")


__all__ = ["QLinear"]
