"""Complete tiny Wan and CogVideoX pipelines for the diffusers-integration tests: the data tests' tiny VAE,
text encoder and tokenizer (tests/data/tiny_pipeline.py) plus a scheduler and a tiny transformer, built from
configs (no downloads)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from tiny_pipeline import TEXT_DIM, Z_DIM, make_pipeline  # noqa: E402

import qvgen  # noqa: E402

# Call arguments giving a 5-frame clip (2 latent frames) in a few steps; the prompt uses the tokenizer's words.
CALL = {"wan": dict(height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=3.0),
        "cogvideox": dict(height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=3.0,
                          max_sequence_length=8)}
PROMPT = "a red square moving left"


def transformer(kind: str) -> torch.nn.Module:
    import diffusers

    torch.manual_seed(2)
    if kind == "wan":
        return diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=Z_DIM,
            out_channels=Z_DIM, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=Z_DIM, out_channels=Z_DIM, time_embed_dim=16,
        text_embed_dim=TEXT_DIM, num_layers=2, sample_width=4, sample_height=4, sample_frames=5, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8).eval()


def scheduler(kind: str):
    import diffusers

    if kind == "wan":
        return diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 flow_shift=3.0)
    return diffusers.CogVideoXDDIMScheduler(timestep_spacing="trailing")


def fp_pipeline_dir(folder: Path, kind: str) -> Path:
    """A complete FP pipeline folder (model_index.json lists every component)."""
    import diffusers

    make_pipeline(folder, kind)
    pipe_cls = {"wan": diffusers.WanPipeline, "cogvideox": diffusers.CogVideoXPipeline}[kind]
    pipe = pipe_cls.from_pretrained(folder, transformer=transformer(kind), scheduler=scheduler(kind))
    pipe.save_pretrained(folder)
    return folder


def quantize(model: torch.nn.Module, preset: str = "w4a8") -> torch.nn.Module:
    """W4A8 (W4A4 on tiny random models is mostly noise), Phi removed, deployed."""
    model = qvgen.quantize_model(model, qvgen.QuantConfig.preset(preset, rank=0))
    return qvgen.to_deploy(model)


def aligned(model: torch.nn.Module) -> torch.nn.Module:
    """model with every parameter copied to fresh (64-byte aligned) memory. diffusers' mmap loading leaves FP
    layers at the file's 8-byte aligned offsets and a CPU GEMM rounds differently there, so a comparison
    with a model whose tensors were moved, copied or loaded by qvgen (aligned) starts from aligned tensors."""
    for p in model.parameters():
        p.data = p.data.clone()
    return model


def lora_training_losses(model: torch.nn.Module, args: dict, steps: int = 4) -> list[float]:
    """PEFT LoRA (rank 4, attention projections) on `model`, `steps` SGD steps toward a zero output; every LoRA
    parameter must get a gradient at every step. Returns the losses."""
    import peft

    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                      target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)
    opt = torch.optim.SGD(lora, lr=0.05)
    target = torch.zeros_like(model(**args)[0])
    losses = []
    for _ in range(steps):
        loss = (model(**args)[0] - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in lora)
        opt.step()
        losses.append(float(loss.detach()))
    return losses
