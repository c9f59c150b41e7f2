"""Plain eager inference calls a deployed layer's backend implementation without the dispatcher
(``_ops.run_prepacked_linear``); every other call (gradients, torch function / dispatch modes, the profiler,
torch.compile) still goes through the registered op. Same output either way; the op's data checks run on both.

Triton backend (an opaque op under torch.compile), compiled on a GPU or under TRITON_INTERPRET=1 on CPU.
"""

from __future__ import annotations

import pytest
import torch

from qvgen_kernels import _ops, ops
from qvgen_kernels import reference as ref
from qvgen_kernels.format import qmax


@pytest.fixture
def layer(tk):
    mod, dev = tk
    gen = torch.Generator().manual_seed(4)
    n, k = 130, 96
    codes = torch.randint(0, qmax(4) + 1, (n, k), generator=gen, dtype=torch.uint8)
    packed = ops.prepack_linear(ref.pack(codes, 4).to(dev), (0.01 + torch.rand(n, generator=gen)).to(dev),
                                (15 * torch.rand(n, generator=gen)).to(dev), w_bits=4, a_bits=4, k=k,
                                backend="triton")
    x = torch.randn(5, k, generator=gen).to(dev)
    bias = torch.randn(n, generator=gen).to(dev)
    return packed, x, bias


@pytest.fixture
def op_calls(monkeypatch) -> list:
    """Counts the calls that go through the registered op."""
    calls: list = []
    op = _ops.prepacked_linear

    def counted(*args):
        calls.append(1)
        return op(*args)

    monkeypatch.setattr(_ops, "prepacked_linear", counted)
    return calls


def test_plain_eager_skips_the_dispatcher_with_the_same_output(layer, op_calls):
    packed, x, bias = layer
    with torch.no_grad():
        direct = ops.prepacked_linear(x, packed, bias, 0.9, 1.0)
    assert not op_calls
    with torch.device(x.device):  # a torch function mode: through the op
        through_op = ops.prepacked_linear(x, packed, bias, 0.9, 1.0)
    assert len(op_calls) == 1
    assert torch.equal(direct, through_op)


@pytest.mark.parametrize("case", ["x_requires_grad", "bias_requires_grad", "profiler"])
def test_other_calls_go_through_the_op(layer, op_calls, case):
    packed, x, bias = layer
    if case == "x_requires_grad":
        x = x.clone().requires_grad_()
    if case == "bias_requires_grad":
        bias = bias.clone().requires_grad_()
    if case == "profiler":
        with torch.profiler.profile() as prof:
            ops.prepacked_linear(x, packed, bias)
        assert any("qvgen::prepacked_linear" in e.key for e in prof.key_averages())  # named in profiles
    else:
        try:
            ops.prepacked_linear(x, packed, bias)
        except RuntimeError:
            pass  # the op has no autograd formula; only the route matters here
    assert len(op_calls) == 1


def test_data_checks_run_on_the_direct_path(layer, op_calls):
    packed, x, bias = layer
    if not _ops.check_data(x):
        pytest.skip("data checks are off on this device (set QVGEN_CHECK_DATA=1)")
    x = x.clone()
    x[2, 3] = float("nan")
    with torch.no_grad(), pytest.raises(ValueError, match="prepacked_linear.*finite"):
        ops.prepacked_linear(x, packed, bias)
    assert not op_calls


def test_split_k_workspace_is_kept_per_stream(tk):
    mod, dev = tk
    dev = torch.device(dev)
    a = mod.gemm_tc.split_workspace(3, 16, dev)
    b = mod.gemm_tc.split_workspace(2, 16, dev)
    assert b.data_ptr() == a.data_ptr() and b.numel() < a.numel() and not a.any()
    c = mod.gemm_tc.split_workspace(50, 16, dev)  # more than kept: a new, larger zeroed one
    assert c.numel() == 50 * (128 * 16 + 1) and not c.any()
    assert mod.gemm_tc.split_workspace(3, 16, dev).data_ptr() == c.data_ptr()


def test_split_k_workspaces_are_bounded(tk, monkeypatch):
    """One kept workspace per stream, the most recent WORKSPACES_KEPT streams only (streams may come and go)."""
    mod, dev = tk
    monkeypatch.setattr(mod.gemm_tc, "_WORKSPACES", {})
    for i in range(mod.gemm_tc.WORKSPACES_KEPT + 3):
        mod.gemm_tc._WORKSPACES[("stream", i)] = torch.zeros(1, dtype=torch.int32)
        mod.gemm_tc.split_workspace(1 + i, 16, torch.device(dev))  # a new size each time: a new allocation
    assert len(mod.gemm_tc._WORKSPACES) == mod.gemm_tc.WORKSPACES_KEPT
    assert list(mod.gemm_tc._WORKSPACES)[-1][0] == torch.device(dev)  # the stream in use is kept
