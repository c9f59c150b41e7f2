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


__all__ = ["full_value", "is_sharded", "write_full_"]
