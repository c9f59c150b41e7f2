"""Contract of every ``qvgen::*`` custom op: opcheck (schema, fake impl, autograd registration),
output shapes / dtypes / devices, and torch.compile(fullgraph=True) of the public API, called and compared."""

from __future__ import annotations

import pytest
import torch

from qvgen_kernels import _ops, ops
from qvgen_kernels.format import packed_width
from tests._utils import seed_all

M, N, K = 5, 6, 37


def _weights(bits: int = 4, groups: int = 0):
    gen = seed_all(bits + groups)
    w = torch.randn(N, K if groups == 0 else 64, generator=gen)
    pshape = (N,) if groups == 0 else (N, groups)
    scale = torch.rand(pshape, generator=gen) * 0.2 + 0.05
    zero = torch.rand(pshape, generator=gen) * 7
    return w, scale, zero


def _cases() -> list[tuple[str, object, tuple]]:
    gen = seed_all(0)
    x = torch.randn(M, K, generator=gen)
    clip = torch.rand(M, generator=gen) * 0.5 + 0.5
    w, scale, zero = _weights()
    codes = ops.quantize_weight(w, scale, zero, 4)
    wp = ops.pack(codes, 4)
    qx = ops.quantize_per_token(x, 4, clip, clip)
    grad_w = torch.randn(N, K, generator=gen)
    wg = w.clone().requires_grad_()
    sg, zg = scale.clone().requires_grad_(), zero.clone().requires_grad_()
    xg, lo, hi = x.clone().requires_grad_(), clip.clone().requires_grad_(), clip.clone().requires_grad_()
    return [
        ("pack", _ops.pack, (codes, 4, None)),
        ("pack3", _ops.pack, (codes & 7, 3, "reference")),
        ("unpack", _ops.unpack, (wp, 4, K, None)),
        ("quantize_per_token", _ops.quantize_per_token, (x, 3, clip, clip, None)),
        ("quantize_weight", _ops.quantize_weight, (w, scale, zero, 4, None)),
        ("lowbit_gemm", _ops.lowbit_gemm, (*qx, wp, scale, zero, torch.randn(N), 4, 4, K, torch.bfloat16, None)),
        ("lowbit_linear", _ops.lowbit_linear, (x, wp, scale, zero, None, 4, 4, clip, clip, None)),
        ("weight_only", _ops.lowbit_linear, (x, wp, scale, zero, torch.randn(N), 4, 16, clip, clip, None)),
        ("fake_quant_weight", _ops.fake_quant_weight, (wg, sg, zg, 4, 0.5, None)),
        ("fake_quant_weight_backward", _ops.fake_quant_weight_backward, (grad_w, w, scale, zero, 4, 0.5, None)),
        ("fake_quant_act", _ops.fake_quant_act, (xg, 4, lo, hi, None)),
        ("fake_quant_act_backward", _ops.fake_quant_act_backward, (x.clone(), x, 4, clip, clip, None)),
    ]


@pytest.mark.parametrize("name, op, args", _cases(), ids=[c[0] for c in _cases()])
def test_opcheck(name: str, op, args: tuple) -> None:
    torch.library.opcheck(op, args)


def test_output_contract() -> None:
    x = torch.randn(M, K)
    one = torch.ones(M)
    packed, scale, zero, rowsum = _ops.quantize_per_token(x, 4, one, one)
    assert (packed.shape, packed.dtype) == ((M, packed_width(K, 4)), torch.uint8)
    assert (scale.dtype, zero.dtype, rowsum.dtype) == (torch.float32, torch.int32, torch.int32)
    assert scale.shape == zero.shape == rowsum.shape == (M,)
    w, ws, wz = _weights()
    wp = ops.pack(ops.quantize_weight(w, ws, wz, 4), 4)
    y = _ops.lowbit_gemm(packed, scale, zero, rowsum, wp, ws, wz, None, 4, 4, K, torch.float16)
    assert (y.shape, y.dtype, y.device) == ((M, N), torch.float16, x.device)
    for dtype in (torch.float32, torch.bfloat16):
        y = ops.lowbit_linear(x.to(dtype)[None], wp, ws, wz, None)
        assert (y.shape, y.dtype) == ((1, M, N), dtype)


@pytest.mark.parametrize("a_bits, groups", [(4, 0), (8, 2), (16, 0)])
def test_compile_fullgraph_lowbit_linear(a_bits: int, groups: int) -> None:
    w, ws, wz = _weights(4, groups)
    k = w.shape[1]
    wp = ops.pack(ops.quantize_weight(w, ws, wz, 4), 4)
    bias = torch.randn(N)

    def layer(x: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        return torch.relu(ops.lowbit_linear(x, wp, ws, wz, bias, 4, a_bits, clip, 0.9)) * 2

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x, clip = torch.randn(2, 3, k), torch.full((2, 3), 0.8)
    assert torch.equal(compiled(x, clip), layer(x, clip))
    x2 = torch.randn(4, 3, k)  # a new shape through the compiled function
    assert torch.equal(compiled(x2, torch.full((4, 3), 0.8)), layer(x2, torch.full((4, 3), 0.8)))


def test_compile_fullgraph_fake_quant_backward() -> None:
    w, ws, wz = (t.requires_grad_() for t in _weights())

    def qat_step(x: torch.Tensor) -> torch.Tensor:
        xq = ops.fake_quant_act(x, 4, 0.9, 0.95)
        return (xq @ ops.fake_quant_weight(w, ws, wz, 4, 0.1).T).square().sum()

    x = torch.randn(M, K)
    compiled = torch.compile(qat_step, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    grads = torch.autograd.grad(loss, (w, ws, wz))
    loss_ref = qat_step(x)
    grads_ref = torch.autograd.grad(loss_ref, (w, ws, wz))
    assert torch.equal(loss, loss_ref)
    for g, r in zip(grads, grads_ref):
        assert torch.equal(g, r)


@pytest.mark.slow  # ~40 s with a cold inductor cache (C++ codegen on CPU)
def test_compile_inductor_lowbit_linear() -> None:
    w, ws, wz = _weights()
    wp = ops.pack(ops.quantize_weight(w, ws, wz, 4), 4)
    fn = torch.compile(lambda x: ops.lowbit_linear(x, wp, ws, wz, None) + 1.0, fullgraph=True)
    x = torch.randn(3, K)
    assert torch.equal(fn(x), ops.lowbit_linear(x, wp, ws, wz, None) + 1.0)



def _bad_data_call(op: str):
    """A call of ``op`` whose data (not metadata) is invalid, and the argument named in the error; the
    reference does not validate these itself, so without the check it returns garbage instead of raising."""
    w, scale, zero = _weights()
    x = torch.randn(M, K)
    nan_x = x.clone().index_fill_(1, torch.tensor([3]), float("nan"))
    wp = ops.pack(ops.quantize_weight(w, scale, zero, 4), 4)
    return {
        "fake_quant_act": (lambda: ops.fake_quant_act(nan_x, 4, backend="reference"), "x"),
        "quantize_per_token": (lambda: ops.quantize_per_token(x, 4, torch.zeros(M), backend="reference"),
                               "clip_lo"),
        "quantize_weight": (lambda: ops.quantize_weight(w, scale, zero * float("nan"), 4, backend="reference"),
                            "zero"),
        "fake_quant_weight": (lambda: ops.fake_quant_weight(w, -scale, zero, 4, backend="reference"), "scale"),
        "lowbit_linear": (lambda: ops.lowbit_linear(nan_x, wp, scale, zero, None, backend="reference"), "x"),
    }[op]


@pytest.mark.parametrize("op", ["fake_quant_act", "quantize_per_token", "quantize_weight", "fake_quant_weight",
                                "lowbit_linear"])
def test_data_checks_cpu_or_opt_in(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    call, arg = _bad_data_call(op)
    monkeypatch.delenv(_ops.CHECK_DATA_ENV, raising=False)
    with pytest.raises(ValueError, match=f"^{op}: argument '{arg}'"):  # CPU: always checked
        call()
    monkeypatch.setattr(_ops, "_HOST_DEVICES", ())  # CPU tensors now take the accelerator path
    assert not _ops.check_data(torch.zeros(1))
    call()  # no data check (no device->host sync): the bad value passes through unreported
    monkeypatch.setenv(_ops.CHECK_DATA_ENV, "1")  # the opt-in restores every check
    with pytest.raises(ValueError, match=f"^{op}: argument '{arg}'"):
        call()
