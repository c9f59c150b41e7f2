import logging

import pytest
import torch
from torch import nn

from qat_helpers import ToyDiT, rel_err
from qvgen import (QLinear, QuantConfig, RankDecay, iter_qlinears, quantize_model, set_timesteps,
                   timestep_to_group, to_deploy)


def test_timestep_to_group():
    t = torch.tensor([0, 19, 20, 999, 1000, 1500, -3])
    assert timestep_to_group(t, 50, 1000).tolist() == [0, 0, 1, 49, 49, 49, 0]
    assert timestep_to_group(torch.tensor([0.0, 19.99, 20.0, 999.9]), 50, 1000).tolist() == [0, 0, 1, 49]
    assert timestep_to_group(500, 4, 1000).tolist() == [2]
    with pytest.raises(ValueError, match="'t'"):
        timestep_to_group(torch.zeros(2, 3), 50, 1000)
    with pytest.raises(ValueError, match="'t'"):
        timestep_to_group(torch.tensor([float("nan")]), 50, 1000)
    with pytest.raises(ValueError, match="num_groups"):
        timestep_to_group(3, 0, 1000)


def test_quantize_model_swaps_skips_and_logs(caplog):
    torch.manual_seed(0)
    m = ToyDiT()
    with caplog.at_level(logging.INFO, logger="qvgen"):
        quantize_model(m, QuantConfig.preset("w4a4", rank=4, arch="wan_keep_fp32", skip=("proj_out",)))
    names = [n for n, _ in iter_qlinears(m)]
    assert names == ["blocks.0.to_q", "blocks.0.ffn_up", "blocks.0.ffn_down", "blocks.1.to_q",
                     "blocks.1.ffn_up", "blocks.1.ffn_down"]
    assert type(m.proj_out) is nn.Linear and type(m.time_embedder[0]) is nn.Linear
    assert m.qvgen_config.rank == 4
    assert "quantized 6 nn.Linear layers" in caplog.text and "W4A4" in caplog.text
    states = {id(q._qvgen_timestep_state) for _, q in iter_qlinears(m)}
    assert states == {id(m._qvgen_timestep_state)}
    quantize_model(m, QuantConfig.preset("w4a4", rank=4, arch="wan_keep_fp32", skip=("proj_out",)))
    assert len(list(iter_qlinears(m))) == 6
    with pytest.raises(ValueError, match="w_bits"):
        quantize_model(m, QuantConfig.preset("w3a3", rank=4))


def test_shared_linear_and_group_error():
    shared = nn.Linear(8, 8)
    m = nn.Sequential(shared, nn.ReLU(), shared)
    quantize_model(m, QuantConfig(rank=2, clip_groups=1))
    assert isinstance(m[0], QLinear) and m[0] is m[2]
    bad = nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 100))
    with pytest.raises(ValueError, match="layer '1'.*group_size"):
        quantize_model(bad, QuantConfig(w_group_size=64))


def test_pre_hook_reads_timestep_kwarg():
    torch.manual_seed(1)
    m = quantize_model(ToyDiT(), QuantConfig.preset("w4a4", rank=0))
    x = torch.randn(2, 5, 24)
    t = torch.tensor([30, 870])
    with torch.no_grad():
        y = m(x, timestep=t)
    assert m._qvgen_timestep_state.groups.tolist() == [1, 43]
    with torch.no_grad():
        y1 = m(x[1:], timestep=t[1:])
    # Per-sample groups: the second sample alone gives its own result (GEMM blocking: fp32, 1e-5).
    torch.testing.assert_close(y[1:], y1, rtol=1e-5, atol=1e-5)


def test_to_deploy_model_level():
    torch.manual_seed(2)
    m = quantize_model(ToyDiT(), QuantConfig.preset("w4a4", rank=2))
    with pytest.raises(ValueError, match="time_embedder.0"):
        to_deploy(m)
    decay = RankDecay(m, total_steps=4)
    decay.step(4)
    x, t = torch.randn(3, 7, 24), torch.tensor([0, 500, 999])
    with torch.no_grad():
        ref = m(x, timestep=t)
    to_deploy(m)
    assert all(q.mode == "deploy" for _, q in iter_qlinears(m))
    # Fake quant == deployment through the whole stack: fp32, 1e-5 relative (GEMM order only).
    assert rel_err(m(x, timestep=t), ref) <= 1e-5


def test_set_timesteps_requires_quantized_model():
    with pytest.raises(ValueError, match="model"):
        set_timesteps(nn.Linear(2, 2), 3)
