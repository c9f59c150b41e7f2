#!/usr/bin/env bash
# GPU run of the kernel benchmarks: build the extension (CUDA kernels included), run the `gpu` tests, then the
# packed-GEMM and fake-quant benchmarks at the real shapes. Results land in benchmarks/results/<gpu-name-slug>/
# (gemm_bench.{json,png}, fake_quant_bench.{json,png}, gpu_tests.log); commit them.
# Usage (from the repository root): bash benchmarks/gpu_kernels.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_kernels.sh: no CUDA device')"
OUT=benchmarks/results/$("$PY" -c "import torch; from benchmarks.report_model import device_dir; print(device_dir(torch.device('cuda')))")
mkdir -p "$OUT"
"$PY" -m pip install --no-build-isolation -e .
"$PY" -c "from qvgen_kernels import _extension as e; import sys; sys.exit(0 if e.has_cuda() else 'extension built without CUDA')"
"$PY" -m pytest -q -m gpu tests/ 2>&1 | tee "$OUT/gpu_tests.log"
"$PY" -m benchmarks.bench_gemm --out "$OUT"
"$PY" -m benchmarks.bench_fake_quant --out "$OUT"
