// CUDA per-token activation quantization, fused: one block per row computes min/max, scale, zero,
// codes, the packed row (padding code z) and the row sum from one read of x. Each thread keeps
// up to kCacheUnits units of 8 values in registers; a row longer than blockDim * kCacheUnits * 8
// re-reads its remaining units in the second pass (still correct, just one extra read).
// Formula and operation order: qvgen/quant.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "qvgen/cuda.h"
#include "qvgen/pack.h"
#include "qvgen/quant.h"
#include "row_ops.cuh"

namespace qvgen {
namespace cuda {
namespace {

constexpr int kCacheUnits = 2;

// Codes of one unit, packed into the row; returns the unit's share of sum_k (q - z).
__device__ int32_t emit_unit(const float* v, int64_t u, int64_t k, ActQParams qp, int bits, uint8_t* row) {
  uint8_t c[kUnit];
  int32_t sum = 0;
  const uint8_t z = static_cast<uint8_t>(qp.zero);
#pragma unroll
  for (int i = 0; i < kUnit; ++i) {
    c[i] = kUnit * u + i < k ? act_code(v[i], qp, bits) : z;
    sum += static_cast<int32_t>(c[i]) - z;
  }
  pack_unit(c, bits, u, k, row);
  return sum;
}

// Block-wide integer sum, valid in thread 0.
__device__ int32_t block_sum(int32_t v) {
  __shared__ int32_t partial[kMaxThreads / kWarp];
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  int32_t all = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) all += partial[w];
  }
  return all;
}

template <typename T>
__global__ void quantize_per_token_kernel(QuantArgs args) {
  const int64_t r = blockIdx.x, k = args.k, units = num_units(k);
  const T* __restrict__ xr = static_cast<const T*>(args.x) + r * k;
  uint8_t* row = args.packed + r * packed_width(k, args.bits);
  const int64_t cached = static_cast<int64_t>(blockDim.x) * kCacheUnits;
  float cache[kCacheUnits][kUnit];
  float v[kUnit];
  float mn = INFINITY, mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kCacheUnits; ++i) {
    const int64_t u = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    load_unit_values(xr, u < units ? u : units, k, cache[i]);  // u >= units reads nothing (all padding)
    update_minmax(cache[i], mn, mx);
  }
  for (int64_t u = cached + threadIdx.x; u < units; u += blockDim.x) {
    load_unit_values(xr, u, k, v);
    update_minmax(v, mn, mx);
  }
  const float2 range = block_minmax(mn, mx);
  const ActQParams qp = act_qparams(range.x, range.y, args.clip_lo[r], args.clip_hi[r], args.bits);
  int32_t sum = 0;
#pragma unroll
  for (int i = 0; i < kCacheUnits; ++i) {
    const int64_t u = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (u < units) sum += emit_unit(cache[i], u, k, qp, args.bits, row);
  }
  for (int64_t u = cached + threadIdx.x; u < units; u += blockDim.x) {
    load_unit_values(xr, u, k, v);
    sum += emit_unit(v, u, k, qp, args.bits, row);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    args.scale[r] = qp.scale;
    args.zero[r] = static_cast<int32_t>(qp.zero);
    args.rowsum[r] = sum;
  }
}

template <typename T>
cudaError_t launch(const QuantArgs& args, cudaStream_t stream) {
  const int64_t per_thread = (num_units(args.k) + kCacheUnits - 1) / kCacheUnits;
  const int64_t threads = ((per_thread + kWarp - 1) / kWarp) * kWarp;
  const int block = static_cast<int>(threads < kMaxThreads ? threads : kMaxThreads);
  quantize_per_token_kernel<T><<<static_cast<unsigned int>(args.m), block, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

cudaError_t quantize_per_token(const QuantArgs& args, cudaStream_t stream) {
  if (args.m == 0) return cudaSuccess;
  switch (args.x_dtype) {
    case DType::kFloat16:
      return launch<__half>(args, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(args, stream);
    default:
      return launch<float>(args, stream);
  }
}

}  // namespace cuda
}  // namespace qvgen
