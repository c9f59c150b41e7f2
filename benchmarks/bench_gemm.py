"""Packed low-bit GEMM benchmark: cuBLAS BF16, FP8 rowwise, int8 and qvgen's W4A4 / W3A3 / W4A8 / W8A8 GEMMs
(reference, Triton, compiled extension) side by side, at the Wan-1.3B / Wan-14B / CogVideoX-2B linear shapes.

    python -m benchmarks.bench_gemm                 # GPU: real shapes + small-M sweep, bf16
    python -m benchmarks.bench_gemm --smoke         # CPU smoke test: tiny shapes, fp32

Providers (one row each per shape; a provider that cannot run is recorded with ``skipped`` and the reason):
    bf16          F.linear on x.dtype (bf16 on GPU, fp32 on CPU)
    fp8_rowwise   torch._scaled_mm, e4m3 inputs quantized beforehand, fp32 scales per row of x and per column
                  of W^T, bf16 out
    int8          torch._int_mm (int8 in, int32 out; no scales)
    <backend>:gemm:wXaY     ops.lowbit_gemm on codes quantized beforehand (ops.quantize_per_token)
    <backend>:linear:wXaY   ops.lowbit_linear: the per-token activation quantize included
    triton:deployed_gemm:wXaY    the Triton tensor-core GEMM alone on its load-time weight layout and the int8
                                 activation operand (both made outside the timing)
    triton:deployed_linear:wXaY  qvgen_kernels.triton.prepacked_linear (fused quantize + GEMM; weights prepacked once)
with backend in reference / triton / ext. ``--entry backend`` calls the backend's 2-D implementation directly
(no argument validation, no data checks of the custom op) instead of the public ``ops`` function.

Byte model (the minimum a kernel must move; the roofline columns use it): bf16 2(MK + NK + MN); fp8
MK + NK + 2MN + 4(M + N); int8 MK + NK + 4MN; lowbit gemm M pw(K, a) + N pw(K, w) + 12M + 8N + MN e; lowbit
linear M K e + N pw(K, w) + 8N + 8M + MN e (x read once, packed activations never leave the chip);
pw = packed bytes per row, e = bytes per element of x. FLOPs are 2MNK for every provider.
Writes ``benchmarks/results/<device>/gemm_bench.{json,png}``.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks import _kernels_common as kc
from qvgen_kernels import ops, registry
from qvgen_kernels.format import packed_width, qmax

BITS = ((4, 4), (3, 3), (4, 8), (8, 8))
BACKENDS = ("reference", "triton", "ext")
MODES = ("gemm", "linear")
DEPLOYED_MODES = ("deployed_gemm", "deployed_linear")  # Triton on CUDA: weights prepacked once, as at load
# --shapes check: the GPU check's three large linears and the small-M rows (model, layer, m or None).
CHECK_SHAPES = (("wan-1.3b", "attn_qkvo", None), ("wan-14b", "ffn_up", None), ("wan-14b", "ffn_down", None),
                ("wan-14b", "ffn_up", 16), ("wan-14b", "ffn_up", 256))


def _baselines(x: torch.Tensor, w: torch.Tensor) -> dict[str, tuple[Callable[[], Any], int]]:
    """(callable, bytes) of the BF16, FP8-rowwise and int8 baselines on pre-converted operands."""
    m, k = x.shape
    n = w.shape[0]
    out: dict[str, tuple[Callable[[], Any], int]] = {
        "bf16": (lambda: F.linear(x, w), x.element_size() * (m * k + n * k + m * n))}
    sx = x.float().abs().amax(1, keepdim=True).clamp_min(1e-12) / 448.0  # e4m3 max normal
    sw = w.float().abs().amax(1, keepdim=True).clamp_min(1e-12) / 448.0
    x8 = (x.float() / sx).to(torch.float8_e4m3fn)
    w8t = (w.float() / sw).to(torch.float8_e4m3fn).t()  # [K, N] column-major
    sw_row = sw.reshape(1, n).contiguous()
    out["fp8_rowwise"] = (lambda: torch._scaled_mm(x8, w8t, scale_a=sx, scale_b=sw_row, out_dtype=torch.bfloat16),
                          m * k + n * k + 2 * m * n + 4 * (m + n))
    xi = x.float().clamp(-127, 127).round().to(torch.int8)
    wit = w.float().clamp(-127, 127).round().to(torch.int8).t()
    out["int8"] = (lambda: torch._int_mm(xi, wit), m * k + n * k + 4 * m * n)
    return out


def _lowbit(x: torch.Tensor, n: int, wb: int, ab: int, backend: str, mode: str, entry: str,
            gen: torch.Generator) -> tuple[Callable[[], Any], int]:
    """(callable, bytes) of one packed GEMM provider; operands are built (and pre-quantized) outside the timing."""
    m, k = x.shape
    dev = x.device
    codes = torch.randint(0, qmax(wb) + 1, (n, k), generator=gen, dtype=torch.uint8).to(dev)
    w_packed = ops.pack(codes, wb, backend="reference")
    w_scale = (torch.rand(n, generator=gen) * 0.02 + 0.001).to(dev)
    w_zero = (torch.rand(n, generator=gen) * qmax(wb)).to(dev)
    e = x.element_size()
    wbytes = n * packed_width(k, wb) + 8 * n
    if mode == "gemm":
        q = ops.quantize_per_token(x, ab, backend="reference")
        nbytes = m * packed_width(k, ab) + 12 * m + wbytes + m * n * e
        if entry == "ops":
            return (lambda: ops.lowbit_gemm(*q, w_packed, w_scale, w_zero, None, w_bits=wb, a_bits=ab, k=k,
                                            out_dtype=x.dtype, backend=backend)), nbytes
        impl = registry.resolve("lowbit_gemm", dev, backend)[1]
        return (lambda: impl(*q, w_packed, w_scale, w_zero, None, wb, ab, k, x.dtype)), nbytes
    nbytes = m * k * e + 8 * m + wbytes + m * n * e
    if entry == "ops":
        return (lambda: ops.lowbit_linear(x, w_packed, w_scale, w_zero, None, w_bits=wb, a_bits=ab,
                                          backend=backend)), nbytes
    quant = registry.resolve("quantize_per_token", dev, backend)[1]
    gemm = registry.resolve("lowbit_gemm", dev, backend)[1]
    ones = torch.ones(m, device=dev)
    return (lambda: gemm(*quant(x, ab, ones, ones), w_packed, w_scale, w_zero, None, wb, ab, k, x.dtype)), nbytes


def _triton_deployed(x: torch.Tensor, n: int, wb: int, ab: int, mode: str, gen: torch.Generator
                     ) -> tuple[Callable[[], Any], int]:
    """(callable, bytes) of the deployed Triton path: weights prepacked once (as at load), per call either the
    GEMM on a pre-made int8 activation operand or the fused quantize + GEMM."""
    from qvgen_kernels import triton as tk

    m, k = x.shape
    dev = x.device
    codes = torch.randint(0, qmax(wb) + 1, (n, k), generator=gen, dtype=torch.uint8).to(dev)
    w_scale = (torch.rand(n, generator=gen) * 0.02 + 0.001).to(dev)
    w_zero = (torch.rand(n, generator=gen) * qmax(wb)).to(dev)
    weights = tk.prepack_weight(ops.pack(codes, wb, backend="reference"), w_scale, w_zero, wb, ab, k)
    ones = torch.ones(m, device=dev)
    e = x.element_size()
    wbytes = sum(t.numel() * t.element_size() for t in weights)
    if mode == "deployed_gemm":
        a8, sx, zx, rs, _ = tk.quantize_i8.quantize_act_i8(x, ab, ones, ones, False)
        return (lambda: tk.gemm_tc.tc_gemm(a8, sx, zx, rs, *weights, None, wb, ab, k, n, x.dtype),
                a8.numel() + 12 * m + wbytes + m * n * e)
    return (lambda: tk.prepacked_linear(x, weights, None, wb, ab, k, n, ones, ones),
            m * k * e + 8 * m + wbytes + m * n * e)


def bench_shape(sh: kc.LayerShape, device: torch.device, dtype: torch.dtype, args: argparse.Namespace,
                peaks: dict[str, Any]) -> list[dict[str, Any]]:
    """Every provider on one shape; rows carry timings, roofline numbers and speed-ups vs bf16 and fp8."""
    gen = torch.Generator().manual_seed(sh.m * 131 + sh.k * 7 + sh.n)
    x = torch.randn(sh.m, sh.k, generator=gen).to(device, dtype)
    w = (torch.randn(sh.n, sh.k, generator=gen) * 0.02).to(device, dtype)
    rows: list[dict[str, Any]] = []
    for name, (fn, nbytes) in _baselines(x, w).items():
        rows.append({"provider": name, "family": "baseline", **kc.timed(fn, device, args.warmup, args.repeats),
                     "_bytes": nbytes})
    for backend in args.backends:
        reason = registry.unavailable_reason(backend, device)
        for wb, ab in BITS:
            for mode in MODES:
                row = {"provider": f"{backend}:{mode}:w{wb}a{ab}", "family": "qvgen", "backend": backend,
                       "mode": mode, "w_bits": wb, "a_bits": ab}
                if reason is not None:
                    rows.append({**row, "skipped": reason})
                    continue
                fn, nbytes = _lowbit(x, sh.n, wb, ab, backend, mode, args.entry, gen)
                rows.append({**row, **kc.timed(fn, device, args.warmup, args.repeats), "_bytes": nbytes})
                del fn
            if backend == "triton" and reason is None and device.type == "cuda":
                for mode in DEPLOYED_MODES:
                    fn, nbytes = _triton_deployed(x, sh.n, wb, ab, mode, gen)
                    rows.append({"provider": f"triton:{mode}:w{wb}a{ab}", "family": "qvgen", "backend": backend,
                                 "mode": mode, "w_bits": wb, "a_bits": ab,
                                 **kc.timed(fn, device, args.warmup, args.repeats), "_bytes": nbytes})
                    del fn
    ref = {r["provider"]: r.get("us") for r in rows}
    for r in rows:
        kc.roofline(r, sh.flops, r.pop("_bytes", 0), peaks)
        for base in ("bf16", "fp8_rowwise"):
            if "us" in r and ref.get(base):
                r[f"speedup_vs_{base}"] = ref[base] / r["us"]
        r.update(kc.shape_dict(sh))
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
        series[f"w{wb}a{ab} gemm (best kernel)"] = [
            best(lb, lambda r, wb=wb, ab=ab: r.get("w_bits") == wb and r.get("a_bits") == ab
                 and r.get("mode") in ("gemm", "deployed_gemm") and r.get("backend") != "reference") for lb in labels]
    return lambda path: kc.bar_plot(path, title, labels, series, "speed-up vs bf16 (higher is faster)")


def _shapes(args: argparse.Namespace) -> list[kc.LayerShape]:
    if args.shapes == "all" or args.smoke:
        return kc.gemm_shapes(args.smoke, not args.no_small_m)
    out = []
    for model, layer, m in CHECK_SHAPES:
        sh = next(s for s in kc.model_layers(model) if s.layer == layer)
        out.append(sh if m is None else kc.LayerShape(model, f"{layer}_m{m}", m, sh.k, sh.n))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_gemm", description=__doc__.split("\n")[0])
    kc.add_common_args(ap, BACKENDS)
    ap.add_argument("--entry", choices=("ops", "backend"), default="ops")
    ap.add_argument("--no-small-m", action="store_true", help="skip the M = 1..256 sweep")
    ap.add_argument("--shapes", choices=("all", "check"), default="all",
                    help="'check': Wan-1.3B 32760x1536x1536, Wan-14B 32760x5120x13824 / 32760x13824x5120, M = 16 / 256")
    args, device, dtype, peaks = kc.parse_run(ap, argv, "bench_gemm")
    print(f"peaks: 8-bit {peaks['peak_8bit_tops']} TOPS ({peaks['peak_8bit_source']}), "
          f"bandwidth {peaks['bandwidth_gbs']} GB/s", flush=True)
    rows = []
    for sh in _shapes(args):
        for r in bench_shape(sh, device, dtype, args, peaks):
            rows.append(r)
            t = f"{r['us']:10.1f} us {r['tops']:8.2f} TOPS" if "us" in r else f"skipped: {r['skipped'][:80]}"
            print(f"{sh.label:>45} {r['provider']:>24} {t}", flush=True)
    payload = {"dtype": str(dtype), "entry": args.entry, "peaks": peaks, "rows": rows}
    out = kc.out_dir(args, device)
    path = kc.write_results(out, "gemm_bench", device, payload, _plot(rows, f"packed GEMM vs bf16 ({device})"))
    print(f"wrote {path} and .png")
    return payload


if __name__ == "__main__":
    main()
