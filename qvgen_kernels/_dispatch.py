"""Backend choice for every op: the ``backend=`` argument, else ``$QVGEN_BACKEND``, else automatic.

Backends (each exposes the reference's 2-D op signatures under the reference's op names):
    ext        the compiled extension ``qvgen_kernels._C`` (ops at ``torch.ops.qvgen_ext.<op>``);
               ``cuda`` is an alias. CPU kernels always, CUDA kernels when built with CUDA.
    triton     ``qvgen_kernels.triton`` (imported lazily). On CPU only when asked for explicitly, and
               only under ``TRITON_INTERPRET=1``.
    reference  ``qvgen_kernels.reference`` (pure torch, every op, every device).

Automatic order: CUDA tensors ext -> triton -> reference; CPU tensors ext -> reference. An explicit
backend that cannot run on the device raises; an available backend that lacks one op (e.g. no Triton
``quantize_weight``) falls back to the reference for that op. Fallbacks are logged once each.

``resolve`` runs for every op call, so the probes are cached: extension availability per device type,
the Triton module, each backend's op lookup. ``$QVGEN_BACKEND`` and ``$TRITON_INTERPRET`` are read on
every call (a dict lookup). ``refresh()`` drops the caches (after building the extension in-process).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Any, Callable

import torch

from .format import fail

ENV_VAR = "QVGEN_BACKEND"
BACKENDS = ("ext", "triton", "reference")
_ALIASES = {"cuda": "ext"}
_AUTO = ("", "auto")

logger = logging.getLogger("qvgen_kernels")
_logged: set[tuple[str, ...]] = set()


def _log_once(*key: str) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.info("qvgen_kernels.%s on %s: %s", *key)


def normalize(op: str, backend: str | None) -> str | None:
    """Canonical backend name (``None`` = automatic) of the argument, else of ``$QVGEN_BACKEND``."""
    arg = "backend"
    if backend is None:
        backend, arg = os.environ.get(ENV_VAR, ""), ENV_VAR
    if not isinstance(backend, str):
        fail(op, arg, "a str or None", type(backend).__name__, TypeError)
    name = backend.strip().lower()
    if name in _AUTO:
        return None
    name = _ALIASES.get(name, name)
    if name not in BACKENDS:
        fail(op, arg, f"one of {BACKENDS + tuple(_ALIASES)} or 'auto'", repr(backend))
    return name


@functools.cache
def _ext_probe(device_type: str) -> str | None:
    """None when the extension can run on ``device_type``, else why not (cached: imports the loader)."""
    try:
        from . import _extension
    except ImportError:
        return "the extension loader qvgen_kernels._extension is missing"
    if not _extension.available():
        return "the compiled extension qvgen_kernels._C is not built"
    if device_type == "cuda" and not _extension.has_cuda():
        return "qvgen_kernels._C was built without CUDA"
    if device_type not in ("cpu", "cuda"):
        return f"no extension kernels for device type {device_type!r}"
    return None


def _ext_status(device: torch.device) -> str | None:
    """None when the extension can run on ``device``, else why not."""
    return _ext_probe(device.type)


@functools.cache
def _triton_module() -> Any | None:
    """The Triton backend module, or None when it (or triton itself) cannot be imported."""
    try:
        return importlib.import_module("qvgen_kernels.triton")
    except ImportError:
        return None


def _triton_status(device: torch.device) -> str | None:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on CPU only under TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"no Triton kernels for device type {device.type!r}"
    if _triton_module() is None:
        return "qvgen_kernels.triton (or triton) cannot be imported"
    return None


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None when ``backend`` can run on ``device``; otherwise the reason (for messages and tests)."""
    if backend == "ext":
        return _ext_status(device)
    if backend == "triton":
        return _triton_status(device)
    return None


@functools.cache
def _ext_op(op: str) -> Callable[..., Any] | None:
    """``torch.ops.qvgen_ext.<op>`` or None (cached: a missing op costs an exception per lookup)."""
    try:
        return getattr(torch.ops.qvgen_ext, op)
    except (AttributeError, RuntimeError):
        return None


@functools.cache
def _reference_module() -> Any:
    return importlib.import_module("qvgen_kernels.reference")


def _op_of(backend: str, op: str) -> Callable[..., Any] | None:
    """The backend's implementation of ``op``, or None when it has none."""
    if backend == "ext":
        return _ext_op(op)
    if backend == "triton":
        return getattr(_triton_module(), op, None)
    return getattr(_reference_module(), op)


def refresh() -> None:
    """Forget the cached probes (extension availability, Triton module, op lookups)."""
    for cached in (_ext_probe, _triton_module, _ext_op, _reference_module):
        cached.cache_clear()


def require(op: str, device: torch.device, backend: str | None = None) -> str | None:
    """The requested backend (None = automatic); an explicit one that cannot run on ``device`` raises."""
    name = normalize(op, backend)
    if name is not None:
        reason = unavailable_reason(name, device)
        if reason is not None:
            fail(op, "backend", f"a backend available on {device.type}", f"{name!r} ({reason})",
                 RuntimeError)
    return name


def resolve(op: str, device: torch.device, backend: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``(backend name, implementation)`` of ``op`` for tensors on ``device``."""
    name = require(op, device, backend)
    if name is not None:
        impl = _op_of(name, op)
        if impl is not None:
            return name, impl
        _log_once(op, device.type, f"backend {name!r} has no {op}, using the reference")
        return "reference", _op_of("reference", op)
    for cand in ("ext", "triton") if device.type == "cuda" else ("ext",):
        reason = unavailable_reason(cand, device)
        impl = _op_of(cand, op) if reason is None else None
        if impl is not None:
            return cand, impl
        _log_once(op, device.type, f"skipping {cand!r} ({reason or f'it has no {op}'})")
    return "reference", _op_of("reference", op)


def call(op: str, device: torch.device, backend: str | None, *args: Any) -> Any:
    """Run ``op`` on the chosen backend with the 2-D positional arguments."""
    return resolve(op, device, backend)[1](*args)


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device`` (the reference always can)."""
    dev = torch.device(device)
    return [b for b in BACKENDS if unavailable_reason(b, dev) is None]


__all__ = ["BACKENDS", "ENV_VAR", "available_backends", "call", "normalize", "refresh", "require",
           "resolve", "unavailable_reason"]
