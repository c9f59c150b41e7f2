"""Loading a diffusers model folder for training, the way diffusers does: the class its config.json names,
through that class's own `from_pretrained` (sharded, .bin or safetensors weights; `subfolder` inside a
pipeline folder)."""

from __future__ import annotations

from pathlib import Path

import torch

from qvgen.storage.paths import inside, read_json
from qvgen_kernels.errors import fail

OP = "qvgen train"


def model_folder(path: str | Path, subfolder: str | None = None) -> Path:
    """The model folder `path/subfolder`, which must hold a config.json; a pipeline root given without a
    subfolder is named in the error with the subfolder to pass."""
    root = Path(path)
    folder = root / subfolder if subfolder else root
    if (folder / "config.json").is_file():
        return folder
    if not subfolder and (root / "model_index.json").is_file():
        hint = next((n for n in ("transformer", "unet") if (root / n / "config.json").is_file()), None)
        fail(OP, "--model", "a diffusers model folder (config.json); this is a pipeline folder: add "
             f"--subfolder {hint or '<component>'}", str(root))
    fail(OP, "--model" if not subfolder else "--subfolder", "a diffusers model folder with a config.json",
         str(folder))


def check_weight_map(folder: Path) -> list[Path]:
    """The shard files a sharded checkpoint's index names, each confined to the model folder: diffusers joins
    them to the folder as written, so an index naming '../x' or '/etc/x' would read outside it."""
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if not index.is_file():
        return []
    weight_map = read_json(index, OP).get("weight_map")
    if not isinstance(weight_map, dict):
        fail(OP, str(index), "a 'weight_map' object", type(weight_map).__name__)
    return sorted({inside(folder, f, f"{index}: weight_map") for f in weight_map.values()})


def load_diffusers_model(path: str | Path, subfolder: str | None = None) -> torch.nn.Module:
    """The diffusers class named by ``config.json``'s ``_class_name``, loaded by its ``from_pretrained`` in fp32
    (its _keep_in_fp32_modules included), in eval mode."""
    folder = model_folder(path, subfolder)
    check_weight_map(folder)
    name = read_json(folder / "config.json", OP).get("_class_name")
    import diffusers

    cls = getattr(diffusers, str(name), None)
    if not isinstance(cls, type) or not issubclass(cls, diffusers.ModelMixin):
        fail(OP, "--model", "a config.json whose _class_name is a diffusers model class", repr(name))
    try:
        model = cls.from_pretrained(folder, torch_dtype=torch.float32)
    except (OSError, EnvironmentError) as e:  # no weights file, or a damaged one
        fail(OP, "--model", "a diffusers model folder with its weights (diffusion_pytorch_model.*)",
             f"{folder} ({e})")
    return model.float().eval()


__all__ = ["check_weight_map", "load_diffusers_model", "model_folder"]
