"""Loading a diffusers model folder for training: the class named by its config, its weights loaded strictly."""

from __future__ import annotations

from pathlib import Path

import torch

from qvgen.storage.paths import inside, read_json
from qvgen_kernels.errors import fail


def _weight_files(path: Path) -> list[Path]:
    """The model's weight files: one safetensors file, a sharded safetensors index, or a torch .bin file."""
    index = path / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "qvgen train").get("weight_map")
        if not isinstance(weight_map, dict):
            fail("qvgen train", str(index), "a 'weight_map' object", type(weight_map).__name__)
        return sorted({inside(path, f, f"{index}: weight_map") for f in weight_map.values()})
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    fail("qvgen train", "--model", "a directory with diffusion_pytorch_model.safetensors (or shards, or .bin)",
         str(path))


def load_diffusers_model(path: str | Path) -> torch.nn.Module:
    """The diffusers class named by ``config.json``'s ``_class_name``, built from the config, weights loaded strictly.

    Equivalent to ``from_pretrained(path)`` in fp32, without needing ``accelerate`` (which diffusers requires
    for models with fp32-pinned modules such as Wan's).
    """
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        fail("qvgen train", "--model", "a diffusers model directory with a config.json", str(path))
    name = read_json(config, "qvgen train").get("_class_name")
    import diffusers

    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_config"):
        fail("qvgen train", "--model", "a config.json whose _class_name is a diffusers model class", repr(name))
    model = cls.from_config(cls.load_config(path))
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(f)))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    model.load_state_dict(state, strict=True)
    return model.float().eval()


__all__ = ["load_diffusers_model"]
