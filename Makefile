# Quick start: `make demo` (main job) and `make test` (whole CPU test suite). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
export MAX_JOBS ?= 2

.PHONY: setup demo test pytest cmake-check gpu-bundle triton-compat clean

# The marker file is rebuilt when the pins or the compiled sources change.
$(VENV)/.installed: requirements.txt pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r csrc/requirements-cuda.txt
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/qvgen demo $(DEMO_ARGS)

pytest: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Standalone CMake build of csrc: torch-free C++ tests (CTest) and nvcc compile checks of every CUDA
# source for sm_80 and sm_90a when a CUDA compiler is present (the tensor-core GEMMs need the CUTLASS headers
# that setup installs).
cmake-check: setup
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake -j $(MAX_JOBS)
	ctest --test-dir build/cmake --output-on-failure

test: cmake-check pytest

# What the offline GPU check needs beyond the GPU image (CUTLASS headers, pytest, ninja wheels), into .gpu-bundle/
# (needs the package index); then `bash benchmarks/gpu_check.sh --dry-run` verifies it on any machine.
gpu-bundle: setup
	bash benchmarks/gpu_bundle.sh $(BIN)/python

# Every Triton kernel config compiled (sm_80, sm_89, sm_90a; 0 spills) with another Triton release than the pinned
# one: by default the GPU image's (needs the package index once; installed beside the venv, not into it).
TRITON_COMPAT ?= 3.6.0
triton-compat: setup
	test -d .triton-$(TRITON_COMPAT) || $(BIN)/pip install -q --no-deps --target .triton-$(TRITON_COMPAT) triton==$(TRITON_COMPAT)
	PYTHONPATH=$(CURDIR)/.triton-$(TRITON_COMPAT) $(BIN)/python -c "import triton; assert triton.__version__ == '$(TRITON_COMPAT)', triton.__version__"
	PYTHONPATH=$(CURDIR)/.triton-$(TRITON_COMPAT) QVGEN_COMPILE_ALL=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
	  tests/kernels/test_triton_compile.py tests/kernels/test_triton_configs.py tests/kernels/test_gluon_gemm.py

clean:
	rm -rf build $(VENV) *.egg-info qvgen_kernels/_C*.so .triton-*
