"""Quality and size metrics of the demo: pure functions of tensors and modules.

- :func:`psnr` and :func:`ssim` compare sampled clips (values in [-1, 1], so the data range is 2).
- :func:`make_eval_set` + :func:`denoising_error`: teacher-relative denoising error, the MSE between a model's and
  the teacher's velocity on a fixed held-out set of noisy clips, timesteps and captions.
- :func:`model_bytes`: the bytes a model's parameters and buffers occupy (packed uint8 weights at their real size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qvgen.apps.demo.sampling import model_velocity
from qvgen.apps.demo.sprites import SpriteData
from qvgen_kernels.errors import fail


def _check_pair(op: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        fail(op, "a, b", "two tensors", f"{type(a).__name__}, {type(b).__name__}", TypeError)
    if a.shape != b.shape:
        fail(op, "b", f"the shape of a {tuple(a.shape)}", tuple(b.shape))


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference, accumulated in fp64."""
    _check_pair("mse", a, b)
    return float(torch.mean((a.double() - b.double()) ** 2))


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements: 10 log10(range^2 / MSE).

    Identical inputs give ``math.inf`` (MSE = 0; no cap, so "identical" stays distinguishable from "close").
    """
    _check_pair("psnr", a, b)
    if not data_range > 0:
        fail("psnr", "data_range", "a positive float", data_range)
    err = mse(a, b)
    return math.inf if err == 0.0 else 10.0 * math.log10(data_range ** 2 / err)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, window: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) over every 2-D image in (..., H, W), Gaussian window.

    Constants K1 = 0.01, K2 = 0.03; 'valid' windows only (no padding); computed in fp64. The window defaults to
    7x7 (sigma 1.5) because the demo's frames are 16x16; identical inputs give exactly 1.
    """
    _check_pair("ssim", a, b)
    if a.dim() < 2 or min(a.shape[-2:]) < window:
        fail("ssim", "a", f"(..., H, W) with H, W >= window={window}", tuple(a.shape))
    if window < 1 or window % 2 == 0:
        fail("ssim", "window", "a positive odd int", window)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    x = a.double().reshape(-1, 1, *a.shape[-2:])
    y = b.double().reshape(-1, 1, *b.shape[-2:])
    w = _gaussian_window(window, sigma).to(x.device)[None, None]
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    var_x = F.conv2d(x * x, w) - mu_x ** 2
    var_y = F.conv2d(y * y, w) - mu_y ** 2
    cov = F.conv2d(x * y, w) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)
    return float(torch.mean(num / den))


@dataclass
class EvalSet:
    """Held-out noisy inputs: x_t (B, C, F, H, W), timesteps t (B,) in [0, 1000], conditioning, class ids."""

    x_t: torch.Tensor
    t: torch.Tensor
    cond: dict[str, torch.Tensor]
    labels: torch.Tensor


def make_eval_set(data: SpriteData, size: int, seed: int) -> EvalSet:
    """``size`` fresh clips, noise and captions from ``seed``; noise levels stratified over (0, 1).

    The levels s_i = (i + 1/2) / size (shuffled across clips) cover the whole trajectory evenly, so the error is
    not dominated by where a few random draws happen to land.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        fail("make_eval_set", "size", "a positive int", repr(size))
    g = torch.Generator().manual_seed(seed)
    x0, cond, labels = data.batch(g, size)
    eps = torch.randn(x0.shape, generator=g).to(x0.device)
    s = ((torch.randperm(size, generator=g).double() + 0.5) / size).float().to(x0.device)
    s_b = s.view(-1, 1, 1, 1, 1)
    return EvalSet((1 - s_b) * x0 + s_b * eps, s * 1000.0, cond, labels)


@torch.no_grad()
def predict(model: torch.nn.Module, ev: EvalSet, batch_size: int = 16) -> torch.Tensor:
    """The model's velocity on every item of the eval set, in chunks of ``batch_size``."""
    outs = []
    for i in range(0, ev.x_t.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        outs.append(model_velocity(model, ev.x_t[sl], ev.t[sl], {k: v[sl] for k, v in ev.cond.items()}))
    return torch.cat(outs)


def denoising_error(model: torch.nn.Module, teacher_v: torch.Tensor, ev: EvalSet, batch_size: int = 16) -> float:
    """Teacher-relative denoising error: MSE between the model's velocity and the teacher's on ``ev``."""
    return mse(predict(model, ev, batch_size), teacher_v)


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor the model holds: parameters, buffers and the deployed layouts of its low-bit layers
    (``DeployedLinear``'s prepacked weights), each storage counted once and whole (tied or shared tensors are not
    doubled: on the CPU a deployed layer's layout is its checkpoint codes, one storage).

    A packed 4-bit weight is a uint8 tensor of N * K / 2 elements, so it counts at its real size.
    """
    if not isinstance(model, torch.nn.Module):
        fail("model_bytes", "model", "a torch.nn.Module", type(model).__name__, TypeError)
    tensors = list(model.parameters()) + list(model.buffers())
    for m in model.modules():
        packed = getattr(m, "_packed", None)
        tensors += list(getattr(packed, "tensors", ()))
    seen: set[int] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() in seen and storage.nbytes():
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total
