"""Operands of the Triton tensor-core GEMM tests (split K, the sm_90 tiles): reference-quantized activations,
random weights, the reference output, and one call of the GEMM on them with a given launch."""

from __future__ import annotations

import torch

from qvgen_kernels import reference as ref
from qvgen_kernels.format import qmax


def gemm_case(m: int, n: int, k: int, w_bits: int, a_bits: int, seed: int, unit: bool = False,
              want: bool = True) -> dict:
    """Activations (every third row 4x larger) quantized by the reference, random codes and scales (``unit``: unit
    scales, zero points 0 and no bias, so the output is the exact integer sum), and the reference output
    (``want``: else None)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    x[::3] *= 4.0
    ones = torch.ones(m)
    a_packed, a_scale, a_zero, a_rowsum = ref.quantize_per_token(x, a_bits, ones, 0.9 * ones)
    codes = torch.randint(0, qmax(w_bits) + 1, (n, k), generator=gen, dtype=torch.uint8)
    w_scale = torch.ones(n) if unit else 0.01 + torch.rand(n, generator=gen)
    w_zero = torch.zeros(n) if unit else qmax(w_bits) * torch.rand(n, generator=gen)
    if unit:
        a_scale = torch.ones(m)
    bias = None if unit else torch.randn(n, generator=gen)
    w_packed = ref.pack(codes, w_bits)
    out = ref.lowbit_gemm(a_packed, a_scale, a_zero, a_rowsum, w_packed, w_scale, w_zero, bias, w_bits, a_bits,
                          k, torch.float32) if want else None
    return dict(x=x, a_packed=a_packed, a_scale=a_scale, a_zero=a_zero, a_rowsum=a_rowsum, w_packed=w_packed,
                w_scale=w_scale, w_zero=w_zero, bias=bias, codes=codes, want=out)


def tc_gemm(mod, dev, c: dict, w_bits: int, a_bits: int, k: int, **launch) -> torch.Tensor:
    """``gemm_tc.tc_gemm`` on the case's operands (moved to ``dev``), with ``launch`` (``split_k=``, ``launch=``)
    passed through; the output on the CPU."""
    from qvgen_kernels.triton.gemm import _act_operand

    weights = mod.prepack_weight(c["w_packed"].to(dev), c["w_scale"].to(dev), c["w_zero"].to(dev), w_bits,
                                 a_bits, k)
    a8, sums = _act_operand(c["a_packed"].to(dev), c["a_zero"].to(dev), a_bits, k, False)
    bias = None if c["bias"] is None else c["bias"].to(dev)
    return mod.gemm_tc.tc_gemm(a8, c["a_scale"].to(dev), c["a_zero"].to(dev), sums, *weights, bias, w_bits,
                               a_bits, k, c["w_packed"].shape[0], torch.float32, **launch).cpu()


def spy_workspaces(mod, monkeypatch) -> list:
    """Record every split-K workspace the GEMM makes (to check that each is left zero after its launch)."""
    seen: list = []
    make = mod.gemm_tc.split_workspace

    def spy(*args):
        seen.append(make(*args))
        return seen[-1]

    monkeypatch.setattr(mod.gemm_tc, "split_workspace", spy)
    return seen
