"""The compiled extension backend (``qvgen_kernels._C``, ops ``torch.ops.qvgen_ext.*``): automatic on
CPU after ``cpu_int8``; on CUDA after Triton (its CUDA GEMM is a dp4a kernel, an exact reference far
below the tensor-core rate: it is used when asked for with ``QVGEN_BACKEND=ext``)."""

from __future__ import annotations

import torch

from .. import _extension, registry
from . import cpu_int8
from ..reference import linear as reference_linear


def _probe(device: torch.device) -> str | None:
    if not _extension.available():
        return "the compiled extension qvgen_kernels._C is not built"
    if device.type == "cuda" and not _extension.has_cuda():
        return "qvgen_kernels._C was built without CUDA"
    if device.type not in ("cpu", "cuda"):
        return f"no extension kernels for device type {device.type!r}"
    return None


registry.register_backend("ext", probe=_probe, auto={"cpu": 20, "cuda": 30}, aliases=("cuda",))


def _op(name: str):
    """``torch.ops.qvgen_ext.<name>``, looked up at call time (the extension loads on first use)."""
    def run(*args):
        _extension.require()
        return getattr(torch.ops.qvgen_ext, name)(*args)
    run.__name__ = name
    return run


for _name in ("pack", "unpack", "quantize_per_token", "lowbit_gemm"):
    registry.register_impl(_name, "ext", _op(_name))

registry.register_impl("lowbit_linear", "ext", reference_linear.composite_linear(
    _op("quantize_per_token"), _op("lowbit_gemm")))


# Deployed layers. On CUDA: the tensor-core GEMMs (wgmma on sm_90a, mma.sync on sm_80/89) when the extension was
# built with them (CUTLASS headers found at build time), on Triton's load-time layout; never chosen
# automatically until a GPU benchmark shows them ahead of Triton (QVGEN_BACKEND=ext selects them). On CPU the
# extension's deployed path is the int8 one (the same compiled ops the cpu_int8 backend calls).
def _has_tc() -> bool:
    return _extension.available() and hasattr(torch.ops.qvgen_ext, "tc_linear")


@registry.register_impl("prepack_weight", "ext")
def prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k):
    if w_packed.is_cuda:
        if a_bits == 16 or not _has_tc():
            return reference_linear.prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k)
        return tuple(torch.ops.qvgen_ext.tc_prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k))
    return cpu_int8.prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k)


@registry.register_impl("prepacked_linear", "ext")
def prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi):
    if x.is_cuda:
        if len(weights) == 3:  # the reference layout (weight-only, or built without the tensor-core GEMMs)
            return reference_linear.prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi)
        m = x.shape[0]
        return torch.ops.qvgen_ext.tc_linear(x, *weights, bias, w_bits, a_bits, k, n, clip_lo.expand(m).contiguous(),
                                             clip_hi.expand(m).contiguous())
    return cpu_int8.prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi)


@registry.register_impl("weight_layout", "ext")
def weight_layout(weights, w_bits, a_bits):
    """The layout of prepack_weight's first tensor (ops.WEIGHT_LAYOUTS): CUDA's tensor-core GEMMs read Triton's
    (csrc/include/qvgen/tc.h); the reference and the CPU layouts are the codes themselves."""
    return "tensor_core" if weights[0].is_cuda and len(weights) == 4 else "codes"
