"""Old flat module paths keep importing (the same module objects) with a DeprecationWarning for one release."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import qvgen
from qvgen._moved import MOVED, new_name


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module(old):
    sys.modules.pop(old, None)  # the alias is made again on this import (and warns again)
    with pytest.warns(DeprecationWarning, match=MOVED[old]):
        mod = importlib.import_module(old)
    assert mod is importlib.import_module(MOVED[old])


def test_submodule_of_a_moved_package_is_not_loaded_twice():
    # a second copy would make isinstance checks fail between the two paths
    code = ("import warnings; warnings.simplefilter('ignore'); import qvgen; "
            "from qvgen.demo.sprites import SpriteData as A; from qvgen.apps.demo.sprites import SpriteData as B; "
            "assert A is B, (A, B); print('same')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "same", out.stderr


def test_names():
    assert new_name("qvgen.demo.pipeline") == "qvgen.apps.demo.pipeline"
    assert new_name("qvgen.train.distill") is None
    assert new_name("qvgen.iox") is None
    assert qvgen.quantize_model.__module__ == "qvgen.artifact.pretrained"
