"""The CPU int8 backend (``cpu_int8``: one pass quantize -> oneDNN s8 GEMM -> fused epilogue) against the
reference, bit for bit: every W/A pair, per channel and per group, fp32/fp16/bf16 in and out, odd shapes,
edge values, the AVX-512 and the portable code; its data checks; the deployed-layer API around it."""

from __future__ import annotations

import itertools

import pytest
import torch

from qvgen_kernels import ops, reference, registry
from qvgen_kernels.format import qmax

pytestmark = pytest.mark.skipif(registry.unavailable_reason("cpu_int8", "cpu") is not None,
                                reason=f"cpu_int8 unavailable: {registry.unavailable_reason('cpu_int8', 'cpu')}")

BITS = (3, 4, 8)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Paths: direct products (M N K <= 64K), AVX512-VNNI (M <= 16, with AVX-512), oneDNN (the rest).
SHAPES = [(1, 1, 1), (3, 1, 24), (2, 5, 7), (17, 33, 9), (4, 64, 48), (37, 96, 130), (300, 40, 17),
          (5, 300, 70), (16, 130, 40), (1, 2100, 67)]


@pytest.fixture(params=[True, False], ids=["avx512", "portable"])
def simd(request):
    previous = torch.ops.qvgen_ext.int8_set_simd(request.param)
    yield request.param
    torch.ops.qvgen_ext.int8_set_simd(previous)


def _layer(n: int, k: int, w_bits: int, groups: int | None, gen: torch.Generator):
    codes = torch.randint(0, qmax(w_bits) + 1, (n, k), dtype=torch.uint8, generator=gen)
    shape = (n,) if groups is None else (n, groups)
    scale = torch.rand(shape, generator=gen) + 0.01
    zero = torch.rand(shape, generator=gen) * qmax(w_bits)
    return ops.pack(codes, w_bits), scale, zero, torch.randn(n, generator=gen)


def _reference(x, wp, ws, wz, bias, w_bits, a_bits, lo, hi):
    return ops.lowbit_linear(x, wp, ws, wz, bias, w_bits, a_bits, lo, hi, backend="reference")


@pytest.mark.parametrize("w_bits, a_bits", list(itertools.product(BITS, BITS)))
def test_exact_against_reference(simd, w_bits, a_bits) -> None:
    gen = torch.Generator().manual_seed(w_bits * 10 + a_bits)
    for (m, k, n), dtype in itertools.product(SHAPES, DTYPES):
        for groups in (None, 1) + tuple(g for g in (3, 4) if k % g == 0):
            wp, ws, wz, bias = _layer(n, k, w_bits, groups, gen)
            x = (torch.randn(m, k, generator=gen) * 3).to(dtype)
            lo, hi = torch.rand(m, generator=gen) * 0.5 + 0.5, torch.rand(m, generator=gen) * 0.5 + 0.5
            packed = ops.prepack_linear(wp, ws, wz, w_bits=w_bits, a_bits=a_bits, k=k)
            assert packed.backend == "cpu_int8"
            got = ops.prepacked_linear(x, packed, bias.to(dtype), lo, hi)
            want = _reference(x, wp, ws, wz, bias.to(dtype), w_bits, a_bits, lo, hi)
            assert got.dtype == dtype
            assert torch.equal(got, want), ((m, k, n), dtype, groups)


@pytest.mark.parametrize("case", ["zeros", "constant", "negative", "tiny", "huge", "one_outlier"])
def test_edge_values(simd, case: str) -> None:
    m, k, n = 5, 70, 19
    gen = torch.Generator().manual_seed(1)
    x = {"zeros": torch.zeros(m, k), "constant": torch.full((m, k), 2.5), "negative": -torch.rand(m, k, generator=gen),
         "tiny": torch.randn(m, k, generator=gen) * 1e-30, "huge": torch.randn(m, k, generator=gen) * 1e30,
         "one_outlier": torch.randn(m, k, generator=gen).index_fill_(1, torch.tensor([3]), 1e4)}[case]
    for w_bits, a_bits in ((4, 4), (8, 8), (3, 3)):
        wp, ws, wz, bias = _layer(n, k, w_bits, None, gen)
        packed = ops.prepack_linear(wp, ws, wz, w_bits=w_bits, a_bits=a_bits, k=k)
        assert torch.equal(ops.prepacked_linear(x, packed, bias, 0.9, 1.0),
                           _reference(x, wp, ws, wz, bias, w_bits, a_bits, 0.9, 1.0))


def test_leading_dims_and_float_clips() -> None:
    gen = torch.Generator().manual_seed(2)
    wp, ws, wz, bias = _layer(11, 32, 4, None, gen)
    x = torch.randn(2, 3, 32, generator=gen)
    packed = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=32)
    y = ops.prepacked_linear(x, packed, bias, clip_lo=0.8)
    assert y.shape == (2, 3, 11)
    assert torch.equal(y, ops.lowbit_linear(x, wp, ws, wz, bias, clip_lo=0.8, backend="reference"))
    per_sample = torch.tensor([[0.5], [1.0]])  # broadcast over the 3 tokens of each sample
    assert torch.equal(ops.prepacked_linear(x, packed, bias, per_sample),
                       ops.lowbit_linear(x, wp, ws, wz, bias, clip_lo=per_sample, backend="reference"))


def test_k1_is_exact() -> None:
    """oneDNN's s8 GEMM (torch._int_mm on CPU) sums K = 1 wrongly for N > 1; the layout pads K to 2."""
    gen = torch.Generator().manual_seed(3)
    wp, ws, wz, bias = _layer(24, 1, 4, None, gen)
    x = torch.randn(12, 1, generator=gen)
    packed = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=1)
    assert torch.equal(ops.prepacked_linear(x, packed, bias), _reference(x, wp, ws, wz, bias, 4, 4, 1.0, 1.0))


def test_unprepacked_lowbit_linear_uses_it() -> None:
    gen = torch.Generator().manual_seed(4)
    wp, ws, wz, bias = _layer(9, 50, 4, None, gen)
    x = torch.randn(7, 50, generator=gen)
    assert registry.resolve("lowbit_linear", torch.device("cpu"))[0] == "cpu_int8"
    assert torch.equal(ops.lowbit_linear(x, wp, ws, wz, bias), _reference(x, wp, ws, wz, bias, 4, 4, 1.0, 1.0))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_x_is_an_error(simd, value: float) -> None:
    wp, ws, wz, _ = _layer(4, 40, 4, None, torch.Generator().manual_seed(5))
    packed = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=40)
    x = torch.randn(3, 40)
    x[2, 37] = value
    with pytest.raises(ValueError, match=r"argument 'x' expected finite values, got NaN or Inf in row 2"):
        ops.prepacked_linear(x, packed)


@pytest.mark.parametrize("arg, value", [("clip_lo", 0.0), ("clip_hi", 1.5), ("clip_lo", float("nan"))])
def test_bad_clip_is_an_error(arg: str, value: float) -> None:
    wp, ws, wz, _ = _layer(4, 8, 4, None, torch.Generator().manual_seed(6))
    packed = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=8)
    clip = torch.tensor([1.0, value, 1.0])
    with pytest.raises(ValueError, match=rf"argument '{arg}' expected clip factors in \(0, 1\]"):
        ops.prepacked_linear(torch.randn(3, 8), packed, **{arg: clip})


def test_prepacked_linear_argument_errors() -> None:
    wp, ws, wz, _ = _layer(4, 8, 4, None, torch.Generator().manual_seed(7))
    packed = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=8)
    with pytest.raises(TypeError, match=r"^prepacked_linear: argument 'packed' expected a PackedLinear"):
        ops.prepacked_linear(torch.randn(2, 8), wp)
    with pytest.raises(ValueError, match=r"^prepacked_linear: argument 'x' expected a tensor \[\.\.\., 8\]"):
        ops.prepacked_linear(torch.randn(2, 9), packed)
    with pytest.raises(TypeError, match=r"^prepacked_linear: argument 'x' expected dtype"):
        ops.prepacked_linear(torch.randn(2, 8).double(), packed)
    with pytest.raises(ValueError, match=r"^prepacked_linear: argument 'bias' expected shape \[4\]"):
        ops.prepacked_linear(torch.randn(2, 8), packed, torch.zeros(5))
    with pytest.raises(ValueError, match=r"^prepacked_linear: argument 'clip_lo' expected a clip factor in"):
        ops.prepacked_linear(torch.randn(2, 8), packed, clip_lo=0.0)


def test_backend_choice_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    wp, ws, wz, bias = _layer(16, 64, 4, None, torch.Generator().manual_seed(8))
    x = torch.randn(5, 64)
    int8 = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=64)
    ref = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=64, backend="reference")
    assert int8.backend == "cpu_int8" and ref.backend == "reference"
    # The checkpoint codes themselves (4 bits per weight, the same tensor) + column sums; per channel the scales and
    # zero points are the caller's fp32 tensors (no copy). The reference keeps the same codes and constants.
    assert int8.nbytes == wp.numel() + 3 * 16 * 4 and ref.nbytes == wp.numel() + 2 * 16 * 4
    assert int8.tensors[0] is wp and int8.tensors[2] is ws and int8.tensors[3] is wz
    assert torch.equal(ops.prepacked_linear(x, int8, bias), ops.prepacked_linear(x, ref, bias))
    monkeypatch.setenv(registry.ENV_VAR, "ext")  # the extension's CPU deployed path is the int8 one
    ext = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=64)
    assert ext.backend == "ext" and torch.equal(ops.prepacked_linear(x, ext, bias), ops.prepacked_linear(x, ref, bias))
    monkeypatch.setenv(registry.ENV_VAR, "cpu_int8")
    w16 = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=16, k=64)  # weight-only: dequantize + F.linear
    assert torch.equal(ops.prepacked_linear(x, w16, bias),
                       ops.lowbit_linear(x, wp, ws, wz, bias, a_bits=16, backend="reference"))


def test_quantize_then_gemm_is_the_fused_op() -> None:
    """The two halves the benchmark times apart compose to the deployed op, and have meta kernels."""
    gen = torch.Generator().manual_seed(9)
    wp, ws, wz, bias = _layer(21, 96, 4, 3, gen)
    packed = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=96)
    w_codes, colsum, scale, zero = packed.tensors
    x, one = torch.randn(10, 96, generator=gen).bfloat16(), torch.ones(1)
    q = torch.ops.qvgen_ext.int8_quantize(x, 4, 3, 96, one, one)
    y = torch.ops.qvgen_ext.int8_gemm(*q, w_codes, colsum, scale, zero, bias, 4, 96, True, torch.bfloat16)
    assert torch.equal(y, ops.prepacked_linear(x, packed, bias))
    meta = torch.ops.qvgen_ext.int8_linear(x.to("meta"), *(t.to("meta") for t in packed.tensors), None, 4, 4, True,
                                           one.to("meta"), one.to("meta"))
    assert meta.shape == (10, 21) and meta.dtype == torch.bfloat16


# ---- the layout at rest: the checkpoint codes, unpacked per column block --------------------------------

@pytest.mark.parametrize("w_bits", BITS)
def test_unpack_weight_is_codes_minus_offset(simd, w_bits: int) -> None:
    """The int8 operand each GEMM tile reads: w' = q - c_w (c_w = 128 at 8 bits), zero past K, every K mod 64."""
    gen = torch.Generator().manual_seed(20 + w_bits)
    for n, k in ((1, 1), (3, 2), (5, 7), (2, 63), (4, 64), (3, 65), (7, 129), (2, 200)):
        codes = torch.randint(0, qmax(w_bits) + 1, (n, k), dtype=torch.uint8, generator=gen)
        want = codes.to(torch.int16) - (128 if w_bits == 8 else 0)
        for k_out in (k, k + 1, max(k, 2)):
            got = torch.ops.qvgen_ext.int8_unpack_weight(ops.pack(codes, w_bits), w_bits, k, k_out)
            assert got.dtype == torch.int8 and got.shape == (n, k_out)
            assert torch.equal(got[:, :k].to(torch.int16), want), (n, k, k_out)
            assert not got[:, k:].any()


@pytest.mark.parametrize("w_bits", BITS)
def test_layout_is_the_checkpoint_codes(w_bits: int) -> None:
    """One copy of the weights: the layout's weight tensor is w_packed itself, and checkpoint_codes gives it back."""
    gen = torch.Generator().manual_seed(30 + w_bits)
    for n, k, groups in ((1, 1, None), (24, 1, None), (1, 40, None), (9, 33, None), (13, 96, 3), (48, 64, 4)):
        wp, ws, wz, bias = _layer(n, k, w_bits, groups, gen)
        packed = ops.prepack_linear(wp, ws, wz, w_bits=w_bits, a_bits=4, k=k)
        assert packed.tensors[0].data_ptr() == wp.data_ptr()
        codes = ops.checkpoint_codes(packed)
        assert codes is wp and torch.equal(ops.unpack(codes, w_bits, k), ops.unpack(wp, w_bits, k))
        g = 1 if groups is None else groups
        colsum = ops.unpack(wp, w_bits, k).to(torch.int32).view(n, g, k // g).sum(-1).t()
        assert torch.equal(packed.tensors[1], colsum)
        # bytes: the codes at their checkpoint width + int32 column sums + fp32 scales and zero points (per channel
        # the layer's own tensors, grouped a transposed copy)
        assert packed.nbytes == wp.numel() + 12 * g * n
        assert (packed.tensors[2] is ws) == (groups is None)
        x = torch.randn(6, k, generator=gen)
        assert torch.equal(ops.prepacked_linear(x, packed, bias), _reference(x, wp, ws, wz, bias, w_bits, 4, 1.0, 1.0))


@pytest.mark.parametrize("w_bits, a_bits", [(4, 4), (3, 3), (8, 8), (4, 8)])
def test_column_blocks_and_row_tiles(w_bits: int, a_bits: int) -> None:
    """Shapes with several column blocks (4 MB of unpacked int8 each) and several row tiles (2048 rows each):
    every block is unpacked once and serves every row tile; the result stays exact."""
    gen = torch.Generator().manual_seed(40 + w_bits)
    for m, k, n, groups in ((2050, 8, 33, None), (2050, 1, 40, None), (3, 2100, 2003, None), (2049, 4200, 1500, 2)):
        wp, ws, wz, bias = _layer(n, k, w_bits, groups, gen)
        x = torch.randn(m, k, generator=gen).bfloat16()
        packed = ops.prepack_linear(wp, ws, wz, w_bits=w_bits, a_bits=a_bits, k=k)
        want = _reference(x, wp, ws, wz, bias.bfloat16(), w_bits, a_bits, 1.0, 1.0) if m * k * n < 5e8 else None
        got = ops.prepacked_linear(x, packed, bias.bfloat16())
        if want is None:  # the reference is slow at this size: compare with the tile-free path on row slices
            want = torch.cat([ops.prepacked_linear(x[i:i + 512], packed, bias.bfloat16()) for i in range(0, m, 512)])
            ref_rows = _reference(x[:7], wp, ws, wz, bias.bfloat16(), w_bits, a_bits, 1.0, 1.0)
            assert torch.equal(got[:7], ref_rows)
        assert torch.equal(got, want), (m, k, n, groups)


def test_unpack_and_gemm_argument_errors() -> None:
    wp, ws, wz, bias = _layer(4, 10, 4, None, torch.Generator().manual_seed(50))
    with pytest.raises(ValueError, match=r"int8_unpack_weight: expected uint8 w_packed \[N, packed_width"):
        torch.ops.qvgen_ext.int8_unpack_weight(wp, 3, 10, 10)
    with pytest.raises(ValueError, match=r"int8_unpack_weight: .* k_out >= K"):
        torch.ops.qvgen_ext.int8_unpack_weight(wp, 4, 10, 9)
    packed = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=10)
    one = torch.ones(1)
    q = torch.ops.qvgen_ext.int8_quantize(torch.randn(2, 10), 4, 1, 10, one, one)
    with pytest.raises(ValueError, match=r"int8_gemm: expected a \[M, max\(K, 2\)\] and uint8 w_packed"):
        torch.ops.qvgen_ext.int8_gemm(*q, wp.view(torch.int8), *packed.tensors[1:], bias, 4, 10, False, torch.float32)
    with pytest.raises(TypeError, match=r"^checkpoint_codes: argument 'packed' expected a PackedLinear"):
        ops.checkpoint_codes(wp)


def _gelu_tanh_f64(y: torch.Tensor) -> torch.Tensor:
    """The tanh-approximated GELU of y in float64, in the form without cancellation (x / (1 + exp(-2u)))."""
    yd = y.double()
    return yd / (1 + torch.exp(-2 * 0.7978845608028654 * (yd + 0.044715 * yd ** 3)))


@pytest.mark.parametrize("w_bits, a_bits, groups", [(4, 4, None), (3, 3, None), (8, 8, None), (4, 8, 3)])
def test_fused_gelu_epilogue(w_bits, a_bits, groups) -> None:
    """activation="gelu_tanh": the AVX-512 and portable epilogues agree bit for bit; the result is the GELU of the
    unfused output (as stored) within half a unit in the last place of the output dtype plus the fp32
    evaluation's error (bf16 / fp16: within 1 ulp; fp32: 64 ulp, the exp of a rounded argument near |t| = 100),
    absolute 1e-6 near 0."""
    gen = torch.Generator().manual_seed(3)
    for (m, k, n), dtype in itertools.product([(1, 24, 7), (37, 96, 130), (300, 48, 17), (5, 300, 70)], DTYPES):
        wp, ws, wz, bias = _layer(n, k, w_bits, groups, gen)
        x = (torch.randn(m, k, generator=gen) * 3).to(dtype)
        packed = ops.prepack_linear(wp, ws, wz, w_bits=w_bits, a_bits=a_bits, k=k)
        outs = []
        for flag in (True, False):
            previous = torch.ops.qvgen_ext.int8_set_simd(flag)
            try:
                outs.append(ops.prepacked_linear(x, packed, bias.to(dtype), activation="gelu_tanh"))
            finally:
                torch.ops.qvgen_ext.int8_set_simd(previous)
        assert torch.equal(outs[0], outs[1]), ((m, k, n), dtype)
        y = ops.prepacked_linear(x, packed, bias.to(dtype))
        truth = _gelu_tanh_f64(y)
        ulps = 1 if dtype != torch.float32 else 64
        err = (outs[0].double() - truth).abs()
        assert bool((err <= ulps * torch.finfo(dtype).eps * truth.abs() + 1e-6).all()), ((m, k, n), dtype)


def test_fused_gelu_edge_values(simd) -> None:
    """Outputs of every size through the fused GELU: large positive stays x, large negative goes to -0 / tiny
    negative, infinities as torch's GELU gives them."""
    n, k = 9, 16
    wp = ops.pack(torch.full((n, k), 15, dtype=torch.uint8), 4)
    packed = ops.prepack_linear(wp, torch.ones(n), torch.zeros(n), w_bits=4, a_bits=8, k=k)
    bias = torch.tensor([0.0, 1e-30, -3.0, -20.0, -120.0, 30.0, 1e30, -1e30, 3e38])
    x = torch.zeros(2, k)
    got = ops.prepacked_linear(x, packed, bias, activation="gelu_tanh")
    y = ops.prepacked_linear(x, packed, bias)
    truth = _gelu_tanh_f64(y).float()
    torch.testing.assert_close(got[:, :7], truth[:, :7], rtol=64 * torch.finfo(torch.float32).eps, atol=1e-6)
    assert torch.equal(got[:, 5:7], y[:, 5:7]) and got[0, 8] == y[0, 8]
    assert torch.equal(got[:, 7], torch.full((2,), -0.0)) and bool(torch.signbit(got[:, 7]).all())


def test_fused_activation_on_other_backends_is_the_plain_op() -> None:
    gen = torch.Generator().manual_seed(4)
    wp, ws, wz, bias = _layer(20, 24, 4, None, gen)
    x = torch.randn(6, 24, generator=gen)
    packed = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=4, k=24, backend="reference")
    assert torch.equal(ops.prepacked_linear(x, packed, bias, activation="gelu_tanh"),
                       torch.nn.functional.gelu(ops.prepacked_linear(x, packed, bias), approximate="tanh"))
    with pytest.raises(ValueError, match=r"^prepacked_linear: argument 'activation' expected None or one of"):
        ops.prepacked_linear(x, packed, bias, activation="relu")


@pytest.mark.parametrize("a_bits", [3, 4, 8])
def test_four_bit_codes_unpacked_in_registers(simd, a_bits) -> None:
    """Few rows and 4-bit per-channel weights take the products on the codes as they rest (nibbles unpacked in
    registers, activations permuted to match): 1 to 4 rows, or up to 16 with M K <= 32 KB and N <= 2048; K across
    and within 64-column chunks (odd K: a pad nibble), odd N (a last single weight row), equal to the reference."""
    gen = torch.Generator().manual_seed(a_bits)
    for m, k, n in [(1, 1537, 301), (2, 64, 1025), (3, 130, 517), (4, 1000, 33), (4, 63, 1001), (1, 1, 300),
                    (16, 1536, 257), (11, 2000, 65)]:
        wp, ws, wz, bias = _layer(n, k, 4, None, gen)
        x = (torch.randn(m, k, generator=gen) * 3).to(torch.bfloat16)
        packed = ops.prepack_linear(wp, ws, wz, w_bits=4, a_bits=a_bits, k=k)
        got = ops.prepacked_linear(x, packed, bias.to(torch.bfloat16))
        want = _reference(x, wp, ws, wz, bias.to(torch.bfloat16), 4, a_bits, 1.0, 1.0)
        assert torch.equal(got, want), (m, k, n)
