"""A resume never restarts silently and runs never mix: --resume without a usable checkpoint, a checkpoint
of the other (single / multi-process) format, or remains of a broken one are errors; a fresh run into a
folder starts a clean metrics log; `qvgen train` refuses a non-empty --out without --resume or --overwrite."""

from __future__ import annotations

import json
import shutil

import pytest

from qvgen.models import GenericAdapter
from qvgen.train import Distiller, TrainConfig
from qvgen.train.run_dir import claim_out_dir

from conftest import make_pair, toy_data_fn


def _distiller(out, steps=4) -> Distiller:
    student, teacher = make_pair()
    cfg = TrainConfig(steps=steps, lr=1e-3, warmup=0.0, progress=False, out_dir=str(out), ckpt_every=2)
    return Distiller(student, teacher, GenericAdapter(), toy_data_fn(), cfg, rank_decay=False)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        _distiller(tmp_path).run(resume=True)
    assert _distiller(tmp_path).run(resume="auto")["step"] == 4  # asked: start fresh when there is none


def test_resume_from_broken_checkpoint_is_an_error(tmp_path):
    _distiller(tmp_path).run()
    (tmp_path / "ckpt-last" / "state.pt").unlink()  # what a partly deleted folder looks like
    for resume in (True, "auto"):
        with pytest.raises(ValueError, match="incomplete checkpoint folders.*ckpt-last"):
            _distiller(tmp_path).run(resume=resume)


def test_single_process_run_refuses_a_sharded_checkpoint(tmp_path):
    _distiller(tmp_path / "a").run()
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "ckpt-last", tmp_path / "b" / "dcp-last")  # stands in for torchrun's
    for name in ("meta.json", "state.pt"):
        (tmp_path / "b" / "dcp-last" / name).touch()
    (tmp_path / "b" / "dcp-last" / ".metadata").touch()
    with pytest.raises(ValueError, match="torchrun"):
        _distiller(tmp_path / "b").run(resume="auto")


def test_fresh_run_does_not_mix_metrics(tmp_path):
    _distiller(tmp_path, steps=6).run()
    _distiller(tmp_path, steps=3).run()
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]


def test_bad_resume_value(tmp_path):
    with pytest.raises(ValueError, match="resume"):
        _distiller(tmp_path).run(resume="yes")


def test_non_empty_out_is_refused(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--resume.*--overwrite"):
        claim_out_dir(tmp_path, resume=False, overwrite=False)
    with pytest.raises(ValueError, match="--overwrite"):
        claim_out_dir(tmp_path, resume=True, overwrite=True)
    claim_out_dir(tmp_path, resume=True, overwrite=False)
    assert (tmp_path / "train").exists()
    claim_out_dir(tmp_path, resume=False, overwrite=True)
    assert not (tmp_path / "train").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    claim_out_dir(tmp_path / "new", resume=False, overwrite=False)


def test_cli_refuses_non_empty_out(tmp_path):
    from qvgen.apps.cli import main

    (tmp_path / "quantized").mkdir()
    with pytest.raises(ValueError, match="--out"):
        main(["train", "--model", str(tmp_path), "--out", str(tmp_path), "--device", "cpu"])
