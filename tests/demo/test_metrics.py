"""Known answers for the demo's metrics."""

import math

import pytest
import torch

from qvgen.apps.demo.metrics import denoising_error, make_eval_set, model_bytes, mse, psnr, ssim
from qvgen.apps.demo.sprites import SpriteConfig, SpriteData


def test_psnr_known_answers():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 5, 7, 9, generator=g) * 2 - 1
    assert psnr(a, a.clone()) == math.inf  # documented: identical -> inf, no cap
    # A constant offset of 0.1 gives MSE 0.01 exactly: PSNR = 10 log10(4 / 0.01) = 26.0206 dB.
    # Tolerance 1e-9: the offset is not exact in fp32 (0.1 rounds), which moves the result by ~1e-7 dB.
    assert psnr(a, a + 0.1) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-5)
    assert psnr(torch.zeros(4), torch.full((4,), 0.5), data_range=1.0) == pytest.approx(10 * math.log10(4.0),
                                                                                         abs=1e-12)
    with pytest.raises(ValueError, match="psnr: argument 'b'"):
        psnr(a, a[:1])
    with pytest.raises(TypeError, match="psnr"):
        psnr(a, 1.0)


def test_ssim_known_answers():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 4, 13, 11, generator=g) * 2 - 1
    assert ssim(a, a.clone()) == pytest.approx(1.0, abs=1e-12)  # fp64 arithmetic: exact up to rounding
    # Constant images c1, c2: variances and covariance vanish, so SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1).
    c1, c2, big_c1 = 0.3, -0.2, (0.01 * 2.0) ** 2
    expected = (2 * c1 * c2 + big_c1) / (c1 ** 2 + c2 ** 2 + big_c1)
    got = ssim(torch.full((2, 16, 16), c1), torch.full((2, 16, 16), c2))
    assert got == pytest.approx(expected, abs=1e-6)  # fp32 inputs (0.3, -0.2 not exact): ~1e-8 relative
    # Noise lowers it; an inverted image is anti-correlated.
    noisy = a + 0.3 * torch.randn(a.shape, generator=g)
    assert 0.0 < ssim(a, noisy) < 0.95
    # One 7x7 window: SSIM is the single weighted-statistics formula, written out here by hand.
    x, y = a[0, 0, :7, :7].double(), noisy[0, 0, :7, :7].double()
    r = torch.arange(7, dtype=torch.float64) - 3
    w1 = torch.exp(-r * r / (2 * 1.5 ** 2))
    w = torch.outer(w1, w1) / torch.outer(w1, w1).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx ** 2, (w * y * y).sum() - my ** 2
    cxy = (w * x * y).sum() - mx * my
    c2 = (0.03 * 2.0) ** 2
    hand = (2 * mx * my + big_c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + big_c1) * (vx + vy + c2))
    assert ssim(a[0, 0, :7, :7], noisy[0, 0, :7, :7]) == pytest.approx(float(hand), abs=1e-12)  # both fp64
    with pytest.raises(ValueError, match="ssim: argument 'a'"):
        ssim(torch.zeros(4, 4), torch.zeros(4, 4))


def test_mse_fp64():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert mse(a, a + torch.tensor([1.0, -1.0, 2.0])) == 2.0


class _Scaled(torch.nn.Module):
    """A fake "model" whose velocity is gain * x_t (diffusers call convention)."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(gain))

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        return (self.gain * hidden_states,)


def test_denoising_error_known_answer():
    data = SpriteData(SpriteConfig(size=16), batch_size=2)
    ev = make_eval_set(data, 5, seed=3)
    assert torch.equal(ev.x_t, make_eval_set(data, 5, seed=3).x_t)
    # Stratified noise levels: t = 1000 (i + 1/2) / 5, one per clip.
    assert sorted(ev.t.tolist()) == pytest.approx([100.0, 300.0, 500.0, 700.0, 900.0], abs=1e-3)
    teacher_v = ev.x_t.clone()
    assert denoising_error(_Scaled(1.0), teacher_v, ev, batch_size=2) == 0.0
    # gain 1.5: error = mean((0.5 x_t)^2) = 0.25 mean(x_t^2); fp32 products vs fp64 mean: 1e-6 relative.
    expected = 0.25 * float(ev.x_t.double().pow(2).mean())
    assert denoising_error(_Scaled(1.5), teacher_v, ev, batch_size=3) == pytest.approx(expected, rel=1e-6)


def test_model_bytes_counts_storage_once():
    lin = torch.nn.Linear(10, 6)  # 60 + 6 fp32
    assert model_bytes(lin) == 66 * 4
    model = torch.nn.Module()
    model.a = lin
    model.b = lin  # shared: counted once
    model.register_buffer("packed", torch.zeros(6, 5, dtype=torch.uint8))  # a packed 4-bit 6x10 weight: 30 B
    model.register_buffer("scale16", torch.zeros(3, dtype=torch.float16))
    assert model_bytes(model) == 66 * 4 + 30 + 6
    with pytest.raises(TypeError, match="model_bytes"):
        model_bytes(torch.zeros(3))
