// Per-token quantize to the tensor-core GEMM's int8 operand (qvgen/tc.h): one block per row reads x twice
// (min / max, then codes) and writes a8 = q - z (3/4 bits) or q - 128 (8 bits) for the KP columns (0 past K),
// the scale, the zero point and the sums of a8 per weight group (shared-memory atomics, one per unit of 8
// columns: a unit never straddles a group because groups are multiples of 32 columns).
// Formula and operation order: qvgen/quant.h (bit-exact with the reference).
#include "../row_ops.cuh"
#include "qvgen/quant.h"
#include "qvgen/tc.h"

namespace qvgen {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) tc_quantize_kernel(TcQuantArgs a) {
  extern __shared__ int32_t group_sums[];  // [groups]
  const int64_t r = blockIdx.x, units = num_units(a.k), units_p = a.kp / kUnit;
  const int64_t gs = a.k / a.groups;
  const T* __restrict__ xr = static_cast<const T*>(a.x) + r * a.x_stride;
  for (int64_t g = threadIdx.x; g < a.groups; g += blockDim.x) group_sums[g] = 0;
  float v[kUnit];
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
    load_unit_values(xr, u, a.k, v);
    update_minmax(v, mn, mx);
  }
  const float2 range = block_minmax(mn, mx);  // its __syncthreads also orders the group_sums reset
  const ActQParams qp = act_qparams(range.x, range.y, a.clip_lo[r], a.clip_hi[r], a.bits);
  const int32_t off = a.bits == 8 ? 128 : static_cast<int32_t>(qp.zero);
  int8_t* row = a.a8 + r * a.kp;
  for (int64_t u = threadIdx.x; u < units_p; u += blockDim.x) {
    load_unit_values(xr, u < units ? u : units, a.k, v);  // u >= units: all padding
    uint64_t bytes = 0;
    int32_t sum = 0;
#pragma unroll
    for (int i = 0; i < kUnit; ++i) {
      const int32_t q = kUnit * u + i < a.k ? static_cast<int32_t>(act_code(v[i], qp, a.bits)) - off : 0;
      sum += q;
      bytes |= static_cast<uint64_t>(static_cast<uint8_t>(q)) << (8 * i);
    }
    *reinterpret_cast<uint64_t*>(row + kUnit * u) = bytes;
    const int64_t g = kUnit * u / gs;
    atomicAdd(&group_sums[g < a.groups ? g : a.groups - 1], sum);  // padding columns add 0
  }
  __syncthreads();
  for (int64_t g = threadIdx.x; g < a.groups; g += blockDim.x) a.sums[g * a.mp + r] = group_sums[g];
  if (threadIdx.x == 0) {
    a.scale[r] = qp.scale;
    a.zero[r] = static_cast<int32_t>(qp.zero);
  }
}

template <typename T>
cudaError_t launch(const TcQuantArgs& a, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(a.groups) * sizeof(int32_t);
  if (smem > 48 * 1024) return cudaErrorInvalidConfiguration;
  tc_quantize_kernel<T><<<static_cast<unsigned int>(a.m), kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t tc_quantize(const TcQuantArgs& a, cudaStream_t stream) {
  if (a.m == 0) return cudaSuccess;
  if (a.m > 0x7fffffff) return cudaErrorInvalidConfiguration;
  switch (a.x_dtype) {
    case DType::kFloat16:
      return launch<__half>(a, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(a, stream);
    default:
      return launch<float>(a, stream);
  }
}

}  // namespace cuda
}  // namespace qvgen
