"""Packed low-bit GEMM benchmark: cuBLAS BF16, FP8 rowwise, int8 and qvgen's W4A4 / W3A3 / W4A8 / W8A8 GEMMs
(reference, Triton, compiled extension) side by side, at the Wan-1.3B / Wan-14B / CogVideoX-2B linear shapes.

    python -m benchmarks.bench_gemm                 # GPU: real shapes + small-M sweep, bf16
    python -m benchmarks.bench_gemm --smoke         # CPU smoke test: tiny shapes, fp32
    python -m benchmarks.bench_gemm --shapes check --plan   # the shapes and providers, no device touched

Providers (one row each per shape; a provider that cannot run is recorded with ``skipped`` and the reason):
    bf16          F.linear on x.dtype (bf16 on GPU, fp32 on CPU)
    fp8_rowwise   torch._scaled_mm, e4m3 inputs quantized beforehand, fp32 scales per row of x and per column
                  of W^T, bf16 out
    int8          torch._int_mm (int8 in, int32 out; no scales)
    <backend>:gemm:wXaY     ops.lowbit_gemm on codes quantized beforehand (ops.quantize_per_token)
    <backend>:linear:wXaY   ops.lowbit_linear: the per-token activation quantize included
    triton:deployed_gemm:wXaY    the Triton tensor-core GEMM alone on its load-time weight layout and the int8
                                 activation operand (both made outside the timing)
    triton:deployed_gemm_gluon:wXaY  the same GEMM as the Gluon kernel (gemm_gluon.py: wgmmas kept in flight; sm_90,
                                 3/4-bit, per channel; skipped elsewhere)
    triton:deployed_linear:wXaY  qvgen_kernels.triton.prepacked_linear (fused quantize + GEMM; weights prepacked once)
    ext:deployed_linear:wXaY     the CUDA extension's tensor-core tc_linear (wgmma on sm_90a, mma.sync on sm_80+;
                                 quantize + GEMM, weights prepacked once), through ops.prepacked_linear
with backend in reference / triton / ext. On CUDA the ext gemm / linear rows are the dp4a lowbit_gemm, timed only
at M <= --dp4a-max-m (at the large shapes one call takes most of a second). ``--modes`` / ``--bits`` choose rows.

Every qvgen row is checked against the reference before it is timed: the output rows of up to 256 tokens
(the first and last 128; per-token quantization makes rows independent) must equal the reference backend's
bit for bit (``check``: "exact", or the mismatch, and the row is not timed). Baselines record their error
against an fp32 product on the same rows (``max_rel_err``). Inputs are generated on the device; the harness
flushes the L2 (256 MiB write) before each timed call; each shape records the SM clock (nvidia-smi).
Each row is appended to ``gemm_bench.jsonl`` as soon as it is measured. ``--entry backend`` calls the backend's 2-D implementation directly
(no argument validation, no data checks of the custom op) instead of the public ``ops`` function.

Byte model (the minimum a kernel must move; the roofline columns use it): bf16 2(MK + NK + MN); fp8
MK + NK + 2MN + 4(M + N); int8 MK + NK + 4MN; lowbit gemm M pw(K, a) + N pw(K, w) + 12M + 8N + MN e; lowbit
linear M K e + N pw(K, w) + 8N + 8M + MN e (x read once, packed activations never leave the chip);
pw = packed bytes per row, e = bytes per element of x. FLOPs are 2MNK for every provider.
Writes ``benchmarks/results/<device>/gemm_bench.{jsonl,json,md}`` and ``.png`` when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks import _kernels_common as kc
from qvgen_kernels import ops, registry
from qvgen_kernels.format import packed_width

BITS = ((4, 4), (3, 3), (4, 8), (8, 8))
BACKENDS = ("reference", "triton", "ext")
MODES = ("gemm", "linear")
DEPLOYED_MODES = ("deployed_gemm", "deployed_gemm_gluon", "deployed_linear")  # CUDA: weights prepacked once
DEPLOYED = {"triton": DEPLOYED_MODES, "ext": ("deployed_linear",)}  # ext: tc_linear (quantize fused)
CHECK_ROWS = 128  # tokens checked at each end of M
# --shapes check: the GPU check's three large linears and the small-M rows (model, layer, m or None).
CHECK_SHAPES = (("wan-1.3b", "attn_qkvo", None), ("wan-14b", "ffn_up", None), ("wan-14b", "ffn_down", None),
                ("wan-14b", "ffn_up", 16), ("wan-14b", "ffn_up", 256))


def _check_rows(m: int) -> torch.Tensor:
    """The token rows checked against the reference: all of them up to 2 CHECK_ROWS, else both ends."""
    if m <= 2 * CHECK_ROWS:
        return torch.arange(m)
    return torch.cat([torch.arange(CHECK_ROWS), torch.arange(m - CHECK_ROWS, m)])


def _exact(got: torch.Tensor, want: torch.Tensor, rows: torch.Tensor) -> dict[str, Any]:
    """{"check": "exact"} when the checked rows equal the reference bit for bit, else the mismatch."""
    g = got[rows.to(got.device)].float().cpu()
    w = want.float().cpu()
    if torch.equal(g, w):
        return {"check": "exact"}
    bad = (g != w) & ~(g.isnan() & w.isnan())
    return {"check": f"MISMATCH: {int(bad.sum())} of {w.numel()} values, max |diff| "
                     f"{float((g - w).abs().nan_to_num(float('inf')).max()):.3g}"}


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> dict[str, Any]:
    """Baselines: max |got - want| / max |want| on the checked rows (want: the fp32 product)."""
    return {"check": "relative", "max_rel_err": float((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-30))}


def _baselines(x: torch.Tensor, w: torch.Tensor, rows: torch.Tensor
               ) -> dict[str, tuple[Callable[[], Any], int, Callable[[Any], dict[str, Any]]]]:
    """(callable, bytes, check) of the BF16, FP8-rowwise and int8 baselines on pre-converted operands; check
    compares the output's checked rows with an fp32 product of the operands it was given."""
    m, k = x.shape
    n = w.shape[0]
    r = rows.to(x.device)
    want = x[r].float() @ w.float().t()
    out: dict[str, tuple[Callable[[], Any], int, Callable[[Any], dict[str, Any]]]] = {
        "bf16": (lambda: F.linear(x, w), x.element_size() * (m * k + n * k + m * n),
                 lambda y: _rel_err(y[r], want))}
    sx = x.float().abs().amax(1, keepdim=True).clamp_min(1e-12) / 448.0  # e4m3 max normal
    sw = w.float().abs().amax(1, keepdim=True).clamp_min(1e-12) / 448.0
    x8 = (x.float() / sx).to(torch.float8_e4m3fn)
    w8t = (w.float() / sw).to(torch.float8_e4m3fn).t()  # [K, N] column-major
    sw_row = sw.reshape(1, n).contiguous()
    out["fp8_rowwise"] = (lambda: torch._scaled_mm(x8, w8t, scale_a=sx, scale_b=sw_row, out_dtype=torch.bfloat16),
                          m * k + n * k + 2 * m * n + 4 * (m + n), lambda y: _rel_err(y[r], want))
    xi = x.float().clamp(-127, 127).round().to(torch.int8)
    wit = w.float().clamp(-127, 127).round().to(torch.int8).t()
    want_i = (xi[r].double() @ wit.double()).float()  # exact: |sums| < 2^53
    out["int8"] = (lambda: torch._int_mm(xi, wit), m * k + n * k + 4 * m * n,
                   lambda y: {"check": "exact" if torch.equal(y[r].float(), want_i) else "MISMATCH vs int64 product"})
    return out


class _Weights:
    """One random checkpoint-layout weight (codes drawn on the device) and its reference output rows."""

    def __init__(self, x: torch.Tensor, n: int, wb: int, ab: int, gen: torch.Generator, rows: torch.Tensor):
        dev = x.device
        k = x.shape[1]
        self.w_packed, self.w_scale, self.w_zero = kc.random_weight(n, k, wb, gen, dev)
        self.wb, self.ab, self.k, self.n, self.rows = wb, ab, k, n, rows.to(dev)
        self.want = ops.lowbit_linear(x[self.rows], self.w_packed, self.w_scale, self.w_zero, None, w_bits=wb,
                                      a_bits=ab, backend="reference")
        self.wbytes = n * packed_width(k, wb) + 8 * n

    def check(self, out: torch.Tensor) -> dict[str, Any]:
        return _exact(out, self.want, self.rows)


def _lowbit(x: torch.Tensor, wt: _Weights, backend: str, mode: str, entry: str
            ) -> tuple[Callable[[], Any], int, Callable[[Any], dict[str, Any]]]:
    """(callable, bytes, check) of one packed GEMM provider; operands are built (and pre-quantized) outside the
    timing. The reference's per-token quantize (clips 1) feeds the gemm rows, so their output is the linear's."""
    m, k = x.shape
    dev = x.device
    wb, ab, e = wt.wb, wt.ab, x.element_size()
    args = (wt.w_packed, wt.w_scale, wt.w_zero, None)
    if mode == "gemm":
        q = ops.quantize_per_token(x, ab, backend="reference")
        nbytes = m * packed_width(k, ab) + 12 * m + wt.wbytes + m * wt.n * e
        if entry == "ops":
            fn = lambda: ops.lowbit_gemm(*q, *args, w_bits=wb, a_bits=ab, k=k, out_dtype=x.dtype,  # noqa: E731
                                         backend=backend)
        else:
            impl = registry.resolve("lowbit_gemm", dev, backend)[1]
            fn = lambda: impl(*q, *args, wb, ab, k, x.dtype)  # noqa: E731
        return fn, nbytes, wt.check
    nbytes = m * k * e + 8 * m + wt.wbytes + m * wt.n * e
    if entry == "ops":
        return (lambda: ops.lowbit_linear(x, *args, w_bits=wb, a_bits=ab, backend=backend)), nbytes, wt.check
    quant = registry.resolve("quantize_per_token", dev, backend)[1]
    gemm = registry.resolve("lowbit_gemm", dev, backend)[1]
    ones = torch.ones(m, device=dev)
    return (lambda: gemm(*quant(x, ab, ones, ones), *args, wb, ab, k, x.dtype)), nbytes, wt.check


def _deployed(x: torch.Tensor, wt: _Weights, backend: str, mode: str
              ) -> tuple[Callable[[], Any], int, Callable[[Any], dict[str, Any]]]:
    """(callable, bytes, check) of a deployed path: weights prepacked once (as at load); per call the fused
    quantize + GEMM (deployed_linear: ops.prepacked_linear, Triton or the extension's tc_linear), or the Triton
    GEMM alone on a pre-made int8 activation operand (deployed_gemm)."""
    m, k = x.shape
    n, wb, ab, e = wt.n, wt.wb, wt.ab, x.element_size()
    packed = ops.prepack_linear(wt.w_packed, wt.w_scale, wt.w_zero, w_bits=wb, a_bits=ab, k=k, backend=backend)
    if backend == "ext" and len(packed.tensors) != 4:
        raise RuntimeError("the extension was built without the tensor-core GEMMs (no CUTLASS headers): "
                           "prepack fell back to the reference layout")
    wbytes = packed.nbytes
    if mode in ("deployed_gemm", "deployed_gemm_gluon"):
        from qvgen_kernels import triton as tk

        ones = torch.ones(m, device=x.device)
        a8, sx, zx, rs, _ = tk.quantize_i8.quantize_act_i8(x, ab, ones, ones, False)
        nbytes = a8.numel() + 12 * m + wbytes + m * n * e
        if mode == "deployed_gemm":
            return (lambda: tk.gemm_tc.tc_gemm(a8, sx, zx, rs, *packed.tensors, None, wb, ab, k, n, x.dtype),
                    nbytes, wt.check)
        cap = tk._configs.launch_facts(x.device)[2]
        if not tk._configs.gluon_gemm_runs(wb, ab, packed.tensors[2].shape[1] > 1, cap):
            raise ValueError(f"the Gluon GEMM runs on sm_90 with 3/4-bit per-channel weights only (here sm_{cap}, "
                             f"W{wb}A{ab})")
        from qvgen_kernels.triton.gemm_gluon import gluon_gemm

        w, _, sw, zw = packed.tensors
        return (lambda: gluon_gemm(a8, sx, rs, w, sw, zw, None, k, n, x.dtype)), nbytes, wt.check
    return (lambda: ops.prepacked_linear(x, packed)), m * k * e + 8 * m + wbytes + m * n * e, wt.check


def _checked_timing(fn: Callable[[], Any], check: Callable[[Any], dict[str, Any]], device: torch.device,
                    args: argparse.Namespace) -> dict[str, Any]:
    """Run fn once and check its output; time it only when the check passed."""
    try:
        verdict = check(fn())
    except (RuntimeError, ValueError, TypeError) as e:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    if verdict["check"].startswith("MISMATCH"):
        return {**verdict, "skipped": "output differs from the reference: not timed"}
    return {**verdict, **kc.timed(fn, device, args.warmup, args.repeats)}


def providers(sh: kc.LayerShape, device_type: str, args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(provider, row fields) of every row of one shape, in run order; row fields may hold "skipped"."""
    out: list[tuple[str, dict[str, Any]]] = [(b, {"family": "baseline"}) for b in ("bf16", "fp8_rowwise", "int8")]
    for backend in args.backends:
        for wb, ab in args.bits:
            base = {"family": "qvgen", "backend": backend, "w_bits": wb, "a_bits": ab}
            for mode in [md for md in MODES if md in args.modes]:
                row = {**base, "mode": mode}
                if backend == "ext" and device_type == "cuda" and sh.m > args.dp4a_max_m:
                    row["skipped"] = f"dp4a lowbit_gemm timed only at M <= {args.dp4a_max_m} (--dp4a-max-m)"
                out.append((f"{backend}:{mode}:w{wb}a{ab}", row))
            if device_type == "cuda":
                out += [(f"{backend}:{mode}:w{wb}a{ab}", {**base, "mode": mode})
                        for mode in DEPLOYED.get(backend, ()) if mode in args.modes]
    return out


def bench_shape(sh: kc.LayerShape, device: torch.device, dtype: torch.dtype, args: argparse.Namespace,
                peaks: dict[str, Any], emit: Callable[[dict[str, Any]], None] = lambda r: None
                ) -> list[dict[str, Any]]:
    """Every provider on one shape; rows carry the check, timings, roofline numbers and speed-ups vs bf16 and
    fp8, and are handed to ``emit`` as each is measured (the speed-ups of rows measured before their baseline
    are filled in at the end)."""
    seed = sh.m * 131 + sh.k * 7 + sh.n
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(sh.m, sh.k, generator=gen, device=device).to(dtype)
    w = (torch.randn(sh.n, sh.k, generator=gen, device=device) * 0.02).to(dtype)
    rows_idx = _check_rows(sh.m)
    clock = kc.sm_clock(device)
    baselines = _baselines(x, w, rows_idx)
    del w
    weights: dict[tuple[int, int], _Weights] = {}
    rows: list[dict[str, Any]] = []
    ref: dict[str, float] = {}
    for name, fields in providers(sh, device.type, args):
        row = {"provider": name, **fields}
        if "skipped" not in row:
            if row["family"] == "baseline":
                fn, nbytes, check = baselines[name]
            else:
                backend, mode = row["backend"], row["mode"]
                reason = registry.unavailable_reason(backend, device)
                if reason is not None:
                    row["skipped"] = reason
                else:
                    key = (row["w_bits"], row["a_bits"])
                    if key not in weights:
                        weights[key] = _Weights(x, sh.n, *key, gen, rows_idx)
                    try:
                        fn, nbytes, check = (_deployed(x, weights[key], backend, mode) if mode in DEPLOYED_MODES
                                             else _lowbit(x, weights[key], backend, mode, args.entry))
                    except (RuntimeError, ValueError, TypeError) as e:
                        row["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            if "skipped" not in row:
                row.update(_checked_timing(fn, check, device, args))
                if row.get("backend") == "triton" and row.get("mode") == "deployed_gemm_gluon":
                    row["gemm_launch"] = "gluon: 256 weight rows x 128 tokens, two warpgroups"
                elif row.get("backend") == "triton" and row.get("mode") in DEPLOYED_MODES:
                    from qvgen_kernels.triton import gemm_tc
                    row["gemm_launch"] = gemm_tc.last_launch()  # the tile that ran: table or autotuner
                kc.roofline(row, sh.flops, nbytes, peaks)
                del fn
        if "us" in row:
            ref[name] = row["us"]
        for base in ("bf16", "fp8_rowwise"):
            if "us" in row and base in ref:
                row[f"speedup_vs_{base}"] = ref[base] / row["us"]
        row.update(kc.shape_dict(sh), **clock)
        rows.append(row)
        emit(row)
    return rows


def _plot(rows: list[dict[str, Any]], title: str) -> Callable:
    """Speed-up vs bf16 per shape: the baselines and, per bit width, the fastest non-reference GEMM."""
    labels = list(dict.fromkeys(f"{r['model']}:{r['layer']}" for r in rows))
    series: dict[str, list[float | None]] = {}

    def best(label: str, pred: Callable[[dict], bool]) -> float | None:
        vals = [r["speedup_vs_bf16"] for r in rows if f"{r['model']}:{r['layer']}" == label
                and pred(r) and "speedup_vs_bf16" in r]
        return max(vals) if vals else None

    for base in ("fp8_rowwise", "int8"):
        series[base] = [best(lb, lambda r, b=base: r["provider"] == b) for lb in labels]
    for wb, ab in BITS:
        series[f"w{wb}a{ab} (best kernel)"] = [
            best(lb, lambda r, wb=wb, ab=ab: r.get("w_bits") == wb and r.get("a_bits") == ab
                 and r.get("backend") != "reference") for lb in labels]
    return lambda path: kc.bar_plot(path, title, labels, series, "speed-up vs bf16 (higher is faster)")


def _shapes(args: argparse.Namespace) -> list[kc.LayerShape]:
    if args.shapes == "all" or args.smoke:
        return kc.gemm_shapes(args.smoke, not args.no_small_m)
    out = []
    for model, layer, m in CHECK_SHAPES:
        sh = next(s for s in kc.model_layers(model) if s.layer == layer)
        out.append(sh if m is None else kc.LayerShape(model, f"{layer}_m{m}", m, sh.k, sh.n))
    return out


def _bits(text: str) -> list[tuple[int, int]]:
    out = []
    for item in [t for t in text.split(",") if t]:
        pair = next((p for p in BITS if f"w{p[0]}a{p[1]}" == item), None)
        if pair is None:
            raise ValueError(f"bench_gemm: argument '--bits' expected a comma list of "
                             f"{', '.join(f'w{w}a{a}' for w, a in BITS)}, got {item!r}")
        out.append(pair)
    return out


def _modes(text: str) -> list[str]:
    out = [t for t in text.split(",") if t]
    bad = [t for t in out if t not in MODES + DEPLOYED_MODES]
    if bad:
        raise ValueError(f"bench_gemm: argument '--modes' expected a comma list of "
                         f"{', '.join(MODES + DEPLOYED_MODES)}, got {bad}")
    return out


MD_COLS = ["model", "layer", "m", "k", "n", "provider", "check", "us", "tops", "speedup_vs_bf16",
           "speedup_vs_fp8_rowwise", "sm_clock_mhz", "skipped"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_gemm", description=__doc__.split("\n")[0])
    kc.add_common_args(ap, BACKENDS)
    ap.add_argument("--entry", choices=("ops", "backend"), default="ops")
    ap.add_argument("--no-small-m", action="store_true", help="skip the M = 1..256 sweep")
    ap.add_argument("--shapes", choices=("all", "check"), default="all",
                    help="'check': Wan-1.3B 32760x1536x1536, Wan-14B 32760x5120x13824 / 32760x13824x5120, M = 16 / 256")
    ap.add_argument("--bits", default=",".join(f"w{w}a{a}" for w, a in BITS), help="comma list of wXaY")
    ap.add_argument("--modes", default=",".join(MODES + DEPLOYED_MODES), help="comma list of row kinds")
    ap.add_argument("--dp4a-max-m", type=int, default=256,
                    help="CUDA: largest M at which the ext gemm / linear rows (dp4a lowbit_gemm) are timed")
    ap.add_argument("--plan", action="store_true",
                    help="print the shapes and providers (the rows a run would fill) and exit; touches no device")
    args = ap.parse_args(argv)
    args.bits, args.modes = _bits(args.bits), _modes(args.modes)
    if args.plan:
        args.backends = [b for b in args.backends.split(",") if b]
        for b in args.backends:
            registry.normalize("bench_gemm", b)
        return plan(args)
    args, device, dtype, peaks = kc.parse_run(ap, argv, "bench_gemm")
    args.bits, args.modes = _bits(args.bits), _modes(args.modes)
    print(f"peaks: 8-bit {peaks['peak_8bit_tops']} TOPS ({peaks['peak_8bit_source']}), "
          f"bandwidth {peaks['bandwidth_gbs']} GB/s", flush=True)
    out = kc.out_dir(args, device)
    lines = kc.JsonLines(out, "gemm_bench", {"dtype": str(dtype), "entry": args.entry, "peaks": peaks})
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for sh in _shapes(args):
        def emit(r: dict[str, Any], sh: kc.LayerShape = sh) -> None:
            lines.write(r)
            t = f"{r['us']:10.1f} us {r['tops']:8.2f} TOPS" if "us" in r else f"skipped: {r['skipped'][:80]}"
            print(f"{time.perf_counter() - t0:6.1f}s {sh.label:>45} {r['provider']:>28} {t}", flush=True)
        rows += bench_shape(sh, device, dtype, args, peaks, emit)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    lines.close()
    payload = {"dtype": str(dtype), "entry": args.entry, "peaks": peaks, "rows": rows}
    path = kc.write_results(out, "gemm_bench", device, payload, _plot(rows, f"packed GEMM vs bf16 ({device})"))
    (out / "gemm_bench.md").write_text(kc.markdown_table(rows, MD_COLS))
    print(f"wrote {path}, gemm_bench.jsonl and .md")
    return payload


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """The rows a CUDA run would fill (``--plan``): shapes and providers, without touching a device."""
    device_type = "cpu" if args.smoke or args.device == "cpu" else "cuda"
    shapes = []
    for sh in _shapes(args):
        provs = providers(sh, device_type, args)
        shapes.append({"shape": sh.label, "providers": [p for p, f in provs if "skipped" not in f],
                       "skipped": [p for p, f in provs if "skipped" in f]})
        print(f"{sh.label}: {len(shapes[-1]['providers'])} providers ({', '.join(shapes[-1]['providers'])})"
              + (f"; {len(shapes[-1]['skipped'])} skipped by rule" if shapes[-1]["skipped"] else ""))
    return {"plan": shapes, "device_type": device_type}


if __name__ == "__main__":
    main()
