"""Registering qvgen's diffusers quantization backend (qvgen.artifact.quantizer) without importing diffusers.

`import qvgen` stays light: when diffusers is already imported the backend registers at once, otherwise it
registers right after diffusers loads its quantizer mapping (a one-shot import hook on that module). Only
diffusers versions from MIN_DIFFUSERS on, whose quantizer interface the backend was written against, get it.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import importlib.util
import logging
import sys
from typing import Any

MIN_DIFFUSERS = (0, 35)
TARGET = "diffusers.quantizers.auto"
log = logging.getLogger("qvgen")


def supported() -> bool:
    try:
        version = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        return False
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_DIFFUSERS:
        log.info("qvgen: diffusers %s is older than %s: the 'qvgen' quantization backend is not registered",
                 version, ".".join(map(str, MIN_DIFFUSERS)))
        return False
    return True


def _register() -> None:
    from qvgen.artifact import pretrained, quantizer

    quantizer.register()
    if quantizer.attach not in pretrained.ADOPT_HOOKS:
        pretrained.ADOPT_HOOKS.append(quantizer.attach)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of diffusers.quantizers.auto so that qvgen registers right after it executes."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding this finder
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if not supported():
        return
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


__all__ = ["MIN_DIFFUSERS", "install", "supported"]
