import pytest
import torch

from qvgen.quant.lowrank import init_phi, resvd


def _decaying(gen, n, k, decay=0.8):
    u, _ = torch.linalg.qr(torch.randn(n, min(n, k), generator=gen))
    v, _ = torch.linalg.qr(torch.randn(k, min(n, k), generator=gen))
    s = decay ** torch.arange(min(n, k), dtype=torch.float32)
    return (u * s) @ v.T


@pytest.mark.parametrize("n,k,r", [(40, 72, 8), (33, 17, 4), (64, 64, 32)])
def test_exact_is_eckart_young_optimum(gen, n, k, r):
    e = torch.randn(n, k, generator=gen)
    l, rr = init_phi(e, r, "exact")
    assert l.shape == (n, r) and rr.shape == (r, k) and l.dtype == torch.float32
    s = torch.linalg.svdvals(e.double())
    err = float((e.double() - l.double() @ rr.double()).norm() ** 2)
    # The rank-r truncation error equals the tail energy; 1e-4 relative: fp32 SVD of a matrix with
    # condition number ~10.
    assert err == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-4)
    # Symmetric split: L^T L == R R^T == diag(S) (fp32 tolerance, relative to sigma_max).
    torch.testing.assert_close(l.T @ l, rr @ rr.T, rtol=0, atol=1e-4 * float(s[0]))


def test_randomized_near_optimum(gen):
    e = _decaying(gen, 300, 200)
    l, r = init_phi(e, 16, "randomized")
    best = init_phi(e, 16, "exact")
    err, opt = (e - l @ r).norm(), (e - best[0] @ best[1]).norm()
    # Power iterations on a fast-decaying spectrum: within 1% of the optimum.
    assert float(err) <= 1.01 * float(opt)


def test_init_phi_reduces_quant_error(gen):
    from qvgen import QuantConfig
    from qvgen.quant.quantizers import WeightQuantizer
    w = torch.randn(48, 80, generator=gen) * 0.1
    wq = WeightQuantizer(48, 80, QuantConfig(w_bits=3))
    wq.calibrate(w)
    with torch.no_grad():
        resid = w - wq(w)
    l, r = init_phi(resid, 16)
    assert float((resid - l @ r).norm()) < 0.9 * float(resid.norm())


def test_rank_above_min_dim_pads_zeros(gen):
    e = torch.randn(6, 10, generator=gen)
    l, r = init_phi(e, 8, "exact")
    assert l.shape == (6, 8) and r.shape == (8, 10)
    assert bool((l[:, 6:] == 0).all()) and bool((r[6:] == 0).all())
    # Full rank reached: exact reconstruction up to fp32 rounding.
    torch.testing.assert_close(l @ r, e, rtol=0, atol=1e-5)


@pytest.mark.parametrize("keep", [16, 5, 1])
def test_resvd_keeps_product_and_orders(gen, keep):
    e = _decaying(gen, 70, 50, decay=0.9)
    l, r = init_phi(e, 32, "exact")
    # Mix the columns so the kept half is not already in SVD form.
    mix = torch.linalg.qr(torch.randn(32, 32, generator=gen))[0]
    l, r = l @ mix, mix.T @ r
    nl, nr = resvd(l, r, keep)
    assert nl.shape == (70, keep) and nr.shape == (keep, 50)
    target = l[:, :keep] @ r[:keep]
    # fp32 QR + SVD round trip: 1e-5 relative to the product's largest entry.
    torch.testing.assert_close(nl @ nr, target, rtol=0, atol=1e-5 * float(target.abs().max()))
    norms = nl.norm(dim=0)
    assert bool((norms[:-1] >= norms[1:] - 1e-6).all())


def test_errors(gen):
    with pytest.raises(ValueError, match="'rank'"):
        init_phi(torch.randn(4, 4), 0)
    with pytest.raises(ValueError, match="'method'"):
        init_phi(torch.randn(4, 4), 2, "qr")
    with pytest.raises(ValueError, match="'residual'"):
        init_phi(torch.randn(4), 2)
    with pytest.raises(ValueError, match="'rank'"):
        resvd(torch.randn(4, 2), torch.randn(2, 5), 3)


def test_resvd_thin_layer(gen):
    # K = 1 < rank: the product has rank 1, the rest is zero padding.
    l, r = torch.randn(24, 4, generator=gen), torch.randn(4, 1, generator=gen)
    nl, nr = resvd(l, r, 2)
    assert nl.shape == (24, 2) and nr.shape == (2, 1)
    # fp32 rounding of a rank-1 re-split: 1e-5 of the product's largest entry.
    target = l[:, :2] @ r[:2]
    torch.testing.assert_close(nl @ nr, target, rtol=0, atol=1e-5 * float(target.abs().max()))
