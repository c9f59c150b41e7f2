"""Atomic checkpoints: round trip, name-keyed optimizer state, crashes mid-write keep the previous one."""

from __future__ import annotations

import os

import pytest
import torch

from qvgen.train import checkpoint as ck
from qvgen.train.optim import build_optimizer, build_scheduler


def _trained(model, steps: int = 2):
    opt = build_optimizer(model, lr=1e-2)
    sched = build_scheduler(opt, 10, warmup=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(2, 3, 1, 2, 2, generator=g)
        loss = model(x, torch.tensor([1.0, 2.0]), {"text": torch.randn(2, 5, generator=g)}).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return opt, sched


class _Decay:
    """Stands in for RankDecay: only its state dict matters here."""

    def __init__(self, last_step):
        self.last_step = last_step

    def state_dict(self):
        return {"last_step": self.last_step}


def test_round_trip(tmp_path, toy_pair):
    model, _ = toy_pair
    opt, sched = _trained(model)
    path = ck.save_checkpoint(tmp_path, model, opt, sched, _Decay(4), step=5, extra={"note": "x"})
    assert path == tmp_path / "ckpt-last" and ck.find_checkpoint(tmp_path) == path
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp folder left
    loaded = ck.load_checkpoint(path)
    assert loaded.step == 5 and loaded.state["rank_decay"] == {"last_step": 4}
    assert loaded.state["extra"] == {"note": "x"}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model_state[k], v)
    assert loaded.state["scheduler"]["last_epoch"] == 2


def test_optimizer_state_by_name_survives_reordering(tmp_path, toy_pair):
    model, _ = toy_pair
    opt, _ = _trained(model)
    saved = ck.optimizer_state_by_name(model, opt)
    assert set(saved["state"]) == {n for n, _ in model.named_parameters()}
    # A rebuilt optimizer listing the parameters in another order gets each state back on its parameter.
    rebuilt = torch.optim.AdamW([{"params": list(model.parameters())[::-1], "name": "all"}], lr=1e-2)
    saved["param_groups"] = [{**saved["param_groups"][0], "params": [n for g in saved["param_groups"]
                                                                      for n in g["params"]]}]
    saved["param_groups"][0]["name"] = "all"
    ck.load_optimizer_state_by_name(model, rebuilt, saved)
    for p in model.parameters():
        assert torch.equal(rebuilt.state[p]["exp_avg"], opt.state[p]["exp_avg"])
        assert torch.equal(rebuilt.state[p]["exp_avg_sq"], opt.state[p]["exp_avg_sq"])


def test_optimizer_state_mismatch_is_an_error(toy_pair):
    model, _ = toy_pair
    opt, _ = _trained(model)
    saved = ck.optimizer_state_by_name(model, opt)
    other = torch.optim.AdamW([{"params": [model.inp.weight]}] * 1, lr=1e-3)
    with pytest.raises(ValueError, match="param groups"):
        ck.load_optimizer_state_by_name(model, other, saved)
    smaller = build_optimizer(model)
    smaller.param_groups[-1]["params"] = smaller.param_groups[-1]["params"][1:]
    with pytest.raises(ValueError, match="mismatch"):
        ck.load_optimizer_state_by_name(model, smaller, saved)


def test_crash_while_writing_keeps_previous(tmp_path, toy_pair, monkeypatch):
    model, _ = toy_pair
    opt, sched = _trained(model)
    ck.save_checkpoint(tmp_path, model, opt, sched, None, step=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.inp.weight.add_(1.0)

    def torn_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path, model, opt, sched, None, step=6)
    monkeypatch.undo()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp folder left
    path = ck.find_checkpoint(tmp_path)
    loaded = ck.load_checkpoint(path)
    assert loaded.step == 3
    assert all(torch.equal(loaded.model_state[k], v) for k, v in before.items())


def test_crash_between_renames_falls_back_to_prev(tmp_path, toy_pair, monkeypatch):
    model, _ = toy_pair
    opt, sched = _trained(model)
    ck.save_checkpoint(tmp_path, model, opt, sched, None, step=3)
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # ckpt-last already moved to ckpt-prev, new one not yet in place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, model, opt, sched, None, step=6)
    monkeypatch.undo()
    path = ck.find_checkpoint(tmp_path)
    assert path == tmp_path / "ckpt-prev" and ck.load_checkpoint(path).step == 3
    # The next save recovers the normal layout.
    ck.save_checkpoint(tmp_path, model, opt, sched, None, step=9)
    assert ck.find_checkpoint(tmp_path) == tmp_path / "ckpt-last"
    assert ck.load_checkpoint(tmp_path / "ckpt-last").step == 9 and not (tmp_path / "ckpt-prev").exists()


def test_incomplete_directory_is_not_a_checkpoint(tmp_path, toy_pair):
    model, _ = toy_pair
    opt, sched = _trained(model)
    ck.save_checkpoint(tmp_path, model, opt, sched, None, step=1)
    (tmp_path / "ckpt-last" / "meta.json").unlink()
    assert ck.find_checkpoint(tmp_path) is None
    with pytest.raises(ValueError, match="complete checkpoint"):
        ck.load_checkpoint(tmp_path / "ckpt-last")
    assert ck.find_checkpoint(tmp_path / "nowhere") is None


class _Tied(torch.nn.Module):
    """Two Linear layers sharing one weight Parameter, and a buffer that views a slice of another."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(7, 7)
        self.b = torch.nn.Linear(7, 7, bias=False)
        self.b.weight = self.a.weight
        self.register_buffer("table", torch.randn(3, 7))
        self.register_buffer("row", self.table[1:])  # overlaps `table`'s storage at an offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))) + self.row.sum()


@pytest.mark.parametrize("quantize", [False, True])
def test_tied_weights_round_trip(tmp_path, quantize):
    torch.manual_seed(11)
    model = _Tied()
    if quantize:
        import qvgen

        model = qvgen.quantize_model(model, qvgen.QuantConfig.preset("w4a4", rank=2, clip_groups=1))
    assert model.a.weight is model.b.weight
    opt = build_optimizer(model, lr=1e-2)
    model(torch.randn(4, 7)).pow(2).mean().backward()
    opt.step()
    path = ck.save_checkpoint(tmp_path, model, opt, None, None, step=1)
    loaded = ck.load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model_state[k], v), k
    assert torch.equal(loaded.model_state["a.weight"], loaded.model_state["b.weight"])


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_checkpoint_folder_follows_umask(tmp_path, toy_pair, umask):
    """Teammates on a shared cluster read each other's checkpoints: the folder gets 0777 minus the umask,
    as diffusers' own folders do (tempfile.mkdtemp would make it 0700 whatever the umask)."""
    model, _ = toy_pair
    opt, sched = _trained(model, steps=1)
    old = os.umask(umask)
    try:
        path = ck.save_checkpoint(tmp_path / "run", model, opt, sched, None, step=1)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask
