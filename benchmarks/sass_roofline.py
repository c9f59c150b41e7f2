"""SASS instruction profile of the packed GEMMs, on CPU: compile, disassemble, count.

    python -m benchmarks.sass_roofline [--json FILE] [--arch sm_90a sm_80] [--only SUBSTRING] [--no-cuda | --cuda-only]

Compiles every GEMM variant (W4A4, W3A3, W4A8, W8A8; per channel and per group of 128; every Triton GPU
autotune config, from ``qvgen_kernels.triton._specs``) and the CUDA extension's GEMM kernels (the dp4a
reference ``csrc/cuda/gemm.cu``, and the tensor-core GEMMs of ``csrc/cuda/tc`` when the CUTLASS headers are
found: mma.sync for sm_80, wgmma for sm_90a; their tiles and stages from ``csrc/tests/tc_configs.cu``) through
nvcc for each architecture, disassembles the cubins (nvdisasm) and reports,
per K tile of the main loop: tensor-core instructions, the other instructions by class, registers, spill
bytes, shared memory, pipeline stages, how many wgmma groups stay in flight, and whether instruction issue
alone could keep the tensor cores fed.

This is an instruction count, not a speed: ``issue_over_tensor`` below only says whether issue is a
bottleneck. Predictions of speed (waits, barriers, shared-memory and HBM bytes, prologue / epilogue,
occupancy, waves) come from ``benchmarks.static_estimate``, which reads its SASS facts through this module.

Issue count model:
- The main loop is the innermost loop (backward branch) that holds the tensor-core (or dp4a) instructions.
  With weight groups, the work of the enclosing group loop (promotion of the int32 partial sums) is spread
  over the K tiles of a group. One loop iteration is one K tile for the Triton kernels. The CUDA tensor-core
  GEMMs promote inside the K-stage loop (a group may end at any of the stage's 4 k32 steps): the basic blocks
  of that loop holding int-to-float conversions are the promotion and are weighted by the fraction of them a
  stage runs at groups of 128 columns (1 of 4).
- Every SASS instruction of a warp costs one issue slot; an SM has 4 schedulers issuing one warp
  instruction per clock each (H100/H200 and A100). Warps are symmetric, so per warp and K tile:
      issue clocks (SM share)   = instructions / 4
      tensor clocks (SM share)  = MACs of the warp's MMA instructions / (8-bit MACs per SM per clock)
      dp4a clocks (SM share)    = IDP.4A instructions / 2   (64 lanes per SM per clock)
  where a warpgroup MMA (IGMMA MxNxK, issued by each of its 4 warps) counts M*N*K/4 MACs per warp and a
  warp MMA (IMMA) M*N*K. 8-bit MACs per SM per clock: 4096 on sm_90 (1978.9 dense INT8 TOPS = 2 x BF16's
  989.4 over 132 SMs at 1.83 GHz, KERNELS.md 2.1) and 2048 on sm_80 (624 TOPS, 108 SMs, 1.41 GHz).
- issue_over_tensor = issue clocks / tensor clocks per K tile: below 1, issue does not limit the main loop
  (it says nothing about waits to 0 that drain the tensor pipe, barriers, shared-memory bandwidth, memory,
  the epilogue or occupancy, each of which the estimate counts).
Spill bytes are the stack frame of the function (cuobjdump -res-usage STACK; Triton kernels use local
memory only for spills) and LDL/STL counts the spill traffic in the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# 8-bit MACs per SM per clock and schedulers per SM, per architecture.
ARCHS = {
    "sm_90a": dict(capability=90, int8_macs_per_clk=4096, schedulers=4, dp4a_per_clk=2),
    "sm_80": dict(capability=80, int8_macs_per_clk=2048, schedulers=4, dp4a_per_clk=2),
}

# Opcode (text before the first '.') -> class. Anything else is "other".
CLASSES = {
    "tensor": ("IGMMA", "HGMMA", "QGMMA", "IMMA", "HMMA"),
    "dp4a": ("IDP",),
    "wgmma_sync": ("WARPGROUP", "WARPSYNC"),
    "global_mem": ("LDG", "STG", "LDGSTS", "LDGDEPBAR", "UTMALDG", "UTMASTG", "UBLKCP", "UTMAPF", "RED", "ATOMG"),
    "shared_mem": ("LDS", "STS", "LDSM", "STSM", "ATOMS"),
    "local_mem (spills)": ("LDL", "STL"),
    "barrier": ("BAR", "SYNCS", "DEPBAR", "MEMBAR", "FENCE", "ELECT", "ERRBAR", "CCTL"),
    "int_alu": ("IADD3", "IMAD", "LOP3", "SHF", "PRMT", "ISETP", "LEA", "SEL", "IABS", "IMNMX", "VIADD",
                "VIMNMX", "IADD", "BMSK", "SGXT", "POPC", "FLO", "BREV", "ISCADD", "IMUL", "LOP", "PLOP3"),
    "fp_alu": ("FADD", "FMUL", "FFMA", "FSETP", "FMNMX", "FSEL", "FCHK", "MUFU", "HADD2", "HMUL2", "HFMA2"),
    "convert": ("I2F", "F2I", "F2F", "I2FP", "F2FP", "I2I", "F2IP"),
    "move": ("MOV", "S2R", "S2UR", "CS2R", "R2UR", "SHFL", "R2P", "P2R", "VOTE", "VOTEU", "LDC", "ULDC"),
    "control": ("BRA", "BSYNC", "BSSY", "EXIT", "NOP", "RET", "CALL", "YIELD", "WARPSYNC", "ACQBULK"),
}
_CLASS_OF = {op: cls for cls, ops in CLASSES.items() for op in ops}
# mma.sync shapes as SASS spells them.
_IMMA_SHAPES = {"16832": (16, 8, 32), "16816": (16, 8, 16), "1688": (16, 8, 8), "8816": (8, 8, 16),
                "16864": (16, 8, 64), "8832": (8, 8, 32)}
_INSTR = re.compile(r"/\*([0-9a-f]+)\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_FUNC = re.compile(r"^\s*\.text\.(\S+):")
_BRANCH_TARGET = re.compile(r"\(?(\.L_x_\d+)\)?")

# CUDA extension kernels: output tile of one block (csrc/cuda/gemm.cu: kBM, kBN).
CUDA_GEMM_TILE = (64, 64)


def _tool(name: str) -> str:
    """nvdisasm / cuobjdump: Triton's bundled copies first (they know every sm Triton targets)."""
    try:
        import triton
        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return name


def _run(cmd: list[str], **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def _opclass(opcode: str) -> str:
    base = opcode.split(".")[0]
    if base.startswith("U") and base not in _CLASS_OF and base[1:] in _CLASS_OF:
        return "uniform"
    return _CLASS_OF.get(base, "other")


def disassemble(cubin: bytes) -> dict[str, list[tuple[int, str, str]]]:
    """{function: [(address, opcode, operands)]} with branch labels kept as ('label', name) pseudo rows."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = _run([_tool("nvdisasm"), "-c", f.name])
    funcs: dict[str, list] = {}
    cur = None
    for line in text.splitlines():
        if m := _FUNC.match(line):
            cur = funcs.setdefault(m.group(1), [])
        elif cur is None:
            continue
        elif m := _LABEL.match(line):
            cur.append((-1, "LABEL", m.group(1)))
        elif m := _INSTR.search(line):
            cur.append((int(m.group(1), 16), m.group(2), m.group(3).strip()))
    return funcs


def resource_usage(cubin: bytes) -> dict[str, dict[str, int]]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = _run([_tool("cuobjdump"), "-res-usage", f.name])
    out, cur = {}, None
    for line in text.splitlines():
        if m := re.match(r"\s*Function (\S+):", line):
            cur = m.group(1)
        elif cur and "REG:" in line:
            out[cur] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
    return out


def _loops(rows: list) -> list[tuple[int, int]]:
    """(first, last) row indices of every loop: a branch back to an earlier label."""
    label_at = {}
    for i, (_, op, arg) in enumerate(rows):
        if op == "LABEL":
            label_at[arg] = i
    loops = []
    for i, (_, op, arg) in enumerate(rows):
        if op.startswith("BRA") and (m := _BRANCH_TARGET.search(arg)) and label_at.get(m.group(1), i) < i:
            loops.append((label_at[m.group(1)], i))
    return loops


def _macs_per_warp(opcode: str) -> int:
    parts = opcode.split(".")
    if parts[0].endswith("GMMA"):  # warpgroup MMA MxNxK: each of the 4 warps issues it
        m, n, k = (int(v) for v in parts[1].split("x"))
        return m * n * k // 4
    if parts[0] in ("IMMA", "HMMA"):
        m, n, k = _IMMA_SHAPES[parts[1]]
        return m * n * k
    return 0


def _instrs(rows: list, first: int, last: int) -> list[tuple[int, str, str]]:
    return [r for r in rows[first:last + 1] if r[1] != "LABEL"]


def _promotion_rows(rows: list, first: int, last: int) -> set[int]:
    """ids of the rows in basic blocks (split at labels and after branches) that convert int to float."""
    out, block = set(), []
    for r in rows[first:last + 1] + [(-1, "LABEL", "")]:
        if r[1] == "LABEL" or (block and block[-1][1].startswith("BRA")):
            if any(_opclass(op) == "convert" and op.startswith("I2F") for _, op, _ in block):
                out.update(id(b) for b in block)
            block = []
        if r[1] != "LABEL":
            block.append(r)
    return out


def main_loop_profile(rows: list, tiles_per_group: int | None = None,
                      promotion_weight: float | None = None) -> dict | None:
    """Instruction profile of one K tile of the main loop (module docstring); None without a main loop.
    ``promotion_weight``: the in-loop promotion blocks count this much (CUDA tensor-core GEMMs per group)."""
    compute = [(f, l) for f, l in _loops(rows)
               if any(_opclass(op) in ("tensor", "dp4a") for _, op, _ in _instrs(rows, f, l))]
    if not compute:
        return None
    inner = min(compute, key=lambda fl: fl[1] - fl[0])
    body = _instrs(rows, *inner)
    weight = {id(r): 1.0 for r in body}
    promo = _promotion_rows(rows, *inner) if promotion_weight is not None else set()
    weight.update({i: promotion_weight for i in promo})
    outer = [fl for fl in _loops(rows) if fl[0] < inner[0] and fl[1] > inner[1]]
    if outer and tiles_per_group:  # weight groups: the group loop's own work, shared by its K tiles
        extra = [r for r in _instrs(rows, *min(outer, key=lambda fl: fl[1] - fl[0])) if id(r) not in weight]
        body = body + extra
        weight.update({id(r): 1.0 / tiles_per_group for r in extra})
    classes: Counter = Counter()
    macs = dp4a = 0.0
    for r in body:
        w = weight[id(r)]
        cls = _opclass(r[1])
        classes[cls] += w
        macs += w * _macs_per_warp(r[1])
        if cls == "dp4a":
            dp4a += w * 4 * 32
    pend = [int(m.group(1), 16) for _, op, arg in body if op.startswith("WARPGROUP.DEPBAR")
            for m in [re.search(r"0x([0-9a-f]+)", arg)] if m]
    return dict(instructions=round(sum(classes.values()), 1),
                promotion_instructions=len(promo) or None,
                by_class={k: round(v, 1) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
                tensor_opcodes=dict(Counter(op for _, op, _ in body if _opclass(op) == "tensor")),
                macs_per_warp=macs + dp4a,
                wgmma_wait_pending_min=min(pend) if pend else None,
                wgmma_waits=len(pend))


def bound(profile: dict, arch: str) -> dict:
    """Issue and tensor clocks of one K tile (module docstring); not a speed."""
    a = ARCHS[arch]
    instrs = profile["instructions"]
    tensor_clk = profile["macs_per_warp"] / a["int8_macs_per_clk"]
    issue_clk = instrs / a["schedulers"]
    dp4a_clk = profile["by_class"].get("dp4a", 0.0) / a["dp4a_per_clk"]
    busy = max(tensor_clk, dp4a_clk)
    return dict(issue_over_tensor=round(issue_clk / busy, 3) if busy else None,
                issue_clk=round(issue_clk, 1), tensor_clk=round(tensor_clk, 1), dp4a_clk=round(dp4a_clk, 1))


# ------------------------------------------------------------------------------------------ compilers


def compile_triton(spec, arch: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qvgen_kernels.triton._configs import EXACT_FP  # as every launch compiles

    if getattr(spec.kernel, "is_gluon", lambda: False)():   # a Gluon kernel: its own front end
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource
    names = spec.kernel.arg_names
    src = ASTSource(fn=spec.kernel, signature=spec.signature,
                    constexprs={(names.index(k),): v for k, v in spec.constexprs.items()},
                    attrs=getattr(spec, "attrs", None))
    k = triton.compile(src, target=GPUTarget("cuda", ARCHS[arch]["capability"], 32),
                       options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages, **EXACT_FP))
    ttgir = k.asm["ttgir"]
    return dict(cubin=k.asm["cubin"], name=k.metadata.name, shared=k.metadata.shared,
                ttgir_dot_wait_pendings=sorted({int(p) for p in re.findall(r"pendings = (\d+)", ttgir)}),
                ttgir_async_copies=len(re.findall(r"async_(?:tma_)?copy_global_to_local", ttgir)))


def triton_records(arch: str, only: str | None) -> list[dict]:
    os.environ.pop("TRITON_INTERPRET", None)
    from qvgen_kernels.triton._specs import gemm_compile_specs

    out = []
    for spec in gemm_compile_specs():
        if (only and only not in spec.name) or ARCHS[arch]["capability"] < spec.meta.get("min_capability", 0):
            continue
        rec = dict(kernel="triton", name=spec.name, arch=arch, num_warps=spec.num_warps,
                   pipeline_stages=spec.num_stages, block=list(spec.block), **spec.meta)
        try:
            c = compile_triton(spec, arch)
        except Exception as e:  # a config that does not compile is a finding, not a crash of the tool
            out.append(dict(rec, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
            continue
        rows = disassemble(c["cubin"])[c["name"]]
        res = resource_usage(c["cubin"]).get(c["name"], {})
        gs = spec.meta.get("group_size", -1)
        prof = main_loop_profile(rows, max(1, gs // spec.block[2]) if gs > 0 else None)
        rec.update(registers=res.get("REG"), spill_bytes=res.get("STACK"), shared_bytes=c["shared"],
                   ttgir_dot_wait_pendings=c["ttgir_dot_wait_pendings"],
                   ttgir_async_copies=c["ttgir_async_copies"], k_tile=prof and _k_tile(prof, spec), loop=prof)
        if prof:
            rec["bound"] = bound(prof, arch)
        out.append(rec)
    return out


def _k_tile(prof: dict, spec) -> float:
    bm, bn, _ = spec.block
    return round(prof["macs_per_warp"] * spec.num_warps / (bm * bn), 2)


def cuda_records(arch: str, only: str | None) -> list[dict]:
    src = ROOT / "csrc" / "cuda" / "gemm.cu"
    with tempfile.TemporaryDirectory() as d:
        cubin_path = Path(d) / "gemm.cubin"
        _run(["nvcc", "-cubin", f"-arch={arch}", "-O3", "-std=c++17", "--fmad=false", "-DQVGEN_WITH_CUDA",
              "-I", str(ROOT / "csrc" / "include"), str(src), "-o", str(cubin_path)])
        cubin = cubin_path.read_bytes()
    res = resource_usage(cubin)
    out = []
    for fn, rows in disassemble(cubin).items():
        pretty = _run(["c++filt", fn]).strip()
        if "gemm" not in pretty or (only and only not in pretty):
            continue
        prof = main_loop_profile(rows)
        rec = dict(kernel="cuda", name=pretty, arch=arch, registers=res.get(fn, {}).get("REG"),
                   spill_bytes=res.get(fn, {}).get("STACK"), shared_bytes=res.get(fn, {}).get("SHARED"),
                   pipeline_stages=1, loop=prof, variant="any (bits at run time)")
        if prof:
            rec["k_tile"] = round(prof["macs_per_warp"] * 8 / (CUDA_GEMM_TILE[0] * CUDA_GEMM_TILE[1]), 2)
            rec["bound"] = bound(prof, arch)
        out.append(rec)
    return out


TC_SOURCES = {"sm_80": ("gemm_sm80_w4.cu", "gemm_sm80_w8.cu"), "sm_90a": ("gemm_sm90_w4.cu", "gemm_sm90_w8.cu")}
TC_GROUP = 128  # group size of the per-group figures (promotion blocks weighted for it)
_TC_NAME = re.compile(r"(tc_gemm_sm\d+_kernel)<(true|false), (true|false)>")


def cutlass_include() -> str | None:
    """CUTLASS headers as setup.py finds them (QVGEN_CUTLASS_INCLUDE or the nvidia-cutlass wheel)."""
    import importlib.util

    path = os.environ.get("QVGEN_CUTLASS_INCLUDE")
    if not path:
        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = os.path.join(list(spec.submodule_search_locations)[0], "source", "include")
    return path if (Path(path) / "cute" / "arch" / "mma_sm90_gmma.hpp").exists() else None


def tc_configs(cutlass: str) -> dict[tuple[str, bool, bool], dict]:
    """{(kernel, w8, grouped): tile config} printed by csrc/tests/tc_configs.cu (host code, no GPU)."""
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "tc_configs"
        _run(["nvcc", "-std=c++17", "-arch=sm_90a", "-I", str(ROOT / "csrc" / "include"), "-isystem", cutlass,
              str(ROOT / "csrc" / "tests" / "tc_configs.cu"), "-o", str(exe)])
        lines = _run([str(exe)]).splitlines()
    return {(c["kernel"], c["w8"], c["grouped"]): c for c in map(json.loads, lines)}


def tc_kernels(arch: str, only: str | None = None):
    """(record, SASS rows) of every tensor-core GEMM of csrc/cuda/tc for ``arch``; nothing without CUTLASS."""
    cutlass = cutlass_include()
    if cutlass is None:
        print("sass_roofline: no CUTLASS headers, the tensor-core GEMMs are skipped", file=sys.stderr)
        return
    configs = tc_configs(cutlass)
    for src in TC_SOURCES[arch]:
        with tempfile.TemporaryDirectory() as d:
            cubin_path = Path(d) / "tc.cubin"
            _run(["nvcc", "-cubin", f"-arch={arch}", "-O3", "-std=c++17", "--fmad=false", "-DQVGEN_WITH_CUDA",
                  "-I", str(ROOT / "csrc" / "include"), "-isystem", cutlass, str(ROOT / "csrc" / "cuda" / "tc" / src),
                  "-o", str(cubin_path)])
            cubin = cubin_path.read_bytes()
        res = resource_usage(cubin)
        for fn, rows in disassemble(cubin).items():
            m = _TC_NAME.search(_run(["c++filt", fn]))
            if not m:
                continue
            kernel, w8, grouped = m.group(1), m.group(2) == "true", m.group(3) == "true"
            cfg = configs[(kernel, w8, grouped)]
            name = (f"{'mma.sync' if 'sm80' in kernel else 'wgmma'} {'W8A8/W8A4' if w8 else 'W4A4/W3A3/W4A8'} "
                    f"{f'g{TC_GROUP}' if grouped else 'per-channel'}")
            if only and only not in name:
                continue
            # 4 promotion copies (one per k32 step of a stage); a stage runs 128 / gs of them: 32 / gs each.
            prof = main_loop_profile(rows, promotion_weight=32 / TC_GROUP if grouped else None)
            rec = dict(kernel="cuda-tc", name=name, function=kernel, arch=arch, w8=w8, grouped=grouped,
                       group_size=TC_GROUP if grouped else -1, block=cfg["block"], threads=cfg["threads"],
                       num_warps=cfg["mma_warps"], pipeline_stages=cfg["stages"], dynamic_smem_bytes=cfg["smem_bytes"],
                       registers=res.get(fn, {}).get("REG"), spill_bytes=res.get(fn, {}).get("STACK"),
                       shared_bytes=cfg["smem_bytes"], loop=prof)
            yield rec, rows


def tc_records(arch: str, only: str | None) -> list[dict]:
    out = []
    for rec, _ in tc_kernels(arch, only):
        if rec["loop"]:
            bm, bn, _ = rec["block"]
            rec["k_tile"] = round(rec["loop"]["macs_per_warp"] * rec["num_warps"] / (bm * bn), 2)
            rec["bound"] = bound(rec["loop"], arch)
        out.append(rec)
    return out


def _row(r: dict) -> str:
    if "error" in r:
        return f"{r['arch']:7} {r['name']:44} ERROR {r['error'][:90]}"
    b, lp = r.get("bound", {}), r.get("loop") or {}
    tc = sum((lp.get("tensor_opcodes") or {}).values())
    return (f"{r['arch']:7} {r['name'][:44]:44} instr/tile {lp.get('instructions', 0):7.1f} tc {tc:3d} "
            f"regs {r.get('registers')!s:>3} spill {r.get('spill_bytes')!s:>5} smem {r.get('shared_bytes')!s:>6} "
            f"st {r.get('pipeline_stages')} wait>= {lp.get('wgmma_wait_pending_min')!s:4} "
            f"issue/tensor {b.get('issue_over_tensor')!s:6}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the records here")
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--only", help="keep variants whose name contains this")
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA extension's kernels (no nvcc)")
    p.add_argument("--cuda-only", action="store_true", help="only the CUDA extension's kernels (no Triton)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import triton

    records = []
    for arch in args.arch:
        if not args.cuda_only:
            records += triton_records(arch, args.only)
        if not args.no_cuda:
            records += cuda_records(arch, args.only)
            records += tc_records(arch, args.only)
    for r in records:
        print(_row(r))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        doc = dict(tool="benchmarks.sass_roofline", triton=triton.__version__, commit=commit,
                   command=" ".join(["python -m benchmarks.sass_roofline", *(argv or sys.argv[1:])]),
                   model=__doc__.split("Issue count model:")[1].strip(),
                   records=records)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
