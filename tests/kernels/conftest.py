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
