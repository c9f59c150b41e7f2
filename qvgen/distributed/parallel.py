"""Data-parallel QAT: the process group from torchrun's environment, FSDP2 sharding (one unit per
transformer block, fp32 master parameters, MixedPrecisionPolicy for the compute), and what keeps N
processes equal to one process with the same global batch.

    torchrun --nproc_per_node N -m qvgen train ... --parallel fsdp|ddp

Equivalence: each step's noise, timesteps and caption-dropout draw come from one generator shared by all
ranks, drawn for the global batch, each rank keeping its rows; DDP and FSDP2 average the gradients; so N
processes follow a one-process run on the same global batch up to fp32 summation order.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.distributed.sharding import is_sharded

PARALLEL = ("none", "ddp", "fsdp")
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0  # long enough for a checkpoint write, short enough to notice a hang
# ModuleList attributes that hold a video DiT's repeated blocks (Wan, CogVideoX, HunyuanVideo, LTX, Mochi).
BLOCK_LISTS = ("blocks", "transformer_blocks", "single_transformer_blocks", "layers")


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) unless torch.distributed is initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device, timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S
                  ) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA (one GPU per LOCAL_RANK),
    gloo on CPU. Every collective waits at most ``timeout_s`` seconds, so a stalled rank ends the job with
    an error instead of blocking the others (gloo's own default is 30 min). Returns (rank, world, device);
    (0, 1, device) outside torchrun."""
    import datetime
    import math

    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
            math.isfinite(timeout_s) and timeout_s > 0):
        fail("init_from_env", "timeout_s", "a finite number of seconds > 0", repr(timeout_s))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = torch.distributed
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=float(timeout_s)))
    rank, world = dist_info()
    return rank, world, device


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards one by one: the entries of the model's block lists, else its top-level
    children with parameters (the root is sharded last and holds the rest)."""
    units = [blk for name in BLOCK_LISTS if isinstance(getattr(model, name, None), nn.ModuleList)
             for blk in getattr(model, name)]
    if not units:
        units = [m for m in model.children() if any(True for _ in m.parameters())]
    return units


def mixed_precision(name: str, device: torch.device):
    """FSDP2 MixedPrecisionPolicy: 'bf16' computes in bf16 with fp32 gradient reduction (the masters stay
    fp32), 'off' computes in the parameters' dtype; 'auto' is bf16 on CUDA, off elsewhere."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if name == "auto":
        name = "bf16" if device.type == "cuda" else "off"
    if name not in ("bf16", "off"):
        fail("fully_shard_model", "mixed_precision", "'auto', 'bf16' or 'off'", repr(name))
    if name == "off":
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def fully_shard_model(model: nn.Module, mixed: str = "auto", device: torch.device | None = None) -> nn.Module:
    """Shard `model` in place with FSDP2 over all ranks: every block, then the root. Parameters of one
    model must share a dtype (FSDP2 groups cannot mix bf16 and fp32) and have at least one dimension."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _, world = dist_info()
    if world == 1:
        fail("fully_shard_model", "torch.distributed", "an initialised process group (run under torchrun)",
             "none")
    device = device or next(model.parameters()).device
    for name, p in model.named_parameters():
        if p.dim() == 0:
            fail("fully_shard_model", "model", "parameters with at least one dimension (FSDP2 refuses 0-dim)",
                 f"'{name}' of shape ()")
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) > 1:
        fail("fully_shard_model", "model", "one parameter dtype (FSDP2 groups cannot mix dtypes)", sorted(map(str, dtypes)))
    mesh = init_device_mesh(device.type, (world,))
    policy = mixed_precision(mixed, device)
    for unit in [*shard_units(model), model]:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
        unit.register_forward_hook(_outputs_own_storage, prepend=True)  # before FSDP2 hooks the outputs
    return model


def _outputs_own_storage(module: nn.Module, args, output):
    """A copy of each grad-carrying view among a sharded module's outputs. FSDP2 hangs its pre-backward
    all-gather on the outputs; an in-place op on a view (diffusers' Wan returns its unpatchified latent as a
    view of proj_out's output) would drop it, so FSDP2 warns on every forward. The copy is one output-sized
    tensor per forward, and it cannot lose the hook."""
    from torch.utils._pytree import tree_map_only

    return tree_map_only(torch.Tensor, lambda t: t.clone() if t._base is not None and t.requires_grad else t,
                         output)


def is_model_sharded(model: nn.Module) -> bool:
    return any(is_sharded(p) for p in model.parameters())


def rank_noisy(objective, x0: torch.Tensor, generator: torch.Generator, rank: int, world: int):
    """The objective's noisy batch for this rank's rows of the global batch: noise and timesteps are drawn
    for world * B rows from the shared generator, so they do not depend on how the batch is split."""
    b = x0.shape[0]
    full = x0.new_zeros((b * world, *x0.shape[1:]))
    rows = slice(rank * b, (rank + 1) * b)
    full[rows] = x0
    nb = objective.make_noisy(full, generator)
    return dataclasses.replace(nb, **{f.name: getattr(nb, f.name)[rows] for f in dataclasses.fields(nb)
                                      if isinstance(getattr(nb, f.name), torch.Tensor)})


def mean_across_ranks(value: torch.Tensor) -> float:
    """The mean over all ranks of a per-rank scalar (a collective: every rank calls it); the value itself
    outside torch.distributed. Ranks hold equal slices of the global batch, so the mean of their batch-mean
    losses is the loss over the global batch, the number one process at that batch logs."""
    _, world = dist_info()
    value = value.detach().float().reshape(())
    if world == 1:
        return float(value)
    value = value.clone()
    torch.distributed.all_reduce(value)  # SUM: gloo has no AVG
    return float(value) / world


def sum_across_ranks(values: list[int], device: torch.device | str = "cpu") -> list[int]:
    """Per-rank integer counts summed over all ranks (a collective: every rank calls it with a list of the
    same length); the values themselves outside torch.distributed. Used for decisions every rank must take
    together (skip this step, stop now). ``device``: where the collective runs (CUDA under NCCL)."""
    _, world = dist_info()
    if world == 1:
        return [int(v) for v in values]
    t = torch.tensor(values, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t)
    return [int(v) for v in t.tolist()]


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model state on CPU (gathered from the shards; a collective under FSDP2: call it on every
    rank; rank 0 receives the tensors)."""
    if not is_model_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


__all__ = ["BLOCK_LISTS", "DEFAULT_COLLECTIVE_TIMEOUT_S", "PARALLEL", "dist_info", "fully_shard_model", "full_state_dict", "init_from_env",
           "is_model_sharded", "mean_across_ranks", "mixed_precision", "rank_noisy", "shard_units",
           "sum_across_ranks"]
