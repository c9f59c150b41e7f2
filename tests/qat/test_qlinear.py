import pytest
import torch
from torch import nn

from qat_helpers import rel_err
from qvgen import DeployedLinear, QLinear, QuantConfig, set_timesteps

PRESETS = ["w4a4", "w3a3", "w4a8", "w8a8", "w4a16"]


def _layer(gen, cfg, k=72, n=40, bias=True):
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen) * 0.2)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=gen))
    return QLinear.from_linear(lin, cfg)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("group", [-1, 24])
def test_fake_quant_equals_deploy(gen, preset, group):
    cfg = QuantConfig.preset(preset, w_group_size=group, clip_groups=10)
    q = _layer(gen, cfg)
    q.remove_phi()
    with torch.no_grad():  # distinct clips per group, so a wrong group choice shows
        if q.act_quant is not None:
            q.act_quant.clip_hi_logit.copy_(torch.linspace(-1.0, 3.0, 10))
    x = torch.randn(3, 5, 72, generator=gen) * 2
    set_timesteps(q, torch.tensor([0, 555, 999]))
    with torch.no_grad():
        y_qat = q(x)
    q = q.to_deploy()
    assert isinstance(q, DeployedLinear) and isinstance(q, nn.Linear)
    assert q.mode == "deploy" and "weight" not in q.state_dict()
    assert q.weight.shape == (q.out_features, q.in_features)
    assert q.w_packed.dtype == torch.uint8
    y_dep = q(x)
    # Same codes on both sides; only the GEMM's operation order differs: fp32, 1e-5 relative.
    assert rel_err(y_dep, y_qat) <= 1e-5


def test_qat_forward_formula_with_phi(gen):
    from qvgen_kernels import ops
    cfg = QuantConfig.preset("w4a4", rank=8, clip_groups=1)
    q = _layer(gen, cfg)
    assert q.phi_rank == 8
    with torch.no_grad():
        q.phi_gamma.copy_(torch.linspace(1, 0.1, 8))
    x = torch.randn(2, 9, 72, generator=gen)
    y = q(x)
    with torch.no_grad():
        x_hat = ops.fake_quant_act(x, 4, 0.9025, 0.9025)
        w_eff = q.weight_quant(q.weight) + (q.phi_l * q.phi_gamma) @ q.phi_r
        ref = x_hat @ w_eff.T + q.bias
    # Folded vs two-GEMM evaluation of the same product: fp32 rounding, 1e-5 relative.
    assert rel_err(y.detach(), ref) <= 1e-5
    y.square().sum().backward()
    for p in (q.weight, q.phi_l, q.phi_r, q.weight_quant.scale, q.weight_quant.zero, q.bias):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_phi_lowers_init_error(gen):
    cfg = QuantConfig.preset("w4a16", w_bits=3, rank=16)
    q = _layer(gen, cfg)
    x = torch.randn(64, 72, generator=gen)
    with torch.no_grad():
        ref = nn.functional.linear(x, q.weight, q.bias)
        with_phi = q(x)
        q.remove_phi()
        without = q(x)
    assert rel_err(with_phi, ref) < 0.8 * rel_err(without, ref)


def test_per_sample_groups(gen):
    cfg = QuantConfig.preset("w4a4", rank=0, clip_groups=4)
    q = _layer(gen, cfg)
    with torch.no_grad():
        q.act_quant.clip_lo_logit.copy_(torch.tensor([-2.0, 0.0, 1.0, 3.0]))
        q.act_quant.clip_hi_logit.copy_(torch.tensor([3.0, -1.0, 0.5, 2.0]))
    x = torch.randn(3, 6, 72, generator=gen)
    t = torch.tensor([10, 400, 990])
    set_timesteps(q, t)
    y = q(x)
    for b in range(3):
        set_timesteps(q, t[b:b + 1])
        # Codes are identical; the GEMM may block a batch of 1 differently (fp32 rounding, 1e-5).
        torch.testing.assert_close(y[b:b + 1], q(x[b:b + 1]), rtol=1e-5, atol=1e-5)
    set_timesteps(q, 600)  # a single timestep broadcasts
    assert q(x).shape == (3, 6, 40)
    set_timesteps(q, torch.tensor([600, 600]))  # all equal: broadcasts even if B mismatches
    q(x)
    set_timesteps(q, torch.tensor([10, 600]))
    with pytest.raises(ValueError, match="timestep"):
        q(x)
    set_timesteps(q, None)
    y0 = q(x)  # a standalone layer takes no timestep: clip group 0 while none is set
    set_timesteps(q, 0)
    assert torch.equal(q(x), y0)


def test_single_clip_group_needs_no_timestep(gen):
    q = _layer(gen, QuantConfig.preset("w4a4", rank=0, clip_groups=1))
    assert q(torch.randn(4, 72, generator=gen)).shape == (4, 40)


def test_to_deploy_refuses_with_phi_and_keep_phi(gen):
    cfg = QuantConfig.preset("w4a8", rank=4, clip_groups=1)
    q = _layer(gen, cfg)
    x = torch.randn(5, 72, generator=gen)
    with torch.no_grad():
        ref = q(x)
    with pytest.raises(ValueError, match="keep_phi"):
        q.to_deploy()
    q = q.to_deploy(keep_phi=True)
    assert q.phi_rank == 4 and q.mode == "deploy"
    assert rel_err(q(x), ref) <= 1e-5  # same codes; fp32 GEMM order only


def test_from_linear_reuses_params_and_meta(gen):
    lin = nn.Linear(16, 8)
    q = QLinear.from_linear(lin, QuantConfig(rank=4))
    assert q.weight is lin.weight and q.bias is lin.bias
    with torch.device("meta"):
        big = nn.Linear(64, 32, bias=False)
    qm = QLinear.from_linear(big, QuantConfig(rank=4))
    assert qm.weight.is_meta and qm.phi_l.is_meta and qm.bias is None
    rep = repr(q)
    for part in ("in_features=16", "out_features=8", "W4A4", "per-channel", "mode=qat", "phi_rank=4"):
        assert part in rep
    with pytest.raises(TypeError, match="linear"):
        QLinear.from_linear(nn.Conv1d(2, 2, 1), QuantConfig())


def test_to_linear(gen):
    cfg = QuantConfig.preset("w4a16", rank=4)
    q = _layer(gen, cfg)
    x = torch.randn(7, 72, generator=gen)
    with torch.no_grad():
        ref = q(x)
        # Activations are unquantized at A16, so the folded nn.Linear computes the same (fp32 1e-5).
        assert rel_err(q.to_linear()(x), ref) <= 1e-5
        q.remove_phi()
        ref = q(x)
        lin_qat = q.to_linear()
        lin_dep = q.to_deploy().to_linear()
        torch.testing.assert_close(lin_dep.weight, lin_qat.weight, rtol=0, atol=1e-6)
        assert rel_err(lin_dep(x), ref) <= 1e-5


def test_bad_input_and_state_dict_phi_resize(gen):
    q = _layer(gen, QuantConfig.preset("w4a4", rank=8, clip_groups=1))
    with pytest.raises(ValueError, match="'x'"):
        q(torch.randn(3, 71))
    sd = {k: v.clone() for k, v in q.state_dict().items()}
    sd["phi_l"], sd["phi_r"], sd["phi_gamma"] = sd["phi_l"][:, :2], sd["phi_r"][:2], sd["phi_gamma"][:2]
    fresh = _layer(gen, QuantConfig.preset("w4a4", rank=8, clip_groups=1))
    phi_l = fresh.phi_l
    fresh.load_state_dict(sd)
    assert fresh.phi_width == 2 and fresh.phi_l is phi_l  # resized in place
    for k in ("phi_l", "phi_r", "phi_gamma"):
        del sd[k]
    fresh.load_state_dict(sd)
    assert fresh.phi_l is None and fresh.phi_rank == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_low_precision_dtype(gen, dtype):
    q = _layer(gen, QuantConfig.preset("w4a4", rank=4, clip_groups=1)).to(dtype)
    x = torch.randn(3, 72, generator=gen, dtype=dtype)
    y = q(x)
    assert y.dtype == dtype and q.phi_l.dtype == dtype
    y.float().sum().backward()


def test_non_positive_learned_scale_is_floored(gen):
    q = _layer(gen, QuantConfig.preset("w4a8", rank=0, clip_groups=1))
    with torch.no_grad():
        q.weight_quant.scale[:3] = torch.tensor([0.0, -0.01, -5.0])
    x = torch.randn(4, 72, generator=gen)
    with torch.no_grad():
        y_qat = q(x)
    assert bool(torch.isfinite(y_qat).all())
    q = q.to_deploy()
    assert float(q.w_scale.min()) > 0
    assert rel_err(q(x), y_qat) <= 1e-5  # same floored scale on both sides; fp32 GEMM order only
