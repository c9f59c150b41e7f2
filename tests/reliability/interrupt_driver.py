"""Ctrl-C driver of test_rel_ctrl_c: SIGINT at random moments of real training processes, in one interpreter.

    python interrupt_driver.py OUT_DIR TRIALS SEED   ->  OUT_DIR/result.json

This process imports torch and builds the models once (one thread, so forking stays safe) and forks a child
per trial. Every child resumes the previous trial's run (resume="auto") and trains a tiny QVGen distillation
with a checkpoint every 2 steps; once it has started, this process sends SIGINT at a random moment and
records how the child ended, how long it took, and the step it resumed from. A last trial sends two SIGINTs
during a step that blocks for seconds: the second must stop it at once.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

import qvgen  # noqa: F401
from qvgen.models import GenericAdapter
from qvgen.train import Distiller
from qvgen.train.metrics import MetricsLog

sys.path.insert(0, str(Path(__file__).parent))
from rel_helpers import quantized_student, train_cfg, train_toys  # noqa: E402

torch.set_num_threads(1)
STOP_WITHIN_S = 5.0
MetricsLog.plot = lambda self: None  # the plot costs more than a toy step and is not under test
PAIR = quantized_student()  # built once; every forked child starts from this copy (resume loads its state)


def child(run_dir: Path, report: Path, ready_w: int, block_at: int | None) -> None:
    """Train until interrupted; write {"start", "outcome", "message"} to ``report``; exit 130 when interrupted."""
    student, teacher = PAIR
    data = train_toys.toy_data_fn()
    started = []

    def data_fn(step: int, g: torch.Generator):
        if not started:  # inside Distiller.run: the parent may signal from now on
            started.append(step)
            os.write(ready_w, b"r")
        if block_at is not None and step == block_at:
            time.sleep(30)  # a step far longer than the test: only a second Ctrl-C ends it in time
        return data(step, g)

    cfg = train_cfg(run_dir, steps=100_000, ckpt_every=2)
    distiller = Distiller(student, teacher, GenericAdapter(), data_fn, cfg)
    result = {"start": None, "outcome": "finished", "message": ""}
    code = 0
    try:
        distiller.run(resume="auto")
    except KeyboardInterrupt as e:
        result.update(outcome="interrupted", message=str(e))
        code = 130
    except BaseException as e:  # noqa: BLE001 - reported to the test
        result.update(outcome=f"{type(e).__name__}", message=traceback.format_exc()[-2000:])
        code = 1
    result["start"] = distiller.start_step
    report.write_text(json.dumps(result))
    os._exit(code)


def trial(run_dir: Path, report: Path, rng: random.Random, block_at: int | None = None) -> dict:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        try:
            child(run_dir, report, ready_w, block_at)
        finally:
            os._exit(1)
    os.close(ready_w)
    ok, _, _ = select.select([ready_r], [], [], 20.0)
    os.close(ready_r)
    delay = 0.0
    if ok:
        if block_at is None:
            delay = rng.uniform(0.0, 0.5)
            time.sleep(delay)
            os.kill(pid, signal.SIGINT)
        else:  # two presses, further apart than a launcher's repeated delivery
            time.sleep(0.3)
            os.kill(pid, signal.SIGINT)
            time.sleep(0.8)
            os.kill(pid, signal.SIGINT)
    sent = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - sent > STOP_WITHIN_S:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.02)
    out = {"delay": round(delay, 3), "stopped_s": round(time.monotonic() - sent, 3), "ready": bool(ok),
           "exit": None if status is None else os.waitstatus_to_exitcode(status)}
    if report.is_file():
        out.update(json.loads(report.read_text()))
        report.unlink()
    return out


def main() -> None:
    out, trials, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    t0 = time.monotonic()
    runs = [trial(out / "run", out / "report.json", rng) for _ in range(trials)]
    double = trial(out / "double", out / "report.json", rng, block_at=1)
    (out / "result.json").write_text(json.dumps({"trials": runs, "double": double,
                                                 "seconds": round(time.monotonic() - t0, 2)}))


if __name__ == "__main__":
    main()
