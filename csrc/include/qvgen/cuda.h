// CUDA launchers of the qvgen kernels (torch-free). Each enqueues on `stream` and returns the
// launch status; the caller checks it. Pointers are device pointers; arguments are validated by
// the caller (csrc/bindings.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "qvgen/kernels.h"

namespace qvgen {
namespace cuda {

// codes [rows, k] -> packed [rows, packed_width(k, bits)], padding code 0; codes are masked to b bits
// (the binding rejects codes above P before launching).
cudaError_t pack(const uint8_t* codes, int64_t rows, int64_t k, int bits, uint8_t* packed,
                 cudaStream_t stream);

// packed [rows, packed_width(k, bits)] -> codes [rows, k].
cudaError_t unpack(const uint8_t* packed, int64_t rows, int64_t k, int bits, uint8_t* codes,
                   cudaStream_t stream);

// One block per row: min/max, scale, zero, codes, packing and row sum from one read of x.
cudaError_t quantize_per_token(const QuantArgs& args, cudaStream_t stream);

// Tiled packed GEMM: unpack to shared memory, int32 dot products (dp4a), fp32 epilogue.
cudaError_t lowbit_gemm(const GemmArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace qvgen
