// Arguments of the qvgen kernels and the CPU entry points (torch-free).
//
// Notation: M rows (tokens), N output features, K input features, G weight groups along K
// (G = 1: per channel), b bits, P = 2^b - 1. Every tensor is dense row-major.
// CPU entry points work on a half-open row range so that the caller can split rows across threads.
#pragma once

#include <cstdint>

#include "qvgen/common.h"

namespace qvgen {

// quantize_per_token: x [M, K] -> packed [M, packed_width(K, b)] (padding code z), scale fp32 [M],
// zero int32 [M], rowsum int32 [M] = sum_k (q - z).
struct QuantArgs {
  const void* x;      // [M, K] of x_dtype (the CPU kernel reads fp32 only)
  DType x_dtype;
  int64_t m, k;
  int bits;
  const float* clip_lo;  // [M]
  const float* clip_hi;  // [M]
  uint8_t* packed;
  float* scale;
  int32_t* zero;
  int32_t* rowsum;
};

// lowbit_gemm: acc_g[m, n] = sum_{k in g} (q_x - z_x) * q_w exact in int32, r_g[m] the group's
// activation sum; epilogue (fp32, order in qvgen/quant.h):
//   per channel (grouped = false, scales [N]): Y = (s_x * s_w) * (acc - z_w * a_rowsum) + bias
//   per group (grouped = true, scales [N, G]): Y = s_x * sum_g s_w[g] * (acc_g - z_w[g] * r_g) + bias
// with r_g recomputed from the codes (G = 1 with [N, 1] scales is the grouped form).
struct GemmArgs {
  const uint8_t* a_packed;  // [M, packed_width(K, a_bits)]
  const float* a_scale;     // [M]
  const int32_t* a_zero;    // [M]
  const int32_t* a_rowsum;  // [M]
  const uint8_t* w_packed;  // [N, packed_width(K, w_bits)]
  const float* w_scale;     // [N, G]
  const float* w_zero;      // [N, G]
  const float* bias;        // [N] or nullptr
  int64_t m, n, k, groups;
  bool grouped;             // scales are [N, G] (even G = 1), not [N]
  int a_bits, w_bits;
  void* out;                // [M, N] of out_dtype (the CPU kernel writes fp32 only)
  DType out_dtype;
};

namespace cpu {

// codes [rows, k] uint8 -> packed [rows, packed_width(k, bits)], padding code 0.
void pack_rows(const uint8_t* codes, int64_t k, int bits, uint8_t* packed, int64_t r0, int64_t r1);

// packed [rows, packed_width(k, bits)] -> codes [rows, k].
void unpack_rows(const uint8_t* packed, int64_t k, int bits, uint8_t* codes, int64_t r0, int64_t r1);

// Rows [r0, r1) of quantize_per_token; x is fp32.
void quantize_per_token_rows(const QuantArgs& args, int64_t r0, int64_t r1);

// Rows [m0, m1) of lowbit_gemm; out is fp32.
void lowbit_gemm_rows(const GemmArgs& args, int64_t m0, int64_t m1);

}  // namespace cpu
}  // namespace qvgen
