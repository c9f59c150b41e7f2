// Token tiles of the tensor-core GEMMs and the padding of the per-token vectors they read (torch- and
// CUDA-free, so host tests can check the arithmetic).
//
// A tile reads the per-token terms (a_scale / a_zero / a_sums, qvgen/tc.h) of all its kBM tokens, also those
// past M that it never stores, without bounds checks. Those vectors therefore hold MP = tc_token_rows(M)
// entries, M rounded up to a multiple of every token tile: every tile's last row is below MP.
#pragma once

#include <cstdint>

namespace qvgen {

// Tokens per tile: mma.sync (sm80.cuh) and wgmma (sm90.cuh), per channel and per group.
constexpr int kTcSm80TileM = 128;
constexpr int kTcSm80GroupedTileM = 64;
constexpr int kTcSm90TileM = 256;
constexpr int kTcSm90GroupedTileM = 96;  // per group the fp32 sums need registers too

constexpr int64_t tc_gcd(int64_t a, int64_t b) { return b == 0 ? a : tc_gcd(b, a % b); }
constexpr int64_t tc_lcm(int64_t a, int64_t b) { return a / tc_gcd(a, b) * b; }

// The padding unit of the per-token vectors: the least common multiple of every token tile (768).
constexpr int64_t kTcTokenAlign =
    tc_lcm(tc_lcm(kTcSm80TileM, kTcSm80GroupedTileM), tc_lcm(kTcSm90TileM, kTcSm90GroupedTileM));

constexpr int64_t tc_token_rows(int64_t m) { return (m + kTcTokenAlign - 1) / kTcTokenAlign * kTcTokenAlign; }

// Rows a kernel with token tile tile_m touches for M tokens: whole tiles.
constexpr int64_t tc_tile_rows(int64_t m, int64_t tile_m) { return (m + tile_m - 1) / tile_m * tile_m; }

// Compile-time proof over M = 1 .. limit that no tile reads past the padding.
constexpr bool tc_padding_covers_tiles(int64_t limit) {
  for (int64_t m = 1; m <= limit; ++m) {
    const int64_t mp = tc_token_rows(m);
    if (tc_tile_rows(m, kTcSm80TileM) > mp || tc_tile_rows(m, kTcSm80GroupedTileM) > mp ||
        tc_tile_rows(m, kTcSm90TileM) > mp || tc_tile_rows(m, kTcSm90GroupedTileM) > mp) {
      return false;
    }
  }
  return true;
}
static_assert(tc_padding_covers_tiles(4 * kTcTokenAlign), "per-token padding shorter than a token tile");

}  // namespace qvgen
