"""Workers of the sharded-checkpoint safety tests (importable: the processes are spawned)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
import traceback
from pathlib import Path

import torch
from torch import nn


class Evil:
    """A pickle that runs a shell command when it is unpickled by the full unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _model_and_optim(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 4))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "name": "a"},
                             {"params": model[2].parameters(), "name": "b"}], lr=1e-2)
    model(torch.randn(3, 6)).square().sum().backward()
    opt.step()
    return model, opt


def _outcome(fn) -> str:
    """'ok', or the error's type and message (every rank must reach the same one)."""
    try:
        fn()
        return "ok"
    except Exception as e:  # noqa: BLE001 - the outcome is compared by the test
        return f"{type(e).__name__}: {e}"


def _rehash(ckpt: Path, name: str) -> None:
    """What an attacker who also rewrites meta.json does: record the new file's hash."""
    from qvgen.storage.integrity import file_digest

    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][name] = file_digest(ckpt / name)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def safety(rank: int, world: int, root: str) -> None:
    from qvgen.train.dcp import LAST, find_sharded, load_sharded, save_sharded

    root, out = Path(root), Path(root) / "run"
    results = {}
    model, opt = _model_and_optim(0)
    save_sharded(out, model, opt, None, None, step=2)
    fresh, fresh_opt = _model_and_optim(1)
    results["roundtrip"] = _outcome(lambda: load_sharded(out / LAST, fresh, fresh_opt))
    results["equal"] = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                               fresh.state_dict().values()))
    torch.distributed.barrier()

    def damage(case: str) -> None:  # rank 0 edits a copy while the other waits
        case_dir = root / case
        if rank == 0:
            shutil.copytree(out / LAST, case_dir)
            if case == "flip":
                data = bytearray((case_dir / "__0_0.distcp").read_bytes())
                data[len(data) // 2] ^= 0x01
                (case_dir / "__0_0.distcp").write_bytes(bytes(data))
            else:
                (case_dir / ".metadata").write_bytes(pickle.dumps(Evil(root / f"pwned-{case}")))
                if case == "evil-rehashed":
                    _rehash(case_dir, ".metadata")
        torch.distributed.barrier()
        m, o = _model_and_optim(3)
        results[case] = _outcome(lambda: load_sharded(case_dir, m, o))
        torch.distributed.barrier()

    for case in ("flip", "evil", "evil-rehashed"):
        damage(case)
    # A crash between the two renames of a publish: dcp-last gone, the complete copy beside it.
    save_sharded(out, model, opt, None, None, step=4)
    if rank == 0:
        os.rename(out / LAST, out / f".{LAST}.old-crash")
    torch.distributed.barrier()
    found = find_sharded(out)
    results["found_after_crash"] = None if found is None else found.name
    m, o = _model_and_optim(4)
    results["step_after_crash"] = _outcome(lambda: results.__setitem__("step", load_sharded(found, m, o)["step"]))
    save_sharded(out, model, opt, None, None, step=6)  # recovers the copy first, then publishes
    results["after_next_save"] = sorted(p.name for p in out.iterdir())
    torch.distributed.barrier()
    results["evil_ran"] = sorted(p.name for p in root.glob("pwned-*"))
    (root / f"results-{rank}.json").write_text(json.dumps(results))


def other_world(rank: int, world: int, root: str) -> None:
    """Load a checkpoint written by a different number of processes."""
    from qvgen.train.dcp import LAST, load_sharded

    m, o = _model_and_optim(5)
    Path(root, f"world-{world}-{rank}.txt").write_text(_outcome(lambda: load_sharded(Path(root) / "run" / LAST,
                                                                                      m, o)))


def stall(rank: int, world: int, root: str) -> None:
    """Rank 1 stops answering; rank 0's barrier must end with an error within the collective timeout."""
    from qvgen.distributed.parallel import init_from_env

    init_from_env(torch.device("cpu"), 2.0)
    if rank == 1:
        time.sleep(30)
        return
    t0 = time.monotonic()
    outcome = _outcome(torch.distributed.barrier)
    Path(root, "stall.json").write_text(json.dumps({"outcome": outcome, "seconds": time.monotonic() - t0}))
    os._exit(0)  # the stalled peer never joins the group's teardown


def stall_entry(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        stall(rank, world, root)
    except Exception:  # noqa: BLE001
        Path(root, f"stall-error-{rank}.txt").write_text(traceback.format_exc())
        raise
