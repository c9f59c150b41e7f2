"""Test configuration: skip ``gpu``-marked tests without CUDA; a ``backend`` fixture over the CPU backends."""

from __future__ import annotations

import pytest
import torch

from qvgen_kernels import _dispatch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=_dispatch.BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every backend that can run on CPU here (ext if built, triton under TRITON_INTERPRET=1)."""
    reason = _dispatch.unavailable_reason(request.param, torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable on CPU: {reason}")
    return request.param
