"""Procedural moving-sprite clips: the demo's offline video data set.

Each clip shows 1-2 objects of one class: a shape (circle, square, triangle) of one colour moving in one
principal direction (left, right, up, down), with small random jitter in speed and a perpendicular velocity
component, bouncing elastically off the walls. The class id is the "caption": a fixed random embedding table
(seeded) maps it to ``encoder_hidden_states`` of shape (B, L, text_dim). Pixels are the latent (no VAE):
clips are (C=3, F, H, W) in [-1, 1], background -1. Everything is deterministic from a ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qvgen_kernels.errors import fail

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # RGB in [0, 1]
    "red": (1.0, 0.15, 0.15),
    "green": (0.15, 1.0, 0.2),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (1.0, 0.9, 0.1),
}
DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0)}
NUM_CLASSES = len(SHAPES) * len(COLOURS) * len(DIRECTIONS)


@dataclass(frozen=True)
class SpriteConfig:
    """Geometry of the clips and of the caption embedding.

    frames/size: clip length and square frame side (16 or 32). max_objects: 1 or 2 objects per clip.
    text_len/text_dim: shape of the per-class caption embedding. embed_seed: seed of the embedding table.
    """

    frames: int = 8
    size: int = 16
    max_objects: int = 2
    text_len: int = 4
    text_dim: int = 32
    embed_seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("frames", "size", "text_len", "text_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail("SpriteConfig", name, "a positive int", repr(value))
        if self.size < 8:
            fail("SpriteConfig", "size", "an int >= 8", self.size)
        if self.max_objects not in (1, 2):
            fail("SpriteConfig", "max_objects", "1 or 2", repr(self.max_objects))


def class_name(label: int) -> str:
    """Human-readable caption of a class id, e.g. ``"red square moving left"``."""
    shape, colour, direction = decode_label(label)
    return f"{colour} {shape} moving {direction}"


def decode_label(label: int) -> tuple[str, str, str]:
    """Class id -> (shape, colour, direction); ids are shape-major."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_CLASSES:
        fail("decode_label", "label", f"an int in [0, {NUM_CLASSES})", repr(label))
    n_col, n_dir = len(COLOURS), len(DIRECTIONS)
    shape = SHAPES[label // (n_col * n_dir)]
    colour = list(COLOURS)[(label // n_dir) % n_col]
    direction = list(DIRECTIONS)[label % n_dir]
    return shape, colour, direction


def _bounce(p: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Fold unconstrained positions into [lo, hi] by elastic reflection (a triangle wave)."""
    span = hi - lo
    u = torch.remainder(p - lo, 2 * span)
    return lo + torch.where(u > span, 2 * span - u, u)


def _shape_mask(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Soft coverage in [0, 1] of a shape of radius r centred at the origin (1-pixel anti-aliased edge)."""
    if shape == "circle":
        dist = torch.sqrt(dx * dx + dy * dy) - r
    elif shape == "square":
        dist = torch.maximum(dx.abs(), dy.abs()) - r
    else:  # upward triangle (image y grows downwards): apex (0, -r), base corners (+-r, r)
        slope = math.sqrt(5.0)  # the slanted sides have unit normals (+-2, -1)/sqrt(5)
        dist = torch.maximum(dy - r, (2 * dx.abs() - dy - r) / slope)
    return (0.5 - dist).clamp(0.0, 1.0)


def render_clip(label: int, generator: torch.Generator, cfg: SpriteConfig = SpriteConfig()) -> torch.Tensor:
    """One clip of class ``label``: float32 (3, F, H, W) in [-1, 1], drawn with ``generator`` only."""
    shape, colour, direction = decode_label(label)
    size, frames = cfg.size, cfg.frames
    n_obj = 1 + int(torch.randint(0, cfg.max_objects, (1,), generator=generator))
    # Radius, start position and speed scale with the frame so 16x16 and 32x32 clips look alike.
    r = size * (0.12 + 0.06 * torch.rand(n_obj, generator=generator))
    lo, hi = r, size - 1 - r
    start = lo[:, None] + (hi - lo)[:, None] * torch.rand(n_obj, 2, generator=generator)
    main = torch.tensor(DIRECTIONS[direction])
    speed = size * (0.07 + 0.05 * torch.rand(n_obj, 1, generator=generator))
    side = size * 0.03 * (2 * torch.rand(n_obj, 1, generator=generator) - 1)
    vel = speed * main + side * main.flip(0)
    t = torch.arange(frames, dtype=torch.float32)
    pos = _bounce(start[:, None, :] + t[None, :, None] * vel[:, None, :], lo[:, None, None], hi[:, None, None])
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    dx = xs[None, None] - pos[:, :, 0, None, None]  # (obj, F, H, W)
    dy = ys[None, None] - pos[:, :, 1, None, None]
    cover = _shape_mask(shape, dx, dy, r[:, None, None, None]).amax(dim=0)  # (F, H, W)
    rgb = torch.tensor(COLOURS[colour])[:, None, None, None]
    return (2.0 * rgb * cover[None] - 1.0).to(torch.float32)


def sample_labels(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform class ids, int64 (batch,)."""
    return torch.randint(0, NUM_CLASSES, (batch,), generator=generator)


def make_clips(labels: torch.Tensor, generator: torch.Generator, cfg: SpriteConfig = SpriteConfig()) -> torch.Tensor:
    """Clips for the given class ids: float32 (B, 3, F, H, W) in [-1, 1]."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        fail("make_clips", "labels", "a 1-D int tensor of class ids", type(labels).__name__)
    return torch.stack([render_clip(int(c), generator, cfg) for c in labels.tolist()])


def caption_table(cfg: SpriteConfig = SpriteConfig()) -> torch.Tensor:
    """The fixed caption embedding table, (NUM_CLASSES, text_len, text_dim), N(0, 1) from ``cfg.embed_seed``."""
    g = torch.Generator().manual_seed(cfg.embed_seed)
    return torch.randn(NUM_CLASSES, cfg.text_len, cfg.text_dim, generator=g)


class SpriteData:
    """The trainer's batch source: ``data_fn(step, generator) -> (x0, cond)``.

    x0 is (B, 3, F, H, W); cond is ``{"encoder_hidden_states": (B, L, text_dim)}``. Every random draw comes from
    the generator the trainer passes, so a step's batch is reproducible from (seed, step).
    """

    def __init__(self, cfg: SpriteConfig = SpriteConfig(), batch_size: int = 8,
                 device: torch.device | str = "cpu") -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            fail("SpriteData", "batch_size", "a positive int", repr(batch_size))
        self.cfg = cfg
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.table = caption_table(cfg).to(self.device)

    def embed(self, labels: torch.Tensor) -> torch.Tensor:
        """Caption embeddings of class ids: (B, text_len, text_dim) on the data device."""
        return self.table[labels.to(self.device)]

    def batch(self, generator: torch.Generator, batch_size: int | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(x0, cond, labels) for one batch drawn from ``generator`` (a CPU generator)."""
        labels = sample_labels(batch_size or self.batch_size, generator)
        x0 = make_clips(labels, generator, self.cfg).to(self.device)
        return x0, {"encoder_hidden_states": self.embed(labels)}, labels

    def __call__(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if generator.device.type != "cpu":  # clips are drawn on the CPU: derive a CPU stream from it
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            generator = torch.Generator().manual_seed(seed)
        x0, cond, _ = self.batch(generator)
        return x0, cond
