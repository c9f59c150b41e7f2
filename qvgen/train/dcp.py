"""Sharded training checkpoints (FSDP2) through torch.distributed.checkpoint, resumable on the same world size.

Layout of ``out_dir/dcp-last/``:
    *.distcp, .metadata   model and optimizer state (DCP; every rank writes its shards, keyed by FQN)
    state.pt              {"step", "scheduler", "rank_decay", "extra"} (rank 0; the same on every rank)
    meta.json             {"step", "world_size", "format"}: written last, marks a complete checkpoint
Every rank writes into ``.dcp-tmp``; after a barrier rank 0 swaps it in for ``dcp-last`` (renames).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from qvgen_kernels.errors import fail

LAST, TMP, OLD, FORMAT = "dcp-last", ".dcp-tmp", ".dcp-old", 1


def _barrier() -> None:
    torch.distributed.barrier()


def save_sharded(out_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, rank_decay, step: int, extra: dict | None = None) -> Path:
    """Collective: every rank calls it. Returns ``out_dir/dcp-last``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    out = Path(out_dir)
    tmp, last, old = out / TMP, out / LAST, out / OLD
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    if rank == 0:
        torch.save({"step": step, "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "rank_decay": None if rank_decay is None else rank_decay.state_dict(),
                    "extra": dict(extra or {})}, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "world_size": world, "format": FORMAT}))
    _barrier()
    if rank == 0:
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(last, old)
        os.replace(tmp, last)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return last


def find_sharded(out_dir: str | os.PathLike) -> Path | None:
    path = Path(out_dir) / LAST
    return path if (path / "meta.json").is_file() and (path / "state.pt").is_file() else None


def load_sharded(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Collective: load the model and optimizer shards in place; returns state.pt's dict."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    world = torch.distributed.get_world_size()
    if meta.get("world_size") != world:
        fail("load_sharded", "world size", f"{meta.get('world_size')} processes (the checkpoint's)", world)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return torch.load(path / "state.pt", map_location="cpu", weights_only=True)


__all__ = ["find_sharded", "load_sharded", "save_sharded"]
