"""Workers of the multi-process rank-decay tests (importable: the processes are spawned)."""

from __future__ import annotations

import torch
from torch import nn

from qvgen import QuantConfig, RankDecay, iter_qlinears, quantize_model

STEPS, RANK, ROWS = 10, 8, 4  # 4 stages of 2 steps: three re-SVDs, then Phi masked / removed


def make_model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 36))
    return quantize_model(m, QuantConfig.preset("w4a4", rank=RANK, clip_groups=1))


def batch(step: int, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s share of step `step`'s global batch of ROWS * 2 rows (world 1 takes all of it)."""
    full = torch.randn(ROWS * 2, 48, generator=torch.Generator().manual_seed(step))
    per = full.shape[0] // world
    return full[rank * per:(rank + 1) * per]


def train(model: nn.Module, wrapped: nn.Module, rank: int, world: int) -> RankDecay:
    """Plain loop that keeps the previous loss (its graph) alive across every stage boundary."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    decay = RankDecay(model, total_steps=STEPS, optimizer=opt)
    prev = None
    for i in range(STEPS):
        decay.step(i)
        opt.zero_grad()
        loss = wrapped(batch(i, rank, world)).square().mean()
        loss.backward()
        opt.step()
        prev = loss  # noqa: F841 (kept alive on purpose)
    decay.finish()
    return decay


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().clone() for k, v in sd.items()}


def worker(rank: int, world: int, out: str) -> None:
    """Both modes in one launch: DDP, then FSDP2 (one QLinear per unit, then the root)."""
    from torch.distributed.fsdp import fully_shard

    for mode in ("ddp", "fsdp"):
        model = make_model()
        if mode == "ddp":
            wrapped = nn.parallel.DistributedDataParallel(model)
        else:
            for _, q in iter_qlinears(model):
                fully_shard(q)
            wrapped = fully_shard(model)
        train(model, wrapped, rank, world)
        state = full_state(model) if mode == "fsdp" else {k: v.detach().clone() for k, v in model.state_dict().items()}
        if rank == 0:
            torch.save(state, f"{out}.{mode}")
