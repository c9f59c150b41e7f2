"""Quality-study baselines built around QLinear: QA-LoRA parametrization, SVDQuant-style layer, grad probe,
and the study's aggregation helpers."""

import math

import pytest
import torch
from torch import nn

import qvgen
from benchmarks.quality.baselines import (GradNormProbe, LoRADelta, SVDQuantLinear, add_qalora, merge_qalora,
                                          svdquant_model)
from benchmarks.quality.report import aggregate, mean_std


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 17))


def test_lora_delta_zero_at_init_and_lr_scale_reparametrization():
    g = torch.Generator().manual_seed(0)
    d = LoRADelta(9, 13, rank=4, alpha=4.0, lr_scale=0.05, generator=g, device=torch.device("cpu"),
                  dtype=torch.float32)
    w = torch.randn(9, 13)
    assert torch.equal(d(w), w)  # B = 0
    with torch.no_grad():
        d.lora_b.fill_(1.0)
    # delta = (alpha / r) (s B_raw)(s A_raw) with s = 0.05; compared in fp32 (tiny sums: 1e-6 relative)
    expected = (d.lr_scale * d.lora_b) @ (d.lr_scale * d.lora_a)
    assert torch.allclose(d.delta(), expected, rtol=1e-5, atol=1e-7)


def test_qalora_forward_equals_qlinear_on_merged_weight():
    model = qvgen.quantize_model(_mlp(1), qvgen.QuantConfig.preset("w4a4", rank=0))
    add_qalora(model, rank=8, seed=3)
    for _, q in qvgen.iter_qlinears(model):
        with torch.no_grad():
            q.parametrizations.weight[0].lora_b.normal_()
    x = torch.randn(5, 24)
    qvgen.set_timesteps(model, torch.full((5,), 500.0))
    y = model(x)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any(n.endswith("original") for n in trainable) and any("lora_a" in n for n in trainable)
    merge_qalora(model)
    assert all(type(q) is qvgen.QLinear for _, q in qvgen.iter_qlinears(model))
    # Same weights and quantizers: the merged model is the same function (fp32 reassociation only: 1e-5).
    assert torch.allclose(model(x), y, rtol=1e-5, atol=1e-5)
    qvgen.to_deploy(model)
    assert all(q.mode == "deploy" for _, q in qvgen.iter_qlinears(model))


def test_svdquant_layer_is_quantized_residual_plus_fp_branch():
    torch.manual_seed(4)
    lin = nn.Linear(20, 12)
    cfg = qvgen.QuantConfig.preset("w4a4", rank=0)
    layer = SVDQuantLinear(lin, cfg, rank=5)
    # W = L R + residual exactly (fp32 SVD: ~1e-5 absolute on unit-scale weights)
    assert torch.allclose(layer.lr_l @ layer.lr_r + layer.q.weight, lin.weight, atol=1e-5)
    x = torch.randn(3, 20)
    qvgen.set_timesteps(layer.q, torch.full((3,), 999.0))
    ref = layer.q(x) + x @ layer.lr_r.T @ layer.lr_l.T
    assert torch.allclose(layer(x), ref, rtol=1e-6, atol=1e-6)  # identical ops, different association
    with pytest.raises(ValueError, match="cfg.rank"):
        svdquant_model(_mlp(0), qvgen.QuantConfig.preset("w4a4", rank=4))


def test_svdquant_model_beats_plain_ptq_and_deploys():
    fp = _mlp(2)
    x = torch.randn(16, 24)
    ref = fp(x)
    cfg = qvgen.QuantConfig.preset("w3a3", rank=0)
    ptq = qvgen.to_deploy(qvgen.quantize_model(_mlp(2), cfg))
    svd = qvgen.to_deploy(svdquant_model(_mlp(2), cfg, rank=8))
    for m in (ptq, svd):
        qvgen.set_timesteps(m, torch.full((16,), 250.0))
    with torch.no_grad():
        e_ptq, e_svd = (ptq(x) - ref).pow(2).mean(), (svd(x) - ref).pow(2).mean()
    assert e_svd < e_ptq  # the FP branch carries the top singular directions unquantized


def test_grad_norm_probe_records_weight_gradients():
    model = qvgen.quantize_model(_mlp(5), qvgen.QuantConfig.preset("w4a4", rank=0))
    probe = GradNormProbe(model)
    x = torch.randn(4, 24)
    qvgen.set_timesteps(model, torch.zeros(4))
    norms = []
    for i in range(2):
        probe.step(i)
        model.zero_grad(set_to_none=True)
        model(x).pow(2).sum().backward()
        norms.append(math.sqrt(sum(float(q.weight.grad.pow(2).sum()) for _, q in qvgen.iter_qlinears(model))))
    got = probe.finish()
    assert got == pytest.approx(norms, rel=1e-6)  # the same fp32 sums in another order
    assert probe.current_rank == 0 and probe.state_dict() == {}


def test_mean_std_and_aggregate():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert mean_std([math.inf, 1.0]) == (math.inf, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        mean_std([])
    base = dict(denoise_mse=0.1, psnr=20.0, ssim=0.5, motion_ratio=1.0, trajectory_error=1.0,
                temporal_consistency=0.2, bytes=1024, spec={}, seconds=1.0)
    runs = [{**base, "label": "a", "psnr": 20.0}, {**base, "label": "a", "psnr": 22.0}, {**base, "label": "b"}]
    agg = aggregate(runs)
    assert list(agg) == ["a", "b"] and agg["a"]["n"] == 2
    assert agg["a"]["psnr"] == (21.0, pytest.approx(math.sqrt(2.0)))
