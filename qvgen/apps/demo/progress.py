"""What the demo tells a user while it runs: a thread count fitted to the machine's free cores, one-line progress
at least every ``every_s`` seconds when stdout is not a terminal (the trainer draws bars on a terminal), and the
expected total time, measured from the first training steps on this machine."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable


def auto_threads(cpu_count: int | None = None, load: float | None = None, cap: int = 4) -> int:
    """Torch threads for the demo: the cores left free by the 1-minute load, at least 1, at most ``cap``.

    On a busy machine extra OpenMP threads spin-wait for cores other jobs hold (one thread was 2.7x faster
    than two on a loaded 2-core machine), so only the free cores are used; the tiny model gains little
    beyond a few threads anyway."""
    n = cpu_count or os.cpu_count() or 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(n, cap, math.floor(n - load + 0.5)))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class Ticker:
    """Progress of the demo's training runs, counted over all of them (``total_steps``).

    ``wrap(data_fn, name)`` returns a data function for ``qvgen.train.Distiller`` that reports step ``i`` before
    handing over its batch: a line every ``every_s`` seconds when stdout is not a terminal, and once, after the
    first ``calibrate`` steps, the expected total time of the demo (training at the measured pace, plus
    ``other_fraction`` of it for evaluation and deployment)."""

    def __init__(self, log: Callable[[str], None], total_steps: int, every_s: float = 30.0, calibrate: int = 5,
                 other_fraction: float = 0.15, tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.log, self.total, self.every_s, self.calibrate = log, total_steps, every_s, calibrate
        self.other_fraction = other_fraction
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.clock = clock
        self.start = clock()
        self.done = 0  # training steps finished in earlier runs
        self.run_start: tuple[float, int] | None = None
        self.last = self.start
        self.expected: float | None = None

    def tick(self, name: str, step: int, steps: int) -> None:
        """Called at the start of step ``step`` of a run of ``steps``."""
        now = self.clock()
        if step == 0 or self.run_start is None:
            self.run_start = (now, self.done)
        finished = self.done + step
        if self.expected is None and step >= self.calibrate:
            t0, d0 = self.run_start
            pace = (now - t0) / max(1, finished - d0)
            left = pace * (self.total - finished)
            self.expected = (now - self.start + left) + self.other_fraction * pace * self.total
            self.log(f"[demo] expected time on this machine: about {_minutes(self.expected)} in all "
                     f"({pace:.2f} s per training step x {self.total} steps, {_threads()} torch threads, "
                     f"load average {_load()})")
        if not self.tty and now - self.last >= self.every_s:
            self.last = now
            t0, d0 = self.run_start
            pace = (now - t0) / max(1, finished - d0)
            self.log(f"[demo] {name}: step {step}/{steps}; training {finished}/{self.total} steps, "
                     f"{_minutes(now - self.start)} elapsed, about {_minutes(pace * (self.total - finished))} "
                     f"of training left")
        if step + 1 == steps:
            self.done += steps

    def wrap(self, data_fn: Callable, name: str, steps: int) -> "_Ticking":
        return _Ticking(data_fn, self, name, steps)

    def heartbeat(self, what: str) -> None:
        """A phase outside training starts (always logged: phases are rarer than once a minute)."""
        self.last = self.clock()
        self.log(f"[demo] {what} ({_minutes(self.last - self.start)} elapsed)")


class _Ticking:
    """A Distiller data function that reports progress; other attributes (identity, ...) are the wrapped one's."""

    def __init__(self, data_fn: Callable, ticker: Ticker, name: str, steps: int) -> None:
        self._fn, self._ticker, self._name, self._steps = data_fn, ticker, name, steps

    def __call__(self, step, generator):
        self._ticker.tick(self._name, step, self._steps)
        return self._fn(step, generator)

    def __getattr__(self, attr):
        return getattr(self._fn, attr)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"
