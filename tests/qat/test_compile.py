"""torch.compile(fullgraph=True) of a model made of QLinear layers: QAT forward + backward and deploy forward,
with per-sample timesteps, compiled and compared to eager.

The backend is "aot_eager": it runs Dynamo (graph capture, where graph breaks would raise under fullgraph) and
AOTAutograd (the joint forward/backward graph through the custom ops' fake impls and register_autograd) but
skips Inductor's C++ code generation, which takes minutes on a small CPU machine. The custom ops stay opaque
nodes either way, so Inductor would only change the code around them.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn

import qvgen
from qvgen import QLinear

# Compiled and eager run the same ops in the same order on the same inputs (aot_eager does not fuse or
# reorder), so results agree to fp32 rounding of a reordered reduction at most: 1e-5 relative.
RTOL, ATOL = 1e-5, 1e-6


class SmallMLP(nn.Module):
    """Three Linear layers with a residual, odd feature sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(24, 40)
        self.down = nn.Linear(40, 24, bias=False)
        self.out = nn.Linear(24, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.down(torch.nn.functional.gelu(self.up(x))))


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = qvgen.quantize_model(SmallMLP(), qvgen.QuantConfig.preset("w4a4", rank=4))
    # Distinct clips per timestep group, so a wrong per-sample group choice changes the output.
    for _, q in qvgen.iter_qlinears(model):
        with torch.no_grad():
            q.act_quant.clip_lo_logit.uniform_(0.5, 3.0)
            q.act_quant.clip_hi_logit.uniform_(0.5, 3.0)
    return model


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 24, generator=g) * 2.0
    t = torch.tensor([0.0, 487.0, 999.0])  # three different clip groups (50 groups of 20 steps)
    return x, t


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_compile_qat_forward_backward() -> None:
    torch._dynamo.reset()
    eager, comp = _model(0), _model(0)
    x, t = _inputs(1)
    for m in (eager, comp):
        qvgen.set_timesteps(m, t)
    compiled = torch.compile(comp, fullgraph=True, backend="aot_eager")

    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ye, yc = eager(xe), compiled(xc)
    torch.testing.assert_close(yc, ye, rtol=RTOL, atol=ATOL)
    w = torch.randn(ye.shape, generator=torch.Generator().manual_seed(2))
    (ye * w).sum().backward()
    (yc * w).sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=RTOL, atol=ATOL)
    ge, gc = _grads(eager), _grads(comp)
    assert set(gc) == set(ge)
    # Every trainable kind got a gradient: latent weight, LSQ+ scale/zero, clip logits, Phi factors.
    for suffix in ("weight", "weight_quant.scale", "weight_quant.zero", "act_quant.clip_hi_logit", "phi_l",
                   "phi_r"):
        assert any(n.endswith(suffix) for n in gc), suffix
    for name in ge:
        torch.testing.assert_close(gc[name], ge[name], rtol=RTOL, atol=ATOL, msg=name)


def test_compile_per_sample_timesteps_change_output() -> None:
    """The compiled model reads the timestep state at call time (a guard, not a baked-in constant)."""
    torch._dynamo.reset()
    model = _model(3)
    x, t = _inputs(4)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        qvgen.set_timesteps(model, t)
        y1 = compiled(x)
        qvgen.set_timesteps(model, t.flip(0))
        y2 = compiled(x)
        torch.testing.assert_close(y2, model(x), rtol=RTOL, atol=ATOL)
    assert not torch.allclose(y1, y2)


@pytest.mark.parametrize("keep_phi", [False, True])
def test_compile_deploy_forward(keep_phi: bool) -> None:
    torch._dynamo.reset()
    model = _model(5)
    if not keep_phi:
        for _, q in qvgen.iter_qlinears(model):
            q.remove_phi()
    qvgen.to_deploy(model, keep_phi=keep_phi)
    assert all(q.mode == "deploy" for _, q in qvgen.iter_qlinears(model))
    assert all((q.phi_l is not None) == keep_phi for _, q in qvgen.iter_qlinears(model))
    x, t = _inputs(6)
    qvgen.set_timesteps(model, t)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        ye, yc = model(x), compiled(x)
    torch.testing.assert_close(yc, ye, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", ["qat", "deploy"])
@pytest.mark.parametrize("groups,t", [(1, None), (50, 250.0), (50, torch.tensor([3.0, 990.0]))],
                         ids=["one-group", "scalar-t", "per-sample-t"])
def test_compile_single_qlinear_no_graph_break(mode: str, groups: int, t: object) -> None:
    """torch._dynamo.explain reports one graph and zero graph breaks for one QLinear, for a single clip
    group, one timestep for the batch (a 0-d group index) and one timestep per sample."""
    torch._dynamo.reset()
    torch.manual_seed(7)
    layer = QLinear.from_linear(nn.Linear(33, 17), qvgen.QuantConfig.preset("w4a4", rank=0, clip_groups=groups))
    if mode == "deploy":
        layer = layer.to_deploy()
    qvgen.set_timesteps(layer, t)
    x = torch.randn(2, 9, 33)
    with torch.no_grad():
        out = torch._dynamo.explain(layer)(x)
        assert out.graph_break_count == 0, out.break_reasons
        assert out.graph_count == 1
        torch.testing.assert_close(torch.compile(layer, fullgraph=True, backend="aot_eager")(x), layer(x),
                                   rtol=RTOL, atol=ATOL)


def test_compile_deploy_dynamic_shapes_one_graph() -> None:
    """dynamic=True over three token counts: the CPU int8 op traces with symbolic sizes (its fake impl reads
    shapes only), compiles once, and equals eager exactly (the same op on the same inputs)."""
    torch._dynamo.reset()
    torch.manual_seed(11)
    model = qvgen.to_deploy(qvgen.quantize_model(nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 48)),
                                                 qvgen.QuantConfig.preset("w4a4", rank=0)))
    frames = []

    def count(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend=count)
    with torch.no_grad():
        for m in (3, 7, 11):
            x = torch.randn(m, 64)
            assert torch.equal(compiled(x), model(x))
    assert len(frames) == 1  # one graph for every token count: no recompile
