// Device pieces shared by the tensor-core GEMMs (tc_gemm_sm80.cuh, tc_gemm_sm90.cuh): shared-memory
// swizzle, nibble unpack, tile order, and the fused epilogue on accumulator fragments.
//
// Fragment convention (the same for mma.sync m16n8 and for one warp's slice of wgmma m64nN): a thread holds,
// per 8-token column block j, acc[j][i] at weight row n0 + 8 (i / 2) and token m0 + 8 j + (i % 2), where n0
// and m0 are the thread's first row and column (lane / 4 and 2 (lane % 4) inside the warp's tile).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "qvgen/quant.h"
#include "qvgen/tc.h"

namespace qvgen {
namespace cuda {
namespace tc {

constexpr int kBK = 128;    // K columns (bytes) per pipeline stage: one 128-byte swizzle row
constexpr int kHalf = 64;   // weight rows per nibble half (the MMA's M per warpgroup / 4 m16 tiles)
constexpr int kSwizzleN = 8;  // weight blocks that share each activation block in the tile order

// Byte offset of (row, col) in a [rows, 128] byte tile stored with the 128-byte swizzle of TMA
// (CU_TENSOR_MAP_SWIZZLE_128B): the 16-byte chunk index is XORed with row % 8, so the 8 rows an ldmatrix
// phase reads fall in 8 different bank groups.
__device__ __forceinline__ uint32_t swizzle128(int row, int col) {
  return static_cast<uint32_t>(row * 128 + ((((col >> 4) ^ row) & 7) << 4) + (col & 15));
}

// The two 4-bit weight halves of 4 packed bytes, as u8 codes.
__device__ __forceinline__ uint32_t low_nibbles(uint32_t b) { return b & 0x0F0F0F0Fu; }
__device__ __forceinline__ uint32_t high_nibbles(uint32_t b) { return (b >> 4) & 0x0F0F0F0Fu; }

// Tile t of the launch order -> (weight block, token block): kSwizzleN weight blocks sweep all token blocks
// together, so the activation block they share stays in L2.
struct TilePos {
  int64_t n_blk, m_blk;
};
__device__ __forceinline__ TilePos tile_pos(int64_t t, int64_t n_blocks, int64_t m_blocks) {
  const int64_t per_group = kSwizzleN * m_blocks;
  const int64_t first_n = (t / per_group) * kSwizzleN;
  const int64_t size_n = n_blocks - first_n < kSwizzleN ? n_blocks - first_n : kSwizzleN;
  const int64_t in_group = t % per_group;
  return {first_n + in_group % size_n, in_group / size_n};
}

// Per-token terms of group g (per channel: the single group of gs = K columns).
struct TokenTerms {
  float r;        // float(r_g) with r_g = S + e gs
  int32_t s, e;   // S = sum of a8 over the group, e = 128 - z_x for 8-bit activations (else 0)
};

// Token m0 + off of group grp. The per-token vectors are padded to MP rows (tc.h), so the thread's tokens
// are fixed offsets from two base pointers and need no bounds checks.
__device__ __forceinline__ TokenTerms token_terms(const TcGemmArgs& g, const int32_t* sums, const int32_t* zeros,
                                                  int64_t off, int64_t gs) {
  const int32_t s = sums[off];
  const int32_t e = g.a_bits == 8 ? 128 - zeros[off] : 0;
  return {static_cast<float>(s + e * static_cast<int32_t>(gs)), s, e};
}

struct ChannelTerms {
  float sw, zw;
  int32_t cs;  // colsum (read only for 8-bit activations)
};

__device__ __forceinline__ ChannelTerms channel_terms(const TcGemmArgs& g, int64_t n, int64_t grp) {
  n = n < g.n ? n : g.n - 1;
  const int64_t idx = n * g.groups + grp;
  return {g.w_scale[idx], g.w_zero[idx], g.a_bits == 8 ? g.colsum[idx] : 0};
}

// float(sum_k (q_x - z_x) q_w) - z_w float(r) from the dot of the stored operands (tc.h). The integer
// corrections wrap modulo 2^32 like the dot itself; the final value fits int32 (the format's assumption).
template <bool kW8>
__device__ __forceinline__ float zero_corrected_tc(uint32_t acc, const TokenTerms& t, const ChannelTerms& c) {
  uint32_t v = acc + static_cast<uint32_t>(t.e) * static_cast<uint32_t>(c.cs);
  if (kW8) v += 128u * static_cast<uint32_t>(t.s);
  return sub_rn(static_cast<float>(static_cast<int32_t>(v)), mul_rn(c.zw, t.r));
}

// y += s_w[g] (float(acc_g) - z_w[g] r_g) for one group (quant.h group_accumulate's order).
template <bool kW8, int kNJ>
__device__ __forceinline__ void promote_group(const TcGemmArgs& g, const uint32_t (&acc)[kNJ][4],
                                              float (&y)[kNJ][4], int64_t n0, int64_t m0, int64_t grp,
                                              int64_t gs) {
  ChannelTerms c[2] = {channel_terms(g, n0, grp), channel_terms(g, n0 + 8, grp)};
  const int32_t* sums = g.a_sums + grp * g.mp + m0;
  const int32_t* zeros = g.a_zero + m0;
#pragma unroll
  for (int j = 0; j < kNJ; ++j) {
    const TokenTerms t[2] = {token_terms(g, sums, zeros, 8 * j, gs), token_terms(g, sums, zeros, 8 * j + 1, gs)};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      y[j][i] = add_rn(y[j][i], mul_rn(c[i / 2].sw, zero_corrected_tc<kW8>(acc[j][i], t[i % 2], c[i / 2])));
    }
  }
}

__device__ __forceinline__ void store_out(const TcGemmArgs& g, int64_t m, int64_t n, float v) {
  const int64_t idx = m * g.n + n;
  switch (g.out_dtype) {
    case DType::kFloat16:
      static_cast<__half*>(g.out)[idx] = __float2half_rn(v);
      break;
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(g.out)[idx] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(g.out)[idx] = v;
  }
}

// The end of the epilogue: per channel (kGrouped false) Y = (s_x s_w) (float(acc) - z_w r) + bias from acc;
// per group Y = s_x y + bias from the promoted sum y. Stores the rows < N and tokens < M.
template <bool kW8, bool kGrouped, int kNJ>
__device__ __forceinline__ void finish_tile(const TcGemmArgs& g, const uint32_t (&acc)[kNJ][4],
                                            const float (&y)[kNJ][4], int64_t n0, int64_t m0) {
  const ChannelTerms c[2] = {channel_terms(g, n0, 0), channel_terms(g, n0 + 8, 0)};
  const float bias[2] = {g.bias != nullptr ? g.bias[n0 < g.n ? n0 : 0] : 0.0f,
                         g.bias != nullptr ? g.bias[n0 + 8 < g.n ? n0 + 8 : 0] : 0.0f};
#pragma unroll
  for (int j = 0; j < kNJ; ++j) {
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      const int64_t m = m0 + 8 * j + cc;
      if (m >= g.m) continue;
      const float sx = g.a_scale[m];
      const TokenTerms t = kGrouped ? TokenTerms{0.0f, 0, 0} : token_terms(g, g.a_sums, g.a_zero, m, g.k);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t n = n0 + 8 * h;
        if (n >= g.n) continue;
        const int i = 2 * h + cc;
        float v = kGrouped ? mul_rn(sx, y[j][i])
                           : mul_rn(mul_rn(sx, c[h].sw), zero_corrected_tc<kW8>(acc[j][i], t, c[h]));
        if (g.bias != nullptr) v = add_rn(v, bias[h]);
        store_out(g, m, n, v);
      }
    }
  }
}

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
