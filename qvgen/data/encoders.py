"""Per-pipeline latent and text encoding, exactly as each diffusers pipeline prepares its transformer input.

Latent normalisation (the stored latents are what the transformer sees at a denoising step with no noise):
- Wan (WanPipeline, AutoencoderKLWan): z = (mu - latents_mean) / latents_std, per channel, from the VAE config;
  layout [C, F, H, W] per sample (the pipeline decodes with z * latents_std + latents_mean).
- CogVideoX (CogVideoXPipeline, AutoencoderKLCogVideoX): z = mu * scaling_factor, permuted to [F, C, H, W]
  per sample (the transformer takes [B, F, C, H, W]; the pipeline decodes with z / scaling_factor).
mu is the mode of the VAE's latent distribution (deterministic, so a resumed precompute writes the same
bytes). Frames: Wan and CogVideoX VAEs compress time 4x and need 4k + 1 input frames (49 -> 13, 81 -> 21).

Text: the pipeline's tokenizer padded to max_sequence_length (Wan 512, CogVideoX 226) through its T5 encoder
(Wan: UMT5 with the attention mask; CogVideoX: T5 without one, as the pipelines call them); only the real
tokens' rows are stored (unpadded, [L_i, D]). Training pads them with zeros to max_sequence_length: Wan's
pipeline does exactly that; CogVideoX's feeds the pad tokens' encoder outputs instead, so zero padding there
is a (small) approximation of its text conditioning.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qvgen_kernels.errors import fail


class PipelineSpec:
    """How one pipeline family turns videos and prompts into transformer inputs."""

    name: str = ""
    pipelines: tuple[str, ...] = ()   # model_index.json _class_name values
    layout: str = "CFHW"              # stored latent layout, per sample
    max_sequence_length: int = 512
    text_mask: bool = True            # whether the text encoder is called with the attention mask
    normalization: str = ""

    def normalize(self, vae: nn.Module, mu: torch.Tensor) -> torch.Tensor:
        """VAE mode [B, C, F, H, W] -> the transformer's clean latents [B, *layout]."""
        raise NotImplementedError

    def spatial_scale(self, vae: nn.Module) -> int:
        """Pixels per latent row / column of the VAE."""
        raise NotImplementedError

    def check_vae(self, vae: nn.Module) -> None:
        """Refuse a VAE config whose normalisation would write non-finite latents."""

    @torch.no_grad()
    def encode_video(self, vae: nn.Module, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> normalised latents [B, *layout] (fp32)."""
        p = next(vae.parameters())
        mu = vae.encode(video.to(p.device, p.dtype)).latent_dist.mode().float()
        return self.normalize(vae, mu)

    @torch.no_grad()
    def encode_text(self, tokenizer, text_encoder: nn.Module, prompts: list[str],
                    max_sequence_length: int | None = None) -> list[torch.Tensor]:
        """Unpadded embeddings [L_i, D] (fp32) of each prompt."""
        n = max_sequence_length or self.max_sequence_length
        tok = tokenizer(prompts, padding="max_length", max_length=n, truncation=True, add_special_tokens=True,
                        return_attention_mask=True, return_tensors="pt")
        device = next(text_encoder.parameters()).device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        out = text_encoder(ids, attention_mask=mask) if self.text_mask else text_encoder(ids)
        hidden = out[0].float()
        lengths = mask.gt(0).sum(1).tolist()
        return [h[:max(1, m)].cpu() for h, m in zip(hidden, lengths)]


class WanSpec(PipelineSpec):
    name, pipelines, layout, max_sequence_length = "wan", ("WanPipeline", "WanImageToVideoPipeline"), "CFHW", 512
    text_mask = True
    normalization = "(mode - vae.config.latents_mean) / vae.config.latents_std, per channel; [C, F, H, W]"

    def spatial_scale(self, vae):
        return int(getattr(vae.config, "scale_factor_spatial", 8))

    def check_vae(self, vae):
        std = list(getattr(vae.config, "latents_std", None) or [])
        if not std or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in std):
            fail("qvgen precompute", "--pipeline", "a VAE whose config latents_std is finite and > 0 (latents "
                 "are divided by it)", std)

    def normalize(self, vae, mu):
        c = mu.shape[1]
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=mu.device).view(1, c, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=mu.device).view(1, c, 1, 1, 1)
        return (mu - mean) / std


class CogVideoXSpec(PipelineSpec):
    name, pipelines, layout, max_sequence_length = "cogvideox", ("CogVideoXPipeline",), "FCHW", 226
    text_mask = False
    normalization = "mode * vae.config.scaling_factor; [F, C, H, W]"

    def spatial_scale(self, vae):
        return 2 ** (len(vae.config.block_out_channels) - 1)

    def check_vae(self, vae):
        v = getattr(vae.config, "scaling_factor", None)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            fail("qvgen precompute", "--pipeline", "a VAE whose config scaling_factor is finite and > 0", v)

    def normalize(self, vae, mu):
        return (mu * float(vae.config.scaling_factor)).permute(0, 2, 1, 3, 4).contiguous()


SPECS: dict[str, PipelineSpec] = {s.name: s for s in (WanSpec(), CogVideoXSpec())}


def spec_for(kind: str | None = None, pipeline_class: str | None = None) -> PipelineSpec:
    """The spec named `kind`, else the one whose pipelines include `pipeline_class`."""
    if kind is not None:
        if kind not in SPECS:
            fail("qvgen precompute", "--kind", f"one of {sorted(SPECS)}", repr(kind))
        return SPECS[kind]
    for spec in SPECS.values():
        if pipeline_class in spec.pipelines:
            return spec
    known = sorted(p for s in SPECS.values() for p in s.pipelines)
    fail("qvgen precompute", "--pipeline", f"a pipeline folder whose model_index.json names one of {known} "
         f"(or pass --kind {'|'.join(sorted(SPECS))})", repr(pipeline_class))


__all__ = ["CogVideoXSpec", "PipelineSpec", "SPECS", "WanSpec", "spec_for"]
