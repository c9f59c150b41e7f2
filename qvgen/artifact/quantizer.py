"""qvgen as a diffusers quantization backend (`quant_method: "qvgen"`), registered on `import qvgen`.

With it the plain diffusers class loads a folder written by `save_pretrained` (its config.json records
`quantization_config`), and `from_pretrained(..., quantization_config=QvgenConfig(...) or qvgen.QuantConfig(...))`
quantizes an FP checkpoint while loading it (round-to-nearest weights, deployed; train it with `qvgen train`
for QVGen quality). diffusers has no registration API: like other third-party backends, qvgen adds itself to
`diffusers.quantizers.auto`'s two mappings, only for the diffusers versions it was tested against.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

import torch
from torch import nn

from diffusers.quantizers.base import DiffusersQuantizer
from diffusers.quantizers.quantization_config import QuantizationConfigMixin

from qvgen_kernels.errors import fail

from qvgen.artifact.fuse import fuse_activations
from qvgen.artifact.io import layer_plan, prepare_layers
from qvgen.artifact.pretrained import adopt, cast, dequantize
from qvgen.quant.config import QuantConfig
from qvgen.quant.deployed import DeployedLinear
from qvgen.quant.qlinear import QLinear
from qvgen.quant.swap import iter_qlinears, quantize_linears, to_deploy

OP = "qvgen quantizer"
PLAN_KEYS = ("modules", "modes", "phi_ranks", "phi_widths")


class QvgenMethod(str, Enum):
    """diffusers reads `quant_method.value`: a str Enum member, as its own backends use."""

    QVGEN = "qvgen"


class QvgenConfig(QuantizationConfigMixin):
    """The diffusers `quantization_config` of qvgen.

    quant_config: a qvgen.QuantConfig (or its dict). modules_to_not_convert: names kept in floating point,
    matched as substrings of a module's qualified name (added to the QuantConfig's own). The layer plan
    (modules, modes, phi_ranks, phi_widths) is filled in by qvgen when it saves a quantized model; a config
    with it describes a pre-quantized checkpoint."""

    def __init__(self, quant_config: QuantConfig | dict | None = None,
                 modules_to_not_convert: list[str] | None = None, **plan: Any) -> None:
        self.quant_method = QvgenMethod.QVGEN
        if quant_config is None:
            quant_config = QuantConfig()
        if isinstance(quant_config, dict):
            quant_config = QuantConfig.from_dict(quant_config)
        if not isinstance(quant_config, QuantConfig):
            fail("QvgenConfig", "quant_config", "a qvgen.QuantConfig or its dict", type(quant_config).__name__,
                 TypeError)
        extra = tuple(modules_to_not_convert or ())
        if extra:
            quant_config = dataclasses.replace(
                quant_config, modules_to_not_convert=quant_config.modules_to_not_convert + extra)
        self.quant_config = quant_config
        self.modules_to_not_convert = list(quant_config.modules_to_not_convert)
        unknown = sorted(set(plan) - set(PLAN_KEYS))
        if unknown:
            fail("QvgenConfig", unknown[0], f"one of quant_config, modules_to_not_convert, {', '.join(PLAN_KEYS)}",
                 "an unknown keyword", TypeError)
        self.plan = dict(plan) if plan else None

    @property
    def pre_quantized(self) -> bool:
        return self.plan is not None

    def to_dict(self) -> dict[str, Any]:
        out = {"quant_method": self.quant_method.value, "quant_config": self.quant_config.to_dict()}
        return {**out, **(self.plan or {})}

    def to_diff_dict(self) -> dict[str, Any]:  # the mixin's __repr__ calls it
        return self.to_dict()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        d = {k: v for k, v in dict(config_dict).items() if k != "quant_method"}
        config = cls(**d)
        return (config, kwargs) if return_unused_kwargs else config

    @classmethod
    def of(cls, model: nn.Module) -> "QvgenConfig":
        """The pre-quantized config describing a quantized model."""
        plan = layer_plan(model)
        return cls(plan.pop("quant_config"), **plan)


class QvgenQuantizer(DiffusersQuantizer):
    """Loads qvgen checkpoints through diffusers' own from_pretrained (codes and scales loaded exactly, never
    cast), or quantizes an FP checkpoint after its weights are loaded."""

    use_keep_in_fp32_modules = True
    requires_calibration = False
    required_packages = None

    def __init__(self, quantization_config: Any, **kwargs: Any) -> None:
        if isinstance(quantization_config, QuantConfig):  # qvgen.QuantConfig passed as is
            quantization_config = QvgenConfig(quantization_config)
        super().__init__(quantization_config, **kwargs)
        self.dtype: torch.dtype | None = None
        if self.pre_quantized and not quantization_config.pre_quantized:
            fail("from_pretrained", "config.json: quantization_config", "qvgen's layer plan (written by "
                 "save_pretrained of a quantized model)", "none")

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and len(set(map(str, device_map.values()))) > 1:
            fail("from_pretrained", "device_map", "one device for the whole model (qvgen does not split or "
                 "offload at load; use enable_group_offload after loading)", repr(device_map))

    def update_torch_dtype(self, torch_dtype: torch.dtype | None) -> torch.dtype | None:
        # diffusers casts every floating tensor to torch_dtype before asking the quantizer about it, which
        # would round the fp32 scales; qvgen applies the dtype itself after loading (keep-in-fp32 modules
        # kept, codes and scales exact). A pre-quantized load therefore records _pre_quantization_dtype None.
        self.dtype = torch_dtype
        return None if self.pre_quantized else torch_dtype

    def check_if_quantized_param(self, model: nn.Module, param_value: torch.Tensor, param_name: str,
                                 state_dict: dict[str, Any], **kwargs: Any) -> bool:
        module, _ = _owner(model, param_name)
        return self.pre_quantized and isinstance(module, (QLinear, DeployedLinear))

    def create_quantized_param(self, model: nn.Module, param_value: torch.Tensor, param_name: str,
                               target_device: Any, *args: Any, **kwargs: Any) -> None:
        # Through the layer's own load_state_dict: exact values (no dtype cast), caches of the layer reset.
        module, name = _owner(model, param_name)
        device = target_device if target_device is not None and str(target_device) != "meta" else "cpu"
        module.load_state_dict({name: param_value.to(device)}, strict=False, assign=True)

    def check_quantized_param_shape(self, param_name: str, current: torch.Tensor, loaded: torch.Tensor) -> bool:
        if current.shape != loaded.shape:
            fail("from_pretrained", param_name, f"shape {tuple(current.shape)}", tuple(loaded.shape))
        return True

    def _process_model_before_weight_loading(self, model: nn.Module, device_map: Any = None,
                                             keep_in_fp32_modules: list[str] | None = None, **kwargs: Any) -> None:
        config = self.quantization_config
        if self.pre_quantized:
            prepare_layers(model, config.plan, config.quant_config, config.plan.get("phi_widths", {}))
            for module in model.modules():  # diffusers loads a layer's tensors one call each: one layout at the end
                if isinstance(module, DeployedLinear):
                    module.defer_prepack(True)
        model.register_to_config(quantization_config=config)

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        config = self.quantization_config
        for module in model.modules():
            if isinstance(module, DeployedLinear):
                module.defer_prepack(False)  # builds the layout, once, with every tensor loaded
        if not self.pre_quantized:
            # Round-to-nearest weights, no Phi, deployed: what from_pretrained users expect of a backend.
            quantize_linears(model, dataclasses.replace(config.quant_config, rank=0))
            to_deploy(model)
            fuse_activations(model)
            self.quantization_config = QvgenConfig.of(model)
            self.pre_quantized = True
            model.register_to_config(quantization_config=self.quantization_config)
        if self.dtype is not None:
            cast(model, self.dtype)
        adopt(model)
        return model

    def _dequantize(self, model: nn.Module) -> nn.Module:
        return dequantize(model)

    @property
    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


def _owner(model: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    path, _, name = param_name.rpartition(".")
    return (model.get_submodule(path) if path else model), name


def attach(model: nn.Module) -> None:
    """Give a quantized diffusers model the quantizer diffusers' own from_pretrained would have attached
    (model.hf_quantizer, is_quantized, config.quantization_config), so that dequantize() and diffusers'
    checks of quantized models work on models quantized by qvgen.quantize_model too."""
    if next(iter_qlinears(model), None) is None or not hasattr(model, "register_to_config"):
        return
    config = QvgenConfig.of(model)
    model.hf_quantizer = QvgenQuantizer(config, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = config.quant_method
    model.register_to_config(quantization_config=config)


def register() -> None:
    """Add the backend to diffusers' mappings (idempotent)."""
    from diffusers.quantizers import auto

    auto.AUTO_QUANTIZER_MAPPING[QvgenMethod.QVGEN.value] = QvgenQuantizer
    auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QvgenMethod.QVGEN.value] = QvgenConfig


__all__ = ["QvgenConfig", "QvgenMethod", "QvgenQuantizer", "attach", "register"]
