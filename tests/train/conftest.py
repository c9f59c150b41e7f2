"""Shared helpers of the trainer tests: a seeded toy denoiser with the generic (x, t, cond) call."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class ToyDenoiser(nn.Module):
    """Per-voxel MLP on (B, C, F, H, W) latents, conditioned on t and a pooled text vector."""

    def __init__(self, channels: int = 3, hidden: int = 12, cond_dim: int = 5) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(in_channels=channels)
        self.inp = nn.Linear(channels, hidden)
        self.t_emb = nn.Linear(1, hidden)
        self.c_emb = nn.Linear(cond_dim, hidden)
        self.out = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        h = self.inp(x.movedim(1, -1))
        h = h + self.t_emb(t.float()[:, None] / 1000.0)[:, None, None, None]
        h = h + self.c_emb(cond["text"])[:, None, None, None]
        return self.out(F.gelu(h)).movedim(-1, 1)


def make_pair(seed: int = 0) -> tuple[ToyDenoiser, ToyDenoiser]:
    """(student, teacher): the same seeded weights, the teacher slightly perturbed so the loss is > 0."""
    torch.manual_seed(seed)
    student = ToyDenoiser()
    teacher = ToyDenoiser()
    teacher.load_state_dict(student.state_dict())
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return student, teacher


def toy_data_fn(shape: tuple[int, ...] = (2, 3, 2, 3, 5), cond_dim: int = 5):
    """data_fn drawing x0 and the text vector from the step's generator only."""

    def data_fn(step: int, g: torch.Generator):
        x0 = torch.randn(shape, generator=g)
        return x0, {"text": torch.randn(shape[0], cond_dim, generator=g)}

    return data_fn


@pytest.fixture
def toy_pair():
    return make_pair()
