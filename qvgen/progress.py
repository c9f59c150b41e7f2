"""What a long command tells its user while it runs: a bar on a terminal, and one-line progress at least every
``every_s`` seconds (and at each phase) when the output goes to a file or a pipe, where a bar redraws nothing
readable (``Progress``, used by train, precompute and generate); the demo's thread count fitted to the machine's
free cores and its expected total time, measured from the first training steps (``auto_threads``, ``Ticker``).

Kept below train, data and apps (the ``qvgen`` layer) so every command reports progress the same way."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable

EVERY_S = 30.0  # a log line at least every 30 s keeps "once a minute" with room for a slow step


def interactive() -> bool:
    """Bars only when both streams are terminals: `cmd > log.txt` must get lines in the file (the bar would
    go to the terminal's stderr and leave the log empty), `cmd 2> err.txt` lines too."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def _say(line: str) -> None:
    print(line, flush=True)  # flushed: a file or a pipe otherwise sees nothing until the buffer fills


class Progress:
    """Progress of ``total`` units of work named ``desc``: a tqdm bar when ``tty`` (default: ``interactive()``),
    otherwise a line ``[desc] step i/N, <postfix>, <elapsed> elapsed, about <eta> left`` on the first update,
    then at least every ``every_s`` seconds, and at the last unit. ``enabled=False`` shows nothing.
    ``phase(what)`` logs a line off a terminal (bar or not, it never repeats often enough to flood a log)."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, unit: str = "step", enabled: bool = True,
                 every_s: float | None = None, tty: bool | None = None, log: Callable[[str], None] = _say,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.n, self.initial = total, desc, unit, initial, initial
        self.enabled, self.log, self.clock = enabled, log, clock
        self.every_s = EVERY_S if every_s is None else every_s  # read at each start: tests shorten it
        self.tty = interactive() if tty is None else tty
        self.start = clock()
        self.last: float | None = None  # time of the last line; None: none yet
        self.postfix: dict[str, object] = {}
        self.bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

    @property
    def lines(self) -> bool:
        return self.enabled and not self.tty

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        self.postfix.update(postfix)
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: str(v) for k, v in self.postfix.items()}, refresh=False)
        elif self.lines:
            now = self.clock()
            if self.last is None or now - self.last >= self.every_s or self.n >= self.total:
                self.last = now
                self.log(self._line(now))

    def _line(self, now: float) -> str:
        elapsed, done = now - self.start, self.n - self.initial
        parts = [f"[{self.desc}] {self.unit} {self.n}/{self.total}"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts.append(f"{_minutes(elapsed)} elapsed")
        if 0 < done and self.n < self.total:
            parts.append(f"about {_minutes(elapsed / done * (self.total - self.n))} left")
        return ", ".join(parts)

    def phase(self, what: str) -> None:
        if self.lines:
            self.last = self.clock()
            self.log(f"[{self.desc}] {what} ({_minutes(self.last - self.start)} elapsed)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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

    def __init__(self, log: Callable[[str], None], total_steps: int, every_s: float = EVERY_S, calibrate: int = 5,
                 other_fraction: float = 0.15, tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.log, self.total, self.every_s, self.calibrate = log, total_steps, every_s, calibrate
        self.other_fraction = other_fraction
        self.tty = interactive() if tty is None else tty
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
