"""Data functions for the distiller: ``data_fn(step, generator) -> (x0, cond)``.

The distiller calls its data function with a per-step ``torch.Generator`` (seeded from the run's seed
and the step); a data function must draw all its randomness from it, so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from qvgen_kernels.errors import fail

DataFn = Callable[[int, torch.Generator], tuple[torch.Tensor, dict]]


def step_generator(seed: int, step: int, rank: int = 0, world: int = 1) -> torch.Generator:
    """The CPU generator of one step (and data-parallel rank): seed * 1_000_003 + step, sharded by rank."""
    base = seed * 1_000_003 + step
    return torch.Generator().manual_seed(base * world + rank if world > 1 else base)


def random_data_fn(adapter, model: nn.Module, batch_size: int, frames: int, height: int, width: int,
                   text_len: int | None = None) -> DataFn:
    """Gaussian "clean" latents and random conditioning of ``model``'s shapes (no dataset needed).

    Useful for benchmarks, tests and distilling a real model without data: the teacher defines the
    targets, so any input distribution close to the latent prior exercises the network.
    """
    shape = adapter.latent_shape(model, batch_size, frames, height, width)
    p = next(model.parameters())

    def data_fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        x0 = torch.randn(shape, generator=generator, device=generator.device).to(p.device, p.dtype)
        return x0, adapter.random_cond(model, batch_size, generator, text_len=text_len)

    return data_fn


NULL_KEY = "null"


def caption_dropout(step: int, cond: dict, prob: float, generator: torch.Generator) -> dict:
    """The conditioning of one step with classifier-free-guidance dropout: with probability ``prob`` the
    WHOLE batch's conditioning is replaced by the null conditioning, ``cond["null"]`` (a dict with the same
    keys) when the data function provides it, else zeros of each floating tensor's shape. The ``"null"``
    entry is always removed. The draw is taken from the step's generator only when prob > 0."""
    null = cond.get(NULL_KEY)
    cond = {k: v for k, v in cond.items() if k != NULL_KEY}
    if null is not None and (not isinstance(null, dict) or set(null) != set(cond)):
        fail("Distiller.data_fn", f"cond['null'] at step {step}", f"a dict with the keys {sorted(cond)}",
             sorted(null) if isinstance(null, dict) else type(null).__name__, TypeError)
    if prob <= 0.0:
        return cond
    if float(torch.rand((), generator=generator, device=generator.device)) >= prob:
        return cond
    if null is not None:
        return dict(null)
    return {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in cond.items()}


def check_batch(step: int, batch: object) -> tuple[torch.Tensor, dict]:
    """Validate a data function's return value: (x0 tensor [B, ...], cond dict)."""
    op = "Distiller.data_fn"
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        fail(op, f"return value at step {step}", "a pair (x0, cond)", type(batch).__name__, TypeError)
    x0, cond = batch
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        fail(op, f"x0 at step {step}", "a floating-point tensor", type(x0).__name__, TypeError)
    if cond is None:
        cond = {}
    if not isinstance(cond, dict):
        fail(op, f"cond at step {step}", "a dict of conditioning tensors", type(cond).__name__, TypeError)
    return x0, cond


def non_finite_rows(x0: torch.Tensor, cond: dict) -> list[int]:
    """Batch rows whose latents or conditioning tensors hold NaN/Inf (named when the step is skipped)."""
    rows = ~torch.isfinite(x0.reshape(x0.shape[0], -1)).all(1)
    for v in cond.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() and v.shape[0] == x0.shape[0]:
            rows |= ~torch.isfinite(v.reshape(v.shape[0], -1)).all(1).to(rows.device)
    return rows.nonzero().flatten().tolist()


def load_data_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch .pt file: 'latents' [N, ...] plus conditioning tensors [N, ...]."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # text, truncated or foreign files raise anything from KeyError to UnpicklingError
        fail("qvgen train", "--data", "a readable .pt or .safetensors file of tensors",
             f"{path} ({type(e).__name__}: {e})")
    if not isinstance(tensors, dict) or "latents" not in tensors:
        fail("qvgen train", "--data", "a dict of tensors with a 'latents' entry", type(tensors).__name__)
    n = tensors["latents"].shape[0]
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor) or v.dim() < 1 or v.shape[0] != n:
            fail("qvgen train", f"--data[{k!r}]", f"a tensor with {n} rows (like 'latents')",
                 tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__)
    return tensors


def _rows(value: object, rows: slice, batch: int) -> object:
    if isinstance(value, dict):
        return {k: _rows(v, rows, batch) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch:
        return value[rows]
    return value


def rank_rows(data_fn: DataFn, global_batch: int, rank: int, world: int) -> DataFn:
    """This rank's rows ``[rank * B, (rank + 1) * B)``, B = global_batch / world, of the global batch that
    ``data_fn`` draws. The result is marked ``global_batch``: the distiller then hands it the generator shared
    by all ranks (not the rank's own), so every rank draws the same global batch and N processes train on
    exactly the samples, noise and timesteps of one process at that batch."""
    if world < 1 or not 0 <= rank < world or global_batch % world:
        fail("rank_rows", "global_batch", f"a multiple of the world size {world} (rank {rank})", global_batch)
    per = global_batch // world
    rows = slice(rank * per, (rank + 1) * per)

    def rank_data_fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        x0, cond = check_batch(step, data_fn(step, generator))
        if x0.shape[0] != global_batch:
            fail("rank_rows", f"x0 at step {step}", f"the global batch of {global_batch} rows", x0.shape[0])
        return x0[rows], _rows(cond, rows, global_batch)

    rank_data_fn.global_batch = True
    return rank_data_fn


def make_data_fn(model: torch.nn.Module, adapter, batch: int, device: torch.device, data: dict | None,
                 latent_fhw: Sequence[int]) -> DataFn:
    """The trainer's ``data_fn(step, generator) -> (x0, cond)`` of ``batch`` rows: rows of ``data``, or random
    latents + cond (wrap it in ``rank_rows`` to split a global batch across data-parallel ranks)."""
    if data is None:
        return random_data_fn(adapter, model, batch, *latent_fhw)

    def from_file(step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        idx = torch.randint(0, data["latents"].shape[0], (batch,), generator=generator, device=generator.device)
        rows = {k: v[idx.cpu()].to(device) for k, v in data.items()}
        return rows.pop("latents").float(), rows
    return from_file
