"""Ctrl-C is never swallowed: SIGINT at random moments of training stops it within seconds, at a step
boundary, and a resume continues from the checkpoint it names; `qvgen train` exits 130 with one line."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("interrupt_driver.py")
TRIALS = 12
STOPPED = re.compile(r"training interrupted at step (\d+) of (\d+); the checkpoint of step (\d+) under ")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def test_distiller_stops_at_a_step_boundary_and_resumes(tmp_path):
    proc = subprocess.run([sys.executable, str(DRIVER), str(tmp_path), str(TRIALS), "0"], capture_output=True,
                          text=True, timeout=90, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    expected_start = 0
    for i, t in enumerate(result["trials"]):
        assert t["ready"] and t["exit"] == 130 and t["outcome"] == "interrupted", (i, t)  # never swallowed
        assert t["stopped_s"] < 3.0, (i, t)
        m = STOPPED.match(t["message"])
        assert m, (i, t)  # raised at the step boundary, not from wherever the signal landed
        step, saved = int(m[1]), int(m[3])
        assert t["start"] == expected_start, (i, t)  # resumed from the checkpoint the last trial named
        assert step - 2 < saved <= step and saved % 2 == 0, (i, t)
        expected_start = saved
    double = result["double"]  # the second Ctrl-C ends a step that would block for 30 s
    assert double["exit"] == 130 and double["message"] == "interrupted twice: stopped at once", double
    assert double["stopped_s"] < 2.0, double
    print("ctrl-c driver:", json.dumps({"trials": len(result["trials"]), "seconds": result["seconds"],
                                        "stopped_s": max(t["stopped_s"] for t in result["trials"])}))


def _train(dit: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qvgen", "train", "--model", str(dit), "--out", str(out), "--steps", "40",
            "--ckpt-every", "8", "--rank", "2", "--latent-shape", "1", "4", "4", "--device", "cpu",
            "--no-progress", *extra]


def test_cli_exits_130_in_one_line_and_resumes(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "data"))
    import tiny_pipeline as tp

    dit, out = tp.make_wan_transformer(tmp_path / "dit"), tmp_path / "run"
    proc = subprocess.Popen(_train(dit, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not (out / "train" / "ckpt-last").is_dir():  # published atomically: complete once it appears
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(random.Random(0).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=20)
    assert time.monotonic() - sent < 5.0
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    last = err.strip().splitlines()[-1]
    m = re.match(r"qvgen train: training interrupted at step (\d+) of 40; the checkpoint of step (\d+) under", last)
    assert m, err
    saved = int(m[2])
    before = (out / "train" / "metrics.jsonl").read_text().splitlines()
    resumed = subprocess.run(_train(dit, out, "--resume"), capture_output=True, text=True, env=ENV, cwd=ROOT,
                             timeout=60)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = (out / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in after] == list(range(40))
    assert after[:saved] == before[:saved]  # steps before the checkpoint kept, not retrained from step 0
    assert (out / "quantized" / "qvgen.json").is_file()
