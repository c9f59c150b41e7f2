"""Crash driver of test_rel_kill9: real process deaths and a real file-size limit, in one interpreter.

    python crash_driver.py OUT_DIR KILLS SEED   ->  OUT_DIR/result.json

This process imports torch and builds the models once, with one thread (no OpenMP pool, so forking stays
safe), and forks a child per piece of work: each child starts from the same models in memory. Phases:
  fsize: saves under RLIMIT_FSIZE (writes fail with EFBIG at the limit, like a full disk): every failure is
         an OSError naming the file, and the previous checkpoint still loads.
  train: a tiny QVGen distillation with a checkpoint after every step, killed with SIGKILL at random times
         and resumed; after every kill every checkpoint on disk loads, and the final weights equal those of
         an uninterrupted run (torch.equal).
  save:  save_quantized of two models in turn, killed at random times; after every kill the path loads as
         exactly one of the two, and the next complete save leaves no leftovers.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

import qvgen  # noqa: E402
from qvgen.models import GenericAdapter  # noqa: E402
from qvgen.train import Distiller, checkpoint as ck  # noqa: E402
from qvgen.train.metrics import MetricsLog  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from rel_helpers import dit_output, qat_toys, quantized_dit, quantized_student, train_cfg, train_toys  # noqa: E402

STEPS = 10
torch.set_num_threads(1)
MODELS: dict = {}


def _no_plot(self) -> None:
    """The metrics plot is irrelevant here and costs more than a toy training step."""


MetricsLog.plot = _no_plot


def in_child(fn, *args) -> int:
    """Fork; the child runs fn(*args) and exits 0 (1 on an exception, traceback on stderr). Returns the pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def run_child(fn, *args) -> int:
    return wait(in_child(fn, *args))


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


# -- fsize ----------------------------------------------------------------------------------------------------

def fsize_phase(out: Path, report: Path) -> None:
    import resource

    from qvgen.train.optim import build_optimizer

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    model, _ = train_toys.make_pair()
    opt = build_optimizer(model, lr=1e-2)
    qmodel = MODELS["dit"][0]
    ck.save_checkpoint(out / "train", model, opt, None, None, step=1)
    qvgen.save_quantized(qmodel, out / "q")
    cases = []
    for budget in (0, 64, 512, 1500, 3000, 12000, 1 << 20):
        for what in ("save_checkpoint", "save_quantized"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (budget, hard))
            try:
                if what == "save_checkpoint":
                    ck.save_checkpoint(out / "train", model, opt, None, None, step=budget + 2)
                else:
                    qvgen.save_quantized(qmodel, out / "q")
                outcome = "saved"
            except OSError as e:
                outcome = "clear" if "could not write" in str(e) and str(out) in str(e) else f"unclear: {e}"
            except Exception as e:  # noqa: BLE001
                outcome = f"unclear {type(e).__name__}: {e}"
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            ck.load_checkpoint(ck.find_checkpoint(out / "train"))
            qvgen.load_quantized(qat_toys.ToyDiT(), out / "q")
            leftovers = [p.name for d in (out, out / "train") for p in d.iterdir() if p.name.startswith(".")]
            cases.append({"what": what, "budget": budget, "outcome": outcome, "leftovers": leftovers})
    write_json(report, cases)


# -- train ----------------------------------------------------------------------------------------------------

def train(run_dir: Path, final: Path) -> None:
    student, teacher = MODELS["pair"]
    cfg = train_cfg(run_dir, steps=STEPS, ckpt_every=1)
    Distiller(student, teacher, GenericAdapter(), train_toys.toy_data_fn(), cfg).run(resume="auto")
    from safetensors.torch import save_file

    from qvgen.artifact.io import state_for_file

    save_file(state_for_file(student.state_dict()), str(final))


def check_checkpoints(run_dir: Path, report: Path) -> None:
    loaded = []
    for d in sorted(run_dir.glob("ckpt-*")):
        if all((d / f).is_file() for f in ("model.safetensors", "state.pt", "meta.json")):
            loaded.append([d.name, ck.load_checkpoint(d).step])  # raises if a checkpoint does not load
    write_json(report, loaded)


def compare(a: Path, b: Path, report: Path) -> None:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    write_json(report, sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x))


def progress(run_dir: Path) -> int:
    """Steps logged so far (metrics.jsonl has one line per step; a resumed run truncates it first)."""
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def train_phase(out: Path, kills: int, rng: random.Random) -> dict:
    ref, t0 = out / "ref.safetensors", time.perf_counter()
    assert run_child(train, out / "ref", ref) == 0, "the uninterrupted run failed"
    step_time = (time.perf_counter() - t0) / STEPS
    run_dir, final, report = out / "run", out / "final.safetensors", out / "report.json"
    killed, checked = 0, []
    # Kill points spread over the run: once a target step is logged, after a random part of a step (in the
    # middle of the next step's compute or of the checkpoint save).
    for target in sorted(rng.sample(range(1, STEPS), kills)):
        pid = in_child(train, run_dir, final)
        while progress(run_dir) < target and not os.waitpid(pid, os.WNOHANG)[0]:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 1.0) * step_time)
        os.kill(pid, signal.SIGKILL)
        wait(pid)
        killed += 1
        assert run_child(check_checkpoints, run_dir, report) == 0, "a checkpoint on disk does not load"
        checked.append(json.loads(report.read_text()))
    assert run_child(train, run_dir, final) == 0, "the last resumed run failed"
    assert run_child(compare, ref, final, report) == 0
    return {"kills": killed, "checkpoints_loaded_after_kills": checked, "exact": json.loads(report.read_text())}


# -- save -----------------------------------------------------------------------------------------------------

def save_forever(path: Path, ready: Path) -> None:
    models = MODELS["dit"]
    ready.touch()
    i = 0
    while True:
        qvgen.save_quantized(models[i % 2], path)
        i += 1


def check_quantized(path: Path, report: Path, final_save: bool) -> None:
    outputs = [dit_output(m) for m in MODELS["dit"]]
    got = dit_output(qvgen.load_quantized(qat_toys.ToyDiT(), path))
    which = [i for i, o in enumerate(outputs) if torch.equal(got, o)]
    leftovers = len([p for p in path.parent.iterdir() if p.name.startswith(".")])
    if final_save:
        qvgen.save_quantized(MODELS["dit"][0], path)
        leftovers = len([p for p in path.parent.iterdir() if p.name.startswith(".")])
    write_json(report, {"matches": which, "leftovers": leftovers})


def save_phase(out: Path, kills: int, rng: random.Random) -> dict:
    path, report, results = out / "saves" / "q", out / "report.json", []
    path.parent.mkdir()
    for i in range(kills):
        ready = out / f"ready-{i}"
        pid = in_child(save_forever, path, ready)
        while not ready.exists():
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        wait(pid)
        assert run_child(check_quantized, path, report, i == kills - 1) == 0, "the saved path does not load"
        results.append(json.loads(report.read_text()))
    return {"kills": kills, "after_kill": results}


def main() -> None:
    out, kills, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    MODELS.update(pair=quantized_student(), dit=[quantized_dit(seed=0), quantized_dit(seed=1)])
    result = {}
    (out / "fsize").mkdir(parents=True)
    assert run_child(fsize_phase, out / "fsize", out / "fsize.json") == 0, "the file-size phase failed"
    result["fsize"] = json.loads((out / "fsize.json").read_text())
    t = time.perf_counter()
    result["train"] = train_phase(out, kills, rng)
    result["seconds"] = {"train": time.perf_counter() - t}
    t = time.perf_counter()
    result["save"] = save_phase(out, kills, rng)
    result["seconds"]["save"] = time.perf_counter() - t
    write_json(out / "result.json", result)


if __name__ == "__main__":
    main()
