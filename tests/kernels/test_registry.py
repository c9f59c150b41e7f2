"""The op registry: argument > $QVGEN_BACKEND > automatic order, aliases, errors, per-op fallback, logging,
and a toy backend registered here taking over an op."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

from qvgen_kernels import ops, reference, registry

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    monkeypatch.setattr(registry, "_logged", set())
    yield
    monkeypatch.undo()
    registry.unregister_backend("toy")
    registry.refresh()  # no probe result computed under a patch survives the test


def _set_probe(monkeypatch: pytest.MonkeyPatch, name: str, reason: str | None) -> None:
    monkeypatch.setattr(registry._BACKENDS[name], "probe", lambda device: reason)
    registry.refresh()


def _toy(calls: list[str], auto: dict[str, int] | None = None) -> None:
    """A backend with only ``pack`` (delegating to the reference, recording calls)."""
    registry.register_backend("toy", auto=auto, aliases=("toy-alias",))

    @registry.register_impl("pack", "toy")
    def pack(codes, bits):
        calls.append("pack")
        return reference.pack(codes, bits)


@pytest.mark.parametrize("value, expected", [(None, None), ("auto", None), ("", None), ("cuda", "ext"),
                                             ("EXT", "ext"), (" triton ", "triton"), ("reference", "reference"),
                                             ("CPU_INT8", "cpu_int8")])
def test_normalize(value, expected) -> None:
    assert registry.normalize("pack", value) == expected


def test_toy_backend_takes_over_an_op_and_leaves_the_others() -> None:
    calls: list[str] = []
    _toy(calls, auto={"cpu": 0})  # ahead of every built-in backend on CPU
    codes = torch.tensor([[1, 2, 3]], dtype=torch.uint8)
    assert torch.equal(ops.pack(codes, 4), reference.pack(codes, 4)) and calls == ["pack"]
    assert registry.resolve("unpack", CPU)[0] != "toy"  # it has no unpack: the next backend serves it
    assert registry.normalize("pack", "toy-alias") == "toy"
    registry.unregister_backend("toy")
    ops.pack(codes, 4)
    assert calls == ["pack"] and "toy" not in registry.backend_names()


def test_register_impl_needs_a_backend() -> None:
    with pytest.raises(KeyError, match="not registered"):
        registry.register_impl("pack", "nobody", lambda *a: None)


def test_env_var_and_argument_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.ENV_VAR, "reference")
    assert registry.resolve("pack", CPU)[0] == "reference"
    _toy([])
    assert registry.resolve("pack", CPU, "toy")[0] == "toy"  # the argument wins
    monkeypatch.setenv(registry.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=r"pack: argument 'QVGEN_BACKEND' expected one of .*'bogus'"):
        registry.resolve("pack", CPU)


@pytest.mark.parametrize("value, exc", [("gpu", ValueError), (3, TypeError)])
def test_bad_backend_argument(value, exc: type) -> None:
    with pytest.raises(exc, match=r"^unpack: argument 'backend'"):
        ops.unpack(torch.zeros(2, 2, dtype=torch.uint8), 4, 4, backend=value)


def test_auto_order_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    if registry.unavailable_reason("cpu_int8", CPU) is None:
        assert registry.resolve("prepacked_linear", CPU)[0] == "cpu_int8"
        assert registry.resolve("lowbit_linear", CPU)[0] == "cpu_int8"
        assert registry.resolve("lowbit_gemm", CPU)[0] == "ext"  # cpu_int8 has no packed-activation GEMM
    _set_probe(monkeypatch, "cpu_int8", "off (test)")
    _set_probe(monkeypatch, "ext", "not built (test)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton on CPU is never chosen automatically
    assert registry.resolve("lowbit_linear", CPU)[0] == "reference"


def test_auto_order_on_cuda(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _set_probe(monkeypatch, "ext", "not built (test)")
    _set_probe(monkeypatch, "triton", None)
    caplog.set_level(logging.INFO, logger="qvgen_kernels")
    assert registry.resolve("prepacked_linear", CUDA)[0] == "triton"  # Triton before the dp4a ext GEMM
    name, impl = registry.resolve("quantize_weight", CUDA)  # Triton lacks it: reference
    assert name == "reference" and impl is reference.quantize_weight
    registry.resolve("quantize_weight", CUDA)
    skipped = [r.getMessage() for r in caplog.records if "quantize_weight" in r.getMessage()]
    assert len(skipped) == 1 and "'ext'" in skipped[0]  # logged once


def test_explicit_unavailable_backend_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    # Define the Triton kernels (under the interpreter) before the variable goes: Triton reads it when a kernel
    # is defined, and later tests run those kernels.
    importlib.import_module("qvgen_kernels.triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"^pack: argument 'backend' .*TRITON_INTERPRET=1"):
        ops.pack(torch.zeros(3, dtype=torch.uint8), 4, backend="triton")
    _set_probe(monkeypatch, "ext", "not built (test)")
    with pytest.raises(RuntimeError, match=r"^lowbit_linear: argument 'backend' .*'ext' \(not built"):
        ops.lowbit_linear(torch.randn(2, 4), torch.zeros(3, 2, dtype=torch.uint8), torch.ones(3),
                          torch.zeros(3), None, backend="cuda")


def test_explicit_backend_missing_op_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    _toy(calls)
    caplog.set_level(logging.INFO, logger="qvgen_kernels")
    w = torch.randn(2, 3)
    for _ in range(2):
        ops.quantize_weight(w, torch.ones(2), torch.zeros(2), 4, backend="toy")
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("has no quantize_weight" in m for m in msgs) == 1


def test_every_backend_agrees_with_reference(backend: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 50, generator=gen)
    w = torch.randn(9, 50, generator=gen)
    scale, zero = (w.amax(1) - w.amin(1)) / 15, torch.full((9,), 7.5)
    wp = ops.pack(ops.quantize_weight(w, scale, zero, 4), 4)
    got = ops.lowbit_linear(x, wp, scale, zero, None, backend=backend)
    want = ops.lowbit_linear(x, wp, scale, zero, None, backend="reference")
    # Identical codes; the fp32 epilogue may differ by rounding order (FMA contraction): rtol 1e-6.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_available_backends_lists_reference() -> None:
    assert "reference" in registry.available_backends("cpu")


def test_probes_are_cached_until_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[int] = []
    real = registry._BACKENDS["ext"].probe

    def counting(device):
        probes.append(1)
        return real(device)
    monkeypatch.setattr(registry._BACKENDS["ext"], "probe", counting)
    registry.refresh()
    for _ in range(3):
        registry.resolve("pack", CPU)
        registry.resolve("lowbit_gemm", CPU)
    assert len(probes) == 1  # one probe per device type, not one per call
    monkeypatch.setenv(registry.ENV_VAR, "reference")  # the env var is still read on every call
    assert registry.resolve("pack", CPU)[0] == "reference"
    registry.refresh()
    registry.resolve("pack", CPU, "auto")
    assert len(probes) == 2
