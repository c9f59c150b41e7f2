"""Sharded training checkpoints (FSDP2 / DDP) through torch.distributed.checkpoint, verified and code-free.

Layout of ``out_dir/dcp-last/``:
    *.distcp, .metadata   model and optimizer state (DCP; every rank writes its shards, keyed by FQN)
    state.pt              {"step", "scheduler", "rank_decay", "extra"} (rank 0; the same on every rank)
    meta.json             {"step", "world_size", "format", "files": {name: sha256}}: written last, marks a
                          complete checkpoint; every listed file's hash is checked before anything is loaded
Every rank writes into ``.dcp-last.tmp-<step>``; after a barrier rank 0 hashes the files and publishes the
folder as ``dcp-last`` with ``qvgen.storage.atomic_dir`` (a complete copy exists at every instant; after a crash
between its renames the newest complete sibling is found and kept). Reading goes through
``qvgen.train.dcp_safe``: no pickle from the folder is ever run by the full unpickler.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.storage import atomic_dir
from qvgen.storage.integrity import file_digest, fsync_path, write_text_durably
from qvgen.storage.paths import inside, read_json

LAST, META, STATE, FORMAT = "dcp-last", "meta.json", "state.pt", 2  # 2: meta.json lists every file's sha256
READABLE = (1, 2)
log = logging.getLogger("qvgen.train")


def _barrier() -> None:
    torch.distributed.barrier()


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in (META, STATE, ".metadata"))


def _recover(out: Path) -> None:
    """Rank 0, before writing: put the newest complete copy left by a crash mid-publish back at dcp-last."""
    last = out / LAST
    found = atomic_dir.resolve(last, _complete)
    if found is not None and found != last:
        log.warning("save_sharded: %s was missing (a save was interrupted); restoring %s", last, found)
        shutil.rmtree(last, ignore_errors=True)
        os.rename(found, last)
        fsync_path(out)


def save_sharded(out_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, rank_decay, step: int, extra: dict | None = None) -> Path:
    """Collective: every rank calls it. Returns ``out_dir/dcp-last``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    out = Path(out_dir)
    last, tmp = out / LAST, out / f".{LAST}.tmp-{int(step)}"  # the same name on every rank
    # Rank 0 touches the folder only once every rank is here: a rank still reading the checkpoint it resumed
    # from (load_sharded's state.pt) would otherwise lose it to the recovery rename below.
    _barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _recover(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    if rank == 0:
        torch.save({"step": step, "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "rank_decay": None if rank_decay is None else rank_decay.state_dict(),
                    "extra": dict(extra or {})}, tmp / STATE)
    _barrier()  # every rank's shards are on disk
    if rank == 0:
        files = {p.name: file_digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        for name in files:
            fsync_path(tmp / name)
        write_text_durably(tmp / META, json.dumps({"step": step, "world_size": world, "format": FORMAT,
                                                   "files": files}))
        fsync_path(tmp)
        atomic_dir.publish(tmp, last)
    _barrier()
    return last


def find_sharded(out_dir: str | os.PathLike) -> Path | None:
    """``dcp-last``, or the newest complete copy an interrupted publish left beside it."""
    return atomic_dir.resolve(Path(out_dir) / LAST, _complete)


def verify_sharded(path: str | os.PathLike) -> dict:
    """meta.json of a sharded checkpoint after checking every file against its recorded hash (no collective:
    every rank reaches the same verdict, so a damaged checkpoint stops all of them)."""
    from qvgen.train.dcp_safe import read_metadata, storage_files

    op, path = "load_sharded", Path(path)
    meta = read_json(path / META, op)
    version = meta.get("format")
    if version not in READABLE:
        fail(op, str(path / META), f"format in {READABLE}", repr(version))
    files = meta.get("files")
    if version >= 2 and not (isinstance(files, dict) and files):
        fail(op, str(path / META), f"the file hashes that format {version} requires", "none recorded")
    if version == 1:
        log.warning("load_sharded: %s has no content hashes (written before format 2); not verified", path)
        files = {}
    for name, digest in files.items():
        file = inside(path, name, str(path / META))
        if not file.is_file():
            fail(op, str(file), "a file listed in meta.json", "a missing file")
        if file_digest(file) != digest:
            fail(op, str(file), "the content hash recorded in meta.json", "different content (the file was "
                 "modified or corrupted)")
    data = storage_files(read_metadata(path / ".metadata"))
    unlisted = sorted(data - set(files)) if files else []
    if unlisted or any(not (path / n).is_file() or Path(n).name != n for n in data):
        fail(op, str(path / ".metadata"), "data files inside the checkpoint, each listed in meta.json",
             sorted(data)[:4])
    return meta


def load_sharded(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Collective: load the model and optimizer shards in place; returns state.pt's dict."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from qvgen.train.dcp_safe import SafePlanner, SafeReader

    path = Path(path)
    meta = verify_sharded(path)
    world = torch.distributed.get_world_size()
    if meta.get("world_size") != world:
        fail("load_sharded", "world size", f"{meta.get('world_size')} processes, the number that wrote {path} "
             f"(resume with torchrun --nproc_per_node {meta.get('world_size')}, or start a new --out)", world)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, storage_reader=SafeReader(str(path)), planner=SafePlanner())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    try:
        return torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        fail("load_sharded", str(path / STATE), "a readable torch.save file", f"{type(e).__name__}: {e}")


__all__ = ["find_sharded", "load_sharded", "save_sharded", "verify_sharded"]
