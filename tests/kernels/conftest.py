"""Kernel tests: Triton's CPU interpreter switched on before any test module imports triton (where there is no
GPU), and the ``tk`` fixture the Triton test modules share."""

from __future__ import annotations

import pytest

from tests.kernels._triton_backend import enable_interpreter, load

enable_interpreter()


@pytest.fixture(scope="module")
def tk():
    """(qvgen_kernels.triton, device): compiled on a GPU, interpreted on CPU (skips where neither can run)."""
    return load()


@pytest.fixture
def row_pass(monkeypatch):
    """Sets the per-token kernels' pass limits (``quantize_act``'s module constants, e.g. ROW_SINGLE_PASS_MAX_K=64)
    for one test; the cached tile choices (``token_tiles``) are dropped when they are set and at the end."""
    import importlib

    qa = importlib.import_module("qvgen_kernels.triton.quantize_act")

    def set_limits(**limits: int) -> None:
        for name, value in limits.items():
            monkeypatch.setattr(qa, name, value)
        qa.token_tiles.cache_clear()

    yield set_limits
    qa.token_tiles.cache_clear()
