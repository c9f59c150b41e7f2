"""The compiled extension backend (``qvgen_kernels._C``, ops ``torch.ops.qvgen_ext.*``): automatic on
CPU after ``cpu_int8``; on CUDA after Triton (its CUDA GEMM is a dp4a kernel, an exact reference far
below the tensor-core rate: it is used when asked for with ``QVGEN_BACKEND=ext``)."""

from __future__ import annotations

import torch

from .. import _extension, registry
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
