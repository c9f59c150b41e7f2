"""Issue item 2: resume refuses another experiment; overrides are explicit, logged and applied."""

from __future__ import annotations

import logging

import pytest

from qvgen.apps.cli import main
from qvgen.models import GenericAdapter
from qvgen.train import Distiller
from qvgen.train import checkpoint as ck

from rel_helpers import quantized_student, train_cfg, train_toys


def _distiller(out, preset="w4a4", rank=4, **cfg):
    student, teacher = quantized_student(rank=rank, preset=preset)
    return Distiller(student, teacher, GenericAdapter(), train_toys.toy_data_fn(), train_cfg(out, **cfg))


@pytest.fixture
def saved(tmp_path):
    _distiller(tmp_path).save(3)
    return tmp_path


@pytest.mark.parametrize("field, value", [
    ("steps", 9), ("seed", 1), ("batch_size", 2), ("warmup", 0.2), ("betas", (0.8, 0.9)), ("eps", 1e-6),
    ("rank_schedule", "linear"), ("caption_dropout", 0.1), ("autocast", "bf16"),
    ("lr", 1e-2), ("weight_decay", 0.1), ("clip_lr", 1e-3), ("max_grad_norm", 0.5)])
def test_a_changed_training_field_is_refused(saved, field, value):
    with pytest.raises(ValueError, match=rf"cfg\.{field}"):
        _distiller(saved, **{field: value}).resume()


@pytest.mark.parametrize("preset, rank, what", [("w3a3", 4, "w_bits"), ("w4a8", 4, "a_bits"), ("w4a4", 2, "rank")])
def test_a_changed_quantization_is_refused(saved, preset, rank, what):
    with pytest.raises(ValueError, match=f"student.*{what}"):
        _distiller(saved, preset=preset, rank=rank).resume()


def test_named_overrides_are_logged_and_applied(saved, caplog):
    d = _distiller(saved, lr=1e-2, weight_decay=0.1, log_every=2)
    with caplog.at_level(logging.INFO, logger="qvgen.train"):
        assert d.resume(override=("lr", "weight_decay")) == 3
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "overriding" in text and "lr: 0.003 (checkpoint) vs 0.01 (now)" in text and "log_every" in text
    other = d.optimizer.param_groups[-1]
    factor = d.scheduler.lr_lambdas[-1](d.scheduler.last_epoch)
    assert other["lr"] == pytest.approx(1e-2 * factor) and other["weight_decay"] == 0.1
    assert d.scheduler.base_lrs[-1] == 1e-2


def test_unknown_override_and_unrecorded_config_are_refused(saved, tmp_path_factory):
    with pytest.raises(ValueError, match="override"):
        _distiller(saved).resume(override=("steps",))
    old = tmp_path_factory.mktemp("old")
    d = _distiller(old)
    ck.save_checkpoint(old, d.student, d.optimizer, d.scheduler, d.decay, 3,
                       extra={"train_config": d.cfg.to_dict()})  # no quant_config: written before it was kept
    with pytest.raises(ValueError, match="QuantConfig"):
        d.resume()


def test_cli_resume_override_needs_resume(tmp_path):
    with pytest.raises(ValueError, match="--resume-override"):
        main(["train", "--model", str(tmp_path), "--resume-override", "lr"])
