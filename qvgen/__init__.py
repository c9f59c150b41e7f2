"""qvgen: quantization-aware training (QVGen) of video diffusion transformers at W4A4 / W3A3.

The frontend API is imported here; the trainer (`qvgen.train`), demo and CLI are imported on demand, as they
pull in heavier dependencies.
"""

from qvgen import _moved
from qvgen.artifact import backend as _backend
from qvgen.artifact.io import save_quantized
from qvgen.artifact.pretrained import QuantizedModelMixin, load_quantized, quantize_model, to_deploy
from qvgen.quant.config import ARCH_SKIP_PRESETS, QuantConfig
from qvgen.quant.deployed import DeployedLinear
from qvgen.artifact.fuse import fuse_activations
from qvgen.quant.qlinear import QLinear
from qvgen.quant.rank_decay import RankDecay
from qvgen.quant.swap import iter_qlinears
from qvgen.quant.timestep import set_timesteps, timestep_to_group

_moved.install()
_backend.install()  # diffusers' 'qvgen' quantization backend (registered when diffusers loads)


def __getattr__(name: str):
    """qvgen.Quantized<diffusers class> (and ModelMixin), as diffusers resolves model_index.json entries."""
    from qvgen.artifact.pretrained import lookup
    return lookup(name)


__all__ = [
    "ARCH_SKIP_PRESETS", "DeployedLinear", "QLinear", "QuantConfig", "QuantizedModelMixin", "RankDecay",
    "fuse_activations", "iter_qlinears", "load_quantized", "quantize_model", "save_quantized", "set_timesteps", "timestep_to_group",
    "to_deploy",
]
