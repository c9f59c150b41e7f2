"""DeployedLinear: the packed low-bit linear layer a QLinear becomes at deployment (`qvgen.to_deploy`).

Packed weight codes (the checkpoint layout), fp32 scales / zero points and fp32 activation-clip tables are
plain buffers. At conversion and at load the codes are prepacked into the layout of the backend that runs them
(`qvgen_kernels.ops.prepack_linear`), so the first call costs what the next ones do (after a move to another
device: at the first call there); every call is one `ops.prepacked_linear`. On the CPU that layout is the codes
themselves (the same tensor, plus int32 column sums): the weights are held once, at 3, 4 or 8 bits each.

dtype behaviour: `.to(dtype)` / `.half()` / `.bfloat16()` change only the compute dtype (the bias and the
output follow it); codes stay uint8 and scales, zero points and clip tables stay fp32, bit for bit, so a bf16
model computes the same integer GEMM with the same epilogue constants as the fp32 one.

An nn.Linear subclass so that code dispatching on nn.Linear (PEFT LoRA, diffusers' group offloading) takes it for a
linear layer. Its `weight` is a `DeployedWeight`: a storage-less view of the packed codes that reports what code
reading `weight` looks for (device, compute dtype, logical shape [out_features, in_features], numel = in * out, the
count of the fp weights it stands for, as `model.num_parameters()` compares) and dequantizes when an op reads its
values; it holds no bytes and is not in the state dict (the checkpoint is `w_packed`, `w_scale`, `w_zero`).
The input gradient is defined (straight through the activation quantization, dY/dX = dY · Ŵ with the
dequantized weight), so adapters on top of it train. Its storage, for code that counts bytes, is `w_packed`'s.

Concurrency: a call running while another thread casts the layer (`.to(dtype)`) sees the old or the new state.
An in-place edit (or reassignment) of `w_packed`, `w_scale` or `w_zero` rebuilds the layout at the next eager
call (checked through the tensors' version counters), where invalid values are refused.
"""

from __future__ import annotations

import weakref
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


def _alias_key(t: torch.Tensor) -> tuple:
    """What a detached alias of ``t`` stays valid for: the same tensor, storage, dtype and device."""
    return (id(t), t.data_ptr(), t.dtype, t.device)


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


class DeployedWeight(torch.Tensor):
    """`DeployedLinear.weight`: the layer's packed codes seen as its [out, in] weight, without a copy of them.

    A wrapper tensor with no storage of its own (0 bytes): device, dtype (the compute dtype), shape and numel are
    the logical weight's; an op that reads its values (matmul, `.float()`, comparisons...) gets the dequantized
    weight Ŵ = s (q - z), built at that call. Writes are refused (the weights are the packed codes: edit those and
    the scales). A move or cast of the view (`.to()`, `.data`, `.detach()`) is another view of the same layer.
    """

    # Ops that only re-describe the view: answered with another view (no dequantization, no bytes).
    _VIEW_OPS = ("detach", "alias", "_to_copy", "_pin_memory", "lift_fresh")

    @staticmethod
    def __new__(cls, layer: "DeployedLinear", device: torch.device | None = None,
                dtype: torch.dtype | None = None, shape: tuple | None = None) -> "DeployedWeight":
        device = device if device is not None else layer.w_packed.device
        dtype = dtype if dtype is not None else layer.compute_dtype
        shape = shape if shape is not None else (layer.out_features, layer.in_features)
        t = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device, requires_grad=False)
        t._layer = weakref.ref(layer)  # weak: the layer holds its view, not the reverse
        return t

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Everything is set in __new__ (torch.Tensor.__init__ would take __new__'s arguments as data)."""

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return f"DeployedWeight(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"

    def __reduce_ex__(self, protocol: int) -> Any:
        # Pickled with its layer (a whole-module pickle): a view of the unpickled layer, whose state may not be
        # set yet when this is rebuilt, hence the metadata passed explicitly.
        return _weight_view, (self.layer(), str(self.device), self.dtype, tuple(self.shape))

    def __deepcopy__(self, memo: dict) -> torch.Tensor:
        # Copying the layer: a view of the copy (already in memo, its buffers copied next). Copying the weight
        # alone: its values, as a plain tensor.
        copy_of_layer = memo.get(id(self.layer()))
        if copy_of_layer is None:
            return self.dequantize()
        out = _weight_view(copy_of_layer, str(self.device), self.dtype, tuple(self.shape))
        memo[id(self)] = out
        return out

    def untyped_storage(self) -> torch.UntypedStorage:
        """The packed codes' storage: the bytes this weight is (code that counts or dedups storages sees them
        once, shared with `w_packed`)."""
        return self.layer().w_packed.untyped_storage()

    def element_size(self) -> int:
        """0: the view holds no bytes of its own. Byte counts of the form numel x element_size (diffusers'
        get_memory_footprint) then see the codes once, as the layer's w_packed buffer, not the fp weight."""
        return 0

    @property
    def nbytes(self) -> int:
        return 0

    def layer(self) -> "DeployedLinear":
        layer = self._layer()
        if layer is None:
            fail("DeployedWeight", "layer", "the DeployedLinear this weight view belongs to", "a freed layer")
        return layer

    def dequantize(self) -> torch.Tensor:
        """Ŵ as a plain tensor in this view's dtype and on its device."""
        return self.layer().dequantized_weight().to(self.device, self.dtype)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in cls._VIEW_OPS and isinstance(args[0], cls):
            src = args[0]
            device = kwargs.get("device") or (torch.device("cpu") if name == "_pin_memory" else src.device)
            return cls(src.layer(), device=torch.device(device), dtype=kwargs.get("dtype") or src.dtype)
        if func._schema.is_mutable:
            fail("DeployedWeight", str(func), "a read (the weights are the packed codes w_packed and the scales)",
                 "an in-place write into the deployed weight view", TypeError)
        unwrap = lambda a: a.dequantize() if isinstance(a, cls) else a  # noqa: E731
        args = torch.utils._pytree.tree_map(unwrap, args)
        kwargs = torch.utils._pytree.tree_map(unwrap, kwargs)
        return func(*args, **kwargs)


def _weight_view(layer: "DeployedLinear", device: str, dtype: torch.dtype, shape: tuple) -> DeployedWeight:
    out = DeployedWeight(layer, device=torch.device(device), dtype=dtype, shape=shape)
    out._is_param = True
    return out


class DeployedLinear(PhiView, nn.Linear):
    """Packed low-bit linear (deployment). The weights are `w_packed`, `w_scale`, `w_zero`; `weight` is their
    storage-less `DeployedWeight` view (not in the state dict).

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
        self.register_parameter("weight", None)  # the DeployedWeight view, once the buffers exist
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
        self._packed_stamp: tuple | None = None
        self._weight_layout = "codes"  # the layout `w_packed` holds (ops.WEIGHT_LAYOUTS)
        self._clip_views: tuple | None = None
        self._bias_alias: tuple | None = None
        self._refresh_weight()

    def _refresh_weight(self) -> None:
        """Point `weight` at the current codes' device and the compute dtype (after a move, cast or load)."""
        view = DeployedWeight(self)
        self._parameters["weight"] = nn.Parameter(view, requires_grad=False)

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
        d._refresh_weight()
        d.prepack()
        return d

    @property
    def qweight(self) -> torch.Tensor:
        """The packed codes under the name adapter libraries (PEFT) look for on quantized layers (the raw uint8
        tensor as held: the checkpoint codes, or on CUDA the tensor-core layout they were turned into; `weight` is
        the same weights seen as the [out, in] weight in the compute dtype)."""
        return self.w_packed

    def checkpoint_codes(self) -> torch.Tensor:
        """The checkpoint codes (uint8 [out, packed_width(in, w_bits)]): `w_packed` itself, or derived exactly from
        the backend layout it holds (what `state_dict` saves)."""
        return ops.layout_codes(self.w_packed, self._weight_layout, self.cfg.w_bits, self.in_features,
                                self.out_features)

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

    def _bias_now(self) -> torch.Tensor | None:
        """The bias for an inference call: a detached alias of its current storage, kept between calls while
        the Parameter holds the same storage and dtype (the Parameter itself when its gradient is asked for, or
        under torch.compile). `.to(dtype)` swaps the Parameter's data in place (`param.data = cast`), which a
        kernel reading the Parameter itself could see half done (a dtype mismatch error from a call running in
        another thread); the alias keeps the state it was taken from."""
        b = self.bias
        if b is None or torch.compiler.is_compiling() or (b.requires_grad and torch.is_grad_enabled()):
            return b
        cached = self.__dict__.get("_bias_alias")
        if cached is None or cached[0] != _alias_key(b):
            cached = self._bias_alias = (_alias_key(b), b.detach())
        return cached[1]

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        """y = x Ŵ^T + b (plus Φ when kept), then `activation` if given ("gelu_tanh", see `qvgen.artifact.fuse`):
        in the kernel's epilogue for inference without Φ, else as a separate op after y."""
        packed = self._packed
        # Rebuilt after .to() / loading (_packed reset), after a move that bypasses _apply (diffusers' group
        # offloading swaps tensor .data between devices) and after an edit of the codes, scales or zero points
        # (in place or by assignment: a layout may hold values derived from them, e.g. grouped scales).
        if packed is None or packed.device != x.device or (
                not torch.compiler.is_compiling() and self._layout_stamp() != self._packed_stamp):
            packed = self.prepack()
        c_lo, c_hi = self._clips(x)
        if not (x.requires_grad and torch.is_grad_enabled()):
            bias = self._bias_now()
            if self.phi_l is None:  # inference: one op, the activation inside it (prepacked_linear checks both)
                return ops.prepacked_linear(x, packed, bias, c_lo, c_hi, activation)
            y = ops.prepacked_linear(x, packed, bias, c_lo, c_hi)
        else:
            y = _LowbitLinearFn.apply(x, self.bias, self, packed, c_lo, c_hi)
        if self.phi_l is not None:
            with torch.no_grad():
                x_hat = x if self.cfg.a_bits == 16 else ops.fake_quant_act(x, self.cfg.a_bits, c_lo, c_hi)
            y = y + self._phi(x_hat).to(y.dtype)
        if activation is None:
            return y
        if activation not in ops.ACTIVATIONS:
            fail("DeployedLinear.forward", "activation", f"None or one of {tuple(ops.ACTIVATIONS)}", repr(activation))
        return ops.ACTIVATIONS[activation](y)

    @torch.no_grad()
    def prepack(self, backend: str | None = None) -> ops.PackedLinear:
        """(Re)build the weights in the layout of `backend` (None: the automatic choice for the buffers'
        device, or $QVGEN_BACKEND). Done at conversion and lazily after `.to()` / loading."""
        if self.w_packed.is_meta:
            fail("DeployedLinear.prepack", "w_packed", "loaded weights (not on the meta device)",
                 "a meta tensor: the layer was built empty and never loaded")
        codes = self.checkpoint_codes()
        packed = ops.prepack_linear(codes, self.w_scale, self.w_zero, w_bits=self.cfg.w_bits,
                                    a_bits=self.cfg.a_bits, k=self.in_features, backend=backend)
        # One copy of the weights: `w_packed` becomes the layout's weight tensor when that is not the codes
        # themselves (CUDA's tensor-core layout), and the codes again when the new layout is.
        if packed.weight_layout != "codes" or self._weight_layout != "codes":
            self._buffers["w_packed"] = packed.tensors[0]
            self._weight_layout = packed.weight_layout
            self._refresh_weight()
        stamp = self._layout_stamp()
        self._packed_stamp, self._packed = stamp, packed  # the stamp first: a reader never pairs a new layout
        return packed  # with an older stamp (it would only rebuild once more)

    def _layout_stamp(self) -> tuple:
        """Which tensors, at which in-place version, the layout was built from."""
        b = self._buffers
        w, s, z = b["w_packed"], b["w_scale"], b["w_zero"]
        try:
            return (id(w), w._version, id(s), s._version, id(z), z._version)
        except RuntimeError:  # inference-mode tensors keep no version counter: replacement is still seen
            return (id(w), id(s), id(z))

    @torch.no_grad()
    def dequantized_weight(self) -> torch.Tensor:
        """Ŵ = s (q - z), fp32 [N, K]."""
        codes = ops.unpack(self.checkpoint_codes(), self.cfg.w_bits, self.in_features)
        return ops.dequantize_weight(codes, self.w_scale, self.w_zero)

    def _layout_inputs(self) -> tuple[Any, ...]:
        return tuple(self._buffers.get(k) for k in ("w_packed", "w_scale", "w_zero"))

    def _prepack_if_loaded(self) -> None:
        """Build the layout now (at load) unless the buffers are still empty (meta) or a loader that hands the
        layer one tensor at a time defers it to its end (`defer_prepack`)."""
        if not self.w_packed.is_meta and not self.__dict__.get("_prepack_deferred", False):
            self.prepack()

    def defer_prepack(self, deferred: bool) -> None:
        """While deferred, loading a state dict does not build the layout (a loader that loads codes, scales and
        zero points one call each would build it once per tensor); ending the deferral builds it once."""
        self._prepack_deferred = deferred
        if not deferred:
            self._prepack_if_loaded()

    def _apply(self, fn: Any, recurse: bool = True) -> "DeployedLinear":
        # A dtype change becomes the compute dtype; the exact buffers keep fp32 (only their device follows). So
        # that a call running in another thread sees the old or the new state, never a mix, no buffer is ever
        # replaced by a cast copy to be restored later: `keep_exact` gives the exact buffers only their new
        # device, the weight view is replaced once at the end, and the layout is kept (a dtype-only cast keeps
        # the codes and scales) or dropped in one assignment (a move: rebuilt at the next call on the new
        # device; offloading moves layers back and forth, no layout for a device the layer only rests on).
        exact = {id(t) for k in EXACT_BUFFERS if (t := self._buffers.get(k)) is not None}
        weight = self._parameters.get("weight")
        cast: list[torch.dtype] = []

        def keep_exact(t: torch.Tensor) -> torch.Tensor:
            if t is weight:  # the view follows the buffers (below), it is not moved itself
                return t
            out = fn(t)
            if id(t) in exact and out.dtype != t.dtype:
                cast.append(out.dtype)
                return t.to(out.device)
            return out

        before = self._layout_inputs()
        super()._apply(keep_exact, recurse)
        if cast:
            self.compute_dtype = cast[-1]
        if self.bias is not None:
            self.compute_dtype = self.bias.dtype
        if any(a is not b for a, b in zip(before, self._layout_inputs())):
            self._packed = None
        self._refresh_weight()
        if self.bias is not None:  # taken by the casting thread: a concurrent call finds it current and never
            self._bias_alias = (_alias_key(self.bias), self.bias.detach())  # detaches a Parameter being swapped
        return self

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        weight = self._parameters.pop("weight", None)  # a view of w_packed: the checkpoint holds the codes once
        try:
            super()._save_to_state_dict(destination, prefix, keep_vars)
        finally:
            self._parameters["weight"] = weight
        if self._weight_layout != "codes" and prefix + "w_packed" in destination:
            destination[prefix + "w_packed"] = self.checkpoint_codes()  # the checkpoint format, whatever is held

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        self._packed = None  # new codes or scales: rebuild the deployed layout on next use
        if self._weight_layout != "codes":  # receive codes (the checkpoint format) into a codes-shaped buffer
            self._buffers["w_packed"] = self.checkpoint_codes()
            self._weight_layout = "codes"
        gamma = state_dict.get(prefix + "phi_gamma")
        if gamma is not None and self.phi_gamma is not None:
            self._phi_active = int((gamma != 0).sum())
        errors = args[4] if len(args) > 4 else kwargs.get("error_msgs", [])
        n_errors = len(errors)
        weight = self._parameters.pop("weight", None)  # not a checkpoint entry (see _save_to_state_dict)
        try:
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        finally:
            self._parameters["weight"] = weight
        self._refresh_weight()
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
