"""The demo's full-precision teacher: a tiny Wan-architecture video DiT trained on sprite clips.

The model is diffusers' ``WanTransformer3DModel`` with a small config, trained from scratch with the
rectified-flow objective (x_t = (1 - s) x0 + s eps, target velocity eps - x0, t = 1000 s) on the procedural
clips of ``qvgen.apps.demo.sprites``. The trained weights are cached under
``~/.cache/qvgen/demo-teacher-<hash>`` (hash of the teacher config, which includes the seed and the step count):
``config.json`` + ``diffusion_pytorch_model.safetensors`` (diffusers' ``save_pretrained`` layout) and
``teacher.json`` (the config and the training log).

The default teacher is shipped (``qvgen/apps/demo/assets/teacher/``, about 1 MB) so the demo and the quality study
start from the same weights on every machine; it was built by

    OMP_NUM_THREADS=1 python -m qvgen.apps.demo.teacher --out qvgen/apps/demo/assets/teacher

(``TeacherConfig()`` defaults, one torch thread). A config without a shipped file is trained and cached on first
use; ``qvgen demo --retrain-teacher`` forces a rebuild into the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from qvgen.apps.demo.sampling import model_velocity
from qvgen.apps.demo.sprites import SpriteConfig, SpriteData
from qvgen.storage import atomic_dir
from qvgen_kernels.errors import fail

TEACHER_FORMAT = 1


@dataclass(frozen=True)
class TeacherConfig:
    """Architecture, data and training recipe of the teacher (all of it enters the cache key)."""

    size: int = 16
    frames: int = 8
    num_layers: int = 4
    num_heads: int = 2
    head_dim: int = 32
    ffn_dim: int = 128
    text_dim: int = 32
    freq_dim: int = 64
    steps: int = 1600
    batch_size: int = 8
    lr: float = 2e-3
    warmup: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ok = isinstance(value, float) and value > 0 if f.type == "float" else (
                isinstance(value, int) and not isinstance(value, bool) and value >= 0)
            if not ok:
                fail("TeacherConfig", f.name, f"a non-negative {f.type}", repr(value))
        for name in ("size", "frames", "num_layers", "num_heads", "head_dim", "ffn_dim", "text_dim", "steps",
                     "batch_size"):
            if getattr(self, name) < 1:
                fail("TeacherConfig", name, "a positive int", getattr(self, name))
        if self.size % 2:
            fail("TeacherConfig", "size", "an even int (patch 2x2)", self.size)

    def sprites(self) -> SpriteConfig:
        """The sprite-data config matching this teacher's geometry and caption width."""
        return SpriteConfig(frames=self.frames, size=self.size, text_dim=self.text_dim)

    def key(self) -> str:
        """Stable short hash of the whole config (the cache key)."""
        blob = json.dumps({"format": TEACHER_FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_teacher(cfg: TeacherConfig) -> torch.nn.Module:
    """A randomly initialised tiny ``WanTransformer3DModel`` (fp32, CPU) for ``cfg``."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(cfg.seed)  # diffusers initialises with the global RNG
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=3, out_channels=3, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=max(32, cfg.size),
    )


def flow_matching_loss(model: torch.nn.Module, x0: torch.Tensor, cond: dict[str, torch.Tensor],
                       generator: torch.Generator) -> torch.Tensor:
    """Rectified-flow loss on clean clips x0: mean((v(x_t, 1000 s) - (eps - x0))^2), s ~ U(0, 1) per sample."""
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    s = torch.rand(x0.shape[0], generator=generator).to(x0.device)
    s_b = s.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - s_b) * x0 + s_b * eps
    return torch.mean((model_velocity(model, x_t, s * 1000.0, cond) - (eps - x0)) ** 2)


def train_teacher(cfg: TeacherConfig, device: torch.device | str = "cpu",
                  log: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train a teacher from scratch; returns the model (eval mode) and its log {loss_curve, seconds, ...}."""
    device = torch.device(device)
    model = build_teacher(cfg).to(device).train()
    data = SpriteData(cfg.sprites(), batch_size=cfg.batch_size, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=1e-4)

    def lr_factor(i: int) -> float:  # linear warmup, then cosine to 5% of the peak
        if i < cfg.warmup:
            return (i + 1) / cfg.warmup
        frac = (i - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(cfg.seed)
    curve: list[tuple[int, float]] = []
    running, start = 0.0, time.perf_counter()
    for i in range(cfg.steps):
        x0, cond, _ = data.batch(gen)
        loss = flow_matching_loss(model, x0, cond, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.detach().item()
        every = max(1, cfg.steps // 20)
        if (i + 1) % every == 0 or i + 1 == cfg.steps:
            n = (i % every) + 1
            curve.append((i + 1, running / n))
            running = 0.0
            if log:
                log(f"teacher step {i + 1}/{cfg.steps}  loss {curve[-1][1]:.4f}")
    info = {"loss_curve": curve, "seconds": time.perf_counter() - start, "device": str(device)}
    return model.eval(), info


def default_cache_root() -> Path:
    """``$QVGEN_CACHE`` or ``~/.cache/qvgen``."""
    return Path(os.environ.get("QVGEN_CACHE", Path.home() / ".cache" / "qvgen"))


def cache_dir_for(cfg: TeacherConfig, root: str | os.PathLike | None = None) -> Path:
    """``<root>/demo-teacher-<key>``, root defaulting to :func:`default_cache_root`."""
    return Path(root if root is not None else default_cache_root()) / f"demo-teacher-{cfg.key()}"


def save_teacher(model: torch.nn.Module, cfg: TeacherConfig, info: dict, path: Path) -> None:
    """Write the teacher atomically: a temp dir in the same parent, then a rename onto ``path``."""
    tmp = atomic_dir.new_tmp(path)  # permissions from the umask, like every folder qvgen writes
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        meta = {"format": TEACHER_FORMAT, "key": cfg.key(), "config": dataclasses.asdict(cfg), **info}
        (tmp / "teacher.json").write_text(json.dumps(meta, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_teacher(path: Path, cfg: TeacherConfig, device: torch.device | str = "cpu"
                 ) -> tuple[torch.nn.Module, dict]:
    """Load a cached teacher; refuses one built from another config (clear error naming the key)."""
    from safetensors.torch import load_file

    meta = json.loads((path / "teacher.json").read_text())
    if meta.get("key") != cfg.key():
        fail("load_teacher", "path", f"a teacher cache with key {cfg.key()}", f"key {meta.get('key')} at {path}")
    model = build_teacher(cfg)  # the architecture is a function of cfg; strict loading checks the weights
    model.load_state_dict(load_file(str(path / "diffusion_pytorch_model.safetensors")), strict=True)
    return model.to(device).eval(), meta


SHIPPED = Path(__file__).resolve().parent / "assets" / "teacher"


def shipped_key() -> str | None:
    """The config key of the shipped teacher (None when the package has none)."""
    meta = SHIPPED / "teacher.json"
    return json.loads(meta.read_text()).get("key") if meta.is_file() else None


def get_teacher(cfg: TeacherConfig, device: torch.device | str = "cpu", cache_root: str | None = None,
                retrain: bool = False, log: Callable[[str], None] | None = None
                ) -> tuple[torch.nn.Module, dict]:
    """The shipped teacher when ``cfg`` is its config, else the cached one, else train and cache it;
    info["cached"] says whether it was loaded. ``retrain`` skips both and rebuilds into the cache."""
    if not retrain and shipped_key() == cfg.key():
        model, meta = load_teacher(SHIPPED, cfg, device)
        return model, {**meta, "cached": True, "shipped": True, "path": str(SHIPPED)}
    path = cache_dir_for(cfg, cache_root)
    if not retrain and (path / "teacher.json").is_file():
        model, meta = load_teacher(path, cfg, device)
        return model, {**meta, "cached": True, "path": str(path)}
    model, info = train_teacher(cfg, device, log)
    save_teacher(model, cfg, info, path)
    return model, {**info, "cached": False, "path": str(path)}


def main(argv: list[str] | None = None) -> None:
    """Train the default teacher (``TeacherConfig()``) and write it to ``--out`` (the shipped file's command)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m qvgen.apps.demo.teacher", description=main.__doc__)
    ap.add_argument("--out", required=True, help="directory to write (replaced atomically)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    cfg = TeacherConfig()
    model, info = train_teacher(cfg, args.device, log=print)
    save_teacher(model.cpu(), cfg, {**info, "torch_threads": torch.get_num_threads(),
                                    "command": "python -m qvgen.apps.demo.teacher --out " + args.out}, Path(args.out))
    print(f"wrote {args.out} ({info['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
