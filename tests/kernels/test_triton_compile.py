"""Every elementwise / per-row Triton kernel compiles for Hopper (sm_90 PTX) without a GPU: catches what
the interpreter cannot (non-constexpr globals, layouts), checks that no fp32 division is the approximate
``div.full`` (the format prescribes IEEE division). The GEMM's configs: ``test_triton_configs.py``.

Runs in a subprocess without TRITON_INTERPRET (kernels defined in interpreter mode cannot compile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import qvgen_kernels.triton  # noqa: F401  (defines the kernels)
m = {n: sys.modules["qvgen_kernels.triton." + n] for n in ("quantize_act", "quantize_i8", "fake_quant", "pack")}

EXACT = sys.modules["qvgen_kernels.triton._configs"].EXACT_FP

def ptx(kernel, types, consts, options=EXACT):
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    names = fn.arg_names
    sig = dict(zip(names, types))
    sig.update({k: "constexpr" for k in consts})
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    opts = {"num_warps": 8, **options}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["ptx"]

out = {}
q_types = ["*fp16", "*fp32", "*fp32", "*u8", "*fp32", "*i32", "*i32"] + ["i32"] * 5
for single in (True, False):
    out[f"quantize_{single}"] = ptx(m["quantize_act"]._quantize_act_kernel, q_types, dict(
        BM=16, BK=128, BITS=3, P=7, EPS=1e-8, SINGLE_PASS=single))
i8_types = ["*fp16", "*fp32", "*fp32", "*i8", "*fp32", "*i32", "*i32", "*i32"] + ["i32"] * 7
for single in (True, False):
    out[f"quantize_i8_{single}"] = ptx(m["quantize_i8"]._quantize_i8_kernel, i8_types, dict(
        BM=16 if single else 8, BK=128 if single else 1024, P=255, EPS=1e-8, A8=True, SINGLE_PASS=single, CHUNKS=True, CH=32))
out["weight_fq"] = ptx(m["fake_quant"]._weight_fq_kernel, ["*bf16", "*fp32", "*fp32", "*bf16", "*bf16",
    "*fp32", "*fp32", "i32", "i32", "i32", "fp32", "i32", "i32", "i32"], dict(P=15, BN=16, BK=128, BACKWARD=True))
out["act_fq"] = ptx(m["fake_quant"]._act_fq_kernel, ["*bf16", "*fp32", "*fp32", "*bf16", "*bf16", "*fp32",
    "*fp32", "i32", "i32", "i32", "i32", "i32"], dict(P=15, EPS=1e-8, BM=16, BK=128, BACKWARD=True))
for name in ("_pack_kernel", "_unpack_kernel"):
    out[name] = ptx(getattr(m["pack"], name), ["*u8", "*u8"] + ["i32"] * 5, dict(BM=16, BK=128, BITS=3))
print(json.dumps({k: {"wgmma": "wgmma" in v, "div_full": "div.full" in v, "div_rn": "div.rn" in v,
                      "fma": "fma.rn.f32" in v}
                  for k, v in out.items()}))
"""


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not any(v["div_full"] for v in info.values()), info
    assert info["quantize_True"]["div_rn"] and info["act_fq"]["div_rn"], info
    # Bit-exact float paths must not contract a * b + c into one rounding.
    assert info["quantize_i8_True"]["div_rn"], info
    assert not any(info[k]["fma"] for k in ("quantize_True", "quantize_False", "quantize_i8_True",
                                            "quantize_i8_False", "weight_fq", "act_fq")), info
