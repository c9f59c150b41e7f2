"""Helpers of the reliability tests: the toy models of the trainer and QAT tests, crafted checkpoints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

import qvgen
from qvgen.storage.integrity import text_digest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, rel: str):
    """A test-helper module by file path (the trainer's helpers live in a conftest.py)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_toys = _load("rel_train_toys", "tests/train/conftest.py")
qat_toys = _load("rel_qat_toys", "tests/qat/qat_helpers.py")


def quantized_dit(seed: int = 0, preset: str = "w4a4", rank: int = 4) -> torch.nn.Module:
    """A quantized ToyDiT with every parameter moved off its init (so a wrong load shows)."""
    torch.manual_seed(seed)
    m = qvgen.quantize_model(qat_toys.ToyDiT(), qvgen.QuantConfig.preset(preset, rank=rank, clip_groups=5))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    return m


def dit_output(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        return model(torch.randn(2, 6, 24, generator=g), timestep=torch.tensor([100, 850]))


def quantized_student(seed: int = 3, rank: int = 4, preset: str = "w4a4"):
    """(student, teacher): the trainer tests' toy denoiser pair, the student quantized."""
    student, teacher = train_toys.make_pair(seed=seed)
    return qvgen.quantize_model(student, qvgen.QuantConfig.preset(preset, rank=rank)), teacher


def train_cfg(out_dir, **kw):
    from qvgen.train import TrainConfig

    base = dict(steps=8, lr=3e-3, warmup=0.0, progress=False, out_dir=str(out_dir))
    return TrainConfig(**{**base, **kw})


def rewrite_consistently(folder: Path, edit) -> None:
    """Apply ``edit(meta: dict)`` to qvgen.json and re-record its hash in model.safetensors: a crafted
    checkpoint that passes the content check, to reach the checks behind it."""
    from safetensors import safe_open

    weights = folder / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        record, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads((folder / "qvgen.json").read_text())
    edit(meta)
    text = json.dumps(meta)
    (folder / "qvgen.json").write_text(text)
    record.update({"qvgen.meta_sha256": text_digest(text), "qvgen.meta": text})
    save_file(tensors, str(weights), metadata=record)
