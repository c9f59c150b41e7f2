# Shared by gpu_check.sh and gpu_suite.sh (sourced): the interpreter, the results folder and `step`, which runs
# one command with a time limit, keeps going when it fails and records the outcome for `summary`.
# DRY_RUN=1 (gpu_check.sh --dry-run): no CUDA device needed; `step` runs the step's plan command instead (a test
# collection, a benchmark's --plan) and checks that the caps add up to at most CAP_TOTAL seconds.
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DRY_RUN=${DRY_RUN:-0}
unset TRITON_INTERPRET   # the Triton kernels compile for the GPU
if [ "$DRY_RUN" = 1 ]; then
  OUT=${OUT:-$(mktemp -d)}
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 2
  OUT=benchmarks/results/$("$PY" -c "import torch; from benchmarks.report_model import device_dir; print(device_dir(torch.device('cuda')))")
fi
mkdir -p "$OUT"
STEPS=()
CAP_SUM=0

# step NAME SECONDS PLAN CMD...: CMD with a SECONDS limit, output to $OUT/<NAME>.log (and the terminal).
# Dry run: prints the step and its cap, then evaluates PLAN (a shell string; "" for none) instead of CMD.
step() {
  local name=$1 limit=$2 plan=$3; shift 3
  local t0=$SECONDS rc
  CAP_SUM=$((CAP_SUM + limit))
  echo "=== $name (cap ${limit}s): $*"
  if [ "$DRY_RUN" = 1 ]; then
    if [ -n "$plan" ]; then
      echo "--- plan: $plan"
      timeout --kill-after=10 120 bash -c "$plan" 2>&1 | tee "$OUT/$name.plan.log"
      rc=${PIPESTATUS[0]}
    else
      rc=0
    fi
  else
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
  fi
  STEPS+=("$(printf '%-16s rc=%-3s %4ss  cap %4ss' "$name" "$rc" "$((SECONDS - t0))" "$limit")")
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
  echo "caps: ${CAP_SUM}s in all${CAP_TOTAL:+ (limit ${CAP_TOTAL}s)}" | tee -a "$OUT/$1"
  for f in "$OUT"/*tests*.log; do [ -f "$f" ] && echo "$(basename "$f"): $(grep -E '^=+ .*(passed|failed|error)' "$f" | tail -1)"; done
  if [ -n "${CAP_TOTAL:-}" ] && [ "$CAP_SUM" -gt "$CAP_TOTAL" ]; then
    echo "the step caps add up to ${CAP_SUM}s, over ${CAP_TOTAL}s"
    return 1
  fi
  ! printf '%s\n' "${STEPS[@]}" | grep -qv 'rc=0 '
}
