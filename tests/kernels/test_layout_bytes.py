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
