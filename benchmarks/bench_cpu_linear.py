"""The deployed low-bit linear layer on a CPU against torch's bf16 / fp32 ``F.linear`` and the int8 ceilings,
side by side in one process, at the Wan-1.3B / Wan-14B / CogVideoX-2B linear shapes.

    python -m benchmarks.bench_cpu_linear                  # M = 2048, 256, 16 at every model's block shapes
    python -m benchmarks.bench_cpu_linear --smoke          # tiny shapes, one repeat (the test suite runs it)

Providers (per shape; milliseconds, best of ``--repeats`` rounds, every provider once per round in turn, so that
load from other processes hits all of them alike; before each timed call a 64 MB buffer is written, so that every
provider starts with its weights out of the caches, as each layer of a model larger than the caches does: at small
M, where a layer's time is its weight bytes, a provider run right after another one that read the same bytes
would otherwise find them in L3):
    fp32, bf16          torch ``F.linear`` on fp32 / bf16 operands (oneDNN / MKL: AMX-BF16 or AVX512-BF16)
    int_mm              ``torch._int_mm`` alone: s8 x s8 -> s32 (oneDNN), no scales (an int8 ceiling)
    onednn_qlinear      torch's prepacked oneDNN int8 linear (u8 x s8, per-tensor activation scale, bf16 out;
                        the library's own int8 layer, a ceiling: it cannot express per-token scales)
    wXaY                the deployed ``qvgen.QLinear`` (``to_deploy``): per-token quantize + GEMM + epilogue,
                        bf16 in and out (what a model runs)
    wXaY:gemm           the same without the activation quantize: ``int8_gemm`` on activations quantized
                        beforehand
    reference           ``ops.lowbit_linear(backend="reference")`` (pure torch; M <= 256 at the Wan-1.3B and
                        CogVideoX shapes only: it is slow)
Ratios are bf16 time / provider time (> 1: faster than bf16). TOPS = 2MNK / time. The memory table counts every
byte each deployed layer holds (its layout included); the small-call table times a 4x64x48 layer against
``nn.Linear`` (per-call overhead).
Writes ``benchmarks/results/cpu/linear_bench.{json,png,md}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

import qvgen
from benchmarks import _harness
from benchmarks import _kernels_common as kc
from qvgen_kernels import ops

BITS = ((4, 4), (3, 3), (8, 8))
MODELS = ("wan-1.3b", "wan-14b", "cogvideox-2b")
M_VALUES = (2048, 256, 16)
OUT = Path(__file__).resolve().parent / "results" / "cpu"


def cpu_identity() -> dict[str, Any]:
    """Model name and the matrix-engine ISA flags this CPU reports (Linux /proc/cpuinfo)."""
    info: dict[str, Any] = {"model_name": None, "isa": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name") and info["model_name"] is None:
            info["model_name"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["isa"] = sorted(f for f in flags if f.startswith("amx") or f in (
                "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "avx512_fp16"))
            break
    return info


def shapes(smoke: bool, m_values: tuple[int, ...], models: tuple[str, ...] = MODELS) -> list[kc.LayerShape]:
    if smoke:
        return [kc.LayerShape("tiny", "linear", 33, 64, 48), kc.LayerShape("tiny", "k1", 5, 1, 24)]
    out = []
    for m in m_values:
        for name in models:
            out += [kc.LayerShape(name, sh.layer, m, sh.k, sh.n) for sh in kc.model_layers(name)
                    if sh.layer != "cross_kv"]
    return out


def _deployed(k: int, n: int, w_bits: int, a_bits: int, gen: torch.Generator) -> qvgen.DeployedLinear:
    """A deployed bf16 layer (one clip group) holding random codes and scales: its forward is exactly a real
    deployed layer's, without calibrating a large FP weight first (speed does not depend on the values)."""
    cfg = qvgen.QuantConfig.preset(f"w{w_bits}a{a_bits}", rank=0, clip_groups=1)
    layer = qvgen.DeployedLinear(k, n, True, cfg, dtype=torch.bfloat16)
    w_packed, w_scale, w_zero = kc.random_weight(n, k, w_bits, gen)
    with torch.no_grad():
        layer.w_packed.copy_(w_packed)
        layer.w_scale.copy_(w_scale)
        layer.w_zero.copy_(w_zero)
        layer.bias.copy_(torch.randn(n, generator=gen))
    layer.prepack()
    return layer


def providers(sh: kc.LayerShape, gen: torch.Generator, smoke: bool) -> dict[str, Callable[[], Any]]:
    m, k, n = sh.m, sh.k, sh.n
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k**0.5
    xb, wb = x.bfloat16(), w.bfloat16()
    out: dict[str, Callable[[], Any]] = {"fp32": lambda: F.linear(x, w), "bf16": lambda: F.linear(xb, wb)}
    a8 = torch.randint(-15, 16, (m, k), generator=gen, dtype=torch.int8)
    w8 = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    out["int_mm"] = lambda: torch._int_mm(a8, w8.t())
    u8 = torch.randint(0, 16, (m, k), generator=gen, dtype=torch.uint8)
    w_pre = torch.ops.onednn.qlinear_prepack(w8, [m, k])
    ones, zps = torch.ones(n), torch.zeros(n, dtype=torch.int64)
    out["onednn_qlinear"] = lambda: torch.ops.onednn.qlinear_pointwise(
        u8, 1.0, 0, w_pre, ones, zps, None, 1.0, 0, torch.bfloat16, "none", [None], "")
    for w_bits, a_bits in BITS:
        layer = _deployed(k, n, w_bits, a_bits, gen)
        packed, one = layer._packed, torch.ones(1)
        tag = f"w{w_bits}a{a_bits}"
        out[tag] = lambda layer=layer: layer(xb)
        q = torch.ops.qvgen_ext.int8_quantize(xb, a_bits, 1, max(k, 2), one, one)
        out[f"{tag}:gemm"] = lambda q=q, p=packed, lb=layer.bias, wb=w_bits: torch.ops.qvgen_ext.int8_gemm(
            *q, *p.tensors, lb, wb, k, False, torch.bfloat16)
        if tag == "w4a4" and (smoke or (m <= 256 and k * n <= 1536 * 8960)):
            args = (layer.w_packed, layer.w_scale, layer.w_zero, layer.bias)
            out["reference"] = lambda args=args: ops.lowbit_linear(xb, *args, backend="reference")
    return out


_EVICT = None


def evict_caches() -> None:
    """Write 64 MB (twice this CPU's largest L3 slice): what a timed call reads next comes from memory."""
    global _EVICT
    if _EVICT is None:
        _EVICT = torch.empty(64 << 20, dtype=torch.uint8)
    _EVICT.add_(1)


def bench_shape(sh: kc.LayerShape, repeats: int, smoke: bool) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    provs = providers(sh, gen, smoke)
    best = {name: float("inf") for name in provs}
    with torch.no_grad():
        for f in provs.values():  # warm-up: primitive creation, caches
            f()
        for _ in range(repeats):
            for name, f in provs.items():
                evict_caches()
                t0 = time.perf_counter()
                f()
                best[name] = min(best[name], time.perf_counter() - t0)
    rows = []
    for name, sec in best.items():
        rows.append({**kc.shape_dict(sh), "provider": name, "ms": sec * 1e3, "tops": sh.flops / sec / 1e12,
                     "vs_bf16": best["bf16"] / sec, "vs_fp32": best["fp32"] / sec})
    return rows


def memory_row(k: int, n: int) -> dict[str, Any]:
    """Bytes of one deployed layer: every byte it holds (codes, scales, zero points, clips, bias, and the layout
    the CPU runs on, each storage once: ``model_bytes``) per format, beside the bf16 weight and bias."""
    from qvgen.apps.demo.metrics import model_bytes
    row: dict[str, Any] = {"k": k, "n": n, "bf16_bytes": 2 * n * k + 2 * n}
    for w_bits, a_bits in BITS:
        layer = _deployed(k, n, w_bits, a_bits, torch.Generator().manual_seed(0))
        row[f"w{w_bits}a{a_bits}_bytes"] = model_bytes(layer)
        row[f"w{w_bits}a{a_bits}_layout_bytes"] = layer._packed.nbytes
    return row


def markdown(doc: dict[str, Any]) -> str:
    prov = doc["provenance"]
    cpu = doc["cpu"]
    lines = [f"# Deployed low-bit linear on CPU: {cpu['model_name']}", "",
             f"ISA: {', '.join(cpu['isa'])}; torch {prov['torch']}, {prov['torch_threads']} threads; "
             f"commit {str(prov['commit'])[:10]}; load average at start {prov['load_average_1_5_15']}.", "",
             f"Command: `{prov['command']}`", "",
             "Milliseconds (best of the rounds; each call starts with the caches evicted, as in a model larger than "
             "them) and speed relative to torch bf16 `F.linear` (higher is faster).", ""]
    names = list(dict.fromkeys(r["provider"] for r in doc["rows"]))
    lines.append("| shape (M×K×N) | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    by_shape: dict[str, dict[str, dict[str, Any]]] = {}
    for r in doc["rows"]:
        by_shape.setdefault(f"{r['model']}:{r['layer']} {r['m']}×{r['k']}×{r['n']}", {})[r["provider"]] = r
    for label, rs in by_shape.items():
        cells = [f"{rs[p]['ms']:.3g} ms ({rs[p]['vs_bf16']:.2f}×)" if p in rs else "" for p in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    tags = [f"w{w}a{a}" for w, a in BITS]
    lines += ["", "Memory per layer, every byte the deployed layer holds (codes, constants, bias, the layout it runs "
              "on; each storage once) and its ratio to the bf16 layer:", "",
              "| K×N | bf16 | " + " | ".join(tags) + " |", "|---" * (len(tags) + 2) + "|"]
    for mrow in doc["memory"]:
        cells = [f"{mrow[t + '_bytes']:,} ({mrow[t + '_bytes'] / mrow['bf16_bytes']:.3f}×)" for t in tags]
        lines.append(f"| {mrow['k']}×{mrow['n']} | {mrow['bf16_bytes']:,} | " + " | ".join(cells) + " |")
    if doc.get("small_call"):
        lines += ["", "Small calls (M×K×N = 4×64×48, `torch.no_grad`, one thread; µs per call, best of "
                  f"{doc['small_call']['rounds']} rounds of {doc['small_call']['calls']} calls):", "",
                  "| dtype | nn.Linear | deployed W4A4 | ratio |", "|---|---|---|---|"]
        for r in doc["small_call"]["rows"]:
            lines.append(f"| {r['dtype']} | {r['linear_us']:.2f} | {r['deployed_us']:.2f} | {r['ratio']:.2f}× |")
    return "\n".join(lines) + "\n"


def small_call(rounds: int, calls: int) -> dict[str, Any]:
    """Per-call time of a tiny deployed layer against nn.Linear (Python dispatch, checks and the op's fixed costs
    dominate): M = 4, K = 64, N = 48, best of ``rounds`` x ``calls`` calls, the two interleaved per round."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        cfg = qvgen.QuantConfig.preset("w4a4", rank=0)  # as a user makes it (50 clip groups, none selected)
        q = qvgen.QLinear.from_linear(torch.nn.Linear(64, 48), cfg)
        layer = q.to_deploy().to(dtype)
        lin = torch.nn.Linear(64, 48).to(dtype)
        x = torch.randn(4, 64, generator=gen).to(dtype)
        best = {"linear": float("inf"), "deployed": float("inf")}
        with torch.no_grad():
            for _ in range(rounds):
                for name, f in (("linear", lin), ("deployed", layer)):
                    f(x)
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        f(x)
                    best[name] = min(best[name], (time.perf_counter() - t0) / calls)
        rows.append({"dtype": str(dtype).replace("torch.", ""), "linear_us": best["linear"] * 1e6,
                     "deployed_us": best["deployed"] * 1e6, "ratio": best["deployed"] / best["linear"]})
    return {"rounds": rounds, "calls": calls, "rows": rows}


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    labels = list(dict.fromkeys(f"{r['model']}:{r['layer']} {r['m']}" for r in rows))
    series: dict[str, list[float | None]] = {}
    for name in ("w4a4", "w3a3", "w8a8", "w4a4:gemm", "int_mm", "onednn_qlinear", "fp32"):
        vals = {f"{r['model']}:{r['layer']} {r['m']}": r["vs_bf16"] for r in rows if r["provider"] == name}
        series[name] = [vals.get(label) for label in labels]
    kc.bar_plot(path, title, labels, series, "speed vs torch bf16 F.linear (x)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one round (for tests)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; the best time of each provider is kept")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--m", type=int, nargs="+", default=list(M_VALUES), help="token counts M")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models whose shapes to run")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.smoke else args.repeats
    rows = []
    for sh in shapes(args.smoke, tuple(args.m), tuple(args.models)):
        shape_rows = bench_shape(sh, repeats, args.smoke)
        rows += shape_rows
        print(f"{sh.label}: " + ", ".join(f"{r['provider']} {r['vs_bf16']:.2f}x" for r in shape_rows
                                          if r["provider"] != "bf16"), flush=True)
    mem = [memory_row(sh.k, sh.n) for sh in shapes(args.smoke, (1,), tuple(args.models))]
    small = small_call(1 if args.smoke else 5, 20 if args.smoke else 2000)
    print("small calls (4x64x48): " + ", ".join(f"{r['dtype']} {r['deployed_us']:.1f} us vs nn.Linear "
                                                 f"{r['linear_us']:.1f} us ({r['ratio']:.2f}x)" for r in small["rows"]))
    doc = {"provenance": _harness.provenance(torch.device("cpu")), "cpu": cpu_identity(), "repeats": repeats,
           "rows": rows, "memory": mem, "small_call": small}
    stem = "linear_bench_smoke" if args.smoke else "linear_bench"
    args.out.mkdir(parents=True, exist_ok=True)
    _harness.write_json(args.out / f"{stem}.json", doc)
    (args.out / f"{stem}.md").write_text(markdown(doc))
    plot(rows, args.out / f"{stem}.png", f"Deployed linear vs bf16 on {doc['cpu']['model_name']}, "
         f"{doc['provenance']['torch_threads']} threads")
    return doc


if __name__ == "__main__":
    main()
