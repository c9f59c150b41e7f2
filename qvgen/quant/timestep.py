"""Diffusion timestep -> activation-clip group: one mapping, the same in training and sampling, per sample.

A quantized model holds one small `TimestepState`; every QLinear of the model references that same object,
so setting the timesteps is O(1) regardless of the number of layers. A forward pre-hook on the root module
(installed by `quantize_model`) fills it from the model's `timestep` argument (keyword or positional). The
state keeps one copy of the groups per device and whether they are all equal, both found once per set, so
the layers do no host-device transfer or synchronisation of their own.

Models without a diffusion timestep (an nn.Sequential, an MLP, a standalone QLinear: a forward that takes no
`timestep`) use clip group 0 for every row while no timestep is set, i.e. one clip group. A model whose
forward takes `timestep` (a DiT) must get one: a missing timestep there is an error, not a silent default.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from qvgen_kernels.errors import fail

STATE_ATTR = "_qvgen_timestep_state"


def timestep_to_group(t: Any, num_groups: int, num_train_timesteps: int) -> torch.Tensor:
    """group = clamp(floor(t * G / T), 0, G - 1) per sample; t is a number or a tensor [B] (int or float).

    Returns an int64 tensor [B] ([1] for a scalar) on t's device.
    """
    op = "timestep_to_group"
    for name, v in (("num_groups", num_groups), ("num_train_timesteps", num_train_timesteps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            fail(op, name, "a positive int", repr(v))
    if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
        fail(op, "t", "a number or a tensor [B]", type(t).__name__, TypeError)
    t = torch.as_tensor(t)
    if t.dim() > 1:
        fail(op, "t", "a scalar or a 1-D tensor [B]", f"shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        fail(op, "t", "an integer or floating tensor", t.dtype, TypeError)
    t = t.reshape(-1)
    if t.is_floating_point():
        # Only checked where it is free: on a device it would synchronise, and under torch.compile it is a
        # data-dependent branch (a graph break, an error with fullgraph=True).
        if t.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(torch.isfinite(t).all()):
            fail(op, "t", "finite timesteps", "NaN or inf")
        # float64 so that integral float timesteps map exactly like their integer values.
        g = torch.floor(t.double() * num_groups / num_train_timesteps).long()
    else:
        g = torch.div(t.long() * num_groups, num_train_timesteps, rounding_mode="floor")
    return g.clamp_(0, num_groups - 1)


class TimestepState:
    """The current per-sample clip-group indices of one model (None until timesteps are given).

    `groups` is the tensor as computed (on the timesteps' device); `uniform` says whether all its entries are
    equal (None when unknown: timesteps set inside a torch.compile region); `on(device)` is the per-device copy.
    """

    def __init__(self, num_groups: int, num_train_timesteps: int, default_group: int | None = None) -> None:
        self.num_groups = num_groups
        self.num_train_timesteps = num_train_timesteps
        self.default_group = default_group  # used while no timestep is set (models without a timestep)
        self.groups: torch.Tensor | None = None
        self.uniform: bool | None = None
        self._copies: dict[torch.device, torch.Tensor] = {}

    def set(self, t: Any) -> None:
        self._copies = {}
        self.groups = None if t is None else timestep_to_group(t, self.num_groups, self.num_train_timesteps)
        self.uniform = None
        if self.groups is None or self.groups.numel() == 1:
            self.uniform = self.groups is not None
        elif not torch.compiler.is_compiling():
            # One check per set (a synchronisation only for device timesteps), never one per layer.
            self.uniform = bool((self.groups == self.groups[0]).all())

    def on(self, device: torch.device) -> torch.Tensor | None:
        """The groups on `device`, moved at most once per device per set."""
        groups = self.groups
        if groups is None or groups.device == device:
            return groups
        copy = self._copies.get(device)
        if copy is None:
            copy = groups.to(device)
            self._copies[device] = copy
        return copy

    def __repr__(self) -> str:
        return f"TimestepState(num_groups={self.num_groups}, groups={self.groups})"


def get_state(model: nn.Module) -> TimestepState:
    state = getattr(model, STATE_ATTR, None)
    if not isinstance(state, TimestepState):
        fail("set_timesteps", "model", "a model prepared by qvgen.quantize_model (or a QLinear)",
             type(model).__name__)
    return state


def set_timesteps(model: nn.Module, t: Any) -> None:
    """Select the activation-clip groups for the next forward passes from diffusion timesteps t ([B] or
    scalar, in [0, num_train_timesteps]); None clears them."""
    get_state(model).set(t)


def _timestep_position(forward: Any) -> tuple[int | None, bool]:
    """(positional index of forward's `timestep` parameter or None, whether it takes it by keyword)."""
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):  # no introspectable signature: keyword only, as before
        return None, True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for idx, p in enumerate(params):
        if p.name == "timestep":
            return (idx if p.kind in positional else None), p.kind != inspect.Parameter.POSITIONAL_ONLY
    return None, any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def _timestep_pre_hook(position: int | None, by_keyword: bool, module: nn.Module, args: tuple,
                       kwargs: dict) -> None:
    if by_keyword and "timestep" in kwargs:
        t = kwargs["timestep"]
    elif position is not None and len(args) > position:
        t = args[position]
    else:
        return  # no timestep in this call (e.g. a model whose caller uses set_timesteps): state untouched
    if t is not None:
        get_state(module).set(t)


def attach_state(model: nn.Module, num_groups: int, num_train_timesteps: int) -> TimestepState:
    """Give `model` a TimestepState (kept if one with the same geometry exists) and the timestep pre-hook,
    which finds `timestep` from the signature of model.forward, read once here."""
    state = getattr(model, STATE_ATTR, None)
    if not (isinstance(state, TimestepState) and state.num_groups == num_groups
            and state.num_train_timesteps == num_train_timesteps):
        state = TimestepState(num_groups, num_train_timesteps)
        setattr(model, STATE_ATTR, state)
    position, by_keyword = _timestep_position(model.forward)
    state.default_group = 0 if position is None and not by_keyword else None
    if getattr(model, "_qvgen_hook_handle", None) is None:
        hook = functools.partial(_timestep_pre_hook, position, by_keyword)
        model._qvgen_hook_handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    return state


def row_group_index(groups: TimestepState | torch.Tensor | None, x: torch.Tensor, num_groups: int,
                    op: str) -> torch.Tensor:
    """Clip-table index for the rows of x [B, ..., K], broadcastable to x.shape[:-1].

    `groups` is the model's TimestepState (preferred: its per-device copy and all-equal flag are reused) or
    a group tensor. One group (or all equal) broadcasts to every row; B groups with x.shape[0] == B give
    each sample's rows its own group; anything else is an error. With a single clip group no timestep is
    needed.
    """
    if num_groups == 1:
        return torch.zeros((), dtype=torch.long, device=x.device)
    if isinstance(groups, TimestepState):
        if groups.groups is None and groups.default_group is not None:
            return torch.full((), groups.default_group, dtype=torch.long, device=x.device)
        uniform, groups = groups.uniform, groups.on(x.device)
    else:
        uniform = None
        groups = None if groups is None else groups.to(x.device)
    if groups is None:
        fail(op, "timestep", f"timesteps selecting one of {num_groups} clip groups "
             "(pass timestep= to the model or call qvgen.set_timesteps)", "none set")
    if groups.numel() == 1:
        return groups.reshape(())
    if x.dim() >= 2 and x.shape[0] == groups.numel():
        return groups.reshape((-1,) + (1,) * (x.dim() - 2))
    if uniform is None and not torch.compiler.is_compiling():
        uniform = bool((groups == groups[0]).all())
    if uniform:
        return groups[0]
    fail(op, "timestep", f"one timestep or one per sample (x.shape[0] = {x.shape[0] if x.dim() else None})",
         f"{groups.numel()} different timesteps for x of shape {tuple(x.shape)}")


__all__ = ["TimestepState", "attach_state", "row_group_index", "set_timesteps", "timestep_to_group"]
