"""The compiled extension ``qvgen_kernels._C``: every ``torch.ops.qvgen_ext`` op against the reference.

Everything is bit-exact (``torch.equal``): the integer parts by construction, and the float parts
(activation scale, GEMM epilogue) because the kernels perform the reference's fp32 operations in the
reference's order (no FMA contraction, IEEE division, round half to even). Skipped when the
extension is not built. The torch-free C++ tests of csrc/ run through CMake/CTest (`make cmake-check`).
"""

from __future__ import annotations

import zlib

import pytest
import torch

from qvgen_kernels import _extension, ops, reference
from qvgen_kernels.format import packed_width, padded_k, qmax
from tests._utils import id_formatter, random_codes, seed_all

if not _extension.available():
    pytest.skip(f"qvgen_kernels._C is not built ({_extension._load()[1]}); {_extension.BUILD_HINT}",
                allow_module_level=True)

ext = torch.ops.qvgen_ext
BITS = [3, 4, 8]
WA_BITS = [(4, 4), (3, 3), (4, 8), (8, 8)]
KS = [1, 2, 3, 7, 8, 9, 13, 64, 130]


def _seed(*params: object) -> torch.Generator:
    """A generator seeded from the test's parameters (stable across runs, unlike ``hash``)."""
    return seed_all(zlib.crc32(repr(params).encode()))


def _activations(m: int, k: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Random rows with varied ranges, plus an all-zero row and a constant row when m allows."""
    x = torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen).mul(4).exp()
    if m >= 3:
        x[1] = 0.0
        x[2] = 0.75
    return x.to(dtype)


def _clips(m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return 0.5 + 0.5 * torch.rand(m, generator=gen), 0.5 + 0.5 * torch.rand(m, generator=gen)


# ---------------------------------------------------------------- pack / unpack

@pytest.mark.parametrize("bits", BITS, ids=id_formatter("bits"))
@pytest.mark.parametrize("k", KS, ids=id_formatter("k"))
@pytest.mark.parametrize("lead", [(1,), (3,), (2, 5)], ids=id_formatter("lead"))
def test_pack_unpack_match_reference(bits: int, k: int, lead: tuple[int, ...]) -> None:
    gen = _seed("pack", bits, k, lead)
    codes = random_codes((*lead, k), bits, gen)
    codes.view(-1, k)[0, 0] = qmax(bits)  # the extreme codes appear in every case
    codes.view(-1, k)[-1, -1] = 0
    packed = ext.pack(codes, bits)
    assert packed.shape == (*lead, packed_width(k, bits)) and packed.dtype == torch.uint8
    assert torch.equal(packed, reference.pack(codes, bits))
    assert torch.equal(ext.unpack(packed, bits, k), codes)


def test_pack_worked_example_and_non_contiguous() -> None:
    codes = torch.tensor([[5, 3, 7, 0, 1, 2, 6, 4]], dtype=torch.uint8)
    assert ext.pack(codes, 3).tolist() == [[0x3D, 0x29, 0xC5]]  # format.py's example
    wide = random_codes((6, 20), 4, _seed("nc"))
    view = wide[::2, 3:16]  # strided rows, odd K
    assert torch.equal(ext.pack(view, 4), reference.pack(view.contiguous(), 4))


def test_code_range_is_checked_once_in_the_ops_layer() -> None:
    with pytest.raises(ValueError, match=r"^pack: argument 'codes' expected"):
        ops.pack(torch.full((2, 5), 16, dtype=torch.uint8), 4, backend="ext")


def test_pack_empty_rows() -> None:
    codes = torch.empty(0, 9, dtype=torch.uint8)
    assert ext.pack(codes, 3).shape == (0, packed_width(9, 3))
    assert ext.unpack(ext.pack(codes, 4), 4, 9).shape == (0, 9)


@pytest.mark.parametrize(("call", "exc", "needle"), [
    (lambda: ext.pack(torch.zeros(2, 5, dtype=torch.int32), 4), TypeError, "argument 'codes'"),
    (lambda: ext.pack(torch.zeros(2, 5, dtype=torch.uint8), 5), ValueError, "argument 'bits'"),
    (lambda: ext.pack(torch.tensor(3, dtype=torch.uint8), 4), ValueError, "argument 'codes'"),
    (lambda: ext.unpack(torch.zeros(2, 4, dtype=torch.uint8), 4, 9), ValueError, "argument 'packed'"),
    (lambda: ext.unpack(torch.zeros(2, 0, dtype=torch.uint8), 4, 0), ValueError, "argument 'k'"),
    (lambda: ext.unpack(torch.zeros(2, 3, dtype=torch.float32), 3, 8), TypeError, "argument 'packed'"),
], ids=["codes-dtype", "bits", "codes-0d", "width", "k-zero", "packed-dtype"])
def test_pack_unpack_errors(call, exc: type[Exception], needle: str) -> None:
    with pytest.raises(exc, match=needle) as info:
        call()
    assert "qvgen_ext::" in str(info.value)


# ---------------------------------------------------------------- quantize_per_token

def _assert_quant_equal(got: tuple, want: tuple) -> None:
    for name, g, w in zip(("packed", "scale", "zero", "rowsum"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g, w), f"{name}: max diff {(g.double() - w.double()).abs().max().item()}"


@pytest.mark.parametrize("bits", BITS, ids=id_formatter("bits"))
@pytest.mark.parametrize("m", [1, 3, 67], ids=id_formatter("m"))
@pytest.mark.parametrize("k", [1, 5, 8, 13, 130], ids=id_formatter("k"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=id_formatter("dtype"))
def test_quantize_matches_reference(bits: int, m: int, k: int, dtype: torch.dtype) -> None:
    gen = _seed("quant", bits, m, k, dtype)
    x = _activations(m, k, dtype, gen)
    lo, hi = _clips(m, gen)
    _assert_quant_equal(ext.quantize_per_token(x, bits, lo, hi), reference.quantize_per_token(x, bits, lo, hi))


@pytest.mark.parametrize("bits", BITS, ids=id_formatter("bits"))
def test_quantize_ties_round_half_to_even(bits: int) -> None:
    """Rows spanning [-2.5, P - 2.5] have s = 1 exactly, so every half-integer value is a tie."""
    gen = _seed("ties", bits)
    p = qmax(bits)
    halves = torch.randint(-2, p - 2, (4, 37), generator=gen).float() + 0.5
    halves[:, 0], halves[:, 1] = -2.5, p - 2.5
    ones = torch.ones(4)
    got = ext.quantize_per_token(halves, bits, ones, ones)
    _assert_quant_equal(got, reference.quantize_per_token(halves, bits, ones, ones))
    assert torch.equal(got[1], ones) and torch.equal(got[2], torch.full((4,), 2, dtype=torch.int32))


def test_quantize_non_contiguous_and_empty() -> None:
    gen = _seed("qnc")
    x = torch.randn(5, 40, generator=gen)[:, 3:30:2]
    lo, hi = _clips(5, gen)
    _assert_quant_equal(ext.quantize_per_token(x, 4, lo, hi), reference.quantize_per_token(x.contiguous(), 4, lo, hi))
    empty = ext.quantize_per_token(torch.empty(0, 9), 3, torch.empty(0), torch.empty(0))
    assert [t.shape for t in empty] == [(0, packed_width(9, 3)), (0,), (0,), (0,)]


@pytest.mark.parametrize(("args", "exc", "needle"), [
    ((torch.zeros(2, 3, 4), 4, torch.ones(2), torch.ones(2)), ValueError, "argument 'x'"),
    ((torch.zeros(2, 4, dtype=torch.int32), 4, torch.ones(2), torch.ones(2)), TypeError, "argument 'x'"),
    ((torch.zeros(2, 0), 4, torch.ones(2), torch.ones(2)), ValueError, "argument 'x'"),
    ((torch.zeros(2, 4), 16, torch.ones(2), torch.ones(2)), ValueError, "argument 'bits'"),
    ((torch.zeros(2, 4), 4, torch.ones(3), torch.ones(2)), ValueError, "argument 'clip_lo'"),
    ((torch.zeros(2, 4), 4, torch.ones(2), torch.ones(2, dtype=torch.float64)), TypeError, "argument 'clip_hi'"),
], ids=["3d", "int-x", "k-zero", "bits", "clip-shape", "clip-dtype"])
def test_quantize_errors(args: tuple, exc: type[Exception], needle: str) -> None:
    with pytest.raises(exc, match=needle) as info:
        ext.quantize_per_token(*args)
    assert "qvgen_ext::quantize_per_token" in str(info.value)


# ---------------------------------------------------------------- lowbit_gemm

def _gemm_inputs(m: int, n: int, k: int, w_bits: int, a_bits: int, groups: int | None,
                 gen: torch.Generator) -> list:
    """Activations quantized by the extension (all-zero / constant rows included), random weight codes,
    scales and float zero points; ``groups=None`` means per-channel scales [N], else [N, groups]."""
    x = _activations(m, k, torch.float32, gen)
    a_packed, a_scale, a_zero, a_rowsum = ext.quantize_per_token(x, a_bits, *_clips(m, gen))
    w_packed = ext.pack(random_codes((n, k), w_bits, gen), w_bits)
    pshape = (n,) if groups is None else (n, groups)
    w_scale = torch.rand(pshape, generator=gen) * 0.05 + 1e-3
    w_zero = torch.rand(pshape, generator=gen) * qmax(w_bits)
    return [a_packed, a_scale, a_zero, a_rowsum, w_packed, w_scale, w_zero]


def _assert_gemm_equal(inputs: list, bias, w_bits: int, a_bits: int, k: int, out_dtype: torch.dtype) -> None:
    got = ext.lowbit_gemm(*inputs, bias, w_bits, a_bits, k, out_dtype)
    want = reference.lowbit_gemm(*inputs, bias, w_bits, a_bits, k, out_dtype)
    assert got.dtype == out_dtype and got.shape == want.shape
    assert torch.equal(got, want), f"max diff {(got.double() - want.double()).abs().max().item()}"


@pytest.mark.parametrize(("w_bits", "a_bits"), WA_BITS, ids=lambda v: str(v))
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (3, 5, 7), (67, 33, 64), (3, 33, 130), (1, 5, 9)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("scales", ["channel", "g1", "groups"])
def test_gemm_matches_reference(w_bits: int, a_bits: int, m: int, n: int, k: int, scales: str) -> None:
    gen = _seed("gemm", w_bits, a_bits, m, n, k, scales)
    # The largest proper group count with a group size >= 2 (130 -> 5 groups of 26, not a multiple of 4).
    groups = {"channel": None, "g1": 1, "groups": max([g for g in (2, 4, 5) if k % g == 0 and k > g] or [1])}[scales]
    inputs = _gemm_inputs(m, n, k, w_bits, a_bits, groups, gen)
    bias = torch.randn(n, generator=gen)
    _assert_gemm_equal(inputs, bias, w_bits, a_bits, k, torch.float32)
    _assert_gemm_equal(inputs, None, w_bits, a_bits, k, torch.float32)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=id_formatter("out"))
@pytest.mark.parametrize("bias_dtype", [None, torch.float32, torch.bfloat16], ids=id_formatter("bias"))
@pytest.mark.parametrize("groups", [None, 3], ids=id_formatter("groups"))
def test_gemm_dtypes_and_bias(out_dtype: torch.dtype, bias_dtype, groups) -> None:
    gen = _seed("gemm-dtype", out_dtype, bias_dtype, groups)
    m, n, k = 19, 21, 48
    inputs = _gemm_inputs(m, n, k, 4, 4, groups, gen)
    bias = None if bias_dtype is None else torch.randn(n, generator=gen).to(bias_dtype)
    _assert_gemm_equal(inputs, bias, 4, 4, k, out_dtype)


def test_gemm_non_contiguous_and_empty() -> None:
    gen = _seed("gemm-nc")
    inputs = _gemm_inputs(6, 10, 16, 4, 4, 2, gen)
    inputs[5] = inputs[5].t().contiguous().t()  # a transposed [N, G] scale
    _assert_gemm_equal(inputs, None, 4, 4, 16, torch.float32)
    empty = _gemm_inputs(1, 4, 16, 4, 4, None, gen)
    empty[:4] = [t[:0] for t in empty[:4]]
    assert ext.lowbit_gemm(*empty, None, 4, 4, 16, torch.bfloat16).shape == (0, 4)


def _bad_gemm(change: dict) -> list:
    gen = _seed("gemm-bad")
    inputs = _gemm_inputs(3, 5, 8, 4, 4, None, gen)
    names = ["a_packed", "a_scale", "a_zero", "a_rowsum", "w_packed", "w_scale", "w_zero"]
    args = dict(zip(names, inputs), bias=None, w_bits=4, a_bits=4, k=8, out_dtype=torch.float32)
    args.update(change)
    return list(args.values())


@pytest.mark.parametrize(("change", "exc", "needle"), [
    ({"a_packed": torch.zeros(3, 5, dtype=torch.uint8)}, ValueError, "argument 'a_packed'"),
    ({"w_packed": torch.zeros(5, 4, dtype=torch.int8)}, TypeError, "argument 'w_packed'"),
    ({"a_zero": torch.zeros(3)}, TypeError, "argument 'a_zero'"),
    ({"a_rowsum": torch.zeros(4, dtype=torch.int32)}, ValueError, "argument 'a_rowsum'"),
    ({"w_scale": torch.ones(5, 3), "w_zero": torch.ones(5, 3)}, ValueError, "argument 'w_scale'"),
    ({"w_zero": torch.ones(5, 2)}, ValueError, "argument 'w_zero'"),
    ({"bias": torch.zeros(4)}, ValueError, "argument 'bias'"),
    ({"w_bits": 2}, ValueError, "argument 'w_bits'"),
    ({"k": 0}, ValueError, "argument 'k'"),
    ({"out_dtype": torch.int32}, TypeError, "argument 'out_dtype'"),
], ids=["a-width", "w-dtype", "a-zero-dtype", "rowsum-shape", "groups-not-dividing", "zero-shape", "bias-shape",
        "bits", "k", "out-dtype"])
def test_gemm_errors(change: dict, exc: type[Exception], needle: str) -> None:
    with pytest.raises(exc, match=needle) as info:
        ext.lowbit_gemm(*_bad_gemm(change))
    assert "qvgen_ext::lowbit_gemm" in str(info.value)


# ---------------------------------------------------------------- registration, meta, loader

def test_opcheck_and_meta() -> None:
    """Schemas, fake-tensor (Meta) kernels and autograd registration pass torch's op checks."""
    gen = _seed("opcheck")
    codes = random_codes((3, 11), 3, gen)
    x = torch.randn(3, 11, generator=gen)
    gemm = _gemm_inputs(3, 5, 11, 4, 8, None, gen)
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(ext.pack.default, (codes, 3), test_utils=checks)
    torch.library.opcheck(ext.unpack.default, (ext.pack(codes, 3), 3, 11), test_utils=checks)
    torch.library.opcheck(ext.quantize_per_token.default, (x, 4, torch.ones(3), torch.ones(3)), test_utils=checks)
    torch.library.opcheck(ext.lowbit_gemm.default, (*gemm, None, 4, 8, 11, torch.bfloat16), test_utils=checks)
    meta = ext.lowbit_gemm(*[t.to("meta") for t in gemm], None, 4, 8, 11, torch.float16)
    assert meta.device.type == "meta" and meta.shape == (3, 5) and meta.dtype == torch.float16


def test_loader() -> None:
    assert _extension.available() and _extension.require() is not None
    assert _extension.has_cuda() == torch._C._dispatch_has_kernel_for_dispatch_key("qvgen_ext::pack", "CUDA")


# ---------------------------------------------------------------- CUDA kernels (GPU only)

def _cuda_or_skip() -> None:
    if not _extension.has_cuda():
        pytest.skip("qvgen_kernels._C was built without CUDA kernels")


@pytest.mark.gpu
@pytest.mark.parametrize("bits", BITS, ids=id_formatter("bits"))
def test_cuda_pack_quantize_match_reference(bits: int) -> None:
    _cuda_or_skip()
    gen = _seed("cuda-pq", bits)
    for m, k in [(1, 1), (3, 13), (67, 130), (5, 20000)]:  # 20000: past the register cache of a row
        codes = random_codes((m, k), bits, gen)
        packed = ext.pack(codes.cuda(), bits)
        assert torch.equal(packed.cpu(), reference.pack(codes, bits))
        assert torch.equal(ext.unpack(packed, bits, k).cpu(), codes)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = _activations(m, k, dtype, gen)
            lo, hi = _clips(m, gen)
            got = ext.quantize_per_token(x.cuda(), bits, lo.cuda(), hi.cuda())
            _assert_quant_equal(tuple(t.cpu() for t in got), reference.quantize_per_token(x, bits, lo, hi))


@pytest.mark.gpu
@pytest.mark.parametrize(("w_bits", "a_bits"), WA_BITS, ids=lambda v: str(v))
@pytest.mark.parametrize("groups", [None, 1, 2, 5], ids=id_formatter("groups"))
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=id_formatter("out"))
def test_cuda_gemm_matches_reference(w_bits: int, a_bits: int, groups, out_dtype: torch.dtype) -> None:
    _cuda_or_skip()
    gen = _seed("cuda-gemm", w_bits, a_bits, groups, out_dtype)
    for m, n, k in [(1, 1, 130), (67, 33, 130), (130, 70, 260)]:  # 130 / 5 = 26: the code-by-code path
        inputs = _gemm_inputs(m, n, k, w_bits, a_bits, groups, gen)
        bias = torch.randn(n, generator=gen)
        got = ext.lowbit_gemm(*[t.cuda() for t in inputs], bias.cuda(), w_bits, a_bits, k, out_dtype)
        want = reference.lowbit_gemm(*inputs, bias, w_bits, a_bits, k, out_dtype)
        assert torch.equal(got.cpu(), want), f"max diff {(got.cpu().double() - want.double()).abs().max().item()}"
