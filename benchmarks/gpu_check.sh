#!/usr/bin/env bash
# The <= 9-minute GPU validation on a bare GPU machine (written for an H200: torch + CUDA, Triton 3.6, 16 cores,
# no diffusers). From the repository root: bash benchmarks/gpu_check.sh
#   1. build the extension for sm_90a (MAX_JOBS=16; with the tensor-core GEMMs when CUTLASS headers are found)
#   2. every kernel test on the GPU, the Triton ones compiled (TRITON_INTERPRET unset); one autotune config per
#      kernel (QVGEN_TRITON_TUNE=0) so compiling stays within the budget; failures do not stop the run
#   3. the GEMM benchmark at Wan-1.3B 32760x1536x1536, Wan-14B 32760x5120x13824 / 32760x13824x5120 and
#      M = 16 / 256, beside cuBLAS BF16, FP8 rowwise torch._scaled_mm and torch._int_mm
# Writes benchmarks/results/<gpu>/{build,kernel_tests,gemm_bench}.log, gemm_bench.{json,png}, gpu_check.txt;
# the summary at the end lists each step's exit code and time (exit status 1 when any step failed).
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_steps.sh

# CUTLASS headers for the tensor-core GEMMs (csrc/cuda/tc): the pinned wheel when an index is reachable, else
# whatever QVGEN_CUTLASS_INCLUDE or the environment provides (without them test_extension_tc.py skips).
"$PY" -m pip install -q --no-deps --retries 0 --timeout 5 -r csrc/requirements-cuda.txt 2>/dev/null \
  || echo "no nvidia-cutlass wheel: tensor-core GEMMs built only with QVGEN_CUTLASS_INCLUDE or an installed copy"
step build 150 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0a \
  "$PY" -m pip install -q --no-build-isolation --no-deps -e .
step kernel_tests 210 env QVGEN_TRITON_TUNE=0 "$PY" -m pytest -q -p no:cacheprovider tests/kernels \
  $(diffusers_ignores tests/kernels)
step gemm_bench 180 "$PY" -m benchmarks.bench_gemm --shapes check --backends triton,ext --repeats 10 --out "$OUT"
summary gpu_check.txt
