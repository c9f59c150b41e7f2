"""Benchmark tests run with one torch thread (restored afterwards): on a small shared CPU, more OpenMP threads
than idle cores make these model-sized tests many times slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
