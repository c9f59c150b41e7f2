"""A batch holding a non-finite sample is skipped and the sample named, instead of stopping the run."""

from __future__ import annotations

import logging

import torch

import qvgen
from qvgen.models import GenericAdapter
from qvgen.train import Distiller, TrainConfig

from conftest import make_pair, toy_data_fn


def test_nan_sample_is_skipped_and_named(tmp_path, caplog):
    student, teacher = make_pair()
    student = qvgen.quantize_model(student, qvgen.QuantConfig.preset("w4a4", rank=0))
    data = toy_data_fn()

    def data_fn(step, g):
        x0, cond = data(step, g)
        if step == 1:
            x0[1] = float("nan")
        return x0, cond

    cfg = TrainConfig(steps=3, lr=1e-3, warmup=0.0, progress=False, out_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="qvgen.train"):
        Distiller(student, teacher, GenericAdapter(), data_fn, cfg, rank_decay=False).run()
    assert any("step 1 skipped" in r.message and "sample(s) [1]" in r.message for r in caplog.records)
    assert all(bool(torch.isfinite(p).all()) for p in student.parameters())
