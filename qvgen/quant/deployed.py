"""DeployedLinear: the packed low-bit linear layer a QLinear becomes at deployment (`qvgen.to_deploy`).

Packed weight codes (the checkpoint layout), fp32 scales / zero points and fp32 activation-clip tables are
plain buffers. At conversion and at load the codes are prepacked into the layout of the backend that runs them
(`qvgen_kernels.ops.prepack_linear`), so the first call costs what the next ones do (after a move to another
device: at the first call there); every call is one `ops.prepacked_linear`. On the CPU that layout is the codes
themselves (the same tensor, plus int32 column sums): the weights are held once, at 3, 4 or 8 bits each.

dtype behaviour: `.to(dtype)` / `.half()` / `.bfloat16()` change only the compute dtype (the bias and the
output follow it); codes stay uint8 and scales, zero points and clip tables stay fp32, bit for bit, so a bf16
model computes the same integer GEMM with the same epilogue constants as the fp32 one.

An nn.Linear subclass (with `weight` None) so that code dispatching on nn.Linear (PEFT LoRA, diffusers' group
offloading) takes it for a linear layer; the input gradient is defined (straight through the activation
quantization, dY/dX = dY · Ŵ with the dequantized weight), so adapters on top of it train.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qvgen_kernels import ops
from qvgen_kernels.format import check_group_size, packed_width
from qvgen_kernels.errors import fail

from qvgen.quant.config import QuantConfig
from qvgen.quant.lowrank import PhiView
from qvgen.quant.timestep import STATE_ATTR, TimestepState, row_group_index

# Buffers whose values define the quantized function: never cast by `.to(dtype)`.
EXACT_BUFFERS = ("w_scale", "w_zero", "a_clip_lo", "a_clip_hi")


class _LowbitLinearFn(torch.autograd.Function):
    """prepacked_linear forward; backward straight through the activation quantization (as in QAT)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bias: torch.Tensor | None, layer: "DeployedLinear",
                packed: ops.PackedLinear, c_lo: Any, c_hi: Any) -> torch.Tensor:
        ctx.layer = layer
        ctx.has_bias = bias is not None
        return ops.prepacked_linear(x, packed, bias, c_lo, c_hi)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad.float() @ ctx.layer.dequantized_weight()).to(grad.dtype)
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_b, None, None, None, None


class DeployedLinear(PhiView, nn.Linear):
    """Packed low-bit linear (deployment). `weight` is None; the weights are `w_packed`, `w_scale`, `w_zero`.

    Built by `QLinear.to_deploy` (or `DeployedLinear.from_qlinear`), or empty (any device, `meta` included)
    for loading a checkpoint. Φ is kept only when converted with keep_phi (then evaluated on the fake-quantized
    activation, in the layer's own Parameters `phi_l`, `phi_r`, buffer `phi_gamma`).
    """

    mode = "deploy"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, cfg: QuantConfig | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 phi_capacity: int = 0) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: no fp weight is allocated
        cfg = cfg if cfg is not None else QuantConfig()
        if not isinstance(cfg, QuantConfig):
            fail("DeployedLinear", "cfg", "a QuantConfig", type(cfg).__name__, TypeError)
        self.in_features, self.out_features, self.cfg = in_features, out_features, cfg
        self.compute_dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.register_parameter("weight", None)
        self.bias = (nn.Parameter(torch.zeros(out_features, device=device, dtype=self.compute_dtype),
                                  requires_grad=False) if bias else None)
        groups = check_group_size("DeployedLinear", cfg.w_group_size, in_features)
        pshape = (out_features,) if cfg.w_group_size == -1 else (out_features, groups)
        f32 = dict(device=device, dtype=torch.float32)
        self.register_buffer("w_packed", torch.zeros(out_features, packed_width(in_features, cfg.w_bits),
                                                     device=device, dtype=torch.uint8))
        self.register_buffer("w_scale", torch.ones(pshape, **f32))
        self.register_buffer("w_zero", torch.zeros(pshape, **f32))
        if cfg.a_bits != 16:
            self.register_buffer("a_clip_lo", torch.ones(cfg.clip_groups, **f32))
            self.register_buffer("a_clip_hi", torch.ones(cfg.clip_groups, **f32))
        self.register_parameter("phi_l", None)
        self.register_parameter("phi_r", None)
        self.register_buffer("phi_gamma", None)
        self._phi_active = 0
        if phi_capacity:
            self.phi_l = nn.Parameter(torch.zeros(out_features, phi_capacity, device=device,
                                                  dtype=self.compute_dtype), requires_grad=False)
            self.phi_r = nn.Parameter(torch.zeros(phi_capacity, in_features, device=device,
                                                  dtype=self.compute_dtype), requires_grad=False)
            self.register_buffer("phi_gamma", torch.zeros(phi_capacity, **f32))
        setattr(self, STATE_ATTR, TimestepState(cfg.clip_groups, cfg.num_train_timesteps, default_group=0))
        self._packed: ops.PackedLinear | None = None
        self._clip_views: tuple | None = None

    @classmethod
    @torch.no_grad()
    def from_qlinear(cls, q: nn.Module, keep_phi: bool = False) -> "DeployedLinear":
        """The deployed form of QLinear `q` (packed codes of its quantized weight, its scales and clips, its
        bias Parameter and timestep state shared). Refuses while Φ has rank > 0 unless keep_phi."""
        op = "DeployedLinear.from_qlinear"
        if q.phi_l is not None and q.phi_rank > 0 and not keep_phi:
            fail(op, "keep_phi", "True while Phi has rank > 0 (finish rank decay first)",
                 f"False with Phi rank {q.phi_rank}")
        keep = keep_phi and q.phi_l is not None
        d = cls(q.in_features, q.out_features, q.bias is not None, q.cfg, device="meta", dtype=q.weight.dtype,
                phi_capacity=q.phi_capacity if keep else 0)
        wq = q.weight_quant
        d.w_packed = ops.pack(wq.codes(q.weight), q.cfg.w_bits)
        d.w_scale = wq.effective_scale().detach().float().clone()
        d.w_zero = wq.zero.detach().float().clone()
        if q.act_quant is not None:
            c_lo, c_hi = q.act_quant.clip_table()
            d.a_clip_lo, d.a_clip_hi = c_lo.detach().float().clone(), c_hi.detach().float().clone()
        d.bias = q.bias
        if keep:
            d.phi_l, d.phi_r, d.phi_gamma, d._phi_active = q.phi_l, q.phi_r, q.phi_gamma, q._phi_active
        setattr(d, STATE_ATTR, getattr(q, STATE_ATTR))
        d.prepack()
        return d

    @property
    def qweight(self) -> torch.Tensor:
        """The packed codes under the name adapter libraries (PEFT) look for on quantized layers to find the
        layer's device when `weight` is None; the dtype they use is `compute_dtype`."""
        return self.w_packed

    # --- forward -------------------------------------------------------------------------------------------

    def _clips(self, x: torch.Tensor) -> tuple[Any, Any]:
        if self.cfg.a_bits == 16:
            return 1.0, 1.0
        if self.cfg.clip_groups == 1:  # one clip pair for every row: the [1] tables as they are
            return self.a_clip_lo, self.a_clip_hi
        state = getattr(self, STATE_ATTR)
        if isinstance(state, TimestepState) and state.groups is None and state.default_group is not None:
            return self._default_clips(state.default_group)  # no timestep set: the default group's pair
        index = row_group_index(getattr(self, STATE_ATTR), x, self.cfg.clip_groups, "DeployedLinear")
        # index_select, not [index] (a 0-d tensor index calls .item(), a graph break under torch.compile)
        # nor take (Inductor's decomposition of take guards on the index's value).
        flat = index.reshape(-1)
        return (self.a_clip_lo.index_select(0, flat).view(index.shape),
                self.a_clip_hi.index_select(0, flat).view(index.shape))

    def _default_clips(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The [1] views of clip group g, kept between calls (each slice is a tensor op: a small call's cost)
        while the clip buffers hold the same memory; plain slices under torch.compile."""
        lo, hi = self._buffers["a_clip_lo"], self._buffers["a_clip_hi"]
        if torch.compiler.is_compiling():
            return lo[g:g + 1], hi[g:g + 1]
        key = (g, lo.data_ptr(), hi.data_ptr())  # a replaced buffer or swapped .data (offloading) is a new key
        cached = self.__dict__.get("_clip_views")
        if cached is None or cached[0] != key:
            cached = self._clip_views = (key, lo[g:g + 1], hi[g:g + 1])
        return cached[1], cached[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed
        # Rebuilt after .to() / loading (_packed reset) and after a move that bypasses _apply (diffusers' group
        # offloading swaps tensor .data between devices).
        if packed is None or packed.device != x.device:
            packed = self.prepack()
        c_lo, c_hi = self._clips(x)
        if x.requires_grad and torch.is_grad_enabled():
            y = _LowbitLinearFn.apply(x, self.bias, self, packed, c_lo, c_hi)
        else:  # prepacked_linear checks x itself
            y = ops.prepacked_linear(x, packed, self.bias, c_lo, c_hi)
        if self.phi_l is None:
            return y
        with torch.no_grad():
            x_hat = x if self.cfg.a_bits == 16 else ops.fake_quant_act(x, self.cfg.a_bits, c_lo, c_hi)
        return y + self._phi(x_hat).to(y.dtype)

    @torch.no_grad()
    def prepack(self, backend: str | None = None) -> ops.PackedLinear:
        """(Re)build the weights in the layout of `backend` (None: the automatic choice for the buffers'
        device, or $QVGEN_BACKEND). Done at conversion and lazily after `.to()` / loading."""
        if self.w_packed.is_meta:
            fail("DeployedLinear.prepack", "w_packed", "loaded weights (not on the meta device)",
                 "a meta tensor: the layer was built empty and never loaded")
        self._packed = ops.prepack_linear(self.w_packed, self.w_scale, self.w_zero, w_bits=self.cfg.w_bits,
                                          a_bits=self.cfg.a_bits, k=self.in_features, backend=backend)
        return self._packed

    @torch.no_grad()
    def dequantized_weight(self) -> torch.Tensor:
        """Ŵ = s (q - z), fp32 [N, K]."""
        codes = ops.unpack(self.w_packed, self.cfg.w_bits, self.in_features)
        return ops.dequantize_weight(codes, self.w_scale, self.w_zero)

    def _layout_inputs(self) -> tuple[Any, ...]:
        return tuple(self._buffers.get(k) for k in ("w_packed", "w_scale", "w_zero"))

    def _prepack_if_loaded(self) -> None:
        """Build the layout now (at load) unless the buffers are still empty (meta)."""
        if not self.w_packed.is_meta:
            self.prepack()

    def _apply(self, fn: Any, recurse: bool = True) -> "DeployedLinear":
        # A dtype change becomes the compute dtype; the exact buffers keep fp32 (only their device follows).
        exact = {k: self._buffers[k] for k in EXACT_BUFFERS if self._buffers.get(k) is not None}
        before = self._layout_inputs()
        super()._apply(fn, recurse)
        for k, old in exact.items():
            new = self._buffers[k]
            if new.dtype != old.dtype:
                self.compute_dtype = new.dtype
                self._buffers[k] = old.to(new.device)
        if self.bias is not None:
            self.compute_dtype = self.bias.dtype
        # A dtype-only cast keeps the codes and scales, hence the layout. A move rebuilds it at the next call on
        # the new device (offloading moves layers back and forth: no layout for a device the layer only rests on).
        if any(a is not b for a, b in zip(before, self._layout_inputs())):
            self._packed = None
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        self._packed = None  # new codes or scales: rebuild the deployed layout on next use
        gamma = state_dict.get(prefix + "phi_gamma")
        if gamma is not None and self.phi_gamma is not None:
            self._phi_active = int((gamma != 0).sum())
        errors = args[4] if len(args) > 4 else kwargs.get("error_msgs", [])
        n_errors = len(errors)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if len(errors) == n_errors:  # at load, not at the first call (a failed load reports its own errors)
            self._prepack_if_loaded()

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """An nn.Linear with the dequantized weight (plus Φ, when kept); activations are no longer quantized."""
        w = self.dequantized_weight()
        if self.phi_l is not None:
            w = w + (self.phi_l.float() * self.phi_gamma) @ self.phi_r.float()
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=w.device,
                        dtype=self.compute_dtype)
        out.weight.copy_(w)
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        group = "per-channel" if self.cfg.w_group_size == -1 else f"group={self.cfg.w_group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, W{self.cfg.w_bits}A{self.cfg.a_bits}, {group}, "
                f"compute_dtype={self.compute_dtype}, phi_rank={self.phi_rank}")


__all__ = ["DeployedLinear", "EXACT_BUFFERS"]
