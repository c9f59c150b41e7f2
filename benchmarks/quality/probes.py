"""Measurements of the mechanism, taken on a QAT student without changing it:

- ``heldout_error``: the teacher-relative denoising MSE on the held-out probe, with Phi as it is or masked
  (gamma = 0: the error the deployed model would have if Phi were dropped now).
- ``decomposition``: the same error with only the weights quantized, only the activations, or both, each with and
  without Phi (Phi acts on the quantized activation, so it can only repair the weight share).
- ``MechanismProbe``: a rank-decay stand-in for ``qvgen.train.Distiller`` that records the latent weights'
  gradient norm every step (``GradNormProbe``) and the held-out error, with and without Phi, every 10% of training.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import torch
from torch import nn

from benchmarks.quality.baselines import GradNormProbe
from qvgen import iter_qlinears
from qvgen_kernels.errors import fail

CURVE_POINTS = 10  # held-out error every 1/10 of training (plus step 0)


def _layers(model: nn.Module) -> list:
    layers = [q for _, q in iter_qlinears(model)]
    if not layers:
        fail("probes", "model", "a QAT model with QLinear layers", "none")
    return layers


@contextlib.contextmanager
def phi_masked(model: nn.Module) -> Iterator[None]:
    """Phi contributes nothing inside the block (gamma zeroed, restored after)."""
    saved = [(q, q.phi_gamma.clone()) for q in _layers(model) if q.phi_gamma is not None]
    try:
        for q, _ in saved:
            q.phi_gamma.zero_()
        yield
    finally:
        for q, g in saved:
            q.phi_gamma.copy_(g)


@contextlib.contextmanager
def quantizers_off(model: nn.Module, weights: bool, acts: bool) -> Iterator[None]:
    """Weight and/or activation fake-quantization switched off inside the block (restored after)."""
    saved = [(q, q.weight_quant, q.act_quant) for q in _layers(model)]
    try:
        for q, _, _ in saved:
            if weights:
                q.weight_quant = nn.Identity()
            if acts:
                q.act_quant = None
        yield
    finally:
        for q, wq, aq in saved:
            q.weight_quant, q.act_quant = wq, aq


def heldout_error(model: nn.Module, probe: Any, phi: bool = True) -> float:
    """Denoising MSE vs the teacher on the probe's held-out clips (``phi=False``: Phi masked)."""
    from qvgen.apps.demo.metrics import denoising_error

    with torch.no_grad(), (contextlib.nullcontext() if phi else phi_masked(model)):
        return denoising_error(model, probe.teacher_v, probe.ev)


def decomposition(model: nn.Module, probe: Any) -> dict[str, float]:
    """{both, weights, acts} x {"", "+phi"}: which quantizer the error comes from and what Phi repairs of it
    (acts-only with Phi is left out: Phi models W - Q(W), which is absent when the weights are not quantized)."""
    has_phi = any(q.phi_rank > 0 for q in _layers(model))
    out = {}
    for name, w_off, a_off in (("both", False, False), ("weights", False, True), ("acts", True, False)):
        with quantizers_off(model, w_off, a_off):
            out[name] = heldout_error(model, probe, phi=False)
            if has_phi and name != "acts":
                out[name + "+phi"] = heldout_error(model, probe, phi=True)
    return out


class MechanismProbe(GradNormProbe):
    """GradNormProbe plus the held-out error with and without Phi at steps 0, T/10, ..., (the last point, at
    the end of training, is taken by ``finish_curve`` after the loop)."""

    def __init__(self, model: nn.Module, decay: Any | None, total_steps: int,
                 error: Callable[[nn.Module, bool], float]) -> None:
        super().__init__(model, decay)
        self.model = model
        self.error = error
        self.total_steps = total_steps
        self.points = {round(k * total_steps / CURVE_POINTS) for k in range(CURVE_POINTS)}
        self.curve: list[dict[str, float]] = []
        self.seconds = 0.0  # spent measuring (taken out of the run's training time)

    def _record(self, step: int) -> None:
        start = time.perf_counter()
        with_phi = any(q.phi_rank > 0 for q in self.layers)
        free = self.error(self.model, False)
        self.curve.append({"step": step, "frac": step / self.total_steps, "phi_free": free,
                           "with_phi": self.error(self.model, True) if with_phi else free})
        self.seconds += time.perf_counter() - start

    def step(self, i: int) -> None:
        super().step(i)  # the schedule of step i applied: the error is the one step i starts from
        if i in self.points:
            self._record(i)

    def finish_curve(self) -> list[dict[str, float]]:
        self._record(self.total_steps)
        return self.curve


__all__ = ["CURVE_POINTS", "MechanismProbe", "decomposition", "heldout_error", "phi_masked", "quantizers_off"]
