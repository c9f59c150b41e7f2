"""The deployed Triton path: load-time weight layout (round trip to the checkpoint format), the int8
activation quantize and ``prepacked_linear`` against the reference (exact integer core, fp32 epilogue).

Runs compiled on a GPU, else under TRITON_INTERPRET=1 on CPU (``conftest.py``).
"""

from __future__ import annotations


import pytest
import torch

from qvgen_kernels import reference as ref
from qvgen_kernels.format import qmax

BITS = (3, 4, 8)


def _weights(n: int, k: int, bits: int, groups: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, qmax(bits) + 1, (n, k), generator=gen, dtype=torch.uint8)
    shape = (n,) if groups == 1 else (n, groups)
    scale = 0.01 + torch.rand(shape, generator=gen)
    zero = qmax(bits) * torch.rand(shape, generator=gen)
    return codes, ref.pack(codes, bits), scale, zero


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n,k", ((1, 1), (129, 67), (200, 256)))
def test_repack_round_trip(tk, bits, n, k):
    mod, dev = tk
    codes, packed, _, _ = _weights(n, k, bits, 1, seed=n + k + bits)
    w = mod.layout.repack_weight(packed.to(dev), bits, k)
    np_, kp = mod.layout.round_up(n, 128), mod.layout.kernel_k(k)
    assert w.shape == ((np_, kp) if bits == 8 else (np_ // 2, kp))   # 4 bits per weight at rest for 3/4
    back = mod.layout.weight_codes(w, bits, n, k).cpu()
    assert torch.equal(back, codes)
    assert torch.equal(ref.pack(back, bits), packed)                   # the checkpoint bytes again
    cs = mod.layout.weight_colsum(packed, bits, k, 1)
    assert torch.equal(cs[:, 0], codes.int().sum(1, dtype=torch.int32))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("m,k", ((3, 67), (17, 256), (1, 1)))
def test_quantize_i8_matches_reference(tk, bits, m, k):
    mod, dev = tk
    gen = torch.Generator().manual_seed(m * k + bits)
    x = torch.randn(m, k, generator=gen)
    clo, chi = torch.full((m,), 0.8), torch.ones(m)
    a8, scale, zero, rowsum, chunks = mod.quantize_i8.quantize_act_i8(x.to(dev), bits, clo.to(dev),
                                                                      chi.to(dev), chunk_sums=True)
    packed, want_s, want_z, want_r = ref.quantize_per_token(x, bits, clo, chi)
    assert torch.equal(scale.cpu(), want_s) and torch.equal(zero.cpu(), want_z)
    off = 128 if bits == 8 else want_z[:, None]
    want_a = ref.unpack(packed, bits, k).int() - off
    kp = mod.layout.kernel_k(k)
    assert a8.dtype == torch.int8 and a8.shape == (m, kp)
    assert torch.equal(a8.cpu()[:, :k].int(), want_a) and not a8.cpu()[:, k:].any()
    assert torch.equal(rowsum.cpu(), want_a.sum(1, dtype=torch.int32))
    assert torch.equal(chunks.cpu(), a8.cpu().int().view(m, -1, 32).sum(-1, dtype=torch.int32))
    if bits != 8:
        assert torch.equal(rowsum.cpu(), want_r)


@pytest.mark.parametrize("m", (2, 300))
def test_quantize_i8_two_pass_chunks(tk, row_pass, m):
    """Rows past the single-pass limit, in several column chunks, with one row or several per program."""
    mod, dev = tk
    row_pass(ROW_SINGLE_PASS_MAX_K=64, ROW_PASS_BLOCK_K=64)
    k = 200  # 4 chunks of 64 (KP 224), the last one partly past K
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    ones = torch.ones(m)
    a8, scale, zero, rowsum, chunks = mod.quantize_i8.quantize_act_i8(x.to(dev), 4, ones.to(dev), ones.to(dev),
                                                                      chunk_sums=True)
    packed, want_s, want_z, want_r = ref.quantize_per_token(x, 4, ones, ones)
    want_a = ref.unpack(packed, 4, k).int() - want_z[:, None]
    assert torch.equal(scale.cpu(), want_s) and torch.equal(zero.cpu(), want_z)
    assert torch.equal(a8.cpu()[:, :k].int(), want_a) and not a8.cpu()[:, k:].any()
    assert torch.equal(rowsum.cpu(), want_r)
    assert torch.equal(chunks.cpu(), a8.cpu().int().view(m, -1, 32).sum(-1, dtype=torch.int32))


def test_prepacked_linear_one_clip_pair_for_every_row(tk):
    """Clips of one element are read with stride 0 (no per-call [M] copy): the same output as those clips per row."""
    mod, dev = tk
    gen = torch.Generator().manual_seed(9)
    m, n, k = 5, 24, 64
    x = torch.randn(m, k, generator=gen)
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    packed = ref.pack(codes, 4)
    scale, zero = torch.rand(n, 1, generator=gen) * 0.02 + 0.001, torch.rand(n, 1, generator=gen) * 15
    weights = mod.linear.prepack_weight(packed.to(dev), scale.to(dev), zero.to(dev), 4, 4, k)
    one = mod.linear.prepacked_linear(x.to(dev), weights, None, 4, 4, k, n, torch.full((1,), 0.7, device=dev),
                                      torch.full((1,), 0.9, device=dev))
    rows = mod.linear.prepacked_linear(x.to(dev), weights, None, 4, 4, k, n, torch.full((m,), 0.7, device=dev),
                                       torch.full((m,), 0.9, device=dev))
    assert torch.equal(one.cpu(), rows.cpu())  # the [M] path: test_prepacked_linear_matches_reference


def test_token_tiles_fill_the_sms_and_bound_the_tile():
    from qvgen_kernels.triton._configs import DEFAULT_SMS, ROW_PASS_BLOCK_K, gpu_sm_count
    from qvgen_kernels.triton.quantize_act import _TILE_ELEMS, token_tiles

    for k in (40, 1536, 4096, 5120, 13824):
        for m in (1, 16, 256, 1024, 32760):
            bm, bk, single, _ = token_tiles(k, m, gpu_sm_count())
            assert bm * bk <= max(_TILE_ELEMS, bk) and bk >= min(k, ROW_PASS_BLOCK_K)
            assert bm == 1 or -(-m // bm) >= (gpu_sm_count() or DEFAULT_SMS)  # fewer rows before SMs idle
            assert single == (k <= 4096) and (single or bk == ROW_PASS_BLOCK_K)


def _linear(fn_q, fn_g, x, packed, scale, zero, bias, w_bits, a_bits, k, clo, chi):
    q = fn_q(x, a_bits, clo, chi)
    return fn_g(*q, packed, scale, zero, bias, w_bits, a_bits, k, x.dtype)


@pytest.mark.parametrize("w_bits", BITS)
@pytest.mark.parametrize("a_bits", BITS)
@pytest.mark.parametrize("m,n,k,groups", ((5, 130, 67, 1), (33, 7, 256, 1), (19, 129, 192, 3), (1, 3, 64, 2)))
def test_prepacked_linear_matches_reference(tk, w_bits, a_bits, m, n, k, groups):
    mod, dev = tk
    seed = m * n + k + 10 * w_bits + a_bits + groups
    _, packed, scale, zero = _weights(n, k, w_bits, groups, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    x[::3] = 0.0
    bias = torch.randn(n, generator=gen) if (m + n) % 2 else None
    clo, chi = torch.ones(m), torch.full((m,), 0.9)
    t = {name: v.to(dev) for name, v in dict(x=x, packed=packed, scale=scale, zero=zero, clo=clo, chi=chi).items()}
    weights = mod.prepack_weight(t["packed"], t["scale"], t["zero"], w_bits, a_bits, k)
    got = mod.prepacked_linear(t["x"], weights, None if bias is None else bias.to(dev), w_bits, a_bits, k, n,
                               t["clo"], t["chi"])
    want = _linear(ref.quantize_per_token, ref.lowbit_gemm, x, packed, scale, zero, bias, w_bits, a_bits, k,
                   clo, chi)
    assert got.shape == (m, n) and got.dtype == x.dtype
    # Same integer sums and fp32 epilogue order; only FMA contraction on GPU differs: a few ulp.
    tol = 1e-5 * (want.abs().max().item() + 1.0)
    assert (got.cpu() - want).abs().max().item() <= tol


@pytest.mark.parametrize("w_bits,a_bits", ((4, 4), (3, 3), (4, 8), (8, 8)))
def test_prepacked_integer_core_exact(tk, w_bits, a_bits):
    """Unit scales, zero weight zero point: the output is the exact integer sum sum_k (q_x - z_x) q_w."""
    mod, dev = tk
    m, n, k = 37, 131, 200
    codes, packed, _, _ = _weights(n, k, w_bits, 1, seed=w_bits + a_bits)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)) * 3
    ones = torch.ones(m)
    weights = mod.prepack_weight(packed.to(dev), torch.ones(n, device=dev), torch.zeros(n, device=dev),
                                 w_bits, a_bits, k)
    q = mod.quantize_i8.quantize_act_i8(x.to(dev), a_bits, ones.to(dev), ones.to(dev), False)
    y = mod.gemm_tc.tc_gemm(q[0], torch.ones(m, device=dev), q[2], q[3], *weights, None, w_bits, a_bits, k, n,
                            torch.float32)
    a_packed, _, a_zero, _ = ref.quantize_per_token(x, a_bits, ones, ones)
    a = ref.unpack(a_packed, a_bits, k).long() - a_zero.long()[:, None]
    assert torch.equal(y.cpu(), (a @ codes.long().T).float())  # |sums| < 2^24: exact in fp32


def test_group_size_not_multiple_of_32_rejected(tk):
    mod, dev = tk
    _, packed, scale, zero = _weights(4, 48, 4, 3, seed=0)      # groups of 16 columns
    with pytest.raises(ValueError, match="prepack_weight.*w_scale.*multiple of 32.*16"):
        mod.prepack_weight(packed.to(dev), scale.to(dev), zero.to(dev), 4, 4, 48)
