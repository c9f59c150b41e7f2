// CUDA packed low-bit GEMM (math in qvgen/kernels.h, epilogue order in qvgen/quant.h).
//
// Tiling: a block computes a kBM x kBN tile of Y with 256 threads (16 x 16), each owning a
// kTM x kTN micro-tile (rows ty + 16 i, columns tx + 16 j). Per K step of kBK codes, every thread
// unpacks one unit of 8 codes of A and one of W into shared memory as raw unsigned codes (codes at
// k >= K and rows past M / N are 0). Dot products run on the codes themselves, 4 at a time with
// the unsigned __dp4a:  sum_k (q_x - z_x) q_w = sum_k q_x q_w - z_x sum_k q_w.  The sums wrap
// modulo 2^32, which is harmless: the final value fits int32 (the format's exactness assumption),
// so the wrapped difference is exact. At the end of each weight group the integer partial sums go
// through the fp32 epilogue and are cleared (per group: into a running sum scaled by s_x at the end).
// Groups whose size is not a multiple of 4 take the same path one code at a time (kStep = 1).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "qvgen/cuda.h"
#include "qvgen/pack.h"
#include "qvgen/quant.h"

namespace qvgen {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTM = 4, kTN = 4;
constexpr int kBM = 16 * kTM, kBN = 16 * kTN;
constexpr int kBK = 32;                      // codes per K step: 4 units
constexpr int kWords = kBK / 4;              // uint32 words of 4 codes per tile row
constexpr int kStride = kWords + 1;          // padded row stride (words): no bank conflicts
static_assert(kBM * (kBK / kUnit) == kThreads, "one A unit per thread per K step");
static_assert(kBN * (kBK / kUnit) == kThreads, "one W unit per thread per K step");

__device__ __forceinline__ void store_out(float v, float* p) { *p = v; }
__device__ __forceinline__ void store_out(float v, __half* p) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_out(float v, __nv_bfloat16* p) { *p = __float2bfloat16_rn(v); }

// Unpack unit `unit` of this K step of row `row` (rows >= rows_total give zeros) into smem.
__device__ void load_tile_unit(const uint8_t* __restrict__ packed, int bits, int64_t row, int64_t rows_total,
                               int64_t k0, int unit, int64_t k, uint32_t* dst) {
  uint8_t c[kUnit] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t u = k0 / kUnit + unit;
  if (row < rows_total && u < num_units(k)) {
    unpack_unit(packed + row * packed_width(k, bits), bits, u, k, c);
    for (int i = 0; i < kUnit; ++i) {
      if (kUnit * u + i >= k) c[i] = 0;
    }
  }
  dst[2 * unit] = c[0] | (c[1] << 8) | (c[2] << 16) | (static_cast<uint32_t>(c[3]) << 24);
  dst[2 * unit + 1] = c[4] | (c[5] << 8) | (c[6] << 16) | (static_cast<uint32_t>(c[7]) << 24);
}

// kStep = 4: one word of 4 codes; kStep = 1: the code at position s of the tile row.
template <int kStep>
__device__ __forceinline__ uint32_t fetch(const uint32_t* tile_row, int s) {
  if (kStep == 4) return tile_row[s / 4];
  return (tile_row[s / 4] >> (8 * (s % 4))) & 0xffu;
}

template <int kStep>
__device__ __forceinline__ uint32_t dot(uint32_t a, uint32_t b, uint32_t c) {
  if (kStep == 4) return __dp4a(a, b, c);
  return c + a * b;
}

struct Accumulators {
  uint32_t acc[kTM][kTN];  // sum q_x q_w over the current group
  uint32_t asum[kTM];      // sum q_x
  uint32_t wsum[kTN];      // sum q_w
  float y[kTM][kTN];        // per channel: the epilogue; per group: the running sum over groups
};

// Close group g: the integer sums go through the epilogue into y, then restart from 0.
__device__ void flush_group(const GemmArgs& g, Accumulators& t, int64_t grp, int64_t m0, int64_t n0) {
  const int64_t gs = g.k / g.groups;
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int64_t m = m0 + threadIdx.y + 16 * i;
    const bool in_m = m < g.m;
    const int32_t za = in_m ? g.a_zero[m] : 0;
    const float sx = in_m ? g.a_scale[m] : 0.0f;
    // Per channel the given row sum is the contract; per group it is recomputed from the codes.
    const int32_t r = !g.grouped ? (in_m ? g.a_rowsum[m] : 0)
                                 : static_cast<int32_t>(t.asum[i] - static_cast<uint32_t>(gs * za));
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t n = n0 + threadIdx.x + 16 * j;
      const int64_t idx = (n < g.n ? n : 0) * g.groups + grp;
      const int32_t acc = static_cast<int32_t>(t.acc[i][j] - static_cast<uint32_t>(za) * t.wsum[j]);
      t.y[i][j] = g.grouped ? group_accumulate(t.y[i][j], g.w_scale[idx], g.w_zero[idx], acc, r)
                            : channel_epilogue(sx, g.w_scale[idx], g.w_zero[idx], acc, r);
      t.acc[i][j] = 0;
    }
    t.asum[i] = 0;
  }
#pragma unroll
  for (int j = 0; j < kTN; ++j) t.wsum[j] = 0;
}

template <int kStep, typename OutT>
__global__ void __launch_bounds__(kThreads) lowbit_gemm_kernel(GemmArgs g) {
  __shared__ uint32_t a_tile[kBM * kStride];
  __shared__ uint32_t w_tile[kBN * kStride];
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM, n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  const int tid = threadIdx.y * 16 + threadIdx.x;
  const int load_row = tid / (kBK / kUnit), load_unit = tid % (kBK / kUnit);
  const int64_t gs = g.k / g.groups;
  const uint32_t ones = kStep == 4 ? 0x01010101u : 1u;
  Accumulators t = {};
  for (int64_t k0 = 0; k0 < g.k; k0 += kBK) {
    load_tile_unit(g.a_packed, g.a_bits, m0 + load_row, g.m, k0, load_unit, g.k, a_tile + load_row * kStride);
    load_tile_unit(g.w_packed, g.w_bits, n0 + load_row, g.n, k0, load_unit, g.k, w_tile + load_row * kStride);
    __syncthreads();
    for (int s = 0; s < kBK && k0 + s < g.k; s += kStep) {
      uint32_t av[kTM], wv[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) av[i] = fetch<kStep>(a_tile + (threadIdx.y + 16 * i) * kStride, s);
#pragma unroll
      for (int j = 0; j < kTN; ++j) wv[j] = fetch<kStep>(w_tile + (threadIdx.x + 16 * j) * kStride, s);
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        t.asum[i] = dot<kStep>(av[i], ones, t.asum[i]);
#pragma unroll
        for (int j = 0; j < kTN; ++j) t.acc[i][j] = dot<kStep>(av[i], wv[j], t.acc[i][j]);
      }
#pragma unroll
      for (int j = 0; j < kTN; ++j) t.wsum[j] = dot<kStep>(wv[j], ones, t.wsum[j]);
      const int64_t k_end = k0 + s + kStep;  // may pass k at the last word; those codes are 0
      if (k_end % gs == 0 || k_end >= g.k) {
        const int64_t grp = (k_end - 1) / gs < g.groups ? (k_end - 1) / gs : g.groups - 1;
        flush_group(g, t, grp, m0, n0);
      }
    }
    __syncthreads();
  }
  OutT* out = static_cast<OutT*>(g.out);
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int64_t m = m0 + threadIdx.y + 16 * i;
    if (m >= g.m) continue;
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t n = n0 + threadIdx.x + 16 * j;
      if (n < g.n) {
        const float y = g.grouped ? mul_rn(g.a_scale[m], t.y[i][j]) : t.y[i][j];
        store_out(g.bias != nullptr ? add_rn(y, g.bias[n]) : y, out + m * g.n + n);
      }
    }
  }
}

template <int kStep>
cudaError_t launch(const GemmArgs& g, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>((g.m + kBM - 1) / kBM), static_cast<unsigned int>((g.n + kBN - 1) / kBN));
  const dim3 block(16, 16);
  switch (g.out_dtype) {
    case DType::kFloat16:
      lowbit_gemm_kernel<kStep, __half><<<grid, block, 0, stream>>>(g);
      break;
    case DType::kBFloat16:
      lowbit_gemm_kernel<kStep, __nv_bfloat16><<<grid, block, 0, stream>>>(g);
      break;
    default:
      lowbit_gemm_kernel<kStep, float><<<grid, block, 0, stream>>>(g);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t lowbit_gemm(const GemmArgs& g, cudaStream_t stream) {
  if (g.m == 0 || g.n == 0) return cudaSuccess;
  if (g.n > static_cast<int64_t>(kBN) * 65535) return cudaErrorInvalidConfiguration;  // grid.y limit
  const int64_t gs = g.k / g.groups;
  return g.groups == 1 || gs % 4 == 0 ? launch<4>(g, stream) : launch<1>(g, stream);
}

}  // namespace cuda
}  // namespace qvgen
