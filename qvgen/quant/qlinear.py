"""QLinear: the drop-in quantized nn.Linear for QAT (fake quant with the auxiliary module Phi). Its deployed
form is a module of its own, `qvgen.quant.deployed.DeployedLinear` (`QLinear.to_deploy`, `qvgen.to_deploy`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.quant.config import QuantConfig
from qvgen.quant.lowrank import PhiView, init_phi
from qvgen.distributed.sharding import full_value, is_sharded, write_full_
from qvgen.quant.quantizers import ActQuantizer, WeightQuantizer
from qvgen.quant.timestep import STATE_ATTR, TimestepState, row_group_index

_PHI_KEYS = ("phi_l", "phi_r", "phi_gamma")
_DEPLOY_KEYS = ("w_packed", "w_scale", "w_zero")


class QLinear(PhiView, nn.Linear):
    """nn.Linear with QVGen fake quantization. Keeps the `weight` / `bias` names.

    y = Qw(W) Qa(x) + b + (L * gamma) (R Qa(x))   (Phi while its rank > 0)
    `to_deploy()` returns the packed DeployedLinear computing the same function. Activation clips are chosen
    per sample from the model's timestep groups (see qvgen.quant.timestep).
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
        # A standalone layer takes no timestep: clip group 0 until one is set (quantize_model replaces this
        # state by the model's, which follows the model's `timestep` argument).
        setattr(self, STATE_ATTR, TimestepState(cfg.clip_groups, cfg.num_train_timesteps, default_group=0))
        self._set_phi_shape(cfg.rank, device)

    def _set_phi_shape(self, rank: int, device: torch.device | None = None) -> None:
        """Allocate Phi with capacity `rank` (zeros, gamma ones, all columns active); rank 0 removes it.

        New Parameter objects: only at construction, loading or after training (RankDecay.finish), never
        while a graph, a DDP bucket or an FSDP2 shard may hold the old ones. Rank decay itself keeps these
        shapes and masks columns (see set_phi)."""
        self._phi_active = rank
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
        return self.weight.device

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.weight.dtype

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
    def phi_sharded(self) -> bool:
        """Whether Phi's factors are sharded DTensors (FSDP2): they can then not be removed, only masked."""
        return is_sharded(self.phi_l)

    def remove_phi(self) -> None:
        """Delete L, R and gamma: the layer becomes a plain quantized linear. Replaces Parameters: call it
        only when no graph, DDP wrapper or FSDP2 sharding holds them (RankDecay.finish decides)."""
        self._set_phi_shape(0)

    def phi_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The active factors as whole fp32 tensors, L [N, w] and R [w, K] (gathered when sharded)."""
        if self.phi_l is None:
            fail("QLinear.phi_factors", "self", "a layer with Phi", "Phi removed")
        w = self._phi_active
        return full_value(self.phi_l)[:, :w].float(), full_value(self.phi_r)[:w].float()

    # --- forward -------------------------------------------------------------------------------------------

    def _row_index(self, x: torch.Tensor) -> torch.Tensor:
        state = getattr(self, STATE_ATTR)
        return row_group_index(state, x, self.cfg.clip_groups, "QLinear")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            fail("QLinear", "x", f"a tensor [..., {self.in_features}]", tuple(x.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x_hat = x if self.act_quant is None else self.act_quant(x, self._row_index(x))
        y = F.linear(x_hat, self.weight_quant(self.weight), self.bias)
        return y if self.phi_l is None else y + self._phi(x_hat)

    # --- conversion ----------------------------------------------------------------------------------------

    def to_deploy(self, keep_phi: bool = False) -> nn.Module:
        """The packed deployment module computing this layer's function (a new DeployedLinear sharing the
        bias; this layer is left as it is). Refuses while Phi has rank > 0 unless keep_phi (Phi is then
        evaluated on the fake-quantized activation)."""
        from qvgen.quant.deployed import DeployedLinear  # deployed.py knows QLinear's fields, not the other way
        return DeployedLinear.from_qlinear(self, keep_phi=keep_phi)

    def _dequantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight).detach().float()

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
        """Make Phi = l @ r with l [N, w], r [w, K], w <= phi_capacity (w = 0: Phi contributes nothing).

        Written into the existing storage (copy_; through distribute_tensor when sharded): the columns past
        w are zeroed and masked (gamma 0), the first w get gamma 1. Parameter objects and shapes never
        change, so a live graph, an optimizer, DDP and FSDP2 all keep working."""
        op = "QLinear.set_phi"
        if self.phi_l is None:
            fail(op, "self", "a layer with Phi", "Phi removed")
        cap = self.phi_capacity
        if (l.dim() != 2 or r.dim() != 2 or l.shape[0] != self.out_features or r.shape[1] != self.in_features
                or l.shape[1] != r.shape[0] or l.shape[1] > cap):
            fail(op, "l, r", f"[{self.out_features}, w] and [w, {self.in_features}] with w <= {cap}",
                 (tuple(l.shape), tuple(r.shape)))
        w = l.shape[1]
        l, r = full_value(l), full_value(r)
        full_l = torch.zeros(self.out_features, cap, dtype=torch.float32, device=l.device)
        full_r = torch.zeros(cap, self.in_features, dtype=torch.float32, device=r.device)
        full_l[:, :w], full_r[:w] = l, r
        write_full_(self.phi_l, full_l)
        write_full_(self.phi_r, full_r)
        gamma = torch.zeros(cap, dtype=torch.float32, device=self.phi_gamma.device)
        gamma[:w] = 1.0
        self.phi_gamma.copy_(gamma)
        self._phi_active = w

    def set_phi_width(self, rank: int) -> None:
        """Prepare Phi for a state dict of `rank` active columns (contents come from the state dict): within
        the capacity only the active width changes; wider reallocates; 0 removes Phi (load time only)."""
        if rank == 0:
            if self.phi_l is not None:
                self.remove_phi()
        elif self.phi_l is None or rank > self.phi_capacity:
            self._set_phi_shape(rank)
        else:
            self._phi_active = rank

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Phi keeps its capacity during rank decay (masked columns are zero, gamma 0), and checkpoints of
        # older versions hold a narrower Phi (or none once decayed): zero-pad a narrower one to this
        # module's capacity (Parameters kept), reallocate only for a wider one, drop Phi when the layer's
        # entry has none. The active width is the number of nonzero gamma entries.
        keys = {k: prefix + k for k in ("phi_l", "phi_r", "phi_gamma")}
        layer_present = any(prefix + k in state_dict for k in ("weight", "weight_quant.scale", "w_packed"))
        if keys["phi_l"] in state_dict:
            width = state_dict[keys["phi_l"]].shape[1]
            if self.phi_l is None or width > self.phi_capacity:
                self._set_phi_shape(width)
            elif width < self.phi_capacity:
                self._pad_phi_entries(state_dict, keys, width)
            gamma = state_dict.get(keys["phi_gamma"])
            self._phi_active = width if gamma is None else int((gamma != 0).sum())
        elif layer_present and self.phi_l is not None:
            self.remove_phi()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _pad_phi_entries(self, state_dict: dict, keys: dict[str, str], width: int) -> None:
        pad = self.phi_capacity - width
        for name, dim in (("phi_l", 1), ("phi_r", 0), ("phi_gamma", 0)):
            t = state_dict.get(keys[name])
            if t is not None:
                shape = list(t.shape)
                shape[dim] = pad
                state_dict[keys[name]] = torch.cat([t, t.new_zeros(shape)], dim)

    def extra_repr(self) -> str:
        group = "per-channel" if self.cfg.w_group_size == -1 else f"group={self.cfg.w_group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, W{self.cfg.w_bits}A{self.cfg.a_bits}, {group}, "
                f"mode={self.mode}, phi_rank={self.phi_rank}")


__all__ = ["QLinear"]
