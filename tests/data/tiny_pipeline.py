"""Tiny offline pipeline parts for the data tests: mp4 clips (PyAV), a word-level tokenizer, a tiny T5/UMT5
text encoder, a tiny Wan / CogVideoX VAE, saved as a diffusers pipeline folder; and a tiny Wan transformer
whose input matches the Wan parts (4 latent channels, 16-d text)."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

WORDS = "a red green blue square circle moving left right up down fast slow on black".split()
TEXT_DIM, Z_DIM = 16, 4


def make_clips(folder: Path, n: int, frames: int = 12, size: tuple[int, int] = (40, 56), fps: int = 8,
               captions: bool = True) -> list[Path]:
    """n moving-square mp4 clips (+ a .txt caption each)."""
    from qvgen.data.video import write_clip

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        video = torch.zeros(frames, *size, 3, dtype=torch.uint8)
        for f in range(frames):
            x = (4 * f + 7 * i) % (size[1] - 8)
            video[f, 10:18, x:x + 8, i % 3] = 255
        path = folder / f"clip{i:02d}.mp4"
        write_clip(path, video, fps=fps)
        if captions:
            path.with_suffix(".txt").write_text(f"a {WORDS[1 + i % 3]} square moving {'left right'.split()[i % 2]}")
        paths.append(path)
    return paths


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _parts(kind: str):
    import diffusers
    import transformers

    n_vocab = len(WORDS) + 3
    if kind == "wan":
        vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                         temperal_downsample=[False, True, True],
                                         latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
        te = transformers.UMT5EncoderModel(transformers.UMT5Config(
            vocab_size=n_vocab, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8))
        names = ("WanPipeline", "AutoencoderKLWan", "UMT5EncoderModel")
    else:
        vae = diffusers.AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=Z_DIM,
                                               layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
        te = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=n_vocab, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8))
        names = ("CogVideoXPipeline", "AutoencoderKLCogVideoX", "T5EncoderModel")
    return vae.eval(), te.eval(), names


def make_pipeline(folder: Path, kind: str) -> Path:
    """A diffusers-style pipeline folder with seeded random tiny parts."""
    torch.manual_seed(0)
    vae, te, (pipe, vae_cls, te_cls) = _parts(kind)
    vae.save_pretrained(folder / "vae")
    te.save_pretrained(folder / "text_encoder")
    _tokenizer().save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": pipe, "vae": ["diffusers", vae_cls], "text_encoder": ["transformers", te_cls],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"]}))
    return folder


def make_wan_transformer(folder: Path) -> Path:
    import diffusers

    torch.manual_seed(1)
    diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=Z_DIM, out_channels=Z_DIM,
        text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32).save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=None)
def _built() -> dict[str, Path]:
    root = Path(tempfile.mkdtemp(prefix="qvgen-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    return {"clips": root / "clips", "paths": make_clips(root / "clips", 5), "wan": make_pipeline(root / "wan", "wan"),
            "cogvideox": make_pipeline(root / "cog", "cogvideox"), "dit": make_wan_transformer(root / "dit"),
            "root": root}


@pytest.fixture(scope="session")
def tiny() -> dict[str, Path]:
    """Tiny pipelines, clips and a Wan transformer, built once per process (import this fixture into a test
    module; a conftest.py here would shadow the other test folders' `conftest` imports)."""
    return _built()
