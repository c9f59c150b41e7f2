"""Kernel arguments the data cannot vouch for: the int32 accumulator limit (K * P_a * P_w < 2^31) and the
weight-side / activation-side parameters (scales finite and > 0, zero points finite or in [0, P]), checked
once in the ops layer on every backend, with errors naming the op, the argument, expected and got."""

from __future__ import annotations

import pytest
import torch

from qvgen_kernels import ops
from qvgen_kernels.format import check_accumulator, qmax


@pytest.mark.parametrize("a_bits, w_bits, k_max", [(8, 8, 33025), (8, 4, 561_433), (4, 4, 9_544_371)])
def test_accumulator_limit_is_exact(a_bits: int, w_bits: int, k_max: int) -> None:
    check_accumulator("op", k_max, a_bits, w_bits)  # the largest K whose worst case fits int32
    assert k_max * qmax(a_bits) * qmax(w_bits) < 2**31 <= (k_max + 1) * qmax(a_bits) * qmax(w_bits)
    with pytest.raises(ValueError, match=rf"^op: argument 'k' expected at most {k_max} columns per int32"):
        check_accumulator("op", k_max + 1, a_bits, w_bits)
    check_accumulator("op", 10**9, 16, w_bits)  # weight-only: no integer accumulator


def test_w8a8_k_over_limit_is_refused_by_every_entry(backend: str) -> None:
    """K = 33,026 at W8A8 used to wrap the int32 sum silently (sign flip) on the ext and Triton GEMMs."""
    k, n = 33026, 2
    x = torch.randn(1, k)
    wp, ws, wz = torch.zeros(n, k, dtype=torch.uint8), torch.ones(n), torch.zeros(n)
    with pytest.raises(ValueError, match=r"^lowbit_linear: argument 'k' expected at most 33025 columns"):
        ops.lowbit_linear(x, wp, ws, wz, None, w_bits=8, a_bits=8, backend=backend)
    with pytest.raises(ValueError, match=r"^prepack_linear: argument 'k' expected at most 33025 columns"):
        ops.prepack_linear(wp, ws, wz, w_bits=8, a_bits=8, k=k, backend=backend)
    q = ops.quantize_per_token(x, 8)
    with pytest.raises(ValueError, match=r"^lowbit_gemm: argument 'k' expected at most 33025 columns"):
        ops.lowbit_gemm(*q, wp, ws, wz, None, w_bits=8, a_bits=8, k=k, out_dtype=torch.float32, backend=backend)
    # Weight groups split the accumulator: 2 groups of 16,513 columns fit.
    ops.lowbit_linear(x[:, :33026], wp, ws[:, None].repeat(1, 2), wz[:, None].repeat(1, 2), None, w_bits=8,
                      a_bits=8, backend="reference")


BAD_WEIGHT = [("w_scale", float("nan"), "finite values > 0"), ("w_scale", -1.0, "finite values > 0"),
              ("w_scale", 0.0, "finite values > 0"), ("w_scale", float("inf"), "finite values > 0"),
              ("w_zero", float("nan"), "finite values"), ("w_zero", float("inf"), "finite values")]


@pytest.mark.parametrize("arg, value, expected", BAD_WEIGHT)
def test_bad_weight_parameters(backend: str, arg: str, value: float, expected: str) -> None:
    k, n = 16, 3
    wp = ops.pack(torch.randint(0, 16, (n, k), dtype=torch.uint8), 4)
    params = {"w_scale": torch.ones(n), "w_zero": torch.zeros(n)}
    params[arg][1] = value
    x = torch.randn(2, k)
    for op, call in [("lowbit_linear", lambda: ops.lowbit_linear(x, wp, params["w_scale"], params["w_zero"], None,
                                                                 backend=backend)),
                     ("prepack_linear", lambda: ops.prepack_linear(wp, params["w_scale"], params["w_zero"], w_bits=4,
                                                                   a_bits=4, k=k, backend=backend)),
                     ("lowbit_gemm", lambda: ops.lowbit_gemm(*ops.quantize_per_token(x, 4), wp, params["w_scale"],
                                                             params["w_zero"], None, w_bits=4, a_bits=4, k=k,
                                                             out_dtype=torch.float32, backend=backend))]:
        with pytest.raises(ValueError, match=rf"^{op}: argument '{arg}' expected {expected}"):
            call()


@pytest.mark.parametrize("arg, value, expected", [("a_scale", float("nan"), "finite values > 0"),
                                                  ("a_scale", -0.5, "finite values > 0"),
                                                  ("a_zero", 16, r"values in \[0, 15\]"),
                                                  ("a_zero", -1, r"values in \[0, 15\]")])
def test_bad_activation_parameters(backend: str, arg: str, value: float, expected: str) -> None:
    k, n = 16, 3
    wp = ops.pack(torch.randint(0, 16, (n, k), dtype=torch.uint8), 4)
    packed, scale, zero, rowsum = ops.quantize_per_token(torch.randn(2, k), 4)
    args = {"a_scale": scale.clone(), "a_zero": zero.clone()}
    args[arg][0] = value
    with pytest.raises(ValueError, match=rf"^lowbit_gemm: argument '{arg}' expected {expected}"):
        ops.lowbit_gemm(packed, args["a_scale"], args["a_zero"], rowsum, wp, torch.ones(n), torch.zeros(n), None,
                        w_bits=4, a_bits=4, k=k, out_dtype=torch.float32, backend=backend)


def test_empty_output_dim_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^lowbit_linear: argument 'w_packed' expected"):
        ops.lowbit_linear(torch.randn(2, 8), torch.zeros(0, 4, dtype=torch.uint8), torch.ones(0), torch.zeros(0), None)
    with pytest.raises(ValueError, match=r"^prepack_linear: argument 'w_packed' expected"):
        ops.prepack_linear(torch.zeros(0, 4, dtype=torch.uint8), torch.ones(0), torch.zeros(0), w_bits=4, a_bits=4,
                           k=8)


def test_fp64_fake_quant_agrees_or_is_refused(backend: str) -> None:
    """fp64 (gradcheck) inputs: a backend computes what the reference computes, or refuses with a clear error."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 40, dtype=torch.float64, generator=gen)
    w = torch.randn(6, 40, dtype=torch.float64, generator=gen)
    s = torch.rand(6, dtype=torch.float64, generator=gen) * 0.1 + 0.01
    z = torch.rand(6, dtype=torch.float64, generator=gen) * 15
    for call in (lambda b: ops.fake_quant_act(x, 4, 0.9, 1.0, backend=b),
                 lambda b: ops.fake_quant_weight(w, s, z, 4, backend=b)):
        want = call("reference")
        try:
            got = call(backend)
        except TypeError as e:
            assert "argument" in str(e) and "float64" in str(e)
            continue
        assert got.dtype == torch.float64 and torch.equal(got, want)


def test_activation_range_beyond_float32_is_a_clear_error(backend: str) -> None:
    """Finite x whose per-token range overflows float32 (|x| ~ 3e38 on both sides) would make the scale Inf and
    the whole row NaN: every entry refuses it, naming the token; a large but representable range still runs."""
    k, n = 16, 3
    wp = ops.pack(torch.randint(0, 16, (n, k), dtype=torch.uint8), 4)
    ws, wz = torch.full((n,), 0.01), torch.full((n,), 7.5)
    x = torch.randn(3, k)
    x[1, 0], x[1, 1] = 3e38, -3e38
    with pytest.raises(ValueError, match=r"argument 'x' expected a per-token range.*(token|row) 1"):
        ops.lowbit_linear(x, wp, ws, wz, None, w_bits=4, a_bits=4, backend=backend)
    packed = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=k, backend=backend)
    with pytest.raises(ValueError, match=r"argument 'x' expected a per-token range.*(token|row) 1"):
        ops.prepacked_linear(x, packed)
    with pytest.raises(ValueError, match=r"argument 'x' expected a per-token range"):
        ops.fake_quant_act(x, 4, backend=backend if backend in ("reference", "triton") else None)
    x[1, 0], x[1, 1] = 1.5e38, -1.5e38  # range 3e38 < float32 max: runs, and nothing is NaN
    assert torch.isfinite(ops.lowbit_linear(x, wp, ws, wz, None, w_bits=4, a_bits=4, backend=backend)).all()
    assert torch.isfinite(ops.fake_quant_act(x, 4)).all()
