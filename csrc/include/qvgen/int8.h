// The CPU int8 path of the deployed linear layer (torch-free): per-token quantization straight to
// the int8 operand of an 8-bit matrix engine (AMX / AVX512-VNNI through oneDNN), and the fused
// epilogue that turns its int32 products into the format's output.
//
// Operands (exact integer identities; c_a, c_w are constant offsets that make both operands int8):
//   a'[m, k] = q_x - c_a          c_a = z_x (a_bits <= 7, so a' = a = q_x - z_x in [-127, 127])
//                                 c_a = 128 (a_bits = 8: q_x - z_x spans [-255, 255], too wide)
//   w'[n, k] = q_w - c_w          c_w = 0 (w_bits <= 7), 128 (w_bits = 8)
//   acc_g = sum_{k in g} a' w'    (int32, from the matrix engine)
//   d[m] = c_a - z_x              (0 when a_bits <= 7)
//   I_g[m, n] = sum_{k in g} (q_x - z_x) q_w = acc_g + c_w * S'_g[m] + d[m] * colsum_g[n]
// with S'_g = sum_{k in g} a' = r_g - |g| d and colsum_g[n] = sum_{k in g} q_w[n, k]. I_g is the
// integer of format.py; the caller guarantees K * P_a * P_w < 2^31, so I_g fits int32 and the sum,
// done in wrapping unsigned arithmetic, is exact even where a partial term would not fit.
// The epilogue then follows qvgen/quant.h (the reference's fp32 operation order) bit for bit.
#pragma once

#include <cstdint>

#include "qvgen/activation.h"
#include "qvgen/common.h"

namespace qvgen {
namespace int8 {

struct QuantArgs {
  const void* x;           // [M, K] of x_dtype
  DType x_dtype;
  int64_t k;
  int64_t a_stride;        // row stride of a (>= k; the columns past k are left as they are)
  int bits;                // activation bits (3, 4, 8)
  int64_t groups;          // G row sums per row (K / G columns each)
  const float* clip_lo;    // [M] or [1]
  const float* clip_hi;
  int64_t lo_stride, hi_stride;  // 1, or 0 for one clip factor for every row
  int8_t* a;               // [M, a_stride] out: a' = q_x - c_a
  float* scale;            // [M] out: s_x
  int32_t* rowsum;         // [M, G] out: r_g = sum_{k in g} (q_x - z_x)
  int32_t* offset;         // [M] out: d = c_a - z_x
  int32_t* nonfinite;      // [M] out: 1 where the row holds a NaN or an infinity
  int64_t rows = 0;        // M (rows < M are prefetched ahead of their turn)
};

// One tile of the epilogue: rows [r0, r1) (the caller's range) and columns [n0, n1) of the output.
// acc and partial are tile buffers: element (r, j) sits at (r - row0) * tile_stride + (j - n0).
struct EpilogueArgs {
  const int32_t* acc;      // acc_g of one group, tile buffer
  const float* a_scale;    // [M]
  const int32_t* rowsum;   // [M, G]
  const int32_t* offset;   // [M]
  const int32_t* colsum;   // [G, N] (group-major, so a row of N is contiguous)
  const float* w_scale;    // [G, N] (G = 1: per channel)
  const float* w_zero;     // [G, N]
  const float* bias;       // [N] or nullptr
  int64_t n, groups, group; // N, G and this call's group index
  int64_t group_size;
  int64_t row0, n0, n1, tile_stride;
  int w_offset;            // c_w
  bool grouped;            // scales [N, G] (group epilogue) rather than [N]
  float* partial;          // fp32 running group sum t, tile buffer (grouped only)
  void* out;               // [M, N] of out_dtype (written by the last group / per channel)
  DType out_dtype;
  Activation activation = Activation::kNone;  // applied to the output rounded to out_dtype (activation.h)
};

// The weight operand, unpacked just before its GEMM tile from the codes kept at rest (the checkpoint layout of
// qvgen/pack.h, which is also the CPU's deployed layout: no second copy of the weights). Row r reads
// packed + r * packed_stride (packed_width(k, bits) bytes) and writes w' = q - c_w at out + r * out_stride:
// int8 columns [0, k), zeros in [k, out_stride). With raw, q itself (the same bytes at 3/4 bits; at 8 bits
// the uint8 codes, which vnni_gemm_rows reads as unsigned).
struct UnpackArgs {
  const uint8_t* packed;
  int64_t packed_stride;
  int bits;                // weight bits (3, 4, 8)
  int64_t k;
  int8_t* out;
  int64_t out_stride;      // >= k
  bool raw = false;        // the codes q as they are (c_w = 0: unsigned bytes for the VNNI products)
  int64_t rows = 0;        // rows readable from packed (those ahead of row r are prefetched)
};

// acc[r, j] = sum_i a[r, i] * w[j, i] (int32, exact) for rows [r0, r1) and j < n: the GEMM of small problems,
// where the matrix engine's fixed cost per call exceeds the products.
struct SmallGemmArgs {
  const int8_t* a;
  int64_t lda;
  const int8_t* w;
  int64_t ldw;
  int32_t* acc;
  int64_t ldc, n, k;
};
void small_gemm_rows(const SmallGemmArgs& args, int64_t r0, int64_t r1);

// The same products with AVX512-VNNI for few rows (a GEMV-like shape, where the engine's per-call weight
// re-layout dominates): w holds unsigned codes (0..255, u8) and a signed int8, vpdpbusd sums u8 x s8 exactly.
// Rows [r0, r1) of a, all n rows of w. Returns false (nothing done) when the CPU lacks AVX512-VNNI or the
// vectorised code is turned off (set_simd).
bool vnni_gemm_rows(const SmallGemmArgs& args, int64_t r0, int64_t r1);
bool vnni_active();

// The same products on 4-bit codes as they rest (qvgen/pack.h: byte i of a row holds the codes of columns 2i, low
// nibble, and 2i + 1), unpacked in registers: no int8 copy of the weights is written or read. Per 64 columns the
// 32 bytes give the 32 low nibbles then the 32 high ones; the activations are permuted alike once per call
// (permute_act4: per 64 columns, the even columns then the odd ones, zero past k). Weight rows [j0, j1).
struct Vnni4Args {
  const int8_t* a;         // [m, chunks * 64] permuted activations
  int64_t m;
  const uint8_t* codes;    // [n, width] checkpoint codes
  int64_t width;           // bytes per row (packed_width(k, 4))
  int64_t n, chunks;       // weight rows; 64-column chunks
  int32_t* acc;            // [m, n]
};
// a [m, lda] int8 (columns [0, k) used) -> out [m, chunks * 64] in the order above. VNNI only (vnni_active()).
void permute_act4(const int8_t* a, int64_t lda, int64_t m, int64_t k, int8_t* out, int64_t chunks);
void vnni4_gemm_cols(const Vnni4Args& args, int64_t j0, int64_t j1);

// Rows [r0, r1) of the weight unpack.
void unpack_weight_rows(const UnpackArgs& args, int64_t r0, int64_t r1);

// Rows [r0, r1) of the quantization.
void quantize_rows(const QuantArgs& args, int64_t r0, int64_t r1);

// Rows [r0, r1) of the epilogue for group args.group (per channel: the only call).
void epilogue_rows(const EpilogueArgs& args, int64_t r0, int64_t r1);

// Whether the vectorised (AVX-512) code runs; it is chosen once from the CPU's features, and can be
// turned off to test the portable code on the same machine. Returns the previous setting.
bool set_simd(bool enabled);
bool simd_active();

}  // namespace int8
}  // namespace qvgen
