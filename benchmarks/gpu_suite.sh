#!/usr/bin/env bash
# The long GPU runs (about 1-1.5 h), after gpu_check.sh: build, the whole test suite on the GPU (files importing
# diffusers left out when it is absent), the kernel benchmarks at every shape, the model benchmark and the quality
# study (these two need diffusers' model classes only for the real-model shapes). Every step runs even when an
# earlier one failed; the summary at the end lists them. Results: benchmarks/results/<gpu>/ and
# benchmarks/results/quality*; commit them. Usage (from the repository root): bash benchmarks/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_steps.sh

step build 900 "" env MAX_JOBS="$(nproc)" "$PY" -m pip install -q --no-build-isolation --no-deps -e .
step all_tests 3600 "" "$PY" -m pytest -q -p no:cacheprovider tests/ $(diffusers_ignores tests)
step gemm_bench 1800 "" "$PY" -m benchmarks.bench_gemm --out "$OUT"
step fake_quant_bench 900 "" "$PY" -m benchmarks.bench_fake_quant --out "$OUT"
step roofline 900 "" "$PY" -m benchmarks.sass_roofline --json "$OUT/roofline.json"
step model_bench 1800 "" "$PY" -m benchmarks.bench_model --shapes full --threads "$(nproc)"
step quality_methods 3600 "" "$PY" -m benchmarks.quality.run_study --study methods --steps 400 --threads "$(nproc)"
step quality_ablations 3600 "" "$PY" -m benchmarks.quality.run_study --study ablations --steps 400 --threads "$(nproc)"
# The mechanism study at a GPU size: an 8-layer, 512-wide teacher (trained and cached on first use), Phi rank 8
# (2% of the width), W3A3 and W4A4, 600 steps, 3 paired seeds; same tables as the CPU study in quality.md.
step quality_mechanism_gpu 3600 "" "$PY" -m benchmarks.quality.run_study --study mechanism --name mechanism-gpu \
    --teacher-layers 8 --teacher-width 512 --teacher-steps 4000 --bits w3a3 w4a4 --steps 600 --seeds 3 \
    --eval-size 64 --threads "$(nproc)"
summary gpu_suite.txt
