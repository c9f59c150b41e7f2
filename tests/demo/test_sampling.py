"""Flow-matching sampler: schedule, exactness on linear flows, determinism."""

import math

import pytest
import torch

from qvgen.apps.demo.sampling import flow_sigmas, make_noise, sample_flow, sample_model


def test_sigmas_schedule():
    s = flow_sigmas(4)
    assert torch.equal(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = flow_sigmas(4, shift=3.0)
    # s' = 3 s / (1 + 2 s): 0.75 -> 2.25 / 2.5 = 0.9; endpoints stay 1 and 0.
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    assert float(shifted[1]) == pytest.approx(0.9, abs=1e-7)  # fp64 computed, fp32 stored
    assert (shifted[1:] < shifted[:-1]).all()
    with pytest.raises(ValueError, match="flow_sigmas: argument 'steps'"):
        flow_sigmas(0)
    with pytest.raises(ValueError, match="flow_sigmas: argument 'shift'"):
        flow_sigmas(3, shift=0.0)


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("shift", [1.0, 2.5])
def test_exact_on_straight_flow(method, shift):
    # With the true velocity of a single data point, v = (x_s - x0) / s, every Euler step lands on the line
    # between noise and x0, so the sample equals x0 to fp32 rounding (tolerance 1e-5 over <= 7 steps).
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 5, generator=g)
    noise = torch.randn(3, 2, 5, generator=g)
    calls = []

    def velocity(x, t):
        calls.append(t)
        return (x - x0) / (t.view(-1, 1, 1) / 1000.0)

    out = sample_flow(velocity, noise, steps=7, shift=shift, method=method)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)
    assert len(calls) == (7 if method == "euler" else 13)
    assert all(t.shape == (3,) and float(t.min()) > 0 for t in calls)


def test_euler_known_answer_on_linear_field():
    # v = -x: dx/ds = -x, one Euler step per level from s = 1: x_{k+1} = x_k (1 + (s_k - s_{k+1})).
    noise = torch.ones(1, 4)
    out = sample_flow(lambda x, t: -x, noise, steps=2)
    assert torch.equal(out, torch.full((1, 4), 1.5 * 1.5))
    heun = sample_flow(lambda x, t: -x, noise, steps=2, method="heun")
    # Step 1 (s 1 -> 0.5): predictor 1.5, corrector 1 + 0.5 * (1 + 1.5) / 2 = 1.625; step 2 is Euler: * 1.5.
    assert torch.equal(heun, torch.full((1, 4), 1.625 * 1.5))
    assert math.isclose(float(heun[0, 0]), 2.4375)


def test_sample_model_deterministic():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 5)

        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
            h = self.lin(hidden_states) + encoder_hidden_states.mean() + timestep.view(-1, 1, 1) / 1000
            return (torch.tanh(h),)

    torch.manual_seed(0)
    model = Toy()
    cond = {"encoder_hidden_states": torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))}
    a = sample_model(model, cond, make_noise((2, 4, 5), seed=5), steps=6)
    b = sample_model(model, cond, make_noise((2, 4, 5), seed=5), steps=6)
    c = sample_model(model, cond, make_noise((2, 4, 5), seed=6), steps=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="sample_flow: argument 'method'"):
        sample_model(model, cond, make_noise((2, 4, 5), seed=5), method="ddim")
