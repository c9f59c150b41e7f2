"""Issue item 1: a step with non-finite gradients or weights never reaches the weights or a checkpoint."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from qvgen.models import GenericAdapter
from qvgen.train import Distiller
from qvgen.train import checkpoint as ck
from qvgen.train.optim import build_optimizer, clip_gradients

from rel_helpers import quantized_student, train_cfg, train_toys


def _poisoned(student, bad_steps, value):
    """data_fn of the toy pair, plus a hook writing ``value`` into one gradient at ``bad_steps``."""
    data, now = train_toys.toy_data_fn(), {"step": -1}

    def data_fn(step, g):
        now["step"] = step
        return data(step, g)

    def hook(grad):
        if now["step"] in bad_steps:
            grad = grad.clone()
            grad.view(-1)[0] = value
        return grad

    student.out.weight.register_hook(hook)
    return data_fn


def _all_finite(tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _checkpoints_finite(out):
    path = ck.find_checkpoint(out)
    loaded = ck.load_checkpoint(path)
    opt = [v for s in loaded.state["optimizer"]["state"].values() for v in s.values()]
    return loaded, _all_finite(loaded.model_state.values()) and _all_finite(opt)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_one_bad_gradient_is_skipped(tmp_path, caplog, value):
    student, teacher = quantized_student()
    cfg = train_cfg(tmp_path, steps=7, ckpt_every=6)
    with caplog.at_level(logging.WARNING, logger="qvgen.train"):
        Distiller(student, teacher, GenericAdapter(), _poisoned(student, {5}, value), cfg).run()
    assert any("step 5 skipped" in r.getMessage() for r in caplog.records)
    assert _all_finite(student.state_dict().values())
    loaded, finite = _checkpoints_finite(tmp_path)
    assert finite and loaded.step == cfg.steps


def test_repeated_bad_gradients_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    student, teacher = quantized_student()
    cfg = train_cfg(tmp_path, steps=7, ckpt_every=2, max_skipped_steps=2)
    distiller = Distiller(student, teacher, GenericAdapter(), _poisoned(student, set(range(3, 7)), math.nan), cfg)
    with pytest.raises(FloatingPointError, match="max_skipped_steps=2"):
        distiller.run()  # steps 3 and 4 skipped (a checkpoint after 4, weights as after 2), step 5 is the error
    loaded, finite = _checkpoints_finite(tmp_path)
    assert finite and loaded.step == 4


def test_an_update_that_overflows_stops_before_any_save(tmp_path):
    student, teacher = quantized_student()
    cfg = train_cfg(tmp_path, steps=6, ckpt_every=1)
    distiller = Distiller(student, teacher, GenericAdapter(), train_toys.toy_data_fn(), cfg)
    calls = []

    def overflow(optimizer, args, kwargs):  # the update of step 3 overflows fp32
        calls.append(1)
        if len(calls) == 4:
            with torch.no_grad():
                student.inp.weight[0, 0] = float("inf")

    distiller.optimizer.register_step_post_hook(overflow)
    with pytest.raises(FloatingPointError, match="inp.weight"):
        distiller.run()
    loaded, finite = _checkpoints_finite(tmp_path)
    assert finite and loaded.step == 3


def test_save_refuses_non_finite_state_and_keeps_the_previous(tmp_path):
    model, _ = train_toys.make_pair()
    opt = build_optimizer(model, lr=1e-2)
    ck.save_checkpoint(tmp_path, model, opt, None, None, step=3)
    with torch.no_grad():
        model.inp.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="inp.weight"):
        ck.save_checkpoint(tmp_path, model, opt, None, None, step=6)
    loaded = ck.load_checkpoint(ck.find_checkpoint(tmp_path))
    assert loaded.step == 3 and _all_finite(loaded.model_state.values())


def test_clip_leaves_gradients_alone_when_the_norm_is_not_finite():
    a, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    a.grad, b.grad = torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([3.0, 4.0])
    assert math.isnan(clip_gradients([a, b], 1.0))
    assert torch.equal(b.grad, torch.tensor([3.0, 4.0]))  # not scaled by NaN
