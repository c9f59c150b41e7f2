"""QAT fake-quant benchmark: LSQ+ weight and per-token activation fake quant, forward + backward, on the Triton
backend vs the eager reference, at the real models' linear shapes; plus one QLinear QAT step vs an nn.Linear step.

    python -m benchmarks.bench_fake_quant            # GPU: real shapes, bf16
    python -m benchmarks.bench_fake_quant --smoke    # CPU smoke test: tiny shapes, fp32

Rows (a provider that cannot run is recorded with ``skipped`` and the reason):
    <backend>:weight   y = ops.fake_quant_weight(W [N, K], scale [N], zero [N], 4 bits); grads of W, scale, zero
    <backend>:act      y = ops.fake_quant_act(x [M, K], 4 bits, clip_lo [M], clip_hi [M]); grads of x and clips
    step:nn.Linear     forward + backward of nn.Linear(K, N) on x [M, K] (x.dtype: bf16 on GPU)
    step:qlinear[<b>]  the same with qvgen.QLinear W4A4, Phi rank 32, QVGEN_BACKEND=<b> (auto = the default)
Byte model of a fake-quant forward + backward over a tensor of T elements of e bytes: the forward reads T and
writes T, the backward reads the incoming gradient and the input and writes the input's gradient: 5 T e
(per-row / per-channel parameters are O(M + N) and left out). ``frac_bandwidth`` divides by the in-run copy
bandwidth. Gradients come from torch.autograd.grad (no accumulation into .grad inside the timing).
Writes ``benchmarks/results/<device>/fake_quant_bench.{json,png,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any, Callable, Iterator

import torch
from torch import nn

from benchmarks import _kernels_common as kc
from benchmarks._ratios import x_faster
from qvgen_kernels import ops, registry

BACKENDS = ("reference", "triton")
BITS = 4
QAT_RANK = 32


def _fq_fn(kind: str, sh: kc.LayerShape, device: torch.device, dtype: torch.dtype, backend: str
           ) -> tuple[Callable[[], Any], int]:
    """(fake quant forward + backward callable, bytes moved) for 'weight' ([N, K]) or 'act' ([M, K])."""
    gen = torch.Generator().manual_seed(sh.m + 7 * sh.k + 13 * sh.n)
    rows = sh.n if kind == "weight" else sh.m
    t = torch.randn(rows, sh.k, generator=gen).to(device, dtype).requires_grad_(True)
    g = torch.randn(rows, sh.k, generator=gen).to(device, dtype)
    if kind == "weight":
        scale = (t.detach().float().abs().amax(1) / 7.5).clamp_min(1e-6).requires_grad_(True)
        zero = torch.full((rows,), 7.5, device=device).requires_grad_(True)
        inputs = (t, scale, zero)

        def fwd() -> torch.Tensor:
            return ops.fake_quant_weight(t, scale, zero, BITS, grad_scale=0.01, backend=backend)
    else:
        lo = torch.full((rows,), 0.9, device=device).requires_grad_(True)
        hi = torch.full((rows,), 0.95, device=device).requires_grad_(True)
        inputs = (t, lo, hi)

        def fwd() -> torch.Tensor:
            return ops.fake_quant_act(t, BITS, lo, hi, backend=backend)

    return (lambda: torch.autograd.grad(fwd(), inputs, g)), 5 * t.numel() * t.element_size()


@contextlib.contextmanager
def _backend_env(name: str) -> Iterator[None]:
    """QVGEN_BACKEND=name inside the block ('auto' leaves it unset)."""
    old = os.environ.pop(registry.ENV_VAR, None)
    if name != "auto":
        os.environ[registry.ENV_VAR] = name
    try:
        yield
    finally:
        os.environ.pop(registry.ENV_VAR, None)
        if old is not None:
            os.environ[registry.ENV_VAR] = old


def _step_rows(sh: kc.LayerShape, device: torch.device, dtype: torch.dtype, args: argparse.Namespace
               ) -> list[dict[str, Any]]:
    """nn.Linear step vs QLinear QAT step (forward + backward) on one shape."""
    import qvgen

    torch.manual_seed(0)
    x = torch.randn(sh.m, sh.k, device=device, dtype=dtype)
    g = torch.randn(sh.m, sh.n, device=device, dtype=dtype)
    lin = nn.Linear(sh.k, sh.n, device=device, dtype=dtype)
    rows = [{"provider": "step:nn.Linear", **kc.timed(lambda: torch.autograd.grad(lin(x), list(lin.parameters()), g),
                                                      device, args.warmup, args.repeats)}]
    # minmax init: the calibration is not timed and the step costs the same for any scale values.
    cfg = qvgen.QuantConfig.preset("w4a4", rank=QAT_RANK, w_init="minmax")
    q = qvgen.QLinear.from_linear(nn.Linear(sh.k, sh.n, device=device, dtype=dtype), cfg)
    qvgen.set_timesteps(q, 500)
    params = [p for p in q.parameters() if p.requires_grad]
    for name in ("auto",) + tuple(args.backends):
        reason = None if name == "auto" else registry.unavailable_reason(name, device)
        row = {"provider": f"step:qlinear[{name}]"}
        if reason is None:
            with _backend_env(name):
                row["resolved_backend"] = registry.resolve("fake_quant_act", device)[0]
                row.update(kc.timed(lambda: torch.autograd.grad(q(x), params, g), device, args.warmup,
                                    args.repeats))
        else:
            row["skipped"] = reason
        rows.append(row)
    base = rows[0].get("us")
    for r in rows:
        if "us" in r and base:
            r["x_faster_than_linear"] = x_faster(base, r["us"])
        r.update(kc.shape_dict(sh))
    return rows


def bench_shape(sh: kc.LayerShape, device: torch.device, dtype: torch.dtype, args: argparse.Namespace,
                peaks: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind in ("weight", "act"):
        ref_us = None
        for backend in args.backends:
            row: dict[str, Any] = {"provider": f"{backend}:{kind}", "backend": backend, "kind": kind}
            reason = registry.unavailable_reason(backend, device)
            if reason is None:
                fn, nbytes = _fq_fn(kind, sh, device, dtype, backend)
                row.update(kc.timed(fn, device, args.warmup, args.repeats))
                if "us" in row:
                    row.update(gbs=nbytes / row["us"] / 1e3, bytes_model=nbytes)
                    bw = peaks.get("bandwidth_gbs")
                    row["frac_bandwidth"] = row["gbs"] / bw if bw else None
            else:
                row["skipped"] = reason
            if backend == "reference":
                ref_us = row.get("us")
            if "us" in row and ref_us:
                row["x_faster_than_reference"] = x_faster(ref_us, row["us"])
            rows.append({**row, **kc.shape_dict(sh)})
    return rows


def _plot(rows: list[dict[str, Any]], title: str) -> Callable:
    labels = list(dict.fromkeys(f"{r['model']}:{r['layer']}" for r in rows if r["provider"].count(":") == 1
                                and not r["provider"].startswith("step")))
    series = {}
    for prov in dict.fromkeys(r["provider"] for r in rows if not r["provider"].startswith("step")):
        by = {f"{r['model']}:{r['layer']}": r.get("frac_bandwidth") for r in rows if r["provider"] == prov}
        series[prov] = [by.get(lb) for lb in labels]
    return lambda path: kc.bar_plot(path, title, labels, series, "fraction of copy bandwidth (fwd + bwd)")


def markdown(payload: dict[str, Any], device: torch.device) -> str:
    """The table beside fake_quant_bench.json: microseconds per fwd + bwd and the speed ratios."""
    lines = [f"# Fake-quant benchmark ({device}, {payload['dtype']}, {payload['bits']} bits)", "",
             "x faster than: the reference's (or nn.Linear's) time / this row's; above 1 = faster.", "",
             "| shape | provider | us | x faster than reference | fraction of copy bandwidth |",
             "|---|---|---:|---:|---:|"]
    for r in payload["rows"]:
        us = f"{r['us']:.1f}" if "us" in r else f"skipped: {r['skipped'][:60]}"
        x, bw = r.get("x_faster_than_reference"), r.get("frac_bandwidth")
        lines.append(f"| {r['model']}:{r['layer']} {r['m']}x{r['k']}x{r['n']} | {r['provider']} | {us} | "
                     f"{'' if x is None else f'{x:.2f}'} | {'' if bw is None else f'{bw:.3f}'} |")
    lines += ["", "| QAT step shape | provider | us | x faster than nn.Linear |", "|---|---|---:|---:|"]
    for r in payload["steps"]:
        us = f"{r['us']:.1f}" if "us" in r else f"skipped: {r['skipped'][:60]}"
        x = r.get("x_faster_than_linear")
        lines.append(f"| {r['m']}x{r['k']}x{r['n']} | {r['provider']} | {us} | {'' if x is None else f'{x:.2f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_fake_quant", description=__doc__.split("\n")[0])
    kc.add_common_args(ap, BACKENDS)
    args, device, dtype, peaks = kc.parse_run(ap, argv, "bench_fake_quant")
    shapes = kc.gemm_shapes(args.smoke, small_m=False)
    rows = [r for sh in shapes for r in bench_shape(sh, device, dtype, args, peaks)]
    step_shape = (kc.LayerShape("tiny", "ffn_up", 33, 64, 96) if args.smoke else
                  next(s for s in kc.model_layers("wan-1.3b") if s.layer == "ffn_up"))
    steps = _step_rows(step_shape, device, dtype, args)
    for r in rows + steps:
        t = f"{r['us']:10.1f} us" if "us" in r else f"skipped: {r['skipped'][:80]}"
        print(f"{r['model']}:{r['layer']} {r['m']}x{r['k']}x{r['n']} {r['provider']:>22} {t}", flush=True)
    payload = {"dtype": str(dtype), "bits": BITS, "qat_rank": QAT_RANK, "peaks": peaks, "rows": rows,
               "steps": steps}
    path = kc.write_results(kc.out_dir(args, device), "fake_quant_bench", device, payload,
                            _plot(rows, f"fake quant fwd + bwd ({device})"))
    path.with_suffix(".md").write_text(markdown(payload, device))
    print(f"wrote {path}, .png and .md")
    return payload


if __name__ == "__main__":
    main()
