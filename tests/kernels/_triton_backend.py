"""Set-up shared by the ``test_triton_*`` modules: the Triton kernels compiled on a GPU, else run
by Triton's CPU interpreter.

Triton reads TRITON_INTERPRET when ``triton.language`` and each kernel are defined (its standard
library included), so the variable must be set before the process first imports triton; importing
torch's compile stack (e.g. through ``torch.library`` custom ops) already does. A session-wide
``TRITON_INTERPRET=1`` (environment or the root conftest) is therefore the reliable set-up;
``enable_interpreter`` sets it at a test module's import only while triton is not loaded yet (a
run of the test_triton_* modules alone), and ``load`` skips, naming the cause, when it was too late.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import pytest
import torch


def enable_interpreter() -> None:
    """Turn the interpreter on for this process when there is no GPU and it can still take effect."""
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def load() -> tuple[ModuleType, str]:
    """``(qvgen_kernels.triton, device)``; skips without CUDA when the interpreter is switched off."""
    if torch.cuda.is_available():
        return importlib.import_module("qvgen_kernels.triton"), "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA GPU and TRITON_INTERPRET is not 1 (triton was imported before it could "
                    "be set: run with TRITON_INTERPRET=1 in the environment)")
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(standard.sum, InterpretedFunction):
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: set it in the environment")
    mod = importlib.import_module("qvgen_kernels.triton")
    if not mod._utils.interpreting():
        pytest.skip("qvgen_kernels.triton was imported before TRITON_INTERPRET=1 was set")
    return mod, "cpu"
