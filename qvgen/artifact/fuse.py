"""Activation fusion at deployment: a projection and the activation after it run as one deployed call.

Here, beside the diffusers backend, because it recognises diffusers' own modules (the method in `qvgen.quant` knows
no diffusers class); `DeployedLinear.forward(x, activation=)` is the method's side of it.

diffusers' feed-forward blocks project and activate in one module: `GELU` (`proj`, then `F.gelu`), the first half
of the FFN of Wan, CogVideoX, HunyuanVideo and Flux. With `proj` a DeployedLinear, the CPU int8 kernel applies
the GELU (tanh approximation) to each output in its epilogue, which saves a read and a write of the block's
largest activation ([tokens, ffn_dim]). Other backends apply it right after the layer (same function).

A fused module keeps its class, children and state dict; only its `forward` is an instance attribute
(`FusedForward`), which calls `proj(x, activation=...)` while `proj` is a DeployedLinear and the class's own
forward otherwise (after PEFT wraps `proj`, the adapter's sum has to come before the activation).
`fuse_activations(model, enabled=False)` gives every module its class's forward back.

Numerics: the fused GELU acts on the layer's output as stored (rounded to its dtype), evaluated in fp32 as
x / (1 + exp(-2u)); it differs from torch's `F.gelu(approximate="tanh")` by at most one unit in the last place of
the output dtype (in bf16, about 1 output in 10^4), and is closer to the exact function where torch's
0.5 x (1 + tanh(u)) cancels (large negative x).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qvgen.quant.deployed import DeployedLinear


class FusedForward:
    """The forward of a fused projection + activation module (an instance attribute, not a submodule)."""

    __slots__ = ("module", "activation")

    def __init__(self, module: nn.Module, activation: str) -> None:
        self.module, self.activation = module, activation

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        proj = self.module.proj
        if isinstance(proj, DeployedLinear) and not args and not kwargs:
            return proj(hidden_states, activation=self.activation)
        return type(self.module).forward(self.module, hidden_states, *args, **kwargs)

    def __getstate__(self) -> tuple:
        return self.module, self.activation

    def __setstate__(self, state: tuple) -> None:
        self.module, self.activation = state

    def __repr__(self) -> str:
        return f"FusedForward(proj + {self.activation})"


def fusable_activation(module: nn.Module) -> str | None:
    """The activation a module applies right after its DeployedLinear `proj`, when fusion keeps its function:
    diffusers' `GELU` with the tanh approximation (its forward is `gelu(proj(x))`)."""
    cls = type(module)
    if (cls.__name__ == "GELU" and cls.__module__.startswith("diffusers.")
            and getattr(module, "approximate", None) == "tanh"
            and isinstance(getattr(module, "proj", None), DeployedLinear)):
        return "gelu_tanh"
    return None


def fuse_activations(model: nn.Module, enabled: bool = True) -> int:
    """Fuse (or, with enabled=False, unfuse) every projection + activation module of `model` whose projection
    is a DeployedLinear; returns how many modules are fused afterwards. Done by `to_deploy` and at load. A module
    whose forward was already replaced on the instance (hooks: diffusers' offloading, accelerate) is left alone."""
    count = 0
    for module in model.modules():
        own = module.__dict__.get("forward")
        fused = isinstance(own, FusedForward)
        if own is not None and not fused:  # a forward set by someone else (a hook): left as it is
            continue
        activation = fusable_activation(module) if enabled else None
        if activation is not None:
            if not fused:
                module.forward = FusedForward(module, activation)
            count += 1
        elif fused:
            del module.forward
    return count


__all__ = ["FusedForward", "fusable_activation", "fuse_activations"]
