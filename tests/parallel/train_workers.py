"""Workers of the multi-process training tests (importable: the processes are spawned)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

TRAIN = ["--steps", "4", "--rank", "2", "--no-progress", "--ckpt-every", "0", "--seed", "5"]


def cli_args(dit: str, shards: str, out: Path, batch: int, *extra: str) -> list[str]:
    return ["train", "--model", dit, "--data", shards, "--batch-size", str(batch), "--out", str(out), *TRAIN, *extra]


def distiller(mode: str, dit: str, shards: str, out: Path, rank: int, world: int):
    import qvgen
    from qvgen.models.loading import load_diffusers_model
    from qvgen.data import LatentShards, shard_data_fn
    from qvgen.distributed.parallel import fully_shard_model
    from qvgen.train import Distiller, TrainConfig

    teacher = load_diffusers_model(dit)
    torch.manual_seed(5)
    student = qvgen.quantize_model(copy.deepcopy(teacher), qvgen.QuantConfig.preset("w4a4", rank=2))
    if mode == "fsdp":
        fully_shard_model(student, "off")
        fully_shard_model(teacher, "off")
    data_fn = shard_data_fn(LatentShards(shards), 1, seed=5, rank=rank, world=world)
    # What `qvgen train ... TRAIN` builds (the same run, interrupted below).
    cfg = TrainConfig(steps=4, batch_size=1, progress=False, out_dir=str(out), ckpt_every=2, seed=5)
    return Distiller(student, teacher, None, data_fn, cfg)


def worker(rank: int, world: int, dit: str, shards: str, root: str) -> None:
    from qvgen.apps.cli import main
    from qvgen.distributed.parallel import full_state_dict

    root = Path(root)
    for mode in ("fsdp", "ddp"):  # the CLI under torchrun's environment (set by the spawner)
        main(cli_args(dit, shards, root / mode, 2, "--parallel", mode))  # global batch 2: 1 per rank
    states = {}
    for mode in ("fsdp", "ddp"):  # the CLI's run, stopped after its step-2 checkpoint and resumed
        cut = distiller(mode, dit, shards, root / f"{mode}-cut", rank, world)
        for i in range(2):
            cut.train_step(i)
        cut.save(2)  # then the processes "die": a fresh set-up resumes from the DCP checkpoint
        resumed = distiller(mode, dit, shards, root / f"{mode}-cut", rank, world)
        assert resumed.run(resume=True)["step"] == 4 and resumed.start_step == 2
        states[mode] = full_state_dict(resumed.student)
    if rank == 0:
        torch.save(states, root / "resumed.pt")
