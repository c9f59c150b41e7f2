"""Backend resolution: argument > $QVGEN_BACKEND > automatic, aliases, errors, per-op fallback, logging."""

from __future__ import annotations

import importlib
import logging
import types

import pytest
import torch

from qvgen_kernels import _dispatch, ops, reference

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    monkeypatch.setattr(_dispatch, "_logged", set())


def _fake_triton(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    """A Triton backend that only has ``pack`` (delegating to the reference, recording calls)."""
    def pack(codes, bits):
        calls.append("pack")
        return reference.pack(codes, bits)
    monkeypatch.setattr(_dispatch, "_triton_module", lambda: types.SimpleNamespace(pack=pack))
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _no_ext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dispatch, "_ext_status", lambda device: "not built (test)")


@pytest.mark.parametrize("value, expected", [(None, None), ("auto", None), ("", None), ("cuda", "ext"),
                                             ("EXT", "ext"), (" triton ", "triton"), ("reference", "reference")])
def test_normalize(value, expected) -> None:
    assert _dispatch.normalize("pack", value) == expected


def test_env_var_and_argument_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_dispatch.ENV_VAR, "reference")
    assert _dispatch.resolve("pack", CPU)[0] == "reference"
    calls: list[str] = []
    _fake_triton(monkeypatch, calls)
    assert _dispatch.resolve("pack", CPU, "triton")[0] == "triton"  # the argument wins
    monkeypatch.setenv(_dispatch.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=r"pack: argument 'QVGEN_BACKEND' expected one of .*'bogus'"):
        _dispatch.resolve("pack", CPU)


@pytest.mark.parametrize("value, exc", [("gpu", ValueError), (3, TypeError)])
def test_bad_backend_argument(value, exc: type) -> None:
    with pytest.raises(exc, match=r"^unpack: argument 'backend'"):
        ops.unpack(torch.zeros(2, 2, dtype=torch.uint8), 4, 4, backend=value)


def test_auto_on_cpu_prefers_ext_then_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = "ext" if _dispatch.unavailable_reason("ext", CPU) is None else "reference"
    assert _dispatch.resolve("lowbit_gemm", CPU)[0] == expected
    _no_ext(monkeypatch)
    calls: list[str] = []
    _fake_triton(monkeypatch, calls)  # Triton on CPU is never chosen automatically
    assert _dispatch.resolve("pack", CPU)[0] == "reference"


def test_auto_on_cuda_order(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _no_ext(monkeypatch)
    calls: list[str] = []
    _fake_triton(monkeypatch, calls)
    caplog.set_level(logging.INFO, logger="qvgen_kernels")
    assert _dispatch.resolve("pack", CUDA)[0] == "triton"
    name, impl = _dispatch.resolve("quantize_weight", CUDA)  # Triton lacks it: reference
    assert name == "reference" and impl is reference.quantize_weight
    _dispatch.resolve("quantize_weight", CUDA)
    skipped = [r.getMessage() for r in caplog.records if "quantize_weight" in r.getMessage()]
    assert len(skipped) == 2 and "'ext'" in skipped[0] and "'triton'" in skipped[1]  # once each


def test_explicit_unavailable_backend_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    # Define the Triton kernels (under the interpreter) before the variable goes: Triton reads it when a kernel
    # is defined, and later tests in this module run those kernels.
    importlib.import_module("qvgen_kernels.triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"^pack: argument 'backend' .*TRITON_INTERPRET=1"):
        ops.pack(torch.zeros(3, dtype=torch.uint8), 4, backend="triton")
    _no_ext(monkeypatch)
    with pytest.raises(RuntimeError, match=r"^lowbit_linear: argument 'backend' .*'ext' \(not built"):
        ops.lowbit_linear(torch.randn(2, 4), torch.zeros(3, 2, dtype=torch.uint8), torch.ones(3),
                          torch.zeros(3), None, backend="cuda")


def test_explicit_backend_missing_op_falls_back(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    _fake_triton(monkeypatch, calls)
    caplog.set_level(logging.INFO, logger="qvgen_kernels")
    codes = torch.tensor([[1, 2, 3]], dtype=torch.uint8)
    assert torch.equal(ops.pack(codes, 4, backend="triton"), reference.pack(codes, 4)) and calls == ["pack"]
    w = torch.randn(2, 3)
    for _ in range(2):
        ops.quantize_weight(w, torch.ones(2), torch.zeros(2), 4, backend="triton")
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
    assert "reference" in _dispatch.available_backends("cpu")


def test_probes_are_cached_until_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    from qvgen_kernels import _extension
    probes: list[int] = []
    real = _extension.available

    def counting() -> bool:
        probes.append(1)
        return real()
    monkeypatch.setattr(_extension, "available", counting)
    _dispatch.refresh()
    try:
        for _ in range(3):
            _dispatch.resolve("pack", CPU)
            _dispatch.resolve("lowbit_gemm", CPU)
        assert len(probes) == 1  # one probe per device type, not one per call
        monkeypatch.setenv(_dispatch.ENV_VAR, "reference")  # the env var is still read on every call
        assert _dispatch.resolve("pack", CPU)[0] == "reference"
        _dispatch.refresh()
        _dispatch.resolve("pack", CPU, "auto")
        assert len(probes) == 2
    finally:
        monkeypatch.undo()
        _dispatch.refresh()  # no cached result computed under the patch survives the test
