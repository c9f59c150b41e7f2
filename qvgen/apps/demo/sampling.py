"""Flow-matching samplers (Euler and Heun) for velocity-predicting video DiTs.

Convention (rectified flow, as diffusers' FlowMatchEulerDiscreteScheduler): x_s = (1 - s) x0 + s eps with the
noise level s going from 1 to 0, the model predicts v = eps - x0 at timestep t = 1000 s, and a step is
x_{s'} = x_s + (s' - s) v. The timestep the model receives is the one every QLinear's clip group is derived
from (the quantized model's forward pre-hook reads it), so quantized and FP models see identical schedules.
"""

from __future__ import annotations

from typing import Callable

import torch

from qvgen_kernels.errors import fail

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS = ("euler", "heun")


def flow_sigmas(steps: int, shift: float = 1.0) -> torch.Tensor:
    """Noise levels s_0 = 1 > ... > s_N = 0 (fp32, N + 1 values), time-shifted: s' = k s / (1 + (k - 1) s)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        fail("flow_sigmas", "steps", "a positive int", repr(steps))
    if not isinstance(shift, (int, float)) or isinstance(shift, bool) or not shift > 0:
        fail("flow_sigmas", "shift", "a positive float", repr(shift))
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).to(torch.float32)


def sample_flow(velocity: VelocityFn, noise: torch.Tensor, steps: int = 20, shift: float = 1.0,
                method: str = "euler") -> torch.Tensor:
    """Integrate dx/ds = v(x, 1000 s) from s = 1 (``noise``) to s = 0; returns the clean sample.

    ``velocity(x, t)`` gets t as a (B,) fp32 tensor of timesteps in [0, 1000] on x's device. "heun" adds the
    trapezoidal correction on every step except the last (where s' = 0 would query the model at t = 0 only to
    average it away); it costs 2N - 1 model calls instead of N. Deterministic: no randomness besides ``noise``.
    """
    if method not in METHODS:
        fail("sample_flow", "method", f"one of {METHODS}", repr(method))
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.dim() < 1:
        fail("sample_flow", "noise", "a floating-point tensor (B, ...)", type(noise).__name__, TypeError)
    sigmas = flow_sigmas(steps, shift).tolist()
    x = noise
    batch = noise.shape[0]

    def v_at(x_: torch.Tensor, s: float) -> torch.Tensor:
        return velocity(x_, torch.full((batch,), 1000.0 * s, dtype=torch.float32, device=x_.device))

    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        v = v_at(x, s)
        x_euler = x + (s_next - s) * v
        if method == "heun" and s_next > 0:
            x = x + (s_next - s) * 0.5 * (v + v_at(x_euler, s_next))
        else:
            x = x_euler
    return x


def model_velocity(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]
                   ) -> torch.Tensor:
    """A diffusers-style transformer's prediction (``hidden_states``, ``timestep`` (B,), conditioning kwargs)."""
    return model(hidden_states=x, timestep=t, return_dict=False, **cond)[0]


@torch.no_grad()
def sample_model(model: torch.nn.Module, cond: dict[str, torch.Tensor], noise: torch.Tensor, steps: int = 20,
                 shift: float = 1.0, method: str = "euler") -> torch.Tensor:
    """Class-conditional samples from a diffusers-style transformer (see :func:`sample_flow`)."""
    return sample_flow(lambda x, t: model_velocity(model, x, t, cond), noise, steps, shift, method)


def make_noise(shape: tuple[int, ...], seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise drawn on the CPU from ``seed`` (identical on every device), then moved."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device)
