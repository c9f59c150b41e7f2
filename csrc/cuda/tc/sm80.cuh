// mma.sync GEMM (sm_80 / sm_86 / sm_89, also runs on sm_90): s8 x s8 m16n8k32 (u8 x s8 for 4-bit codes),
// cp.async pipeline of kStages stages, the epilogue of common.cuh fused. Layouts and epilogue: qvgen/tc.h.
//
// Block: 128 weight rows x kBM tokens, 4 warps as 2 (byte rows [32 wm, 32 wm + 32)) x 2 (token halves).
// Per K stage (128 columns) the weight tile ([64, 128] nibble bytes, or [128, 128] int8) and the activation
// tile ([kBM, 128] int8) go to shared memory with the 128-byte swizzle of common.cuh (conflict-free ldmatrix).
// Per k32 a warp loads its weight rows with one ldmatrix.x4 per 16 byte rows and unpacks both nibble halves
// in registers (two bitwise ops), then runs 4 (m16 tiles: 2 byte-row slices x 2 halves) x kNJ (n8 token
// tiles) MMAs. Per group the int32 accumulators are promoted at each group end (group sizes are multiples
// of 32, so a group may end inside a stage).
#pragma once

#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/copy_sm80.hpp>
#include <cute/arch/mma_sm80.hpp>

#include "common.cuh"
#include "launchers.h"

namespace qvgen {
namespace cuda {
namespace tc {

template <bool kW8, bool kGrouped>
struct Sm80Config {
  static constexpr int kThreads = 128;
  static constexpr int kBM = kGrouped ? kTcSm80GroupedTileM : kTcSm80TileM;  // qvgen/tc_tiles.h
  static constexpr int kNJ = kBM / 2 / 8;          // n8 token tiles per warp
  static constexpr int kWRows = kW8 ? 2 * kHalf : kHalf;
  static constexpr int kStageBytes = (kWRows + kBM) * kBK;
  // At most 96 KiB: sm_86 / sm_89 give a block 99 KiB of shared memory.
  static constexpr int kStages = 98304 / kStageBytes < 4 ? 98304 / kStageBytes : 4;
  static constexpr int kSmem = kStages * kStageBytes;
  static_assert(kStages >= 3, "the cp.async pipeline keeps at least 3 stages");
  static_assert(kTcTokenAlign % kBM == 0, "the per-token vectors must cover whole token tiles");
};

using MmaU8S8 = cute::SM80_16x8x32_S32U8S8S32_TN;
using MmaS8S8 = cute::SM80_16x8x32_S32S8S8S32_TN;

__device__ __forceinline__ void ldsm_x4(uint32_t addr_bytes, const uint8_t* base, uint32_t (&r)[4]) {
  cute::SM75_U32x4_LDSM_N::copy(*reinterpret_cast<const cute::uint128_t*>(base + addr_bytes), r[0], r[1], r[2],
                                r[3]);
}

// Issue the cp.async copies of K stage kt into shared-memory stage `stage`.
template <bool kW8, bool kGrouped>
__device__ __forceinline__ void load_stage_sm80(const TcGemmArgs& g, uint8_t* smem, int stage, int64_t kt,
                                                int64_t w_row0, int64_t m0) {
  using C = Sm80Config<kW8, kGrouped>;
  uint8_t* w_tile = smem + stage * C::kStageBytes;
  uint8_t* a_tile = w_tile + C::kWRows * kBK;
  const uint8_t* w = static_cast<const uint8_t*>(g.w);
  const int64_t k0 = kt * kBK;
  for (int c = threadIdx.x; c < C::kWRows * 8; c += C::kThreads) {
    const int row = c / 8, col = (c % 8) * 16;
    cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(
        *reinterpret_cast<const cute::uint128_t*>(w + (w_row0 + row) * g.kp + k0 + col),
        *reinterpret_cast<cute::uint128_t*>(w_tile + swizzle128(row, col)));
  }
  for (int c = threadIdx.x; c < C::kBM * 8; c += C::kThreads) {
    const int row = c / 8, col = (c % 8) * 16;
    const int64_t m = m0 + row < g.m ? m0 + row : g.m - 1;  // rows past M repeat a real row (never stored)
    cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(
        *reinterpret_cast<const cute::uint128_t*>(reinterpret_cast<const uint8_t*>(g.a8) + m * g.kp + k0 + col),
        *reinterpret_cast<cute::uint128_t*>(a_tile + swizzle128(row, col)));
  }
}

template <bool kW8, bool kGrouped>
__global__ void __launch_bounds__(128, 1) tc_gemm_sm80_kernel(TcGemmArgs g) {
  using C = Sm80Config<kW8, kGrouped>;
  constexpr int kNJ = C::kNJ;
  extern __shared__ __align__(128) uint8_t smem[];
  const int64_t m_blocks = (g.m + C::kBM - 1) / C::kBM, n_blocks = tc_round_up(g.n, kTcRowBlock) / kTcRowBlock;
  const TilePos tile = tile_pos(blockIdx.x, n_blocks, m_blocks);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / 2, wn = warp % 2;
  const int64_t m_base = tile.m_blk * C::kBM;
  const int64_t w_row0 = tile.n_blk * C::kWRows;
  const int64_t gs = g.k / g.groups;
  const int64_t kt_count = g.kp / kBK;

  uint32_t acc[2][2][kNJ][4];  // [byte-row slice][nibble half][n8 tile][fragment]
  float y[2][2][kNJ][4];
#pragma unroll
  for (int s = 0; s < 2; ++s)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < kNJ; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          acc[s][h][j][i] = 0;
          y[s][h][j][i] = 0.0f;
        }
  // The thread's first weight row of fragment (s, h) and its first token (fragment convention of common.cuh).
  auto row0 = [&](int s, int h) { return tile.n_blk * kTcRowBlock + h * kHalf + 32 * wm + 16 * s + lane / 4; };
  const int64_t tok0 = m_base + wn * (C::kBM / 2) + 2 * (lane % 4);
  int steps_left = static_cast<int>(gs / 32);  // per group: k32 steps left in group grp
  int64_t grp = 0;

#pragma unroll
  for (int s = 0; s < C::kStages - 1; ++s) {
    if (s < kt_count) load_stage_sm80<kW8, kGrouped>(g, smem, s, s, w_row0, m_base);
    cute::cp_async_fence();
  }
  for (int64_t kt = 0; kt < kt_count; ++kt) {
    cute::cp_async_wait<C::kStages - 2>();
    __syncthreads();  // stage kt is visible to all; stage kt - 1 is free for the next copy
    const int64_t next = kt + C::kStages - 1;
    if (next < kt_count) load_stage_sm80<kW8, kGrouped>(g, smem, next % C::kStages, next, w_row0, m_base);
    cute::cp_async_fence();
    const uint8_t* w_tile = smem + (kt % C::kStages) * C::kStageBytes;
    const uint8_t* a_tile = w_tile + C::kWRows * kBK;
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk) {
      uint32_t a[2][2][4];
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        // ldmatrix.x4 matrices: (rows +0, k +0), (rows +8, k +0), (rows +0, k +16), (rows +8, k +16).
        const int r = 32 * wm + 16 * s + (lane % 8) + ((lane / 8) % 2) * 8;
        const int col = kk * 32 + (lane / 16) * 16;
        if (kW8) {
          ldsm_x4(swizzle128(r, col), w_tile, a[s][0]);
          ldsm_x4(swizzle128(r + kHalf, col), w_tile, a[s][1]);
        } else {
          uint32_t b[4];
          ldsm_x4(swizzle128(r, col), w_tile, b);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            a[s][0][i] = low_nibbles(b[i]);
            a[s][1][i] = high_nibbles(b[i]);
          }
        }
      }
      uint32_t bf[kNJ][2];
#pragma unroll
      for (int jp = 0; jp < kNJ / 2; ++jp) {
        // Matrices: (tokens +0, k +0), (tokens +0, k +16), (tokens +8, k +0), (tokens +8, k +16).
        const int r = wn * (C::kBM / 2) + 16 * jp + (lane % 8) + (lane / 16) * 8;
        const int col = kk * 32 + ((lane / 8) % 2) * 16;
        uint32_t t[4];
        ldsm_x4(swizzle128(r, col), a_tile, t);
        bf[2 * jp][0] = t[0];
        bf[2 * jp][1] = t[1];
        bf[2 * jp + 1][0] = t[2];
        bf[2 * jp + 1][1] = t[3];
      }
#pragma unroll
      for (int s = 0; s < 2; ++s)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int j = 0; j < kNJ; ++j) {
            uint32_t(&d)[4] = acc[s][h][j];
            if (kW8) {
              MmaS8S8::fma(d[0], d[1], d[2], d[3], a[s][h][0], a[s][h][1], a[s][h][2], a[s][h][3], bf[j][0],
                           bf[j][1], d[0], d[1], d[2], d[3]);
            } else {
              MmaU8S8::fma(d[0], d[1], d[2], d[3], a[s][h][0], a[s][h][1], a[s][h][2], a[s][h][3], bf[j][0],
                           bf[j][1], d[0], d[1], d[2], d[3]);
            }
          }
      if (kGrouped && --steps_left == 0 && grp < g.groups) {  // the group ends here (none in the padding)
#pragma unroll
        for (int s = 0; s < 2; ++s)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            promote_group<kW8, kNJ>(g, acc[s][h], y[s][h], row0(s, h), tok0, grp, gs);
#pragma unroll
            for (int j = 0; j < kNJ; ++j)
#pragma unroll
              for (int i = 0; i < 4; ++i) acc[s][h][j][i] = 0;
          }
        ++grp;
        steps_left = static_cast<int>(gs / 32);
      }
    }
  }
  cute::cp_async_wait<0>();
#pragma unroll
  for (int s = 0; s < 2; ++s)
#pragma unroll
    for (int h = 0; h < 2; ++h) finish_tile<kW8, kGrouped, kNJ>(g, acc[s][h], y[s][h], row0(s, h), tok0);
}

template <bool kW8, bool kGrouped>
cudaError_t launch_sm80(const TcGemmArgs& g, const Device& dev, cudaStream_t stream) {
  using C = Sm80Config<kW8, kGrouped>;
  const int64_t tiles = ((g.m + C::kBM - 1) / C::kBM) * (tc_round_up(g.n, kTcRowBlock) / kTcRowBlock);
  if (tiles > 0x7fffffff) return cudaErrorInvalidConfiguration;
  static std::atomic<uint64_t> smem_set{0};
  const cudaError_t st = set_smem_once(tc_gemm_sm80_kernel<kW8, kGrouped>, C::kSmem, dev.index, smem_set);
  if (st != cudaSuccess) return st;
  tc_gemm_sm80_kernel<kW8, kGrouped><<<static_cast<unsigned int>(tiles), C::kThreads, C::kSmem, stream>>>(g);
  return cudaGetLastError();
}

// One explicit instantiation per translation unit (gemm_sm80_*.cu).
#define QVGEN_TC_SM80_INSTANTIATE(W8, GROUPED) \
  template cudaError_t launch_sm80<W8, GROUPED>(const TcGemmArgs&, const Device&, cudaStream_t);

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
