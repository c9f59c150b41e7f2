"""Progress off a terminal: one-line logs at least every interval (a log file, a CI job), a bar on a terminal,
nothing with progress off; the trainer's run seen through stdout that is not a TTY."""

from __future__ import annotations

import re

import qvgen.progress
from qvgen.models import GenericAdapter
from qvgen.progress import Progress
from qvgen.train import Distiller, TrainConfig

from conftest import make_pair, toy_data_fn


def test_lines_every_interval_first_and_last():
    now, lines = [0.0], []
    p = Progress(10, "distill", every_s=30, tty=False, log=lines.append, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 10.0
        p.update(1, loss="0.5")
    p.phase("checkpoint saved")
    # the first step, then at 40 s, 70 s, 100 s (the last): a 30 s interval at 10 s a step
    assert [ln.split(",")[0] for ln in lines[:4]] == ["[distill] step 1/10", "[distill] step 4/10",
                                                      "[distill] step 7/10", "[distill] step 10/10"]
    assert lines[1] == "[distill] step 4/10, loss 0.5, 40 s elapsed, about 1.0 min left"
    assert "left" not in lines[3] and lines[4] == "[distill] checkpoint saved (1.7 min elapsed)"
    assert len(lines) == 5


def test_resumed_run_counts_time_left_from_its_own_steps():
    now, lines = [0.0], []
    p = Progress(100, "distill", initial=90, every_s=0, tty=False, log=lines.append, clock=lambda: now[0])
    now[0] += 120.0
    p.update(1)  # 2 min for one step after resuming at 90: 9 steps left, 18 min
    assert lines == ["[distill] step 91/100, 2.0 min elapsed, about 18.0 min left"]


def test_silent_when_off_or_on_a_terminal(capsys):
    lines = []
    off = Progress(3, "x", enabled=False, every_s=0, tty=False, log=lines.append)
    bar = Progress(3, "x", every_s=0, tty=True, log=lines.append)
    for p in (off, bar):
        p.update(3)
        p.phase("done")
        p.close()
    assert lines == [] and off.bar is None
    assert "3/3" in capsys.readouterr().err  # the terminal's tqdm bar


def _run(tmp_path, progress):
    student, teacher = make_pair(seed=0)
    cfg = TrainConfig(steps=5, lr=1e-3, warmup=0.0, progress=progress, out_dir=str(tmp_path), ckpt_every=2)
    Distiller(student, teacher, GenericAdapter(), toy_data_fn(), cfg, rank_decay=False).run()


def test_trainer_logs_lines_when_stdout_is_not_a_tty(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(qvgen.progress, "EVERY_S", 0.0)  # a line per step instead of every 30 s
    _run(tmp_path / "on", True)
    out = capsys.readouterr().out  # captured: not a TTY, as under `qvgen train ... > log.txt`
    steps = re.findall(r"^\[distill\] step (\d+)/5, loss [0-9.e+-]+, rank \d+, .* elapsed", out, re.M)
    assert steps == ["1", "2", "3", "4", "5"]
    assert "[distill] checkpoint of step 2 saved" in out and "[distill] checkpoint of step 4 saved" in out
    _run(tmp_path / "off", False)  # --no-progress
    assert capsys.readouterr().out == ""
