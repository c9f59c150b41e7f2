// CUDA half of the bindings (csrc/bindings_cuda.cpp): runs the torch-free launchers of
// qvgen/cuda.h on the current stream of the tensors' device. Inputs are already validated and
// dense. Included only when the extension is built with CUDA (QVGEN_WITH_CUDA).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include "check.h"
#include "qvgen/kernels.h"

namespace qvgen {

inline void check_launch(const char* op, cudaError_t status) {
  QVGEN_CHECK(status == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

void cuda_pack(const at::Tensor& codes, int64_t bits, at::Tensor& packed);
void cuda_unpack(const at::Tensor& packed, int64_t bits, int64_t k, at::Tensor& codes);
void cuda_quantize_per_token(const at::Tensor& x, const QuantArgs& args);
void cuda_lowbit_gemm(const at::Tensor& a_packed, const GemmArgs& args);

}  // namespace qvgen
