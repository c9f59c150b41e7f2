"""`qvgen generate`: a diffusers pipeline with a quantized transformer, prompts -> mp4 (H.264) + GIF + PNG strip.

The pipeline folder holds the FP components (or a whole saved quantized pipeline); `--transformer` names a
quantized transformer folder (`save_pretrained` / `save_quantized`) that replaces the pipeline's own. With
`--compare-fp` the same prompts and seed also run through the FP transformer (the pipeline's own, or
`--fp-transformer`), its clips are written beside the quantized ones and PSNR / SSIM between them printed.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from qvgen_kernels.errors import fail

from qvgen.artifact.io import META_NAME
from qvgen.progress import Progress, interactive
from qvgen.storage.paths import read_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class GenerateConfig:
    pipeline: Path
    prompts: list[str]
    out: Path
    transformer: Path | None = None
    fp_transformer: Path | None = None
    compare_fp: bool = False
    negative_prompt: str | None = None
    seed: int = 0
    steps: int = 30
    guidance: float = 5.0
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    fps: int = 16
    max_sequence_length: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    progress: bool = True
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def load_transformer(path: str | Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A transformer folder: a quantized one (qvgen.json) through its qvgen class, an FP one through the
    diffusers class its config.json names."""
    import diffusers

    from qvgen.artifact.pretrained import PREFIX, lookup

    path = Path(path)
    if (path / META_NAME).is_file():
        name = str(read_json(path / META_NAME, "load_transformer").get("model_class", "")).rpartition(".")[2]
        cls = lookup(name if name.startswith(PREFIX) else PREFIX + name)
    else:
        name = read_json(path / "config.json", "load_transformer").get("_class_name", "")
        cls = getattr(diffusers, str(name), None)
        if not isinstance(cls, type) or not issubclass(cls, diffusers.ModelMixin):
            fail("load_transformer", str(path / "config.json"), "_class_name naming a diffusers model class",
                 repr(name))
    return cls.from_pretrained(path, dtype=dtype)


def load_pipeline(folder: Path, transformer: torch.nn.Module | None, dtype: torch.dtype, device: str) -> Any:
    import diffusers

    # The pipeline's own class: DiffusionPipeline.from_pretrained drops components passed as keywords.
    name = read_json(Path(folder) / "model_index.json", "load_pipeline").get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if not isinstance(cls, type) or not issubclass(cls, diffusers.DiffusionPipeline):
        fail("load_pipeline", str(Path(folder) / "model_index.json"), "_class_name naming a diffusers pipeline",
             repr(name))
    kwargs = {} if transformer is None else {"transformer": transformer}
    return cls.from_pretrained(folder, dtype=dtype, **kwargs).to(device)


def _is_quantized(model: torch.nn.Module) -> bool:
    from qvgen.quant.swap import iter_qlinears
    return next(iter_qlinears(model), None) is not None


def _call_args(cfg: GenerateConfig) -> dict[str, Any]:
    args = {"num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance, "output_type": "pt",
            "height": cfg.height, "width": cfg.width, "num_frames": cfg.frames,
            "max_sequence_length": cfg.max_sequence_length, "negative_prompt": cfg.negative_prompt, **cfg.extra}
    return {k: v for k, v in args.items() if v is not None}


def run_prompts(pipe: Any, cfg: GenerateConfig, label: str) -> list[torch.Tensor]:
    """One clip per prompt, [F, 3, H, W] in [0, 1], each from a generator seeded with cfg.seed."""
    clips, n, tty = [], len(cfg.prompts), interactive()
    # Off a terminal diffusers' bars are off and one Progress over every denoising step of every clip logs a
    # line at least every 30 s and per clip, fed by the pipeline's step callback where it has one.
    lines = Progress(n * cfg.steps, f"generate {label}", enabled=cfg.progress and not tty)
    hook = lines.lines and "callback_on_step_end" in inspect.signature(pipe.__call__).parameters \
        and "callback_on_step_end" not in cfg.extra
    for i, prompt in enumerate(tqdm(cfg.prompts, desc=f"{label} clips", disable=not cfg.progress or not tty
                                    or n == 1)):
        generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
        pipe.set_progress_bar_config(disable=not cfg.progress or not tty, desc=f"{label} denoising")
        kwargs = _call_args(cfg)
        if hook:
            def step_end(_pipe, _step, _t, tensors, clip=f"{i + 1}/{n}"):
                lines.update(1, clip=clip)
                return tensors

            kwargs["callback_on_step_end"] = step_end
        frames = pipe(prompt, generator=generator, **kwargs).frames
        clips.append(frames[0].float().cpu())
        if lines.lines and not hook:
            lines.update(cfg.steps, clip=f"{i + 1}/{n}")
        lines.phase(f"clip {i + 1}/{n} done")
    lines.close()
    return clips


MP4_CODEC = "libx264"  # H.264, which browsers play (MPEG-4 Part 2 they do not)


def _encode(path: Path, frames: torch.Tensor, codec: str, pix_fmt: str, fps: int,
            options: dict[str, str] | None = None) -> None:
    """uint8 frames [F, H, W, 3] -> one file through PyAV (H.264 mp4, gif, or png for one frame)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.numpy(), format="rgb24")))
        container.mux(stream.encode())


def write_outputs(stem: Path, clip: torch.Tensor, fps: int) -> list[Path]:
    """clip [F, 3, H, W] in [0, 1] -> stem.mp4, stem.gif and stem.png (the frames side by side)."""
    frames = (clip.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # yuv420p needs even sizes
    strip = torch.cat(list(frames), dim=1)[None]
    paths = [stem.with_suffix(s) for s in (".mp4", ".gif", ".png")]
    # yuv420p and +faststart: the profile and layout browsers and players expect of a web mp4.
    _encode(paths[0], frames, MP4_CODEC, "yuv420p", fps, {"crf": "18", "movflags": "+faststart"})
    _encode(paths[1], frames, "gif", "rgb8", fps)
    _encode(paths[2], strip, "png", "rgb24", fps)
    return paths


def _slug(i: int, prompt: str) -> str:
    return f"{i:02d}_" + (re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "clip")


def _refuse_overwrite(cfg: GenerateConfig) -> None:
    """Clips of an earlier run in cfg.out are replaced only with overwrite (checked before any work)."""
    names = ["summary.json"] + [_slug(i, p) + suffix for i, p in enumerate(cfg.prompts)
                                for suffix in (".mp4", ".gif", ".png", "_fp.mp4", "_fp.gif", "_fp.png")]
    found = [n for n in names if (cfg.out / n).exists()]
    if found and not cfg.overwrite:
        fail("qvgen generate", "--out", "a folder without an earlier run's clips (or pass --overwrite)",
             f"{cfg.out} holds {', '.join(found[:3])}{' ...' if len(found) > 3 else ''}")


def generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Run the quantized pipeline (and with compare_fp the FP one); write the clips; return a summary that
    is also written to out/summary.json. An earlier run's clips in cfg.out are replaced only with overwrite."""
    from qvgen.apps.demo.metrics import psnr, ssim

    if not math.isfinite(cfg.guidance):
        fail("qvgen generate", "--guidance", "a finite guidance scale", cfg.guidance)
    _refuse_overwrite(cfg)
    dtype = DTYPES[cfg.dtype]
    quantized = None if cfg.transformer is None else load_transformer(cfg.transformer, dtype)
    pipe = load_pipeline(cfg.pipeline, quantized, dtype, cfg.device)
    if not _is_quantized(pipe.transformer):
        fail("qvgen generate", "--transformer", f"a quantized transformer folder (the pipeline at {cfg.pipeline} "
             "has an FP one)", cfg.transformer)
    cfg.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"clips": []}
    q_clips = run_prompts(pipe, cfg, "quantized")
    fp_clips = None
    if cfg.compare_fp:
        fp = load_transformer(cfg.fp_transformer, dtype) if cfg.fp_transformer else None
        if fp is None:
            if quantized is None:
                fail("qvgen generate", "--fp-transformer", "an FP transformer folder to compare with (the "
                     "pipeline's own transformer is the quantized one)", None)
            del pipe
            fp_pipe = load_pipeline(cfg.pipeline, None, dtype, cfg.device)
        else:
            fp_pipe = load_pipeline(cfg.pipeline, fp, dtype, cfg.device)
        if _is_quantized(fp_pipe.transformer):
            fail("qvgen generate", "--fp-transformer", "an FP transformer", "a quantized one")
        fp_clips = run_prompts(fp_pipe, cfg, "fp")
    for i, (prompt, clip) in enumerate(zip(cfg.prompts, q_clips)):
        stem = cfg.out / _slug(i, prompt)
        entry: dict[str, Any] = {"prompt": prompt, "files": [str(p) for p in write_outputs(stem, clip, cfg.fps)]}
        if fp_clips is not None:
            fp_stem = stem.with_name(stem.name + "_fp")
            entry["fp_files"] = [str(p) for p in write_outputs(fp_stem, fp_clips[i], cfg.fps)]
            entry["psnr"] = psnr(clip, fp_clips[i], data_range=1.0)
            entry["ssim"] = ssim(clip, fp_clips[i], data_range=1.0)
        summary["clips"].append(entry)
    if fp_clips is not None:
        both = torch.stack(q_clips), torch.stack(fp_clips)
        summary["psnr"], summary["ssim"] = psnr(*both, data_range=1.0), ssim(*both, data_range=1.0)
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = ["DTYPES", "GenerateConfig", "generate", "load_pipeline", "load_transformer", "write_outputs"]
