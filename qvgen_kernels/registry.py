"""The op registry: which backend runs each op, on which device.

A backend is one module that calls ``register_backend`` once and ``register_impl`` per op (or hands
over a module whose attributes are the ops, loaded on first use). Ops keep the reference's 2-D
signatures (see ``qvgen_kernels.reference``); the public wrappers in ``ops.py`` validate every argument
once before anything here runs, so implementations receive checked, 2-D, contiguous inputs.

Choice of backend, per call:
    1. the ``backend=`` argument of the op, else ``$QVGEN_BACKEND`` (read on every call), else automatic;
    2. automatic: the backends registered as automatic for the tensor's device type, lowest priority
       number first, that are available there and implement the op; the reference always can;
    3. an explicit backend that cannot run on the device raises; one that lacks the op falls back to
       the reference for that op (logged once).

Registered by ``qvgen_kernels.backends`` (see ``docs/extending.md`` to add one):
    cpu_int8   CPU: deployed linear layers on the 8-bit matrix engine (oneDNN s8 GEMM: AMX or
               AVX512-VNNI) with the compiled extension's fused quantize and epilogue
    triton     CUDA (CPU only under ``TRITON_INTERPRET=1`` and only when asked for)
    ext        the compiled extension ``qvgen_kernels._C`` (CPU; CUDA when built with it)
    reference  pure torch, every op, every device
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from types import ModuleType
from typing import Any, Callable

import torch

from .errors import fail

ENV_VAR = "QVGEN_BACKEND"
REFERENCE = "reference"
_AUTO = ("", "auto")

logger = logging.getLogger("qvgen_kernels")
_logged: set[tuple[str, ...]] = set()


@dataclasses.dataclass
class Backend:
    """A registered backend. ``probe(device)`` says why it cannot run there (None: it can); ``auto`` maps
    the device types it is chosen on automatically to a priority (lower first); ``module`` optionally
    supplies ops by attribute name, loaded on first use."""

    name: str
    probe: Callable[[torch.device], str | None]
    auto: dict[str, int]
    module: Callable[[], ModuleType | None] | None = None
    traceable: bool = False  # its ops are registered torch ops with fake kernels: callable under compile
    impls: dict[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)


_BACKENDS: dict[str, Backend] = {}
_ALIASES: dict[str, str] = {}


def _log_once(*key: str) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.info("qvgen_kernels.%s on %s: %s", *key)


def register_backend(name: str, *, probe: Callable[[torch.device], str | None] | None = None,
                     auto: dict[str, int] | None = None, module: Callable[[], ModuleType | None] | None = None,
                     aliases: tuple[str, ...] = (), traceable: bool = False) -> Backend:
    """Add (or replace) a backend. ``probe`` defaults to "runs everywhere"; ``auto`` to never automatic;
    ``traceable``: its implementations may be called directly under torch.compile (otherwise the ops
    layer wraps them in an opaque custom op)."""
    backend = Backend(name, probe or (lambda device: None), dict(auto or {}), module, traceable)
    _BACKENDS[name] = backend
    for alias in aliases:
        _ALIASES[alias] = name
    _clear_caches()
    return backend


def unregister_backend(name: str) -> None:
    """Remove a backend (tests register toy backends and remove them again)."""
    _BACKENDS.pop(name, None)
    for alias in [a for a, n in _ALIASES.items() if n == name]:
        del _ALIASES[alias]
    _clear_caches()


def register_impl(op: str, backend: str, fn: Callable[..., Any] | None = None):
    """Register ``fn`` as ``backend``'s implementation of ``op`` (usable as a decorator)."""
    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        if backend not in _BACKENDS:
            raise KeyError(f"register_impl: backend {backend!r} is not registered (register_backend first)")
        _BACKENDS[backend].impls[op] = f
        _clear_caches()
        return f
    return add if fn is None else add(fn)


def is_traceable(name: str) -> bool:
    return _BACKENDS[name].traceable


def backend_names() -> tuple[str, ...]:
    """Every registered backend, the reference last."""
    return tuple(sorted(_BACKENDS, key=lambda n: (n == REFERENCE, n)))


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
    if name not in _BACKENDS:
        fail(op, arg, f"one of {backend_names() + tuple(_ALIASES)} or 'auto'", repr(backend))
    return name


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """None when ``backend`` can run on ``device``; otherwise why not. Probes are cached per device type,
    except for the environment variables they read (``TRITON_INTERPRET``), which are part of the key."""
    dev = torch.device(device)
    return _status_env(backend, dev.type, os.environ.get("TRITON_INTERPRET"))


@functools.cache
def _status_env(name: str, device_type: str, _interpret: str | None) -> str | None:
    return _BACKENDS[name].probe(torch.device(device_type)) if name in _BACKENDS else f"no backend {name!r}"


@functools.cache
def _module(name: str) -> ModuleType | None:
    loader = _BACKENDS[name].module
    return loader() if loader is not None else None


@functools.cache
def _impl(name: str, op: str) -> Callable[..., Any] | None:
    """The backend's implementation of ``op``, or None when it has none."""
    backend = _BACKENDS[name]
    if op in backend.impls:
        return backend.impls[op]
    module = _module(name)
    return getattr(module, op, None) if module is not None else None


@functools.cache
def _auto_order(device_type: str) -> tuple[str, ...]:
    ranked = [(b.auto[device_type], n) for n, b in _BACKENDS.items() if device_type in b.auto and n != REFERENCE]
    return tuple(n for _, n in sorted(ranked))


def _clear_caches() -> None:
    for cached in (_status_env, _module, _impl, _auto_order):
        cached.cache_clear()


def refresh() -> None:
    """Forget the cached probes and op lookups (e.g. after building the extension in-process)."""
    _clear_caches()


def impl_of(backend: str, op: str) -> Callable[..., Any] | None:
    """``backend``'s own implementation of ``op``, or None (no fallback to the reference): for optional ops a
    backend may add, such as a fused variant of another op."""
    return _impl(backend, op) if backend in _BACKENDS else None


def require(op: str, device: torch.device, backend: str | None = None) -> str | None:
    """The requested backend (None = automatic); an explicit one that cannot run on ``device`` raises."""
    name = normalize(op, backend)
    if name is not None:
        reason = unavailable_reason(name, device)
        if reason is not None:
            fail(op, "backend", f"a backend available on {device.type}", f"{name!r} ({reason})", RuntimeError)
    return name


def resolve(op: str, device: torch.device, backend: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``(backend name, implementation)`` of ``op`` for tensors on ``device``."""
    name = require(op, device, backend)
    if name is not None:
        impl = _impl(name, op)
        if impl is not None:
            return name, impl
        _log_once(op, device.type, f"backend {name!r} has no {op}, using the reference")
        return REFERENCE, _impl(REFERENCE, op)
    for cand in _auto_order(device.type):
        reason = unavailable_reason(cand, device)
        impl = _impl(cand, op) if reason is None else None
        if impl is not None:
            return cand, impl
        if reason is not None:
            _log_once(op, device.type, f"skipping {cand!r} ({reason})")
    return REFERENCE, _impl(REFERENCE, op)


def call(op: str, device: torch.device, backend: str | None, *args: Any) -> Any:
    """Run ``op`` on the chosen backend with the 2-D positional arguments."""
    return resolve(op, device, backend)[1](*args)


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device`` (the reference always can)."""
    return [b for b in backend_names() if unavailable_reason(b, device) is None]


__all__ = [
    "Backend", "ENV_VAR", "REFERENCE", "available_backends", "backend_names", "call", "impl_of", "is_traceable", "normalize",
    "refresh",
    "register_backend", "register_impl", "require", "resolve", "unavailable_reason", "unregister_backend",
]
