"""Command line: ``qvgen demo`` (the self-contained main job), ``qvgen precompute`` (videos + prompts ->
latent shards) and ``qvgen train`` (a real diffusers model; one process or torchrun).

    qvgen demo [--fast] [--out runs/demo] [--bits w4a4|w3a3] [--steps N] [--seed S] [--device cuda|cpu]
    qvgen precompute --pipeline DIR (--videos DIR | --list FILE) --out SHARDS [--frames 49 --fps 16] ...
    qvgen train --model DIR [--preset w4a4] [--steps N] [--out DIR] [--data SHARDS|FILE] [--arch NAME] ...
    qvgen generate --pipeline DIR [--transformer QDIR] --prompt TEXT [--compare-fp] [--out DIR] ...
    torchrun --nproc_per_node N -m qvgen train ... [--parallel fsdp|ddp]

``python -m qvgen ...`` is the same program.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence


from qvgen.quant.rank_decay import DEFAULT_DECAY_END
from qvgen_kernels.errors import fail

from qvgen.models.adapters import ADAPTERS
from qvgen.storage.paths import inside, read_json
from qvgen.train.resume_check import OVERRIDABLE

PRESETS = ("w4a4", "w3a3", "w4a8", "w8a8", "w4a16")


def _positive_int(text: str, minimum: int = 1) -> int:
    value = int(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    return _positive_int(text, minimum=0)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="train a tiny video DiT on sprite clips, quantize it with QVGen, compare with PTQ",
        description="Offline end-to-end demo: a tiny Wan-architecture FP teacher on procedural moving-sprite "
                    "clips (trained once, then cached), a round-to-nearest PTQ baseline, QVGen QAT with Phi "
                    "decayed to rank 0, packed deployment, and a report (report.md + PNGs) comparing both "
                    "quantized models with the FP teacher.")
    p.add_argument("--fast", action="store_true", help="smoke-test sizes (well under a minute; numbers not "
                                                       "meaningful)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--bits", choices=("w4a4", "w3a3"), default="w4a4", help="bit setting (default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, help="QVGen distillation steps (default 600; --fast: 4)")
    p.add_argument("--rank", type=_positive_int, help="initial Phi rank, a power of two (default 16; --fast: 2)")
    p.add_argument("--teacher-steps", type=_positive_int, help="FP teacher training steps (default: the shipped teacher's; "
                   "another value trains and caches a new one)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto = cuda when available (default)")
    p.add_argument("--cache-dir", help="teacher cache root (default: $QVGEN_CACHE or ~/.cache/qvgen)")
    p.add_argument("--retrain-teacher", action="store_true", help="rebuild the cached FP teacher")
    p.add_argument("--qat-baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also distil LSQ QAT (QVGen without Phi, same seed and steps) so the verdict says whether "
                        "Phi paid off (default: on; --no-qat-baseline halves the training time)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default 0: the cores the load average leaves free; OMP_NUM_THREADS wins)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, nor progress lines off a terminal")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from qvgen.apps.demo.pipeline import DemoConfig, run_demo

    opts = {"out": args.out, "bits": args.bits, "seed": args.seed, "device": args.device,
            "cache_dir": args.cache_dir, "retrain_teacher": args.retrain_teacher, "qat_baseline": args.qat_baseline,
            "threads": args.threads, "progress": not args.no_progress}
    for name in ("steps", "rank", "teacher_steps"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    cfg = DemoConfig.fast(**opts) if args.fast else DemoConfig(**opts)
    run_demo(cfg)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="QVGen QAT of a diffusers video transformer directory",
        description="Load a diffusers transformer directory (the class named by its config.json _class_name), "
                    "quantize it, distil it from a frozen copy of itself with rank decay to 0, deploy it (packed "
                    "weights, no Phi) and save it with save_quantized into --out/quantized. Without --data the "
                    "batches are random latents and random conditioning of the model's shapes.")
    p.add_argument("--model", required=True, help="diffusers model directory (config.json + weights), or a "
                                                  "pipeline folder with --subfolder")
    p.add_argument("--subfolder", help="the model's folder inside --model (e.g. transformer), as in diffusers' "
                                       "from_pretrained")
    p.add_argument("--preset", choices=PRESETS, default="w4a4", help="bit setting (default: %(default)s)")
    p.add_argument("--rank", type=int, default=32, help="initial Phi rank, 0 or a power of two (default: 32)")
    p.add_argument("--steps", type=_positive_int, default=2000, help="distillation steps (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="global batch size: under torchrun it is split evenly across the processes (so it must be "
                        "a multiple of their number) and the logged loss is its mean over the global batch "
                        "(default: %(default)s)")
    p.add_argument("--lr", type=float, default=3e-5, help="learning rate (default: %(default)s)")
    p.add_argument("--decay-end", type=float, default=DEFAULT_DECAY_END,
                   help="fraction of training by whose end Phi is gone; 1.0 = the paper's schedule "
                        "(default: %(default)s, from benchmarks/results/quality.md)")
    p.add_argument("--out", default="runs/train", help="output folder (default: %(default)s)")
    p.add_argument("--data", help="a shard folder written by qvgen precompute (streamed, shuffled per epoch, split "
                                  "by rank), or a .pt / .safetensors file with 'latents' [N, ...] and "
                                  "conditioning tensors [N, ...] (e.g. 'encoder_hidden_states')")
    p.add_argument("--latent-shape", type=_positive_int, nargs=3, default=(2, 16, 16), metavar=("F", "H", "W"),
                   help="synthetic latent frames/height/width without --data (default: 2 16 16)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--ckpt-every", type=_non_negative_int, default=200,
                   help="write a resumable checkpoint every N steps, 0: only at the end (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint under OUT/train (same settings, see --resume-override)")
    p.add_argument("--resume-override", action="append", default=[], choices=OVERRIDABLE, metavar="FIELD",
                   help="with --resume: let FIELD (lr, weight_decay, ...) differ from the checkpoint's, from then on")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in a non-empty --out (its train/ and quantized/); without it or --resume "
                        "a non-empty --out is refused")
    p.add_argument("--collective-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="under torchrun: the longest any rank waits for the others before the job ends with an "
                        "error (default: %(default)s)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the student's block activations in backward (less memory, slower)")
    p.add_argument("--arch", choices=sorted(ADAPTERS), help="adapter (calling convention) of the model; default: "
                   "chosen from its class ('diffusers': any diffusers video transformer taking "
                   "hidden_states [B, C, F, H, W], timestep, **cond and predicting a flow velocity)")
    p.add_argument("--teacher-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="dtype of the frozen FP teacher (bf16 halves its memory; default: %(default)s)")
    p.add_argument("--parallel", choices=("auto", "none", "ddp", "fsdp"), default="auto",
                   help="under torchrun: fsdp (FSDP2 per transformer block, teacher sharded too) or ddp; auto: "
                        "fsdp with more than one process, none otherwise (default: %(default)s)")
    p.add_argument("--mixed-precision", choices=("auto", "bf16", "off"), default="auto",
                   help="FSDP2 compute dtype: bf16 (fp32 masters and gradient reduction), off, or auto = bf16 "
                        "on CUDA (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, nor progress lines off a terminal")
    p.set_defaults(func=_run_train)


def _add_precompute(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "precompute", help="videos + prompts -> the pipeline's VAE latents and text embeddings (shards)",
        description="Decode each video (PyAV), sample --frames frames at --fps, resize-crop to --height x --width, "
                    "encode with the pipeline's own VAE (normalised as its transformer expects) and the prompt with "
                    "its text encoder (unpadded), and write safetensors shards + manifest.json to --out. A rerun "
                    "skips the shards already written. qvgen train --data OUT streams them.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="a folder of videos (prompt: a same-named .txt next to each, else empty)")
    src.add_argument("--list", help="a .csv or .jsonl with a video column (video|path|file) and a prompt column "
                                    "(prompt|caption|text); paths relative to the list's folder")
    p.add_argument("--pipeline", required=True, help="diffusers pipeline folder (model_index.json, vae/, "
                                                     "text_encoder/, tokenizer/)")
    p.add_argument("--kind", help="pipeline family (wan, cogvideox); default: from model_index.json")
    p.add_argument("--out", required=True, help="output shard folder")
    p.add_argument("--frames", type=_positive_int, default=49, help="frames per clip, 4k+1 (default: %(default)s)")
    p.add_argument("--height", type=_positive_int, default=480, help="height in pixels (default: %(default)s)")
    p.add_argument("--width", type=_positive_int, default=832, help="width in pixels (default: %(default)s)")
    p.add_argument("--fps", type=float, help="sampling rate of the clip's frames (default: every source frame)")
    p.add_argument("--shard-size", type=_positive_int, default=64, help="videos per shard (default: %(default)s)")
    p.add_argument("--max-sequence-length", type=_positive_int,
                   help="text tokens (default: the pipeline's, Wan 512, CogVideoX 226)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto = cuda when available (default)")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable or too-short videos (listed in "
                                                           "OUT/skipped.json) instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, nor progress lines off a terminal")
    p.set_defaults(func=_run_precompute)


def _run_precompute(args: argparse.Namespace) -> int:
    from qvgen.data.precompute import run_precompute

    return run_precompute(args)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="generate clips with a quantized transformer in its diffusers pipeline",
        description="Load a diffusers pipeline folder (FP components, or a saved quantized pipeline), put the "
                    "quantized transformer in it, and write one mp4 + GIF + PNG strip per prompt. --compare-fp "
                    "also runs the FP transformer with the same seed and prints PSNR / SSIM against it.")
    p.add_argument("--pipeline", required=True, help="diffusers pipeline folder (model_index.json)")
    p.add_argument("--transformer", help="quantized transformer folder (default: the pipeline's own)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", help="a text file with one prompt per line")
    p.add_argument("--negative-prompt")
    p.add_argument("--out", default="runs/generate", help="output folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the clips of an earlier run in --out")
    p.add_argument("--compare-fp", action="store_true", help="also run the FP transformer; print PSNR / SSIM")
    p.add_argument("--fp-transformer", help="FP transformer folder for --compare-fp (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="generator seed of every clip (default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=30, help="denoising steps (default: %(default)s)")
    p.add_argument("--guidance", type=_finite_float, default=5.0, help="guidance scale (default: %(default)s)")
    p.add_argument("--height", type=_positive_int)
    p.add_argument("--width", type=_positive_int)
    p.add_argument("--frames", type=_positive_int, help="number of frames (the pipeline's default if unset)")
    p.add_argument("--fps", type=_positive_int, default=16, help="frame rate of the mp4 / GIF")
    p.add_argument("--max-sequence-length", type=_positive_int, help="text tokens (the pipeline's default)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto = cuda when available (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, nor progress lines off a terminal")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from qvgen.apps.generate import GenerateConfig, generate

    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    if not prompts:
        fail("qvgen generate", "--prompt", "at least one prompt (--prompt or --prompts-file)", "none")
    from qvgen.distributed.devices import resolve_device

    device = str(resolve_device(args.device))
    cfg = GenerateConfig(
        pipeline=Path(args.pipeline), prompts=prompts, out=Path(args.out),
        transformer=Path(args.transformer) if args.transformer else None,
        fp_transformer=Path(args.fp_transformer) if args.fp_transformer else None, compare_fp=args.compare_fp,
        negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
        height=args.height, width=args.width, frames=args.frames, fps=args.fps,
        max_sequence_length=args.max_sequence_length, dtype=args.dtype, device=device,
        progress=not args.no_progress, overwrite=args.overwrite)
    summary = generate(cfg)
    for clip in summary["clips"]:
        line = f"{clip['prompt']!r}: {clip['files'][0]}"
        if "psnr" in clip:
            line += f"  vs FP: PSNR {clip['psnr']:.2f} dB, SSIM {clip['ssim']:.4f}"
        print(line)
    if "psnr" in summary:
        print(f"all clips vs FP: PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.4f}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from qvgen.train.launch import run_train

    return run_train(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qvgen", description="QVGen: quantization-aware training of video diffusion transformers at "
                                  "W4A4/W3A3 with a decaying low-rank auxiliary module, and packed deployment.")
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too "
                                                             "(qvgen --debug COMMAND ...)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,precompute,train,generate}")
    _add_demo(sub)
    _add_precompute(sub)
    _add_train(sub)
    _add_generate(sub)
    return parser


@contextlib.contextmanager
def silenced_progress() -> Iterator[None]:
    """--no-progress: no bar from qvgen or the libraries it drives (diffusers, transformers, huggingface_hub),
    here and in processes started from here (torchrun workers inherit the environment); undone afterwards."""
    saved = {k: os.environ.get(k) for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    os.environ.update(dict.fromkeys(saved, "1"))
    libs = []
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            lib = importlib.import_module(name)
        except ImportError:
            continue
        if lib.is_progress_bar_enabled():
            lib.disable_progress_bar()
            libs.append(lib)
    try:
        yield
    finally:
        for lib in libs:
            lib.enable_progress_bar()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# A user's mistake (bad argument, missing or damaged file) is reported in one line; bugs keep their traceback.
USER_ERRORS = (ValueError, TypeError, OSError)


def main(argv: Sequence[str] | None = None, one_line_errors: bool | None = None) -> int:
    """Entry point of ``qvgen`` / ``python -m qvgen``; returns the exit status. On the command line (argv None)
    a user's mistake prints one line and returns 2 unless --debug, Ctrl-C one line and 130; a caller passing
    argv gets the exception, unless it asks for one_line_errors."""
    args = build_parser().parse_args(argv)
    quiet = silenced_progress() if getattr(args, "no_progress", False) else contextlib.nullcontext()
    try:
        with quiet:
            return int(args.func(args))
    except USER_ERRORS as e:
        if args.debug or not (argv is None if one_line_errors is None else one_line_errors):
            raise
        print(f"qvgen {args.command}: error: {e}  (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: 128 + SIGINT, like a shell, and one line (what to resume from)
        if args.debug or not (argv is None if one_line_errors is None else one_line_errors):
            raise
        print(f"qvgen {args.command}: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
