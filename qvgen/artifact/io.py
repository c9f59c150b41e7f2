"""Save / load quantized models: `model.safetensors` (the state dict) + `qvgen.json` (how to rebuild it)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.artifact.fuse import fuse_activations
from qvgen.storage import atomic_dir
from qvgen.quant.config import QuantConfig
from qvgen.storage.integrity import (check_digests, digests, fsync_path, json_digest, read_safetensors,
                                     text_digest, write_error, write_text_durably)
from qvgen.quant.deployed import DeployedLinear
from qvgen.quant.qlinear import QLinear
from qvgen.quant.swap import QUANTIZED, attach, iter_qlinears, model_config, replace_modules, swap_linears

CHECKPOINT_VERSION = 2  # 2: content hashes in the safetensors metadata
READABLE_VERSIONS = (1, 2)
WEIGHTS_NAME = "model.safetensors"
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # the name save_pretrained uses (diffusers reads it)
WEIGHTS_NAMES = (WEIGHTS_NAME, DIFFUSERS_WEIGHTS_NAME)
META_NAME = "qvgen.json"
# Keys of the safetensors metadata that tie the tensors to qvgen.json.
META_HASH_KEY, META_TEXT_KEY, TENSOR_HASH_KEY = "qvgen.meta_sha256", "qvgen.meta", "qvgen.tensor_sha256"
log = logging.getLogger("qvgen")


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


def layer_plan(model: nn.Module) -> dict[str, Any]:
    """What rebuilding the model's quantized structure takes: its QuantConfig, the quantized layers, each
    one's mode, Phi rank and Phi tensor width (the diffusers backend records this in config.json)."""
    layers = list(iter_qlinears(model))
    return {"quant_config": model_config(model).to_dict(), "modules": [name for name, _ in layers],
            "modes": {name: q.mode for name, q in layers}, "phi_ranks": {name: q.phi_width for name, q in layers},
            "phi_widths": {name: 0 if q.phi_l is None else int(q.phi_l.shape[1]) for name, q in layers}}


def _metadata(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> dict[str, Any]:
    modes = {q.mode for _, q in layers}
    plan = layer_plan(model)
    meta: dict[str, Any] = {
        "format_version": CHECKPOINT_VERSION,
        "quant_config": plan["quant_config"],
        "mode": modes.pop() if len(modes) == 1 else "mixed",
        "modes": plan["modes"],
        "modules": plan["modules"],
        "phi_ranks": plan["phi_ranks"],
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
    }
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "items"):
        # The diffusers backend's entries are rebuilt from the layers, not from the config.
        meta["model_config"] = _json_safe({k: v for k, v in dict(config).items()
                                           if k not in ("quantization_config", "_pre_quantization_dtype")})
    return meta


def save_quantized(model: nn.Module, path: str | os.PathLike, extra_files: dict[str, str] | None = None,
                   weights_name: str = WEIGHTS_NAME) -> Path:
    """Write `path/model.safetensors` (or `weights_name`, one of WEIGHTS_NAMES) and `path/qvgen.json`. A complete, loadable checkpoint is at `path` at
    every instant: the new copy is written and fsynced beside it, then swapped in atomically (see
    `qvgen.storage.atomic_dir`). The safetensors metadata records the sha256 of qvgen.json (and its text) and of
    every tensor, so a config copied from another checkpoint or damaged data fails at load. `extra_files`
    (name -> text, e.g. diffusers' config.json) are written into the same folder, inside the same swap.
    Returns the folder."""
    layers = list(iter_qlinears(model))
    if not layers:
        fail("save_quantized", "model", "a model with QLinear / DeployedLinear layers", "none")
    if weights_name not in WEIGHTS_NAMES:
        fail("save_quantized", "weights_name", f"one of {WEIGHTS_NAMES}", repr(weights_name))
    path = Path(path)
    meta_text = json.dumps(_metadata(model, layers), indent=2)
    tensors = state_for_file(model.state_dict())
    record = {META_HASH_KEY: json_digest(json.loads(meta_text)), META_TEXT_KEY: meta_text,
              TENSOR_HASH_KEY: json.dumps(digests(tensors))}
    if _complete(path):
        atomic_dir.clean(path)  # leftovers of killed saves; kept while they may be the only complete copy
    tmp = atomic_dir.new_tmp(path)
    try:
        _write(tmp / weights_name, tensors, record, meta_text, extra_files or {},
               kept=f"the checkpoint at {path} is unchanged")
        atomic_dir.publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write(file: Path, tensors: dict[str, torch.Tensor], record: dict[str, str], meta_text: str,
           extra_files: dict[str, str], kept: str) -> None:
    tmp = file.parent
    try:
        save_file(tensors, str(file), metadata=record)
        fsync_path(file)
        for name, text in extra_files.items():
            file = tmp / name
            write_text_durably(file, text)
        # qvgen.json last, whole or absent: its presence marks a complete copy.
        file = tmp / (META_NAME + ".part")
        write_text_durably(file, meta_text)
        os.rename(file, tmp / META_NAME)
        fsync_path(tmp)
    except Exception as e:  # a full disk: safetensors reports it as text, Python as OSError
        raise write_error("save_quantized", file, e, kept) from e


def _weights_file(path: Path) -> Path | None:
    return next((path / n for n in WEIGHTS_NAMES if (path / n).is_file()), None)


def _complete(path: Path) -> bool:
    return (path / META_NAME).is_file() and _weights_file(path) is not None


def _json_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Where two JSON values differ, as 'key: a vs b' strings (nested dicts by dotted key)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _json_diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1] or 'value'}: {a!r} (qvgen.json) vs {b!r} (model.safetensors)"]


def _check_tied(path: Path, meta_text: str, state: dict[str, torch.Tensor], record: dict[str, str]) -> None:
    """qvgen.json and the tensors are those written together by save_quantized."""
    op, weights = "load_quantized", _weights_file(path)
    meta = json.loads(meta_text)
    if META_HASH_KEY not in record:
        if isinstance(meta, dict) and meta.get("format_version") != 1:  # no downgrade: 2 always has hashes
            fail(op, str(weights), f"the content hashes that format_version {meta.get('format_version')} "
                 f"(in {path / META_NAME}) requires", "none (the weights were re-saved or replaced)")
        log.warning("load_quantized: %s has no content hashes (written before format_version %d); "
                    "qvgen.json and the tensors are not verified", weights, CHECKPOINT_VERSION)
        return
    # The hash covers qvgen.json's content (canonical JSON), so pretty-printing or CRLF line ends still
    # verify; files written before that recorded the hash of the text, still accepted.
    if record[META_HASH_KEY] not in (json_digest(meta), text_digest(meta_text)):
        try:
            diff = _json_diff(json.loads(meta_text), json.loads(record.get(META_TEXT_KEY, "null")))
        except json.JSONDecodeError:
            diff = []
        fail(op, str(path / META_NAME), f"the qvgen.json saved with {weights} (sha256 {record[META_HASH_KEY][:12]})",
             "a different one: " + ("; ".join(diff[:4]) if diff else "same fields, different text"))
    try:
        recorded = json.loads(record[TENSOR_HASH_KEY])
    except (KeyError, json.JSONDecodeError) as e:
        fail(op, str(weights), "a tensor hash table in its metadata", f"a damaged one ({e})")
    check_digests(op, weights, state, recorded)


def _read(path: Path) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    op = "load_quantized"
    found = atomic_dir.resolve(path, _complete)
    if found is None:
        fail(op, "path", f"a folder written by save_quantized (with {META_NAME} and {WEIGHTS_NAME} or "
             f"{DIFFUSERS_WEIGHTS_NAME})", str(path))
    if found != path:
        log.warning("load_quantized: %s is incomplete (a save was interrupted); loading the newest complete "
                    "copy %s", path, found)
    meta_file = found / META_NAME
    try:
        meta_text = meta_file.read_text(encoding="utf-8")
        meta = json.loads(meta_text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(op, str(meta_file), "a readable JSON file", f"a damaged one ({e})")
    if not isinstance(meta, dict) or meta.get("format_version") not in READABLE_VERSIONS:
        got = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
        fail(op, str(meta_file), f"checkpoint format_version in {READABLE_VERSIONS}", got)
    state, record = read_safetensors(op, _weights_file(found))
    state = {k: _aligned(t) for k, t in state.items()}
    _check_tied(found, meta_text, state, record)
    _check_meta(meta_file, meta, state)
    return found, meta, state


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t, copied when its data is not 64-byte aligned: the file's offsets are only 8-byte aligned, and a CPU
    GEMM takes another code path (other rounding) on unaligned data, so a loaded FP layer would not compute
    bit for bit what the saved one did."""
    return t.clone() if t.numel() and t.data_ptr() % 64 else t


def _check_meta(meta_file: Path, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """qvgen.json's structure; Phi ranks are bounded by the tensors present (no allocation from a number)."""
    op = "load_quantized"
    for key, kind in (("quant_config", dict), ("modes", dict), ("modules", list), ("phi_ranks", dict)):
        if not isinstance(meta.get(key), kind):
            fail(op, f"{meta_file}: {key}", f"a JSON {'object' if kind is dict else 'array'}",
                 type(meta.get(key)).__name__ if key in meta else "missing")
    for name in meta["modules"]:
        if not isinstance(name, str) or name not in meta["modes"] or name not in meta["phi_ranks"]:
            fail(op, f"{meta_file}: modules", "layer names each with a mode and a phi rank", repr(name))
        if meta["modes"][name] not in ("qat", "deploy"):
            fail(op, f"{meta_file}: modes[{name!r}]", "'qat' or 'deploy'", repr(meta["modes"][name]))
        phi = state.get(f"{name}.phi_l" if name else "phi_l")
        width = 0 if phi is None or phi.dim() != 2 else phi.shape[1]
        rank = meta["phi_ranks"][name]
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= width:
            fail(op, f"{meta_file}: phi_ranks[{name!r}]", f"an int in [0, {width}] (the width of the Phi "
                 "tensors present)", repr(rank))


def _instantiate(model_or_class: Any, meta: dict[str, Any]) -> nn.Module:
    if isinstance(model_or_class, nn.Module):
        return model_or_class
    if isinstance(model_or_class, type) and hasattr(model_or_class, "from_config"):
        if "model_config" not in meta:
            fail("load_quantized", "model_or_class", "a model instance (the checkpoint has no model config)",
                 model_or_class.__name__)
        with _empty_weights():  # parameters on meta, filled by the checkpoint's tensors (assigned)
            return model_or_class.from_config(meta["model_config"])
    fail("load_quantized", "model_or_class", "an nn.Module or a class with from_config",
         repr(model_or_class), TypeError)


def _empty_weights() -> Any:
    """A context building modules with their parameters on the meta device and buffers real (non-persistent
    buffers such as rotary tables are not in the checkpoint), or a no-op without accelerate."""
    try:
        from accelerate import init_empty_weights
    except ImportError:
        return contextlib.nullcontext()
    return init_empty_weights(include_buffers=False)


def prepare_layers(model: nn.Module, meta: dict[str, Any], cfg: QuantConfig, widths: dict[str, int]) -> nn.Module:
    """Make model's structure match the checkpoint: same config, modules swapped, modes, Phi ranks (meta's
    "modules", "modes", "phi_ranks"; widths: each layer's Phi tensor width). Deployed layers are built empty, and
    the activations after them fused (as `to_deploy` does)."""
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
        if not isinstance(module, nn.Linear) or (not name and not isinstance(module, QUANTIZED)):
            fail(op, "model", f"an nn.Linear at '{name}' (as in the checkpoint)", type(module).__name__)
    deployed = {n for n in names if meta["modes"][n] == "deploy"}
    swap_linears(model, cfg, [n for n in names if n not in deployed], calibrate=False)
    # Deployed layers are built empty (on the device of the Linear they replace: meta for a model built
    # empty), never through a QLinear: no fp weight is quantized only to be overwritten.
    model = replace_modules(model, lambda name, m: _empty_deployed(m, cfg, widths.get(name, 0))
                            if name in deployed and not isinstance(m, DeployedLinear) else None)
    attach(model, cfg)
    for name, q in iter_qlinears(model):
        if q.mode == "deploy" and meta["modes"][name] == "qat":
            fail(op, "model", f"layer '{name}' in qat mode (as in the checkpoint)", "deploy mode")
        if isinstance(q, QLinear):
            q.set_phi_width(int(meta["phi_ranks"][name]))
    fuse_activations(model)  # structure only: the layers' weights are loaded after this
    return model


def _empty_deployed(linear: nn.Linear, cfg: QuantConfig, width: int) -> DeployedLinear:
    ref = linear.bias if linear.weight is None else linear.weight
    return DeployedLinear(linear.in_features, linear.out_features, linear.bias is not None, cfg,
                          device=ref.device if ref is not None else None,
                          dtype=ref.dtype if ref is not None else None, phi_capacity=int(width))


def phi_widths(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, int]:
    """Each layer's Phi tensor width in a state dict (0 without Phi)."""
    out = {}
    for name in names:
        phi = state.get(f"{name}.phi_l" if name else "phi_l")
        out[name] = 0 if phi is None or phi.dim() != 2 else int(phi.shape[1])
    return out


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path, op: str) -> None:
    """Load every entry of `state` into `model` (strict), assigning the tensors when the model was built on
    the meta device; afterwards no parameter or buffer may be left uninitialised on meta."""
    empty = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    try:
        model.load_state_dict(state, strict=True, assign=empty)
    except RuntimeError as e:
        raise ValueError(f"{op}: checkpoint {source} does not fit the model: {e}") from e
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        fail(op, str(source), "a value for every parameter and buffer of the model",
             f"{len(left)} left uninitialised ({', '.join(left[:4])})")


def restore_quantized(model_or_class: Any, path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by save_quantized (its class unchanged; `qvgen.load_quantized` also gives a
    diffusers model its Quantized<Class>). model_or_class: the FP architecture (or a model already
    quantized with the same config), or a class with `from_config` (diffusers) built from the saved config
    with its parameters on the meta device (host memory: the checkpoint's tensors, assigned, not copied).
    Layers are swapped without calibration, converted to the saved mode, Phi resized to the saved ranks,
    then the state dict is loaded strictly. Returns the model."""
    path, meta, state = _read(Path(path))
    try:
        cfg = QuantConfig.from_dict(meta["quant_config"])
    except (TypeError, ValueError) as e:
        fail("load_quantized", f"{path / META_NAME}: quant_config", "a valid QuantConfig", str(e))
    model = _instantiate(model_or_class, meta)
    model = prepare_layers(model, meta, cfg, phi_widths(state, meta["modules"]))
    load_state_strict(model, state, path, "load_quantized")
    return model


__all__ = ["CHECKPOINT_VERSION", "DIFFUSERS_WEIGHTS_NAME", "WEIGHTS_NAMES", "layer_plan", "load_state_strict",
           "phi_widths", "prepare_layers", "restore_quantized", "save_quantized"]
