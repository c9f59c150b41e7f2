// CPU packed low-bit GEMM (math in qvgen/kernels.h, epilogue in qvgen/quant.h). Writes fp32.
//
// Tiles of kTileM activation rows x kTileN weight rows are unpacked once into int16 buffers
// (a = q_x - z_x spans [-255, 255] at 8 bits, so int8 is too small); the inner dot product is a
// plain int16 x int16 -> int32 loop that the compiler vectorises.
#include <algorithm>
#include <vector>

#include "qvgen/kernels.h"
#include "qvgen/pack.h"
#include "qvgen/quant.h"

namespace qvgen {
namespace cpu {
namespace {

constexpr int64_t kTileM = 8;
constexpr int64_t kTileN = 32;

int32_t dot_i16(const int16_t* a, const int16_t* w, int64_t n) {
  int32_t acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<int32_t>(a[i]) * static_cast<int32_t>(w[i]);
  return acc;
}

int32_t sum_i16(const int16_t* a, int64_t n) {
  int32_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i];
  return s;
}

// Unpack one packed row of k codes to int16 (code - offset).
void unpack_row_i16(const uint8_t* row, int bits, int64_t k, int32_t offset, int16_t* dst) {
  uint8_t unit[kUnit];
  for (int64_t u = 0; u < num_units(k); ++u) {
    unpack_unit(row, bits, u, k, unit);
    const int64_t n = std::min<int64_t>(kUnit, k - kUnit * u);
    for (int64_t i = 0; i < n; ++i) dst[kUnit * u + i] = static_cast<int16_t>(unit[i] - offset);
  }
}

// Y[m, n] for one activation row (a, its group sums r) and one weight row (w).
float output_value(const GemmArgs& g, int64_t m, int64_t n, const int16_t* a, const int32_t* r,
                   const int16_t* w) {
  float y;
  if (!g.grouped) {
    y = channel_epilogue(g.a_scale[m], g.w_scale[n], g.w_zero[n], dot_i16(a, w, g.k), r[0]);
  } else {
    const int64_t gs = g.k / g.groups;
    float t = 0.0f;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const int64_t idx = n * g.groups + grp;
      t = group_accumulate(t, g.w_scale[idx], g.w_zero[idx], dot_i16(a + grp * gs, w + grp * gs, gs), r[grp]);
    }
    y = mul_rn(g.a_scale[m], t);
  }
  return g.bias != nullptr ? add_rn(y, g.bias[n]) : y;
}

}  // namespace

void lowbit_gemm_rows(const GemmArgs& g, int64_t m0, int64_t m1) {
  const int64_t k = g.k, groups = g.groups, gs = k / groups;
  const int64_t a_width = packed_width(k, g.a_bits), w_width = packed_width(k, g.w_bits);
  std::vector<int16_t> a(static_cast<size_t>(kTileM * k)), w(static_cast<size_t>(kTileN * k));
  std::vector<int32_t> r(static_cast<size_t>(kTileM * groups));
  float* out = static_cast<float*>(g.out);
  for (int64_t mt = m0; mt < m1; mt += kTileM) {
    const int64_t rows = std::min(kTileM, m1 - mt);
    for (int64_t i = 0; i < rows; ++i) {
      int16_t* ai = a.data() + i * k;
      unpack_row_i16(g.a_packed + (mt + i) * a_width, g.a_bits, k, g.a_zero[mt + i], ai);
      for (int64_t grp = 0; grp < groups; ++grp) {
        // Per channel the given row sum is the contract; per group it is recomputed.
        r[i * groups + grp] = g.grouped ? sum_i16(ai + grp * gs, gs) : g.a_rowsum[mt + i];
      }
    }
    for (int64_t nt = 0; nt < g.n; nt += kTileN) {
      const int64_t cols = std::min(kTileN, g.n - nt);
      for (int64_t j = 0; j < cols; ++j) {
        unpack_row_i16(g.w_packed + (nt + j) * w_width, g.w_bits, k, 0, w.data() + j * k);
      }
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          out[(mt + i) * g.n + nt + j] =
              output_value(g, mt + i, nt + j, a.data() + i * k, r.data() + i * groups, w.data() + j * k);
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace qvgen
