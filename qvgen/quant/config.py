"""QuantConfig: every knob of QVGen quantization-aware training, validated once, serialisable to JSON.

Defaults follow the method's released recipe (per-channel LSQ+ weights with MSE init and gradient scaling,
per-token activations with learnable clips in 50 timestep groups, Phi of rank 32), not the official code's
argparse defaults, which differ from its training scripts.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from qvgen_kernels.format import ACT_BITS, WEIGHT_BITS

from qvgen_kernels.errors import fail

_OP = "QuantConfig"

# Extra fnmatch patterns (on qualified module names) kept in floating point, per architecture.
# The plain names are the paper's setting: every nn.Linear is quantized, so they are empty.
# The "_keep_fp32" variants mirror diffusers' `_keep_in_fp32_modules` lists, restricted to modules that
# contain nn.Linear layers (Wan keeps its timestep-embedding MLP in fp32; CogVideoX and HunyuanVideo
# declare no such list).
ARCH_SKIP_PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "wan": (),
    "wan_keep_fp32": ("*time_embedder*",),
    "cogvideox": (),
    "cogvideox_keep_fp32": (),
    "hunyuan_video": (),
    "hunyuan_video_keep_fp32": (),
}

_PRESETS: dict[str, dict[str, int]] = {
    "w4a4": {"w_bits": 4, "a_bits": 4},
    "w3a3": {"w_bits": 3, "a_bits": 3},
    "w4a8": {"w_bits": 4, "a_bits": 8},
    "w8a8": {"w_bits": 8, "a_bits": 8},
    "w4a16": {"w_bits": 4, "a_bits": 16},
}


def _check_int(name: str, value: Any, ok: Callable[[int], bool], expected: str) -> None:
    # `ok` is called only on an int: None or a string must not reach a comparison (a raw TypeError).
    if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
        fail(_OP, name, expected, repr(value))


def _check_float(name: str, value: Any, lo: float, hi: float, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo < value <= hi):
        fail(_OP, name, expected, repr(value))


@dataclass(frozen=True)
class QuantConfig:
    """How a model is quantized and trained.

    w_bits: weight bits (3, 4, 8). a_bits: activation bits (3, 4, 8, or 16 = activations not quantized).
    w_group_size: -1 per output channel, or a group size along K (must divide each layer's in_features).
    w_init: "mse" (shrink search minimising sum |Q(W) - W|^2.4) or "minmax".
    w_grad_scale: scale the gradients of the weight scale/zero by 1 / sqrt(K_group * P) (LSQ).
    a_clip_max, a_clip_init: the activation clip is a_clip_max * sigmoid(logit); logits start where the
        clip equals a_clip_init (0.9025 = the official code's effective 0.95 * 0.95).
    a_clip_learnable: train the clip logits.
    clip_groups: number of timestep groups with their own clips; num_train_timesteps: the timestep range.
    rank: rank of the auxiliary module Phi (0 = no Phi; a power of two for rank decay).
    svd: "exact", "randomized" or "auto" (randomized when min(N, K) > 1024).
    skip: fnmatch patterns on qualified module names left in floating point (whole-name match).
    modules_to_not_convert: names left in floating point when they occur anywhere in a module's qualified
        name (substring match, as diffusers' quantization backends do: "proj_out" also keeps
        "single_transformer_blocks.0.proj_out").
    keep_fp32_modules: also leave the model's own `_keep_in_fp32_modules` (diffusers: e.g. Wan's
        time_embedder) in floating point, matched on a name component as diffusers matches them. The
        other Linears, the embedders and proj_out included, are quantized as in the method's released
        recipe (docs/diffusers.md, "What is quantized").
    arch: optional key of ARCH_SKIP_PRESETS whose patterns are added to `skip`.
    """

    quant_method: ClassVar[str] = "qvgen"  # the diffusers quantization backend this config selects

    w_bits: int = 4
    a_bits: int = 4
    w_group_size: int = -1
    w_init: str = "mse"
    w_grad_scale: bool = True
    a_clip_max: float = 0.95
    a_clip_init: float = 0.9025
    a_clip_learnable: bool = True
    clip_groups: int = 50
    num_train_timesteps: int = 1000
    rank: int = 32
    svd: str = "auto"
    skip: tuple[str, ...] = field(default=())
    modules_to_not_convert: tuple[str, ...] = field(default=())
    keep_fp32_modules: bool = True
    arch: str | None = None

    def __post_init__(self) -> None:
        _check_int("w_bits", self.w_bits, lambda v: v in WEIGHT_BITS, f"one of {WEIGHT_BITS}")
        _check_int("a_bits", self.a_bits, lambda v: v in ACT_BITS, f"one of {ACT_BITS}")
        _check_int("w_group_size", self.w_group_size, lambda v: v == -1 or v > 0,
                   "-1 (per channel) or a positive int")
        if self.w_init not in ("mse", "minmax"):
            fail(_OP, "w_init", "'mse' or 'minmax'", repr(self.w_init))
        for name in ("w_grad_scale", "a_clip_learnable"):
            if not isinstance(getattr(self, name), bool):
                fail(_OP, name, "a bool", repr(getattr(self, name)))
        _check_float("a_clip_max", self.a_clip_max, 0.0, 1.0, "a float in (0, 1]")
        # Strictly inside (0, a_clip_max): the initial logit must be finite.
        if not (isinstance(self.a_clip_init, (int, float)) and not isinstance(self.a_clip_init, bool)
                and 0.0 < self.a_clip_init < self.a_clip_max):
            fail(_OP, "a_clip_init", f"a float in (0, a_clip_max={self.a_clip_max})", repr(self.a_clip_init))
        _check_int("clip_groups", self.clip_groups, lambda v: v >= 1, "a positive int")
        _check_int("num_train_timesteps", self.num_train_timesteps, lambda v: v >= 1, "a positive int")
        _check_int("rank", self.rank, lambda v: v >= 0, "a non-negative int")
        if self.svd not in ("auto", "exact", "randomized"):
            fail(_OP, "svd", "'auto', 'exact' or 'randomized'", repr(self.svd))
        for name, what in (("skip", "fnmatch pattern strings"), ("modules_to_not_convert", "name strings")):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(isinstance(p, str) for p in value):
                fail(_OP, name, f"a tuple of {what}", repr(value))
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.keep_fp32_modules, bool):
            fail(_OP, "keep_fp32_modules", "a bool", repr(self.keep_fp32_modules))
        if self.arch is not None and self.arch not in ARCH_SKIP_PRESETS:
            fail(_OP, "arch", f"None or one of {sorted(ARCH_SKIP_PRESETS)}", repr(self.arch))

    @property
    def skip_patterns(self) -> tuple[str, ...]:
        """`skip` plus the architecture preset's patterns."""
        return self.skip + (ARCH_SKIP_PRESETS[self.arch] if self.arch else ())

    def keeps(self, name: str, fp32_modules: tuple[str, ...] = ()) -> bool:
        """Whether the module qualified `name` stays in floating point: it matches a `skip` pattern, contains
        a `modules_to_not_convert` entry, or (with keep_fp32_modules) has one of `fp32_modules` (the model's
        `_keep_in_fp32_modules`) as a name component."""
        if any(fnmatch.fnmatchcase(name, p) for p in self.skip_patterns):
            return True
        if any(m in name for m in self.modules_to_not_convert):
            return True
        return self.keep_fp32_modules and bool(set(fp32_modules).intersection(name.split(".")))

    @property
    def clip_init_logit(self) -> float:
        """The logit u with a_clip_max * sigmoid(u) == a_clip_init."""
        p = self.a_clip_init / self.a_clip_max
        return math.log(p / (1.0 - p))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "QuantConfig":
        """A named bit setting ("w4a4", "w3a3", "w4a8", "w8a8", "w4a16") with fields overridden by keyword."""
        if name not in _PRESETS:
            fail(f"{_OP}.preset", "name", f"one of {sorted(_PRESETS)}", repr(name))
        _check_fields(f"{_OP}.preset", overrides, TypeError)
        return cls(**{**_PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (skip as a list)."""
        d = dataclasses.asdict(self)
        d["skip"] = list(self.skip)
        d["modules_to_not_convert"] = list(self.modules_to_not_convert)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantConfig":
        """Inverse of to_dict; unknown keys are an error."""
        if not isinstance(d, Mapping):
            fail(f"{_OP}.from_dict", "d", "a mapping", type(d).__name__, TypeError)
        _check_fields(f"{_OP}.from_dict", d, ValueError)
        d = dict(d)
        for name in ("skip", "modules_to_not_convert"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        return cls(**d)

    def diff(self, other: "QuantConfig") -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: {field: (self's value, other's value)}."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(other, f.name)}


def _check_fields(op: str, d: Mapping[str, Any], exc: type[Exception]) -> None:
    known = {f.name for f in dataclasses.fields(QuantConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        fail(op, unknown[0], f"a QuantConfig field ({', '.join(sorted(known))})", "an unknown name", exc)


__all__ = ["ARCH_SKIP_PRESETS", "QuantConfig"]
