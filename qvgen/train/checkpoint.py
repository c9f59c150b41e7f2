"""Atomic training checkpoints: student weights (safetensors) + optimizer / scheduler / rank-decay state.

Layout of ``out_dir/ckpt-last/``:
    model.safetensors   the student's state dict (Phi with its current, possibly shrunk, shapes)
    state.pt            {"step", "optimizer" (keyed by parameter NAME), "scheduler", "rank_decay", "extra"}
    meta.json           {"step", "format", "state_sha256", "tensor_sha256"}: written last, its presence
                        marks a complete checkpoint; the hashes are checked by ``load_checkpoint``

Atomicity: everything is written and fsynced into a fresh temp dir in the same parent and read back
(hashes checked); then the old ``ckpt-last`` is renamed to ``ckpt-prev``, the temp dir renamed to
``ckpt-last`` (both os.replace, atomic on POSIX), and only then ``ckpt-prev`` deleted. A crash at any
point leaves either ``ckpt-last`` or ``ckpt-prev`` complete; ``find_checkpoint`` picks the newest
complete one. Non-finite weights or optimizer state are never written, and a failed write (disk full)
is an OSError naming the file, with the previous checkpoint untouched.

The optimizer state is stored by parameter name, so it can be loaded into an optimizer rebuilt over
the current parameters (after Phi shrank or vanished) whatever order the groups list them in.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.storage import atomic_dir
from qvgen.storage.integrity import (HashingWriter, check_digests, digests, file_digest, fsync_path, non_finite,
                             read_safetensors, write_error, write_text_durably)
from qvgen.artifact.io import state_for_file

LAST, PREV = "ckpt-last", "ckpt-prev"
FORMAT = 2  # 2: meta.json records the sha256 of state.pt and of every tensor


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


def _optimizer_tensors(state: dict) -> list[tuple[str, torch.Tensor]]:
    return [(f"optimizer[{name!r}].{k}", v) for name, entry in state["optimizer"]["state"].items()
            for k, v in entry.items()]


def _write_dir(tmp: Path, model_state: dict, state: dict, step: int, kept: str) -> None:
    """Write and fsync the three files; meta.json (last) records the content hashes of the other two."""
    from safetensors.torch import save_file

    tensors = state_for_file(model_state)
    file = tmp / "model.safetensors"
    try:
        save_file(tensors, str(file))
        fsync_path(file)
        file = tmp / "state.pt"
        with open(file, "wb") as f:
            writer = HashingWriter(f)
            try:
                torch.save(state, writer)
            except Exception as e:
                raise writer.error or e  # the OSError, not torch's "unexpected pos"
            f.flush()
            os.fsync(f.fileno())
        file = tmp / "meta.json"
        write_text_durably(file, json.dumps({"step": step, "format": FORMAT, "state_sha256": writer.sha.hexdigest(),
                                             "tensor_sha256": digests(tensors)}))
        fsync_path(tmp)
    except Exception as e:
        raise write_error("save_checkpoint", file, e, kept) from e


def save_checkpoint(out_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: object | None, rank_decay: object | None, step: int,
                    extra: dict | None = None) -> Path:
    """Atomically write ``out_dir/ckpt-last`` for resuming at ``step`` (the next step to run).

    Refuses (FloatingPointError) weights or optimizer state holding NaN/Inf. The new checkpoint is read back
    and verified before it replaces ``ckpt-last``; the previous one is deleted only after that."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_state = model.state_dict()
    state = {
        "step": step,
        "optimizer": optimizer_state_by_name(model, optimizer),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rank_decay": None if rank_decay is None else rank_decay.state_dict(),
        "extra": dict(extra or {}),
    }
    last, prev = out / LAST, out / PREV
    kept = f"the last good checkpoint under {out} is kept"
    bad = non_finite(list(model_state.items()) + _optimizer_tensors(state))
    if bad:
        raise FloatingPointError(f"save_checkpoint: non-finite values (NaN/Inf) in {len(bad)} tensors, e.g. "
                                 f"{bad[:3]}; checkpoint for step {step} not written, {kept}")
    for stale in out.glob(".ckpt-tmp-*"):  # named so by earlier versions, left by a run killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    atomic_dir.clean(last)  # ours left by a killed save: never a fallback here (ckpt-prev is)
    tmp = atomic_dir.new_tmp(last)  # mode from the umask, like diffusers' folders (mkdtemp would make it 0700)
    try:
        _write_dir(tmp, model_state, state, step, kept)
        load_checkpoint(tmp)  # verified and loadable before anything older goes
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if last.exists():
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(last, prev)
    os.replace(tmp, last)
    fsync_path(out)
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
    """Read a checkpoint directory written by ``save_checkpoint``, checking the content hashes it records;
    a damaged file is a ValueError naming it."""
    op, path = "load_checkpoint", Path(path)
    if not _complete(path):
        fail(op, "path", "a complete checkpoint directory", str(path))
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        fail(op, str(path / "meta.json"), "a readable JSON object", f"a damaged file ({e})")
    model_state, _ = read_safetensors(op, path / "model.safetensors", device=str(device))
    if "tensor_sha256" in meta:  # format 1 checkpoints carry no hashes
        check_digests(op, path / "model.safetensors", model_state, meta["tensor_sha256"])
    if "state_sha256" in meta and file_digest(path / "state.pt") != meta["state_sha256"]:
        fail(op, str(path / "state.pt"), "the content hash recorded in meta.json", "different content "
             "(the file was modified or corrupted)")
    try:
        state = torch.load(path / "state.pt", map_location=device, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError ... for damaged files
        fail(op, str(path / "state.pt"), "a readable torch.save file", f"a damaged one ({type(e).__name__}: {e})")
    if not isinstance(state, dict) or "step" not in state:
        fail(op, str(path / "state.pt"), "a training state with a 'step'", type(state).__name__)
    return Checkpoint(path=path, model_state=model_state, state=state)
