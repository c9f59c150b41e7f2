"""diffusers-native loading and saving of quantized models.

A quantized diffusers model becomes an instance of `qvgen.Quantized<Base>` (e.g.
`qvgen.QuantizedWanTransformer3DModel`), a subclass of its diffusers class made once per class, whose
`save_pretrained` writes a qvgen checkpoint (`model.safetensors` + `qvgen.json`, hashed and swapped in
atomically, see qvgen.artifact.io) plus diffusers' `config.json`, and whose `from_pretrained` reads one back, built
on the meta device. Since the class lives in the `qvgen` namespace, `pipe.save_pretrained` records the
component as ["qvgen", "Quantized..."] in model_index.json, and `DiffusionPipeline.from_pretrained` imports
qvgen and loads it by itself.

Loading a qvgen folder with the plain diffusers class fails (there is no diffusion_pytorch_model file),
never giving a model with uninitialised weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.artifact.io import META_NAME, restore_quantized, save_quantized
from qvgen.quant.config import QuantConfig
from qvgen.quant.deployed import DeployedLinear
from qvgen.quant.swap import quantize_linears

PREFIX = "Quantized"
CONFIG_NAME = "config.json"  # diffusers' model config file
_CLASSES: dict[type, type] = {}


class QuantizedModelMixin:
    """The save / load methods a quantized diffusers model class gets (mixed in before its diffusers base)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
                        dtype: torch.dtype | None = None, device_map: Any = None, quantization_config: Any = None,
                        torch_dtype: torch.dtype | None = None, **_: Any) -> nn.Module:
        """Load a folder written by `save_pretrained` (local only). dtype (or the older torch_dtype) sets
        the compute dtype as diffusers does (its _keep_in_fp32_modules stay fp32; the quantized layers keep
        codes and scales exact, see qvgen.quant.deployed); device_map may name one device."""
        op = f"{cls.__name__}.from_pretrained"
        path = Path(pretrained_model_name_or_path) / (subfolder or "")
        if not path.is_dir():
            fail(op, "pretrained_model_name_or_path", "a local folder written by save_pretrained (qvgen does "
                 "not download)", str(path))
        if quantization_config is not None:
            fail(op, "quantization_config", "None (the checkpoint is quantized already; its config is in "
                 f"{META_NAME})", type(quantization_config).__name__)
        if device_map is not None and not isinstance(device_map, (str, torch.device)):
            fail(op, "device_map", "None or one device", repr(device_map))
        model = restore_quantized(cls, path)
        if not isinstance(model, cls):
            fail(op, str(path), f"a checkpoint of {base_class(cls).__name__}", type(model).__name__)
        dtype = dtype if dtype is not None else torch_dtype
        if dtype is not None:
            cast(model, dtype)
        if device_map is not None:
            model.to(device_map)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        **_: Any) -> None:
        """Write the qvgen checkpoint and diffusers' config.json into save_directory (safetensors only; the
        other diffusers options, e.g. variants and sharding, do not apply)."""
        if is_main_process:
            save_quantized(self, save_directory, extra_files={CONFIG_NAME: self.to_json_string()})


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
    if "diffusers" not in sys.modules or isinstance(model, QuantizedModelMixin):
        return
    from diffusers import ModelMixin
    if isinstance(model, ModelMixin) and type(model).__module__.split(".")[0] == "diffusers":
        model.__class__ = quantized_class(type(model))


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


__all__ = ["QuantizedModelMixin", "adopt", "base_class", "cast", "load_quantized", "lookup", "quantize_model",
           "quantized_class"]
