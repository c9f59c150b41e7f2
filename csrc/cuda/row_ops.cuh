// Row helpers of the per-token quantize kernels (quant.cu, tc/quantize.cu): fp32 loads of units of 8
// values and the block-wide min / max (exact: no rounding involved).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "qvgen/common.h"

namespace qvgen {
namespace cuda {

constexpr int kMaxThreads = 1024;
constexpr int kWarp = 32;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// The 8 values of unit u as fp32; values past k read as 0, which cannot change the result because
// the range [min(0, min x), max(0, max x)] contains 0 anyway.
template <typename T>
__device__ __forceinline__ void load_unit_values(const T* __restrict__ xr, int64_t u, int64_t k, float* v) {
#pragma unroll
  for (int i = 0; i < kUnit; ++i) {
    const int64_t j = kUnit * u + i;
    v[i] = j < k ? to_f32(xr[j]) : 0.0f;
  }
}

__device__ __forceinline__ void update_minmax(const float* v, float& mn, float& mx) {
#pragma unroll
  for (int i = 0; i < kUnit; ++i) {
    mn = fminf(mn, v[i]);
    mx = fmaxf(mx, v[i]);
  }
}

// Block-wide min and max (exact: no rounding involved). Every thread gets the result.
__device__ __forceinline__ float2 block_minmax(float mn, float mx) {
  __shared__ float2 partial[kMaxThreads / kWarp];
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, off));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) partial[warp] = make_float2(mn, mx);
  __syncthreads();
  float2 all = partial[0];
  for (int w = 1; w < static_cast<int>(blockDim.x) / kWarp; ++w) {
    all.x = fminf(all.x, partial[w].x);
    all.y = fmaxf(all.y, partial[w].y);
  }
  return all;
}

}  // namespace cuda
}  // namespace qvgen
