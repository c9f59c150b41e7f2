"""Model-level benchmark: forward latency / peak memory of BF16, deployed W4A4 and W3A3, and one QAT training
step (teacher forward + student forward + backward) with qvgen's fused fake quant and with the official-style
eager baseline (``benchmarks.eager_official``), for a single block and the whole model; weight bytes of each.

    python -m benchmarks.bench_model                     # CPU: the "-small" shapes, fp32
    python -m benchmarks.bench_model --shapes full       # GPU: the real shapes, bf16 (needs CUDA)
    python -m benchmarks.bench_model --check-shapes      # real shapes on the meta device -> results/meta/
    python -m benchmarks.bench_model --dtype bf16 --variants fp,w4a4-deploy,w3a3-deploy --threads 2 \
        --out benchmarks/results/cpu-bf16                # CPU: deployed models against the bf16 model

Writes ``benchmarks/results/<device>/model_bench.{json,png,md}``. Random weights are created on the device
from a seed (no downloads). The QAT step uses Phi of rank 32 (the method's default) for both implementations.
A variant that runs out of GPU memory is recorded as such, not dropped.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import _harness, report_model
from benchmarks.eager_official import eager_quantize
from benchmarks.shapes import FULL, SMALL, ModelShape, build_model, get_shape, linear_shapes, make_inputs
from qvgen_kernels.errors import fail

VARIANTS = ("fp", "w4a4-deploy", "w3a3-deploy", "qat-fused", "qat-eager")
QAT_RANK = 32


class Target:
    """A module to benchmark and how to call it: the whole model, or its first block with captured inputs."""

    def __init__(self, shape: ModelShape, scope: str, device: torch.device, dtype: torch.dtype, batch: int):
        from qvgen.models.adapters import adapter_for

        self.shape, self.scope, self.device, self.dtype = shape, scope, device, dtype
        sh = shape if scope == "model" else shape.with_layers(1)
        self._build = lambda: build_model(sh, device, dtype)
        model = self._build()
        self.adapter = adapter_for(model, shape.arch)
        self.lat, self.t, self.cond = make_inputs(sh, model, batch)
        self.block_args: tuple = ()
        self.block_kwargs: dict = {}
        if scope == "block":
            self._capture(model)
        del model

    def _capture(self, model: nn.Module) -> None:
        block = getattr(model, self.shape.blocks_attr)[0]

        def hook(_m, args, kwargs):
            self.block_args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            self.block_kwargs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}

        handle = block.register_forward_pre_hook(hook, with_kwargs=True)
        with torch.no_grad():
            self.adapter.forward(model, self.lat, self.t, self.cond)
        handle.remove()

    def fresh(self) -> nn.Module:
        """A new FP module (seeded: every variant starts from the same weights)."""
        model = self._build()
        return model if self.scope == "model" else getattr(model, self.shape.blocks_attr)[0]

    def call(self, module: nn.Module) -> torch.Tensor:
        if self.scope == "model":
            return self.adapter.forward(module, self.lat, self.t, self.cond)
        out = module(*self.block_args, **self.block_kwargs)
        return out[0] if isinstance(out, tuple) else out


def _quantized(target: Target, bits: str, rank: int) -> nn.Module:
    import qvgen

    module = qvgen.quantize_model(target.fresh(), qvgen.QuantConfig.preset(bits, rank=rank))
    qvgen.set_timesteps(module, target.t)  # blocks have no `timestep` argument for the pre-hook to read
    return module


def _qat_step(target: Target, teacher: nn.Module, student: nn.Module) -> Callable[[], None]:
    params = [p for p in student.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        with torch.no_grad():
            ref = target.call(teacher)
        loss = F.mse_loss(target.call(student).float(), ref.float())
        loss.backward()

    return step


def _setup(target: Target, variant: str, grad_ckpt: bool) -> tuple[nn.Module, Callable[[], Any], list]:
    """(module whose bytes are reported, the timed callable, extra modules kept alive)."""
    if variant == "fp":
        m = target.fresh()
        return m, torch.no_grad()(lambda: target.call(m)), []
    if variant.endswith("-deploy"):
        import qvgen

        m = qvgen.to_deploy(_quantized(target, variant.split("-")[0], rank=0)).eval()
        return m, torch.no_grad()(lambda: target.call(m)), []
    teacher = target.fresh().requires_grad_(False)
    if variant == "qat-fused":
        student = _quantized(target, "w4a4", QAT_RANK)
    else:
        student = eager_quantize(target.fresh(), 4, 4, QAT_RANK)
    student.train().requires_grad_(True)
    if grad_ckpt and target.scope == "model" and hasattr(student, "enable_gradient_checkpointing"):
        student.enable_gradient_checkpointing()
    return student, _qat_step(target, teacher, student), [teacher]


def run_variant(target: Target, variant: str, warmup: int, repeats: int, grad_ckpt: bool) -> dict:
    """One row: latency summary, peak memory and module bytes (or the error that stopped it)."""
    from qvgen.apps.demo.metrics import model_bytes

    row: dict[str, Any] = {"shape": target.shape.name, "scope": target.scope, "variant": variant}
    try:
        module, fn, keep = _setup(target, variant, grad_ckpt)
        row["module_bytes"] = model_bytes(module)
        row["latency"] = _harness.time_fn(fn, target.device, warmup, repeats)
        row["memory"] = _harness.peak_memory(fn, target.device)
    except torch.cuda.OutOfMemoryError as e:
        row["error"] = f"out of memory: {str(e).splitlines()[0]}"
    finally:
        module = fn = keep = None  # noqa: F841 (release before the next variant)
        gc.collect()
        if target.device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def check_shapes(names: tuple[str, ...]) -> list[dict]:
    """Build each named shape on the meta device: parameter count and distinct Linear (K, N) shapes."""
    out = []
    for name in names:
        shape = get_shape(name)
        model = build_model(shape, "meta")
        lin = linear_shapes(model)
        kn = sorted({(k, n) for _, k, n in lin})
        out.append({"shape": name, "params": sum(p.numel() for p in model.parameters()), "linears": len(lin),
                    "video_tokens": shape.video_tokens, "linear_kn": kn})
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="auto", help="'auto' (full on CUDA, small otherwise), 'full' ("
                    + ", ".join(FULL) + "), 'small' (" + ", ".join(SMALL) + ") or a comma list of those names")
    ap.add_argument("--scopes", default="block,model", help="comma list of: block (the first transformer block), "
                    "model (the whole model) (default: %(default)s)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS) +
                    " (default: all)")
    ap.add_argument("--batch", type=int, default=1, help="batch size (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls first (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls (default: %(default)s)")
    ap.add_argument("--no-grad-ckpt", action="store_true", help="no gradient checkpointing in whole-model QAT")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available; default)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                    help="model dtype (auto: bf16 on CUDA, fp32 on CPU); the deployed layers run in it too")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: on a small shared machine "
                    "more threads than idle cores make OpenMP spin-waits dominate)")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results/<device>)")
    ap.add_argument("--check-shapes", action="store_true", help="only build the full shapes on the meta device "
                    "(parameter and Linear counts) into results/meta/shape_check.json")
    return ap.parse_args(argv)


def _select(spec: str, device: torch.device) -> tuple[str, ...]:
    if spec == "auto":
        return FULL if device.type == "cuda" else SMALL
    if spec in ("full", "small"):
        return FULL if spec == "full" else SMALL
    names = tuple(s for s in spec.split(",") if s)
    for n in names:
        get_shape(n)
    return names


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.check_shapes:
        result = {"provenance": _harness.provenance(torch.device("meta")), "shapes": check_shapes(FULL)}
        for s in result["shapes"]:
            print(f"{s['shape']}: {s['params'] / 1e9:.3f} B params, {s['linears']} Linear, "
                  f"{s['video_tokens']} video tokens")
        out = Path(args.out) if args.out else Path(__file__).parent / "results" / "meta"
        _harness.write_json(out / "shape_check.json", result)
        print(f"wrote {out}/shape_check.json")
        return result
    names = _select(args.shapes, device)
    if any(not n.endswith("-small") for n in names) and device.type != "cuda":
        fail("bench_model", "--shapes", "small shapes on a CPU (the real shapes need a GPU)", names)
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            fail("bench_model", "--variants", f"names from {VARIANTS}", v)
    rows = []
    for name in names:
        for scope in args.scopes.split(","):
            if scope not in ("block", "model"):
                fail("bench_model", "--scopes", "'block' and/or 'model'", scope)
            target = Target(get_shape(name), scope, device, dtype, args.batch)
            for v in variants:
                row = run_variant(target, v, args.warmup, args.repeats, not args.no_grad_ckpt)
                rows.append(row)
                print(report_model.row_line(row), flush=True)
    result = {"provenance": _harness.provenance(device), "dtype": str(dtype), "batch": args.batch,
              "qat_rank": QAT_RANK, "shapes": {n: get_shape(n).kwargs | {"latent": get_shape(n).latent,
                                                                         "text_len": get_shape(n).text_len}
                                               for n in names}, "rows": rows}
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / report_model.device_dir(device)
    report_model.write_all(out, result)
    print(f"wrote {out}/model_bench.json, .png, .md")
    return result


if __name__ == "__main__":
    main()
