// TMA descriptors of the sm_90a GEMM's operands (host side). The driver's cuTensorMapEncodeTiled is reached
// through the runtime's driver entry point, so the extension does not link libcuda.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace qvgen {
namespace cuda {
namespace tc {

// A row-major uint8 matrix [rows, cols] (cols a multiple of 16) loaded in boxes of [box_rows, 128] bytes with
// the 128-byte swizzle; rows past the end read as zeros.
cudaError_t encode_tma_2d(const void* base, int64_t rows, int64_t cols, int box_rows, CUtensorMap* map);

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
