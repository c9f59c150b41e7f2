"""Per-architecture adapters: how to call a video DiT, its latent layout and prediction type.

An adapter is stateless; it knows the calling convention of one model family so that the trainer,
the benchmarks and the tests can treat every family the same way:

- ``layout``: the latent layout, ``"BCFHW"`` (Wan, HunyuanVideo) or ``"BFCHW"`` (CogVideoX);
- ``prediction``: what the model predicts, ``"flow"`` (rectified-flow velocity eps - x0) or ``"v"``
  (DDPM v-prediction), which picks the distillation objective;
- ``forward(model, latents, t, cond)``: one denoiser call returning the prediction tensor; every
  conditioning key the adapter does not handle itself is passed through to the model as a keyword
  (VACE's ``control_hidden_states``, SkyReels' ``fps``, ...), never dropped;
- ``random_cond(model, batch, generator)``: random conditioning of the right shapes.

Adapters are chosen by the model's class (``adapter_for``) or by name (``arch=``, the CLI's ``--arch``);
``"diffusers"`` is the generic one for any diffusers video transformer called as
``model(hidden_states=[B, C, F, H, W], timestep=[B], **cond)`` that predicts a flow velocity.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from qvgen_kernels.errors import fail

LAYOUTS = ("BCFHW", "BFCHW")
PREDICTIONS = ("flow", "v", "eps", "x0")


def _config(model: nn.Module) -> object:
    """The diffusers config of ``model`` (DDP-unwrapped), or fail naming the adapter."""
    inner = getattr(model, "module", model)
    cfg = getattr(inner, "config", None)
    if cfg is None:
        fail("ModelAdapter", "model", "a diffusers model with a .config", type(inner).__name__, TypeError)
    return cfg


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    # Draw on the generator's device (CPU by default) and move: the values then do not depend on the
    # device the model lives on, which keeps seeded runs reproducible across machines.
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=gen_device).to(device=device, dtype=dtype)


def _model_place(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _check_latents(op: str, latents: object) -> torch.Tensor:
    if not isinstance(latents, torch.Tensor):
        fail(op, "latents", "a torch.Tensor", type(latents).__name__, TypeError)
    if latents.dim() != 5:
        fail(op, "latents", "a 5-D video latent tensor", tuple(latents.shape))
    return latents


def _timesteps(op: str, t: object, batch: int, device: torch.device) -> torch.Tensor:
    """Broadcast a scalar / [B] timestep to a [B] tensor on ``device``."""
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        fail(op, "t", f"a scalar or a [{batch}] tensor", tuple(t.shape))
    return t


def _need(op: str, cond: object, key: str) -> torch.Tensor:
    """cond[key], or a clear error naming the missing conditioning."""
    if not isinstance(cond, dict):
        fail(op, "cond", "a dict of conditioning tensors", type(cond).__name__, TypeError)
    if key not in cond:
        fail(op, "cond", f"a dict with key '{key}'", sorted(cond))
    return cond[key]


def _extra(cond: dict, handled: tuple[str, ...]) -> dict:
    """The conditioning entries an adapter does not handle itself: passed through to the model."""
    return {k: v for k, v in cond.items() if k not in handled}


def _text_dim(model: nn.Module) -> int | None:
    """The text-embedding width of a diffusers model's config (the names differ per family)."""
    cfg = _config(model)
    for key in ("text_dim", "text_embed_dim", "caption_channels", "cross_attention_dim", "joint_attention_dim"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _takes(model: nn.Module, name: str) -> bool:
    import inspect

    inner = getattr(model, "module", model)
    try:
        return name in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def _text_len(op: str, text_len: object, default: int) -> int:
    n = default if text_len is None else text_len
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        fail(op, "text_len", "None or a positive int", repr(text_len))
    return n


class ModelAdapter(ABC):
    """Base adapter. Subclasses set ``name``, ``layout``, ``prediction`` and implement the calls."""

    name: str = "base"
    layout: str = "BCFHW"
    prediction: str = "flow"

    @abstractmethod
    def forward(self, model: nn.Module, latents: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """One denoiser call: noisy latents, timesteps [B] in [0, 1000], conditioning dict -> prediction."""

    @abstractmethod
    def random_cond(self, model: nn.Module, batch: int, generator: torch.Generator | None = None,
                    text_len: int | None = None) -> dict[str, torch.Tensor]:
        """Random conditioning tensors for ``batch`` samples (for tests and benchmarks)."""

    def latent_shape(self, model: nn.Module, batch: int, frames: int, height: int, width: int) -> tuple:
        """Latent tensor shape in this adapter's layout (``frames``/``height``/``width`` in latent units)."""
        for arg, v in (("batch", batch), ("frames", frames), ("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                fail(f"{self.name}.latent_shape", arg, "a positive int", repr(v))
        c = int(_config(model).in_channels)
        if self.layout == "BCFHW":
            return (batch, c, frames, height, width)
        return (batch, frames, c, height, width)

    @staticmethod
    def _output(out: object) -> torch.Tensor:
        # diffusers returns a dataclass with .sample (return_dict=True) or a tuple; normalise.
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, (tuple, list)):
            return out[0]
        return out.sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layout={self.layout!r}, prediction={self.prediction!r})"


class WanAdapter(ModelAdapter):
    """``WanTransformer3DModel`` and its relatives (SkyReels-V2, ChronoEdit): (B, C, F, H, W) latents,
    flow-matching velocity; every conditioning key goes to the model."""

    name, layout, prediction = "wan", "BCFHW", "flow"

    def forward(self, model, latents, t, cond):
        op = f"{type(self).__name__}.forward"
        latents = _check_latents(op, latents)
        t = _timesteps(op, t, latents.shape[0], latents.device)
        _need(op, cond, "encoder_hidden_states")
        out = model(hidden_states=latents, timestep=t, **self.complete(model, latents, cond), return_dict=False)
        return self._output(out)

    def complete(self, model: nn.Module, latents: torch.Tensor, cond: dict) -> dict:
        """The keyword conditioning of one call (subclasses fill family-specific defaults)."""
        return dict(cond)

    def random_cond(self, model, batch, generator=None, text_len=None):
        cfg = _config(model)
        device, dtype = _model_place(model)
        n = _text_len("WanAdapter.random_cond", text_len, 12)
        return {"encoder_hidden_states": _randn((batch, n, cfg.text_dim), generator, device, dtype)}


class HunyuanVideoAdapter(ModelAdapter):
    """``HunyuanVideoTransformer3DModel``: (B, C, F, H, W) latents, flow-matching velocity."""

    name, layout, prediction = "hunyuan", "BCFHW", "flow"

    def forward(self, model, latents, t, cond):
        latents = _check_latents("HunyuanVideoAdapter.forward", latents)
        b = latents.shape[0]
        t = _timesteps("HunyuanVideoAdapter.forward", t, b, latents.device)
        text = _need("HunyuanVideoAdapter.forward", cond, "encoder_hidden_states")
        pooled = _need("HunyuanVideoAdapter.forward", cond, "pooled_projections")
        mask = cond.get("encoder_attention_mask")
        if mask is None:
            mask = torch.ones(text.shape[:2], device=text.device, dtype=text.dtype)
        guidance = cond.get("guidance")
        if guidance is None and getattr(_config(model), "guidance_embeds", False):
            # The pipeline passes guidance_scale * 1000; 6.0 is its default scale.
            guidance = torch.full((b,), 6000.0, device=latents.device, dtype=text.dtype)
        extra = _extra(cond, ("encoder_hidden_states", "pooled_projections", "encoder_attention_mask", "guidance"))
        out = model(hidden_states=latents, timestep=t, encoder_hidden_states=text, encoder_attention_mask=mask,
                    pooled_projections=pooled, guidance=guidance, return_dict=False, **extra)
        return self._output(out)

    def random_cond(self, model, batch, generator=None, text_len=None):
        cfg = _config(model)
        device, dtype = _model_place(model)
        n = _text_len("HunyuanVideoAdapter.random_cond", text_len, 12)
        cond = {
            "encoder_hidden_states": _randn((batch, n, cfg.text_embed_dim), generator, device, dtype),
            "pooled_projections": _randn((batch, cfg.pooled_projection_dim), generator, device, dtype),
            "encoder_attention_mask": torch.ones(batch, n, device=device, dtype=dtype),
        }
        if cfg.guidance_embeds:
            cond["guidance"] = torch.full((batch,), 6000.0, device=device, dtype=dtype)
        return cond


def _crop_region(grid_h: int, grid_w: int, base_w: int, base_h: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resize-crop region of a (grid_h, grid_w) grid inside the base grid (CogVideoX 1.0 rotary)."""
    if grid_h / grid_w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / grid_h * grid_w))
    else:
        rw, rh = base_w, int(round(base_w / grid_w * grid_h))
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


class CogVideoXAdapter(ModelAdapter):
    """``CogVideoXTransformer3DModel``: (B, F, C, H, W) latents, DDPM v-prediction."""

    name, layout, prediction = "cogvideox", "BFCHW", "v"

    def rotary_emb(self, model: nn.Module, latents: torch.Tensor):
        """The 3-D rotary embedding the pipeline builds, or None when the model does not use one."""
        cfg = _config(model)
        if not cfg.use_rotary_positional_embeddings:
            return None
        from diffusers.models.embeddings import get_3d_rotary_pos_embed

        p, p_t = cfg.patch_size, cfg.patch_size_t
        frames, gh, gw = latents.shape[1], latents.shape[3] // p, latents.shape[4] // p
        base_w, base_h = cfg.sample_width // p, cfg.sample_height // p
        if p_t is None:  # CogVideoX 1.0
            return get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=_crop_region(
                gh, gw, base_w, base_h), grid_size=(gh, gw), temporal_size=frames, device=latents.device)
        return get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=None, grid_size=(gh, gw),
                                       temporal_size=(frames + p_t - 1) // p_t, grid_type="slice",
                                       max_size=(base_h, base_w), device=latents.device)

    def forward(self, model, latents, t, cond):
        latents = _check_latents("CogVideoXAdapter.forward", latents)
        t = _timesteps("CogVideoXAdapter.forward", t, latents.shape[0], latents.device)
        text = _need("CogVideoXAdapter.forward", cond, "encoder_hidden_states")
        rotary = cond.get("image_rotary_emb")
        if rotary is None:
            rotary = self.rotary_emb(model, latents)
        extra = _extra(cond, ("encoder_hidden_states", "image_rotary_emb"))
        out = model(hidden_states=latents, encoder_hidden_states=text, timestep=t,
                    image_rotary_emb=rotary, return_dict=False, **extra)
        return self._output(out)

    def random_cond(self, model, batch, generator=None, text_len=None):
        cfg = _config(model)
        device, dtype = _model_place(model)
        n = _text_len("CogVideoXAdapter.random_cond", text_len, cfg.max_text_seq_length)
        if not cfg.use_rotary_positional_embeddings and n != cfg.max_text_seq_length:
            # The sincos position table spans exactly max_text_seq_length text tokens + the video tokens.
            fail("CogVideoXAdapter.random_cond", "text_len",
                 f"None or max_text_seq_length={cfg.max_text_seq_length} (sincos positions)", n)
        return {"encoder_hidden_states": _randn((batch, n, cfg.text_embed_dim), generator, device, dtype)}


class GenericAdapter(ModelAdapter):
    """Any module called as ``model(latents, t, cond)`` (e.g. the demo's own DiT).

    ``cond_shapes`` maps conditioning names to per-sample shapes used by ``random_cond``.
    """

    name = "generic"

    def __init__(self, layout: str = "BCFHW", prediction: str = "flow",
                 cond_shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        if layout not in LAYOUTS:
            fail("GenericAdapter", "layout", f"one of {LAYOUTS}", repr(layout))
        if prediction not in PREDICTIONS:
            fail("GenericAdapter", "prediction", f"one of {PREDICTIONS}", repr(prediction))
        self.layout, self.prediction = layout, prediction
        self.cond_shapes = dict(cond_shapes or {})

    def forward(self, model, latents, t, cond):
        t = _timesteps("GenericAdapter.forward", t, latents.shape[0], latents.device)
        from qvgen.quant.timestep import STATE_ATTR, set_timesteps

        inner = getattr(model, "module", model)
        if hasattr(inner, STATE_ATTR):
            # t is positional here, so the quantized model's `timestep=` pre-hook cannot see it.
            set_timesteps(inner, t)
        return self._output(model(latents, t, cond))

    def random_cond(self, model, batch, generator=None, text_len=None):
        device, dtype = _model_place(model)
        return {k: _randn((batch, *s), generator, device, dtype) for k, s in self.cond_shapes.items()}


class WanVACEAdapter(WanAdapter):
    """``WanVACETransformer3DModel``: Wan plus ``control_hidden_states`` [B, vace_in_channels, F, H, W];
    without one in the conditioning, zeros (no control signal) of the latents' grid."""

    name = "wan-vace"

    def complete(self, model, latents, cond):
        cond = dict(cond)
        if cond.get("control_hidden_states") is None:
            b, _, f, h, w = latents.shape
            c = int(_config(model).vace_in_channels)
            cond["control_hidden_states"] = latents.new_zeros(b, c, f, h, w)
        return cond


class DiffusersAdapter(WanAdapter):
    """Any diffusers video transformer called as ``model(hidden_states=[B, C, F, H, W], timestep=[B],
    **cond)`` and predicting a flow velocity (Mochi, Allegro, Latte, SanaVideo, ...). An
    ``encoder_attention_mask`` the model takes is filled with ones when the conditioning has none."""

    name = "diffusers"

    def complete(self, model, latents, cond):
        cond = dict(cond)
        text = cond.get("encoder_hidden_states")
        if text is not None and cond.get("encoder_attention_mask") is None and _takes(model, "encoder_attention_mask"):
            cond["encoder_attention_mask"] = torch.ones(text.shape[:2], device=text.device, dtype=text.dtype)
        return cond

    def random_cond(self, model, batch, generator=None, text_len=None):
        dim = _text_dim(model)
        if dim is None:
            fail("DiffusersAdapter.random_cond", "model", "a config with text_dim / text_embed_dim / "
                 "caption_channels / cross_attention_dim (or give real conditioning with --data)",
                 type(getattr(model, "module", model)).__name__)
        device, dtype = _model_place(model)
        n = _text_len("DiffusersAdapter.random_cond", text_len, 12)
        return {"encoder_hidden_states": _randn((batch, n, dim), generator, device, dtype)}


class LTXVideoAdapter(DiffusersAdapter):
    """``LTXVideoTransformer3DModel``: (B, C, F, H, W) latents packed into tokens [B, F*H*W, C] (the
    pipeline's patchify) with the grid passed as num_frames/height/width; the output is unpacked back."""

    name = "ltx"

    def forward(self, model, latents, t, cond):
        op = "LTXVideoAdapter.forward"
        latents = _check_latents(op, latents)
        b, c, f, h, w = latents.shape
        t = _timesteps(op, t, b, latents.device)
        _need(op, cond, "encoder_hidden_states")
        cfg = _config(model)
        p, pt = int(cfg.patch_size), int(cfg.patch_size_t)
        tokens = (latents.reshape(b, c, f // pt, pt, h // p, p, w // p, p)
                  .permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3))
        grid = (f // pt, h // p, w // p)
        out = self._output(model(hidden_states=tokens, timestep=t, num_frames=grid[0], height=grid[1],
                                 width=grid[2], **self.complete(model, latents, cond), return_dict=False))
        out = out.reshape(b, *grid, -1, pt, p, p)
        return out.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)


# Registry: adapter name -> class, and diffusers class name -> adapter name. A new family is one entry.
ADAPTERS: dict[str, type[ModelAdapter]] = {
    "wan": WanAdapter, "wan-vace": WanVACEAdapter, "cogvideox": CogVideoXAdapter,
    "hunyuan": HunyuanVideoAdapter, "ltx": LTXVideoAdapter, "diffusers": DiffusersAdapter,
}
_BY_CLASS = {
    "WanTransformer3DModel": "wan", "SkyReelsV2Transformer3DModel": "wan", "ChronoEditTransformer3DModel": "wan",
    "WanVACETransformer3DModel": "wan-vace", "CogVideoXTransformer3DModel": "cogvideox",
    "HunyuanVideoTransformer3DModel": "hunyuan", "LTXVideoTransformer3DModel": "ltx",
    "MochiTransformer3DModel": "diffusers", "AllegroTransformer3DModel": "diffusers",
    "LatteTransformer3DModel": "diffusers", "SanaVideoTransformer3DModel": "diffusers",
}


def adapter_for(model: nn.Module, arch: str | ModelAdapter | None = None) -> ModelAdapter:
    """The adapter for ``model``: ``arch`` when given (a name or an adapter), else chosen by class."""
    if isinstance(arch, ModelAdapter):
        return arch
    if arch is None:
        inner = getattr(model, "module", model)
        for cls in type(inner).__mro__:
            if cls.__name__ in _BY_CLASS:
                return ADAPTERS[_BY_CLASS[cls.__name__]]()
        fail("adapter_for", "model", f"a model class with a registered adapter ({', '.join(sorted(_BY_CLASS))}), "
             f"or arch= (CLI: --arch) one of {sorted(ADAPTERS)}: 'diffusers' calls any diffusers video "
             "transformer as model(hidden_states=[B, C, F, H, W], timestep=[B], **cond) predicting a flow "
             "velocity; a ModelAdapter subclass covers other calling conventions", type(inner).__name__, TypeError)
    if arch not in ADAPTERS:
        fail("adapter_for", "arch", f"one of {sorted(ADAPTERS)} or a ModelAdapter", repr(arch))
    return ADAPTERS[arch]()
