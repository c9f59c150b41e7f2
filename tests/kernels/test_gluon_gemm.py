"""The Gluon GEMM (``qvgen_kernels/triton/gemm_gluon.py``): compiled for sm_90a without a GPU, with no register spills
and its wgmmas kept in flight (every wait inside the main loop leaves one group pending: ptxas serialises none); run
only where ``_configs.gemm_kernel`` chooses it; on a Hopper GPU equal bit for bit to ``gemm_tc``'s kernel, which the
other tests check against the reference. Triton's interpreter does not run Gluon: the numerics are GPU tests.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels._tc_cases import gemm_case
from tests.kernels.test_triton_configs import _compile_records

_SCRIPT = r"""
import json, re
from benchmarks import sass_roofline as sr
from qvgen_kernels.triton._specs import gluon_compile_specs

out = []
for spec in gluon_compile_specs():
    c = sr.compile_triton(spec, "sm_90a")
    rows = sr.disassemble(c["cubin"])[c["name"]]
    res = sr.resource_usage(c["cubin"])[c["name"]]
    loops = [(f, l) for f, l in sr._loops(rows) if any(sr._opclass(op) == "tensor" for _, op, _ in sr._instrs(rows, f, l))]
    f, l = min(loops, key=lambda fl: fl[1] - fl[0])
    body = sr._instrs(rows, f, l)
    waits = [int(re.search(r"0x([0-9a-f]+)", arg).group(1), 16) for _, op, arg in body
             if op.startswith("WARPGROUP.DEPBAR")]
    out.append(dict(name=spec.name, spills=res["STACK"], regs=res["REG"], shared=c["shared"],
                    estimate=spec.meta["shared_estimate"], loop_waits=waits,
                    loop_wgmma=sum(op.startswith("IGMMA") for _, op, _ in body),
                    stores=sorted({op for _, op, _ in rows if op.startswith("STG")})))
print(json.dumps(out))
"""


def test_gluon_gemm_compiles_for_sm90a_with_its_dots_in_flight():
    pytest.importorskip("triton.experimental.gluon")
    records = _compile_records(_SCRIPT)
    assert len(records) == 2, records  # with and without bias
    for r in records:
        assert r["spills"] == 0 and r["regs"] <= 255, r
        assert r["shared"] <= r["estimate"] + 1024, r
        # Per K tile two dots of 4 wgmmas (m64n128k32) per warpgroup, each followed by a wait that leaves one pending.
        assert r["loop_wgmma"] == 8 and r["loop_waits"] == [1, 1], r
        assert r["stores"] == ["STG.E.128"], r  # 16-byte output stores


def test_gemm_kernel_choice(monkeypatch):
    from qvgen_kernels.triton._configs import GEMM_KERNEL_ENV, SMALL_M_MAX, gemm_kernel

    monkeypatch.delenv(GEMM_KERNEL_ENV, raising=False)
    assert gemm_kernel(4096, 4, 4, False, 90) == "tc"  # not the automatic choice
    monkeypatch.setenv(GEMM_KERNEL_ENV, "gluon")
    assert gemm_kernel(4096, 4, 4, False, 90) == "gluon" and gemm_kernel(4096, 3, 3, False, 90) == "gluon"
    for args in ((4096, 4, 4, False, 80), (4096, 4, 4, False, 100), (4096, 4, 8, False, 90), (4096, 8, 8, False, 90),
                 (4096, 4, 4, True, 90), (SMALL_M_MAX, 4, 4, False, 90), (4096, 4, 4, False, None)):
        assert gemm_kernel(*args) == "tc", args  # Ampere, Blackwell, an 8-bit operand, groups, small M, no GPU


def _hopper(tk):
    mod, dev = tk
    if dev != "cuda" or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs a Hopper GPU (sm_90)")
    return mod


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("m,k,n", ((300, 1536, 1536), (257, 128, 130), (1000, 640, 384), (513, 5120, 520),
                                   (300, 300, 2200)))
def test_gluon_equals_tc_gemm(tk, bits, m, k, n):
    """Odd M and N (a partial 256-row block, wrapped tokens), one K tile and many, K padded, more weight blocks than
    one tile-order group (2200 rows: 9 blocks, a full group of 8 and a partial one), bias and none; compared as
    integers (bit for bit: -0.0 differs from 0.0)."""
    mod = _hopper(tk)
    from qvgen_kernels.triton.gemm import _act_operand
    from qvgen_kernels.triton.gemm_gluon import gluon_gemm

    c = gemm_case(m, n, k, bits, bits, seed=m + k + n + bits, want=False)
    w_kernel, colsum, sw, zw = mod.prepack_weight(c["w_packed"].cuda(), c["w_scale"].cuda(), c["w_zero"].cuda(),
                                                  bits, bits, k)
    a8, sums = _act_operand(c["a_packed"].cuda(), c["a_zero"].cuda(), bits, k, False)
    sx, zx = c["a_scale"].cuda(), c["a_zero"].cuda()
    for bias in (c["bias"].cuda(), None):
        for dtype in (torch.bfloat16, torch.float32):
            want = mod.gemm_tc.tc_gemm(a8, sx, zx, sums, w_kernel, colsum, sw, zw, bias, bits, bits, k, n, dtype)
            got = gluon_gemm(a8, sx, sums, w_kernel, sw, zw, bias, k, n, dtype)
            bits_of = torch.int16 if dtype == torch.bfloat16 else torch.int32
            assert torch.equal(got.view(bits_of), want.view(bits_of)), (bias is None, dtype)


@pytest.mark.gpu
def test_prepacked_linear_with_the_gluon_gemm(tk, monkeypatch):
    """QVGEN_TRITON_GEMM=gluon: a deployed call at Wan-1.3B width gives the default kernel's output bit for bit."""
    mod = _hopper(tk)
    from qvgen_kernels import ops
    from qvgen_kernels.triton._configs import GEMM_KERNEL_ENV

    c = gemm_case(1024, 1536, 1536, 4, 4, seed=7, want=False)
    packed = ops.prepack_linear(c["w_packed"].cuda(), c["w_scale"].cuda(), c["w_zero"].cuda(), w_bits=4, a_bits=4,
                                k=1536, backend="triton")
    x = c["x"].cuda().bfloat16()
    want = ops.prepacked_linear(x, packed, c["bias"].cuda(), 0.9, 1.0)
    from qvgen_kernels.triton import gemm_gluon

    calls: list = []
    run = gemm_gluon.gluon_gemm
    monkeypatch.setattr(gemm_gluon, "gluon_gemm", lambda *a: calls.append(1) or run(*a))
    monkeypatch.setenv(GEMM_KERNEL_ENV, "gluon")
    got = ops.prepacked_linear(x, packed, c["bias"].cuda(), 0.9, 1.0)
    assert calls and torch.equal(got.view(torch.int16), want.view(torch.int16))
