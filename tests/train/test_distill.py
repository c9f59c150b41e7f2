"""The distiller: metrics files, exact resume across rank-decay stages, determinism, input checks."""

from __future__ import annotations

import json

import pytest
import torch

import qvgen
from qvgen.models import GenericAdapter
from qvgen.train import Distiller, TrainConfig
from qvgen.train.data import step_generator
from qvgen.train.metrics import FIELDS

from conftest import make_pair, toy_data_fn


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(steps=6, lr=1e-3, warmup=0.0, progress=False, out_dir=str(tmp_path))
    return TrainConfig(**{**base, **kw})


def test_metrics_and_plot_written(tmp_path, toy_pair):
    student, teacher = toy_pair
    summary = Distiller(student, teacher, GenericAdapter(), toy_data_fn(), _cfg(tmp_path), rank_decay=False).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(6))
    for r in records:
        assert set(r) == set(FIELDS)
        assert r["loss"] > 0 and r["grad_norm"] > 0 and r["rank"] == 0 and r["seconds"] > 0
    assert records[0]["lr"] == 1e-3 and records[-1]["lr"] < 1e-3  # cosine decay, no warmup
    png = (tmp_path / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["step"] == 6 and summary["loss"] == records[-1]["loss"]
    assert summary["checkpoint"] == tmp_path / "ckpt-last"
    assert not teacher.training and student.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_log_every(tmp_path, toy_pair):
    student, teacher = toy_pair
    Distiller(student, teacher, GenericAdapter(), toy_data_fn(), _cfg(tmp_path, steps=7, log_every=3),
              rank_decay=False).run()
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 3, 6]


def _quantized_pair():
    student, teacher = make_pair(seed=3)
    return qvgen.quantize_model(student, qvgen.QuantConfig.preset("w4a4", rank=4)), teacher


class _Interrupt(Exception):
    """Simulates the process dying in the middle of a run."""


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_resume_is_bit_identical(tmp_path, dropout):
    # 12 steps, rank 4: stages of 4 steps (rank 4 -> 2 at step 4, 2 -> 1 at step 8, removal at the end).
    # A checkpoint at 5 and a crash at step 7 put one stage boundary before and one after the resume.
    cfg = _cfg(tmp_path / "a", steps=12, ckpt_every=5, lr=3e-3, warmup=0.2, caption_dropout=dropout,
               decay_end=1.0)  # the paper schedule: stages of 12 // 3 steps
    student, teacher = _quantized_pair()
    Distiller(student, teacher, GenericAdapter(), toy_data_fn(), cfg).run()

    cfg_b = cfg.replace(out_dir=str(tmp_path / "b"))
    data = toy_data_fn()

    def crashing(step, g):
        if step == 7:
            raise _Interrupt
        return data(step, g)

    first, teacher_b = _quantized_pair()
    with pytest.raises(_Interrupt):
        Distiller(first, teacher_b, GenericAdapter(), crashing, cfg_b).run()
    resumed, teacher_c = _quantized_pair()
    distiller = Distiller(resumed, teacher_c, GenericAdapter(), toy_data_fn(), cfg_b)
    distiller.run(resume=True)
    assert distiller.start_step == 5

    want, got = student.state_dict(), resumed.state_dict()
    assert sorted(want) == sorted(got)
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]
    assert all(q.phi_l is None for _, q in qvgen.iter_qlinears(resumed))  # Phi gone at the end
    log_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == list(range(12))  # steps 5, 6 logged once despite the crash
    assert [(r["loss"], r["grad_norm"], r["rank"], r["lr"]) for r in log_a] == \
        [(r["loss"], r["grad_norm"], r["rank"], r["lr"]) for r in log_b]
    assert [r["rank"] for r in log_a] == [4] * 4 + [2] * 4 + [1] * 4


def test_step_generator_is_per_step_and_per_rank():
    a = torch.rand(4, generator=step_generator(1, 5))
    assert torch.equal(a, torch.rand(4, generator=step_generator(1, 5)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(1, 6)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(2, 5)))
    r0 = torch.rand(4, generator=step_generator(1, 5, rank=0, world=2))
    r1 = torch.rand(4, generator=step_generator(1, 5, rank=1, world=2))
    assert not torch.equal(r0, r1)


def test_training_ignores_global_rng(tmp_path):
    results = []
    for i, noise_seed in enumerate((0, 123)):
        student, teacher = make_pair()
        torch.manual_seed(noise_seed)  # must not matter
        Distiller(student, teacher, GenericAdapter(), toy_data_fn(), _cfg(tmp_path / str(i), steps=3),
                  rank_decay=False).run()
        results.append(student.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_bad_inputs(tmp_path, toy_pair):
    student, teacher = toy_pair
    cfg = _cfg(tmp_path)
    with pytest.raises(TypeError, match="cfg"):
        Distiller(student, teacher, GenericAdapter(), toy_data_fn(), {"steps": 3})
    with pytest.raises(TypeError, match="data_fn"):
        Distiller(student, teacher, GenericAdapter(), None, cfg)
    with pytest.raises(TypeError, match="teacher"):
        Distiller(student, "teacher", GenericAdapter(), toy_data_fn(), cfg)
    with pytest.raises(TypeError, match="model"):
        Distiller(student, teacher, None, toy_data_fn(), cfg)  # no adapter known for a plain module
    with pytest.raises(ValueError, match="grad_checkpointing"):
        Distiller(student, teacher, GenericAdapter(), toy_data_fn(), cfg.replace(grad_checkpointing=True),
                  rank_decay=False)
    with pytest.raises(ValueError, match="checkpoint"):
        Distiller(student, teacher, GenericAdapter(), toy_data_fn(), cfg, rank_decay=False).resume()
    Distiller(student, teacher, GenericAdapter(), toy_data_fn(), cfg.replace(steps=1), rank_decay=False).run()
    with pytest.raises(ValueError, match="cfg.steps"):
        Distiller(student, teacher, GenericAdapter(), toy_data_fn(), cfg, rank_decay=False).run(resume=True)
    bad = Distiller(student, teacher, GenericAdapter(), lambda s, g: torch.zeros(2), cfg, rank_decay=False)
    with pytest.raises(TypeError, match="pair"):
        bad.run()
    data = toy_data_fn()
    nan = Distiller(student, teacher, GenericAdapter(), lambda s, g: (data(s, g)[0] * float("nan"), data(s, g)[1]),
                    cfg, rank_decay=False)
    with pytest.raises(FloatingPointError, match="step 0"):
        nan.run()


@pytest.mark.parametrize("field, value", [("steps", 0), ("lr", -1.0), ("betas", (0.9,)), ("warmup", 2.0),
                                          ("autocast", "fp8"), ("target", "noise"), ("ckpt_every", -1),
                                          ("max_grad_norm", 0.0), ("rank_schedule", "step"), ("out_dir", "")])
def test_train_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_train_config_defaults():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.clip_lr, cfg.weight_decay, cfg.betas, cfg.eps) == (3e-5, 1e-2, 1e-4, (0.9, 0.95), 1e-8)
    assert (cfg.warmup, cfg.max_grad_norm, cfg.autocast) == (0.1, 1.0, "auto")
    assert cfg.replace(steps=5).steps == 5 and cfg.to_dict()["betas"] == [0.9, 0.95]


def test_bf16_autocast_on_cpu(tmp_path, toy_pair):
    student, teacher = toy_pair
    summary = Distiller(student, teacher, GenericAdapter(), toy_data_fn(), _cfg(tmp_path, steps=2, autocast="bf16"),
                        rank_decay=False).run()
    assert torch.isfinite(torch.tensor(summary["loss"]))
    assert all(p.dtype == torch.float32 for p in student.parameters())  # autocast, not a cast


def test_low_precision_trainable_student_rejected(tmp_path, toy_pair):
    student, teacher = toy_pair
    student.c_emb.to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"fp32.*'c_emb.weight'.*bfloat16"):
        Distiller(student, teacher, GenericAdapter(), toy_data_fn(), _cfg(tmp_path), rank_decay=False)
    student.c_emb.requires_grad_(False)  # frozen low-precision parameters are not optimised: accepted
    Distiller(student, teacher, GenericAdapter(), toy_data_fn(), _cfg(tmp_path), rank_decay=False)


def test_caption_dropout_function():
    from qvgen.train.data import caption_dropout

    g = torch.Generator().manual_seed(0)
    cond = {"text": torch.randn(3, 5), "ids": torch.tensor([1, 2, 3])}
    null = {"text": torch.full((3, 5), 7.0), "ids": torch.zeros(3, dtype=torch.long)}
    state = g.get_state()
    kept = caption_dropout(0, {**cond, "null": null}, 0.0, g)
    assert set(kept) == {"text", "ids"} and kept["text"] is cond["text"]
    assert torch.equal(g.get_state(), state)  # prob 0: no draw, the step's random stream is unchanged
    assert caption_dropout(0, {**cond, "null": null}, 1.0, g)["text"].eq(7.0).all()
    zeroed = caption_dropout(0, cond, 1.0, g)
    assert torch.equal(zeroed["text"], torch.zeros(3, 5)) and zeroed["ids"] is cond["ids"]  # ints kept
    # The whole batch is dropped or kept together, at about the requested rate.
    dropped = [bool(caption_dropout(0, cond, 0.3, g)["text"].eq(0).all()) for _ in range(2000)]
    assert abs(sum(dropped) / 2000 - 0.3) < 0.04  # binomial sd ~0.010: 4 sd
    with pytest.raises(TypeError, match="null"):
        caption_dropout(0, {**cond, "null": {"text": null["text"]}}, 0.5, g)
    with pytest.raises(ValueError, match="caption_dropout"):
        TrainConfig(caption_dropout=1.5)


def test_caption_dropout_in_training_is_per_step_and_reproducible(tmp_path):
    data = toy_data_fn()

    def with_null(step, g):
        x0, cond = data(step, g)
        return x0, {**cond, "null": {"text": torch.full_like(cond["text"], 9.0)}}

    def run(out):
        student, teacher = make_pair(seed=4)
        seen = []
        student.c_emb.register_forward_pre_hook(lambda m, a: seen.append(bool(a[0].eq(9.0).all())))
        Distiller(student, teacher, GenericAdapter(), with_null, _cfg(out, steps=24, caption_dropout=0.5),
                  rank_decay=False).run()
        return seen, student.state_dict()

    seen1, sd1 = run(tmp_path / "a")
    seen2, sd2 = run(tmp_path / "b")
    assert seen1 == seen2 and 0 < sum(seen1) < len(seen1)  # some steps dropped, same ones each run
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
