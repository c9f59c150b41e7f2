"""Training from precomputed shards: streamed, shuffled per epoch, split by rank, exactly resumable; the
end-to-end CLI path precompute -> train (bf16 teacher) -> deployed model."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import qvgen
from qvgen.apps.cli import main
from qvgen.models.loading import load_diffusers_model
from qvgen.data import EpochSampler, LatentShards, shard_data_fn
from qvgen.train import Distiller, TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from tiny_pipeline import tiny  # noqa: E402,F401  (the fixture)

PRE = ["--frames", "9", "--height", "32", "--width", "32", "--fps", "8", "--shard-size", "2", "--no-progress"]

from tiny_pipeline import tiny  # noqa: E402,F401  (fixture)


@pytest.fixture(scope="module")
def shards(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "wan"
    main(["precompute", "--pipeline", str(tiny["wan"]), "--videos", str(tiny["clips"]), "--out", str(out), *PRE])
    return out


def test_epoch_sampler():
    s = EpochSampler(10, 4, seed=3)
    assert s.steps_per_epoch == 2
    e0 = s.global_indices(0) + s.global_indices(1)
    assert len(set(e0)) == 8  # no repeats within an epoch
    assert EpochSampler(10, 4, seed=3).global_indices(1) == s.global_indices(1)  # reproducible
    assert s.global_indices(2) + s.global_indices(3) != e0  # a new shuffle each epoch
    for step in (0, 5):
        parts = [s.indices(step, r, 2) for r in range(2)]
        assert parts[0] + parts[1] == s.global_indices(step) and not set(parts[0]) & set(parts[1])
    with pytest.raises(ValueError, match="global batch"):
        EpochSampler(3, 4, seed=0)


def test_streamed_and_split_by_rank(shards):
    data = LatentShards(shards, max_open=1)
    assert len(data) == 5 and not data._open  # nothing read up front
    for i in range(len(data)):
        data[i]
    assert len(data._open) == 1  # one memory-mapped shard file open at a time
    whole = shard_data_fn(LatentShards(shards), 4, seed=1)(3, None)
    parts = [shard_data_fn(LatentShards(shards), 2, seed=1, rank=r, world=2)(3, None) for r in range(2)]
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), whole[0], rtol=0, atol=0)
    text = torch.cat([p[1]["encoder_hidden_states"] for p in parts])
    assert text.shape == (4, 512, 16) and torch.equal(text, whole[1]["encoder_hidden_states"])
    assert whole[1]["null"]["encoder_hidden_states"].shape == (4, 512, 16)


def _distiller(tiny, shards, out, steps=4):
    teacher = load_diffusers_model(tiny["dit"])
    torch.manual_seed(0)
    student = qvgen.quantize_model(copy.deepcopy(teacher), qvgen.QuantConfig.preset("w4a4", rank=2))
    data_fn = shard_data_fn(LatentShards(shards), 2, seed=5)
    cfg = TrainConfig(steps=steps, batch_size=2, lr=1e-3, warmup=0.0, progress=False, out_dir=str(out),
                      ckpt_every=2, caption_dropout=0.5, seed=5)
    return Distiller(student, teacher.to(torch.bfloat16), None, data_fn, cfg)


def test_resume_from_shards_is_exact(tiny, shards, tmp_path):
    full = _distiller(tiny, shards, tmp_path / "a")
    full.run()
    cut = _distiller(tiny, shards, tmp_path / "b")
    for i in range(2):
        cut.train_step(i)
    cut.save(2)
    resumed = _distiller(tiny, shards, tmp_path / "b")
    resumed.run(resume=True)
    a, b = full.student.state_dict(), resumed.student.state_dict()
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_end_to_end_cli(tiny, shards, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny["dit"]), "--data", str(shards), "--arch", "wan", "--teacher-dtype",
                 "bf16", "--steps", "4", "--rank", "2", "--batch-size", "2", "--out", str(out), "--no-progress"]) == 0
    model = qvgen.load_quantized(load_diffusers_model(tiny["dit"]), out / "quantized")
    assert all(q.mode == "deploy" for _, q in qvgen.iter_qlinears(model))
    x, cond = shard_data_fn(LatentShards(shards), 1, seed=0)(0, None)
    with torch.no_grad():
        y = model(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=cond["encoder_hidden_states"],
                  return_dict=False)[0]
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    with pytest.raises(ValueError, match="layout"):
        main(["train", "--model", str(tiny["dit"]), "--data", str(shards), "--arch", "cogvideox", "--steps", "2",
              "--rank", "0", "--out", str(tmp_path / "x"), "--no-progress"])


def test_resume_refuses_a_replaced_shard_folder(tiny, shards, tmp_path):
    cut = _distiller(tiny, shards, tmp_path / "b")
    cut.train_step(0)
    cut.save(1)
    other = tmp_path / "other"
    main(["precompute", "--pipeline", str(tiny["wan"]), "--videos", str(tiny["clips"]), "--out", str(other),
          "--frames", "9", "--height", "32", "--width", "32", "--fps", "16", "--shard-size", "2", "--no-progress"])
    with pytest.raises(ValueError, match="shard folder was replaced"):
        _distiller(tiny, other, tmp_path / "b").run(resume=True)
