#!/usr/bin/env bash
# The <= 8-minute GPU check on a bare, offline GPU machine (written for an H200: torch + CUDA, Triton, nvcc,
# 16 cores; no package index, no diffusers / hypothesis / matplotlib / ninja / CUTLASS). From the repository root,
# with .gpu-bundle/ (make gpu-bundle) carried along:
#   bash benchmarks/gpu_check.sh             the real run
#   bash benchmarks/gpu_check.sh --dry-run   any machine, no GPU, no index: verifies the bundle, collects every
#                                            test and plans every benchmark the real run would run, prints the
#                                            steps with their caps (at most 480 s in all) and exits 0
#   bash benchmarks/gpu_check.sh --quality   a second <= 8-minute command: the GPU-sized slice of the width sweep
#                                            (benchmarks/quality/width_sweep.py --preset gpu; its teachers are
#                                            diffusers Wan models: diffusers comes from the bundle)
#   bash benchmarks/gpu_check.sh --profile   a <= 4-minute command: Nsight Compute on the deployed GEMM kernels
#                                            (benchmarks/gpu_profile.py: speed of light, memory, warp stalls)
#   bash benchmarks/gpu_check.sh --real-size another <= 8-minute command: benchmarks/bench_real_size.py at
#                                            Wan2.1-14B on the GPU (W4A4: convert, save, load in a fresh process,
#                                            forward at 1024 video tokens beside bf16; resident bytes, peak GPU
#                                            memory); diffusers from the bundle, the Triton kernels (no build)
# Steps, in order of value (a run cut short keeps the earlier ones; every benchmark writes JSON lines as it goes):
#   bundle       verify .gpu-bundle/MANIFEST.sha256, install its wheels (--no-index), unpack the CUTLASS headers
#   build        the extension for sm_90a only, MAX_JOBS=16, ninja from the bundle, tensor-core GEMMs included
#   gpu_tests    the gpu-marked kernel tests (bit-exact tensor-core GEMMs, multi-tile / multi-lap, grouped M = 200
#                and 500) with one autotune config per Triton kernel (QVGEN_TRITON_TUNE=0)
#   sanitizer    compute-sanitizer memcheck + synccheck of tc_linear on three small shapes (skipped, with a line
#                saying so, where the tool is absent)
#   gemm_bench   Wan-1.3B / Wan-14B shapes and M = 16 / 256: deployed Triton, CUDA tc_linear, cuBLAS BF16, FP8
#                rowwise, torch._int_mm (dp4a only at M <= 256); every row checked against the reference first
#   breakdown    where one deployed W4A4 linear's time goes (host per call, CUDA events, CUDA-graph replay, each
#                kernel's device time) at Wan shapes from 16 to 32760 tokens, the Triton GEMM autotuned
#                (QVGEN_TRITON_TUNE=1: the launch that ran is in each row)
#   qat          fused fake quant fwd + bwd (Triton vs eager) at Wan-1.3B 32760x1536x8960, one QAT distillation
#                step of a full-width Wan2.1-1.3B block vs its bf16 training step (time, peak memory)
#   launch_sweep the launch rules against their alternatives (quantize tiles, small-M GEMM K splits), each
#                candidate checked equal to the rule's output, device time from torch.profiler
#                (what a time cut drops first; the remaining, not gpu-marked kernel tests take about 120 s with
#                8 workers: python -m pytest -q -n 8 tests/kernels -m "not gpu", a command of its own)
# Writes benchmarks/results/<gpu>/<step>.log, gemm_bench.{jsonl,json,md}, deployed_breakdown.jsonl,
# qat_check.{jsonl,json}, launch_sweep.jsonl, gpu_check.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
export DRY_RUN
BUNDLE=${QVGEN_GPU_BUNDLE:-.gpu-bundle}

# diffusers for the second commands: importable already, or its wheel from the verified bundle, installed without
# its dependencies (the GPU image has them).
bundle_diffusers() {
  "$PY" -c "import diffusers" 2>/dev/null && return 0
  local whl
  whl=$(ls "$BUNDLE"/wheels/diffusers-*.whl 2>/dev/null | head -1)
  [ -n "$whl" ] || { echo "no diffusers wheel in $BUNDLE/wheels (make gpu-bundle)"; return 1; }
  (cd "$BUNDLE" && sha256sum --quiet -c MANIFEST.sha256) || { echo "$BUNDLE: hash mismatch"; return 1; }
  "$PY" -m pip install -q --no-index --no-deps "$whl" && "$PY" -c "import diffusers; print('diffusers', diffusers.__version__)"
}

if [ "${1:-}" = "--profile" ]; then
  . benchmarks/gpu_steps.sh
  export QVGEN_TRITON_TUNE=0
  step gemm_profile 240 "$(printf '%q ' "$PY" -m benchmarks.gpu_profile --plan)" \
    "$PY" -m benchmarks.gpu_profile --out "$OUT"
  summary gpu_profile.txt
  exit
fi

if [ "${1:-}" = "--quality" ] || [ "${1:-}" = "--real-size" ]; then
  . benchmarks/gpu_steps.sh
  export QVGEN_TRITON_TUNE=0
  if [ "$1" = "--quality" ]; then
    name=quality_slice
    cmd=("$PY" -m benchmarks.quality.width_sweep --preset gpu --device cuda --threads 4 --max-minutes 6
         --out "$OUT/quality")
  else
    name=real_size
    cmd=("$PY" -m benchmarks.bench_real_size --device cuda --model wan2.1-14b --bits w4a4 --rounds 2 --out "$OUT")
  fi
  if bundle_diffusers; then
    step "$name" 420 "" "${cmd[@]}"
  else
    echo "$name: diffusers is neither installed nor in the bundle (its models are diffusers Wan models); skipped"
    STEPS+=("$(printf '%-16s skipped: no diffusers' "$name")")
  fi
  summary "gpu_${name}.txt"
  exit
fi
CAP_TOTAL=480
. benchmarks/gpu_steps.sh
export PIP_NO_INDEX=1 QVGEN_TRITON_TUNE=0

# The bundle: hashes first (a partial copy fails here, not halfway through the build).
bundle_check() {
  [ -f "$BUNDLE/MANIFEST.sha256" ] || { echo "no $BUNDLE/MANIFEST.sha256: run 'make gpu-bundle' where the index is reachable"; return 1; }
  (cd "$BUNDLE" && sha256sum --quiet -c MANIFEST.sha256) || { echo "$BUNDLE: hash mismatch"; return 1; }
  echo "$BUNDLE: $(wc -l < "$BUNDLE/MANIFEST.sha256") files match MANIFEST.sha256 ($(du -sh "$BUNDLE" | cut -f1))"
  local inc="$OUT/cutlass-include" pip_args=(--no-index --find-links "$BUNDLE/wheels" pytest ninja setuptools wheel)
  mkdir -p "$inc" && tar -xzf "$BUNDLE/cutlass-include.tar.gz" -C "$inc" || return 1
  [ -f "$inc/cute/arch/mma_sm90_gmma.hpp" ] || { echo "cutlass-include.tar.gz lacks cute/arch/mma_sm90_gmma.hpp"; return 1; }
  if [ "$DRY_RUN" = 1 ]; then  # resolve from the bundle alone, installing nothing
    "$PY" -m pip install -q --dry-run --ignore-installed "${pip_args[@]}" || return 1
  else
    "$PY" -m pip install -q "${pip_args[@]}" || return 1
  fi
  echo "wheels resolve from $BUNDLE/wheels alone; CUTLASS headers in $inc"
}
CAP_SUM=20
echo "=== bundle (cap 20s): verify $BUNDLE, install its wheels with --no-index, unpack the CUTLASS headers"
t0=$SECONDS
export -f bundle_check
export BUNDLE OUT PY
timeout --kill-after=5 20 bash -c bundle_check 2>&1 | tee "$OUT/bundle.log"
rc=${PIPESTATUS[0]}
STEPS+=("$(printf '%-16s rc=%-3s %4ss  cap %4ss' bundle "$rc" "$((SECONDS - t0))" 20)")
[ "$rc" = 0 ] || { summary gpu_check.txt; exit 1; }
CUTLASS_INC="$(cd "$OUT/cutlass-include" && pwd)"
NINJA_DIR="$("$PY" -c "import sysconfig; print(sysconfig.get_path('scripts'))")"

# Tests in worker processes where pytest-xdist is installed (the GPU image has it): faster, and a test that crashes
# its process is reported as failed instead of ending the step.
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 6)
GPU_TESTS=(tests/kernels -m gpu)
GEMM_ARGS=(--shapes check --backends triton,ext --modes gemm,deployed_gemm,deployed_gemm_gluon,deployed_linear
           --bits w4a4,w3a3,w4a8 --repeats 10 --out "$OUT")

step build 80 "echo \"setup.py takes the CUTLASS headers from QVGEN_CUTLASS_INCLUDE=$CUTLASS_INC\"" \
  env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0a QVGEN_CUTLASS_INCLUDE="$CUTLASS_INC" PATH="$NINJA_DIR:$PATH" \
  "$PY" -m pip install -q --no-index --no-build-isolation --no-deps -e .
q() { printf '%q ' "$@"; }  # a command line as one shell string (the dry run's plan)
step gpu_tests 110 "$(q "$PY" -m pytest -q -p no:cacheprovider --collect-only "${GPU_TESTS[@]}") | tail -3" \
  "$PY" -m pytest -q -p no:cacheprovider -rfEs "${XDIST[@]}" "${GPU_TESTS[@]}"
step sanitizer 20 "$(q "$PY" -m benchmarks.gpu_sanitize --plan)" \
  "$PY" -m benchmarks.gpu_sanitize --run-tools --budget 18
step gemm_bench 60 "$(q "$PY" -m benchmarks.bench_gemm "${GEMM_ARGS[@]}" --plan)" \
  "$PY" -m benchmarks.bench_gemm "${GEMM_ARGS[@]}"
step breakdown 60 "$(q "$PY" -m benchmarks.bench_deployed_breakdown --plan)" \
  env QVGEN_TRITON_TUNE=1 "$PY" -m benchmarks.bench_deployed_breakdown --out "$OUT"
step qat 35 "$(q "$PY" -m benchmarks.bench_qat_check --plan)" "$PY" -m benchmarks.bench_qat_check --out "$OUT"
step launch_sweep 90 "$(q "$PY" -m benchmarks.bench_launch_sweep --plan)" \
  "$PY" -m benchmarks.bench_launch_sweep --out "$OUT"
summary gpu_check.txt
