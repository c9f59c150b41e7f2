"""The Triton backend (``qvgen_kernels.triton``): automatic on CUDA; on CPU only under
``TRITON_INTERPRET=1`` and only when asked for (the interpreter is for tests, not speed)."""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

from .. import registry
from ..reference import linear as reference_linear


@functools.cache
def _load() -> ModuleType | None:
    try:
        return importlib.import_module("qvgen_kernels.triton")
    except ImportError:
        return None


def _probe(device: torch.device) -> str | None:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on CPU only under TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"no Triton kernels for device type {device.type!r}"
    if _load() is None:
        return "qvgen_kernels.triton (or triton) cannot be imported"
    return None


registry.register_backend("triton", probe=_probe, auto={"cuda": 10}, module=_load)


@registry.register_impl("prepacked_linear", "triton")
def prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi):
    # clips [1] (one pair for every row, read with stride 0: no per-call copy) or [M]
    return _load().prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi)


@registry.register_impl("weight_layout", "triton")
def weight_layout(weights, w_bits, a_bits):
    """The layout of prepack_weight's first tensor (ops.WEIGHT_LAYOUTS): weight-only layers keep the codes."""
    return "codes" if a_bits == 16 else "tensor_core"


@registry.register_impl("lowbit_linear", "triton")
def lowbit_linear(x, w_packed, w_scale, w_zero, bias, w_bits, a_bits, clip_lo, clip_hi):
    """The unprepacked op: the tensor-core layout is built per call (layers prepack once)."""
    k, n = x.shape[1], w_packed.shape[0]
    if a_bits == 16:
        return reference_linear.lowbit_linear(x, w_packed, w_scale, w_zero, bias, w_bits, a_bits, clip_lo, clip_hi)
    weights = _load().prepack_weight(w_packed, w_scale, w_zero, w_bits, a_bits, k)
    return prepacked_linear(x, weights, bias, w_bits, a_bits, k, n, clip_lo, clip_hi)
