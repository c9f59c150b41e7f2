"""The tensor-core GEMMs' hard paths on the GPU, bit-exact against the reference: the persistent sm_90a kernel
forced to walk >= 3 tiles per block and >= 3 laps of its stage ring (``max_blocks``), grouped M = 200 and 500 (token
tiles of 96 past a 256-row padding), K not a multiple of the 128-column stage; the Triton deployed GEMM on the
same shapes; the host checks of ``tc_linear``. The padding arithmetic itself: tests/kernels/test_tc_tiles.py (CPU).
"""

from __future__ import annotations

import pytest
import torch

from qvgen_kernels import _extension, ops
from qvgen_kernels import reference as ref

pytestmark = pytest.mark.gpu


def _tc():
    if not _extension.available() or not hasattr(torch.ops.qvgen_ext, "tc_linear"):
        pytest.skip("the extension has no tensor-core GEMMs (a CUDA build with the CUTLASS headers makes them)")
    return torch.ops.qvgen_ext


def _case(m: int, n: int, k: int, groups: int, w_bits: int, a_bits: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**w_bits, (n, k), generator=gen, dtype=torch.uint8)
    shape = (n,) if groups == 1 else (n, groups)
    scale = 0.01 + torch.rand(shape, generator=gen)
    zero = (2**w_bits - 1) * torch.rand(shape, generator=gen)
    x = (torch.randn(m, k, generator=gen) * 2).to(torch.bfloat16)
    packed = ref.pack(codes, w_bits)
    want = ops.lowbit_linear(x, packed, scale, zero, None, w_bits=w_bits, a_bits=a_bits, backend="reference")
    return x, packed, scale, zero, want


# (M, N, K, G, max_blocks): tiles = ceil(M / tile) x ceil(N / 128); K stages = ceil(K / 128).
# - 300 x 640 x 6 tiles per channel on 2 blocks: 3 tiles each, 15 stage loads per block (>= 3 laps of <= 5 stages).
# - grouped M = 200 / 500 (tile 96: 3 / 6 token tiles, 288 / 576 rows > the old 256 / 512 padding), K = 480 and
#   K = 352 (not multiples of 128), on 1 block: every tile on one block, many laps.
HARD = [(300, 640, 640, 1, 2), (200, 300, 480, 5, 1), (500, 257, 352, 11, 1), (500, 129, 640, 4, 2),
        (37, 129, 200, 1, 1)]


@pytest.mark.parametrize("w_bits,a_bits", [(4, 4), (3, 3), (4, 8), (8, 8)])
@pytest.mark.parametrize("m,n,k,groups,max_blocks", HARD)
def test_tc_linear_many_tiles_and_laps(m, n, k, groups, max_blocks, w_bits, a_bits) -> None:
    ext = _tc()
    kernels = [80, 90] if torch.cuda.get_device_capability()[0] == 9 else [80]
    x, packed, scale, zero, want = _case(m, n, k, groups, w_bits, a_bits, m + n + k)
    weights = ext.tc_prepack_weight(packed.cuda(), scale.cuda(), zero.cuda(), w_bits, a_bits, k)
    ones = torch.ones(m, device="cuda")
    for kernel in kernels:
        got = ext.tc_linear(x.cuda(), *weights, None, w_bits, a_bits, k, n, ones, ones, kernel, max_blocks)
        assert torch.equal(got.cpu(), want), f"sm_{kernel}: max |diff| {(got.cpu().float() - want.float()).abs().max()}"


@pytest.mark.parametrize("w_bits,a_bits", [(4, 4), (4, 8)])
@pytest.mark.parametrize("m,n,k,groups,max_blocks", HARD)
def test_triton_deployed_same_shapes(m, n, k, groups, max_blocks, w_bits, a_bits) -> None:
    x, packed, scale, zero, want = _case(m, n, k, groups, w_bits, a_bits, m + n + k)
    lin = ops.prepack_linear(packed.cuda(), scale.cuda(), zero.cuda(), w_bits=w_bits, a_bits=a_bits, k=k,
                             backend="triton")
    got = ops.prepacked_linear(x.cuda(), lin)
    assert torch.equal(got.cpu(), want)


def _weights(ext, n=130, k=256):
    _, packed, scale, zero, _ = _case(4, n, k, 1, 4, 4, 1)
    return ext.tc_prepack_weight(packed.cuda(), scale.cuda(), zero.cuda(), 4, 4, k)


def test_tc_linear_rejects_other_device() -> None:
    ext = _tc()
    w, colsum, scale, zero = _weights(ext)
    x, clip = torch.randn(4, 256, device="cuda"), torch.ones(4, device="cuda")
    with pytest.raises(ValueError, match="tc_linear.*'scale' expected on cuda.*got cpu"):
        ext.tc_linear(x, w, colsum, scale.cpu(), zero, None, 4, 4, 256, 130, clip, clip)
    with pytest.raises(ValueError, match="tc_linear.*'clip_lo' expected on cuda"):
        ext.tc_linear(x, w, colsum, scale, zero, None, 4, 4, 256, 130, clip.cpu(), clip)


def test_tc_linear_rejects_misaligned_weight() -> None:
    ext = _tc()
    w, colsum, scale, zero = _weights(ext)
    shifted = torch.empty(w.numel() + 1, dtype=w.dtype, device="cuda")[1:].view(w.shape).copy_(w)
    x, clip = torch.randn(4, 256, device="cuda"), torch.ones(4, device="cuda")
    with pytest.raises(ValueError, match="tc_linear.*'w_kernel' expected a 16-byte aligned"):
        ext.tc_linear(x, shifted, colsum, scale, zero, None, 4, 4, 256, 130, clip, clip)


def test_tc_linear_rejects_non_contiguous_weight() -> None:
    ext = _tc()
    w, colsum, scale, zero = _weights(ext)
    x, clip = torch.randn(4, 256, device="cuda"), torch.ones(4, device="cuda")
    with pytest.raises(ValueError, match="tc_linear.*'w_kernel' expected the contiguous"):
        ext.tc_linear(x, w.t().contiguous().t(), colsum, scale, zero, None, 4, 4, 256, 130, clip, clip)
    with pytest.raises(ValueError, match="tc_linear.*'max_blocks' expected >= 0"):
        ext.tc_linear(x, w, colsum, scale, zero, None, 4, 4, 256, 130, clip, clip, 0, -1)
