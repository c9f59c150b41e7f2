#!/usr/bin/env bash
# make gpu-bundle: gathers into .gpu-bundle/ (git-ignored) what benchmarks/gpu_check.sh needs beyond a GPU image
# with torch, Triton and numpy, so that the check installs with --no-index and reaches no network:
#   cutlass-include.tar.gz   the CUTLASS / CuTe headers (include/cute, include/cutlass) of the pinned
#                            nvidia-cutlass wheel (csrc/requirements-cuda.txt) for the tensor-core GEMMs
#   wheels/                  pytest (and what it needs), ninja (parallel extension build), setuptools / wheel
#                            (the editable install without build isolation); diffusers at its pin, for the second
#                            commands (--quality, --real-size), installed there without its dependencies (the
#                            image has them: huggingface-hub, safetensors, Pillow, regex, requests, numpy)
#   MANIFEST.sha256          sha256 of every file above (gpu_check.sh verifies it first)
# Not bundled, on purpose: hypothesis (test_pack.py falls back to a fixed sweep), matplotlib (results keep
# their .json/.jsonl/.md; no .png).
# Run where the package index is reachable: bash benchmarks/gpu_bundle.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
BUNDLE=${QVGEN_GPU_BUNDLE:-.gpu-bundle}
LIMIT_MIB=60
pin() { grep -E "^$1==" requirements.txt csrc/requirements-cuda.txt | head -1 | cut -d: -f2; }
rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/wheels"

# CUTLASS headers: from the installed pinned wheel when present, else a download of that wheel.
cutlass_include() {
  "$PY" -c "import importlib.util as u, os; s = u.find_spec('cutlass_library'); print(os.path.join(list(s.submodule_search_locations)[0], 'source', 'include') if s else '')"
}
INC=$(cutlass_include)
if [ -z "$INC" ] || [ ! -f "$INC/cute/arch/mma_sm90_gmma.hpp" ]; then
  TMP=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$TMP" -r csrc/requirements-cuda.txt
  (cd "$TMP" && "$PY" -m zipfile -e ./*.whl x >/dev/null)
  INC="$TMP/x/cutlass_library/source/include"
fi
tar -czf "$BUNDLE/cutlass-include.tar.gz" -C "$INC" cute cutlass

# Wheels at the pins of requirements.txt; pytest's own dependencies at the versions installed beside it (the
# latest where not installed: exceptiongroup / tomli serve a Python 3.10 image). All pure Python but ninja.
installed() { "$PY" -c "import importlib.metadata as m
try: print('$1==' + m.version('$1'))
except m.PackageNotFoundError: print('$1')"; }
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$BUNDLE/wheels" \
  "$(pin pytest)" "$(pin ninja)" "$(installed pluggy)" "$(installed iniconfig)" "$(installed packaging)" \
  "$(installed pygments)" "$(installed exceptiongroup)" "$(installed tomli)" "$(installed typing_extensions)" \
  "$(installed setuptools)" "$(installed wheel)" "$(pin diffusers)"

(cd "$BUNDLE" && find . -type f ! -name MANIFEST.sha256 | sort | xargs sha256sum > MANIFEST.sha256)
SIZE=$(du -sm "$BUNDLE" | cut -f1)
echo "gpu-bundle: $BUNDLE, ${SIZE} MiB, $(wc -l < "$BUNDLE/MANIFEST.sha256") files"
[ "$SIZE" -le "$LIMIT_MIB" ] || { echo "gpu-bundle: ${SIZE} MiB is over the ${LIMIT_MIB} MiB limit" >&2; exit 1; }
