"""Helpers of the QAT frontend tests: a toy diffusion-transformer-like model and an error measure."""

from __future__ import annotations

import torch
from torch import nn


class ToyDiT(nn.Module):
    """A tiny transformer-like block stack with a diffusers-style `timestep` keyword argument."""

    def __init__(self, dim: int = 24, hidden: int = 40, depth: int = 2) -> None:
        super().__init__()
        self.time_embedder = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"to_q": nn.Linear(dim, dim), "ffn_up": nn.Linear(dim, hidden),
                           "ffn_down": nn.Linear(hidden, dim, bias=False)}) for _ in range(depth))
        self.proj_out = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        t = timestep.float()[:, None] / 1000.0
        h = x + self.time_embedder(t)[:, None, :]
        for blk in self.blocks:
            h = h + blk["to_q"](h)
            h = h + blk["ffn_down"](torch.nn.functional.gelu(blk["ffn_up"](h)))
        return self.proj_out(h)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
