"""The public functional API of the kernel library, the same on every backend.

Every function validates its arguments statically (types, dtypes, shapes, devices: a ``TypeError`` /
``ValueError`` naming the op and the argument), flattens leading dims to the 2-D custom ops of
``_ops.py`` and restores the shape.

What is checked when:
    always                     types, dtypes, shapes, devices, bits, python-scalar clips and grad_scale
                               (host-side metadata, no device work).
    CPU tensors, or anywhere   the data: NaN/Inf in x / w, codes <= 2^bits - 1 (``pack``), scale finite
    with QVGEN_CHECK_DATA=1    and > 0, zero finite, tensor clips in (0, 1]. Each of these reads a
                               value back to the host; on an accelerator that is a device->host sync per
                               op (a pipeline stall, and no CUDA-graph capture), so off CPU they are
                               skipped unless ``$QVGEN_CHECK_DATA=1`` (read on every call) asks for them.
                               Unchecked bad data there gives wrong results (NaN outputs, truncated
                               codes), not an error.
``backend`` picks the implementation (see ``registry.py``): None = ``$QVGEN_BACKEND`` or automatic.

Notation: M tokens (product of leading dims), K features, N output channels, G weight groups, b bits.
"""

from __future__ import annotations

import functools
import math
from typing import Union

import torch
from torch import Tensor

from . import _ops, backends, registry  # noqa: F401  (backends: registrations)
from .format import ACT_BITS, PACKED_BITS, WEIGHT_BITS, check_accumulator, check_bits, packed_width
from .errors import fail
from .reference import linear as _ref_linear
from .reference import quant as _ref_quant

Clip = Union[float, Tensor]
_ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TRAIN_DTYPES = _ACT_DTYPES + (torch.float64,)  # fake quant also takes fp64 (gradcheck)
_QUANT_BITS = tuple(b for b in ACT_BITS if b in PACKED_BITS)


def _tensor(op: str, arg: str, t: object, dtypes: tuple[torch.dtype, ...] | None = None,
            ndim: int | None = None) -> Tensor:
    """Check a tensor argument's type, dtype and number of dims (None = any, but at least 1)."""
    if not isinstance(t, Tensor):
        fail(op, arg, "a torch.Tensor", type(t).__name__, TypeError)
    if dtypes is not None and t.dtype not in dtypes:
        fail(op, arg, f"dtype in {tuple(str(d) for d in dtypes)}", t.dtype, TypeError)
    if (ndim is None and t.dim() < 1) or (ndim is not None and t.dim() != ndim):
        fail(op, arg, f"{ndim or 'at least 1'}-D tensor", f"shape {tuple(t.shape)}")
    if t.dim() and t.shape[-1] == 0:
        fail(op, arg, "a non-empty last dim", f"shape {tuple(t.shape)}")
    return t


def _float_tensor(op: str, arg: str, t: object, ndim: int | None = None) -> Tensor:
    if isinstance(t, Tensor) and not t.is_floating_point():
        fail(op, arg, "a floating-point tensor", t.dtype, TypeError)
    return _tensor(op, arg, t, ndim=ndim)


def _same_device(op: str, ref: Tensor, **tensors: Tensor | None) -> None:
    for arg, t in tensors.items():
        if t is not None and t.device != ref.device:
            fail(op, arg, f"device {ref.device} (as the first tensor argument)", t.device)


def _positive_int(op: str, arg: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        fail(op, arg, "a positive int", repr(v))
    return v


def _clip(op: str, arg: str, clip: object, x: Tensor, dtype: torch.dtype) -> Tensor:
    """A float or a tensor broadcastable to ``x.shape[:-1]`` -> per-row ``[M]`` tensor of ``dtype``."""
    lead = x.shape[:-1]
    if isinstance(clip, (float, int)) and not isinstance(clip, bool):
        if not 0.0 < clip <= 1.0:
            fail(op, arg, "a clip factor in (0, 1]", clip)
        return torch.full((math.prod(lead),), float(clip), dtype=dtype, device=x.device)
    if not isinstance(clip, Tensor):
        fail(op, arg, "a float or a tensor", type(clip).__name__, TypeError)
    if not clip.is_floating_point():
        fail(op, arg, "a floating-point tensor", clip.dtype, TypeError)
    _same_device(op, x, **{arg: clip})
    try:
        ok = torch.broadcast_shapes(clip.shape, lead) == lead
    except RuntimeError:
        ok = False
    if not ok:
        fail(op, arg, f"a shape broadcastable to x.shape[:-1] = {tuple(lead)}", f"{tuple(clip.shape)}")
    return clip.to(dtype).expand(lead).reshape(-1)


def _weight_params(op: str, scale: object, zero: object, n: int, k: int, ref: Tensor,
                   dtype: torch.dtype = torch.float32, names: tuple[str, str] = ("scale", "zero")
                   ) -> tuple[Tensor, Tensor]:
    """scale / zero: float ``[N]`` (per channel) or ``[N, G]`` with G | K (per group), cast to ``dtype``."""
    scale, zero = _float_tensor(op, names[0], scale), _float_tensor(op, names[1], zero)
    _same_device(op, ref, **{names[0]: scale, names[1]: zero})
    if scale.dim() > 2 or scale.shape[0] != n:
        fail(op, names[0], f"shape [N] or [N, G] with N={n}", f"{tuple(scale.shape)}")
    if scale.dim() == 2 and k % scale.shape[1]:
        fail(op, names[0], f"a number of groups G dividing K={k}", scale.shape[1])
    if zero.shape != scale.shape:
        fail(op, names[1], f"the shape of {names[0]} {tuple(scale.shape)}", f"{tuple(zero.shape)}")
    return scale.to(dtype), zero.to(dtype)


def _bias(op: str, bias: object, n: int, ref: Tensor) -> Tensor | None:
    if bias is None:
        return None
    bias = _float_tensor(op, "bias", bias, ndim=1)
    _same_device(op, ref, bias=bias)
    if bias.shape[0] != n:
        fail(op, "bias", f"shape [{n}]", f"{tuple(bias.shape)}")
    return bias


def _backend(op: str, backend: object) -> str | None:
    """A valid backend name (or None), checked before any work; availability is checked at dispatch."""
    if backend is not None:
        registry.normalize(op, backend)  # type: ignore[arg-type]
    return backend  # type: ignore[return-value]


def _group_k(k: int, w_scale: Tensor) -> int:
    """Columns summed into one integer accumulator: K per channel, the group size per group."""
    return k // w_scale.shape[1] if w_scale.dim() == 2 else k


def _rows(t: Tensor) -> Tensor:
    """Leading dims flattened: ``[..., K]`` -> contiguous ``[M, K]``."""
    return t.reshape(-1, t.shape[-1]).contiguous()


def pack(codes: Tensor, bits: int, *, backend: str | None = None) -> Tensor:
    """uint8 codes ``[..., K]`` in ``[0, 2^bits - 1]`` -> packed uint8 ``[..., packed_width(K, bits)]``."""
    backend = _backend("pack", backend)
    _tensor("pack", "codes", codes, (torch.uint8,))
    check_bits("pack", "bits", bits, PACKED_BITS)
    out = _ops.pack(_rows(codes), bits, backend)
    return out.reshape(*codes.shape[:-1], out.shape[-1])


def unpack(packed: Tensor, bits: int, k: int, *, backend: str | None = None) -> Tensor:
    """Packed uint8 ``[..., packed_width(k, bits)]`` -> uint8 codes ``[..., k]``."""
    backend = _backend("unpack", backend)
    _tensor("unpack", "packed", packed, (torch.uint8,))
    check_bits("unpack", "bits", bits, PACKED_BITS)
    _positive_int("unpack", "k", k)
    if packed.shape[-1] != packed_width(k, bits):
        fail("unpack", "packed", f"last dim packed_width(k={k}, bits={bits}) = {packed_width(k, bits)}",
             f"shape {tuple(packed.shape)}")
    return _ops.unpack(_rows(packed), bits, k, backend).reshape(*packed.shape[:-1], k)


def quantize_per_token(x: Tensor, bits: int, clip_lo: Clip = 1.0, clip_hi: Clip = 1.0, *,
                       backend: str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dynamic per-token quantization of ``x [..., K]`` (fp32/fp16/bf16).

    Returns ``(packed uint8 [..., packed_width(K, bits)], scale fp32 [...], zero int32 [...],
    rowsum int32 [...])`` with ``rowsum = sum_k (q_x - z_x)``.
    """
    op = "quantize_per_token"
    backend = _backend(op, backend)
    _tensor(op, "x", x, _ACT_DTYPES)
    check_bits(op, "bits", bits, _QUANT_BITS)
    lo, hi = _clip(op, "clip_lo", clip_lo, x, torch.float32), _clip(op, "clip_hi", clip_hi, x, torch.float32)
    packed, scale, zero, rowsum = _ops.quantize_per_token(_rows(x), bits, lo, hi, backend)
    lead = x.shape[:-1]
    return packed.reshape(*lead, packed.shape[-1]), scale.reshape(lead), zero.reshape(lead), rowsum.reshape(lead)


def quantize_weight(w: Tensor, scale: Tensor, zero: Tensor, bits: int, *,
                    backend: str | None = None) -> Tensor:
    """uint8 codes ``clamp(round(w / s + z), 0, P)`` of ``w [N, K]``; scale / zero ``[N]`` or ``[N, G]``."""
    backend = _backend("quantize_weight", backend)
    _tensor("quantize_weight", "w", w, _ACT_DTYPES, ndim=2)
    check_bits("quantize_weight", "bits", bits, WEIGHT_BITS)
    scale, zero = _weight_params("quantize_weight", scale, zero, w.shape[0], w.shape[1], w)
    return _ops.quantize_weight(w.contiguous(), scale, zero, bits, backend)


def dequantize_weight(codes: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """fp32 ``s * (q - z)`` of unpacked uint8 codes ``[N, K]``; scale / zero ``[N]`` or ``[N, G]``."""
    _tensor("dequantize_weight", "codes", codes, (torch.uint8,), ndim=2)
    scale, zero = _weight_params("dequantize_weight", scale, zero, codes.shape[0], codes.shape[1], codes)
    return _ref_quant.dequantize_weight(codes, scale, zero)


def _packed_weight(op: str, w_packed: object, w_bits: int, k: int, ref: Tensor) -> Tensor:
    """``w_packed`` uint8 ``[N, packed_width(k, w_bits)]`` on ``ref``'s device."""
    w_packed = _tensor(op, "w_packed", w_packed, (torch.uint8,), ndim=2)
    _same_device(op, ref, w_packed=w_packed)
    if w_packed.shape[0] == 0:
        fail(op, "w_packed", "at least one output channel (N >= 1 rows)", f"shape {tuple(w_packed.shape)}")
    if w_packed.shape[1] != packed_width(k, w_bits):
        fail(op, "w_packed", f"shape [N, packed_width(K={k}, w_bits={w_bits}) = {packed_width(k, w_bits)}]"
             " (K of the activations)", f"{tuple(w_packed.shape)}")
    return w_packed.contiguous()


def _per_row(op: str, arg: str, t: object, a_packed: Tensor, dtype: torch.dtype | None) -> None:
    """A per-row tensor of shape ``a_packed.shape[:-1]`` (dtype None = any floating point)."""
    if not isinstance(t, Tensor):
        fail(op, arg, "a torch.Tensor", type(t).__name__, TypeError)
    if (dtype is None and not t.is_floating_point()) or (dtype is not None and t.dtype != dtype):
        fail(op, arg, f"dtype {dtype or 'floating point'}", t.dtype, TypeError)
    if t.shape != a_packed.shape[:-1]:
        fail(op, arg, f"shape {tuple(a_packed.shape[:-1])} (the leading dims of a_packed)", tuple(t.shape))
    _same_device(op, a_packed, **{arg: t})


def lowbit_gemm(a_packed: Tensor, a_scale: Tensor, a_zero: Tensor, a_rowsum: Tensor, w_packed: Tensor,
                w_scale: Tensor, w_zero: Tensor, bias: Tensor | None, *, w_bits: int, a_bits: int, k: int,
                out_dtype: torch.dtype, backend: str | None = None) -> Tensor:
    """Already-quantized activations (as ``quantize_per_token`` returns them) times packed weights.

    ``a_packed [..., packed_width(k, a_bits)]``, ``a_scale`` float / ``a_zero``, ``a_rowsum`` int32 ``[...]``,
    ``w_packed [N, packed_width(k, w_bits)]``, ``w_scale`` / ``w_zero`` ``[N]`` or ``[N, G]``, ``bias [N]``
    or None. Returns ``[..., N]`` in ``out_dtype``.
    """
    op = "lowbit_gemm"
    backend = _backend(op, backend)
    check_bits(op, "w_bits", w_bits, WEIGHT_BITS)
    check_bits(op, "a_bits", a_bits, _QUANT_BITS)
    _positive_int(op, "k", k)
    if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
        fail(op, "out_dtype", "a floating-point torch.dtype", repr(out_dtype), TypeError)
    _tensor(op, "a_packed", a_packed, (torch.uint8,))
    if a_packed.shape[-1] != packed_width(k, a_bits):
        fail(op, "a_packed", f"last dim packed_width(k={k}, a_bits={a_bits}) = {packed_width(k, a_bits)}",
             f"shape {tuple(a_packed.shape)}")
    _per_row(op, "a_scale", a_scale, a_packed, None)
    _per_row(op, "a_zero", a_zero, a_packed, torch.int32)
    _per_row(op, "a_rowsum", a_rowsum, a_packed, torch.int32)
    w_packed = _packed_weight(op, w_packed, w_bits, k, a_packed)
    n = w_packed.shape[0]
    w_scale, w_zero = _weight_params(op, w_scale, w_zero, n, k, a_packed, names=("w_scale", "w_zero"))
    check_accumulator(op, _group_k(k, w_scale), a_bits, w_bits)
    bias = _bias(op, bias, n, a_packed)
    out = _ops.lowbit_gemm(_rows(a_packed), a_scale.reshape(-1).float(), a_zero.reshape(-1),
                           a_rowsum.reshape(-1), w_packed, w_scale, w_zero, bias, w_bits, a_bits, k,
                           out_dtype, backend)
    return out.reshape(*a_packed.shape[:-1], n)


def lowbit_linear(x: Tensor, w_packed: Tensor, w_scale: Tensor, w_zero: Tensor, bias: Tensor | None,
                  w_bits: int = 4, a_bits: int = 4, clip_lo: Clip = 1.0, clip_hi: Clip = 1.0, *,
                  backend: str | None = None) -> Tensor:
    """``F.linear`` with a packed low-bit weight: x quantized per token (a_bits < 16), then the GEMM.

    ``x [..., K]`` fp32/fp16/bf16; ``a_bits=16`` keeps x in floating point (weight-only). Returns
    ``[..., N]`` in x.dtype. clip_lo / clip_hi: floats or tensors broadcastable to ``x.shape[:-1]``.
    """
    op = "lowbit_linear"
    backend = _backend(op, backend)
    _tensor(op, "x", x, _ACT_DTYPES)
    check_bits(op, "w_bits", w_bits, WEIGHT_BITS)
    check_bits(op, "a_bits", a_bits, ACT_BITS)
    k = x.shape[-1]
    w_packed = _packed_weight(op, w_packed, w_bits, k, x)
    n = w_packed.shape[0]
    w_scale, w_zero = _weight_params(op, w_scale, w_zero, n, k, x, names=("w_scale", "w_zero"))
    check_accumulator(op, _group_k(k, w_scale), a_bits, w_bits)
    bias = _bias(op, bias, n, x)
    lo, hi = _clip(op, "clip_lo", clip_lo, x, torch.float32), _clip(op, "clip_hi", clip_hi, x, torch.float32)
    out = _ops.lowbit_linear(_rows(x), w_packed, w_scale, w_zero, bias, w_bits, a_bits, lo, hi, backend)
    return out.reshape(*x.shape[:-1], n)


def fake_quant_weight(w: Tensor, scale: Tensor, zero: Tensor, bits: int, grad_scale: float = 1.0, *,
                      backend: str | None = None) -> Tensor:
    """Differentiable LSQ+ fake quant ``s * (clamp(round_ste(w / s + z), 0, P) - z)`` of ``w [N, K]``.

    scale / zero ``[N]`` or ``[N, G]``; their gradients are multiplied by ``grad_scale``; w gets the
    straight-through gradient masked to the unclamped entries. Returns w.dtype.
    """
    op = "fake_quant_weight"
    backend = _backend(op, backend)
    _tensor(op, "w", w, _TRAIN_DTYPES, ndim=2)
    check_bits(op, "bits", bits, WEIGHT_BITS)
    if isinstance(grad_scale, bool) or not isinstance(grad_scale, (int, float)) or not grad_scale > 0:
        fail(op, "grad_scale", "a positive float", repr(grad_scale))
    cd = _ref_quant.compute_dtype(w)
    scale, zero = _weight_params(op, scale, zero, w.shape[0], w.shape[1], w, dtype=cd)
    return _ops.fake_quant_weight(w.contiguous(), scale, zero, bits, float(grad_scale), backend)


def fake_quant_act(x: Tensor, bits: int, clip_lo: Clip = 1.0, clip_hi: Clip = 1.0, *,
                   backend: str | None = None) -> Tensor:
    """Differentiable per-token fake quant of ``x [..., K]``, returns x.dtype.

    x gets the straight-through gradient masked to the unclamped entries (the per-token min/max are
    constants); tensor clips (broadcastable to ``x.shape[:-1]``) get gradients through the scale.
    """
    op = "fake_quant_act"
    backend = _backend(op, backend)
    _tensor(op, "x", x, _TRAIN_DTYPES)
    check_bits(op, "bits", bits, _QUANT_BITS)
    cd = _ref_quant.compute_dtype(x)
    lo, hi = _clip(op, "clip_lo", clip_lo, x, cd), _clip(op, "clip_hi", clip_hi, x, cd)
    return _ops.fake_quant_act(_rows(x), bits, lo, hi, backend).reshape(x.shape)


__all__ = [
    "dequantize_weight", "fake_quant_act", "fake_quant_weight", "lowbit_gemm", "lowbit_linear", "pack",
    "quantize_per_token", "quantize_weight", "unpack",
]


# ---- deployed layers: weights prepacked once into a backend's own layout --------------------------

class PackedLinear:
    """The weights of one low-bit linear layer in the layout of the backend that runs it.

    Made once (at load) by ``prepack_linear``; ``prepacked_linear`` then runs the layer with no per-call
    weight work. The backend is fixed at prepack time (its layout is its own); ``nbytes`` is the memory
    the layout holds, every byte of every tensor (the CPU layout is the checkpoint codes themselves plus column
    sums; the tensor-core layout holds 4 bits per weight, 8 at W8), and ``checkpoint_codes`` derives the
    checkpoint codes from it, so that a layer needs to hold nothing else. ``weight_layout`` names the layout of
    the first tensor (a key of ``WEIGHT_LAYOUTS``): the checkpoint codes come back from that tensor alone, on
    any device.
    """

    __slots__ = ("backend", "w_bits", "a_bits", "k", "n", "tensors", "weight_layout", "device", "_run", "_fused",
                 "_one")

    def __init__(self, backend: str, w_bits: int, a_bits: int, k: int, n: int, tensors: tuple[Tensor, ...],
                 weight_layout: str = "codes"):
        self.backend, self.w_bits, self.a_bits, self.k, self.n = backend, w_bits, a_bits, k, n
        self.tensors, self.weight_layout = tensors, weight_layout
        self.device = tensors[0].device  # a layout never moves (a move builds a new one)
        impl = registry.resolve("prepacked_linear", tensors[0].device, backend)[1]
        if registry.is_traceable(backend):
            self._run = impl
        else:  # an opaque node under torch.compile, with the data checks of the custom op
            self._run = functools.partial(_ops.run_prepacked_linear, impl, backend)
        # The backend's linear + activation in one op, if it has one (traced like _run; opaque backends have none).
        self._fused = registry.impl_of(backend, "prepacked_linear_fused") if registry.is_traceable(backend) else None
        self._one = torch.ones(1, dtype=torch.float32, device=tensors[0].device)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def __repr__(self) -> str:
        return (f"PackedLinear(backend={self.backend!r}, W{self.w_bits}A{self.a_bits}, k={self.k}, n={self.n}, "
                f"nbytes={self.nbytes})")


def _tensor_core_codes(weight: Tensor, w_bits: int, k: int, n: int) -> Tensor:
    from .triton.layout import checkpoint_codes as from_kernel_layout  # the layout's own module (torch code)
    return from_kernel_layout(weight, w_bits, n, k)


# The layouts a prepacked weight tensor may be in, each with its exact inverse to the checkpoint codes (torch code,
# any device): "codes" is the checkpoint layout itself (CPU, reference); "tensor_core" the layout of
# qvgen_kernels/triton/layout.py, shared by the Triton and the extension's CUDA GEMMs. A backend whose
# prepack_weight returns another layout registers "weight_layout" (tensors, w_bits, a_bits) -> a key here.
WEIGHT_LAYOUTS = {"codes": lambda weight, w_bits, k, n: weight, "tensor_core": _tensor_core_codes}


def layout_codes(weight: Tensor, weight_layout: str, w_bits: int, k: int, n: int) -> Tensor:
    """The checkpoint codes (uint8 ``[N, packed_width(k, w_bits)]``) of a weight tensor in ``weight_layout``,
    exactly (the same tensor for "codes")."""
    if weight_layout not in WEIGHT_LAYOUTS:
        fail("layout_codes", "weight_layout", f"one of {tuple(WEIGHT_LAYOUTS)}", repr(weight_layout))
    return WEIGHT_LAYOUTS[weight_layout](weight, w_bits, k, n)


def checkpoint_codes(packed: PackedLinear) -> Tensor:
    """The checkpoint codes ``w_packed`` (uint8 ``[N, packed_width(k, w_bits)]``, the DESIGN.md format) of a
    prepacked layout, exactly: on the CPU the layout's own tensor (no copy), on CUDA unpacked from the
    tensor-core layout. What a deployed layer saves."""
    if not isinstance(packed, PackedLinear):
        fail("checkpoint_codes", "packed", "a PackedLinear (from prepack_linear)", type(packed).__name__, TypeError)
    return layout_codes(packed.tensors[0], packed.weight_layout, packed.w_bits, packed.k, packed.n)


def prepack_linear(w_packed: Tensor, w_scale: Tensor, w_zero: Tensor, *, w_bits: int, a_bits: int, k: int,
                   backend: str | None = None) -> PackedLinear:
    """Convert checkpoint-layout weights (``w_packed [N, packed_width(k, w_bits)]``, scale / zero ``[N]`` or
    ``[N, G]``) once into the layout of the backend chosen for their device (or ``backend``). The weight
    parameters are checked here on every device (finite scales > 0, finite zero points): once per load."""
    op = "prepack_linear"
    backend = _backend(op, backend)
    check_bits(op, "w_bits", w_bits, WEIGHT_BITS)
    check_bits(op, "a_bits", a_bits, ACT_BITS)
    _positive_int(op, "k", k)
    w_packed = _packed_weight(op, w_packed, w_bits, k, w_packed)
    n = w_packed.shape[0]
    w_scale, w_zero = _weight_params(op, w_scale, w_zero, n, k, w_packed, names=("w_scale", "w_zero"))
    check_accumulator(op, _group_k(k, w_scale), a_bits, w_bits)
    _ops.check_weight_params(op, w_scale, w_zero, ("w_scale", "w_zero"))
    dev = w_packed.device
    name = registry.resolve("prepacked_linear", dev, backend)[0]
    prep_name, prep = registry.resolve("prepack_weight", dev, name)
    name = prep_name  # a backend without its own layout falls back to the reference for both
    tensors = tuple(prep(w_packed, w_scale.contiguous(), w_zero.contiguous(), w_bits, a_bits, k))
    which = registry.impl_of(name, "weight_layout")
    layout = "codes" if tensors[0] is w_packed or which is None else which(tensors, w_bits, a_bits)
    return PackedLinear(name, w_bits, a_bits, k, n, tensors, layout)


# Activations a deployed layer can apply to its own output (``prepacked_linear(..., activation=)``): name -> function.
ACTIVATIONS = _ref_linear.ACTIVATIONS


def prepacked_linear(x: Tensor, packed: PackedLinear, bias: Tensor | None = None, clip_lo: Clip = 1.0,
                     clip_hi: Clip = 1.0, activation: str | None = None) -> Tensor:
    """``lowbit_linear`` with weights from ``prepack_linear``: ``x [..., K]`` -> ``[..., N]`` in x.dtype.

    ``activation`` ("gelu_tanh": ``F.gelu(y, approximate="tanh")``) is applied to the output: inside the
    backend's epilogue where it has one (CPU int8: on each output rounded to x.dtype, the GELU evaluated in fp32
    as x / (1 + exp(-2u)), within 1 unit of x.dtype's last place of torch's), else as a separate op.

    Checks here are host-side metadata only (this is the per-call path of every deployed layer); the data
    checks (finite x, clips in (0, 1]) run inside the backend's op, on CPU folded into its single pass.
    """
    op = "prepacked_linear"
    if activation is not None and activation not in ACTIVATIONS:
        fail(op, "activation", f"None or one of {tuple(ACTIVATIONS)}", repr(activation))
    if not isinstance(packed, PackedLinear):
        fail(op, "packed", "a PackedLinear (from prepack_linear)", type(packed).__name__, TypeError)
    if not isinstance(x, Tensor):
        fail(op, "x", "a torch.Tensor", type(x).__name__, TypeError)
    if x.dtype not in _ACT_DTYPES:
        fail(op, "x", f"dtype in {tuple(str(d) for d in _ACT_DTYPES)}", x.dtype, TypeError)
    shape = x.shape
    if not shape or shape[-1] != packed.k:
        fail(op, "x", f"a tensor [..., {packed.k}]", f"shape {tuple(shape)}")
    if x.device != packed.device:
        fail(op, "x", f"device {packed.device} (the prepacked weights')", x.device)
    if bias is not None:
        _bias(op, bias, packed.n, x)
    lo, hi = _fast_clip(op, "clip_lo", clip_lo, x, packed), _fast_clip(op, "clip_hi", clip_hi, x, packed)
    flat = len(shape) == 2  # the common case costs no reshape / view (each a tensor op)
    x2 = x if flat else x.reshape(-1, packed.k)
    if activation is not None and packed._fused is not None:
        out = packed._fused(x2, packed.tensors, bias, packed.w_bits, packed.a_bits, packed.k, packed.n, lo, hi,
                            activation)
    else:
        out = packed._run(x2, packed.tensors, bias, packed.w_bits, packed.a_bits, packed.k, packed.n, lo, hi)
        if activation is not None:
            out = ACTIVATIONS[activation](out)
    return out if flat else out.view(*shape[:-1], packed.n)


def _fast_clip(op: str, arg: str, clip: Clip, x: Tensor, packed: PackedLinear) -> Tensor:
    """fp32 ``[1]`` (one pair for every row) or ``[M]``; the common cases cost no tensor op."""
    if isinstance(clip, Tensor) and clip.dtype == torch.float32 and clip.numel() == 1 and clip.device == x.device:
        return clip if clip.dim() == 1 else clip.reshape(1)
    if isinstance(clip, float) and clip == 1.0:
        return packed._one
    if isinstance(clip, (float, int)) and not isinstance(clip, bool):
        if not 0.0 < clip <= 1.0:
            fail(op, arg, "a clip factor in (0, 1]", clip)
        return torch.full((1,), float(clip), dtype=torch.float32, device=x.device)
    return _clip(op, arg, clip, x, torch.float32)


__all__ += ["ACTIVATIONS", "PackedLinear", "WEIGHT_LAYOUTS", "checkpoint_codes", "layout_codes", "prepack_linear",
            "prepacked_linear"]
