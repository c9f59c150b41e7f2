#!/usr/bin/env bash
# The GPU run of the evidence, in one command: build the extension with its CUDA kernels, run the `gpu` tests,
# the packed-GEMM and fake-quant kernel benchmarks, the model benchmark at the real shapes (bf16) and the
# quality study on the GPU. Results land in benchmarks/results/<gpu-name>/ and benchmarks/results/quality*;
# commit them. Usage (from the repository root): bash benchmarks/gpu_suite.sh
# PY picks the interpreter (default: the project's .venv when present, else python3; torch with CUDA and
# diffusers must be importable there).
set -euo pipefail
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh: no CUDA device')"
OUT=benchmarks/results/$("$PY" -c "import torch; from benchmarks.report_model import device_dir; print(device_dir(torch.device('cuda')))")
mkdir -p "$OUT"
"$PY" -m pip install --no-build-isolation --no-deps -e .
"$PY" -c "from qvgen_kernels import _extension as e; import sys; sys.exit(0 if e.has_cuda() else 'extension built without CUDA')"
"$PY" -m pytest -q -m gpu tests/ 2>&1 | tee "$OUT/gpu_tests.log"
"$PY" -m benchmarks.bench_gemm --out "$OUT"
"$PY" -m benchmarks.bench_fake_quant --out "$OUT"
"$PY" -m benchmarks.bench_model --shapes full --threads "$(nproc)"
"$PY" -m benchmarks.quality.run_study --study methods --steps 400 --threads "$(nproc)"
"$PY" -m benchmarks.quality.run_study --study ablations --steps 400 --threads "$(nproc)"
