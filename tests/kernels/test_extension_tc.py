"""The CUDA extension's tensor-core GEMMs (``qvgen_ext::tc_prepack_weight`` / ``qvgen_ext::tc_linear``,
csrc/cuda/tc) against the reference: bit-exact (``torch.equal``), because the integer core is exact and the
epilogue performs the reference's fp32 operations in its order (no FMA contraction).

The ops exist only in CUDA builds with the CUTLASS headers; the GEMM tests are ``gpu``-marked (mma.sync on
sm_80+, wgmma on sm_90) and run in benchmarks/gpu_check.sh. The layout tests compare the extension's
load-time repack with the Triton path's ``layout.py`` (one layout for both backends) and run on CPU too.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from qvgen_kernels import _extension
from qvgen_kernels import reference as ref
from qvgen_kernels.format import qmax

if not _extension.available() or not hasattr(torch.ops.qvgen_ext, "tc_linear"):
    pytest.skip("qvgen_kernels._C has no tensor-core GEMMs (a CUDA build with the CUTLASS headers of "
                "csrc/requirements-cuda.txt makes them)", allow_module_level=True)

ext = torch.ops.qvgen_ext
WA_BITS = [(4, 4), (3, 3), (4, 8), (8, 8), (8, 4), (3, 8)]
# (M, N, K, G): odd M / N / K, K below and above a 128-column stage, groups of 32, 64, 96 and 128 columns.
SHAPES = [(1, 1, 32, 1), (7, 130, 67, 1), (33, 257, 200, 1), (300, 129, 384, 1), (5, 131, 256, 8),
          (70, 200, 384, 6), (257, 64, 384, 4), (19, 129, 192, 3)]


def _gen(*params: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(params).encode()))


def _weights(n: int, k: int, bits: int, groups: int, gen: torch.Generator):
    codes = torch.randint(0, qmax(bits) + 1, (n, k), generator=gen, dtype=torch.uint8)
    shape = (n,) if groups == 1 else (n, groups)
    scale = 0.01 + torch.rand(shape, generator=gen)
    zero = qmax(bits) * torch.rand(shape, generator=gen)
    return codes, ref.pack(codes, bits), scale, zero


def _reference(x, packed, scale, zero, bias, w_bits, a_bits, k, clo, chi):
    a_packed, a_scale, a_zero, a_rowsum = ref.quantize_per_token(x.float(), a_bits, clo, chi)
    return ref.lowbit_gemm(a_packed, a_scale, a_zero, a_rowsum, packed, scale, zero, bias, w_bits, a_bits, k,
                           x.dtype)


def _kernels() -> list[int]:
    major, _ = torch.cuda.get_device_capability()
    return [80, 90] if major == 9 else [80]


# ---------------------------------------------------------------- load-time layout (CPU and GPU)

@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("n,k,groups", [(1, 1, 1), (129, 67, 1), (200, 256, 4), (131, 384, 3)])
def test_prepack_is_the_triton_layout(bits: int, n: int, k: int, groups: int) -> None:
    from qvgen_kernels.triton import layout  # pure torch: the one load-time layout of both backends

    codes, packed, scale, zero = _weights(n, k, bits, groups, _gen("layout", bits, n, k, groups))
    w, colsum, s, z = ext.tc_prepack_weight(packed, scale, zero, bits, 4, k)
    assert torch.equal(w, layout.repack_weight(packed, bits, k))
    assert torch.equal(layout.weight_codes(w, bits, n, k), codes)  # round trip to the checkpoint codes
    assert torch.equal(colsum, layout.weight_colsum(packed, bits, k, groups))
    assert torch.equal(s, scale.reshape(n, groups)) and torch.equal(z, zero.reshape(n, groups))


def test_prepack_rejects_groups_below_32_columns() -> None:
    _, packed, scale, zero = _weights(4, 48, 4, 3, _gen("g16"))
    with pytest.raises(ValueError, match="tc_prepack_weight.*w_scale.*multiple of 32.*G = 3"):
        ext.tc_prepack_weight(packed, scale, zero, 4, 4, 48)


def test_linear_meta_shapes() -> None:
    _, packed, scale, zero = _weights(130, 67, 4, 1, _gen("meta"))
    w = [t.to("meta") for t in ext.tc_prepack_weight(packed, scale, zero, 4, 4, 67)]
    x = torch.empty(9, 67, device="meta", dtype=torch.bfloat16)
    clip = torch.empty(9, device="meta")
    y = ext.tc_linear(x, *w, None, 4, 4, 67, 130, clip, clip)
    assert y.shape == (9, 130) and y.dtype == torch.bfloat16 and y.device.type == "meta"


# ---------------------------------------------------------------- GEMMs (GPU)

@pytest.mark.gpu
@pytest.mark.parametrize("kernel", [80, 90])
@pytest.mark.parametrize("w_bits,a_bits", WA_BITS)
@pytest.mark.parametrize("m,n,k,groups", SHAPES)
def test_linear_bit_exact(kernel: int, w_bits: int, a_bits: int, m: int, n: int, k: int, groups: int) -> None:
    if kernel not in _kernels():
        pytest.skip(f"the sm_{kernel} kernel needs that architecture")
    gen = _gen("linear", kernel, w_bits, a_bits, m, n, k, groups)
    _, packed, scale, zero = _weights(n, k, w_bits, groups, gen)
    x = torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen).mul(4).exp()
    x[::5] = 0.0
    bias = torch.randn(n, generator=gen) if (m + n) % 2 else None
    clo, chi = 0.5 + 0.5 * torch.rand(m, generator=gen), 0.5 + 0.5 * torch.rand(m, generator=gen)
    weights = ext.tc_prepack_weight(packed.cuda(), scale.cuda(), zero.cuda(), w_bits, a_bits, k)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        got = ext.tc_linear(xd.cuda(), *weights, None if bias is None else bias.cuda(), w_bits, a_bits, k, n,
                            clo.cuda(), chi.cuda(), kernel)
        want = _reference(xd, packed, scale, zero, bias, w_bits, a_bits, k, clo, chi)
        assert got.dtype == dtype and got.shape == (m, n)
        assert torch.equal(got.cpu(), want), f"{dtype}: max |diff| {(got.cpu().float() - want.float()).abs().max()}"


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", [80, 90])
@pytest.mark.parametrize("w_bits,a_bits", WA_BITS)
def test_integer_core_exact(kernel: int, w_bits: int, a_bits: int) -> None:
    """Unit weight scales, zero weight zero point, unit clips: Y / s_x is the exact sum_k (q_x - z_x) q_w."""
    if kernel not in _kernels():
        pytest.skip(f"the sm_{kernel} kernel needs that architecture")
    m, n, k = 301, 259, 640
    gen = _gen("core", kernel, w_bits, a_bits)
    codes, packed, _, _ = _weights(n, k, w_bits, 1, gen)
    x = torch.randn(m, k, generator=gen) * 3
    ones = torch.ones(m)
    weights = ext.tc_prepack_weight(packed.cuda(), torch.ones(n).cuda(), torch.zeros(n).cuda(), w_bits, a_bits, k)
    y = ext.tc_linear(x.cuda(), *weights, None, w_bits, a_bits, k, n, ones.cuda(), ones.cuda(), kernel).cpu()
    a_packed, a_scale, a_zero, _ = ref.quantize_per_token(x, a_bits, ones, ones)
    a = ref.unpack(a_packed, a_bits, k).long() - a_zero.long()[:, None]
    exact = (a @ codes.long().T).float()  # |sums| < 2^24: exact in fp32
    assert torch.equal(y, a_scale[:, None] * exact)


@pytest.mark.gpu
def test_linear_empty_and_strided() -> None:
    _, packed, scale, zero = _weights(33, 96, 4, 1, _gen("edge"))
    weights = ext.tc_prepack_weight(packed.cuda(), scale.cuda(), zero.cuda(), 4, 4, 96)
    empty = torch.empty(0, 96, device="cuda")
    assert ext.tc_linear(empty, *weights, None, 4, 4, 96, 33, empty[:, 0], empty[:, 0]).shape == (0, 33)
    wide = torch.randn(6, 200, generator=_gen("wide"))
    x = wide[::2, 7:103]  # strided rows, unit stride along K
    clip = torch.ones(3)
    got = ext.tc_linear(x.cuda(), *weights, None, 4, 4, 96, 33, clip.cuda(), clip.cuda())
    assert torch.equal(got.cpu(), _reference(x.contiguous(), packed, scale, zero, None, 4, 4, 96, clip, clip))
