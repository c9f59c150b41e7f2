"""Old module paths of the flat 0.x layout, kept importable for one release with a DeprecationWarning.

`import qvgen.io` (or `from qvgen.swap import ...`) still works and gives the module at its new path; the
warning names that path. The list is also in CHANGELOG.md. Removed in the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "qvgen.config": "qvgen.quant.config",
    "qvgen.quantizers": "qvgen.quant.quantizers",
    "qvgen.timestep": "qvgen.quant.timestep",
    "qvgen.lowrank": "qvgen.quant.lowrank",
    "qvgen.qlinear": "qvgen.quant.qlinear",
    "qvgen.deployed": "qvgen.quant.deployed",
    "qvgen.rank_decay": "qvgen.quant.rank_decay",
    "qvgen.swap": "qvgen.quant.swap",
    "qvgen.io": "qvgen.artifact.io",
    "qvgen.pretrained": "qvgen.artifact.pretrained",
    "qvgen.integrity": "qvgen.storage.integrity",
    "qvgen.atomic_dir": "qvgen.storage.atomic_dir",
    "qvgen.paths": "qvgen.storage.paths",
    "qvgen.parallel": "qvgen.distributed.parallel",
    "qvgen.sharding": "qvgen.distributed.sharding",
    "qvgen.memory": "qvgen.distributed.memory",
    "qvgen.precompute": "qvgen.data.precompute",
    "qvgen.cli": "qvgen.apps.cli",
    "qvgen.generate": "qvgen.apps.generate",
    "qvgen.demo": "qvgen.apps.demo",
}


def new_name(old: str) -> str | None:
    """The current path of an old module path (a moved module or anything under a moved package)."""
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix):]
    return None


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = new_name(spec.name)
        warnings.warn(f"{spec.name} moved to {new}; the old path is removed in the next release",
                      DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module):
        """The module was executed under its new name already."""


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # before the path finder, which would load a second copy
