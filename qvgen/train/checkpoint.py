"""Atomic training checkpoints: student weights (safetensors) + optimizer / scheduler / rank-decay state.

Layout of ``out_dir/ckpt-last/``:
    model.safetensors   the student's state dict (Phi with its current, possibly shrunk, shapes)
    state.pt            {"step", "optimizer" (keyed by parameter NAME), "scheduler", "rank_decay", "extra"}
    meta.json           {"step", "format"}: written last, its presence marks a complete checkpoint

Atomicity: everything is written and fsynced into a fresh temp dir in the same parent; then the old
``ckpt-last`` is renamed to ``ckpt-prev``, the temp dir renamed to ``ckpt-last`` (both os.replace,
atomic on POSIX), and only then ``ckpt-prev`` deleted. A crash at any point leaves either ``ckpt-last``
or ``ckpt-prev`` complete; ``find_checkpoint`` picks the newest complete one.

The optimizer state is stored by parameter name, so it can be loaded into an optimizer rebuilt over
the current parameters (after Phi shrank or vanished) whatever order the groups list them in.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qvgen_kernels.format import fail

from qvgen.io import state_for_file

LAST, PREV = "ckpt-last", "ckpt-prev"
FORMAT = 1


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with parameter indices replaced by the parameters' names in ``model``."""
    names = {id(p): n for n, p in model.named_parameters()}
    sd = optimizer.state_dict()
    index_to_name: dict[int, str] = {}
    idx = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in names:
                fail("optimizer_state_by_name", "optimizer", "only parameters of the model", "a foreign tensor")
            index_to_name[idx] = names[id(p)]
            idx += 1
    groups = [{**g, "params": [index_to_name[i] for i in g["params"]]} for g in sd["param_groups"]]
    state = {index_to_name[i]: s for i, s in sd["state"].items()}
    return {"state": state, "param_groups": groups}


def load_optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Inverse of ``optimizer_state_by_name`` into an optimizer built over ``model``'s current parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    current = [[names.get(id(p)) for p in g["params"]] for g in optimizer.param_groups]
    if len(current) != len(saved["param_groups"]):
        fail("load_optimizer_state_by_name", "saved", f"{len(current)} param groups",
             len(saved["param_groups"]))
    name_to_index: dict[str, int] = {}
    groups = []
    for cur, g in zip(current, saved["param_groups"]):
        if sorted(cur) != sorted(g["params"]):
            missing = sorted(set(g["params"]) ^ set(cur))[:4]
            fail("load_optimizer_state_by_name", "saved", "the same parameters per group as the optimizer",
                 f"a mismatch on {missing}")
        for n in cur:
            name_to_index[n] = len(name_to_index)
        groups.append({**g, "params": [name_to_index[n] for n in cur]})
    state = {name_to_index[n]: s for n, s in saved["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _write_dir(tmp: Path, model_state: dict, state: dict, step: int) -> None:
    from safetensors.torch import save_file

    save_file(state_for_file(model_state), str(tmp / "model.safetensors"))
    _fsync_path(tmp / "model.safetensors")
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    with open(tmp / "meta.json", "w", encoding="utf-8") as f:
        json.dump({"step": step, "format": FORMAT}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(tmp)


def save_checkpoint(out_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: object | None, rank_decay: object | None, step: int,
                    extra: dict | None = None) -> Path:
    """Atomically write ``out_dir/ckpt-last`` for resuming at ``step`` (the next step to run)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "optimizer": optimizer_state_by_name(model, optimizer),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rank_decay": None if rank_decay is None else rank_decay.state_dict(),
        "extra": dict(extra or {}),
    }
    for stale in out.glob(".ckpt-tmp-*"):  # left by a run killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-tmp-", dir=out))
    try:
        _write_dir(tmp, model.state_dict(), state, step)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    last, prev = out / LAST, out / PREV
    if last.exists():
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(last, prev)
    os.replace(tmp, last)
    _fsync_path(out)
    shutil.rmtree(prev, ignore_errors=True)
    return last


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in ("model.safetensors", "state.pt", "meta.json"))


def find_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory under ``out_dir`` (``ckpt-last``, else ``ckpt-prev``)."""
    for name in (LAST, PREV):
        path = Path(out_dir) / name
        if _complete(path):
            return path
    return None


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model state dict and the training state."""

    path: Path
    model_state: dict[str, torch.Tensor]
    state: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint directory written by ``save_checkpoint``."""
    path = Path(path)
    if not _complete(path):
        fail("load_checkpoint", "path", "a complete checkpoint directory", str(path))
    from safetensors.torch import load_file

    model_state = load_file(str(path / "model.safetensors"), device=str(device))
    state = torch.load(path / "state.pt", map_location=device, weights_only=True)
    return Checkpoint(path=path, model_state=model_state, state=state)

