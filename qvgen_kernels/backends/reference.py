"""The reference backend: ``qvgen_kernels.reference``, pure torch, every op on every device."""

from __future__ import annotations

import importlib

from .. import registry

registry.register_backend(registry.REFERENCE, module=lambda: importlib.import_module("qvgen_kernels.reference"))
