"""Whole-tensor reads and writes of parameters that may be sharded DTensors (FSDP2), or plain tensors.

Rank decay re-decomposes Phi at stage boundaries: it needs the full factors and must write the result back
into the SAME Parameter storage (FSDP2 silently undoes a replaced Parameter, and a live graph or a DDP bucket
keeps the old shape). A sharded tensor is gathered with `full_tensor()` (a collective: every rank calls it in
the same order) and written back with `distribute_tensor` into its local shard.
"""

from __future__ import annotations

import torch


def _dtensor_class():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(t: torch.Tensor | None) -> bool:
    """Whether t is a DTensor (e.g. a parameter after FSDP2's fully_shard)."""
    cls = _dtensor_class()
    return t is not None and cls is not None and isinstance(t, cls)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor, detached: gathered from every rank when t is sharded."""
    t = t.detach()
    return t.full_tensor() if is_sharded(t) else t


@torch.no_grad()
def write_full_(p: torch.Tensor, value: torch.Tensor) -> None:
    """Copy the whole-tensor `value` (same shape as p's global shape) into p's storage, in place."""
    if is_sharded(p):
        from torch.distributed.tensor import distribute_tensor

        shard = distribute_tensor(value.to(p.to_local().device, p.dtype), p.device_mesh, p.placements)
        p.to_local().copy_(shard.to_local())
    else:
        p.copy_(value.to(p.dtype))





def local_value(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of t (t itself when not sharded)."""
    return t.to_local() if is_sharded(t) else t


def _sum_over_ranks(value: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    """All-reduce (sum) a scalar over the ranks sharing the sharded tensors among `tensors`."""
    sharded = next((t for t in tensors if is_sharded(t)), None)
    if sharded is not None:
        torch.distributed.all_reduce(value, group=sharded.device_mesh.get_group())
    return value


@torch.no_grad()
def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every tensor is finite (one host sync; a collective when some are sharded, so every rank
    must call it with the same list)."""
    if not tensors:
        return True
    bad = torch.stack([(~torch.isfinite(local_value(t))).sum().float() for t in tensors]).sum()
    return float(_sum_over_ranks(bad, tensors)) == 0.0


@torch.no_grad()
def squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squares of all entries, fp32 (summed over the ranks' shards when sharded)."""
    local = [local_value(t).detach().float() for t in tensors]
    total = torch.stack([x.pow(2).sum().to(local[0].device) for x in local]).sum()
    return _sum_over_ranks(total, tensors)
__all__ = ["all_finite", "full_value", "is_sharded", "local_value", "squared_norm", "write_full_"]
