"""Distillation objectives: noising formulas, prediction conversions, per-sample weights, schedules."""

from __future__ import annotations

import pytest
import torch

from qvgen.train.objectives import (FlowMatching, NoisyBatch, VPrediction, ddpm_alphas_cumprod, objective_for,
                                    weighted_mse)


def test_flow_noising_replays_generator():
    # Draw order is part of the contract (resume exactness): sigma [B], then eps like x0.
    x0 = torch.randn(3, 2, 1, 4, 5)
    batch = FlowMatching().make_noisy(x0, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    sigma = torch.rand(3, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    s = sigma.view(3, 1, 1, 1, 1)
    # Same fp32 expression evaluated in the same order: exact.
    assert torch.equal(batch.x_t, (1 - s) * x0 + s * eps)
    assert torch.equal(batch.t, sigma * 1000)
    assert torch.equal(batch.weight, torch.ones(3))
    assert batch.abar is None


def test_flow_loss_is_velocity_mse():
    teacher = torch.randn(2, 4, 3, 3, 3)
    delta = torch.tensor([0.5, -2.0]).view(2, 1, 1, 1, 1)
    batch = NoisyBatch(x_t=teacher, t=torch.tensor([10.0, 900.0]), weight=torch.ones(2))
    loss = FlowMatching().loss(teacher + delta, teacher, batch)
    # mean_b delta_b^2 = (0.25 + 4) / 2; fp32 rounding of the additions only (rel 1e-6).
    torch.testing.assert_close(loss, torch.tensor(2.125), rtol=1e-6, atol=0)


def _known_vpred(abar: torch.Tensor, shape=(3, 2, 4, 3, 3)):
    x0, eps = torch.randn(shape), torch.randn(shape)
    a = abar.view(-1, 1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    return x0, eps, x_t, v


@pytest.mark.parametrize("target", ["x0", "eps", "v"])
def test_vpred_conversions_recover_x0_and_eps(target):
    abar = torch.tensor([0.999, 0.4, 0.0])  # includes the zero-terminal-SNR end
    x0, eps, x_t, v = _known_vpred(abar)
    obj = VPrediction(target)
    batch = NoisyBatch(x_t=x_t, t=torch.tensor([0, 500, 999]), weight=torch.ones(3), abar=abar)
    expected = {"x0": x0, "eps": eps, "v": v}[target]
    # sqrt(a)^2 + sqrt(1-a)^2 = 1 up to fp32 rounding of O(1) values: 1e-5 absolute.
    torch.testing.assert_close(obj.convert(v, batch), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("target, factor", [("x0", lambda a: torch.ones_like(a)), ("eps", lambda a: a),
                                            ("v", lambda a: torch.ones_like(a))])
def test_vpred_weights(target, factor):
    # v_s = v_t + d: x0 differs by -sqrt(1-a) d; weighted by 1/(1-a) the loss is d^2 whatever a is.
    # eps differs by sqrt(a) d (weight 1): loss a d^2. v: d^2.
    abar = torch.tensor([0.9, 0.3, 0.05])
    _, _, x_t, v = _known_vpred(abar)
    d = torch.tensor([1.0, -0.5, 2.0])
    obj = VPrediction(target)
    x0 = torch.randn_like(x_t)
    nb = obj.make_noisy(x0, torch.Generator().manual_seed(0))
    batch = NoisyBatch(x_t=x_t, t=nb.t, weight=1 / (1 - abar) if target == "x0" else torch.ones(3), abar=abar)
    loss = obj.loss(v + d.view(3, 1, 1, 1, 1), v, batch)
    # The x0 case cancels (1-a) against 1/(1-a) in fp32: 1e-5 relative.
    torch.testing.assert_close(loss, (factor(abar) * d ** 2).mean(), rtol=1e-5, atol=0)


def test_vpred_noising_and_weight():
    x0 = torch.randn(4, 1, 4, 2, 2)
    obj = VPrediction.cogvideox()
    batch = obj.make_noisy(x0, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    abar = obj.alphas_cumprod[t].float()
    a = abar.view(4, 1, 1, 1, 1)
    assert torch.equal(batch.t, t)
    assert torch.equal(batch.abar, abar)
    assert torch.equal(batch.x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    assert torch.equal(batch.weight, 1 / (1 - abar))
    assert VPrediction("eps").make_noisy(x0, torch.Generator().manual_seed(3)).weight.eq(1).all()


def test_timestep_ranges():
    x0 = torch.zeros(512, 1)
    fb = FlowMatching().make_noisy(x0, torch.Generator().manual_seed(1))
    assert fb.t.min() >= 0 and fb.t.max() < 1000 and fb.t.is_floating_point()
    vb = VPrediction().make_noisy(x0, torch.Generator().manual_seed(1))
    assert vb.t.dtype == torch.int64 and vb.t.min() >= 0 and vb.t.max() <= 999


def test_schedules_match_diffusers():
    from diffusers import CogVideoXDDIMScheduler, DDPMScheduler

    plain = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    # DDPMScheduler builds its betas in fp32 (we use float64): fp32 rounding accumulated over the
    # 1000-term cumprod stays below 2e-6 absolute.
    torch.testing.assert_close(ddpm_alphas_cumprod(), plain.alphas_cumprod.double(), rtol=0, atol=2e-6)
    cog = CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                 snr_shift_scale=3.0, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    ours = VPrediction.cogvideox().alphas_cumprod
    # CogVideoXDDIMScheduler computes in float64 with the same operation order: 1e-12 absolute.
    torch.testing.assert_close(ours, cog.alphas_cumprod.double(), rtol=0, atol=1e-12)
    assert ours[-1] == 0 and bool((ours[1:] < ours[:-1]).all())


def test_vpred_matches_diffusers_get_velocity():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction")
    x0, eps = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    t = torch.tensor([3, 420, 999])
    x_t = sched.add_noise(x0, eps, t)
    v = sched.get_velocity(x0, eps, t)
    abar = ddpm_alphas_cumprod()[t].float()
    batch = NoisyBatch(x_t=x_t, t=t, weight=1 / (1 - abar), abar=abar)
    # diffusers' x0 from v (sqrt(a) x_t - sqrt(1-a) v) must give back x0: fp32, 1e-5 absolute.
    torch.testing.assert_close(VPrediction("x0").convert(v, batch), x0, rtol=0, atol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="target"):
        VPrediction("noise")
    with pytest.raises(TypeError, match="x0"):
        FlowMatching().make_noisy(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x0"):
        FlowMatching().make_noisy(torch.zeros(5))
    with pytest.raises(ValueError, match="student"):
        weighted_mse(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2))
    with pytest.raises(ValueError, match="num_steps"):
        ddpm_alphas_cumprod(1)
    with pytest.raises(ValueError, match="prediction"):
        objective_for("sample")
    with pytest.raises(ValueError, match="target"):
        objective_for("flow", "x0")
    assert isinstance(objective_for("v"), VPrediction) and objective_for("v").target == "x0"
    assert isinstance(objective_for("flow"), FlowMatching)
