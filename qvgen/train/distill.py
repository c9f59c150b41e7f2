"""The distillation trainer: a quantized student learns to match a frozen full-precision teacher.

Each step ``i``: rank decay ``step(i)`` (before anything else), a batch from ``data_fn(i, g)`` with a
generator ``g`` derived from (seed, i) only, the caption-dropout draw (when enabled), noise and
timesteps from the same ``g``, one teacher and one student forward on the same inputs, the objective's
weighted MSE, backward, gradient clipping (the pre-clip norm is logged), AdamW and LR-scheduler steps.
A step whose loss or gradient norm is not finite is skipped (no optimizer step, logged; the LR schedule
still advances); more than ``cfg.max_skipped_steps`` in a row is an error. Weights that become non-finite
after an update stop the run before they reach a checkpoint.
Nothing depends on the global RNG or on how many steps this process ran, so a run resumed from a
checkpoint ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from qvgen_kernels.errors import fail

from qvgen.models.adapters import ModelAdapter, adapter_for
from qvgen.progress import Progress
from qvgen.distributed.parallel import is_model_sharded, mean_across_ranks, rank_noisy, sum_across_ranks
from qvgen.distributed.sharding import all_finite
from qvgen.quant.swap import model_config
from qvgen.train.checkpoint import LAST as CKPT_LAST, PREV as CKPT_PREV
from qvgen.train.checkpoint import (find_checkpoint, load_checkpoint, load_optimizer_state_by_name,
                                    save_checkpoint)
from qvgen.train.config import TrainConfig
from qvgen.train.dcp import LAST as DCP_LAST, find_sharded, load_sharded, save_sharded
from qvgen.train.interrupt import StopOnInterrupt
from qvgen.train.data import caption_dropout, check_batch, non_finite_rows, step_generator
from qvgen.train.metrics import MetricsLog
from qvgen.train.objectives import objective_for
from qvgen.train.optim import build_optimizer, build_scheduler, clip_gradients, named_trainable
from qvgen.train.resume_check import apply_overrides, check_quant_config, check_train_config

log = logging.getLogger("qvgen.train")


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


def _quant_dict(model: nn.Module) -> dict | None:
    cfg = model_config(model)
    return None if cfg is None else cfg.to_dict()


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
        self.sharded = is_model_sharded(student)  # FSDP2: no wrapper
        self.dcp = self.world > 1  # FSDP2 and DDP: checkpoints through torch.distributed.checkpoint
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
        self.skipped = 0  # consecutive skipped steps
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
            from qvgen.quant.rank_decay import RankDecay

            return RankDecay(self.student, self.cfg.steps, schedule=self.cfg.rank_schedule,
                             optimizer=self.optimizer, decay_end=self.cfg.decay_end)
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
        """The student, wrapped in DDP under torch.distributed (re-wrapped when Phi changes shape); an
        FSDP2-sharded student is its own wrapper."""
        if self.world == 1 or self.sharded:
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
        # A data function marked global_batch (train.data.rank_rows) draws the whole global batch from the
        # generator every rank shares and keeps its rows; noise then continues that stream, as in one process.
        whole = getattr(self.data_fn, "global_batch", False)
        gen = step_generator(self.cfg.seed, step, *((0, 1) if whole else (self.rank, self.world)))
        x0, cond = check_batch(step, self.data_fn(step, gen))
        bad = non_finite_rows(x0, cond)
        # Decided together: a rank skipping alone would leave the others waiting in the step's collectives.
        (n_bad,) = sum_across_ranks([len(bad)], self.device)
        if n_bad:
            self._bad_sample = self._name_bad_input(step, bad, n_bad, x0.shape[0])
            return None
        if self.world == 1:
            cond = caption_dropout(step, cond, self.cfg.caption_dropout, gen)  # drawn after the batch
            noisy = self.objective.make_noisy(x0.to(self.device), gen)
        else:  # one draw for the global batch, shared by all ranks (see qvgen.distributed.parallel)
            shared = gen if whole else step_generator(self.cfg.seed, step)
            cond = caption_dropout(step, cond, self.cfg.caption_dropout, shared)
            noisy = rank_noisy(self.objective, x0.to(self.device), shared, self.rank, self.world)
        student = self._wrapped()
        with self._autocast():
            with torch.no_grad():
                x_t, cond_t = _cast_inputs(self.teacher, noisy.x_t, cond)
                target = self.adapter.forward(self.teacher, x_t, noisy.t, cond_t)
            x_s, cond_s = _cast_inputs(self.student, noisy.x_t, cond)
            pred = self.adapter.forward(student, x_s, noisy.t, cond_s)
        return self.objective.loss(pred, target, noisy)

    def _name_bad_input(self, step: int, rows: list[int], n_bad: int, batch: int) -> str:
        """What the skip warning says: the rank holding the bad sample(s) names them (rows of the global
        batch; data set indices when the data function has a sampler), the other ranks say where they are."""
        if not rows:
            return f"non-finite input in {n_bad} sample(s) of step {step}'s batch, held by another rank"
        if self.world == 1:
            what = f"non-finite input in sample(s) {rows} of step {step}'s batch"
        else:
            what = (f"non-finite input in sample(s) {[self.rank * batch + r for r in rows]} of step {step}'s "
                    f"global batch (rows {rows} on rank {self.rank})")
        sampler = getattr(self.data_fn, "sampler", None)
        if sampler is not None and hasattr(sampler, "indices"):
            ids = sampler.indices(step, self.rank, self.world)
            what += f", data set index {[int(ids[r]) for r in rows]}"
        return what

    def train_step(self, step: int) -> dict:
        """Run step ``step`` (0-based) and return its metrics record."""
        t0 = time.perf_counter()
        if self.decay is not None:
            self.decay.step(step)  # before the batch: Phi's shape and gamma for this step
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_pair(step)
        if loss is None:  # a non-finite sample: nothing to learn from this step
            self._skip(step, float("nan"), [], what=self._bad_sample)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`")
                self.scheduler.step()
            return {"step": step, "loss": float("nan"), "grad_norm": float("nan"), "rank": self.current_rank(),
                    "lr": float(self.optimizer.param_groups[-1]["lr"]), "seconds": time.perf_counter() - t0}
        loss.backward()  # also for a non-finite loss: data-parallel ranks then agree on skipping via the norm
        # After backward: under FSDP2 the module holds its (unsharded) compute copies between forward and
        # backward; the sharded parameters, their gradients and the optimizer's references are back now.
        params = named_trainable(self.student)
        grad_norm = clip_gradients([p for _, p in params], self.cfg.max_grad_norm)
        if not torch.isfinite(loss):
            grad_norm = float("nan")
        lr = float(self.optimizer.param_groups[-1]["lr"])  # the "other" group: the latent weights' lr
        if math.isfinite(grad_norm):
            self.optimizer.step()
            self._check_weights(step, params)
            self.skipped = 0
            self.scheduler.step()
        else:
            self._skip(step, float(loss.detach()), params)
            with warnings.catch_warnings():  # the schedule follows the step index, skipped or not
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`")
                self.scheduler.step()
        return {"step": step, "loss": mean_across_ranks(loss), "grad_norm": grad_norm, "rank": self.current_rank(),
                "lr": lr, "seconds": time.perf_counter() - t0}

    def _skip(self, step: int, loss: float, params: list, what: str | None = None) -> None:
        """Drop this step's gradients instead of stepping on them; too many in a row is an error."""
        bad = [n for n, p in params if p.grad is not None and not all_finite([p.grad])]
        if what is None:
            what = f"non-finite loss {loss}" if not math.isfinite(loss) else f"non-finite gradients in {bad[:3]}"
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        if self.skipped > self.cfg.max_skipped_steps:
            raise FloatingPointError(
                f"Distiller.train_step: {what} at step {step}, the {self.skipped}th step in a row (from step "
                f"{step - self.skipped + 1}); limit cfg.max_skipped_steps={self.cfg.max_skipped_steps}. The last "
                f"checkpoint under {self.cfg.out_dir} holds finite weights")
        log.warning("Distiller: step %d skipped (%s); %d in a row, limit %d", step, what, self.skipped,
                    self.cfg.max_skipped_steps)

    def _check_weights(self, step: int, params: list) -> None:
        """Finite weights after the update (one host sync); else stop before they reach a checkpoint."""
        if all_finite([p for _, p in params]):  # collective when sharded: every rank checks together
            return
        bad = [n for n, p in params if not all_finite([p])]
        raise FloatingPointError(f"Distiller.train_step: the update of step {step} made {bad[:3]} non-finite "
                                 f"({len(bad)} parameters); nothing saved, the last checkpoint under "
                                 f"{self.cfg.out_dir} is intact")

    # -- checkpoints --------------------------------------------------------------------------------

    def save(self, next_step: int) -> Path | None:
        """Checkpoint for resuming at ``next_step`` and refresh the plot (rank 0 only; under torch.distributed
        every rank saves through torch.distributed.checkpoint)."""
        path = None
        if self.dcp:
            path = save_sharded(self.cfg.out_dir, self.student, self.optimizer, self.scheduler, self.decay,
                                next_step, extra={"train_config": self.cfg.to_dict(),
                                                  "quant_config": _quant_dict(self.student),
                                                  "skipped": self.skipped, "data": self._data_identity()})
            if self.is_main:
                self.metrics.plot()
            return path
        if self.is_main:
            rng = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            path = save_checkpoint(self.cfg.out_dir, self.student, self.optimizer, self.scheduler, self.decay,
                                   next_step, extra={"rng": rng, "train_config": self.cfg.to_dict(),
                                                     "quant_config": _quant_dict(self.student),
                                                     "skipped": self.skipped, "data": self._data_identity()})
            self.metrics.plot()
        if self.world > 1:
            torch.distributed.barrier()
        return path

    def _data_identity(self) -> str | None:
        return getattr(self.data_fn, "identity", None)

    def _check_data(self, extra: dict) -> None:
        """The data set is the one the checkpoint trained on (when both record one)."""
        saved, now = extra.get("data"), self._data_identity()
        if saved is not None and now is not None and saved != now:
            fail("Distiller.resume", "data_fn", f"the data set the checkpoint trained on (manifest {saved[:12]})",
                 f"another one (manifest {now[:12]}): the shard folder was replaced or rewritten")

    def resume(self, override: Iterable[str] = ()) -> int:
        """Load the latest checkpoint under ``cfg.out_dir``; returns the step training continues from.

        The checkpoint's TrainConfig and QuantConfig must equal the current ones, except run-time fields and
        the fields named in ``override`` (see ``qvgen.train.resume_check``)."""
        if self.dcp:
            return self._resume_sharded(override)
        path = find_checkpoint(self.cfg.out_dir)
        if path is None:
            fail("Distiller.resume", "cfg.out_dir", "a directory holding a checkpoint", self.cfg.out_dir)
        ckpt = load_checkpoint(path)
        extra = ckpt.state["extra"]
        overridden = check_train_config(extra.get("train_config"), self.cfg, override)
        check_quant_config(extra.get("quant_config", "not recorded"), self.student)
        self._check_data(extra)
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
        if overridden:
            apply_overrides(self.optimizer, self.scheduler, self.cfg)
        self.skipped = int(extra.get("skipped", 0))
        rng = ckpt.state["extra"].get("rng", {})
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.start_step = ckpt.step
        if self.is_main:
            self.metrics.truncate(self.start_step)
        return self.start_step

    def _resume_sharded(self, override: Iterable[str]) -> int:
        path = find_sharded(self.cfg.out_dir)
        if path is None:
            fail("Distiller.resume", "cfg.out_dir", "a directory holding a sharded checkpoint", self.cfg.out_dir)
        state = load_sharded(path, self.student, self.optimizer)  # model (Phi width from gamma) + optimizer
        extra = state["extra"]
        overridden = check_train_config(extra.get("train_config"), self.cfg, override)
        check_quant_config(extra.get("quant_config", "not recorded"), self.student)
        self._check_data(extra)
        if self.decay is not None and state["rank_decay"] is not None:
            self.decay.load_state_dict(state["rank_decay"])
        self.scheduler.load_state_dict(state["scheduler"])
        if overridden:
            apply_overrides(self.optimizer, self.scheduler, self.cfg)
        self.skipped = int(extra.get("skipped", 0))
        self.start_step = int(state["step"])
        if self.is_main:
            self.metrics.truncate(self.start_step)
        return self.start_step

    def has_checkpoint(self) -> bool:
        find = find_sharded if self.dcp else find_checkpoint
        return find(self.cfg.out_dir) is not None

    def _check_resumable(self, resume: bool | str) -> bool:
        """Whether to resume: True when a checkpoint of this run's kind exists. Never a silent restart:
        ``resume=True`` without one, a checkpoint written by another number of processes, or checkpoint
        remains that cannot be used are errors; ``resume="auto"`` starts fresh only from a folder holding
        no checkpoint at all."""
        if resume not in (True, False, "auto"):
            fail("Distiller.run", "resume", "True, False or 'auto'", repr(resume))
        if not resume:
            return False
        op, out = "Distiller.resume", self.cfg.out_dir
        other = find_checkpoint(out) if self.dcp else find_sharded(out)
        if not self.has_checkpoint() and other is not None:
            wrote = "one process" if self.dcp else "torchrun (several processes)"
            fail(op, "cfg.out_dir", f"a checkpoint written by {self.world} process(es) like this run "
                 f"(resharding between the single-process and the torchrun formats is not supported; resume "
                 f"with the original process count or start a new output folder)", f"one written by {wrote}: "
                 f"{other}")
        if self.has_checkpoint():
            return True
        remains = sorted(p.name for p in Path(out).glob("*") if p.name in (CKPT_LAST, CKPT_PREV, DCP_LAST)) \
            if Path(out).is_dir() else []
        if remains or resume is True:
            what = f"only incomplete checkpoint folders {remains}" if remains else "no checkpoint"
            fail(op, "cfg.out_dir", "a folder holding a complete checkpoint to resume from (without resume, "
                 "training starts from step 0)", f"{what} in {out}")
        return False

    # -- the loop -----------------------------------------------------------------------------------

    def _progress(self) -> Progress:
        # A bar on a terminal, a line at least every 30 s otherwise (a log file, a CI job); rank 0 only.
        return Progress(self.cfg.steps, "distill", initial=self.start_step,
                        enabled=self.cfg.progress and self.is_main)

    def run(self, resume: bool | str = False, override: Iterable[str] = ()) -> dict:
        """Train to ``cfg.steps``. ``resume``: True continues from the latest checkpoint and is an error
        without one; "auto" continues when there is one and starts fresh from a folder with no checkpoint;
        see ``_check_resumable``. ``override``: config fields allowed to differ from the checkpoint's.
        Ctrl-C (SIGINT, in the main thread) raises KeyboardInterrupt at the next step boundary, on every rank
        together; a second Ctrl-C raises at once. Checkpoints are never left half-written.

        Returns a summary: final step, last loss, final rank, checkpoint and metrics paths.
        """
        if self._check_resumable(resume):
            self.resume(override)
        elif self.is_main:
            self.metrics.truncate(0)  # a fresh run: no records of an earlier run in its log
        # Ctrl-C (every rank's SIGINT under torchrun) stops the run between steps, never inside one.
        with StopOnInterrupt(announce=self.is_main, device=self.device) as stop:
            summary = self._loop(stop)
            stop.check(self._interrupted(self.cfg.steps))  # a Ctrl-C during the final save is honoured too
        return summary

    def _interrupted(self, step: int) -> str:
        saved = self._saved_step
        where = (f"the checkpoint of step {saved} under {self.cfg.out_dir} resumes it (resume=True, qvgen train "
                 f"--resume)" if saved else "no checkpoint written yet")
        return f"training interrupted at step {step} of {self.cfg.steps}; {where}"

    def _loop(self, stop: StopOnInterrupt) -> dict:
        last = None
        self._saved_step = self.start_step
        bar = self._progress()
        try:
            for step in range(self.start_step, self.cfg.steps):
                stop.check(self._interrupted(step))
                last = self.train_step(step)
                done = step + 1
                if self.is_main and (step % self.cfg.log_every == 0 or done == self.cfg.steps):
                    self.metrics.append(last)
                bar.update(1, loss=f"{last['loss']:.4g}", rank=last["rank"])
                if self.cfg.ckpt_every and done % self.cfg.ckpt_every == 0 and done < self.cfg.steps:
                    self.save(done)
                    self._saved_step = done
                    bar.phase(f"checkpoint of step {done} saved")
        finally:
            bar.close()
        if self.decay is not None:
            # cfg.steps >= end_step: Phi is removed from every layer (masked when sharded). RankDecay.finish();
            # step() for wrappers exposing only step/state_dict/load_state_dict.
            from qvgen.quant.rank_decay import RankDecay

            if isinstance(self.decay, RankDecay):
                self.decay.finish()
            else:
                self.decay.step(self.cfg.steps)
        path = self.save(self.cfg.steps)
        self._saved_step = self.cfg.steps
        return {"step": self.cfg.steps, "loss": None if last is None else last["loss"],
                "rank": self.current_rank(), "checkpoint": path, "metrics": self.metrics.path}
