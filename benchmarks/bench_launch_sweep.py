"""The deployed Triton path's launch rules against the alternatives, measured on a GPU: the per-token quantize's
tiles (rows per program, column tile, one or two passes, warps: ``quantize_act.token_tiles``) and the small-M
GEMM's K splits (``_configs.gemm_launch``), at Wan shapes. Each candidate's output is checked equal to the rule's
(bit for bit) before it is timed; time is each kernel's device time from torch.profiler (L2 warm), so host launch
time does not enter. What it answers: is the rule's choice the fastest, and by how much is it not.

    python -m benchmarks.bench_launch_sweep --out DIR             # on a GPU
    TRITON_INTERPRET=1 python -m benchmarks.bench_launch_sweep --smoke --device cpu --out DIR   # plumbing only
    python -m benchmarks.bench_launch_sweep --plan                # the candidates; touches no device

Results: ``<out>/launch_sweep.jsonl``, written as measured: one line per (kernel, shape, candidate) with
``device_us`` and ``rule`` (true for the rule's choice), then per shape a ``best`` line: the fastest candidate, the
rule's time and their ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from benchmarks import _harness
from benchmarks._kernels_common import random_weight, versions

# (label, M, K): the activations a deployed linear quantizes (Wan2.1-1.3B, Wan2.1-14B, video and small M).
QUANT_SHAPES = (("wan-1.3b x", 32760, 1536), ("wan-14b x", 32760, 5120), ("wan-14b ffn x", 32760, 13824),
                ("wan-14b x m16", 16, 5120), ("wan-14b x m1024", 1024, 5120))
# (label, M, K, N): GEMMs the launch table splits over K.
GEMM_SHAPES = (("wan-14b ffn_up m16", 16, 5120, 13824), ("wan-14b ffn_down m16", 16, 13824, 5120),
               ("wan-14b ffn_up m256", 256, 5120, 13824), ("wan-14b ffn_down m256", 256, 13824, 5120))
SMOKE_QUANT = (("tiny x", 40, 300),)
SMOKE_GEMM = (("tiny gemm", 16, 640, 130),)
SPLITS = (1, 2, 4, 8, 16)


def quant_candidates(m: int, kp: int, sms: int | None) -> list[tuple[int, int, bool, int]]:
    """(rows per program, column tile, one pass, warps): the rule's first, then one pass (a column tile covering the
    row) where the row fits the single-pass limit, and two passes in column tiles of 512 / 1024, at 1 to 16 rows
    per program (at most 16384 elements per tile), with the rule's warps for the tile size (each candidate is a
    compile: about 35 in all)."""
    from qvgen_kernels.triton import _configs
    from qvgen_kernels.triton.quantize_act import token_tiles

    rule = token_tiles(kp, m, sms)
    out = [rule]
    single_bk = 1 << (kp - 1).bit_length()
    shapes = [(single_bk, True)] if kp <= _configs.ROW_SINGLE_PASS_MAX_K else []
    shapes += [(bk, False) for bk in (512, 1024) if bk < kp]
    for bk, single in shapes:
        for bm in (1, 2, 4, 8, 16):
            c = (bm, bk, single, 4 if bm * bk <= 2048 else 8)
            if bm * bk <= 16384 and bm <= max(1, m) and c not in out:
                out.append(c)
    return out


def gemm_candidates(m: int, n: int, kp: int, block_k: int, sms: int | None, capability: int | None) -> list:
    """The launch table's choice first, then the same tile at SPLITS K splits (at most one split per K tile)."""
    from dataclasses import replace

    from qvgen_kernels.triton._configs import gemm_launch

    rule = gemm_launch(m, n, kp, block_k, 4, 4, False, sms, None, None, capability)
    out = [rule]
    for s in SPLITS:
        c = replace(rule, split_k=s)
        if s <= kp // block_k and c not in out:
            out.append(c)
    return out


def _time(fn: Callable[[], Any], device: torch.device, kernel: str, calls: int) -> float | str:
    if device.type != "cuda":  # the interpreter: wall time of one call, the plumbing only
        import time
        t0 = time.perf_counter()
        fn()
        return round((time.perf_counter() - t0) * 1e6, 1)
    fn()
    torch.cuda.synchronize(device)
    times = _harness.kernel_device_us(fn, calls)
    hits = [v for key, v in times.items() if key.startswith(kernel)]
    return round(sum(hits), 2) if hits else f"no {kernel} kernel in the profile: {sorted(times)[:4]}"


def sweep_quant(shapes, device: torch.device, calls: int) -> Iterator[dict[str, Any]]:
    from qvgen_kernels.triton._configs import launch_facts
    from qvgen_kernels.triton.layout import kernel_k
    from qvgen_kernels.triton.quantize_i8 import quantize_act_i8

    for label, m, k in shapes:
        gen = torch.Generator(device).manual_seed(m + k)
        x = torch.randn(m, k, generator=gen, device=device).to(torch.bfloat16)
        ones = torch.ones(1, device=device)
        yield from _sweep(dict(kernel="quantize", shape=label, m=m, k=k), "tiles",
                          quant_candidates(m, kernel_k(k), launch_facts(device)[0]),
                          lambda t: dict(zip(("rows", "cols", "one_pass", "warps"), t)),
                          lambda t: quantize_act_i8(x, 4, ones, ones, False, t), "_quantize_i8_kernel", device, calls)


def sweep_gemm(shapes, device: torch.device, calls: int) -> Iterator[dict[str, Any]]:
    from qvgen_kernels import ops
    from qvgen_kernels.triton import gemm_tc
    from qvgen_kernels.triton._configs import launch_facts
    from qvgen_kernels.triton.layout import kernel_k
    from qvgen_kernels.triton.quantize_i8 import quantize_act_i8

    sms, _, capability = launch_facts(device)
    for label, m, k, n in shapes:
        gen = torch.Generator(device).manual_seed(m * 3 + k + n)
        x = torch.randn(m, k, generator=gen, device=device).to(torch.bfloat16)
        w_packed, scale, zero = random_weight(n, k, 4, gen, device)
        packed = ops.prepack_linear(w_packed, scale, zero, w_bits=4, a_bits=4, k=k, backend="triton")
        ones = torch.ones(1, device=device)
        a8, sx, zx, rs, _ = quantize_act_i8(x, 4, ones, ones, False)
        yield from _sweep(dict(kernel="gemm", shape=label, m=m, k=k, n=n), "launch",
                          gemm_candidates(m, n, kernel_k(k), gemm_tc.gemm_block_k_for(k, 1), sms, capability),
                          lambda ln: dict(block_m=ln.block_m, warps=ln.num_warps, stages=ln.num_stages,
                                          split_k=ln.split_k),
                          lambda ln: gemm_tc.tc_gemm(a8, sx, zx, rs, *packed.tensors, None, 4, 4, k, n, x.dtype,
                                                     launch=ln), "_tc_gemm_kernel", device, calls)


def _sweep(base: dict[str, Any], key: str, cands: list, describe: Callable[[Any], dict], run: Callable[[Any], Any],
           kernel: str, device: torch.device, calls: int) -> Iterator[dict[str, Any]]:
    """One row per candidate (the rule's first): its output checked equal to the rule's, then its kernel timed;
    then the shape's ``best`` line."""
    want = None
    rows = []
    for i, cand in enumerate(cands):
        row = {**base, key: describe(cand), "rule": i == 0}
        fn = (lambda c=cand: run(c))
        try:
            got = fn()
            want = got if want is None else want
            row["same_as_rule"] = (all(torch.equal(a, b) for a, b in zip(got, want)) if isinstance(got, tuple)
                                   else torch.equal(got, want))
            row["device_us"] = _time(fn, device, kernel, calls) if row["same_as_rule"] else None
        except Exception as e:  # noqa: BLE001  a candidate that fails is reported, the others still run
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        rows.append(row)
        yield row
    yield _best(rows)


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    timed = [r for r in rows if isinstance(r.get("device_us"), (int, float))]
    rule = next((r for r in rows if r["rule"]), None)
    out = dict(best=True, kernel=rows[0]["kernel"], shape=rows[0]["shape"], candidates=len(rows),
               timed=len(timed), mismatches=sum(r.get("same_as_rule") is False for r in rows))
    if timed and rule is not None and isinstance(rule.get("device_us"), (int, float)):
        fastest = min(timed, key=lambda r: r["device_us"])
        key = "tiles" if "tiles" in fastest else "launch"
        out.update(fastest=fastest[key], fastest_us=fastest["device_us"], rule=rule[key], rule_us=rule["device_us"],
                   rule_over_fastest=round(rule["device_us"] / fastest["device_us"], 3))
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (a test of the script; CPU: the interpreter)")
    ap.add_argument("--calls", type=int, default=10, help="profiled calls per candidate")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plan", action="store_true", help="print the candidates and exit; touches no device")
    args = ap.parse_args(argv)
    quant, gemm = (SMOKE_QUANT, SMOKE_GEMM) if args.smoke else (QUANT_SHAPES, GEMM_SHAPES)
    if args.plan:
        from qvgen_kernels.triton._configs import DEFAULT_SMS, HOPPER_CAPABILITY, gemm_block_k
        from qvgen_kernels.triton.layout import kernel_k
        for label, m, k in quant:
            print(f"quantize {label} {m}x{k}: {len(quant_candidates(m, kernel_k(k), DEFAULT_SMS))} tile candidates")
        for label, m, k, n in gemm:
            c = gemm_candidates(m, n, kernel_k(k), gemm_block_k(k, -1), DEFAULT_SMS, HOPPER_CAPABILITY)
            print(f"gemm {label} {m}x{k}x{n}: K splits {[x.split_k for x in c]} (the table's first)")
        return []
    if args.out is None:
        ap.error("--out is required (except with --plan)")
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "launch_sweep.jsonl"
    rows = []
    with path.open("w") as f:
        f.write(json.dumps({"provenance": {**_harness.provenance(device), **versions()}}) + "\n")
        for row in itertools.chain(sweep_quant(quant, device, args.calls), sweep_gemm(gemm, device, args.calls)):
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
