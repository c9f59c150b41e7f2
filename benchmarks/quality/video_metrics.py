"""Motion and temporal-consistency measures of sampled clips (PSNR, SSIM and the denoising error are
``qvgen.apps.demo.metrics``; these complement them).

Clips are (B, C, F, H, W) with values in [-1, 1] on a background of -1 (the demo's sprite clips).
- :func:`frame_difference_energy`: mean squared difference of consecutive frames per clip, a stand-in for
  VBench's Dynamic Degree (0 for a static clip); :func:`motion_ratio` compares it with reference clips.
- :func:`foreground_centroids` + :func:`trajectory_error`: where the objects are in every frame, and how far
  (in pixels) a model's objects are from the reference's, frame by frame.
- :func:`temporal_consistency`: mean cosine similarity of consecutive mean-centred frames, a stand-in for
  VBench's subject/background consistency (1 for a static clip, lower for flicker).
"""

from __future__ import annotations

import torch

from qvgen_kernels.errors import fail

_EPS = 1e-8  # keeps ratios and normalisations finite for all-background or constant frames


def _check_clips(op: str, clips: object, name: str = "clips") -> torch.Tensor:
    if not isinstance(clips, torch.Tensor) or not clips.is_floating_point():
        fail(op, name, "a floating-point tensor (B, C, F, H, W)", type(clips).__name__, TypeError)
    if clips.dim() != 5 or clips.shape[2] < 2:
        fail(op, name, "a (B, C, F, H, W) tensor with F >= 2", tuple(clips.shape))
    return clips.double()


def _check_pair(op: str, a: object, b: object) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _check_clips(op, a, "a"), _check_clips(op, b, "b")
    if a.shape != b.shape:
        fail(op, "b", f"the shape of a {tuple(a.shape)}", tuple(b.shape))
    return a, b


def frame_difference_energy(clips: torch.Tensor) -> torch.Tensor:
    """Per clip (B,), fp64: mean over (C, F-1, H, W) of (x[:, :, f+1] - x[:, :, f])^2."""
    x = _check_clips("frame_difference_energy", clips)
    return ((x[:, :, 1:] - x[:, :, :-1]) ** 2).mean(dim=(1, 2, 3, 4))


def motion_ratio(clips: torch.Tensor, reference: torch.Tensor) -> float:
    """Total frame-difference energy of ``clips`` over that of ``reference`` (1.0 = the same amount of motion;
    below 1: the model's clips move less, e.g. frozen or washed-out objects)."""
    a, b = _check_pair("motion_ratio", clips, reference)
    return float(frame_difference_energy(a).sum() / (frame_difference_energy(b).sum() + _EPS))


def foreground_centroids(clips: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """(B, F, 2) fp64 (row, col) centroid of the foreground mass of every frame, in pixels.

    A pixel's mass is relu(max over channels - threshold): the background (-1) has none, every sprite colour
    has a channel at +1. A frame with no mass gets the frame centre.
    """
    x = _check_clips("foreground_centroids", clips)
    mass = torch.relu(x.amax(dim=1) - threshold)  # (B, F, H, W)
    h, w = mass.shape[-2:]
    rows = torch.arange(h, dtype=torch.float64, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, dtype=torch.float64, device=x.device).view(1, 1, 1, w)
    total = mass.sum(dim=(2, 3))
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64, device=x.device)
    cy = (mass * rows).sum(dim=(2, 3)) / total.clamp_min(_EPS)
    cx = (mass * cols).sum(dim=(2, 3)) / total.clamp_min(_EPS)
    out = torch.stack([cy, cx], dim=-1)
    return torch.where((total > 0)[..., None], out, centre.expand_as(out))


def trajectory_error(clips: torch.Tensor, reference: torch.Tensor, threshold: float = 0.0) -> float:
    """Mean Euclidean distance (pixels) between the foreground centroids of ``clips`` and ``reference``,
    over every clip and frame."""
    a, b = _check_pair("trajectory_error", clips, reference)
    d = foreground_centroids(a, threshold) - foreground_centroids(b, threshold)
    return float(d.norm(dim=-1).mean())


def temporal_consistency(clips: torch.Tensor) -> float:
    """Mean over clips and consecutive frame pairs of the cosine similarity of the mean-centred frames
    (flattened over C, H, W). A constant frame next to another constant frame counts as 1 (nothing changed)."""
    x = _check_clips("temporal_consistency", clips)
    f = x.permute(0, 2, 1, 3, 4).flatten(2)  # (B, F, C*H*W)
    f = f - f.mean(dim=-1, keepdim=True)
    a, b = f[:, 1:], f[:, :-1]
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    cos = (a * b).sum(-1) / (na * nb).clamp_min(_EPS)
    both_flat = (na <= _EPS) & (nb <= _EPS)
    return float(torch.where(both_flat, torch.ones_like(cos), cos).mean())


__all__ = ["foreground_centroids", "frame_difference_energy", "motion_ratio", "temporal_consistency",
           "trajectory_error"]
