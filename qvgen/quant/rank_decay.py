"""Rank decay of the auxiliary module Phi: rank r0 -> r0/2 -> ... -> 1 -> 0 over log2(r0) + 1 stages.

Within stage k (rank r_k) the upper half of Phi's columns keeps gamma = 1 and the lower half fades with
u(tau) (cosine or linear, 1 -> ~0). At each stage boundary the faded half is dropped, the kept product is
re-decomposed by SVD (so the next half to fade is again the one with the smallest singular values) and
written into the same Parameters (fixed shapes: the columns past the new rank are zero and masked by
gamma = 0), and their optimizer moments are discarded. No Parameter changes shape or identity while
training, so a loop that keeps the previous loss alive, DDP and FSDP2 (re-SVD through full_tensor() and
distribute_tensor) all work. After the last stage Phi contributes nothing; it is deleted from the layers
and the optimizer when nothing can hold it: in a single process at the end step, otherwise by finish()
(under FSDP2 it stays masked until the model is gathered for deployment, where to_deploy drops it).

``decay_end`` is the fraction of training by whose end Phi is gone: the stages share the first
``floor(decay_end * total_steps)`` steps (at least one per stage) and the weights train on without Phi for the
rest. ``decay_end = 1``
is the paper's schedule exactly (T = total_steps // stages). The default, ``DEFAULT_DECAY_END``, comes from the
quality study (``benchmarks/results/quality.md``): with the paper's schedule the last halvings of Phi land near the
end of the learning-rate schedule, too late for the weights to absorb what Phi drops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.quant.lowrank import resvd
from qvgen.quant.qlinear import QLinear
from qvgen.quant.swap import iter_qlinears, model_config

_SCHEDULES = ("cosine", "linear")
DEFAULT_DECAY_END = 0.5
PAPER_DECAY_END = 1.0


class RankDecay:
    """Drives gamma and the rank of Phi in every QLinear of `model`; call `step(i)` before the forward of
    step i (0-based) and `finish()` after the loop (it removes Phi, which `step(total_steps - 1)` does not
    when total_steps is a multiple of the stage count). Stage length
    T = floor(decay_end * total_steps) // (log2(rank) + 1); Phi is gone from step 6T on for rank 32. A model quantized with rank 0 has nothing to decay: every step
    is a no-op.

        decay = RankDecay(model, total_steps=N, optimizer=opt)
        for i in range(N):
            decay.step(i)
            ...  # forward, backward, optimizer step
        decay.finish()
        qvgen.to_deploy(model)
    """

    def __init__(self, model: nn.Module, total_steps: int, schedule: str = "cosine",
                 optimizer: torch.optim.Optimizer | None = None, decay_end: float = DEFAULT_DECAY_END) -> None:
        op = "RankDecay"
        self.layers = list(iter_qlinears(model))
        if not self.layers:
            fail(op, "model", "a model with QLinear layers (run qvgen.quantize_model first)", "none")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            fail(op, "total_steps", "a positive int", repr(total_steps))
        if schedule not in _SCHEDULES:
            fail(op, "schedule", f"one of {_SCHEDULES}", repr(schedule))
        if isinstance(decay_end, bool) or not isinstance(decay_end, (int, float)) or not 0 < decay_end <= 1:
            fail(op, "decay_end", "a fraction of training in (0, 1] (1 = the paper's schedule)", repr(decay_end))
        rank = model_config(model).rank
        if rank & (rank - 1):
            fail(op, "rank", "a power of two (QuantConfig.rank)", rank)
        self.rank0 = rank
        self.total_steps = total_steps
        self.schedule = schedule
        self.optimizer = optimizer
        self.decay_end = float(decay_end)
        self.num_stages = rank.bit_length()  # log2(rank) + 1
        if rank and total_steps < self.num_stages:
            fail(op, "total_steps", f"at least {self.num_stages} (one step per rank stage)", total_steps)
        # 1e-9: 0.5 * 10 is 5, not 4.999...; a short run still gets one step per stage.
        decay_steps = max(math.floor(self.decay_end * total_steps + 1e-9), self.num_stages)
        self.stage_len = decay_steps // self.num_stages if rank else total_steps
        self.last_step: int | None = None

    @property
    def end_step(self) -> int:
        """First step without Phi."""
        return self.num_stages * self.stage_len

    def rank_at(self, i: int) -> int:
        """Phi's rank during step i."""
        k = i // self.stage_len
        return 0 if k >= self.num_stages else self.rank0 >> k

    def gamma_at(self, i: int) -> torch.Tensor | None:
        """gamma [rank_at(i)] during step i (None once Phi is gone); the layers' gamma buffers hold it
        zero-padded to their capacity."""
        r = self.rank_at(i)
        if r == 0:
            return None
        tau = i % self.stage_len
        if self.schedule == "cosine":
            u = (1.0 + math.cos(math.pi * tau / self.stage_len)) / 2.0
        else:
            u = 1.0 - tau / self.stage_len
        return torch.tensor([1.0] * (r // 2) + [u] * (r - r // 2), dtype=torch.float32)

    @property
    def current_rank(self) -> int:
        return self.rank0 if self.last_step is None else self.rank_at(self.last_step)

    def step(self, i: int) -> None:
        """Apply the schedule for step i: shrink / remove Phi if a stage boundary was crossed, set gamma.
        Idempotent; i may jump forward (stages in between are applied in order) but not back a stage."""
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            fail("RankDecay.step", "i", "a non-negative int", repr(i))
        if self.rank0 == 0:
            self.last_step = i
            return
        target = self.rank_at(i)
        gamma = self.gamma_at(i)
        # gamma zero-padded to each capacity and moved once per (device, capacity), not once per layer.
        padded: dict[tuple[torch.device, int], torch.Tensor] = {}
        for name, q in self.layers:
            self._shrink_to(name, q, target, i)
            if gamma is not None:
                key = (q.phi_gamma.device, q.phi_capacity)
                if key not in padded:
                    padded[key] = torch.cat([gamma, gamma.new_zeros(key[1] - gamma.numel())]).to(key[0])
                q.phi_gamma.copy_(padded[key])
        self.last_step = i

    def finish(self) -> None:
        """The state after the last stage, i.e. step(end_step), then Phi removed from every layer (and
        the optimizer) unless it is sharded (FSDP2: it stays masked, rank 0, and to_deploy drops it). Call
        it after the training loop, before qvgen.to_deploy. Idempotent."""
        self.step(max(self.end_step, self.last_step or 0))
        for _, q in self.layers:
            if q.phi_l is not None and q.phi_width == 0 and not q.phi_sharded:
                self._remove(q)

    @staticmethod
    def _may_remove(q: QLinear) -> bool:
        # Under torch.distributed a wrapper (DDP's buckets, FSDP2's groups) holds Phi: mask it until finish.
        dist = torch.distributed
        return not q.phi_sharded and not (dist.is_available() and dist.is_initialized())

    def _remove(self, q: QLinear) -> None:
        params = [q.phi_l, q.phi_r]
        q.remove_phi()
        self._forget(params, remove=True)

    def _shrink_to(self, name: str, q: QLinear, target: int, i: int) -> None:
        width = q.phi_width
        if width < target:
            fail("RankDecay.step", "i", f"a step at or after layer '{name}''s stage (its Phi has width "
                 f"{width}, step {i} needs {target})", i)
        while width > target:
            width //= 2
            if width == 0 and self._may_remove(q):
                self._remove(q)
                continue
            if width == 0:
                q.set_phi(torch.zeros(q.out_features, 0), torch.zeros(0, q.in_features))
            else:
                q.set_phi(*resvd(*q.phi_factors(), width))
            self._forget([q.phi_l, q.phi_r], remove=False)

    def _forget(self, params: list[nn.Parameter], remove: bool) -> None:
        """Reset the optimizer state of params (moments are meaningless after a re-SVD): zeroed in place
        (the same as a fresh Adam state, step 0, and the state keeps its structure for sharded checkpoints);
        with remove, dropped and the params taken out of the param groups."""
        if self.optimizer is None:
            return
        for p in params:
            state = self.optimizer.state.get(p)
            if remove:
                self.optimizer.state.pop(p, None)
            elif state:
                with torch.no_grad():
                    for v in state.values():
                        if isinstance(v, torch.Tensor):
                            v.zero_()
        if remove:
            ids = {id(p) for p in params}
            for group in self.optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]

    def state_dict(self) -> dict[str, Any]:
        return {"rank0": self.rank0, "total_steps": self.total_steps, "schedule": self.schedule,
                "decay_end": self.decay_end, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the schedule position (re-applying the last step: shapes and gamma follow it). A state
        saved before decay_end existed ran the paper's schedule."""
        state = {"decay_end": PAPER_DECAY_END, **state}
        for key in ("rank0", "total_steps", "schedule", "decay_end"):
            if key not in state:
                fail("RankDecay.load_state_dict", "state", f"a dict with key '{key}'", sorted(state))
            if state[key] != getattr(self, key):
                fail("RankDecay.load_state_dict", key, repr(getattr(self, key)), repr(state[key]))
        if state.get("last_step") is not None:
            self.step(int(state["last_step"]))


__all__ = ["DEFAULT_DECAY_END", "PAPER_DECAY_END", "RankDecay"]
