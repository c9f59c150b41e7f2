# Finds the CUTLASS / CuTe headers of the tensor-core GEMMs (csrc/cuda/tc) and sets QVGEN_CUTLASS_INCLUDE
# (empty when absent: those sources are then not compile-checked). Order: -DQVGEN_CUTLASS_INCLUDE=..., the
# environment variable of the same name, the nvidia-cutlass wheel in the repository's .venv, the wheel in
# the Python on PATH.
set(QVGEN_CUTLASS_INCLUDE "$ENV{QVGEN_CUTLASS_INCLUDE}" CACHE PATH "CUTLASS include directory (cute/, cutlass/)")
if(NOT QVGEN_CUTLASS_INCLUDE)
  file(GLOB _qvgen_cutlass_venv
       ${CMAKE_CURRENT_SOURCE_DIR}/.venv/lib/python3*/site-packages/cutlass_library/source/include)
  if(_qvgen_cutlass_venv)
    list(GET _qvgen_cutlass_venv 0 _qvgen_cutlass)
  else()
    find_program(_qvgen_python NAMES python3 python)
    if(_qvgen_python)
      execute_process(
        COMMAND ${_qvgen_python} -c
                "import importlib.util as u, os; s = u.find_spec('cutlass_library'); print(os.path.join(list(s.submodule_search_locations)[0], 'source', 'include') if s else '')"
        OUTPUT_VARIABLE _qvgen_cutlass OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    endif()
  endif()
  if(_qvgen_cutlass AND EXISTS ${_qvgen_cutlass}/cute/arch/mma_sm90_gmma.hpp)
    set(QVGEN_CUTLASS_INCLUDE ${_qvgen_cutlass} CACHE PATH "CUTLASS include directory (cute/, cutlass/)" FORCE)
  endif()
endif()
if(QVGEN_CUTLASS_INCLUDE)
  message(STATUS "qvgen: tensor-core GEMMs compile-checked with CUTLASS headers in ${QVGEN_CUTLASS_INCLUDE}")
else()
  message(STATUS "qvgen: no CUTLASS headers (pip install --no-deps -r csrc/requirements-cuda.txt): tensor-core GEMMs not checked")
endif()
