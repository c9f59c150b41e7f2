"""quantize_per_token / quantize_weight / dequantize_weight against format.py, ties, edge tokens, errors."""

from __future__ import annotations

import math

import pytest
import torch

from qvgen_kernels import ops
from qvgen_kernels.format import ACT_EPS, packed_width, padded_k, qmax
from qvgen_kernels.reference import quantize_per_token as ref_quantize_per_token
from qvgen_kernels.reference import unpack as ref_unpack
from tests._utils import assert_close_verbose, id_formatter, seed_all


def _codes(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    return ref_unpack(packed.reshape(-1, packed.shape[-1]), bits, k).reshape(*packed.shape[:-1], k)


def _float64_act(x: torch.Tensor, bits: int, c_lo: float, c_hi: float):
    """Independent per-row formula in float64, plain Python per token."""
    p = qmax(bits)
    scales, zeros, codes = [], [], []
    for row in x.double().tolist():
        lo, hi = c_lo * min(0.0, min(row)), c_hi * max(0.0, max(row))
        s = max((hi - lo) / p, ACT_EPS)
        z = min(max(round(-lo / s), 0), p)  # Python round: half to even
        scales.append(s)
        zeros.append(z)
        codes.append([min(max(round(v / s) + z, 0), p) for v in row])
    return torch.tensor(scales, dtype=torch.float64), torch.tensor(zeros), torch.tensor(codes)


@pytest.mark.parametrize("bits", [3, 4, 8], ids=id_formatter("bits"))
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 64), (5, 129)], ids=id_formatter("shape"))
@pytest.mark.parametrize("clip", [(1.0, 1.0), (0.9, 0.8)], ids=id_formatter("clip"))
def test_per_token_vs_float64(bits: int, shape: tuple[int, int], clip: tuple[float, float]) -> None:
    seed_all(sum(shape) + bits)
    x = torch.randn(shape) * torch.rand(shape[0], 1) * 4
    packed, scale, zero, rowsum = ops.quantize_per_token(x, bits, *clip)
    s64, z64, q64 = _float64_act(x, bits, *clip)
    # fp32 vs fp64 scale: a few fp32 rounding steps (product, difference, division), so rtol 1e-6.
    assert_close_verbose(scale.double(), s64, rtol=1e-6)
    v = x.double() / s64[:, None]
    near_tie = (v - v.floor() - 0.5).abs() < 1e-4
    zv = -(x.double().amin(1).clamp_max(0) * clip[0]) / s64
    zero_tie = (zv - zv.floor() - 0.5).abs() < 1e-4
    codes = _codes(packed, bits, shape[1]).long()
    diff = (codes - q64).abs()
    # Codes agree exactly except where fp32 and fp64 fall on both sides of a rounding tie (then by 1).
    assert int(diff.max()) <= 1 and not (diff.bool() & ~(near_tie | zero_tie[:, None])).any()
    assert not ((zero.long() != z64) & ~zero_tie).any()
    assert torch.equal(rowsum, (codes - zero[:, None]).sum(1).int())


def test_round_half_even_ties(backend: str) -> None:
    # Row 0: range [0, 15] -> s = 1, z = 0; row 1: [-8, 7] -> s = 1, z = 8. Every x/s is an exact tie.
    x = torch.tensor([[0.5, 1.5, 2.5, 15.0, 3.5, 0.0], [-0.5, -1.5, 2.5, -8.0, 7.0, 6.5]])
    packed, scale, zero, _ = ops.quantize_per_token(x, 4, backend=backend)
    assert scale.tolist() == [1.0, 1.0] and zero.tolist() == [0, 8]
    assert _codes(packed, 4, 6).tolist() == [[0, 2, 2, 15, 4, 0], [8, 6, 10, 0, 15, 14]]


def test_zero_point_tie() -> None:
    # [-7.5, 7.5] and [-6.5, 8.5]: s = 1, -lo/s = 7.5 and 6.5 round (half even) to 8 and 6.
    x = torch.tensor([[-7.5, 7.5], [-6.5, 8.5]])
    _, scale, zero, _ = ops.quantize_per_token(x, 4)
    assert scale.tolist() == [1.0, 1.0] and zero.tolist() == [8, 6]


def test_degenerate_tokens(backend: str) -> None:
    x = torch.tensor([[0.0] * 5, [2.0] * 5, [-3.0] * 5, [0.0, 0.0, 1e-30, 0.0, 0.0]])
    packed, scale, zero, rowsum = ops.quantize_per_token(x, 4, backend=backend)
    codes = _codes(packed, 4, 5)
    assert scale[0].item() == pytest.approx(ACT_EPS, rel=1e-6) and zero[0] == 0 and not codes[0].any()
    assert codes[1].tolist() == [15] * 5 and zero[1] == 0  # constant > 0: the top code
    assert codes[2].tolist() == [0] * 5 and zero[2] == 15  # constant < 0: code 0, z = P
    assert rowsum.tolist() == [0, 75, -75, 0]
    x_hat = scale[:, None] * (codes.float() - zero[:, None].float())
    assert_close_verbose(x_hat[:3], x[:3], rtol=1e-6)  # constant tokens are represented (fp32 ulps)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_extreme_codes_and_clipping(bits: int) -> None:
    seed_all(bits)
    x = torch.randn(6, 40)
    codes = _codes(ops.quantize_per_token(x, bits)[0], bits, 40)
    assert (codes.amax(1) == qmax(bits)).all() and (codes.amin(1) == 0).all()
    clipped = _codes(ops.quantize_per_token(x, bits, 0.5, 0.5)[0], bits, 40)
    assert (clipped == 0).sum(1).min() >= 1 and (clipped == qmax(bits)).sum(1).min() >= 2


@pytest.mark.parametrize("bits", [3, 4])
def test_padding_carries_zero_point(bits: int) -> None:
    seed_all(0)
    k = 11
    packed, _, zero, _ = ops.quantize_per_token(torch.randn(4, k), bits)
    full = ref_unpack(packed, bits, padded_k(k, bits))
    assert torch.equal(full[:, k:], zero[:, None].expand(-1, padded_k(k, bits) - k).to(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=id_formatter("dtype"))
def test_half_inputs_are_upcast(dtype: torch.dtype, backend: str) -> None:
    seed_all(1)
    x = torch.randn(9, 24).to(dtype)
    got = ops.quantize_per_token(x, 4, 0.95, 0.9, backend=backend)
    want = ops.quantize_per_token(x.float(), 4, 0.95, 0.9, backend="reference")
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_leading_dims_and_tensor_clips(backend: str) -> None:
    seed_all(2)
    x = torch.randn(2, 3, 17)
    clip_hi = torch.tensor([[0.9], [0.7]])  # broadcast over the second dim
    packed, scale, zero, rowsum = ops.quantize_per_token(x, 4, 1.0, clip_hi, backend=backend)
    assert packed.shape == (2, 3, packed_width(17, 4)) and scale.shape == zero.shape == rowsum.shape == (2, 3)
    flat = ref_quantize_per_token(x.reshape(6, 17), 4, torch.ones(6), clip_hi.expand(2, 3).reshape(6))
    for g, w in zip((packed.reshape(6, -1), scale.reshape(6), zero.reshape(6), rowsum.reshape(6)), flat):
        assert torch.equal(g, w)


def test_empty_rows() -> None:
    packed, scale, zero, rowsum = ops.quantize_per_token(torch.zeros(0, 9), 3)
    assert packed.shape == (0, packed_width(9, 3)) and scale.shape == zero.shape == rowsum.shape == (0,)


@pytest.mark.parametrize("groups", [0, 1, 4], ids=id_formatter("groups"))
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_weight_codes_on_grid(groups: int, bits: int) -> None:
    # W built on the grid s * (q - z): quantize_weight must return q exactly; dequantize gives W back.
    gen = seed_all(groups * 10 + bits)
    n, k = 13, 64
    pshape = (n,) if groups == 0 else (n, groups)
    scale = torch.rand(pshape, generator=gen) * 0.1 + 0.01
    zero = torch.rand(pshape, generator=gen) * qmax(bits)
    q = torch.randint(0, qmax(bits) + 1, (n, k), generator=gen, dtype=torch.uint8)
    s_e = scale[:, None] if groups == 0 else scale.repeat_interleave(k // groups, 1)
    z_e = zero[:, None] if groups == 0 else zero.repeat_interleave(k // groups, 1)
    w = s_e.double() * (q.double() - z_e.double())
    codes = ops.quantize_weight(w.float(), scale, zero, bits)
    assert codes.dtype == torch.uint8 and torch.equal(codes, q)
    # fp32 s * (q - z) vs the fp64 grid value: two fp32 roundings, so rtol 1e-6 (atol for w near 0).
    assert_close_verbose(ops.dequantize_weight(codes, scale, zero), w, rtol=1e-6, atol=1e-7)


def test_weight_clamps_and_half_dtype() -> None:
    w = torch.tensor([[-100.0, 0.0, 0.5, 100.0]], dtype=torch.bfloat16)
    codes = ops.quantize_weight(w, torch.tensor([1.0]), torch.tensor([2.0]), 3)
    assert codes.tolist() == [[0, 2, 2, 7]]  # 0.5 + 2 = 2.5 -> 2 (half to even)


def _err(call, exc: type, op: str, arg: str) -> None:
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).startswith(f"{op}:") and f"'{arg}'" in str(info.value), str(info.value)


X = torch.randn(3, 8)
W = torch.randn(4, 8)
ONE4 = torch.ones(4)


@pytest.mark.parametrize("call, exc, arg", [
    (lambda: ops.quantize_per_token(X.double(), 4), TypeError, "x"),
    (lambda: ops.quantize_per_token(X.int(), 4), TypeError, "x"),
    (lambda: ops.quantize_per_token(torch.zeros(3, 0), 4), ValueError, "x"),
    (lambda: ops.quantize_per_token(X, 16), ValueError, "bits"),
    (lambda: ops.quantize_per_token(X, 2), ValueError, "bits"),
    (lambda: ops.quantize_per_token(X, 4, 0.0), ValueError, "clip_lo"),
    (lambda: ops.quantize_per_token(X, 4, 1.0, 1.5), ValueError, "clip_hi"),
    (lambda: ops.quantize_per_token(X, 4, "1"), TypeError, "clip_lo"),
    (lambda: ops.quantize_per_token(X, 4, torch.ones(4)), ValueError, "clip_lo"),
    (lambda: ops.quantize_per_token(X, 4, torch.ones(3, dtype=torch.int64)), TypeError, "clip_lo"),
    (lambda: ops.quantize_per_token(X, 4, 1.0, torch.full((3,), 2.0)), ValueError, "clip_hi"),
    (lambda: ops.quantize_per_token(X.index_put((torch.tensor([1]), torch.tensor([2])),
                                                torch.tensor(math.nan)), 4), ValueError, "x"),
    (lambda: ops.quantize_per_token(X.index_put((torch.tensor([0]), torch.tensor([0])),
                                                torch.tensor(math.inf)), 4), ValueError, "x"),
    (lambda: ops.quantize_weight(W, ONE4, ONE4, 16), ValueError, "bits"),
    (lambda: ops.quantize_weight(W[None], ONE4, ONE4, 4), ValueError, "w"),
    (lambda: ops.quantize_weight(W, torch.ones(5), ONE4, 4), ValueError, "scale"),
    (lambda: ops.quantize_weight(W, torch.ones(4, 3), torch.ones(4, 3), 4), ValueError, "scale"),
    (lambda: ops.quantize_weight(W, ONE4, torch.ones(4, 1), 4), ValueError, "zero"),
    (lambda: ops.quantize_weight(W, ONE4.int(), ONE4, 4), TypeError, "scale"),
    (lambda: ops.quantize_weight(W, -ONE4, ONE4, 4), ValueError, "scale"),
    (lambda: ops.quantize_weight(W, ONE4, torch.full((4,), math.nan), 4), ValueError, "zero"),
    (lambda: ops.quantize_weight(W * math.inf, ONE4, ONE4, 4), ValueError, "w"),
    (lambda: ops.dequantize_weight(W, ONE4, ONE4), TypeError, "codes"),
])
def test_bad_input(call, exc: type, arg: str) -> None:
    op = "quantize_per_token" if "quantize_per_token" in call.__code__.co_names else (
        "dequantize_weight" if "dequantize_weight" in call.__code__.co_names else "quantize_weight")
    _err(call, exc, op, arg)
