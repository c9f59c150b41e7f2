"""`qvgen train`: one process or `torchrun --nproc_per_node N`, on random latents, a tensor file or a shard
folder written by `qvgen precompute`.

Under torchrun the process group is initialised from the environment; `--parallel fsdp` (the default with
more than one process) shards student and teacher with FSDP2 per transformer block, `--parallel ddp`
replicates them. `--batch-size` is the global batch: each of the N processes trains on its own N-th of it,
so N processes see exactly the samples, noise and timesteps of one process at that batch, and the logged loss
is the mean over the global batch (reduced across ranks). Only rank 0 writes the metrics log and the deployed model; under torchrun every rank
writes its part of the checkpoints through torch.distributed.checkpoint (resumable on the same world size).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

from qvgen.distributed.devices import resolve_device
from qvgen.models.loading import load_diffusers_model, model_folder
from qvgen.train.data import load_data_file, make_data_fn, rank_rows
from qvgen.train.run_dir import claim_out_dir
from qvgen_kernels.errors import fail

TEACHER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _data_fn(args: argparse.Namespace, teacher: nn.Module, adapter, device: torch.device, rank: int, world: int):
    from qvgen.data.shards import MANIFEST, LatentShards
    from qvgen.data.loader import shard_data_fn

    if args.data and Path(args.data).is_dir():
        if not (Path(args.data) / MANIFEST).is_file():
            fail("qvgen train", "--data", f"a shard folder written by qvgen precompute (with {MANIFEST}) or a "
                 "tensor file", args.data)
        shards = LatentShards(args.data)
        layout = "B" + shards.manifest["layout"]
        if layout != adapter.layout:
            fail("qvgen train", "--data", f"latents in the model's layout {adapter.layout} (adapter "
                 f"'{adapter.name}')", f"{layout} from a '{shards.manifest['kind']}' precompute in {args.data}")
        return shard_data_fn(shards, args.batch_size // world, args.seed, rank, world)
    data = load_data_file(args.data) if args.data else None
    data_fn = make_data_fn(teacher, adapter, args.batch_size, device, data, args.latent_shape)
    return data_fn if world == 1 else rank_rows(data_fn, args.batch_size, rank, world)


def _parallel(args: argparse.Namespace, world: int) -> str:
    mode = args.parallel
    if mode == "auto":
        return "fsdp" if world > 1 else "none"
    if mode != "none" and world == 1:
        fail("qvgen train", "--parallel", "'none' or 'auto' in a single process (launch with torchrun "
             "--nproc_per_node N for ddp/fsdp)", repr(mode))
    return mode


def _deploy(args: argparse.Namespace, student: nn.Module, cfg, sharded: bool, rank: int) -> Path | None:
    """Gather the trained student (a collective when sharded) and, on rank 0, deploy and save it."""
    from qvgen import iter_qlinears, quantize_model, save_quantized, to_deploy
    from qvgen.distributed.parallel import full_state_dict

    state = full_state_dict(student) if sharded else None
    if rank != 0:
        return None
    if sharded:  # an unsharded copy on rank 0: sharded Phi could only be masked, here it is dropped
        student = quantize_model(load_diffusers_model(args.model), cfg, calibrate=False)
        student.load_state_dict(state)
    out = Path(args.out) / "quantized"
    to_deploy(student.cpu() if sharded else student)
    save_quantized(student, out)
    n = sum(1 for _ in iter_qlinears(student))
    print(f"[train] {n} layers at {args.preset}, deployed and saved to {out}")
    return out


def run_train(args: argparse.Namespace) -> int:
    from qvgen import QuantConfig, quantize_model
    from qvgen.models.adapters import adapter_for
    from qvgen.distributed.parallel import DEFAULT_COLLECTIVE_TIMEOUT_S, fully_shard_model, init_from_env
    from qvgen.train import Distiller, TrainConfig

    if args.resume_override and not args.resume:
        fail("qvgen train", "--resume-override", "to be used with --resume", args.resume_override)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    rank, world, device = init_from_env(resolve_device(args.device),
                                        getattr(args, "collective_timeout", DEFAULT_COLLECTIVE_TIMEOUT_S))
    if args.batch_size % world:
        fail("qvgen train", "--batch-size", f"a multiple of the {world} processes (the global batch, split evenly "
             "across them)", args.batch_size)
    claim_out_dir(args.out, args.resume, getattr(args, "overwrite", False), rank == 0)
    if world > 1:
        torch.distributed.barrier()  # every rank checked --out before rank 0 writes into it
    mode = _parallel(args, world)
    # the folder is resolved after the argument checks above, so a wrong flag is named before a wrong path
    args.model = str(model_folder(args.model, getattr(args, "subfolder", None)))
    model = load_diffusers_model(args.model).to(device)
    adapter = adapter_for(model, args.arch)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    if args.teacher_dtype != "fp32":  # every parameter: an FSDP2 group holds one dtype
        teacher = teacher.to(TEACHER_DTYPES[args.teacher_dtype])
    data_fn = _data_fn(args, teacher, adapter, device, rank, world)
    qcfg = QuantConfig.preset(args.preset, rank=args.rank)
    torch.manual_seed(args.seed)  # randomized SVDs: the same Phi on every rank
    student = quantize_model(model, qcfg)
    if mode == "fsdp":
        fully_shard_model(student, args.mixed_precision, device)
        fully_shard_model(teacher, args.mixed_precision, device)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      out_dir=str(Path(args.out) / "train"), progress=not args.no_progress and rank == 0,
                      ckpt_every=args.ckpt_every, grad_checkpointing=args.grad_checkpointing,
                      decay_end=args.decay_end)
    Distiller(student, teacher, adapter, data_fn, cfg, rank_decay=args.rank > 0).run(
        resume=args.resume, override=args.resume_override)
    _deploy(args, student, qcfg, mode == "fsdp", rank)
    if world > 1:
        torch.distributed.barrier()
        if owns_group:
            torch.distributed.destroy_process_group()
    return 0


__all__ = ["TEACHER_DTYPES", "run_train"]
