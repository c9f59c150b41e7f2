"""qvgen: quantization-aware training (QVGen) of video diffusion transformers at W4A4 / W3A3.

The frontend API is imported here; the trainer (`qvgen.train`), demo and CLI are imported on demand, as they
pull in heavier dependencies.
"""

from .config import ARCH_SKIP_PRESETS, QuantConfig
from .deployed import DeployedLinear
from .io import load_quantized, save_quantized
from .pretrained import QuantizedModelMixin
from .qlinear import QLinear
from .rank_decay import RankDecay
from .swap import iter_qlinears, quantize_model, to_deploy
from .timestep import set_timesteps, timestep_to_group


def __getattr__(name: str):
    """qvgen.Quantized<diffusers class> (and ModelMixin), as diffusers resolves model_index.json entries."""
    from .pretrained import lookup
    return lookup(name)


__all__ = [
    "ARCH_SKIP_PRESETS", "DeployedLinear", "QLinear", "QuantConfig", "QuantizedModelMixin", "RankDecay",
    "iter_qlinears", "load_quantized", "quantize_model", "save_quantized", "set_timesteps", "timestep_to_group",
    "to_deploy",
]
