#!/usr/bin/env bash
# GPU run of the evidence: build the CUDA extension, run the `gpu` tests, the model benchmark at the real
# shapes (bf16) and the quality study on the GPU. Results land in benchmarks/results/<gpu-name>/ and
# benchmarks/results/quality*; commit them. Usage: bash benchmarks/gpu_suite.sh  (from the repository root)
set -euo pipefail
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh: no CUDA device')"
"$PY" setup.py build_ext --inplace
"$PY" -m pytest -q -m gpu tests/
"$PY" -m benchmarks.bench_model --shapes full --threads "$(nproc)"
"$PY" -m benchmarks.quality.run_study --study methods --steps 400 --threads "$(nproc)"
"$PY" -m benchmarks.quality.run_study --study ablations --steps 400 --threads "$(nproc)"
