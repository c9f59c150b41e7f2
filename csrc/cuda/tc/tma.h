// TMA descriptors of the sm_90a GEMM's operands (host side). The driver's cuTensorMapEncodeTiled is reached
// through the runtime's driver entry point, so the extension does not link libcuda.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "qvgen/tc.h"

namespace qvgen {
namespace cuda {
namespace tc {

// A row-major uint8 matrix [rows, cols] (cols a multiple of 16, base 16-byte aligned) loaded in boxes of
// [box_rows, 128] bytes with the 128-byte swizzle; rows past the end read as zeros.
cudaError_t encode_tma_2d(const void* base, int64_t rows, int64_t cols, int box_rows, CUtensorMap* map);

// encode_tma_2d through a process-wide cache. A descriptor is a pure function of (base, rows, cols, box_rows),
// so a hit is the same descriptor whatever happened to the memory in between: a prepacked weight is encoded
// once (tc_prepare_weight), a per-call activation buffer once per address and shape the allocator hands out.
cudaError_t cached_tma_2d(const void* base, int64_t rows, int64_t cols, int box_rows, CUtensorMap* map);

// The weight operand of the sm_90a kernel (qvgen/tc.h layout): [NP / 2, KP] nibble bytes loaded 64 rows at a
// time, or [NP, KP] int8 loaded 128 rows at a time; cached.
inline cudaError_t sm90_weight_map(const void* w, int64_t n, int64_t kp, bool w8, CUtensorMap* map) {
  const int64_t np = tc_round_up(n, kTcRowBlock);
  return cached_tma_2d(w, w8 ? np : np / 2, kp, w8 ? kTcRowBlock : kTcRowBlock / 2, map);
}

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
