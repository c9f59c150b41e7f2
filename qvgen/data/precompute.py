"""`qvgen precompute`: videos + prompts -> the pipeline's own VAE latents and text embeddings, as safetensors
shards + a manifest (see qvgen.data.shards for the layout, qvgen.data.encoders for the normalisation).

Shard k holds items [k * shard_size, (k + 1) * shard_size) of the input list in its order. What a shard
depends on is recorded: the pipeline's identity (the hash of its model_index.json and of every file of its
vae / text_encoder / tokenizer folders), the sampling settings, and each video's content hash and prompt.
A rerun refuses another pipeline or other settings, and skips a shard only when its inputs are unchanged and
its file still has the recorded hash; otherwise that shard is recomputed. Settings are validated before
anything is decoded. With skip_bad, unreadable or too-short videos are left out and listed in the manifest
and in skipped.json. The manifest is marked complete at the end, and training reads only complete ones.
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
from qvgen.progress import Progress
from qvgen.storage.integrity import file_digest, json_digest, write_text_durably

OP = "qvgen precompute"
SKIPPED = "skipped.json"  # the videos --skip-bad left out, with the reason


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
    pipeline: str = ""  # the pipeline's identity (pipeline_identity)


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
        try:
            return getattr(lib, entry[1]).from_pretrained(str(folder / name), **extra).float().eval()
        except (TypeError, ValueError, KeyError, AttributeError, OSError, RuntimeError) as e:
            # a class swapped in model_index.json meets the other component's config or weights
            fail(OP, "--pipeline", f"'{name}' loadable as the {entry[1]} that model_index.json names",
                 f"{type(e).__name__}: {str(e)[:200]} ({folder / name})")

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    return spec, part("vae", diffusers), tokenizer, part("text_encoder", transformers)


def pipeline_identity(folder: str | Path) -> str:
    """The hash of what the latents and embeddings depend on: model_index.json and every file of the vae,
    text_encoder and tokenizer folders (configs and weights), by relative path."""
    folder = Path(folder)
    files = [folder / "model_index.json"] + sorted(f for part in ("vae", "text_encoder", "tokenizer")
                                                   for f in (folder / part).rglob("*") if f.is_file())
    return json_digest({str(f.relative_to(folder).as_posix()): file_digest(f) for f in files})


def validate_settings(settings: PrecomputeSettings, spec: PipelineSpec, vae: nn.Module, patch: int = 2) -> None:
    """Refuse settings that would write wrong data, before any video is decoded."""
    import math

    if settings.frames < 1 or (settings.frames - 1) % 4:
        fail(OP, "--frames", "4k + 1 frames (the VAE compresses time 4x: 9, 17, ..., 49, 81)", settings.frames)
    unit = spec.spatial_scale(vae) * patch
    for name in ("height", "width"):
        value = getattr(settings, name)
        if value < unit or value % unit:
            fail(OP, f"--{name}", f"a multiple of {unit} (VAE scale {unit // patch} x patch size {patch})", value)
    if settings.fps is not None and not (math.isfinite(settings.fps) and settings.fps > 0):
        fail(OP, "--fps", "a finite frame rate > 0", settings.fps)
    if settings.max_sequence_length < 1:
        fail(OP, "--max-sequence-length", "an int >= 1", settings.max_sequence_length)
    spec.check_vae(vae)


def _patch_size(folder: Path) -> int:
    """The transformer's spatial patch size when the pipeline folder has one (Wan [1, 2, 2]; CogVideoX 2)."""
    config = folder / "transformer" / "config.json"
    patch = json.loads(config.read_text()).get("patch_size", 2) if config.is_file() else 2
    patch = patch[-1] if isinstance(patch, list) and patch else patch
    return patch if isinstance(patch, int) and patch > 0 else 2


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


def _source(item: Item, skip_bad: bool) -> tuple[dict, str | None]:
    """The record of one input (its content hash included), and why it cannot be used (skip_bad only)."""
    try:
        digest = file_digest(item.video)
    except OSError as e:
        if not skip_bad:
            fail(OP, "video", "a readable video file", f"{item.video} ({e})")
        return {"video": str(item.video), "prompt": item.prompt, "sha256": None}, f"{type(e).__name__}: {e}"
    return {"video": str(item.video), "prompt": item.prompt, "sha256": digest}, None


def _reusable(old: dict | None, entry: dict, out: Path) -> bool:
    """A shard written earlier from exactly these inputs whose file is intact."""
    if not old or old.get("sources") != entry["sources"] or not (out / entry["file"]).is_file():
        return False
    return old.get("sha256") == file_digest(out / entry["file"])


def precompute(items: list[Item], spec: PipelineSpec, vae: nn.Module, tokenizer, text_encoder: nn.Module,
               out: str | Path, settings: PrecomputeSettings, progress: bool = True, skip_bad: bool = False,
               patch: int = 2) -> Path:
    """Encode `items` into shards under `out`; returns the manifest path. Resumes a partial run (see the
    module docstring)."""
    validate_settings(settings, spec, vae, patch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    old = read_manifest(out, complete=False)
    done = {s.get("file"): s for s in old["shards"]} if old else {}
    size = settings.shard_size
    chunks = [items[k:k + size] for k in range(0, len(items), size)]
    shards, sample, skipped = [], None, []
    # A bar on a terminal, a line at least every 30 s and per shard written otherwise (a log file, a CI job).
    bar = Progress(len(items), "precompute", unit="video", enabled=progress)
    for k, chunk in enumerate(chunks):
        sources = [_source(it, skip_bad) for it in chunk]
        entry = {"file": shard_name(k), "sources": [src for src, _ in sources]}
        if _reusable(done.get(entry["file"]), entry, out):
            shards.append(done[entry["file"]])  # written by an earlier run from these inputs, intact
            skipped += done[entry["file"]].get("skipped", [])
            bar.update(len(chunk))
            continue
        texts = spec.encode_text(tokenizer, text_encoder, [it.prompt for it in chunk],
                                 settings.max_sequence_length)
        samples, bad = [], [{"video": src["video"], "reason": why} for src, why in sources if why]
        for it, text, (src, why) in zip(chunk, texts, sources):
            if why:
                bar.update(1)
                continue
            try:
                clip = read_clip(it.video, settings.frames, settings.height, settings.width, settings.fps)
            except ValueError as e:
                if not skip_bad:
                    raise
                bad.append({"video": src["video"], "reason": str(e)})
                bar.update(1)
                continue
            samples.append({LATENTS: spec.encode_video(vae, clip[None])[0].cpu(), TEXT: text})
            bar.update(1)  # after the encoding: the time left is counted from finished videos
        write_shard(out / entry["file"], samples)
        bar.phase(f"shard {k + 1}/{len(chunks)} written ({len(samples)} videos)")
        entry.update(samples=len(samples), skipped=bad, sha256=file_digest(out / entry["file"]))
        shards.append(entry)
        skipped += bad
        sample = sample or (samples[0] if samples else None)
        write_manifest(out, _manifest(spec, settings, shards, False, sample, False))
    bar.close()
    if sample is None:  # every shard was already there: shapes from the first one holding a sample
        first = next((s["file"] for s in shards if s["samples"]), None)
        if first is None:
            fail(OP, "--videos/--list", "at least one usable video", f"none of {len(items)} (see the skipped "
                 "list)" if skip_bad else "none")
        sample = _first_sample(out, first)
    null = {TEXT: spec.encode_text(tokenizer, text_encoder, [""], settings.max_sequence_length)[0]}
    write_tensors(out / NULL_FILE, null)
    manifest = _manifest(spec, settings, shards, True, sample, True)
    manifest["null_sha256"] = file_digest(out / NULL_FILE)
    write_text_durably(out / SKIPPED, json.dumps(skipped, indent=1))
    write_manifest(out, manifest)
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
                                  spec.max_sequence_length, shard_size=args.shard_size,
                                  pipeline=pipeline_identity(args.pipeline))
    path = precompute(items, spec, vae, tokenizer, text_encoder, args.out, settings, not args.no_progress,
                      skip_bad=getattr(args, "skip_bad", False), patch=_patch_size(Path(args.pipeline)))
    manifest = json.loads(path.read_text())
    bad = sum(len(s.get("skipped", [])) for s in manifest["shards"])
    if bad:
        print(f"[precompute] {bad} videos skipped (unreadable or too short), listed in {Path(args.out) / SKIPPED}")
    print(f"[precompute] {sum(s['samples'] for s in manifest['shards'])} videos -> {len(manifest['shards'])} "
          f"shards in {args.out}; latents {manifest['latent_shape']} ({spec.name}, {spec.layout}), text dim "
          f"{manifest['text_dim']}")
    return 0


__all__ = ["PrecomputeSettings", "load_pipeline_parts", "pipeline_identity", "precompute", "run_precompute",
           "validate_settings"]
