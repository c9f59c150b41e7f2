"""The distillation trainer: a quantized student learns to match a frozen full-precision teacher.

Each step ``i``: rank decay ``step(i)`` (before anything else), a batch from ``data_fn(i, g)`` with a
generator ``g`` derived from (seed, i) only, the caption-dropout draw (when enabled), noise and
timesteps from the same ``g``, one teacher and one student forward on the same inputs, the objective's
weighted MSE, backward, gradient clipping (the pre-clip norm is logged), AdamW and LR-scheduler steps.
Nothing depends on the global RNG or on how many steps this process ran, so a run resumed from a
checkpoint ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from qvgen_kernels.format import fail

from qvgen.models.adapters import ModelAdapter, adapter_for
from qvgen.train.checkpoint import (find_checkpoint, load_checkpoint, load_optimizer_state_by_name,
                                    save_checkpoint)
from qvgen.train.config import TrainConfig
from qvgen.train.data import caption_dropout, check_batch, step_generator
from qvgen.train.metrics import MetricsLog
from qvgen.train.objectives import objective_for
from qvgen.train.optim import build_optimizer, build_scheduler, clip_gradients, named_trainable


def _dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) unless torch.distributed is initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cast_inputs(model: nn.Module, x: torch.Tensor, cond: dict) -> tuple[torch.Tensor, dict]:
    """Floating inputs in the model's parameter dtype (a bf16 teacher next to an fp32 student)."""
    p = next(model.parameters(), None)
    if p is None or not p.is_floating_point():
        return x, cond

    def cast(v):
        return v.to(p.device, p.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    return cast(x), {k: cast(v) for k, v in cond.items()}


def _check_fp32_trainable(student: nn.Module) -> None:
    """AdamW on low-precision weights rounds small updates away: the trainable master weights must be fp32."""
    for name, p in student.named_parameters():
        if p.requires_grad and p.dtype != torch.float32:
            fail("Distiller", "student", "fp32 trainable parameters (load the student in fp32; "
                 "TrainConfig.autocast 'auto' or 'bf16' runs the compute in bf16)",
                 f"parameter '{name}' of dtype {p.dtype}")


class Distiller:
    """Distil ``teacher`` into the quantized ``student`` (see the module docstring).

    adapter: a ``ModelAdapter``, an architecture name, or None (chosen from the student's class).
    data_fn: ``(step, generator) -> (x0, cond)``; must draw its randomness from ``generator`` only.
    rank_decay: True (a ``qvgen.RankDecay`` over ``cfg.steps``), False/None (no decay) or a RankDecay.
    objective: override the objective chosen from the adapter's prediction type.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, adapter: ModelAdapter | str | None,
                 data_fn: Callable, cfg: TrainConfig, rank_decay: object = True, objective: object = None):
        for arg, v in (("student", student), ("teacher", teacher)):
            if not isinstance(v, nn.Module):
                fail("Distiller", arg, "an nn.Module", type(v).__name__, TypeError)
        if not callable(data_fn):
            fail("Distiller", "data_fn", "a callable (step, generator) -> (x0, cond)", type(data_fn).__name__,
                 TypeError)
        if not isinstance(cfg, TrainConfig):
            fail("Distiller", "cfg", "a TrainConfig", type(cfg).__name__, TypeError)
        _check_fp32_trainable(student)
        self.student, self.teacher, self.data_fn, self.cfg = student, teacher, data_fn, cfg
        self.adapter = adapter_for(student, adapter)
        self.objective = objective if objective is not None else objective_for(self.adapter.prediction, cfg.target)
        self.device = next(student.parameters()).device
        self.rank, self.world = _dist_info()
        self.is_main = self.rank == 0
        self.metrics = MetricsLog(cfg.out_dir)
        teacher.eval().requires_grad_(False)
        student.train()
        if cfg.grad_checkpointing:
            if not hasattr(student, "enable_gradient_checkpointing"):
                fail("Distiller", "cfg.grad_checkpointing", "a model with enable_gradient_checkpointing()",
                     type(student).__name__)
            student.enable_gradient_checkpointing()
        self.optimizer, self.scheduler = self._build_optim()
        self.decay = self._make_decay(rank_decay)
        self.start_step = 0
        self._ddp: nn.Module | None = None
        self._ddp_key: tuple | None = None

    # -- set-up -------------------------------------------------------------------------------------

    def _build_optim(self):
        c = self.cfg
        opt = build_optimizer(self.student, lr=c.lr, clip_lr=c.clip_lr, phi_lr=c.phi_lr, quant_lr=c.quant_lr,
                              weight_decay=c.weight_decay, betas=c.betas, eps=c.eps)
        return opt, build_scheduler(opt, c.steps, c.warmup)

    def _make_decay(self, rank_decay: object):
        if rank_decay is None or rank_decay is False:
            return None
        if rank_decay is True:
            from qvgen.rank_decay import RankDecay

            return RankDecay(self.student, self.cfg.steps, schedule=self.cfg.rank_schedule,
                             optimizer=self.optimizer)
        if not all(hasattr(rank_decay, a) for a in ("step", "state_dict", "load_state_dict")):
            fail("Distiller", "rank_decay", "True, False or a RankDecay", type(rank_decay).__name__, TypeError)
        rank_decay.optimizer = self.optimizer  # the trainer owns the optimizer whose Phi state is reset
        return rank_decay

    def current_rank(self) -> int:
        """Phi's rank now (the widest layer's when no RankDecay drives it)."""
        if self.decay is not None:
            return int(self.decay.current_rank)
        return max((int(m.phi_rank) for m in self.student.modules() if hasattr(m, "phi_rank")), default=0)

    def _wrapped(self) -> nn.Module:
        """The student, wrapped in DDP under torch.distributed (re-wrapped when Phi changes shape)."""
        if self.world == 1:
            return self.student
        key = tuple((id(p), tuple(p.shape)) for p in self.student.parameters())
        if self._ddp is None or key != self._ddp_key:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp, self._ddp_key = DistributedDataParallel(self.student, device_ids=ids), key
        return self._ddp

    def _autocast(self):
        mode = self.cfg.autocast
        if mode == "auto":
            mode = "bf16" if self.device.type == "cuda" else "off"
        if mode == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # -- one step -----------------------------------------------------------------------------------

    def _forward_pair(self, step: int) -> torch.Tensor:
        """Build step ``step``'s batch and return the distillation loss (student graph attached)."""
        gen = step_generator(self.cfg.seed, step, self.rank, self.world)
        x0, cond = check_batch(step, self.data_fn(step, gen))
        cond = caption_dropout(step, cond, self.cfg.caption_dropout, gen)  # drawn after the batch
        noisy = self.objective.make_noisy(x0.to(self.device), gen)
        student = self._wrapped()
        with self._autocast():
            with torch.no_grad():
                x_t, cond_t = _cast_inputs(self.teacher, noisy.x_t, cond)
                target = self.adapter.forward(self.teacher, x_t, noisy.t, cond_t)
            x_s, cond_s = _cast_inputs(self.student, noisy.x_t, cond)
            pred = self.adapter.forward(student, x_s, noisy.t, cond_s)
        return self.objective.loss(pred, target, noisy)

    def train_step(self, step: int) -> dict:
        """Run step ``step`` (0-based) and return its metrics record."""
        t0 = time.perf_counter()
        if self.decay is not None:
            self.decay.step(step)  # before the batch: Phi's shape and gamma for this step
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_pair(step)
        if not torch.isfinite(loss):
            value = float(loss.detach())
            raise FloatingPointError(f"Distiller.train_step: non-finite loss {value} at step {step}")
        loss.backward()
        grad_norm = clip_gradients([p for _, p in named_trainable(self.student)], self.cfg.max_grad_norm)
        lr = float(self.optimizer.param_groups[-1]["lr"])  # the "other" group: the latent weights' lr
        self.optimizer.step()
        self.scheduler.step()
        return {"step": step, "loss": float(loss.detach()), "grad_norm": grad_norm, "rank": self.current_rank(),
                "lr": lr, "seconds": time.perf_counter() - t0}

    # -- checkpoints --------------------------------------------------------------------------------

    def save(self, next_step: int) -> Path | None:
        """Checkpoint for resuming at ``next_step`` and refresh the plot (rank 0 only)."""
        path = None
        if self.is_main:
            rng = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            path = save_checkpoint(self.cfg.out_dir, self.student, self.optimizer, self.scheduler, self.decay,
                                   next_step, extra={"rng": rng, "train_config": self.cfg.to_dict()})
            self.metrics.plot()
        if self.world > 1:
            torch.distributed.barrier()
        return path

    def resume(self) -> int:
        """Load the latest checkpoint under ``cfg.out_dir``; returns the step training continues from."""
        path = find_checkpoint(self.cfg.out_dir)
        if path is None:
            fail("Distiller.resume", "cfg.out_dir", "a directory holding a checkpoint", self.cfg.out_dir)
        ckpt = load_checkpoint(path)
        saved_cfg = ckpt.state["extra"].get("train_config", {})
        for key in ("steps", "seed", "batch_size"):  # these fix the schedule and the data stream
            if key in saved_cfg and saved_cfg[key] != getattr(self.cfg, key):
                fail("Distiller.resume", f"cfg.{key}", f"{saved_cfg[key]!r} (the checkpoint's run)",
                     repr(getattr(self.cfg, key)))
        # QLinear adopts the saved Phi width (or drops Phi) while loading; then the schedule position.
        self.student.load_state_dict(ckpt.model_state)
        if self.decay is not None and ckpt.state["rank_decay"] is not None:
            self.decay.load_state_dict(ckpt.state["rank_decay"])
        # Rebuild over the current parameters, then restore the state by parameter name.
        self.optimizer, self.scheduler = self._build_optim()
        if self.decay is not None:
            self.decay.optimizer = self.optimizer
        load_optimizer_state_by_name(self.student, self.optimizer, ckpt.state["optimizer"])
        self.scheduler.load_state_dict(ckpt.state["scheduler"])
        rng = ckpt.state["extra"].get("rng", {})
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.start_step = ckpt.step
        if self.is_main:
            self.metrics.truncate(self.start_step)
        return self.start_step

    # -- the loop -----------------------------------------------------------------------------------

    def _progress(self):
        from tqdm import tqdm

        show = self.cfg.progress and self.is_main and sys.stderr.isatty()
        return tqdm(range(self.start_step, self.cfg.steps), initial=self.start_step, total=self.cfg.steps,
                    disable=not show, desc="distill", dynamic_ncols=True)

    def run(self, resume: bool = False) -> dict:
        """Train to ``cfg.steps`` (continuing from the latest checkpoint when ``resume`` and one exists).

        Returns a summary: final step, last loss, final rank, checkpoint and metrics paths.
        """
        if resume and find_checkpoint(self.cfg.out_dir) is not None:
            self.resume()
        last = None
        bar = self._progress()
        for step in bar:
            last = self.train_step(step)
            done = step + 1
            if self.is_main and (step % self.cfg.log_every == 0 or done == self.cfg.steps):
                self.metrics.append(last)
            bar.set_postfix(loss=f"{last['loss']:.4g}", rank=last["rank"])
            if self.cfg.ckpt_every and done % self.cfg.ckpt_every == 0 and done < self.cfg.steps:
                self.save(done)
        bar.close()
        if self.decay is not None:
            # cfg.steps >= end_step: Phi is removed from every layer (RankDecay.finish() in a hand loop). Kept
            # as step() so that wrappers exposing only step/state_dict/load_state_dict work too.
            self.decay.step(self.cfg.steps)
        path = self.save(self.cfg.steps)
        return {"step": self.cfg.steps, "loss": None if last is None else last["loss"],
                "rank": self.current_rank(), "checkpoint": path, "metrics": self.metrics.path}
