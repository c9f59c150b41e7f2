import json

import pytest
import torch
from torch import nn

from qat_helpers import ToyDiT
from qvgen import (QuantConfig, RankDecay, iter_qlinears, load_quantized, quantize_model, save_quantized,
                   to_deploy)


def _trained(seed=0, rank=4, **kw):
    torch.manual_seed(seed)
    m = quantize_model(ToyDiT(), QuantConfig.preset("w4a4", rank=rank, clip_groups=5, **kw))
    with torch.no_grad():  # move every parameter off its init, so a wrong load shows
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    return m


def _io(seed=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 6, 24, generator=g), torch.tensor([100, 850])


@pytest.mark.parametrize("mode", ["qat", "deploy"])
def test_round_trip_identical(tmp_path, mode):
    m = _trained()
    if mode == "deploy":
        RankDecay(m, decay_end=1.0, total_steps=3).step(3)
        to_deploy(m)
    x, t = _io()
    with torch.no_grad():
        ref = m(x, timestep=t)
    save_quantized(m, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "qvgen.json").read_text())
    assert meta["mode"] == mode and meta["quant_config"]["rank"] == 4
    assert meta["modules"] == [n for n, _ in iter_qlinears(m)]
    torch.manual_seed(99)
    fresh = load_quantized(ToyDiT(), tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(fresh(x, timestep=t), ref)


def test_mid_decay_and_overwrite(tmp_path):
    m = _trained(rank=8)
    RankDecay(m, decay_end=1.0, total_steps=40).step(25)  # Phi width 2, gamma mid-stage
    x, t = _io()
    with torch.no_grad():
        ref = m(x, timestep=t)
    save_quantized(m, tmp_path / "c")
    save_quantized(m, tmp_path / "c")  # replaces the folder atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    fresh = load_quantized(quantize_model(ToyDiT(), QuantConfig.preset("w4a4", rank=8, clip_groups=5)),
                           tmp_path / "c")
    assert all(q.phi_width == 2 for _, q in iter_qlinears(fresh))
    with torch.no_grad():
        assert torch.equal(fresh(x, timestep=t), ref)


def test_mismatches(tmp_path):
    m = _trained()
    save_quantized(m, tmp_path / "c")
    other = quantize_model(ToyDiT(), QuantConfig.preset("w3a3", rank=4, clip_groups=5))
    with pytest.raises(ValueError, match="w_bits"):
        load_quantized(other, tmp_path / "c")
    with pytest.raises(ValueError, match="time_embedder.0"):
        load_quantized(nn.Sequential(nn.Linear(3, 3)), tmp_path / "c")
    with pytest.raises(ValueError, match="size mismatch"):
        load_quantized(ToyDiT(hidden=48), tmp_path / "c")
    with pytest.raises(ValueError, match="path"):
        load_quantized(ToyDiT(), tmp_path / "missing")
    with pytest.raises(TypeError, match="model_or_class"):
        load_quantized(42, tmp_path / "c")


class ConfigDiT(ToyDiT):
    """A diffusers-style model: `config` dict and `from_config`."""

    def __init__(self, dim=24, hidden=40, depth=2):
        super().__init__(dim, hidden, depth)
        self.config = {"dim": dim, "hidden": hidden, "depth": depth}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def test_from_config_class(tmp_path):
    torch.manual_seed(3)
    m = quantize_model(ConfigDiT(hidden=32, depth=1), QuantConfig.preset("w4a8", rank=2, clip_groups=5))
    x, t = _io()
    with torch.no_grad():
        ref = m(x, timestep=t)
    save_quantized(m, tmp_path / "c")
    fresh = load_quantized(ConfigDiT, tmp_path / "c")
    assert fresh.config["hidden"] == 32
    with torch.no_grad():
        assert torch.equal(fresh(x, timestep=t), ref)
