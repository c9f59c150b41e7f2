"""diffusers-native loading and saving of quantized models.

A quantized diffusers model becomes an instance of `qvgen.Quantized<Base>` (e.g.
`qvgen.QuantizedWanTransformer3DModel`), a subclass of its diffusers class made once per class, whose
`save_pretrained` writes a qvgen checkpoint (`model.safetensors` + `qvgen.json`, hashed and swapped in
atomically, see qvgen.artifact.io) plus diffusers' `config.json`, and whose `from_pretrained` reads one back, built
on the meta device. Since the class lives in the `qvgen` namespace, `pipe.save_pretrained` records the
component as ["qvgen", "Quantized..."] in model_index.json; `DiffusionPipeline.from_pretrained` loads it once
qvgen is imported (diffusers resolves the name in the `qvgen` module; it does not import qvgen by itself).

The folder also loads with the plain diffusers class: its config.json records `quantization_config`
({"quant_method": "qvgen", ...}), which selects qvgen's diffusers backend (qvgen.artifact.quantizer,
registered on `import qvgen`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.artifact.io import DIFFUSERS_WEIGHTS_NAME, META_NAME, layer_plan, restore_quantized, save_quantized
from qvgen.quant.config import QuantConfig
from qvgen.quant.deployed import DeployedLinear
from qvgen.artifact.fuse import fuse_activations
from qvgen.quant import swap
from qvgen.quant.swap import quantize_linears

PREFIX = "Quantized"
CONFIG_NAME = "config.json"  # diffusers' model config file
_CLASSES: dict[type, type] = {}


# Keywords diffusers' loaders pass that qvgen has nothing to do with while they hold these values.
_NEUTRAL = {"provider": None, "sess_options": None, "provider_options": None, "max_memory": None,
            "offload_folder": None, "offload_state_dict": None, "use_safetensors": (None, True),
            "disable_mmap": (None, False), "use_flashpack": (None, False), "output_loading_info": (None, False),
            "low_cpu_mem_usage": (None, True), "variant": None, "save_function": None,
            "safe_serialization": (None, True), "ignore_mismatched_sizes": (None, False)}
# Hub keywords forwarded to huggingface_hub.snapshot_download when the path is a repository id.
_HUB_KEYS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")
# Run on every model adopt() gives a qvgen class (the diffusers backend attaches its quantizer there).
ADOPT_HOOKS: list[Callable[[nn.Module], None]] = []


def _refuse_unknown(op: str, kwargs: dict[str, Any]) -> None:
    """Every keyword qvgen cannot honour fails naming it (a neutral value, e.g. None, is accepted)."""
    for key, value in kwargs.items():
        neutral = _NEUTRAL.get(key, None)
        ok = value in neutral if isinstance(neutral, tuple) else value is neutral
        if not ok:
            expected = "not given" if key not in _NEUTRAL else f"{neutral!r} (qvgen cannot honour another value)"
            fail(op, key, expected, repr(value))


def _one_device(op: str, device_map: Any) -> torch.device | None:
    """device_map as diffusers takes it, when it names one device ("auto": cuda when available, else cpu)."""
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        devices = {str(v) for v in device_map.values()}
        if len(devices) != 1:
            fail(op, "device_map", "one device for the whole model (qvgen does not split or offload at load; "
                 "use enable_group_offload after loading)", repr(device_map))
        device_map = devices.pop()
    if device_map in ("auto", "balanced", "sequential"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device_map if not isinstance(device_map, int) else f"cuda:{device_map}")
    except (RuntimeError, TypeError):
        fail(op, "device_map", "None, 'auto', a device or a dict mapping modules to one device", repr(device_map))


def _download(op: str, repo_id: str, subfolder: str | None, hub: dict[str, Any]) -> Path:
    """A Hub repository's files (only the subfolder's), through huggingface_hub as diffusers fetches them."""
    import huggingface_hub

    patterns = [f"{subfolder}/*"] if subfolder else None
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns,
                                                      **{k: v for k, v in hub.items() if v is not None}))
    except Exception as e:  # offline, unknown repository, no access: one clear error
        raise OSError(f"{op}: '{repo_id}' is not a local folder and could not be fetched from the Hub "
                      f"({type(e).__name__}: {e})") from e


class QuantizedModelMixin:
    """The save / load methods a quantized diffusers model class gets (mixed in before its diffusers base)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
                        dtype: torch.dtype | None = None, device_map: Any = None, quantization_config: Any = None,
                        torch_dtype: torch.dtype | None = None, **kwargs: Any) -> nn.Module:
        """Load a folder written by `save_pretrained` (or a Hub repository holding one, fetched with
        huggingface_hub). dtype (or the older torch_dtype) sets the compute dtype as diffusers does (its
        _keep_in_fp32_modules stay fp32; the quantized layers keep codes and scales exact, see
        qvgen.quant.deployed); device_map may name one device or be "auto". Other diffusers keywords fail
        unless they hold a value qvgen honours (variant=None, low_cpu_mem_usage=True: loading is always on
        meta, ...)."""
        op = f"{cls.__name__}.from_pretrained"
        hub = {k: kwargs.pop(k, None) for k in _HUB_KEYS}
        _refuse_unknown(op, kwargs)
        if quantization_config is not None:
            fail(op, "quantization_config", "None (the checkpoint is quantized already; its config is in "
                 f"{META_NAME})", type(quantization_config).__name__)
        device = _one_device(op, device_map)
        root = Path(pretrained_model_name_or_path)
        if not root.is_dir():
            if root.is_absolute() or str(pretrained_model_name_or_path).count("/") != 1 or root.exists():
                fail(op, "pretrained_model_name_or_path", "a local folder written by save_pretrained, or a Hub "
                     "repository id 'owner/name'", str(root))
            root = _download(op, str(pretrained_model_name_or_path), subfolder, hub)
        path = root / (subfolder or "")
        if not path.is_dir():
            fail(op, "pretrained_model_name_or_path", "a local folder written by save_pretrained", str(path))
        model = restore_quantized(cls, path)
        if not isinstance(model, cls):
            fail(op, str(path), f"a checkpoint of {base_class(cls).__name__}", type(model).__name__)
        dtype = dtype if dtype is not None else torch_dtype
        if dtype is not None:
            cast(model, dtype)
        if device is not None:
            model.to(device)
            model.hf_device_map = {"": str(device)}
        adopt(model)
        model.register_to_config(_name_or_path=str(pretrained_model_name_or_path),
                                 _pre_quantization_dtype=dtype if dtype is not None else torch.float32)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        push_to_hub: bool = False, max_shard_size: int | str | None = None,
                        **kwargs: Any) -> None:
        """Write the qvgen checkpoint (diffusion_pytorch_model.safetensors + qvgen.json, hashed, swapped in
        atomically) and diffusers' config.json with `quantization_config`, so that both this class and the
        plain diffusers class load it. One file: max_shard_size must hold the whole model. push_to_hub
        uploads the folder with huggingface_hub (repo_id, private, token, commit_message, create_pr as in
        diffusers). variant and safe_serialization=False do not apply and fail."""
        op = f"{type(self).__name__}.save_pretrained"
        hub = {k: kwargs.pop(k, None) for k in ("repo_id", "private", "token", "commit_message", "create_pr")}
        _refuse_unknown(op, kwargs)
        if not push_to_hub and any(v is not None for v in hub.values()):
            fail(op, "push_to_hub", f"True with {', '.join(k for k, v in hub.items() if v is not None)}", False)
        if max_shard_size is not None:
            _check_one_shard(op, self, max_shard_size)
        if not is_main_process:
            return
        config = json.loads(self.to_json_string())
        config.pop("_pre_quantization_dtype", None)
        config["quantization_config"] = quantization_config(self)
        save_quantized(self, save_directory, extra_files={CONFIG_NAME: json.dumps(config, indent=2, sort_keys=True)},
                       weights_name=DIFFUSERS_WEIGHTS_NAME)
        if push_to_hub:
            _push(op, self, Path(save_directory), hub)

    def fuse_lora(self, *args: Any, **kwargs: Any) -> None:
        """Refused: merging a LoRA into 4-bit codes would need requantizing the fused weight."""
        fail(f"{type(self).__name__}.fuse_lora", "model", "an unquantized model (a fused LoRA would have to be "
             "requantized; keep the adapter unfused, or call dequantize() first)", "a qvgen-quantized model")

    # diffusers refuses dtype casts of quantized models; qvgen's keep the codes exact and change the compute
    # dtype (docs/diffusers.md, "Deliberate differences").
    def to(self, *args: Any, **kwargs: Any) -> nn.Module:
        with _cast_allowed(self):
            return super().to(*args, **kwargs)

    def half(self) -> nn.Module:
        return self.to(torch.float16)

    def float(self) -> nn.Module:
        return self.to(torch.float32)


class _cast_allowed:
    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.__dict__.get("is_quantized")

    def __enter__(self) -> None:
        if self.was:
            self.model.is_quantized = False

    def __exit__(self, *exc: Any) -> None:
        if self.was:
            self.model.is_quantized = True


def quantization_config(model: nn.Module) -> dict[str, Any]:
    """The `quantization_config` entry of a quantized model's config.json (diffusers' qvgen backend)."""
    plan = layer_plan(model)
    return {"quant_method": "qvgen", **plan}


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}


def _check_one_shard(op: str, model: nn.Module, max_shard_size: int | str) -> None:
    if isinstance(max_shard_size, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?I?B)\s*", max_shard_size.upper())
        if match is None:
            fail(op, "max_shard_size", "an int or a size such as '5GB'", repr(max_shard_size))
        limit = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        limit = int(max_shard_size)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values() if torch.is_tensor(t))
    if total > limit:
        fail(op, "max_shard_size", f"at least the model's {total} bytes (a qvgen checkpoint is one file, "
             "hashed as a whole)", repr(max_shard_size))


def _push(op: str, model: nn.Module, folder: Path, hub: dict[str, Any]) -> None:
    import huggingface_hub

    repo_id = hub["repo_id"] or folder.name
    try:
        repo_id = huggingface_hub.create_repo(repo_id, exist_ok=True, private=hub["private"],
                                              token=hub["token"]).repo_id
        model._upload_folder(folder, repo_id, token=hub["token"], commit_message=hub["commit_message"],
                             create_pr=bool(hub["create_pr"]))
    except Exception as e:  # offline or no access: the local folder is written; say so
        raise OSError(f"{op}: the folder {folder} was written, but pushing it to the Hub repository "
                      f"'{repo_id}' failed ({type(e).__name__}: {e})") from e


def cast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """model's floating tensors to dtype, except in the modules the model keeps in fp32 (diffusers'
    `_keep_in_fp32_modules`, matched on a name component as diffusers does)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())

    def to(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    for name, module in model.named_modules():
        if keep.intersection(name.split(".")):
            continue
        if isinstance(module, DeployedLinear):  # its own _apply keeps codes and scales exact
            module._apply(to, recurse=False)
            continue
        for table in (module._parameters, module._buffers):
            for key, t in table.items():
                if t is not None and key not in keep:
                    if isinstance(t, nn.Parameter):
                        t.data = to(t.data)
                    else:
                        table[key] = to(t)
    return model


def base_class(cls: type) -> type:
    """The diffusers class a quantized class derives from."""
    return next(c for c in cls.__mro__ if c is not cls and c is not QuantizedModelMixin
                and not issubclass(c, QuantizedModelMixin))


def quantized_class(base: type) -> type:
    """qvgen.Quantized<base> (made once per class), in the qvgen namespace so that pipelines record it."""
    if issubclass(base, QuantizedModelMixin):
        return base
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(PREFIX + base.__name__, (QuantizedModelMixin, base),
                   {"__module__": "qvgen", "__doc__": f"{base.__name__} with qvgen quantized layers."})
        _CLASSES[base] = cls
    return cls


def adopt(model: nn.Module) -> None:
    """Give a quantized diffusers model its qvgen class (in place), so that its own and its pipeline's
    save_pretrained write a checkpoint that loads back. Other models (and wrapped ones, e.g. FSDP's
    dynamic classes) are left alone."""
    if "diffusers" not in sys.modules:
        return
    from diffusers import ModelMixin
    if not isinstance(model, ModelMixin):
        return
    if not isinstance(model, QuantizedModelMixin) and type(model).__module__.split(".")[0] == "diffusers":
        model.__class__ = quantized_class(type(model))
    for hook in ADOPT_HOOKS:
        hook(model)


def dequantize(model: nn.Module) -> nn.Module:
    """Every quantized layer back to an nn.Linear with its dequantized weight (plus Phi, if any), and a
    Quantized<Class> back to its diffusers class (what diffusers' model.dequantize() does)."""
    from qvgen.quant.swap import CONFIG_ATTR, iter_qlinears, replace_modules

    layers = {id(q) for _, q in iter_qlinears(model)}
    replace_modules(model, lambda name, m: m.to_linear() if id(m) in layers else None)
    model.__dict__.pop(CONFIG_ATTR, None)
    if isinstance(model, QuantizedModelMixin):
        model.__class__ = base_class(type(model))
    for attr in ("quantization_method",):  # diffusers itself deletes hf_quantizer afterwards
        model.__dict__.pop(attr, None)
    model.is_quantized = False
    return model


def lookup(name: str) -> Any:
    """qvgen.<name> for the names diffusers resolves in a component's library: Quantized<diffusers class>,
    and the base classes it checks loaders against (ModelMixin)."""
    if name != "ModelMixin" and not name.startswith(PREFIX):
        raise AttributeError(f"module 'qvgen' has no attribute '{name}'")
    import diffusers
    if name == "ModelMixin":
        return diffusers.ModelMixin
    if name.startswith(PREFIX):
        base = getattr(diffusers, name[len(PREFIX):], None)
        if isinstance(base, type) and issubclass(base, diffusers.ModelMixin):
            return quantized_class(base)
    raise AttributeError(f"module 'qvgen' has no attribute '{name}'")


def to_deploy(model: nn.Module, keep_phi: bool = False) -> nn.Module:
    """Swap every QLinear for its DeployedLinear (packed weights + low-bit kernels), in place, fuse the activations
    that follow a deployed projection (diffusers' GELU: `qvgen.fuse_activations`), and return the model (or, for a
    bare QLinear, its DeployedLinear). Refuses, naming the first layer, while any layer's Phi has rank > 0, unless
    keep_phi."""
    model = swap.to_deploy(model, keep_phi)
    fuse_activations(model)
    return model


def quantize_model(model: nn.Module, cfg: QuantConfig, *, calibrate: bool = True) -> nn.Module:
    """Swap every nn.Linear not matching cfg's skip patterns for a QLinear, in place, and return the model.

    With calibrate the weight quantizers are initialised and Phi is set from the SVD of W - Q(W). The
    model's `timestep` keyword argument selects the activation-clip groups (forward pre-hook), see
    qvgen.set_timesteps. Quantizing an already-quantized model again requires the same config. A diffusers
    model becomes a Quantized<Class>, so its save_pretrained / from_pretrained round-trip.
    """
    model = quantize_linears(model, cfg, calibrate=calibrate)
    adopt(model)
    return model


def load_quantized(model_or_class: Any, path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by save_quantized. model_or_class: the FP architecture (or a model already
    quantized with the same config), or a class with `from_config` (diffusers) built from the saved config
    with its parameters on the meta device (host memory: the checkpoint's tensors, assigned, not copied).
    Layers are swapped without calibration, converted to the saved mode, Phi resized to the saved ranks,
    then the state dict is loaded strictly; a diffusers model becomes a Quantized<Class>. Returns the model."""
    model = restore_quantized(model_or_class, path)
    adopt(model)
    return model


__all__ = ["ADOPT_HOOKS", "QuantizedModelMixin", "adopt", "base_class", "cast", "dequantize", "load_quantized",
           "lookup", "quantization_config", "quantize_model", "quantized_class", "to_deploy"]
