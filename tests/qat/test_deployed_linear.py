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


@pytest.mark.parametrize("preset", ["w4a4", "w3a3", "w8a8"])
def test_weights_held_once_and_layout_built_at_load(preset):
    """On the CPU the deployed layout is the checkpoint codes themselves (one copy); it is built at conversion and at
    load (not at the first call), kept across a dtype cast, and the state dict round trip stays bit-identical."""
    from qvgen.apps.demo.metrics import model_bytes
    from qvgen_kernels import ops, registry
    if registry.unavailable_reason("cpu_int8", "cpu") is not None:
        pytest.skip("cpu_int8 unavailable")
    torch.manual_seed(2)
    cfg = QuantConfig.preset(preset, rank=0, clip_groups=1)
    d = QLinear.from_linear(nn.Linear(40, 24), cfg).to_deploy()
    assert d._packed is not None and d._packed.tensors[0] is d.w_packed
    assert ops.checkpoint_codes(d._packed) is d.w_packed
    # every byte: codes once, int32 column sums, fp32 scale / zero / two clips, fp32 bias
    assert model_bytes(d) == d.w_packed.numel() + 4 * 24 + 8 * 24 + 8 + 4 * 24
    sd = {k: v.clone() for k, v in d.state_dict().items()}
    e = DeployedLinear(40, 24, True, cfg, device="meta")
    e.load_state_dict(sd, assign=True)
    assert e._packed is not None and e._packed.tensors[0] is e.w_packed  # built at load
    layout = e._packed
    e.to(torch.bfloat16)
    assert e._packed is layout  # a dtype cast keeps codes and scales, hence the layout
    x = torch.randn(3, 40)
    with torch.no_grad():
        assert torch.equal(e(x.bfloat16()), d.to(torch.bfloat16)(x.bfloat16()))
    again = e.state_dict()
    assert sd.keys() == again.keys() and all(torch.equal(sd[k].to(again[k].dtype), again[k]) for k in sd)
