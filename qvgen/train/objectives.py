"""Distillation objectives: noise the clean latents once, compare student and teacher predictions.

Student and teacher see the SAME noisy latents, timesteps and conditioning; the loss is a per-sample
weighted MSE between their outputs (mean over all non-batch dims, then over the batch). No ground
truth enters the loss.

- ``FlowMatching`` (Wan, HunyuanVideo): sigma ~ U(0, 1) per sample, x_t = (1 - sigma) x0 + sigma eps,
  t = 1000 sigma, loss on the predicted velocity with weight 1.
- ``VPrediction`` (CogVideoX): DDPM scaled-linear betas over 1000 steps (optionally SNR-shifted and
  rescaled to zero terminal SNR, as CogVideoX's scheduler is), t ~ U{0..999},
  x_t = sqrt(abar) x0 + sqrt(1 - abar) eps. With ``target="x0"`` (default) both v outputs become
  x0 = sqrt(abar) x_t - sqrt(1 - abar) v and the weight is 1 / (1 - abar_t); ``"eps"`` compares
  eps = sqrt(1 - abar) x_t + sqrt(abar) v and ``"v"`` the raw outputs, both with weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qvgen_kernels.errors import fail

TARGETS = ("x0", "eps", "v")


@dataclass(frozen=True)
class NoisyBatch:
    """What the models see (``x_t``, ``t``) and what the loss needs (``weight``, ``abar``)."""

    x_t: torch.Tensor
    t: torch.Tensor        # [B] diffusion timesteps in [0, 1000]
    weight: torch.Tensor   # [B] fp32 per-sample loss weight
    abar: torch.Tensor | None = None  # [B] fp32 alpha-bar (DDPM objectives only)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [B] tensor to broadcast against ``like`` ([B, ...])."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _check_x0(op: str, x0: object) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        fail(op, "x0", "a floating-point torch.Tensor", type(x0).__name__, TypeError)
    if x0.dim() < 2 or x0.shape[0] < 1:
        fail(op, "x0", "a [B, ...] tensor with B >= 1", tuple(x0.shape))
    return x0


def _noise(x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Noise is drawn on the generator's device and moved, so a seed gives the same noise everywhere.
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(x0.shape, generator=generator, device=dev, dtype=torch.float32).to(x0.device)


def weighted_mse(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """mean_b( weight[b] * mean_{...}((student - teacher)^2) ), computed in fp32."""
    if student.shape != teacher.shape:
        fail("weighted_mse", "student", f"the teacher's shape {tuple(teacher.shape)}", tuple(student.shape))
    diff = student.float() - teacher.float()
    per_sample = diff.pow(2).flatten(1).mean(dim=1)
    return (weight.to(per_sample.device) * per_sample).mean()


class FlowMatching:
    """Rectified-flow objective; the models predict the velocity eps - x0."""

    prediction = "flow"

    def __init__(self, num_train_timesteps: int = 1000) -> None:
        self.num_train_timesteps = num_train_timesteps

    def make_noisy(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> NoisyBatch:
        x0 = _check_x0("FlowMatching.make_noisy", x0)
        dev = generator.device if generator is not None else torch.device("cpu")
        sigma = torch.rand(x0.shape[0], generator=generator, device=dev).to(x0.device)
        eps = _noise(x0, generator)
        s = _per_sample(sigma, x0)
        x_t = ((1.0 - s) * x0.float() + s * eps).to(x0.dtype)
        return NoisyBatch(x_t=x_t, t=sigma * self.num_train_timesteps, weight=torch.ones_like(sigma))

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: NoisyBatch) -> torch.Tensor:
        return weighted_mse(student, teacher, batch.weight)


def ddpm_alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                        snr_shift_scale: float = 1.0, zero_terminal_snr: bool = False) -> torch.Tensor:
    """alpha-bar of the scaled-linear DDPM schedule (float64), diffusers' formulas.

    betas = linspace(sqrt(beta_start), sqrt(beta_end))^2; abar = cumprod(1 - betas); then the SD3 SNR
    shift abar / (s + (1 - s) abar) and, optionally, the zero-terminal-SNR rescale of sqrt(abar).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        fail("ddpm_alphas_cumprod", "num_steps", "an int >= 2", repr(num_steps))
    if not 0.0 < beta_start < beta_end < 1.0:
        fail("ddpm_alphas_cumprod", "beta_start/beta_end", "0 < beta_start < beta_end < 1",
             (beta_start, beta_end))
    if snr_shift_scale <= 0:
        fail("ddpm_alphas_cumprod", "snr_shift_scale", "> 0", snr_shift_scale)
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)
    abar = abar / (snr_shift_scale + (1.0 - snr_shift_scale) * abar)
    if zero_terminal_snr:
        root = abar.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * (first / (first - last))
        abar = root ** 2
    return abar


class VPrediction:
    """DDPM objective for v-prediction models (CogVideoX); compares in ``target`` space."""

    prediction = "v"

    def __init__(self, target: str = "x0", alphas_cumprod: torch.Tensor | None = None) -> None:
        if target not in TARGETS:
            fail("VPrediction", "target", f"one of {TARGETS}", repr(target))
        self.target = target
        self.alphas_cumprod = (ddpm_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).double()

    @classmethod
    def cogvideox(cls, target: str = "x0") -> "VPrediction":
        """CogVideoX's training schedule (its scheduler config: SNR shift 3.0, zero terminal SNR)."""
        return cls(target, ddpm_alphas_cumprod(snr_shift_scale=3.0, zero_terminal_snr=True))

    def make_noisy(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> NoisyBatch:
        x0 = _check_x0("VPrediction.make_noisy", x0)
        dev = generator.device if generator is not None else torch.device("cpu")
        n = self.alphas_cumprod.numel()
        t = torch.randint(0, n, (x0.shape[0],), generator=generator, device=dev)
        eps = _noise(x0, generator)
        abar = self.alphas_cumprod[t.cpu()].float().to(x0.device)
        a = _per_sample(abar, x0)
        x_t = (a.sqrt() * x0.float() + (1.0 - a).sqrt() * eps).to(x0.dtype)
        weight = 1.0 / (1.0 - abar) if self.target == "x0" else torch.ones_like(abar)
        return NoisyBatch(x_t=x_t, t=t.to(x0.device), weight=weight, abar=abar)

    def convert(self, v: torch.Tensor, batch: NoisyBatch) -> torch.Tensor:
        """A v-prediction expressed in ``target`` space (fp32)."""
        if self.target == "v":
            return v.float()
        a = _per_sample(batch.abar, v)
        x_t = batch.x_t.float()
        if self.target == "x0":
            return a.sqrt() * x_t - (1.0 - a).sqrt() * v.float()
        return (1.0 - a).sqrt() * x_t + a.sqrt() * v.float()

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, batch: NoisyBatch) -> torch.Tensor:
        return weighted_mse(self.convert(student, batch), self.convert(teacher, batch), batch.weight)


def objective_for(prediction: str, target: str = "auto"):
    """The objective matching an adapter's prediction type (``"flow"`` or ``"v"``)."""
    if prediction == "flow":
        if target not in ("auto", "v", "flow"):
            fail("objective_for", "target", "'auto' for flow models (loss on the velocity)", repr(target))
        return FlowMatching()
    if prediction == "v":
        return VPrediction.cogvideox("x0" if target == "auto" else target)
    fail("objective_for", "prediction", "'flow' or 'v'", repr(prediction))
