// wgmma GEMM (sm_90a): warp-specialised, persistent, TMA + mbarrier pipeline of kStages stages, the epilogue
// of common.cuh fused. Layouts and epilogue: qvgen/tc.h.
//
// Block: 3 warpgroups. Warpgroup 0 is the producer: one thread walks the block's tiles (persistent: tiles
// blockIdx.x, + gridDim.x, ...) and K stages, waits for a free stage (empty barrier) and issues two TMA loads
// (weight tile [64, 128] nibble bytes or [128, 128] int8, activation tile [kBM, 128] int8, both with the
// 128-byte swizzle) onto the stage's full barrier. Warpgroups 1 and 2 are the consumers and own the two halves
// of the block's 128 weight rows: per k32 each thread loads its 8-bit weight fragment with one ldmatrix.x4
// (4-bit: the same bytes for both warpgroups, low or high nibbles by a shift), then issues
// wgmma m64{kBM}k32 with the weight from registers and the activation tile from shared memory (u8 x s8, or
// s8 x s8 for 8-bit weights). The weight fragments are wgmma register operands, which must not be rewritten
// until the wgmmas reading them complete (PTX ISA, wgmma.wait_group): per channel a stage's wgmmas run while
// the consumers wait for the next stage's barrier, and complete (wait_group 0, stage released) before that
// stage's fragments are loaded; per group the accumulator is promoted at each group end (wait_group 0 first)
// and the stage released at its end.
#pragma once

#include <cuda.h>

#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/arch/mma_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <utility>

#include "common.cuh"
#include "launchers.h"
#include "tma.h"

namespace qvgen {
namespace cuda {
namespace tc {

template <bool kW8, bool kGrouped>
struct Sm90Config {
  static constexpr int kThreads = 384;
  static constexpr int kBM = kGrouped ? kTcSm90GroupedTileM : kTcSm90TileM;  // qvgen/tc_tiles.h
  static constexpr int kNJ = kBM / 8;
  static constexpr int kWRows = kW8 ? 2 * kHalf : kHalf;
  static constexpr int kWBytes = kWRows * kBK;
  static constexpr int kStageBytes = kWBytes + kBM * kBK;
  static constexpr int kStages = 200 * 1024 / kStageBytes < 8 ? 200 * 1024 / kStageBytes : 8;
  // Stages (1024-byte aligned for the swizzle), alignment slack, full and empty barriers.
  static constexpr int kSmem = kStages * kStageBytes + 1024 + 2 * kStages * 8;
  static_assert(kStages >= 3, "the TMA pipeline keeps at least 3 stages");
  static_assert(kTcTokenAlign % kBM == 0, "the per-token vectors must cover whole token tiles");
  static_assert(kWRows == (kW8 ? kTcRowBlock : kTcRowBlock / 2), "the weight box of sm90_weight_map (tma.h)");
  static_assert(kWBytes % 1024 == 0 && kStageBytes % 1024 == 0, "swizzled tiles start at 1024-byte boundaries");
};

template <bool kW8, int kN>
struct GmmaOp;
template <>
struct GmmaOp<false, 256> { using type = cute::SM90::GMMA::MMA_64x256x32_S32U8S8_RS_TN; };
template <>
struct GmmaOp<false, 96> { using type = cute::SM90::GMMA::MMA_64x96x32_S32U8S8_RS_TN; };
template <>
struct GmmaOp<true, 256> { using type = cute::SM90::GMMA::MMA_64x256x32_S32S8S8_RS_TN; };
template <>
struct GmmaOp<true, 96> { using type = cute::SM90::GMMA::MMA_64x96x32_S32S8S8_RS_TN; };

// One wgmma with the accumulator fragments acc[kNJ][4] (the atom takes them as separate registers).
template <class Op, int kNJ, size_t... I>
__device__ __forceinline__ void gmma(const uint32_t (&a)[4], uint64_t desc, uint32_t (&acc)[kNJ][4],
                                     cute::SM90::GMMA::ScaleOut scale, std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], desc, acc[I / 4][I % 4]..., scale);
}

// wgmma shared-memory descriptor of a K-major tile with the 128-byte swizzle: rows of 128 bytes, 8-row atoms
// 1024 bytes apart (stride byte offset), layout type 1 (SWIZZLE_128B); the leading byte offset is unused.
__device__ __forceinline__ uint64_t sw128_desc(const void* smem_ptr) {
  const uint32_t addr = cute::cast_smem_ptr_to_uint(smem_ptr);
  return (static_cast<uint64_t>(addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

template <int kNJ>
__device__ __forceinline__ void fence_acc(uint32_t (&acc)[kNJ][4]) {
#pragma unroll
  for (int j = 0; j < kNJ; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) cute::warpgroup_fence_operand(acc[j][i]);
}

template <bool kW8, bool kGrouped>
__global__ void __launch_bounds__(384, 1)
    tc_gemm_sm90_kernel(const __grid_constant__ CUtensorMap w_map, const __grid_constant__ CUtensorMap a_map,
                        TcGemmArgs g) {
#if defined(CUTE_ARCH_MMA_SM90A_ENABLED) && defined(CUTE_ARCH_TMA_SM90_ENABLED)
  using C = Sm90Config<kW8, kGrouped>;
  using Barrier = cutlass::arch::ClusterTransactionBarrier;
  constexpr int kNJ = C::kNJ;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + C::kStages * C::kStageBytes);
  uint64_t* empty = full + C::kStages;
  const int wg = threadIdx.x / 128;
  const int64_t m_blocks = (g.m + C::kBM - 1) / C::kBM, n_blocks = tc_round_up(g.n, kTcRowBlock) / kTcRowBlock;
  const int64_t tiles = m_blocks * n_blocks, kt_count = g.kp / kBK;
  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kStages; ++s) {
      Barrier::init(&full[s], 1);
      Barrier::init(&empty[s], 8);  // one arrival per consumer warp
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<40>();
    if (threadIdx.x != 0) return;
    cute::prefetch_tma_descriptor(&w_map);
    cute::prefetch_tma_descriptor(&a_map);
    int stage = 0;
    uint32_t phase = 0;
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
      const TilePos pos = tile_pos(t, n_blocks, m_blocks);
      for (int64_t kt = 0; kt < kt_count; ++kt) {
        Barrier::wait(&empty[stage], phase ^ 1);
        Barrier::arrive_and_expect_tx(&full[stage], C::kStageBytes);
        uint8_t* w_tile = smem + stage * C::kStageBytes;
        const auto hint = static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_NORMAL);
        cute::SM90_TMA_LOAD_2D::copy(&w_map, &full[stage], hint, w_tile, static_cast<int32_t>(kt * kBK),
                                     static_cast<int32_t>(pos.n_blk * C::kWRows));
        cute::SM90_TMA_LOAD_2D::copy(&a_map, &full[stage], hint, w_tile + C::kWBytes,
                                     static_cast<int32_t>(kt * kBK), static_cast<int32_t>(pos.m_blk * C::kBM));
        if (++stage == C::kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    return;
  }

  cutlass::arch::warpgroup_reg_alloc<232>();
  using Op = typename GmmaOp<kW8, C::kBM>::type;
  const auto seq = std::make_index_sequence<4 * kNJ>{};
  const int half = wg - 1;  // 0: weight rows [0, 64) of the block (low nibbles), 1: [64, 128) (high nibbles)
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int64_t gs = g.k / g.groups;
  const int group_steps = static_cast<int>(gs / 32);
  // ldmatrix.x4 matrices: (rows +0, k +0), (rows +8, k +0), (rows +0, k +16), (rows +8, k +16).
  const int frag_row = (kW8 ? half * kHalf : 0) + 16 * warp + (lane % 8) + ((lane / 8) % 2) * 8;
  const int frag_col = (lane / 16) * 16;
  int stage = 0;
  uint32_t phase = 0;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const TilePos pos = tile_pos(t, n_blocks, m_blocks);
    const int64_t n0 = pos.n_blk * kTcRowBlock + half * kHalf + 16 * warp + lane / 4;
    const int64_t m0 = pos.m_blk * C::kBM + 2 * (lane % 4);
    uint32_t acc[kNJ][4];
    float y[kNJ][4];
#pragma unroll
    for (int j = 0; j < kNJ; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[j][i] = 0;
        y[j][i] = 0.0f;
      }
    uint32_t scale_d = 0;  // the next wgmma's scale-d: 0 starts the accumulator, 1 adds to it
    int steps_left = group_steps;  // per group: k32 steps left in group grp
    int64_t grp = 0;
    int held = -1;      // per channel: the stage whose wgmmas may still be in flight
    for (int64_t kt = 0; kt < kt_count; ++kt) {
      Barrier::wait(&full[stage], phase);
      if (!kGrouped && held >= 0) {
        // The weight fragments are about to be rewritten: the previous stage's wgmmas (which read them from
        // registers) must be done first; they ran while this thread waited for the stage above.
        cute::warpgroup_wait<0>();
        if (lane == 0) Barrier::arrive(&empty[held]);
        held = -1;
      }
      const uint8_t* w_tile = smem + stage * C::kStageBytes;
      // This thread's 8-bit weight fragment of k32 step kk (4-bit: the nibble half of this warpgroup).
      auto load_frag = [&](int kk, uint32_t(&f)[4]) {
        cute::SM75_U32x4_LDSM_N::copy(
            *reinterpret_cast<const cute::uint128_t*>(w_tile + swizzle128(frag_row, kk * 32 + frag_col)), f[0],
            f[1], f[2], f[3]);
        if (!kW8) {
#pragma unroll
          for (int i = 0; i < 4; ++i) f[i] = (f[i] >> (4 * half)) & 0x0F0F0F0Fu;
        }
      };
      // Per channel all four fragments are loaded up front; per group one at a time (the promotion needs
      // the registers). wgmma.fence (warpgroup_arrive) must follow the writes of the register operands and
      // precede the wgmma reading them (PTX ISA, wgmma.fence): once per stage per channel, before each
      // wgmma per group, where a fragment load (or the promotion's accumulator reads) comes in between.
      // The operand fences pin the registers the wgmma reads (fragment, scale-d) before the fence, so the
      // compiler cannot sink their definitions past it. Per group each wgmma is committed right after it, in
      // straight-line code: a commit inside the group-end branch made ptxas insert fences itself (info C7519).
      uint32_t a[kBK / 32][4];
      auto fence_before_wgmma = [&](uint32_t(&f)[4]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) cute::warpgroup_fence_operand(f[i]);
        cute::warpgroup_fence_operand(scale_d);
        cute::warpgroup_arrive();
      };
      if (!kGrouped) {
#pragma unroll
        for (int kk = 0; kk + 1 < kBK / 32; ++kk) {
          load_frag(kk, a[kk]);
#pragma unroll
          for (int i = 0; i < 4; ++i) cute::warpgroup_fence_operand(a[kk][i]);
        }
        load_frag(kBK / 32 - 1, a[kBK / 32 - 1]);
        fence_before_wgmma(a[kBK / 32 - 1]);
      }
      const uint64_t desc = sw128_desc(w_tile + C::kWBytes);
#pragma unroll
      for (int kk = 0; kk < kBK / 32; ++kk) {
        if (kGrouped) {
          load_frag(kk, a[kk]);
          fence_before_wgmma(a[kk]);
        }
        gmma<Op, kNJ>(a[kk], desc + ((kk * 32) >> 4), acc, static_cast<cute::SM90::GMMA::ScaleOut>(scale_d), seq);
        scale_d = 1;
        if (!kGrouped) continue;
        cute::warpgroup_commit_batch();
        if (--steps_left == 0 && grp < g.groups) {  // the group ends here (none in the padding)
          cute::warpgroup_wait<0>();
          fence_acc(acc);
          promote_group<kW8, kNJ>(g, acc, y, n0, m0, grp++, gs);
          steps_left = group_steps;
          scale_d = 0;
        }
      }
      if (kGrouped) {
        cute::warpgroup_wait<0>();
        if (lane == 0) Barrier::arrive(&empty[stage]);
      } else {
        cute::warpgroup_commit_batch();
        held = stage;  // released once its wgmmas are done (next stage, or after the loop)
      }
      if (++stage == C::kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
    if (!kGrouped) {
      cute::warpgroup_wait<0>();
      if (held >= 0 && lane == 0) Barrier::arrive(&empty[held]);
    }
    fence_acc(acc);
    finish_tile<kW8, kGrouped, kNJ>(g, acc, y, n0, m0);
  }
#else
  __trap();  // built without sm_90a (wgmma, TMA): fail loudly rather than return garbage
#endif
}

// Persistent grid: one block per SM, at most one per tile, at most g.max_blocks when set.
inline int64_t sm90_blocks(int64_t tiles, int num_sms, int64_t max_blocks) {
  int64_t blocks = tiles < num_sms ? tiles : num_sms;
  if (max_blocks > 0 && max_blocks < blocks) blocks = max_blocks;
  return blocks;
}

template <bool kW8, bool kGrouped>
cudaError_t launch_sm90(const TcGemmArgs& g, const Device& dev, cudaStream_t stream) {
  using C = Sm90Config<kW8, kGrouped>;
  const int64_t tiles = ((g.m + C::kBM - 1) / C::kBM) * (tc_round_up(g.n, kTcRowBlock) / kTcRowBlock);
  CUtensorMap w_map, a_map;
  cudaError_t st = sm90_weight_map(g.w, g.n, g.kp, kW8, &w_map);  // encoded at prepack (tc_prepare_weight)
  if (st == cudaSuccess) st = cached_tma_2d(g.a8, g.m, g.kp, C::kBM, &a_map);
  static std::atomic<uint64_t> smem_set{0};
  if (st == cudaSuccess) st = set_smem_once(tc_gemm_sm90_kernel<kW8, kGrouped>, C::kSmem, dev.index, smem_set);
  if (st != cudaSuccess) return st;
  const int64_t blocks = sm90_blocks(tiles, dev.num_sms, g.max_blocks);
  tc_gemm_sm90_kernel<kW8, kGrouped>
      <<<static_cast<unsigned int>(blocks), C::kThreads, C::kSmem, stream>>>(w_map, a_map, g);
  return cudaGetLastError();
}

// One explicit instantiation per translation unit (gemm_sm90_*.cu).
#define QVGEN_TC_SM90_INSTANTIATE(W8, GROUPED) \
  template cudaError_t launch_sm90<W8, GROUPED>(const TcGemmArgs&, const Device&, cudaStream_t);

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
