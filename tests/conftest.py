"""Test configuration: skip ``gpu``-marked tests without CUDA; a ``backend`` fixture over the CPU backends."""

from __future__ import annotations

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported: set it before any test module imports it, so the
# Triton kernels run (through the interpreter) on CPU-only machines.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from qvgen_kernels import registry


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=registry.backend_names())
def backend(request: pytest.FixtureRequest) -> str:
    """Every backend that can run on CPU here (ext if built, triton under TRITON_INTERPRET=1)."""
    reason = registry.unavailable_reason(request.param, torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable on CPU: {reason}")
    return request.param
