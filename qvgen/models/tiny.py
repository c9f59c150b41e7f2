"""Tiny random-weight configs of the three diffusers video DiTs (the ones diffusers' own tests use).

They build offline in well under a second and run a forward on CPU, which is what the architecture
tests and CPU benchmarks need. Real models are loaded with ``from_pretrained(dir)`` by the CLI only.
"""

from __future__ import annotations

import torch
from torch import nn

from qvgen_kernels.errors import fail

# Constructor kwargs per architecture. CogVideoX needs heads * head_dim divisible by 16 (its sincos
# position embedding splits the width in 4 axes of even size), hence 2 x 8.
TINY_CONFIGS: dict[str, dict] = {
    "wan": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
    "cogvideox": dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
                      text_embed_dim=8, num_layers=2, sample_width=8, sample_height=8, sample_frames=8,
                      patch_size=2, patch_size_t=None, temporal_compression_ratio=4, max_text_seq_length=8),
    "hunyuan": dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
                    num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
                    text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
                    image_condition_type=None),
}

# Latent shapes (without the batch) in each model's own layout.
TINY_LATENTS: dict[str, tuple[int, ...]] = {
    "wan": (4, 2, 16, 16),        # C, F, H, W
    "cogvideox": (1, 4, 8, 8),    # F, C, H, W
    "hunyuan": (4, 1, 16, 16),    # C, F, H, W
}

ARCHS = tuple(TINY_CONFIGS)


def _check_arch(op: str, arch: object) -> str:
    if arch not in TINY_CONFIGS:
        fail(op, "arch", f"one of {ARCHS}", repr(arch))
    return arch


def tiny_model(arch: str, seed: int = 0) -> nn.Module:
    """A tiny fp32 model of architecture ``arch`` with seeded random weights, in eval mode."""
    _check_arch("tiny_model", arch)
    import diffusers

    cls = {"wan": diffusers.WanTransformer3DModel, "cogvideox": diffusers.CogVideoXTransformer3DModel,
           "hunyuan": diffusers.HunyuanVideoTransformer3DModel}[arch]
    # Fork the global RNG so building a model leaves the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**TINY_CONFIGS[arch])
    return model.eval()


def tiny_latents(arch: str, batch: int) -> tuple[int, ...]:
    """Latent shape ``(batch, ...)`` matching ``tiny_model(arch)``'s layout."""
    _check_arch("tiny_latents", arch)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        fail("tiny_latents", "batch", "a positive int", repr(batch))
    return (batch, *TINY_LATENTS[arch])
