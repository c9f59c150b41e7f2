"""Build of the compiled extension ``qvgen_kernels._C`` (ops in the ``qvgen_ext`` namespace).

Install (torch must already be installed; build isolation would fetch another torch):
    pip install --no-build-isolation -e .

CPU kernels are always built. CUDA kernels are added when torch was built with CUDA and a CUDA
toolkit is found (``torch.utils.cpp_extension.CUDA_HOME``); a CPU-only torch wheel builds CPU only.
Environment:
    TORCH_CUDA_ARCH_LIST  CUDA architectures, e.g. "8.0;9.0a" (the default when it is unset and no GPU
                          is visible; with a visible GPU torch picks that GPU's architecture).
    MAX_JOBS              parallel compile jobs (read by torch's ninja build).
    QVGEN_NO_EXTENSION=1  skip the extension (pure Python install; the Triton / reference kernels remain).
    QVGEN_CUTLASS_INCLUDE CUTLASS include directory for the tensor-core GEMMs (csrc/cuda/tc); by default the
                          headers of the pinned ``nvidia-cutlass`` wheel (csrc/requirements-cuda.txt, installed
                          with --no-deps). Without them a CUDA build leaves out the qvgen_ext::tc_* ops.
"""

from __future__ import annotations

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    """Sources under csrc/, relative to the repository root (setuptools wants relative paths)."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", pattern)))


def _cutlass_include() -> str | None:
    """CUTLASS / CuTe headers for the tensor-core GEMMs, or None (those kernels are then left out)."""
    import importlib.util

    path = os.environ.get("QVGEN_CUTLASS_INCLUDE")
    if not path:
        spec = importlib.util.find_spec("cutlass_library")  # the nvidia-cutlass wheel's headers, not imported
        if spec is None or not spec.submodule_search_locations:
            return None
        path = os.path.join(list(spec.submodule_search_locations)[0], "source", "include")
    return path if os.path.exists(os.path.join(path, "cute", "arch", "mma_sm90_gmma.hpp")) else None


def _extensions() -> tuple[list, dict]:
    """The extension list and the build_ext command, or nothing when the extension is skipped."""
    if os.environ.get("QVGEN_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = bool(torch.version.cuda) and CUDA_HOME is not None
    # The kernels round every product and sum separately, like the reference: no FMA contraction.
    cxx = ["-O3", "-std=c++17", "-ffp-contract=off", "-DPy_LIMITED_API=0x030A0000"]
    sources = ["csrc/bindings.cpp", "csrc/bindings_int8.cpp", *_sources("cpu/*.cpp")]
    kwargs: dict = {"include_dirs": [os.path.join(ROOT, "csrc", "include")], "py_limited_api": True}
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # No GPU to take the architecture from: Ampere and Hopper (9.0a enables wgmma).
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0a"
        sources += ["csrc/bindings_cuda.cpp", *_sources("cuda/*.cu")]
        cxx.append("-DQVGEN_WITH_CUDA")
        nvcc = ["-O3", "-std=c++17", "-DQVGEN_WITH_CUDA", "--fmad=false"]
        cutlass = _cutlass_include()
        if cutlass:
            sources += ["csrc/bindings_cuda_tc.cpp", *_sources("cuda/tc/*.cu")]
            nvcc += ["-isystem", cutlass]
        else:
            print("qvgen: no CUTLASS headers (pip install --no-deps -r csrc/requirements-cuda.txt); "
                  "building without the tensor-core GEMMs (qvgen_ext::tc_*)")
        ext = CUDAExtension("qvgen_kernels._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension("qvgen_kernels._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["qvgen", "qvgen.*", "qvgen_kernels", "qvgen_kernels.*"]),
    package_data={"qvgen.apps.demo": ["assets/teacher/*"]},  # the shipped demo teacher (about 1 MB)
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # One wheel for every CPython >= 3.10 (the binding uses the limited C API only).
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
