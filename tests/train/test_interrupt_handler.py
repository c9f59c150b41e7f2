"""Ctrl-C in Distiller.run: honoured at the next step boundary (never where the signal lands), the previous
SIGINT handler restored afterwards, an ignored SIGINT left ignored."""

from __future__ import annotations

import os
import signal

import pytest

import qvgen
from qvgen.models import GenericAdapter
from qvgen.train import Distiller, TrainConfig

from conftest import make_pair, toy_data_fn


def _run(tmp_path, signal_at: int):
    student, teacher = make_pair()
    student = qvgen.quantize_model(student, qvgen.QuantConfig.preset("w4a4", rank=0))
    data = toy_data_fn()

    def data_fn(step, g):
        if step == signal_at:
            os.kill(os.getpid(), signal.SIGINT)  # lands inside the step, like a Ctrl-C
        return data(step, g)

    cfg = TrainConfig(steps=4, lr=1e-3, warmup=0.0, progress=False, out_dir=str(tmp_path), ckpt_every=1)
    return Distiller(student, teacher, GenericAdapter(), data_fn, cfg, rank_decay=False).run()


def test_sigint_stops_at_the_next_step_boundary_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match=r"^training interrupted at step 2 of 4; the checkpoint of step 2 "):
        _run(tmp_path, signal_at=1)
    assert signal.getsignal(signal.SIGINT) is before


def test_an_ignored_sigint_stays_ignored(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert _run(tmp_path, signal_at=1)["step"] == 4
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
