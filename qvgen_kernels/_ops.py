"""``torch.library`` custom ops ``qvgen::*``: real impls go through the dispatcher, fake impls give
shapes and dtypes only, so ``torch.compile(fullgraph=True)`` traces them as opaque nodes.

Every op takes 2-D tensors (the public wrappers in ``ops.py`` flatten leading dims) and a trailing
``backend: str | None``. Checks that need the data (NaN/Inf, code range, scale and clip values) live
here, in the real impls, so they run once, on every backend, compiled or not; ``ops.py`` checks
everything static (types, dtypes, shapes, devices) before the op is called. Each data check reads a
value back to the host, a device sync on accelerators, so it runs only on CPU tensors or when
``$QVGEN_CHECK_DATA=1`` (see ``check_data``).

Notation: M tokens, K features, N output channels, G weight groups, b bits.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from . import registry
from .format import packed_width
from .errors import fail
from .reference.pack import check_codes_range

_NS = "qvgen"
CHECK_DATA_ENV = "QVGEN_CHECK_DATA"
_HOST_DEVICES = ("cpu",)  # device types where reading data back costs no sync


def check_data(t: Tensor) -> bool:
    """Whether the data checks run for an op on ``t``: always on CPU (cheap, no sync), elsewhere only
    with ``$QVGEN_CHECK_DATA=1`` (each check is a device->host sync and breaks CUDA-graph capture)."""
    return t.device.type in _HOST_DEVICES or os.environ.get(CHECK_DATA_ENV) == "1"


def _check_finite(op: str, arg: str, t: Tensor) -> None:
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        fail(op, arg, "finite values (no NaN/Inf)", f"{bad} non-finite element(s)")


def _check_positive(op: str, arg: str, t: Tensor) -> None:
    if t.numel() and not bool((torch.isfinite(t) & (t > 0)).all()):
        fail(op, arg, "finite values > 0", f"min {float(t.min())}, max {float(t.max())}")


def _check_clip(op: str, arg: str, t: Tensor) -> None:
    if t.numel() and not bool(((t > 0) & (t <= 1)).all()):
        fail(op, arg, "clip factors in (0, 1]", f"values in [{float(t.min())}, {float(t.max())}]")


def _check_act(op: str, x: Tensor, clip_lo: Tensor, clip_hi: Tensor) -> None:
    _check_clip(op, "clip_lo", clip_lo)
    _check_clip(op, "clip_hi", clip_hi)
    if not x.numel():
        return
    # One pass: the per-token min / max (NaN and Inf propagate into them) decide both checks.
    mn, mx = (t.float() for t in torch.aminmax(x.reshape(-1, x.shape[-1]), dim=-1))
    if not bool((torch.isfinite(mn) & torch.isfinite(mx)).all()):
        _check_finite(op, "x", x)
    # The scale is (hi - lo) / P with lo = c_lo min(0, min x), hi = c_hi max(0, max x): finite values beyond
    # about 1.7e38 make hi - lo overflow to Inf and every output of the row NaN.
    span = clip_hi.float().reshape(-1) * mx.clamp(min=0) - clip_lo.float().reshape(-1) * mn.clamp(max=0)
    over = ~torch.isfinite(span)
    if bool(over.any()):
        row = int(over.nonzero()[0, 0])
        fail(op, "x", "a per-token range (max - min, after the clips) within float32, i.e. |values| below about "
             "1.7e38", f"token {row} spanning [{float(mn[row]):.3g}, {float(mx[row]):.3g}]")


def check_weight_params(op: str, scale: Tensor, zero: Tensor, names: tuple[str, str] = ("scale", "zero")) -> None:
    """Weight scales finite and > 0 (a negative one would negate the output), zero points finite."""
    _check_positive(op, names[0], scale)
    _check_finite(op, names[1], zero)


def check_range(op: str, arg: str, t: Tensor, lo: int, hi: int) -> None:
    if t.numel() and not bool(((t >= lo) & (t <= hi)).all()):
        fail(op, arg, f"values in [{lo}, {hi}]", f"values in [{int(t.min())}, {int(t.max())}]")


# ---- packing -------------------------------------------------------------------------------------

@torch.library.custom_op(f"{_NS}::pack", mutates_args=())
def pack(codes: Tensor, bits: int, backend: Optional[str] = None) -> Tensor:
    """uint8 codes ``[R, K]`` -> packed ``[R, packed_width(K, bits)]``."""
    if check_data(codes):
        check_codes_range("pack", "codes", codes, bits)
    return registry.call("pack", codes.device, backend, codes, bits)


@pack.register_fake
def _(codes: Tensor, bits: int, backend: Optional[str] = None) -> Tensor:
    return codes.new_empty((codes.shape[0], packed_width(codes.shape[1], bits)))


@torch.library.custom_op(f"{_NS}::unpack", mutates_args=())
def unpack(packed: Tensor, bits: int, k: int, backend: Optional[str] = None) -> Tensor:
    """Packed ``[R, packed_width(k, bits)]`` -> uint8 codes ``[R, k]``."""
    return registry.call("unpack", packed.device, backend, packed, bits, k)


@unpack.register_fake
def _(packed: Tensor, bits: int, k: int, backend: Optional[str] = None) -> Tensor:
    return packed.new_empty((packed.shape[0], k))


# ---- quantization --------------------------------------------------------------------------------

@torch.library.custom_op(f"{_NS}::quantize_per_token", mutates_args=())
def quantize_per_token(x: Tensor, bits: int, clip_lo: Tensor, clip_hi: Tensor,
                       backend: Optional[str] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``x [M, K]``, clips fp32 ``[M]`` -> (packed uint8, scale fp32 [M], zero int32 [M], rowsum int32 [M])."""
    if check_data(x):
        _check_act("quantize_per_token", x, clip_lo, clip_hi)
    return registry.call("quantize_per_token", x.device, backend, x, bits, clip_lo, clip_hi)


@quantize_per_token.register_fake
def _(x: Tensor, bits: int, clip_lo: Tensor, clip_hi: Tensor, backend: Optional[str] = None):
    m, k = x.shape
    return (x.new_empty((m, packed_width(k, bits)), dtype=torch.uint8),
            x.new_empty((m,), dtype=torch.float32), x.new_empty((m,), dtype=torch.int32),
            x.new_empty((m,), dtype=torch.int32))


@torch.library.custom_op(f"{_NS}::quantize_weight", mutates_args=())
def quantize_weight(w: Tensor, scale: Tensor, zero: Tensor, bits: int,
                    backend: Optional[str] = None) -> Tensor:
    """``w [N, K]``, scale / zero fp32 ``[N]`` or ``[N, G]`` -> uint8 codes ``[N, K]``."""
    if check_data(w):
        _check_finite("quantize_weight", "w", w)
        check_weight_params("quantize_weight", scale, zero)
    return registry.call("quantize_weight", w.device, backend, w, scale, zero, bits)


@quantize_weight.register_fake
def _(w: Tensor, scale: Tensor, zero: Tensor, bits: int, backend: Optional[str] = None) -> Tensor:
    return w.new_empty(w.shape, dtype=torch.uint8)


# ---- GEMM ----------------------------------------------------------------------------------------

@torch.library.custom_op(f"{_NS}::lowbit_gemm", mutates_args=())
def lowbit_gemm(a_packed: Tensor, a_scale: Tensor, a_zero: Tensor, a_rowsum: Tensor, w_packed: Tensor,
                w_scale: Tensor, w_zero: Tensor, bias: Optional[Tensor], w_bits: int, a_bits: int, k: int,
                out_dtype: torch.dtype, backend: Optional[str] = None) -> Tensor:
    """Already-quantized activations times packed weights -> ``[M, N]`` in ``out_dtype``."""
    if check_data(a_scale):
        _check_positive("lowbit_gemm", "a_scale", a_scale)
        check_range("lowbit_gemm", "a_zero", a_zero, 0, (1 << a_bits) - 1)
        check_weight_params("lowbit_gemm", w_scale, w_zero, ("w_scale", "w_zero"))
    return registry.call("lowbit_gemm", a_packed.device, backend, a_packed, a_scale, a_zero, a_rowsum,
                          w_packed, w_scale, w_zero, bias, w_bits, a_bits, k, out_dtype)


@lowbit_gemm.register_fake
def _(a_packed, a_scale, a_zero, a_rowsum, w_packed, w_scale, w_zero, bias, w_bits, a_bits, k,
      out_dtype, backend=None) -> Tensor:
    return a_packed.new_empty((a_packed.shape[0], w_packed.shape[0]), dtype=out_dtype)


@torch.library.custom_op(f"{_NS}::lowbit_linear", mutates_args=())
def lowbit_linear(x: Tensor, w_packed: Tensor, w_scale: Tensor, w_zero: Tensor, bias: Optional[Tensor],
                  w_bits: int, a_bits: int, clip_lo: Tensor, clip_hi: Tensor,
                  backend: Optional[str] = None) -> Tensor:
    """``x [M, K]`` quantized per token (a_bits < 16) or kept (a_bits = 16) times packed W -> x.dtype.
    Clips fp32 ``[M]`` or ``[1]``."""
    if check_data(x):
        _check_act("lowbit_linear", x, clip_lo, clip_hi)
        check_weight_params("lowbit_linear", w_scale, w_zero, ("w_scale", "w_zero"))
    return registry.call("lowbit_linear", x.device, backend, x, w_packed, w_scale, w_zero, bias, w_bits, a_bits,
                         clip_lo, clip_hi)


@lowbit_linear.register_fake
def _(x, w_packed, w_scale, w_zero, bias, w_bits, a_bits, clip_lo, clip_hi, backend=None) -> Tensor:
    return x.new_empty((x.shape[0], w_packed.shape[0]))


@torch.library.custom_op(f"{_NS}::prepacked_linear", mutates_args=())
def prepacked_linear(x: Tensor, weights: list[Tensor], bias: Optional[Tensor], backend: str, w_bits: int,
                     a_bits: int, k: int, n: int, clip_lo: Tensor, clip_hi: Tensor) -> Tensor:
    """The deployed layer on ``backend``'s own weight layout (``ops.prepack_linear``), as one opaque node
    for backends whose kernels torch.compile cannot trace; data checks as for ``lowbit_linear``."""
    if check_data(x):
        _check_act("prepacked_linear", x, clip_lo, clip_hi)
    return registry.resolve("prepacked_linear", x.device, backend)[1](x, tuple(weights), bias, w_bits, a_bits, k,
                                                                      n, clip_lo, clip_hi)


@prepacked_linear.register_fake
def _(x, weights, bias, backend, w_bits, a_bits, k, n, clip_lo, clip_hi) -> Tensor:
    return x.new_empty((x.shape[0], n))


def _plain_eager(x: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether a call is plain eager inference on plain tensors: not traced (torch.compile, fake or meta
    tensors, dispatch or function modes, functorch transforms), no gradient asked for, no profiler recording
    ops. Only then may an op's implementation be called without the dispatcher: the same function, the same
    checks, none of the tracing machinery."""
    return (type(x) is Tensor and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)))
            and not torch._C._len_torch_dispatch_stack() and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active() and not torch.autograd._profiler_enabled())


def run_prepacked_linear(impl, backend: str, x: Tensor, weights: tuple[Tensor, ...], bias: Optional[Tensor],
                         w_bits: int, a_bits: int, k: int, n: int, clip_lo: Tensor, clip_hi: Tensor) -> Tensor:
    """``prepacked_linear`` through the dispatcher, or, in plain eager inference (``_plain_eager``), ``impl`` (the
    backend's implementation the op would resolve to) called directly with the op's own data checks: the
    dispatcher's custom-op layers cost about as much host time per call as the rest of a small layer's call."""
    if not _plain_eager(x, bias):
        return prepacked_linear(x, list(weights), bias, backend, w_bits, a_bits, k, n, clip_lo, clip_hi)
    if check_data(x):
        _check_act("prepacked_linear", x, clip_lo, clip_hi)
    return impl(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi)


# ---- fake quant (training), with explicit backward ops -------------------------------------------

@torch.library.custom_op(f"{_NS}::fake_quant_weight", mutates_args=())
def fake_quant_weight(w: Tensor, scale: Tensor, zero: Tensor, bits: int, grad_scale: float,
                      backend: Optional[str] = None) -> Tensor:
    """LSQ+ weight fake quant ``s * (clamp(round(w / s + z), 0, P) - z)``, ``w [N, K]`` -> w.dtype."""
    if check_data(w):
        _check_finite("fake_quant_weight", "w", w)
        check_weight_params("fake_quant_weight", scale, zero)
    return registry.call("fake_quant_weight", w.device, backend, w, scale, zero, bits, grad_scale)


@fake_quant_weight.register_fake
def _(w, scale, zero, bits, grad_scale, backend=None) -> Tensor:
    return torch.empty_like(w)


@torch.library.custom_op(f"{_NS}::fake_quant_weight_backward", mutates_args=())
def fake_quant_weight_backward(grad: Tensor, w: Tensor, scale: Tensor, zero: Tensor, bits: int,
                               grad_scale: float, backend: Optional[str] = None
                               ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(grad_w, grad_scale_param, grad_zero)`` of ``fake_quant_weight``."""
    return registry.call("fake_quant_weight_backward", w.device, backend, grad, w, scale, zero, bits,
                          grad_scale)


@fake_quant_weight_backward.register_fake
def _(grad, w, scale, zero, bits, grad_scale, backend=None):
    return torch.empty_like(w), torch.empty_like(scale), torch.empty_like(zero)


def _fqw_setup(ctx, inputs, output) -> None:
    w, scale, zero, bits, grad_scale, backend = inputs
    ctx.save_for_backward(w, scale, zero)
    ctx.args = (bits, grad_scale, backend)


def _fqw_backward(ctx, grad: Tensor):
    w, scale, zero = ctx.saved_tensors
    gw, gs, gz = fake_quant_weight_backward(grad, w, scale, zero, *ctx.args)
    return gw, gs, gz, None, None, None


fake_quant_weight.register_autograd(_fqw_backward, setup_context=_fqw_setup)


@torch.library.custom_op(f"{_NS}::fake_quant_act", mutates_args=())
def fake_quant_act(x: Tensor, bits: int, clip_lo: Tensor, clip_hi: Tensor,
                   backend: Optional[str] = None) -> Tensor:
    """Per-token fake quant of ``x [M, K]`` with clips ``[M]`` -> x.dtype."""
    if check_data(x):
        _check_act("fake_quant_act", x, clip_lo, clip_hi)
    return registry.call("fake_quant_act", x.device, backend, x, bits, clip_lo, clip_hi)


@fake_quant_act.register_fake
def _(x, bits, clip_lo, clip_hi, backend=None) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op(f"{_NS}::fake_quant_act_backward", mutates_args=())
def fake_quant_act_backward(grad: Tensor, x: Tensor, bits: int, clip_lo: Tensor, clip_hi: Tensor,
                            backend: Optional[str] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(grad_x, grad_clip_lo, grad_clip_hi)`` of ``fake_quant_act``."""
    return registry.call("fake_quant_act_backward", x.device, backend, grad, x, bits, clip_lo, clip_hi)


@fake_quant_act_backward.register_fake
def _(grad, x, bits, clip_lo, clip_hi, backend=None):
    return torch.empty_like(x), torch.empty_like(clip_lo), torch.empty_like(clip_hi)


def _fqa_setup(ctx, inputs, output) -> None:
    x, bits, clip_lo, clip_hi, backend = inputs
    ctx.save_for_backward(x, clip_lo, clip_hi)
    ctx.args = (bits, backend)


def _fqa_backward(ctx, grad: Tensor):
    x, clip_lo, clip_hi = ctx.saved_tensors
    bits, backend = ctx.args
    gx, glo, ghi = fake_quant_act_backward(grad, x, bits, clip_lo, clip_hi, backend)
    return gx, None, glo, ghi, None


fake_quant_act.register_autograd(_fqa_backward, setup_context=_fqa_setup)

__all__ = [
    "CHECK_DATA_ENV", "check_data", "check_range", "check_weight_params", "fake_quant_act", "fake_quant_act_backward", "fake_quant_weight",
    "fake_quant_weight_backward", "lowbit_gemm", "lowbit_linear", "pack", "prepacked_linear", "quantize_per_token",
    "quantize_weight", "unpack",
]
