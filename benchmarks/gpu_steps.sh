# Shared by gpu_check.sh and gpu_suite.sh (sourced): the interpreter, the results folder and `step`, which runs
# one command with a time limit, keeps going when it fails and records the outcome for `summary`.
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
unset TRITON_INTERPRET   # the Triton kernels compile for the GPU
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 2
OUT=benchmarks/results/$("$PY" -c "import torch; from benchmarks.report_model import device_dir; print(device_dir(torch.device('cuda')))")
mkdir -p "$OUT"
STEPS=()

# step NAME SECONDS CMD...: output to $OUT/<NAME>.log (and the terminal).
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  STEPS+=("$(printf '%-14s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
  return 0
}

# Test files that import diffusers, to leave out (reported as skipped) when it is not installed.
diffusers_ignores() {
  "$PY" -c "import diffusers" 2>/dev/null && return 0
  grep -rl --include='test_*.py' -E '^\s*(import|from) diffusers' "$@" 2>/dev/null | sed 's/^/--ignore=/'
}

summary() {
  echo "=== summary ($OUT)"
  printf '%s\n' "${STEPS[@]}" | tee "$OUT/$1"
  for f in "$OUT"/*tests*.log; do [ -f "$f" ] && echo "$(basename "$f"): $(grep -E '^=+ .*(passed|failed|error)' "$f" | tail -1)"; done
  ! printf '%s\n' "${STEPS[@]}" | grep -qv 'rc=0 '
}
