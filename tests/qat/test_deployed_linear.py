"""DeployedLinear as a module of its own: the swap, shared layers, layers other code reads `.weight` from,
and an empty (meta-built) layer that was never loaded."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
from torch import nn

import qvgen
from qvgen import DeployedLinear, QLinear, QuantConfig


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attn(x, x, x, need_weights=False)[0])


def test_weight_readers_skipped_with_reason(caplog):
    torch.manual_seed(0)
    model = WithAttention()
    with caplog.at_level(logging.INFO, logger="qvgen"):
        qvgen.quantize_model(model, QuantConfig.preset("w4a8", rank=0))
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert "attn.out_proj" in caplog.text and "reads out_proj.weight" in caplog.text
    assert isinstance(model.proj, QLinear)
    qvgen.to_deploy(model)
    assert isinstance(model.proj, DeployedLinear)
    assert model(torch.randn(2, 5, 16)).shape == (2, 5, 16)


def test_to_deploy_swaps_modules_and_keeps_sharing():
    torch.manual_seed(1)
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    qvgen.quantize_model(model, QuantConfig.preset("w4a8", rank=0))
    q = model[0]
    assert qvgen.to_deploy(model) is model
    assert isinstance(model[0], DeployedLinear) and model[0] is model[2]
    assert model[0].bias is q.bias  # the bias Parameter is shared, not copied
    assert q.weight is not None  # the QAT layer is left as it was


def test_bare_qlinear_to_deploy_returns_the_deployed_layer():
    q = QLinear.from_linear(nn.Linear(8, 4), QuantConfig.preset("w4a8", rank=0))
    d = qvgen.to_deploy(q)
    assert isinstance(d, DeployedLinear) and d.qweight is d.w_packed


def test_empty_layer_refuses_to_run():
    d = DeployedLinear(8, 4, cfg=QuantConfig.preset("w4a8", rank=0), device="meta")
    with pytest.raises(ValueError, match="never loaded"):
        d.prepack()


@pytest.mark.parametrize("preset", ["w4a4", "w3a3", "w8a8"])
def test_weights_held_once_and_layout_built_at_load(preset):
    """On the CPU the deployed layout is the checkpoint codes themselves (one copy); it is built at conversion and at
    load (not at the first call), kept across a dtype cast, and the state dict round trip stays bit-identical."""
    from qvgen.apps.demo.metrics import model_bytes
    from qvgen_kernels import ops, registry
    if registry.unavailable_reason("cpu_int8", "cpu") is not None:
        pytest.skip("cpu_int8 unavailable")
    torch.manual_seed(2)
    cfg = QuantConfig.preset(preset, rank=0, clip_groups=1)
    d = QLinear.from_linear(nn.Linear(40, 24), cfg).to_deploy()
    assert d._packed is not None and d._packed.tensors[0] is d.w_packed
    assert ops.checkpoint_codes(d._packed) is d.w_packed
    # every byte: codes once, int32 column sums, fp32 scale / zero / two clips, fp32 bias
    assert model_bytes(d) == d.w_packed.numel() + 4 * 24 + 8 * 24 + 8 + 4 * 24
    sd = {k: v.clone() for k, v in d.state_dict().items()}
    e = DeployedLinear(40, 24, True, cfg, device="meta")
    e.load_state_dict(sd, assign=True)
    assert e._packed is not None and e._packed.tensors[0] is e.w_packed  # built at load
    layout = e._packed
    e.to(torch.bfloat16)
    assert e._packed is layout  # a dtype cast keeps codes and scales, hence the layout
    x = torch.randn(3, 40)
    with torch.no_grad():
        assert torch.equal(e(x.bfloat16()), d.to(torch.bfloat16)(x.bfloat16()))
    again = e.state_dict()
    assert sd.keys() == again.keys() and all(torch.equal(sd[k].to(again[k].dtype), again[k]) for k in sd)


def test_weight_is_a_view_of_the_codes():
    """`weight` reads as the [out, in] weight (device, compute dtype, numel counted by parameters()) and
    dequantizes when read, but holds no bytes and is not a checkpoint entry."""
    torch.manual_seed(3)
    cfg = QuantConfig.preset("w4a8", rank=0, clip_groups=1)
    d = QLinear.from_linear(nn.Linear(40, 24), cfg).to_deploy()
    w = d.weight
    assert isinstance(w, nn.Parameter) and not w.requires_grad
    assert w.shape == (24, 40) and w.dtype == torch.float32 and w.device == d.w_packed.device
    assert sum(p.numel() for p in d.parameters()) == 24 * 40 + 24
    assert torch.equal(w.mul(1), d.dequantized_weight()) and type(w.mul(1)) is torch.Tensor
    assert w.untyped_storage().data_ptr() == d.w_packed.untyped_storage().data_ptr()
    assert "weight" not in d.state_dict() and "weight" not in dict(d.named_buffers())
    codes = d.w_packed.clone()
    with pytest.raises(TypeError, match="in-place write"):
        d.weight.mul_(2)
    d.to(torch.bfloat16)
    assert d.weight.dtype == torch.bfloat16 and d.weight.shape == (24, 40) and torch.equal(d.w_packed, codes)
    assert torch.equal(d.weight.detach().mul(1), d.dequantized_weight().bfloat16())
    e = DeployedLinear(40, 24, True, cfg, device="meta", dtype=torch.bfloat16)
    assert e.weight.is_meta
    e.load_state_dict(d.state_dict(), assign=True)
    assert not e.weight.is_meta and e.weight.dtype == torch.bfloat16
    c = copy.deepcopy(e)
    assert isinstance(c.weight, nn.Parameter) and c.weight.layer() is c
    c.w_scale.mul_(2)
    assert torch.equal(c.weight.mul(1), c.dequantized_weight().bfloat16())
    assert torch.equal(copy.deepcopy(e.weight), e.dequantized_weight().bfloat16())
    p = pickle.loads(pickle.dumps(e))
    assert p.weight.layer() is p and torch.equal(p.weight.mul(1), e.weight.mul(1))


@pytest.mark.parametrize("group", [-1, 8])
def test_in_place_scale_edit_takes_effect_or_is_refused(group):
    """An in-place edit of w_scale / w_zero / w_packed reaches every layer kind at the next call (the layout of a
    grouped layer holds values derived from the scales); an invalid edit is refused there, by name."""
    torch.manual_seed(4)
    cfg = QuantConfig.preset("w4a8", rank=0, clip_groups=1, w_group_size=group)
    d = QLinear.from_linear(nn.Linear(32, 16), cfg).to_deploy()
    x = torch.randn(3, 32)
    with torch.no_grad():
        y0 = d(x)
        for name, edit in (("w_scale", lambda t: t.mul_(2)), ("w_zero", lambda t: t.add_(1)),
                           ("w_packed", lambda t: t.bitwise_xor_(0x11))):
            edit(getattr(d, name))
            fresh = DeployedLinear(32, 16, True, cfg)
            fresh.load_state_dict(d.state_dict())
            y = d(x)
            assert not torch.equal(y, y0) and torch.equal(y, fresh(x)), name
            y0 = y
        d.w_scale[0] = -1.0
        with pytest.raises(ValueError, match="w_scale"):
            d(x)


def test_call_during_dtype_casts_sees_old_or_new_state():
    """A thread calling the layer while another casts it between fp32 and bf16 gets the output of one state or
    the other for every call (never a mix, never an error); bounded: 200 calls against 20 casts."""
    import sys
    import threading
    torch.manual_seed(5)
    cfg = QuantConfig.preset("w4a8", rank=0, clip_groups=1, w_group_size=8)
    d = QLinear.from_linear(nn.Linear(32, 16), cfg).to_deploy()
    x = torch.randn(4, 32)
    with torch.no_grad():
        refs = [d(x)]
        d.to(torch.bfloat16)
        refs.append(d(x))
        d.to(torch.float32)
    assert not torch.equal(*refs)
    bad: list = []

    def call() -> None:
        with torch.no_grad():
            for _ in range(200):
                try:
                    y = d(x)
                except Exception as e:  # noqa: BLE001 - reported below
                    bad.append(repr(e))
                    continue
                if not any(torch.equal(y, r) for r in refs):
                    bad.append("mixed output")

    def cast() -> None:
        for i in range(20):
            d.to(torch.bfloat16 if i % 2 == 0 else torch.float32)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the windows are short
    try:
        threads = [threading.Thread(target=call), threading.Thread(target=cast)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        sys.setswitchinterval(old)
    assert not any(t.is_alive() for t in threads)
    assert not bad, bad[:3]


@pytest.fixture
def tensor_core_backend():
    """A backend whose layout is CUDA's tensor-core layout (built and run by torch code here): a layer on it holds
    that layout in place of its codes, as on a GPU."""
    layout = pytest.importorskip("qvgen_kernels.triton.layout", reason="needs triton importable (the layout module)")
    from qvgen_kernels import ops, registry
    name = "tensor_core_test"
    registry.register_backend(name, traceable=True)
    registry.register_impl("prepack_weight", name,
                           lambda wp, ws, wz, w_bits, a_bits, k: (layout.repack_weight(wp, w_bits, k), ws, wz))
    registry.register_impl("weight_layout", name, lambda weights, w_bits, a_bits: "tensor_core")

    def run(x, weights, bias, w_bits, a_bits, k, n, lo, hi):
        codes = layout.checkpoint_codes(weights[0], w_bits, n, k)
        return ops.lowbit_linear(x, codes, weights[1], weights[2], bias, w_bits, a_bits, lo, hi, backend="reference")

    registry.register_impl("prepacked_linear", name, run)
    yield name
    registry.unregister_backend(name)


@pytest.mark.parametrize("preset", ["w4a4", "w3a3", "w8a8"])
def test_layer_holding_a_backend_layout_keeps_one_copy(tensor_core_backend, preset):
    """Where the backend's layout is not the codes (CUDA's tensor-core layout), w_packed becomes that layout: no
    second copy. The state dict still holds the checkpoint codes (derived exactly), loading into such a layer works,
    a move rebuilds and holds the codes again where the new layout is the codes (CPU), outputs never change."""
    import copy

    from qvgen.apps.demo.metrics import model_bytes
    from qvgen_kernels import ops
    torch.manual_seed(3)
    cfg = QuantConfig.preset(preset, rank=0, clip_groups=1)
    d = QLinear.from_linear(nn.Linear(40, 24), cfg).to_deploy()
    codes, x = d.w_packed.clone(), torch.randn(5, 40)
    with torch.no_grad():
        want = d(x)
    sd_codes = {k: v.clone() for k, v in d.state_dict().items()}

    d.prepack(backend=tensor_core_backend)
    assert d._weight_layout == "tensor_core" and d.w_packed is d._packed.tensors[0]
    assert d.w_packed.shape != codes.shape  # [NP / 2, KP] (4-bit nibbles) or [NP, KP] (8 bits)
    assert model_bytes(d) == d._packed.nbytes + 8 + 4 * 24  # the layout (with its scale / zero), clips, bias
    assert torch.equal(d.checkpoint_codes(), codes) and torch.equal(ops.checkpoint_codes(d._packed), codes)
    sd = d.state_dict()
    assert sd.keys() == sd_codes.keys() and all(torch.equal(sd[k], sd_codes[k]) for k in sd)
    with torch.no_grad():
        assert torch.equal(d(x), want)
        assert torch.equal(d.weight.float(), DeployedLinear.dequantized_weight(d))
        assert torch.equal(copy.deepcopy(d).state_dict()["w_packed"], codes)

    e = QLinear.from_linear(nn.Linear(40, 24), cfg).to_deploy()
    e.prepack(backend=tensor_core_backend)
    e.load_state_dict(sd)  # into a layer holding the layout: received as codes, the layout rebuilt at load
    assert torch.equal(e.w_packed, codes) and e._weight_layout == "codes"
    with torch.no_grad():
        assert torch.equal(e(x), want)

    d._apply(lambda t: t.clone())  # a move (new tensors): the layout is dropped, rebuilt at the next call
    with torch.no_grad():
        assert torch.equal(d(x), want)
    assert d._weight_layout == "codes" and torch.equal(d.w_packed, codes)
