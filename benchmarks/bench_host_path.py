"""Host (Python) cost of one deployed Triton linear call, measured on the CPU with the kernels not launched.

On a GPU a deployed layer's call is host-bound up to about a thousand tokens (``bench_deployed_breakdown``: on an
H200, 250-530 us of host time per call against 18-40 us for ``F.linear``). That host time is this library's Python
(checks, launch choice, allocations, the custom-op dispatch) plus Triton's launcher and the CUDA driver. This
measures the first part alone, anywhere: ``ops.prepacked_linear`` on the Triton backend with its two kernel
launches (activation quantize, GEMM) replaced by no-ops and the data checks off, as they are on CUDA
(``qvgen_kernels._ops.check_data``). Triton's own launch cost is not in it (it needs a GPU).

    python -m benchmarks.bench_host_path [--m 16 256 1024 4096] [--k 5120] [--n 13824] [--repeats 7] [--out F]

Prints one line per M: microseconds per call (best of ``--repeats`` runs of ``--calls`` calls, one torch thread),
and the share spent in the backend's function (quantize + GEMM wrappers) against the op dispatch and checks around
it; ``--out`` also writes them as JSON with the provenance. It replaces module globals of the Triton backend: run it
as its own process.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton backend on CPU tensors; no kernel runs below

import torch  # noqa: E402

from pathlib import Path  # noqa: E402

from benchmarks import _harness  # noqa: E402
from benchmarks._kernels_common import random_weight  # noqa: E402
from qvgen_kernels import _ops, ops  # noqa: E402


class _NoLaunch:
    """Stands for a Triton kernel: ``kernel[grid](...)`` and ``kernel.fn[grid](...)`` launch nothing."""

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: None

    @property
    def fn(self) -> "_NoLaunch":
        return self


def stub_kernels() -> None:
    from qvgen_kernels.triton import _utils, gemm_tc, quantize_i8

    gemm_tc._tc_gemm_kernel = _NoLaunch()
    quantize_i8._quantize_i8_kernel = _NoLaunch()
    _utils._INTERPRET = False  # outputs in the GPU's dtypes (the interpreter stores bf16 as fp32)
    _ops.check_data = lambda t: False  # as on CUDA: no data check (each would be a device sync)


def per_call_us(fn: Callable[[], Any], repeats: int, calls: int) -> float:
    for _ in range(min(20, calls)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / calls * 1e6


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, nargs="+", default=[16, 256, 1024, 4096])
    ap.add_argument("--k", type=int, default=5120)
    ap.add_argument("--n", type=int, default=13824)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    stub_kernels()
    from qvgen_kernels.triton import linear

    gen = torch.Generator().manual_seed(0)
    w_packed, scale, zero = random_weight(args.n, args.k, 4, gen)
    packed = ops.prepack_linear(w_packed, scale, zero, w_bits=4, a_bits=4, k=args.k, backend="triton")
    bias = torch.randn(args.n, generator=gen).bfloat16()
    lo, hi = torch.tensor([0.9]), torch.tensor([0.95])
    rows = []
    for m in args.m:
        x = torch.randn(m, args.k, generator=gen).bfloat16()
        call = per_call_us(lambda: ops.prepacked_linear(x, packed, bias, lo, hi), args.repeats, args.calls)
        inner = per_call_us(lambda: linear.prepacked_linear(x, packed.tensors, bias, 4, 4, args.k, args.n, lo, hi),
                            args.repeats, args.calls)
        row = dict(m=m, k=args.k, n=args.n, call_us=round(call, 1), backend_fn_us=round(inner, 1),
                   dispatch_us=round(call - inner, 1))
        rows.append(row)
        print(f"M={m:5}  {call:6.1f} us per call: backend function {inner:5.1f} us, dispatch and checks "
              f"{call - inner:5.1f} us", flush=True)
    if args.out is not None:
        _harness.write_json(args.out, {"provenance": _harness.provenance(torch.device("cpu")),
                                       "what": "host Python cost per call, kernel launches replaced by no-ops",
                                       "rows": rows})
    return rows


if __name__ == "__main__":
    main()
