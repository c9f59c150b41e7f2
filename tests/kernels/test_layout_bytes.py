"""Bytes of the deployed weight layouts, computed on the CPU for every backend's layout (the CUDA tensor-core
layout of ``qvgen_kernels/triton/layout.py``, which the extension's tensor-core GEMMs share, is built here by its
own torch code): the weights at 4 bits each (3-bit codes in 4-bit nibbles, 8 bits at W8) plus per-channel
constants, and the checkpoint codes derived from the layout exactly, so a layer needs to hold no second copy."""

from __future__ import annotations

import pytest
import torch

from qvgen_kernels import ops, registry
from qvgen_kernels.format import packed_width, qmax

layout = pytest.importorskip("qvgen_kernels.triton.layout", reason="needs triton importable (the layout's module)")

# Wan2.1-1.3B block shapes (K, N) and odd ones (padding rows and columns)
SHAPES = [(1536, 1536), (1536, 8960), (8960, 1536), (40, 33), (1, 5), (130, 129)]


def _codes(n: int, k: int, bits: int, seed: int) -> torch.Tensor:
    return torch.randint(0, qmax(bits) + 1, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_tensor_core_layout_bytes_and_inverse(bits: int) -> None:
    for i, (k, n) in enumerate(SHAPES):
        if k * n > 2_000_000 and bits != 4:
            continue  # one large shape per format is enough; the 4-bit ones are the acceptance shapes
        w_packed = ops.pack(_codes(n, k, bits, i), bits)
        w_kernel = layout.repack_weight(w_packed, bits, k)
        np_, kp = layout.round_up(n, layout.ROW_BLOCK), layout.kernel_k(k)
        weight_bits = 8 if bits == 8 else 4
        assert w_kernel.numel() * w_kernel.element_size() == np_ * kp * weight_bits // 8
        if n % 128 == 0 and k % 128 == 0:  # no padding: exactly the format's bits per weight (3 -> 4-bit nibbles)
            assert w_kernel.numel() * 8 == weight_bits * n * k
        # The checkpoint codes come back from the layout alone, bit for bit.
        assert torch.equal(layout.checkpoint_codes(w_kernel, bits, n, k), w_packed)
        # Deployed bytes: the layout + int32 colsum + fp32 scale + fp32 zero per channel (the Triton prepack).
        scale, zero = torch.rand(n) + 0.1, torch.rand(n) * qmax(bits)
        tensors = layout_tensors(w_packed, scale, zero, bits, k)
        deployed = sum(t.numel() * t.element_size() for t in tensors)
        assert deployed == np_ * kp * weight_bits // 8 + 12 * n
        if bits == 4 and (k, n) == (1536, 8960):
            # 4 bits per weight + 12 bytes per output channel (96 / K bits per weight: 0.0625 at K = 1536)
            assert deployed * 8 / (n * k) == 4 + 96 / k


def layout_tensors(w_packed, scale, zero, bits, k):
    """The four tensors of the Triton prepack (its torch part; the kernels are not needed for the bytes)."""
    n = w_packed.shape[0]
    return (layout.repack_weight(w_packed, bits, k), layout.weight_colsum(w_packed, bits, k, 1),
            scale.reshape(n, 1).float().contiguous(), zero.reshape(n, 1).float().contiguous())


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_cpu_layout_bytes(bits: int) -> None:
    """The CPU layout is the checkpoint codes (3, 4 or 8 bits per weight) + int32 column sums; per channel the
    scales and zero points are the layer's own tensors."""
    if registry.unavailable_reason("cpu_int8", "cpu") is not None:
        pytest.skip("cpu_int8 unavailable")
    k, n = 1536, 1536
    w_packed = ops.pack(_codes(n, k, bits, 0), bits)
    scale, zero = torch.rand(n) + 0.1, torch.rand(n) * qmax(bits)
    packed = ops.prepack_linear(w_packed, scale, zero, w_bits=bits, a_bits=4, k=k)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in packed.tensors}
    extra = sum(b for p, b in storages.items() if p not in (w_packed.untyped_storage().data_ptr(),
                                                             scale.untyped_storage().data_ptr(),
                                                             zero.untyped_storage().data_ptr()))
    assert extra == 4 * n  # the column sums: nothing else beyond what the layer holds already
    assert n * packed_width(k, bits) * 8 == bits * n * k


@pytest.mark.parametrize("preset", ["w4a4", "w3a3", "w8a8"])
def test_deployed_layer_on_the_tensor_core_layout_holds_it_once(preset: str) -> None:
    """A DeployedLinear prepacked for the Triton GEMM (the interpreter here, CUDA on a GPU) holds the tensor-core
    layout as its w_packed, with no checkpoint codes beside it; its state dict holds the codes, derived exactly; its
    output is the reference's bit for bit."""
    from torch import nn

    from qvgen import QLinear, QuantConfig
    from qvgen.apps.demo.metrics import model_bytes
    if registry.unavailable_reason("triton", "cpu") is not None:
        pytest.skip(registry.unavailable_reason("triton", "cpu"))
    torch.manual_seed(5)
    d = QLinear.from_linear(nn.Linear(64, 48), QuantConfig.preset(preset, rank=0, clip_groups=1)).to_deploy()
    codes, x = d.w_packed.clone(), torch.randn(7, 64)
    with torch.no_grad():
        want = ops.prepacked_linear(x, ops.prepack_linear(codes, d.w_scale, d.w_zero, w_bits=d.cfg.w_bits,
                                                          a_bits=d.cfg.a_bits, k=64, backend="reference"), d.bias,
                                    d.a_clip_lo, d.a_clip_hi)
    packed = d.prepack(backend="triton")
    assert packed.weight_layout == "tensor_core" and d.w_packed is packed.tensors[0]
    assert model_bytes(d) == packed.nbytes + 8 + 4 * 48  # layout, its column sums / scales / zeros, clips, bias
    assert torch.equal(d.state_dict()["w_packed"], codes)
    with torch.no_grad():
        assert torch.equal(d(x), want)
