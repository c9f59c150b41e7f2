"""Run a worker function in N processes joined by a gloo process group, with a wall-clock bound.

The worker must be importable (a module-level function): the processes are spawned, not forked.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import warnings

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # two processes on a shared CPU: no oversubscription
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()  # both ranks done before either tears the group (and rank 0's store) down
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # A finished worker leaves without the interpreter's teardown: about 1 run in 8, a gloo thread still joinable
    # at static destruction aborted a rank ("terminate called without an active exception", no Python frame)
    # after its work was done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_workers(fn, *args, world: int = 2, timeout: float = 60.0) -> None:
    """fn(rank, world, *args) in `world` processes; raises if one fails or the run exceeds `timeout` s.

    A rank killed by SIGABRT / SIGSEGV inside torch's gloo teardown (seen about 1 run in 16 on the landed code too,
    "terminate called without an active exception") gets one fresh rerun, with a warning; a Python exception or
    an assertion in a worker is never retried."""
    try:
        _run_once(fn, args, world, timeout)
    except mp.ProcessExitedException as e:
        if e.signal_name not in ("SIGABRT", "SIGSEGV"):
            raise
        warnings.warn(f"run_workers: rank {e.error_index} died by {e.signal_name}; rerunning once")
        _run_once(fn, args, world, timeout)


def _run_once(fn, args: tuple, world: int, timeout: float) -> None:
    ctx = mp.start_processes(_entry, args=(fn, world, free_port(), args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"run_workers: {getattr(fn, '__name__', fn)} exceeded {timeout} s")
