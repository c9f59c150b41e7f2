"""QAT on the GPU check: fused fake quant forward + backward (Triton vs the eager reference) at one Wan-1.3B layer,
and one QAT distillation step of one full-width Wan2.1-1.3B block against the bf16 training step of the same block.

    python -m benchmarks.bench_qat_check             # GPU: 32760 tokens, dim 1536, FFN 8960, 12 heads, bf16
    python -m benchmarks.bench_qat_check --smoke     # CPU: a tiny block (dim 64), fp32
    python -m benchmarks.bench_qat_check --plan      # what a run measures; touches no device

Rows (appended to ``qat_check.jsonl`` as each is measured, then ``qat_check.json``):
    fake_quant:<backend>:<kind>  bench_fake_quant's fake quant fwd + bwd (kind weight [8960, 1536] or act
                                 [32760, 1536], 4 bits) on backend reference / triton
    block:bf16_step              teacher-free step of the block: MSE to a fixed target, backward, AdamW step
    block:qat_step               the same block with every nn.Linear a QLinear (W4A4, Phi rank 32, minmax
                                 init; QVGEN_BACKEND as set), distilled from the bf16 block (its output under
                                 no_grad is the target), backward, AdamW step over the trainable parameters
each with the time (median of --repeats after --warmup, CUDA-event timed by the shared harness) and the peak
memory of one step above what was resident before it. The block is diffusers' WanTransformerBlock; without
diffusers (it is not bundled: it pulls the Hub client and native dependencies whose wheels depend on the GPU
image's Python) it is benchmarks/_wan_block.py's WanShapedBlock, the same parameters in plain torch minus the
rotary embedding; each block row names which one ran (``block``).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any, Callable

import torch
from torch import nn

from benchmarks import _harness
from benchmarks import _kernels_common as kc
from benchmarks._wan_block import WanShapedBlock
from benchmarks.bench_fake_quant import BITS, QAT_RANK, _fq_fn

# Wan2.1-1.3B: dim 1536 = 12 heads x 128, FFN 8960, 512 text tokens of width 4096 projected to 1536 (the block
# sees them projected), 480x832x81 video -> latent 21x60x104 -> 21x30x52 = 32760 tokens after 1x2x2 patches.
FULL = {"dim": 1536, "ffn": 8960, "heads": 12, "latent": (21, 60, 104), "text": 512}
SMOKE = {"dim": 64, "ffn": 96, "heads": 2, "latent": (1, 4, 6), "text": 8}


def _block_inputs(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype, diffusers_block: bool):
    f, h, w = cfg["latent"]
    tokens = f * (h // 2) * (w // 2)
    head_dim = cfg["dim"] // cfg["heads"]
    gen = torch.Generator(device=device).manual_seed(0)
    rotary = None
    if diffusers_block:
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        rope = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=1024).to(device)
        rotary = rope(torch.empty(1, 16, f, h, w, device=device))
    x = torch.randn(1, tokens, cfg["dim"], generator=gen, device=device).to(dtype)
    text = torch.randn(1, cfg["text"], cfg["dim"], generator=gen, device=device).to(dtype)
    temb = torch.randn(1, 6, cfg["dim"], generator=gen, device=device).to(dtype) * 0.1
    return (x, text, temb, rotary), tokens


def _measure(step: Callable[[], Any], device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    row = kc.timed(step, device, args.warmup, args.repeats)
    if "us" in row:
        mem = _harness.peak_memory(step, device)
        row["ms"] = row["us"] / 1e3
        row.update({k if k.startswith("peak") else f"peak_{k}": v for k, v in mem.items()})
    return row


def block_rows(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype, args: argparse.Namespace
               ) -> list[dict[str, Any]]:
    import qvgen

    torch.manual_seed(0)
    try:
        from diffusers.models.transformers.transformer_wan import WanTransformerBlock
        teacher, kind = WanTransformerBlock(cfg["dim"], cfg["ffn"], cfg["heads"], cross_attn_norm=True), "diffusers"
    except ImportError:
        teacher, kind = WanShapedBlock(cfg["dim"], cfg["ffn"], cfg["heads"]), "torch Wan-shaped (no rotary)"
    teacher = teacher.to(device, dtype)
    inputs, tokens = _block_inputs(cfg, device, dtype, kind == "diffusers")
    with torch.no_grad():
        target = teacher(*inputs)
    shape = {"block": kind, "tokens": tokens, **{k: cfg[k] for k in ("dim", "ffn", "heads")}}

    def make_step(model: nn.Module) -> Callable[[], None]:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-6)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(*inputs).float(), target.float())
            loss.backward()
            opt.step()
        return step

    rows = [{"provider": "block:bf16_step", **shape, **_measure(make_step(copy.deepcopy(teacher)), device, args)}]
    student = copy.deepcopy(teacher)
    qcfg = qvgen.QuantConfig.preset("w4a4", rank=QAT_RANK, w_init="minmax")
    qvgen.quantize_model(student, qcfg)
    qvgen.set_timesteps(student, 500)
    rows.append({"provider": "block:qat_step", **shape, **_measure(make_step(student), device, args)})
    if "ms" in rows[0] and "ms" in rows[1]:
        rows[1]["x_time_of_bf16_step"] = rows[1]["ms"] / rows[0]["ms"]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_qat_check", description=__doc__.split("\n")[0])
    kc.add_common_args(ap, ("reference", "triton"))
    ap.add_argument("--plan", action="store_true", help="print what a run measures and exit; touches no device")
    args = ap.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    layer = (kc.LayerShape("tiny", "ffn_up", 33, 64, 96) if args.smoke else
             next(s for s in kc.model_layers("wan-1.3b") if s.layer == "ffn_up"))
    backends = [b for b in args.backends.split(",") if b]
    if args.plan:
        print(f"fake quant fwd + bwd, {BITS} bits, {layer.label}: weight [{layer.n}, {layer.k}] and act "
              f"[{layer.m}, {layer.k}] on {', '.join(backends)}")
        f, h, w = cfg["latent"]
        print(f"Wan2.1-1.3B block dim {cfg['dim']} FFN {cfg['ffn']} heads {cfg['heads']}, {f * (h // 2) * (w // 2)} "
              f"tokens: bf16 training step vs QAT distillation step (W4A4, rank {QAT_RANK}); time + peak memory")
        try:
            import diffusers  # noqa: F401
            print("block: diffusers' WanTransformerBlock")
        except ImportError:
            print("block: diffusers absent here, benchmarks/_wan_block.py's WanShapedBlock (no rotary)")
        return {"plan": True}
    args.backends = backends
    device, dtype, args.warmup, args.repeats = kc.resolve_run(args)
    out = kc.out_dir(args, device)
    lines = kc.JsonLines(out, "qat_check", {"dtype": str(dtype), **kc.sm_clock(device)})
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        lines.write(row)
        t = f"{row['us']:12.1f} us" if "us" in row else f"skipped: {row['skipped'][:90]}"
        print(f"{time.perf_counter() - t0:6.1f}s {row['provider']:>28} {t}", flush=True)

    for kind in ("weight", "act"):
        for backend in args.backends:
            fn, nbytes = _fq_fn(kind, layer, device, dtype, backend)
            emit({"provider": f"fake_quant:{backend}:{kind}", "bytes_model": nbytes, **kc.shape_dict(layer),
                  **kc.timed(fn, device, args.warmup, args.repeats)})
            del fn
    for row in block_rows(cfg, device, dtype, args):
        emit(row)
    lines.close()
    payload = {"dtype": str(dtype), "bits": BITS, "qat_rank": QAT_RANK, "rows": rows}
    path = _harness.write_json(out / "qat_check.json",
                               {"provenance": {**_harness.provenance(device), **kc.versions()}, **payload})
    print(f"wrote {path} and qat_check.jsonl")
    return payload


if __name__ == "__main__":
    main()
