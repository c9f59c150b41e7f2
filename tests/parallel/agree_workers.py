"""Worker of test_ranks_agree (importable: the processes are spawned)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import signal
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_BATCH, BAD_STEP, BAD_ROW = 4, 1, 3  # global row 3: row 1 of rank 1's half


def _toys():
    spec = importlib.util.spec_from_file_location("nan_train_toys", ROOT / "tests" / "train" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def agree(rank: int, world: int, root: str) -> None:
    """Train 3 steps on a global batch whose row BAD_ROW is NaN at step BAD_STEP, then interrupt rank 0 of
    another run; report per rank."""
    import qvgen
    from qvgen.models import GenericAdapter
    from qvgen.train import Distiller, TrainConfig
    from qvgen.train.data import rank_rows

    toys = _toys()
    student, teacher = toys.make_pair()
    student = qvgen.quantize_model(student, qvgen.QuantConfig.preset("w4a4", rank=0))
    data = toys.toy_data_fn(shape=(GLOBAL_BATCH, 3, 2, 3, 5))

    def global_batch(step: int, g: torch.Generator):
        x0, cond = data(step, g)
        if step == BAD_STEP:
            x0[BAD_ROW] = float("nan")
        return x0, cond

    messages = _Messages()
    logging.getLogger("qvgen.train").addHandler(messages)
    cfg = TrainConfig(steps=3, batch_size=GLOBAL_BATCH, lr=1e-3, warmup=0.0, progress=False,
                      out_dir=str(Path(root) / "run"))
    try:
        Distiller(student, teacher, GenericAdapter(), rank_rows(global_batch, GLOBAL_BATCH, rank, world), cfg,
                  rank_decay=False).run()
        outcome = "ok"
    except Exception:  # noqa: BLE001 - compared by the test
        outcome = traceback.format_exc()[-3000:]
    interrupted = _interrupt_rank_0(rank, toys, root)
    state = b"".join(v.detach().contiguous().numpy().tobytes() for v in student.state_dict().values())
    (Path(root) / f"results-{rank}.json").write_text(json.dumps({
        "outcome": outcome, "messages": messages.messages,
        "finite": all(bool(torch.isfinite(p).all()) for p in student.parameters()),
        "state": hashlib.sha256(state).hexdigest(), "interrupted": interrupted}))


def _interrupt_rank_0(rank: int, toys, root: str) -> str:
    """SIGINT to rank 0 alone during step 1: every rank must stop at the same step boundary."""
    import qvgen
    from qvgen.models import GenericAdapter
    from qvgen.train import Distiller, TrainConfig

    student, teacher = toys.make_pair()
    student = qvgen.quantize_model(student, qvgen.QuantConfig.preset("w4a4", rank=0))
    data = toys.toy_data_fn()

    def data_fn(step: int, g: torch.Generator):
        if step == 1 and rank == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return data(step, g)

    cfg = TrainConfig(steps=4, lr=1e-3, warmup=0.0, progress=False, out_dir=str(Path(root) / "stop"))
    try:
        Distiller(student, teacher, GenericAdapter(), data_fn, cfg, rank_decay=False).run()
        return "finished"
    except KeyboardInterrupt as e:
        return str(e)
