// Tensor-core GEMM of the CUDA extension (torch-free): operands, layouts and launchers.
//
// Both operands are the load-time layouts of qvgen_kernels/triton/layout.py, shared with the Triton path:
//   weights, 3/4 bits: uint8 [NP / 2, KP], byte[64 p + i, k] = q[128 p + i, k] | q[128 p + 64 + i, k] << 4
//   weights, 8 bits:   int8 [NP, KP] = q - 128
//   activations:       int8 a8 [M, KP] = q - z (3/4 bits) or q - 128 (8 bits), padding columns 0
// with NP = N rounded up to 128 and KP = K rounded up to 128; padding rows and columns hold 0. The GEMM
// computes Y^T = W . a8^T: the weight is the register operand of the 8-bit MMA (u8 codes, unpacked with two
// bitwise ops), the activation tile the shared-memory operand. A block owns 128 weight rows (the two
// nibbles of 64 byte rows) x BM tokens.
//
// Epilogue (layout.py for the integer identity; fp32 order of qvgen/quant.h), per group g of the
// gs = K / G columns with S = a_sums[g, m] (the sum of a8 over the group's columns), c = 128 for 8-bit
// weights (else 0), e = 128 - z_x for 8-bit activations (else 0):
//   acc = dot(a8, w8) + c S + e colsum[n, g]        r = S + e gs
//   per channel (G = 1): Y = (s_x s_w) (float(acc) - z_w float(r)) + bias
//   per group:           t += s_w[g] (float(acc_g) - z_w[g] float(r_g));  Y = s_x t + bias
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "qvgen/common.h"
#include "qvgen/tc_tiles.h"

namespace qvgen {

constexpr int kTcRowBlock = 128;  // weight rows per nibble block (layout.py ROW_BLOCK)
constexpr int kTcKAlign = 128;    // K padding of both operands (layout.py K_ALIGN)
constexpr int kTcMinGroup = 32;   // smallest weight group (columns) the GEMM takes

QVGEN_HD int64_t tc_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Per-token vectors hold MP = tc_token_rows(M) entries (qvgen/tc_tiles.h: a multiple of every token tile).

// tc_quantize: x [M, K] -> a8 int8 [M, KP], scale fp32 [MP], zero int32 [MP], sums int32 [G, MP] (group-major:
// the sum of a8 over each group of K / G columns; G = 1: the row sum). Entries past M are not written; the GEMM
// reads them for token rows it never stores, so a tile needs no bounds checks. Formula and order: quant.h.
struct TcQuantArgs {
  const void* x;  // [M, K] of x_dtype, row stride x_stride (elements), unit stride along K
  DType x_dtype;
  int64_t m, mp, k, kp, x_stride, groups;
  int bits;
  const float* clip_lo;  // [M]
  const float* clip_hi;  // [M]
  int8_t* a8;
  float* scale;
  int32_t* zero;
  int32_t* sums;
};

struct TcGemmArgs {
  const int8_t* a8;        // [M, KP]
  const float* a_scale;    // [MP]
  const int32_t* a_zero;   // [MP]
  const int32_t* a_sums;   // [G, MP]
  const void* w;           // layout above
  const int32_t* colsum;   // [N, G] sums of the weight codes q per group
  const float* w_scale;    // [N, G]
  const float* w_zero;     // [N, G]
  const float* bias;       // [N] fp32 or nullptr
  void* out;               // [M, N] of out_dtype
  DType out_dtype;
  int64_t m, mp, n, k, kp, groups;
  int w_bits, a_bits;
  // Caps the persistent sm_90a grid (0: one block per SM): fewer blocks walk more tiles each, so tests can
  // reach the multi-tile path and several laps of the stage ring at small shapes. mma.sync: one block per tile.
  int64_t max_blocks;
};

// Which kernel tc_gemm runs.
enum class TcKernel : int {
  kAuto = 0,   // wgmma on sm_90 (when compiled for sm_90a), mma.sync otherwise
  kSm80 = 80,  // mma.sync m16n8k32 + cp.async (sm_80 and newer)
  kSm90 = 90,  // wgmma + TMA + mbarrier, persistent (sm_90a)
};

namespace cuda {

cudaError_t tc_quantize(const TcQuantArgs& args, cudaStream_t stream);

// Returns cudaErrorInvalidDeviceFunction when the requested kernel is not built for the current device.
// Device attributes, kernel attributes and TMA descriptors are set up once and cached (tma.h).
cudaError_t tc_gemm(const TcGemmArgs& args, TcKernel kernel, cudaStream_t stream);

// At prepack time: encodes and caches the TMA descriptor of a prepacked weight (layout above, on the current
// device) when the device runs the sm_90a kernel, so tc_gemm finds it instead of encoding it per call.
cudaError_t tc_prepare_weight(const void* w, int64_t n, int64_t kp, int w_bits);

}  // namespace cuda
}  // namespace qvgen
