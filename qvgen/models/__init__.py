"""Model-family adapters (Wan, CogVideoX, HunyuanVideo, generic) and tiny test configs."""

from qvgen.models.adapters import (
    ADAPTERS, CogVideoXAdapter, GenericAdapter, HunyuanVideoAdapter, ModelAdapter, WanAdapter, adapter_for,
)
from qvgen.models.tiny import ARCHS, TINY_CONFIGS, tiny_latents, tiny_model

__all__ = [
    "ADAPTERS", "ARCHS", "CogVideoXAdapter", "GenericAdapter", "HunyuanVideoAdapter", "ModelAdapter",
    "TINY_CONFIGS", "WanAdapter", "adapter_for", "tiny_latents", "tiny_model",
]
