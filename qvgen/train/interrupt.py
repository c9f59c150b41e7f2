"""Ctrl-C during training stops the run at the next step boundary, never half-way and never silently.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be; when that is
a finalizer (``tqdm.__del__``, ``WeakSet._remove``) Python prints "Exception ignored in ..." and training goes
on. While a ``StopOnInterrupt`` is active the handler only records the signal; ``check`` raises
KeyboardInterrupt at a safe point, after every rank agreed (torchrun signals each rank at slightly different
moments, and a rank stopping alone would leave the others waiting in a collective). A second Ctrl-C raises at
once (and is still honoured at the next check should a finalizer swallow it).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import torch

from qvgen.distributed.parallel import sum_across_ranks

# A signal repeated within this many seconds is one Ctrl-C delivered twice (a launcher forwarding the
# terminal's signal to a process that got it too), not a user asking to stop at once.
REPEAT_S = 0.5


class StopOnInterrupt:
    """Context manager: SIGINT recorded while active (main thread only; the previous handler is restored
    on exit, and an ignored SIGINT stays ignored). ``announce``: write a one-line notice to stderr."""

    def __init__(self, announce: bool = True, device: torch.device | str = "cpu") -> None:
        self.announce, self.device = announce, device
        self.pending_since: float | None = None
        self._previous = None
        self._installed = False

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                self._previous = previous
                signal.signal(signal.SIGINT, self._on_sigint)
                self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _on_sigint(self, signum, frame) -> None:
        now = time.monotonic()
        if self.pending_since is None:
            self.pending_since = now
            if self.announce:  # os.write: print() here could re-enter a write the signal interrupted
                os.write(2, b"\nqvgen: interrupted; stopping after this step (Ctrl-C again to stop at once)\n")
        elif now - self.pending_since > REPEAT_S:
            raise KeyboardInterrupt("interrupted twice: stopped at once")

    def check(self, where: str) -> None:
        """Raise KeyboardInterrupt when any rank was interrupted (a collective under torch.distributed:
        every rank calls it at the same points)."""
        (interrupted,) = sum_across_ranks([self.pending_since is not None], self.device)
        if interrupted:
            raise KeyboardInterrupt(where)


__all__ = ["REPEAT_S", "StopOnInterrupt"]
