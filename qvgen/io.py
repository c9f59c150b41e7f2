"""Save / load quantized models: `model.safetensors` (the state dict) + `qvgen.json` (how to rebuild it)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qvgen_kernels.format import fail

from .config import QuantConfig
from .qlinear import QLinear
from .swap import attach, iter_qlinears, model_config, swap_linears

CHECKPOINT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "qvgen.json"


def _json_safe(value: Any) -> Any:
    """A JSON-serialisable copy of a diffusers-style config value (tuples -> lists, other objects -> str)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def state_for_file(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a state dict as contiguous CPU tensors that safetensors accepts: an entry whose
    storage an earlier entry already uses (tied weights, views of one buffer) is cloned apart."""
    out, seen = {}, set()
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[key] = t
    return out


def _metadata(model: nn.Module, layers: list[tuple[str, QLinear]]) -> dict[str, Any]:
    modes = {q.mode for _, q in layers}
    meta: dict[str, Any] = {
        "format_version": CHECKPOINT_VERSION,
        "quant_config": model_config(model).to_dict(),
        "mode": modes.pop() if len(modes) == 1 else "mixed",
        "modes": {name: q.mode for name, q in layers},
        "modules": [name for name, _ in layers],
        "phi_ranks": {name: q.phi_width for name, q in layers},
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
    }
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "items"):
        meta["model_config"] = _json_safe(dict(config))
    return meta


def save_quantized(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `path/model.safetensors` and `path/qvgen.json` atomically (a temporary folder renamed into
    place; an existing folder at `path` is replaced). Returns the folder."""
    layers = list(iter_qlinears(model))
    if not layers:
        fail("save_quantized", "model", "a model with QLinear layers", "none")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(state_for_file(model.state_dict()), str(tmp / WEIGHTS_NAME))
        (tmp / META_NAME).write_text(json.dumps(_metadata(model, layers), indent=2))
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    for name in (META_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            fail("load_quantized", "path", f"a folder written by save_quantized (with {name})", str(path))
    meta = json.loads((path / META_NAME).read_text())
    if meta.get("format_version") != CHECKPOINT_VERSION:
        fail("load_quantized", "path", f"checkpoint format_version {CHECKPOINT_VERSION}",
             meta.get("format_version"))
    return meta, load_file(str(path / WEIGHTS_NAME))


def _instantiate(model_or_class: Any, meta: dict[str, Any]) -> nn.Module:
    if isinstance(model_or_class, nn.Module):
        return model_or_class
    if isinstance(model_or_class, type) and hasattr(model_or_class, "from_config"):
        if "model_config" not in meta:
            fail("load_quantized", "model_or_class", "a model instance (the checkpoint has no model config)",
                 model_or_class.__name__)
        return model_or_class.from_config(meta["model_config"])
    fail("load_quantized", "model_or_class", "an nn.Module or a class with from_config",
         repr(model_or_class), TypeError)


def _prepare(model: nn.Module, meta: dict[str, Any], cfg: QuantConfig) -> None:
    """Make model's structure match the checkpoint: same config, modules swapped, Phi widths, modes."""
    op = "load_quantized"
    existing = model_config(model)
    if existing is not None and existing != cfg:
        diff = ", ".join(f"{k}: {a!r} (model) vs {b!r} (checkpoint)" for k, (a, b) in existing.diff(cfg).items())
        fail(op, "model", "a model quantized with the checkpoint's QuantConfig", f"a different one ({diff})")
    names = meta["modules"]
    extra = sorted(set(n for n, _ in iter_qlinears(model)) - set(names))
    if extra:
        fail(op, "model", "QLinear layers only where the checkpoint has them", f"extra QLinear '{extra[0]}'")
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        if not isinstance(module, nn.Linear) or (not name and not isinstance(module, QLinear)):
            fail(op, "model", f"an nn.Linear at '{name}' (as in the checkpoint)", type(module).__name__)
    swap_linears(model, cfg, names, calibrate=False)
    attach(model, cfg)
    for name, q in iter_qlinears(model):
        mode = meta["modes"][name]
        if q.mode == "deploy" and mode == "qat":
            fail(op, "model", f"layer '{name}' in qat mode (as in the checkpoint)", "deploy mode")
        q.set_phi_width(int(meta["phi_ranks"][name]))
        if mode == "deploy":
            q.to_deploy(keep_phi=True)


def load_quantized(model_or_class: Any, path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by save_quantized. model_or_class: the FP architecture (or a model already
    quantized with the same config), or a class with `from_config` (diffusers) built from the saved config.
    Layers are swapped without calibration, converted to the saved mode, Phi resized to the saved ranks,
    then the state dict is loaded strictly. Returns the model."""
    path = Path(path)
    meta, state = _read(path)
    cfg = QuantConfig.from_dict(meta["quant_config"])
    model = _instantiate(model_or_class, meta)
    _prepare(model, meta, cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"load_quantized: checkpoint {path} does not fit the model: {e}") from e
    return model


__all__ = ["CHECKPOINT_VERSION", "load_quantized", "save_quantized"]
