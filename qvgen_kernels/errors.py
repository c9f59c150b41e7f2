"""The project's one error convention, imported by every layer (kernels, method, training, applications).

A bad argument raises a ValueError or TypeError that names the operation, the argument, what was expected
and what came, so a user can fix the call without reading the code.
"""

from __future__ import annotations

from typing import NoReturn


def fail(op: str, arg: str, expected: str, got: object, exc: type[Exception] = ValueError) -> NoReturn:
    """Raise the library's standard error: the op, the argument, what was expected and what came."""
    raise exc(f"{op}: argument '{arg}' expected {expected}, got {got}")


__all__ = ["fail"]
