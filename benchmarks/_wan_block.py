"""A Wan2.1 transformer block in plain torch, for the GPU check on a machine without diffusers.

Same parameters as diffusers' ``WanTransformerBlock(dim, ffn_dim, heads, cross_attn_norm=True)`` (names and
shapes: its state dict loads strictly into this one, tested), so its nn.Linear layers, the part QAT changes,
are the real block's. Left out: the rotary position embedding of the self-attention (elementwise on q and k,
a small share of the block's time). Rows measured on it say so (``block: "torch Wan-shaped"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)  # across heads, as Wan

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q = heads(self.norm_q(self.to_q(x)))
        k = heads(self.norm_k(self.to_k(context)))
        v = heads(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.to_out[0](out)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        proj = nn.Module()
        proj.proj = nn.Linear(dim, ffn_dim)
        self.net = nn.ModuleList([proj, nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[1](self.net[0].proj(x)))


class _FP32LayerNorm(nn.LayerNorm):
    """Normalises in fp32 with fp32 copies of its affine parameters, as diffusers' FP32LayerNorm (a bf16 block's
    weights with fp32 input: torch's CUDA layer_norm refuses mixed dtypes, its CPU one accepts them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)


class WanShapedBlock(nn.Module):
    """forward(hidden [B, N, dim], text [B, L, dim], temb [B, 6, dim]) -> [B, N, dim], modulated as Wan's."""

    def __init__(self, dim: int, ffn_dim: int, heads: int):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn1 = _Attention(dim, heads)
        self.norm2 = _FP32LayerNorm(dim, eps=1e-6)
        self.attn2 = _Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ffn = _FeedForward(dim, ffn_dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, rotary: object = None) -> torch.Tensor:
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table + temb.float()).chunk(6, dim=1)
        h = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        x = (x.float() + self.attn1(h) * gate).type_as(x)
        x = x + self.attn2(self.norm2(x.float()).type_as(x), text)
        h = (self.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * c_gate).type_as(x)


__all__ = ["WanShapedBlock"]
