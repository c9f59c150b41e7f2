"""What diffusers' shared quantization tests expect of a quantized model, on tiny Wan and CogVideoX: dtype
casts, PEFT LoRA with backward, torch.compile(fullgraph=True) without graph breaks or recompiles (Inductor),
and model CPU offload / leaf-level group offloading."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import qvgen
from tiny_pipes import lora_training_losses, quantize, transformer
from test_diffusers_loading import _inputs

KINDS = ("wan", "cogvideox")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _run(model: nn.Module, kind: str, dtype: torch.dtype = torch.float32, timestep: int = 700) -> torch.Tensor:
    args = _inputs(kind) | {"timestep": torch.tensor([timestep])}
    args = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in args.items()}
    with torch.no_grad():
        return model(**args)[0].float()


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_casts_keep_codes_and_scales_exact(kind):
    model = quantize(transformer(kind))
    layers = [m for _, m in qvgen.iter_qlinears(model)]
    before = [(m.w_packed.clone(), m.w_scale.clone(), m.w_zero.clone(), m.a_clip_hi.clone()) for m in layers]
    for cast, dtype in ((lambda m: m.half(), torch.float16), (lambda m: m.to(torch.bfloat16), torch.bfloat16),
                        (lambda m: m.float(), torch.float32)):
        cast(model)
        for m, (codes, scale, zero, clip) in zip(layers, before):
            assert m.compute_dtype == dtype and m.bias.dtype == dtype
            assert m.w_scale.dtype == m.w_zero.dtype == m.a_clip_hi.dtype == torch.float32
            assert all(torch.equal(a, b) for a, b in ((m.w_packed, codes), (m.w_scale, scale),
                                                      (m.w_zero, zero), (m.a_clip_hi, clip)))


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_within_bf16_tolerance(kind):
    """A bf16 deployed model drifts from its fp32 self no more than bf16 rounding explains. Per layer, on the
    same bf16-representable input, bf16 and fp32 compute agree to bf16 tolerance (same codes, fp32 scales);
    through the model, bf16 rounding of the activations can move a value across a code boundary, which at
    W4A4 costs a whole quantization step, so the model-level check is at W4A8."""
    layer = qvgen.QLinear.from_linear(nn.Linear(64, 48), qvgen.QuantConfig.preset("w4a4", rank=0)).to_deploy()
    x = torch.randn(20, 64).bfloat16()
    with torch.no_grad():
        ref = layer(x.float())
        assert _rel(copy.deepcopy(layer).to(torch.bfloat16)(x), ref) < 1e-2
    fp = transformer(kind)
    q = quantize(copy.deepcopy(fp), "w4a8")
    fp_drift = _rel(_run(qvgen.artifact.pretrained.cast(copy.deepcopy(fp), torch.bfloat16), kind, torch.bfloat16),
                    _run(fp, kind))
    q_drift = _rel(_run(qvgen.artifact.pretrained.cast(copy.deepcopy(q), torch.bfloat16), kind, torch.bfloat16),
                   _run(q, kind))
    assert q_drift < max(3 * fp_drift, 1e-2), (q_drift, fp_drift)


def test_deployed_input_gradient_is_dequantized_weight():
    layer = qvgen.QLinear.from_linear(nn.Linear(24, 10), qvgen.QuantConfig.preset("w4a4", rank=0)).to_deploy()
    x = torch.randn(3, 24, requires_grad=True)
    g = torch.randn(3, 10)
    layer(x).backward(g)
    torch.testing.assert_close(x.grad, g @ layer.dequantized_weight())


@pytest.mark.parametrize("kind", KINDS)
def test_peft_lora_trains_on_deployed_model(kind):
    pytest.importorskip("peft")
    model = quantize(transformer(kind))
    losses = lora_training_losses(model, _inputs(kind))
    assert losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["deploy", "qat"])
def test_compile_fullgraph_inductor_no_recompile(mode):
    """Inductor (CPU), fullgraph=True: any graph break raises; error_on_recompile makes a recompile across
    timesteps (different clip groups) raise too. One layer of tiny Wan keeps the C++ compile short."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    dynamo.reset()
    counters.clear()
    model = transformer("wan")
    model.blocks = model.blocks[:1]
    if mode == "deploy":
        model = quantize(model, "w4a4")
    else:
        model = qvgen.quantize_model(model, qvgen.QuantConfig.preset("w4a4", rank=4))
    compiled = torch.compile(model, fullgraph=True)
    with dynamo.config.patch(error_on_recompile=True):
        for t in (999, 500, 20):
            torch.testing.assert_close(_run(compiled, "wan", timestep=t), _run(model, "wan", timestep=t),
                                       rtol=1e-4, atol=1e-4)
    assert sum(counters["graph_break"].values()) == 0


def test_group_offload_leaf_level_matches():
    model = quantize(transformer("wan"))
    ref = _run(model, "wan")
    model.enable_group_offload(torch.device("cpu"), torch.device("cpu"), offload_type="leaf_level")
    assert torch.equal(_run(model, "wan"), ref)


def test_model_cpu_offload_matches(tmp_path):
    pytest.importorskip("accelerate")
    import diffusers
    from tiny_pipes import CALL, PROMPT, aligned, fp_pipeline_dir

    pipe = diffusers.DiffusionPipeline.from_pretrained(fp_pipeline_dir(tmp_path / "p", "wan"))
    pipe.transformer = aligned(quantize(pipe.transformer))  # Wan's time_embedder stays FP, see aligned

    def frames() -> torch.Tensor:
        return pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="pt", **CALL["wan"]).frames

    ref = frames()
    try:  # offloads to the CPU and runs on the accelerator; on a CPU-only machine diffusers may refuse
        pipe.enable_model_cpu_offload(device="cpu")
    except (RuntimeError, ValueError) as e:
        pytest.skip(f"enable_model_cpu_offload unavailable here: {e}")
    assert torch.equal(frames(), ref)


@pytest.mark.parametrize("mode", ["deploy", "qat"])
def test_compile_fullgraph_cogvideox(mode):
    """CogVideoX through Dynamo and AOTAutograd with fullgraph=True (Inductor's code generation is covered
    on Wan above), no recompile across timesteps."""
    import torch._dynamo as dynamo

    dynamo.reset()
    model = transformer("cogvideox")
    model = quantize(model, "w4a4") if mode == "deploy" else qvgen.quantize_model(
        model, qvgen.QuantConfig.preset("w4a4", rank=4))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with dynamo.config.patch(error_on_recompile=True):
        for t in (999, 20):
            torch.testing.assert_close(_run(compiled, "cogvideox", timestep=t), _run(model, "cogvideox", timestep=t),
                                       rtol=1e-5, atol=1e-5)
