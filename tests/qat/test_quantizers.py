import math

import pytest
import torch

from qvgen import QuantConfig
from qvgen.quant.quantizers import ActQuantizer, WeightQuantizer
from qvgen_kernels import ops


def _weights(gen, n=37, k=96):
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, 3] *= 12.0  # outlier column: min/max is a poor range, the shrink search should clip it
    return w


def _lp_err(wq, w):
    return (wq(w) - w).abs().pow(2.4).sum(-1)


# At 8 bits the grid is fine enough that clipping the outliers does not pay off: no gain is required.
@pytest.mark.parametrize("bits,max_ratio", [(3, 0.9), (4, 0.97), (8, 1.0 + 1e-6)])
def test_mse_init_beats_minmax(gen, bits, max_ratio):
    w = _weights(gen)
    mse = WeightQuantizer(*w.shape, QuantConfig(w_bits=bits, w_init="mse"))
    mm = WeightQuantizer(*w.shape, QuantConfig(w_bits=bits, w_init="minmax"))
    mse.calibrate(w)
    mm.calibrate(w)
    with torch.no_grad():
        e_mse, e_mm = _lp_err(mse, w), _lp_err(mm, w)
    # p = 1 is in the search grid, so per row the search can only improve (1e-6 relative: fp32 sums).
    assert bool((e_mse <= e_mm * (1 + 1e-6)).all())
    assert float(e_mse.sum()) <= max_ratio * float(e_mm.sum())


def test_minmax_formula_and_zero_row(gen):
    w = torch.randn(6, 20, generator=gen)
    w[2] = 0.0
    w[4] = w[4].abs() + 0.5  # positive row: the range is widened to contain 0
    wq = WeightQuantizer(6, 20, QuantConfig(w_bits=4, w_init="minmax"))
    wq.calibrate(w)
    lo, hi = w.amin(1).clamp_max(0), w.amax(1).clamp_min(0)
    s = ((hi - lo) / 15).clamp_min(1e-8)
    torch.testing.assert_close(wq.scale.data, s, rtol=0, atol=0)
    torch.testing.assert_close(wq.zero.data, -lo / s, rtol=0, atol=0)
    with torch.no_grad():
        out = wq(w)
    assert bool((out[2] == 0).all())
    # Row extremes are representable up to fp32 rounding of s * (q - z) (1e-5 absolute at |w| < 5).
    torch.testing.assert_close(out.amax(1)[[0, 1, 3, 4, 5]], w.amax(1)[[0, 1, 3, 4, 5]], rtol=0, atol=1e-5)


def test_group_shapes_and_errors(gen):
    w = torch.randn(5, 128, generator=gen)
    wq = WeightQuantizer(5, 128, QuantConfig(w_group_size=64))
    assert wq.scale.shape == (5, 2)
    wq.calibrate(w)
    with torch.no_grad():
        per_group_err = _lp_err(wq, w)
    pc = WeightQuantizer(5, 128, QuantConfig())
    pc.calibrate(w)
    with torch.no_grad():
        assert float(per_group_err.sum()) <= float(_lp_err(pc, w).sum()) * (1 + 1e-6)
    with pytest.raises(ValueError, match="group_size"):
        WeightQuantizer(5, 100, QuantConfig(w_group_size=64))
    with pytest.raises(ValueError, match="'w'"):
        wq.calibrate(torch.randn(4, 128))


def test_codes_match_forward(gen):
    w = torch.randn(9, 33, generator=gen)
    wq = WeightQuantizer(9, 33, QuantConfig(w_bits=3))
    wq.calibrate(w)
    q = wq.codes(w)
    assert q.dtype == torch.uint8 and int(q.max()) <= 7
    deq = wq.scale.data[:, None] * (q.float() - wq.zero.data[:, None])
    with torch.no_grad():
        # Same formula s * (q - z) in fp32 on both sides; 1e-6 absolute covers a fused multiply-add.
        torch.testing.assert_close(wq(w), deq, rtol=0, atol=1e-6)


def test_lsq_gradient_scale(gen):
    w = torch.randn(7, 50, generator=gen)
    grads = []
    for flag in (True, False):
        wq = WeightQuantizer(7, 50, QuantConfig(w_bits=4, w_grad_scale=flag))
        wq.calibrate(w)
        wq(w.clone().requires_grad_()).pow(2).sum().backward()
        grads.append(wq.scale.grad.clone())
    g = 1 / math.sqrt(50 * 15)
    assert WeightQuantizer(7, 50, QuantConfig()).grad_scale == pytest.approx(g)
    # Same forward, gradient multiplied by g: fp32 tolerance.
    torch.testing.assert_close(grads[0], grads[1] * g, rtol=1e-5, atol=1e-7)


def test_act_quantizer_clips_and_forward(gen):
    cfg = QuantConfig(a_bits=4, clip_groups=7)
    aq = ActQuantizer(cfg)
    lo, hi = aq.clip_table()
    # The sigmoid of the init logit in fp32: 1e-6 absolute.
    torch.testing.assert_close(lo, torch.full((7,), 0.9025), rtol=0, atol=1e-6)
    with torch.no_grad():
        aq.clip_hi_logit[3] = 0.0
    x = torch.randn(4, 5, 19, generator=gen)
    idx = torch.tensor([3])
    y = aq(x, idx.reshape(()))
    ref = ops.fake_quant_act(x, 4, torch.tensor(0.9025), torch.tensor(0.95 * 0.5))
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
    y.sum().backward()
    assert aq.clip_hi_logit.grad[3] != 0 and bool((aq.clip_hi_logit.grad[:3] == 0).all())
    frozen = ActQuantizer(QuantConfig(a_clip_learnable=False))
    assert not frozen.clip_lo_logit.requires_grad
