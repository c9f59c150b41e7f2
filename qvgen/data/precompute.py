"""`qvgen precompute`: videos + prompts -> the pipeline's own VAE latents and text embeddings, as safetensors
shards + a manifest (see qvgen.data.shards for the layout, qvgen.data.encoders for the normalisation).

Shard k holds items [k * shard_size, (k + 1) * shard_size) of the input list in its order. A rerun with the
same settings skips every shard already written (their files are renamed into place whole) and refuses
different settings; the manifest is marked complete at the end, and training reads only complete ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.data.encoders import PipelineSpec, spec_for
from qvgen.data.shards import (FORMAT, LATENTS, NULL_FILE, TEXT, read_manifest, shard_name, write_manifest,
                          write_shard, write_tensors)
from qvgen.data.sources import Item, list_items
from qvgen.data.video import read_clip

OP = "qvgen precompute"


@dataclass(frozen=True)
class PrecomputeSettings:
    """What the latents depend on: a rerun must match them to resume."""

    kind: str
    frames: int
    height: int
    width: int
    fps: float | None
    max_sequence_length: int
    shard_size: int


def load_pipeline_parts(folder: str | Path, kind: str | None = None):
    """(spec, vae, tokenizer, text_encoder) from a diffusers pipeline folder (model_index.json + vae/,
    tokenizer/, text_encoder/ sub-folders), in fp32 on CPU, without downloads."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        fail(OP, "--pipeline", "a diffusers pipeline folder with model_index.json", str(folder))
    index = json.loads(index_path.read_text())
    spec = spec_for(kind, index.get("_class_name"))
    import diffusers
    import transformers

    def part(name: str, lib) -> nn.Module:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and hasattr(lib, str(entry[1]))):
            fail(OP, "--pipeline", f"model_index.json naming a {lib.__name__} class for '{name}'",
                 f"{entry!r} in {index_path}")
        extra = {"low_cpu_mem_usage": False} if lib is diffusers else {}  # no accelerate needed
        return getattr(lib, entry[1]).from_pretrained(str(folder / name), **extra).float().eval()

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    return spec, part("vae", diffusers), tokenizer, part("text_encoder", transformers)


def _check_settings(out: Path, settings: PrecomputeSettings) -> None:
    old = read_manifest(out, complete=False)
    if old is None:
        return
    diff = {k: (old["settings"].get(k), v) for k, v in asdict(settings).items() if old["settings"].get(k) != v}
    if diff:
        fail(OP, "options", f"the settings of the existing precompute in {out} (or another --out)",
             ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items()))


def _manifest(spec: PipelineSpec, settings: PrecomputeSettings, shards: list[dict], complete: bool,
              sample: dict | None, null: bool) -> dict:
    return {"format": FORMAT, "complete": complete, "kind": spec.name, "layout": spec.layout,
            "normalization": spec.normalization, "text_padding": "zeros to max_sequence_length at load",
            "max_sequence_length": settings.max_sequence_length, "settings": asdict(settings),
            "latent_shape": None if sample is None else list(sample[LATENTS].shape),
            "text_dim": None if sample is None else int(sample[TEXT].shape[-1]),
            "shards": shards, "null": null}


def _sources(items: list[Item]) -> list[dict]:
    return [{"video": str(it.video), "prompt": it.prompt} for it in items]


def precompute(items: list[Item], spec: PipelineSpec, vae: nn.Module, tokenizer, text_encoder: nn.Module,
               out: str | Path, settings: PrecomputeSettings, progress: bool = True) -> Path:
    """Encode `items` into shards under `out`; returns the manifest path. Resumes a partial run."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    old = read_manifest(out, complete=False)
    done = {s["file"]: s for s in old["shards"]} if old else {}
    size = settings.shard_size
    chunks = [items[k:k + size] for k in range(0, len(items), size)]
    shards, sample = [], None
    bar = tqdm(total=len(items), desc="precompute", unit="video", disable=not progress, dynamic_ncols=True)
    for k, chunk in enumerate(chunks):
        entry = {"file": shard_name(k), "samples": len(chunk), "sources": _sources(chunk)}
        if done.get(entry["file"]) == entry and (out / entry["file"]).is_file():
            shards.append(entry)  # written by an earlier run with these inputs
            bar.update(len(chunk))
            continue
        texts = spec.encode_text(tokenizer, text_encoder, [it.prompt for it in chunk],
                                 settings.max_sequence_length)
        samples = []
        for it, text in zip(chunk, texts):
            clip = read_clip(it.video, settings.frames, settings.height, settings.width, settings.fps)
            samples.append({LATENTS: spec.encode_video(vae, clip[None])[0].cpu(), TEXT: text})
            bar.update(1)
        write_shard(out / entry["file"], samples)
        shards.append(entry)
        sample = sample or samples[0]
        write_manifest(out, _manifest(spec, settings, shards, False, sample, False))
    bar.close()
    if sample is None:  # every shard was already there: shapes from the first one
        sample = _first_sample(out, shards[0]["file"])
    write_tensors(out / NULL_FILE, {TEXT: spec.encode_text(tokenizer, text_encoder, [""],
                                                           settings.max_sequence_length)[0]})
    write_manifest(out, _manifest(spec, settings, shards, True, sample, True))
    return out / "manifest.json"


def _first_sample(out: Path, file: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(out / file), framework="pt") as h:
        return {key: h.get_tensor(f"0.{key}") for key in (LATENTS, TEXT)}


def run_precompute(args) -> int:
    """The CLI command (see qvgen.apps.cli)."""
    source = args.videos or args.list
    items = list_items(source)
    spec, vae, tokenizer, text_encoder = load_pipeline_parts(args.pipeline, args.kind)
    if args.device != "cpu":
        from qvgen.distributed.devices import resolve_device

        device = resolve_device(args.device)
        vae, text_encoder = vae.to(device), text_encoder.to(device)
    settings = PrecomputeSettings(kind=spec.name, frames=args.frames, height=args.height, width=args.width,
                                  fps=args.fps, max_sequence_length=args.max_sequence_length or
                                  spec.max_sequence_length, shard_size=args.shard_size)
    path = precompute(items, spec, vae, tokenizer, text_encoder, args.out, settings, not args.no_progress)
    manifest = json.loads(path.read_text())
    print(f"[precompute] {sum(s['samples'] for s in manifest['shards'])} videos -> {len(manifest['shards'])} "
          f"shards in {args.out}; latents {manifest['latent_shape']} ({spec.name}, {spec.layout}), text dim "
          f"{manifest['text_dim']}")
    return 0


__all__ = ["PrecomputeSettings", "load_pipeline_parts", "precompute", "run_precompute"]
