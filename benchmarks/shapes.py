"""Model shapes of the model-level benchmark: the real configs and their CPU-sized variants.

Real configs (ECOSYSTEM 3.3-3.4, diffusers constructor kwargs):
  wan-1.3b      dim 1536 (12 x 128), 30 layers, FFN 8960, umT5 text 4096 x 512 tokens,
                latent 16 x 21 x 60 x 104 (81 x 480 x 832 video) -> 21 x 30 x 52 = 32 760 video tokens
  wan-14b       dim 5120 (40 x 128), 40 layers, FFN 13824, same text and latent
  cogvideox-2b  dim 1920 (30 x 64), 30 layers, FFN 7680, T5 text 4096 x 226 tokens,
                latent 13 x 16 x 60 x 90 (49 x 480 x 720 video) -> 13 x 30 x 45 = 17 550 video tokens

Small variants ("-small", run on any CPU) keep the architecture class, head dim, patch sizes, latent channels
and FFN ratio, and reduce exactly: layers -> 2, heads -> 2 (so dim = 2 x head dim), FFN scaled with dim,
text width 4096 -> 256 and text tokens -> 32, latent grid -> 4 x 16 x 16 (Wan: 4 x 8 x 8 = 256 video tokens;
CogVideoX: 4 x 8 x 8 = 256 video tokens + 32 text tokens).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from qvgen_kernels.errors import fail


@dataclass(frozen=True)
class ModelShape:
    """One benchmarked transformer: diffusers class name, constructor kwargs, latent grid and text length.

    latent: (frames, height, width) in latent units; blocks_attr: the ModuleList holding the blocks.
    """

    name: str
    arch: str  # "wan" or "cogvideox" (the qvgen.models adapter name)
    kwargs: dict
    latent: tuple[int, int, int]
    text_len: int
    blocks_attr: str

    @property
    def cls_name(self) -> str:
        return {"wan": "WanTransformer3DModel", "cogvideox": "CogVideoXTransformer3DModel"}[self.arch]

    def with_layers(self, num_layers: int) -> "ModelShape":
        """The same shape with ``num_layers`` blocks (the single-block scope uses 1)."""
        return dataclasses.replace(self, kwargs={**self.kwargs, "num_layers": num_layers})

    @property
    def video_tokens(self) -> int:
        f, h, w = self.latent
        patch = self.kwargs.get("patch_size", 2)
        ph = patch[1] if isinstance(patch, tuple) else patch
        return f * (h // ph) * (w // ph)


def _wan(name: str, heads: int, ffn: int, layers: int, text_dim: int, text_len: int,
         latent: tuple[int, int, int]) -> ModelShape:
    kwargs = dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128, in_channels=16,
                  out_channels=16, text_dim=text_dim, freq_dim=256, ffn_dim=ffn, num_layers=layers,
                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    return ModelShape(name, "wan", kwargs, latent, text_len, "blocks")


def _cog(name: str, heads: int, layers: int, text_dim: int, text_len: int,
         latent: tuple[int, int, int]) -> ModelShape:
    # CogVideoX's FFN is always 4 x dim (diffusers FeedForward default), so it has no FFN argument.
    f, h, w = latent
    kwargs = dict(num_attention_heads=heads, attention_head_dim=64, in_channels=16, out_channels=16,
                  time_embed_dim=512, text_embed_dim=text_dim, num_layers=layers, sample_width=w,
                  sample_height=h, sample_frames=(f - 1) * 4 + 1, patch_size=2, max_text_seq_length=text_len,
                  use_rotary_positional_embeddings=False)
    return ModelShape(name, "cogvideox", kwargs, latent, text_len, "transformer_blocks")


_SMALL_LATENT = (4, 16, 16)
SHAPES: dict[str, ModelShape] = {
    "wan-1.3b": _wan("wan-1.3b", 12, 8960, 30, 4096, 512, (21, 60, 104)),
    "wan-14b": _wan("wan-14b", 40, 13824, 40, 4096, 512, (21, 60, 104)),
    "cogvideox-2b": _cog("cogvideox-2b", 30, 30, 4096, 226, (13, 60, 90)),
    # FFN ratios kept: 8960 / 1536 = 5.83 -> 1472 at dim 256; 13824 / 5120 = 2.7 -> 704 at dim 256.
    "wan-1.3b-small": _wan("wan-1.3b-small", 2, 1472, 2, 256, 32, _SMALL_LATENT),
    "wan-14b-small": _wan("wan-14b-small", 2, 704, 2, 256, 32, _SMALL_LATENT),
    "cogvideox-2b-small": _cog("cogvideox-2b-small", 2, 2, 256, 32, _SMALL_LATENT),
}
FULL = ("wan-1.3b", "wan-14b", "cogvideox-2b")
SMALL = ("wan-1.3b-small", "wan-14b-small", "cogvideox-2b-small")


def get_shape(name: str) -> ModelShape:
    if name not in SHAPES:
        fail("get_shape", "name", f"one of {sorted(SHAPES)}", repr(name))
    return SHAPES[name]


def build_model(shape: ModelShape, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                seed: int = 0) -> nn.Module:
    """The transformer with seeded random weights created directly on ``device`` (meta: shapes only)."""
    import diffusers

    cls = getattr(diffusers, shape.cls_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = cls(**shape.kwargs)
    return model.to(dtype=dtype).eval()


def make_inputs(shape: ModelShape, model: nn.Module, batch: int, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(latents, timesteps [B], cond) on the model's device and dtype, drawn from ``seed``."""
    from qvgen.models.adapters import adapter_for

    adapter = adapter_for(model, shape.arch)
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(adapter.latent_shape(model, batch, *shape.latent), generator=g)
    t = torch.randint(1, 1000, (batch,), generator=g).float()
    cond = {k: v.to(p.device, p.dtype) for k, v in adapter.random_cond(model, batch, g, shape.text_len).items()}
    return lat.to(p.device, p.dtype), t.to(p.device), cond


def linear_shapes(model: nn.Module) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of every nn.Linear (works on the meta device)."""
    return [(n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


__all__ = ["FULL", "SHAPES", "SMALL", "ModelShape", "build_model", "get_shape", "linear_shapes", "make_inputs"]
