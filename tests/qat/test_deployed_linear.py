"""DeployedLinear as a module of its own: the swap, shared layers, layers other code reads `.weight` from,
and an empty (meta-built) layer that was never loaded."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import qvgen
from qvgen import DeployedLinear, QLinear, QuantConfig


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attn(x, x, x, need_weights=False)[0])


def test_weight_readers_skipped_with_reason(caplog):
    torch.manual_seed(0)
    model = WithAttention()
    with caplog.at_level(logging.INFO, logger="qvgen"):
        qvgen.quantize_model(model, QuantConfig.preset("w4a8", rank=0))
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert "attn.out_proj" in caplog.text and "reads out_proj.weight" in caplog.text
    assert isinstance(model.proj, QLinear)
    qvgen.to_deploy(model)
    assert isinstance(model.proj, DeployedLinear)
    assert model(torch.randn(2, 5, 16)).shape == (2, 5, 16)


def test_to_deploy_swaps_modules_and_keeps_sharing():
    torch.manual_seed(1)
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    qvgen.quantize_model(model, QuantConfig.preset("w4a8", rank=0))
    q = model[0]
    assert qvgen.to_deploy(model) is model
    assert isinstance(model[0], DeployedLinear) and model[0] is model[2]
    assert model[0].bias is q.bias  # the bias Parameter is shared, not copied
    assert q.weight is not None  # the QAT layer is left as it was


def test_bare_qlinear_to_deploy_returns_the_deployed_layer():
    q = QLinear.from_linear(nn.Linear(8, 4), QuantConfig.preset("w4a8", rank=0))
    d = qvgen.to_deploy(q)
    assert isinstance(d, DeployedLinear) and d.weight is None and d.qweight is d.w_packed


def test_empty_layer_refuses_to_run():
    d = DeployedLinear(8, 4, cfg=QuantConfig.preset("w4a8", rank=0), device="meta")
    with pytest.raises(ValueError, match="never loaded"):
        d.prepack()
