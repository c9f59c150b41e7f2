"""Model-level operations: swap nn.Linear -> QLinear, iterate the quantized layers, swap QLinear ->
DeployedLinear for deployment."""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, Union

from torch import nn

from qvgen_kernels.errors import fail

from qvgen.quant.config import QuantConfig
from qvgen.quant.deployed import DeployedLinear
from qvgen.quant.qlinear import QLinear
from qvgen.quant.timestep import STATE_ATTR, attach_state

logger = logging.getLogger("qvgen")

CONFIG_ATTR = "qvgen_config"
QUANTIZED = (QLinear, DeployedLinear)
QuantizedLinear = Union[QLinear, DeployedLinear]

# Parents that read their Linear child's `.weight` directly instead of calling it: a swapped child would be
# bypassed (QAT quantizes nothing) or break them (a DeployedLinear has no weight). Type -> why it is skipped.
WEIGHT_READERS: dict[type, str] = {
    nn.MultiheadAttention: "nn.MultiheadAttention reads out_proj.weight directly (F.multi_head_attention_forward)",
}


def iter_qlinears(model: nn.Module) -> Iterator[tuple[str, QuantizedLinear]]:
    """(qualified name, layer) pairs of the quantized layers, QLinear (QAT) or DeployedLinear, in module
    order (the root itself is named "")."""
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZED):
            yield name, module


def _weight_readers(model: nn.Module) -> dict[int, str]:
    """id of each Linear child of a WEIGHT_READERS parent -> the reason it must stay an nn.Linear."""
    out = {}
    for parent in model.modules():
        reason = next((r for t, r in WEIGHT_READERS.items() if isinstance(parent, t)), None)
        if reason is not None:
            out.update({id(c): reason for c in parent.children() if isinstance(c, nn.Linear)})
    return out


def replace_modules(model: nn.Module, new_for: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    """Replace, at every path, each submodule for which new_for(name, module) gives a module (called once per
    module object, so a shared module stays shared). Returns the model, or the replacement of the root."""
    made: dict[int, nn.Module | None] = {}
    root = None
    # Walked lazily (no list of every module): a replaced module is released as soon as its last path is
    # replaced, so converting layer by layer frees each old layer (an fp32 weight) right after its replacement
    # exists. Setting an existing key while its dict is walked is allowed; the new modules are never visited.
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) not in made:
            made[id(module)] = new_for(name, module)
        new = made[id(module)]
        if new is None:
            continue
        if not name:
            root = new
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return root if root is not None else model


def model_config(model: nn.Module) -> QuantConfig | None:
    """The QuantConfig recorded on a quantized model (or on its QLinears), None when it has none."""
    cfg = getattr(model, CONFIG_ATTR, None)
    if isinstance(cfg, QuantConfig):
        return cfg
    return next((q.cfg for _, q in iter_qlinears(model)), None)


def _check_same_config(op: str, model: nn.Module, cfg: QuantConfig) -> None:
    old = model_config(model)
    if old is not None and old != cfg:
        diff = ", ".join(f"{k}: {a!r} (model) vs {b!r} (given)" for k, a, b in
                         ((k, *v) for k, v in old.diff(cfg).items()))
        fail(op, "cfg", "the QuantConfig the model was quantized with", f"a different one ({diff})")


def swap_linears(model: nn.Module, cfg: QuantConfig, select: Iterable[str] | None, calibrate: bool) -> int:
    """Replace the nn.Linear modules named in `select` (None: all that cfg does not keep, see QuantConfig.keeps) by
    QLinears, in place. A Linear shared by several parents gets one shared QLinear. Returns the count."""
    readers = _weight_readers(model)
    candidates = [(name, m) for name, m in model.named_modules(remove_duplicate=False)
                  if name and isinstance(m, nn.Linear) and not isinstance(m, QUANTIZED)]
    for name, m in candidates:
        if id(m) in readers:
            logger.warning("qvgen: not quantizing '%s': %s", name, readers[id(m)])
    candidates = [(name, m) for name, m in candidates if id(m) not in readers]
    if select is None:
        fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
        chosen = {id(m) for name, m in candidates if not cfg.keeps(name, fp32)}
    else:
        wanted = set(select)
        chosen = {id(m) for name, m in candidates if name in wanted}
    count = 0

    def new_for(name: str, module: nn.Module) -> QLinear | None:
        nonlocal count
        if id(module) not in chosen:
            return None
        count += 1
        try:
            return QLinear.from_linear(module, cfg, calibrate=calibrate)
        except (ValueError, TypeError) as e:
            raise type(e)(f"quantize_model: layer '{name}': {e}") from e

    replace_modules(model, new_for)  # every path to a chosen module, so a shared Linear stays shared
    return count


def attach(model: nn.Module, cfg: QuantConfig) -> None:
    """Record cfg on the model and share one timestep state (set by a forward pre-hook) with every QLinear."""
    setattr(model, CONFIG_ATTR, cfg)
    state = attach_state(model, cfg.clip_groups, cfg.num_train_timesteps)
    for _, q in iter_qlinears(model):
        setattr(q, STATE_ATTR, state)


def quantize_linears(model: nn.Module, cfg: QuantConfig, *, calibrate: bool = True) -> nn.Module:
    """Swap every nn.Linear not matching cfg's skip patterns for a QLinear, in place, and return the model
    (its class unchanged; `qvgen.quantize_model` also gives a diffusers model its Quantized<Class>).

    With calibrate the weight quantizers are initialised and Phi is set from the SVD of W - Q(W). The
    model's `timestep` keyword argument selects the activation-clip groups (forward pre-hook), see
    qvgen.set_timesteps. Quantizing an already-quantized model again requires the same config.
    """
    if not isinstance(model, nn.Module):
        fail("quantize_model", "model", "an nn.Module", type(model).__name__, TypeError)
    if not isinstance(cfg, QuantConfig):
        fail("quantize_model", "cfg", "a QuantConfig", type(cfg).__name__, TypeError)
    if type(model) is nn.Linear:
        fail("quantize_model", "model", "a module containing nn.Linear layers (use QLinear.from_linear for a "
             "single layer)", "an nn.Linear")
    _check_same_config("quantize_model", model, cfg)
    count = swap_linears(model, cfg, None, calibrate)
    attach(model, cfg)
    total = sum(1 for _ in iter_qlinears(model))
    group = "per-channel" if cfg.w_group_size == -1 else f"group {cfg.w_group_size}"
    logger.info("qvgen: quantized %d nn.Linear layers (%d QLinear in total) to W%dA%d, %s, Phi rank %d",
                count, total, cfg.w_bits, cfg.a_bits, group, cfg.rank)
    return model


def to_deploy(model: nn.Module, keep_phi: bool = False) -> nn.Module:
    """Swap every QLinear for its DeployedLinear (packed weights + low-bit kernels), in place, and return the
    model (or, for a bare QLinear, its DeployedLinear). `qvgen.to_deploy` also fuses the activations after the
    deployed projections (`qvgen.artifact.fuse`). Refuses, naming the first layer, while any layer's
    Phi has rank > 0, unless keep_phi."""
    if not keep_phi:
        for name, q in iter_qlinears(model):
            if isinstance(q, QLinear) and q.phi_rank > 0:
                fail("to_deploy", "keep_phi", "True, or every Phi removed by rank decay first (call "
                     "RankDecay.finish() after the training loop)",
                     f"False with layer '{name or type(model).__name__}' still holding Phi of rank {q.phi_rank}")
    # Layer by layer: each QLinear (and its fp32 weight, unless held elsewhere) is released once replaced.
    return replace_modules(model, lambda _, m: m.to_deploy(keep_phi) if isinstance(m, QLinear) else None)


__all__ = ["QUANTIZED", "WEIGHT_READERS", "attach", "iter_qlinears", "model_config", "quantize_linears",
           "replace_modules", "swap_linears", "to_deploy"]
