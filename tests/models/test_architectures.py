"""The three diffusers video DiTs (tiny configs) through the whole QVGen pipeline, plus their adapters.

quantize (W4A4, Phi rank 4) -> distil a few steps from the frozen FP copy with rank decay to 0 ->
to_deploy -> deploy forward, compared with the QAT forward of the same model (Phi removed).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import qvgen
from qvgen.models import (ARCHS, CogVideoXAdapter, GenericAdapter, HunyuanVideoAdapter, WanAdapter, adapter_for,
                          tiny_latents, tiny_model)
from qvgen.models.tiny import TINY_CONFIGS
from qvgen.train import Distiller, TrainConfig, random_data_fn

# Latent sizes (frames, height, width) small enough for a fast CPU run; token counts 4 / 16 / 16.
SMALL = {"wan": (1, 4, 4), "cogvideox": (1, 8, 8), "hunyuan": (1, 4, 4)}


@pytest.mark.parametrize("arch", ARCHS)
def test_qvgen_pipeline(arch, tmp_path):
    teacher = tiny_model(arch, seed=1)
    student = qvgen.quantize_model(copy.deepcopy(teacher), qvgen.QuantConfig.preset("w4a4", rank=4))
    adapter = adapter_for(student)
    frames, height, width = SMALL[arch]
    text_len = None if arch == "cogvideox" else 3  # CogVideoX's sincos table fixes its text length
    data_fn = random_data_fn(adapter, student, 1, frames, height, width, text_len=text_len)
    # 4 steps with rank 4: one step per stage (4, 2, 1), Phi removed at step 3.
    cfg = TrainConfig(steps=4, lr=1e-3, warmup=0.0, progress=False, out_dir=str(tmp_path))
    summary = Distiller(student, teacher, adapter, data_fn, cfg).run()
    log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in log] == [4, 2, 1, 0]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in log)
    assert summary["rank"] == 0 and all(q.phi_l is None for _, q in qvgen.iter_qlinears(student))

    x0, cond = data_fn(0, torch.Generator().manual_seed(11))
    t = torch.tensor([321])
    student.eval()
    with torch.no_grad():
        qat_out = adapter.forward(student, x0, t, cond)
        qvgen.to_deploy(student)
        assert all(q.mode == "deploy" for _, q in qvgen.iter_qlinears(student))
        deploy_out = adapter.forward(student, x0, t, cond)
    assert deploy_out.shape == x0.shape and bool(torch.isfinite(deploy_out).all())
    # Fake quant and the packed path compute the same function (DESIGN: fp32 ~1e-5 relative); only the
    # fp32 epilogues differ in operation order. Measured: <= 3e-7 of the output scale on these models.
    scale = qat_out.abs().max().item()
    torch.testing.assert_close(deploy_out, qat_out, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("arch, cls, layout, prediction", [
    ("wan", WanAdapter, "BCFHW", "flow"), ("cogvideox", CogVideoXAdapter, "BFCHW", "v"),
    ("hunyuan", HunyuanVideoAdapter, "BCFHW", "flow")])
def test_adapter_choice_and_shapes(arch, cls, layout, prediction):
    model = tiny_model(arch)
    adapter = adapter_for(model)
    assert isinstance(adapter, cls) and (adapter.layout, adapter.prediction) == (layout, prediction)
    assert isinstance(adapter_for(model, arch), cls) and adapter_for(model, adapter) is adapter
    shape = tiny_latents(arch, 2)
    assert adapter.latent_shape(model, 2, *[shape[i] for i in ((2, 3, 4) if layout == "BCFHW" else (1, 3, 4))]) \
        == shape
    n = 8 if arch == "cogvideox" else 5  # CogVideoX: max_text_seq_length
    cond = adapter.random_cond(model, 2, torch.Generator().manual_seed(0), text_len=n)
    again = adapter.random_cond(model, 2, torch.Generator().manual_seed(0), text_len=n)
    assert all(torch.equal(cond[k], again[k]) for k in cond)  # seeded
    assert cond["encoder_hidden_states"].shape[:2] == (2, n)
    x = torch.randn(shape)
    with torch.no_grad():
        out = adapter.forward(model, x, torch.tensor([0.0, 999.0]), cond)
        scalar_t = adapter.forward(model, x, 500, cond)
    assert out.shape == shape and scalar_t.shape == shape and bool(torch.isfinite(out).all())


def test_cogvideox_rotary_variant():
    # CogVideoX 1.5 style: temporal patching with 3-D rotary embeddings built by the adapter (the rotary
    # split of head_dim into t/h/w parts needs head_dim 16 here).
    cfg = {**TINY_CONFIGS["cogvideox"], "patch_size_t": 2, "use_rotary_positional_embeddings": True,
           "attention_head_dim": 16}
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel(**cfg).eval()
    adapter = adapter_for(model)
    x = torch.randn(1, 2, 4, 8, 8)
    cos, sin = adapter.rotary_emb(model, x)
    assert cos.shape == sin.shape == (1 * 4 * 4, 16)  # one latent frame pair x 4 x 4 patches, head_dim
    cond = adapter.random_cond(model, 1, text_len=5)  # rotary models take any text length
    with torch.no_grad():
        out = adapter.forward(model, x, torch.tensor([10]), cond)
        plain = model(hidden_states=x, encoder_hidden_states=cond["encoder_hidden_states"],
                      timestep=torch.tensor([10]), image_rotary_emb=None, return_dict=False)[0]
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert not torch.allclose(out, plain)  # the rotary embedding was actually applied


def test_hunyuan_default_guidance_and_mask():
    model = tiny_model("hunyuan")
    adapter = adapter_for(model)
    g = torch.Generator().manual_seed(0)
    cond = adapter.random_cond(model, 1, g)
    x = torch.randn(tiny_latents("hunyuan", 1))
    with torch.no_grad():
        full = adapter.forward(model, x, torch.tensor([5]), cond)
        # Mask and guidance are filled with the pipeline's defaults (all ones, 6.0 * 1000) when absent.
        minimal = adapter.forward(model, x, torch.tensor([5]), {k: cond[k] for k in
                                                                 ("encoder_hidden_states", "pooled_projections")})
    assert torch.equal(full, minimal)


def test_generic_adapter_and_errors():
    model = tiny_model("wan")
    with pytest.raises(ValueError, match="arch"):
        adapter_for(model, "sora")
    with pytest.raises(TypeError, match="nn.Linear|WanTransformer3DModel"):
        adapter_for(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="latents"):
        adapter_for(model).forward(model, torch.randn(2, 4, 16, 16), torch.tensor([1, 2]), {})
    with pytest.raises(ValueError, match="'t'"):
        adapter_for(model).forward(model, torch.randn(2, 4, 1, 4, 4), torch.tensor([1, 2, 3]), {})
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        adapter_for(model).forward(model, torch.randn(1, 4, 1, 4, 4), 3, {"text": torch.zeros(1, 2, 16)})
    with pytest.raises(TypeError, match="cond"):
        adapter_for(model).forward(model, torch.randn(1, 4, 1, 4, 4), 3, None)
    with pytest.raises(ValueError, match="text_len"):
        adapter_for(model).random_cond(model, 1, text_len=0)
    with pytest.raises(ValueError, match="text_len"):
        adapter_for(tiny_model("cogvideox")).random_cond(tiny_model("cogvideox"), 1, text_len=3)
    with pytest.raises(ValueError, match="arch"):
        tiny_model("sd3")
    with pytest.raises(ValueError, match="batch"):
        tiny_latents("wan", 0)
    with pytest.raises(ValueError, match="layout"):
        GenericAdapter(layout="BHWC")
    with pytest.raises(ValueError, match="prediction"):
        GenericAdapter(prediction="score")
    generic = GenericAdapter(layout="BFCHW", prediction="v", cond_shapes={"text": (3, 7)})
    cond = generic.random_cond(torch.nn.Linear(2, 2), 4, torch.Generator().manual_seed(1))
    assert cond["text"].shape == (4, 3, 7)
    assert generic.latent_shape(model, 2, 3, 5, 6) == (2, 3, 4, 5, 6)


def test_gradient_checkpointing_is_exact(tmp_path):
    # Recomputing the blocks in backward runs the same ops on the same inputs: identical loss and grads.
    records = []
    for i, ckpt in enumerate((False, True)):
        teacher = tiny_model("wan", seed=2)
        student = qvgen.quantize_model(copy.deepcopy(teacher), qvgen.QuantConfig.preset("w4a4", rank=4))
        adapter = adapter_for(student)
        data_fn = random_data_fn(adapter, student, 1, 1, 4, 4, text_len=3)
        cfg = TrainConfig(steps=1, progress=False, grad_checkpointing=ckpt, out_dir=str(tmp_path / str(i)))
        Distiller(student, teacher, adapter, data_fn, cfg, rank_decay=False).run()
        assert student.is_gradient_checkpointing == ckpt
        records.append(json.loads((tmp_path / str(i) / "metrics.jsonl").read_text()))
    assert records[0]["loss"] == records[1]["loss"] and records[0]["grad_norm"] == records[1]["grad_norm"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ARCHS)
def test_pipeline_on_cuda_bf16(arch, tmp_path):
    teacher = tiny_model(arch, seed=1).cuda()
    student = qvgen.quantize_model(copy.deepcopy(teacher), qvgen.QuantConfig.preset("w4a4", rank=4))
    adapter = adapter_for(student)
    text_len = None if arch == "cogvideox" else 3
    data_fn = random_data_fn(adapter, student, 2, *SMALL[arch], text_len=text_len)
    cfg = TrainConfig(steps=4, lr=1e-3, warmup=0.0, progress=False, out_dir=str(tmp_path))  # autocast bf16
    summary = Distiller(student, teacher, adapter, data_fn, cfg).run()
    assert summary["rank"] == 0 and torch.isfinite(torch.tensor(summary["loss"]))
    x0, cond = data_fn(0, torch.Generator().manual_seed(11))
    student.eval()
    with torch.no_grad():
        qat_out = adapter.forward(student, x0, torch.tensor([321, 5]), cond)
        qvgen.to_deploy(student)
        deploy_out = adapter.forward(student, x0, torch.tensor([321, 5]), cond)
    assert deploy_out.is_cuda and deploy_out.shape == x0.shape and bool(torch.isfinite(deploy_out).all())
    # fp32 model, CUDA kernels vs fake quant: same contract as on CPU, with GPU reduction orders (1e-4).
    torch.testing.assert_close(deploy_out, qat_out, rtol=0, atol=1e-4 * qat_out.abs().max().item())
