"""test_diffusers_conformance.py's compile, LoRA and offload checks on the tiny Flux transformer of diffusers'
model tests (test_diffusers_quant_suite.py builds it), and pipeline-level quantization through diffusers'
PipelineQuantizationConfig."""

from __future__ import annotations

import pytest
import torch

import qvgen
from qvgen.quant.deployed import DeployedLinear
from test_diffusers_quant_suite import fp_model, inputs, quantized, run
from tiny_pipes import lora_training_losses


def _at(model, timestep: float) -> torch.Tensor:
    with torch.no_grad():
        return model(**{**inputs("flux"), "timestep": torch.tensor([timestep])})[0]


@pytest.mark.parametrize("mode", ["deploy", "qat"])
def test_flux_compile_fullgraph_no_recompile(mode):
    """Dynamo and AOTAutograd with fullgraph=True (a graph break raises), no recompile across timesteps
    (different clip groups in QAT). Inductor's code generation is covered on Wan."""
    import torch._dynamo as dynamo

    dynamo.reset()
    model = quantized("flux", "w4a4") if mode == "deploy" else qvgen.quantize_model(
        fp_model("flux"), qvgen.QuantConfig.preset("w4a4", rank=4))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with dynamo.config.patch(error_on_recompile=True):
        for t in (0.99, 0.5, 0.02):
            torch.testing.assert_close(_at(compiled, t), _at(model, t), rtol=1e-5, atol=1e-5)


def test_flux_peft_lora_trains_on_deployed_model():
    pytest.importorskip("peft")
    model = quantized("flux", "w4a8")
    losses = lora_training_losses(model, inputs("flux"))
    assert losses[-1] < losses[0]


def test_flux_group_offload_leaf_level_matches():
    model = quantized("flux", "w4a8")
    ref = run(model, "flux")
    model.enable_group_offload(torch.device("cpu"), torch.device("cpu"), offload_type="leaf_level")
    assert torch.equal(run(model, "flux"), ref)


def test_pipeline_quantization_config_quant_mapping(tmp_path):
    """PipelineQuantizationConfig(quant_mapping={"transformer": QvgenConfig(...)}) quantizes the pipeline's
    transformer while loading it, like from_pretrained(quantization_config=...) on the model. A tiny Wan
    pipeline: the tiny text encoder and tokenizer exist for Wan and CogVideoX, not for Flux's two."""
    import diffusers
    from diffusers.quantizers import PipelineQuantizationConfig
    from tiny_pipes import fp_pipeline_dir

    from qvgen.artifact.quantizer import QvgenConfig

    folder = fp_pipeline_dir(tmp_path / "p", "wan")
    cfg = qvgen.QuantConfig.preset("w4a8", rank=0)
    pipe = diffusers.WanPipeline.from_pretrained(
        folder, quantization_config=PipelineQuantizationConfig(quant_mapping={"transformer": QvgenConfig(cfg)}))
    assert pipe.transformer.is_quantized and isinstance(pipe.transformer.blocks[0].attn1.to_q, DeployedLinear)
    assert not any(isinstance(m, DeployedLinear) for m in pipe.text_encoder.modules())  # only what was mapped
    direct = diffusers.WanTransformer3DModel.from_pretrained(folder, subfolder="transformer",
                                                             quantization_config=cfg)
    for a, b in zip(pipe.transformer.state_dict().values(), direct.state_dict().values()):
        assert torch.equal(a, b)


def test_pipeline_quantization_config_quant_backend_needs_transformers_to_know_it():
    """quant_backend="qvgen" is refused while transformers is installed: diffusers requires the backend in
    transformers' mapping too (for the text encoders), where qvgen does not register. docs/diffusers.md says
    to use quant_mapping instead."""
    pytest.importorskip("transformers")
    from diffusers.quantizers import PipelineQuantizationConfig

    with pytest.raises(ValueError, match="quant_backend=qvgen was not found"):
        PipelineQuantizationConfig(quant_backend="qvgen", quant_kwargs={"modules_to_not_convert": ["proj_out"]},
                                   components_to_quantize=["transformer"])
