"""``bash benchmarks/gpu_check.sh --dry-run`` on the CPU with no package index (PIP_NO_INDEX=1), against a small
synthetic bundle built here (a CUTLASS header tarball with the one header the check looks for, and minimal wheels
named like the bundled ones), so the test needs neither the network nor ``make gpu-bundle``: the plan lists every
step with its cap (480 s in all), collects the tests, plans the benchmarks and exits 0; a corrupted bundle file
fails the hash check and the run."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEELS = {"pytest": "9.2.0", "ninja": "1.13.2", "setuptools": "84.2.1", "wheel": "0.48.0"}


def _wheel(folder: Path, name: str, version: str) -> None:
    """A dependency-free wheel that pip can resolve (METADATA, WHEEL, RECORD)."""
    info = f"{name}-{version}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text)}")
    record.append(f"{info}/RECORD,,")
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")


def _bundle(root: Path) -> Path:
    bundle = root / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    for name, version in WHEELS.items():
        _wheel(bundle / "wheels", name, version)
    with tarfile.open(bundle / "cutlass-include.tar.gz", "w:gz") as tar:
        data = b"// stand-in\n"
        info = tarfile.TarInfo("cute/arch/mma_sm90_gmma.hpp")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(bundle)}"
             for p in sorted(bundle.rglob("*")) if p.is_file()]
    (bundle / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")
    return bundle


def _dry_run(bundle: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_NO_INDEX": "1", "QVGEN_GPU_BUNDLE": str(bundle), "OUT": str(out),
           "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)


def test_dry_run_plans_every_step_within_8_minutes(tmp_path) -> None:
    r = _dry_run(_bundle(tmp_path), tmp_path / "out")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    caps = {}
    for line in r.stdout.splitlines():
        if line.startswith("=== ") and "(cap " in line:
            name = line.split()[1]
            caps[name] = int(line.split("(cap ")[1].split("s)")[0])
    assert list(caps) == ["bundle", "build", "gpu_tests", "sanitizer", "gemm_bench", "breakdown", "qat",
                          "launch_sweep"]
    assert sum(caps.values()) <= 480
    assert "caps: 480s in all (limit 480s)" in r.stdout or f"caps: {sum(caps.values())}s in all" in r.stdout
    assert "files match MANIFEST.sha256" in r.stdout
    assert "tests collected" in r.stdout  # the pytest step collected, did not run
    assert "ext:deployed_linear:w4a4" in r.stdout and "fp8_rowwise" in r.stdout  # the benchmark's plan
    assert "max_blocks=2" in r.stdout and "QAT distillation step" in r.stdout
    summary = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert summary.count("rc=0") == 8
    assert "32760x5120x13824: bf16 F.linear vs w4a4 prepacked_linear (triton)" in r.stdout  # the breakdown's plan
    assert "gemm wan-14b ffn_up m16 16x5120x13824: K splits" in r.stdout  # the launch sweep's plan


def test_dry_run_fails_on_a_corrupted_bundle(tmp_path) -> None:
    bundle = _bundle(tmp_path)
    whl = next((bundle / "wheels").glob("ninja-*.whl"))
    whl.write_bytes(whl.read_bytes() + b"x")
    r = _dry_run(bundle, tmp_path / "out")
    assert r.returncode == 1
    assert "hash mismatch" in r.stdout


@pytest.mark.skipif(not (ROOT / ".gpu-bundle" / "MANIFEST.sha256").exists(), reason="no make gpu-bundle here")
def test_real_bundle_is_under_60_mib() -> None:
    size = sum(p.stat().st_size for p in (ROOT / ".gpu-bundle").rglob("*") if p.is_file())
    assert size <= 60 << 20
