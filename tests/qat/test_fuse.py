"""Activation fusion at deployment (qvgen.quant.fuse): diffusers' GELU(tanh) projections run as one deployed call.

Tolerances: the fused GELU is evaluated in fp32 as x / (1 + exp(-2u)) on the layer's output rounded to its dtype,
torch's as 0.5 x (1 + tanh(u)); both round to the output dtype, so outputs differ by at most one unit in the last
place of that dtype (bf16: 2^-8 relative), plus an absolute 1e-6 where torch's form cancels (large negative x).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import qvgen
from qvgen import DeployedLinear, QuantConfig
from qvgen.artifact.pretrained import cast
from qvgen.models.tiny import tiny_latents, tiny_model
from qvgen.artifact.fuse import FusedForward, fuse_activations
from qvgen_kernels import registry

pytest.importorskip("diffusers")
needs_int8 = pytest.mark.skipif(registry.unavailable_reason("cpu_int8", "cpu") is not None,
                                reason="the CPU int8 extension is not built")


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(tiny_latents("wan", 1), generator=g).to(dtype),
            "encoder_hidden_states": torch.randn(1, 8, 16, generator=g).to(dtype),
            "timestep": torch.tensor([500]), "return_dict": False}


def _deployed(preset: str = "w4a4") -> torch.nn.Module:
    model = qvgen.quantize_model(tiny_model("wan"), QuantConfig.preset(preset, rank=0, w_init="minmax"))
    model = qvgen.to_deploy(model)
    qvgen.set_timesteps(model, 500)  # for the calls of single modules (a model call sets its own)
    return model


def _gelu_modules(model):
    return [m for m in model.modules() if type(m).__name__ == "GELU" and hasattr(m, "proj") and m.approximate == "tanh"]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    ulp = torch.finfo(a.dtype).eps
    torch.testing.assert_close(a.float(), b.float(), rtol=ulp, atol=1e-6)


def test_to_deploy_fuses_every_gelu_projection_and_keeps_the_state_dict():
    plain = _deployed()
    keys = list(plain.state_dict())
    gelus = _gelu_modules(plain)
    assert gelus and all(isinstance(m.__dict__.get("forward"), FusedForward) for m in gelus)
    assert all(isinstance(m.proj, DeployedLinear) for m in gelus)
    assert list(plain.state_dict()) == keys
    assert fuse_activations(plain, enabled=False) == 0
    assert not any("forward" in m.__dict__ for m in gelus)
    assert fuse_activations(plain) == len(gelus)


@needs_int8
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_module_matches_projection_then_gelu(dtype):
    model = cast(_deployed(), dtype)
    m = _gelu_modules(model)[0]
    x = torch.randn(37, m.proj.in_features).to(dtype) * 4
    with torch.no_grad():
        fused = m(x)
        fuse_activations(model, enabled=False)
        unfused = m(x)
    assert torch.equal(unfused, F.gelu(m.proj(x), approximate="tanh"))
    _close(fused, unfused)


@needs_int8
def test_whole_model_fused_vs_unfused_and_round_trip(tmp_path):
    model = cast(_deployed(), torch.bfloat16)
    args = _inputs(torch.bfloat16)
    with torch.no_grad():
        fused = model(**args)[0]
    model.save_pretrained(tmp_path / "m")
    import diffusers
    loaded = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "m", torch_dtype=torch.bfloat16)
    assert all(isinstance(m.__dict__.get("forward"), FusedForward) for m in _gelu_modules(loaded))
    with torch.no_grad():
        assert torch.equal(loaded(**args)[0], fused)  # the loaded model fuses the same way: bit for bit
        fuse_activations(model, enabled=False)
        unfused = model(**args)[0]
    # Two blocks amplify one-ulp differences of the FFN activations: compared loosely here (the layer-level test
    # above holds the tight bound).
    torch.testing.assert_close(fused.float(), unfused.float(), rtol=0.05, atol=0.05)


def test_wrapped_projection_falls_back_to_the_module_forward():
    """When proj is no longer a DeployedLinear (an adapter wraps it), the class's forward runs: the wrapper's
    output goes through the activation, not only the base layer's."""
    model = _deployed()
    m = _gelu_modules(model)[0]
    base = m.proj

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base

        def forward(self, x):
            return self.base(x) + 1.0

    m.proj = Wrapped()
    x = torch.randn(5, base.in_features)
    with torch.no_grad():
        assert torch.equal(m(x), F.gelu(base(x) + 1.0, approximate="tanh"))


def test_fused_model_copies_and_pickles():
    model = _deployed()
    args = _inputs()
    with torch.no_grad():
        want = model(**args)[0]
        for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            gelus = _gelu_modules(other)
            assert all(m.__dict__["forward"].module is m for m in gelus)
            assert torch.equal(other(**args)[0], want)


def test_module_forward_set_by_a_hook_is_left_alone():
    model = _deployed()
    fuse_activations(model, enabled=False)
    m = _gelu_modules(model)[0]
    hook = type(m).forward.__get__(m)
    m.forward = hook
    fuse_activations(model)
    assert m.__dict__["forward"] is hook


def test_bad_activation_is_refused():
    layer = _gelu_modules(_deployed())[0].proj
    with pytest.raises(ValueError, match=r"^prepacked_linear: argument 'activation' expected None or one of"):
        layer(torch.randn(2, layer.in_features), activation="relu")
    with pytest.raises(ValueError, match=r"^DeployedLinear.forward: argument 'activation' expected None or one of"):
        layer(torch.randn(2, layer.in_features, requires_grad=True), activation="relu")
