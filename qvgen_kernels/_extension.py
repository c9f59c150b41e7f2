"""Lazy loader of the compiled extension ``qvgen_kernels._C``.

Importing ``qvgen_kernels._C`` registers the ``torch.ops.qvgen_ext`` ops (``pack``, ``unpack``,
``quantize_per_token``, ``lowbit_gemm``; schemas in ``docs/architecture.md``): CPU and Meta kernels
always, CUDA kernels when the extension was built against a CUDA build of torch. This module only
imports it on first use and never raises from the probes; ``require()`` raises with build
instructions.
"""

from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType

import torch

logger = logging.getLogger("qvgen_kernels")

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` in the repository root"


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    """The extension module (or None) and, when it is missing, why."""
    try:
        return importlib.import_module("qvgen_kernels._C"), ""
    except ImportError as exc:  # not built, or built against another torch (undefined symbols)
        logger.debug("qvgen_kernels._C could not be imported: %s", exc)
        return None, str(exc)


def available() -> bool:
    """True when ``qvgen_kernels._C`` imports (its ops are then registered under ``torch.ops.qvgen_ext``)."""
    return _load()[0] is not None


def has_cuda() -> bool:
    """True when the extension is available and was built with its CUDA kernels."""
    if not available():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("qvgen_ext::lowbit_gemm", "CUDA")


def require() -> ModuleType:
    """The extension module; raises ``RuntimeError`` with the import error and how to build it."""
    module, reason = _load()
    if module is None:
        raise RuntimeError(f"qvgen_kernels._C (the compiled extension) is not available ({reason}); {BUILD_HINT}")
    return module


__all__ = ["BUILD_HINT", "available", "has_cuda", "require"]
