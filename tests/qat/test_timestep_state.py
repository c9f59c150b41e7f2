"""The timestep pre-hook (keyword, positional, absent), the TimestepState device cache and all-equal flag,
and torch.compile(fullgraph=True) of a quantized model called with float timesteps by keyword."""

from __future__ import annotations

import torch
import torch._dynamo
from torch import nn

import qvgen
from qvgen.quant.timestep import TimestepState, row_group_index

# Compiled and eager run the same ops in the same order (aot_eager does not fuse or reorder), and the
# positional / keyword calls are the same computation: fp32 rounding of a reordered reduction at most.
RTOL, ATOL = 1e-5, 1e-6


class TimestepMLP(nn.Module):
    """Two Linear layers; `timestep` is the second parameter, so it can be passed by position or keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(13, 29)
        self.down = nn.Linear(29, 5)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


class NoTimestepMLP(TimestepMLP):
    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


def _model(cls: type, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = qvgen.quantize_model(cls(), qvgen.QuantConfig.preset("w4a4", rank=2))
    for _, q in qvgen.iter_qlinears(model):  # distinct clips per group: a wrong group changes the output
        with torch.no_grad():
            q.act_quant.clip_lo_logit.uniform_(0.5, 3.0)
            q.act_quant.clip_hi_logit.uniform_(0.5, 3.0)
    return model


def _state(model: nn.Module) -> TimestepState:
    return model._qvgen_timestep_state


def test_positional_timestep_sets_groups() -> None:
    model = _model(TimestepMLP, 0)
    x = torch.randn(3, 4, 13, generator=torch.Generator().manual_seed(1))
    t1, t2 = torch.tensor([5.0, 480.5, 999.0]), torch.tensor([710.0, 25.0, 260.0])
    with torch.no_grad():
        y_kw = model(x, timestep=t1)
        assert _state(model).groups.tolist() == [0, 24, 49]
        model(x, timestep=t2)
        y_pos = model(x, t1)  # positional: must not reuse t2's groups
        assert _state(model).groups.tolist() == [0, 24, 49]
        torch.testing.assert_close(y_pos, y_kw, rtol=RTOL, atol=ATOL)
        assert not torch.allclose(model(x, t2), y_kw)


def test_forward_without_timestep_leaves_state_alone() -> None:
    model = _model(NoTimestepMLP, 2)
    qvgen.set_timesteps(model, torch.tensor([100, 900]))
    x = torch.randn(2, 3, 13, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model(x, torch.tensor([0.0, 0.0]))  # `extra`, not a timestep
    assert _state(model).groups.tolist() == [5, 45]


def test_state_device_cache_and_uniform_flag() -> None:
    state = TimestepState(50, 1000)
    state.set(torch.tensor([300, 319, 305]))  # all in group 15
    assert state.uniform is True
    meta = torch.device("meta")
    first = state.on(meta)
    assert first.device == meta and state.on(meta) is first  # moved once per device
    assert state.on(torch.device("cpu")) is state.groups
    x = torch.randn(6, 2, 8)  # 6 rows, 3 timesteps: broadcast only because all are equal
    assert row_group_index(state, x, 50, "test").tolist() == 15
    state.set(torch.tensor([300, 999]))
    assert state.uniform is False and state.on(meta) is not first  # invalidated on set
    state.set(7.0)
    assert state.uniform is True and state.groups.tolist() == [0]
    state.set(None)
    assert state.groups is None and state.on(meta) is None


def test_compile_fullgraph_with_float_timestep_keyword() -> None:
    torch._dynamo.reset()
    eager, comp = _model(TimestepMLP, 4), _model(TimestepMLP, 4)
    compiled = torch.compile(comp, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 4, 13, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for t in (torch.tensor([12.5, 500.25, 987.0]), torch.tensor([640.0, 3.0, 333.3])):
            torch.testing.assert_close(compiled(x, timestep=t), eager(x, timestep=t), rtol=RTOL, atol=ATOL)
            assert _state(comp).groups.tolist() == _state(eager).groups.tolist()
