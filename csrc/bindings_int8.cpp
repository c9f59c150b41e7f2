// qvgen_ext::int8_linear (= int8_quantize + int8_gemm): the deployed CPU linear layer on the 8-bit matrix
// engine.
//
//   x [M, K] --(one pass: per-token quantize, row sums, non-finite check)--> int8 a' [M, K]
//   codes [N, K] --(per column block: unpack to int8 w' in cache)--> w'
//   a' @ w'^T --(at::_int_mm: oneDNN s8 x s8 -> s32, AMX or AVX512-VNNI)--> int32 [M, N] per group
//   int32 --(one pass: format integer, scales, zero point, bias, cast, optional activation)--> out [M, N]
// Weights come prepacked by qvgen_kernels (w' = q_w - c_w as int8 [N, K], and group-major column sums
// and scales [G, N]); identities in qvgen/int8.h. Arguments are validated once, in Python, by the op
// registry; the checks here only guard the memory accesses of this function.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "check.h"
#include "qvgen/int8.h"

namespace qvgen {
namespace {

DType tag_of(at::ScalarType s) {
  return s == at::kHalf ? DType::kFloat16 : (s == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat32);
}

constexpr int64_t kTileRows = 2048, kTileBytes = 4 << 20;  // int32 products per engine call
// Unpacked int8 weights per column block: 4 MB (in L3) measured ahead of 0.5-2 MB at K = 8960 and M = 2048 (fewer,
// wider engine calls) and level with them at M = 16.
constexpr int64_t kScratchBytes = 4 << 20, kMinTileCols = 64;
// Up to this many multiply-adds the products are summed directly: an engine call costs a few microseconds.
constexpr int64_t kSmallMacs = 1 << 16;
// Up to this many rows the products run on AVX512-VNNI directly: measured level with oneDNN at M = 16-32 and
// ahead of it at M = 1 (1536 x 1536: 1.4x bf16), one thread.
constexpr int64_t kVnniRows = 16;
// 4-bit per-channel weights are unpacked in registers (no int8 copy written and read) up to kVnni4Rows rows, and up
// to kVnniRows rows while the activation rows stay in L1 (M x K <= kVnni4ActBytes) and the layer has at most
// kVnni4MaxCols weight rows. Measured from a cold cache, one thread, ms per call, in registers vs the int8 copy:
// M = 1 / 4, 1536 x 8960 0.26 / 0.43 vs 0.56 / 0.72, 8960 x 1536 0.42 / 0.72 vs 0.61 / 0.73; M = 16, 1536 x 1536
// 0.34-0.36 vs 0.34-0.48, but 1536 x 8960 1.61-1.67 vs 1.21-1.37 and 8960 x 1536 2.03-2.32 vs 1.28-1.56.
constexpr int64_t kVnni4Rows = 4, kVnni4ActBytes = 32 << 10, kVnni4MaxCols = 2048;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t grain(int64_t row_cost) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_cost)); }

// x [M, K] -> (a' int8 [M, k_gemm], s_x fp32 [M], r_g int32 [M, G], d int32 [M]); k_gemm >= K pads with 0.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> int8_quantize(const at::Tensor& x, int64_t a_bits,
                                                                         int64_t groups, int64_t k_gemm,
                                                                         const at::Tensor& clip_lo,
                                                                         const at::Tensor& clip_hi) {
  constexpr const char* op = "qvgen_ext::int8_quantize";
  QVGEN_CHECK_VALUE(x.dim() == 2 && groups >= 1 && x.size(1) % groups == 0 && k_gemm >= x.size(1) &&
                        (k_gemm == x.size(1) || groups == 1),
                    op, ": expected x [M, K] with G | K and k_gemm >= K (> K with one group only), got ", x.sizes(),
                    ", G=", groups, ", k_gemm=", k_gemm);
  const int64_t m = x.size(0), k = x.size(1);
  QVGEN_CHECK_VALUE(clip_lo.numel() == m || clip_lo.numel() == 1, op, ": clip_lo expected ", m, " or 1 values, got ",
                    clip_lo.numel());
  QVGEN_CHECK_VALUE(clip_hi.numel() == m || clip_hi.numel() == 1, op, ": clip_hi expected ", m, " or 1 values, got ",
                    clip_hi.numel());
  const auto opts = x.options();
  at::Tensor a = k_gemm == k ? at::empty({m, k}, opts.dtype(at::kChar)) : at::zeros({m, k_gemm}, opts.dtype(at::kChar));
  at::Tensor scale = at::empty({m}, opts.dtype(at::kFloat));
  at::Tensor rowsum = at::empty({m, groups}, opts.dtype(at::kInt));
  at::Tensor offset = at::empty({m}, opts.dtype(at::kInt));
  if (x.is_meta() || m == 0) return {a, scale, rowsum, offset};
  const at::Tensor xs = x.contiguous();
  const at::Tensor lo = clip_lo.to(at::kFloat).contiguous(), hi = clip_hi.to(at::kFloat).contiguous();
  std::vector<int32_t> nonfinite(static_cast<size_t>(m));  // host memory: cheaper than a tensor for small calls
  int8::QuantArgs q{xs.data_ptr(), tag_of(xs.scalar_type()), k, k_gemm, static_cast<int>(a_bits), groups,
                    lo.data_ptr<float>(), hi.data_ptr<float>(), lo.numel() == 1 ? 0 : 1, hi.numel() == 1 ? 0 : 1,
                    a.data_ptr<int8_t>(), scale.data_ptr<float>(), rowsum.data_ptr<int32_t>(),
                    offset.data_ptr<int32_t>(), nonfinite.data(), m};
  at::parallel_for(0, m, grain(k), [&](int64_t r0, int64_t r1) { int8::quantize_rows(q, r0, r1); });
  // The data checks of the op registry, folded into this op (no second read of x).
  const int32_t* nf = nonfinite.data();
  const float* plo = lo.data_ptr<float>();
  const float* phi = hi.data_ptr<float>();
  const float* ps = scale.data_ptr<float>();
  for (int64_t r = 0; r < m; ++r) {
    QVGEN_CHECK_VALUE(!nf[r], "lowbit_linear: argument 'x' expected finite values, got NaN or Inf in row ", r);
    // finite values beyond about 1.7e38 overflow the range hi - lo, so the scale (and the row's output) is not
    QVGEN_CHECK_VALUE(std::isfinite(ps[r]), "lowbit_linear: argument 'x' expected a per-token range (max - min, after"
                      " the clips) within float32, i.e. |values| below about 1.7e38, got an overflowing range in row ",
                      r);
  }
  for (int64_t r = 0; r < lo.numel(); ++r) {
    QVGEN_CHECK_VALUE(plo[r] > 0.0f && plo[r] <= 1.0f, "lowbit_linear: argument 'clip_lo' expected clip factors"
                      " in (0, 1], got ", plo[r], " at row ", r);
  }
  for (int64_t r = 0; r < hi.numel(); ++r) {
    QVGEN_CHECK_VALUE(phi[r] > 0.0f && phi[r] <= 1.0f, "lowbit_linear: argument 'clip_hi' expected clip factors"
                      " in (0, 1], got ", phi[r], " at row ", r);
  }
  return {a, scale, rowsum, offset};
}

// Columns of weights per engine call: the int8 operand of the column block (unpacked from the codes at rest) and
// the int32 products of one row tile both stay within a few MB of cache.
int64_t tile_cols(int64_t n, int64_t tm, int64_t k_gemm) {
  const int64_t budget = std::min(kTileBytes / (4 * tm), kScratchBytes / k_gemm);
  const int64_t cap = std::min<int64_t>(n, std::max<int64_t>(kMinTileCols, budget / 16 * 16));
  // The fewest blocks within the budget, of equal widths: a narrow last block runs the engine below its rate
  // (1024 x 1536 x 1536: 768 + 768 measured 8% ahead of 1024 + 512).
  return std::min<int64_t>(n, (ceil_div(n, ceil_div(n, cap)) + 15) / 16 * 16);
}

// The quantized activations of int8_quantize times the weights at rest -> out [M, N] of out_dtype.
at::Tensor int8_gemm(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& a_rowsum,
                     const at::Tensor& a_offset, const at::Tensor& w_packed, const at::Tensor& w_colsum,
                     const at::Tensor& w_scale, const at::Tensor& w_zero, const std::optional<at::Tensor>& bias,
                     int64_t w_bits, int64_t k, bool grouped, at::ScalarType out_dtype, int64_t activation) {
  constexpr const char* op = "qvgen_ext::int8_gemm";
  const int64_t m = a.size(0), k_gemm = a.size(1), n = w_packed.size(0), groups = w_colsum.size(0);
  QVGEN_CHECK_VALUE(w_bits == 3 || w_bits == 4 || w_bits == 8, op, ": expected w_bits 3, 4 or 8, got ", w_bits);
  QVGEN_CHECK_VALUE(activation == 0 || activation == 1, op, ": expected activation 0 (none) or 1 (GELU, tanh"
                    " approximation), got ", activation);
  // K = 1 runs as K = 2 with a zero column: oneDNN's s8 GEMM returns wrong sums for K = 1 and N > 1.
  QVGEN_CHECK_VALUE(a.dim() == 2 && w_packed.dim() == 2 && w_packed.scalar_type() == at::kByte &&
                        w_packed.size(1) == packed_width(k, static_cast<int>(w_bits)) &&
                        k_gemm == std::max<int64_t>(k, 2),
                    op, ": expected a [M, max(K, 2)] and uint8 w_packed [N, packed_width(K, w_bits)] with K=", k,
                    ", got ", a.sizes(), " and ", w_packed.sizes(), " ", w_packed.scalar_type());
  QVGEN_CHECK_VALUE(w_colsum.dim() == 2 && w_colsum.size(1) == n && groups >= 1 && k % groups == 0 &&
                        w_scale.numel() == groups * n && w_zero.numel() == groups * n &&
                        a_rowsum.numel() == m * groups && a_scale.numel() == m && a_offset.numel() == m,
                    op, ": expected w_colsum [G, N] with G | K, w_scale and w_zero of G * N values, a_rowsum [M, G],"
                    " a_scale and a_offset [M], got ", w_colsum.sizes(), ", ", w_scale.sizes(), ", ", w_zero.sizes(),
                    ", ", a_rowsum.sizes(), ", ", a_scale.sizes(), ", ", a_offset.sizes());
  at::Tensor out = at::empty({m, n}, a.options().dtype(out_dtype));
  if (a.is_meta() || m == 0 || n == 0) return out;
  const auto opts = a.options();
  const at::Tensor aq = a.contiguous(), wp = w_packed.contiguous();
  const at::Tensor as = a_scale.contiguous(), ar = a_rowsum.contiguous(), ao = a_offset.contiguous();
  const at::Tensor cs = w_colsum.contiguous(), ws = w_scale.contiguous(), wz = w_zero.contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const int64_t gs = k / groups, gs_gemm = k_gemm / groups;  // k_gemm > k only with one group
  // Output tiles of up to kTileRows rows x tn columns, column block by column block: each block's int8 weights
  // are unpacked once into a cache-sized buffer and serve every row tile; each engine call parallelises itself
  // (a call inside at::parallel_for would nest thread pools), and the epilogue runs over the tile while its
  // int32 products are still in cache (a whole [M, N] int32 buffer would go through DRAM). Few, large tiles
  // keep the number of parallel regions per call small: each is a barrier that a busy core delays.
  const int64_t tm = std::min<int64_t>(m, kTileRows), mt = ceil_div(m, tm);
  const int64_t tn = tile_cols(n, tm, k_gemm), nt = ceil_div(n, tn);
  const bool small = m * n * k_gemm <= kSmallMacs;
  // Few rows: the products with AVX512-VNNI on the unpacked block (u8 codes x s8 activations, c_w = 0), where
  // the engine would re-lay-out every weight block for a handful of rows.
  const bool vnni = !small && m <= kVnniRows && int8::vnni_active();
  const int w_offset = w_bits == 8 && !vnni ? 128 : 0;
  const bool with_partial = grouped && groups > 1;
  // The epilogue of one tile of int32 products: group g, rows [m0, m0 + rows), columns [n0, n0 + cols).
  auto epilogue = [&](const int32_t* acc_ptr, int64_t g, int64_t m0, int64_t rows, int64_t n0, int64_t cols,
                      int w_off, float* partial) {
    const int8::EpilogueArgs e{acc_ptr, as.data_ptr<float>(), ar.data_ptr<int32_t>(), ao.data_ptr<int32_t>(),
                               cs.data_ptr<int32_t>(), ws.data_ptr<float>(), wz.data_ptr<float>(),
                               b.defined() ? b.data_ptr<float>() : nullptr, n, groups, g, gs, m0, n0, n0 + cols, cols,
                               w_off, grouped, partial, out.data_ptr(), tag_of(out.scalar_type()),
                               static_cast<Activation>(activation)};
    at::parallel_for(m0, m0 + rows, grain(cols), [&](int64_t r0, int64_t r1) { int8::epilogue_rows(e, r0, r1); });
  };
  const bool codes_in_registers =
      m <= kVnni4Rows || (m * k_gemm <= kVnni4ActBytes && n <= kVnni4MaxCols);
  if (vnni && w_bits == 4 && groups == 1 && codes_in_registers) {
    // 4-bit codes unpacked in registers (no int8 copy of the weights): the activations permuted to the nibble
    // order once, all m rows against each pair of weight rows, then one epilogue over [m, n].
    const int64_t chunks = ceil_div(k_gemm, 64);
    at::Tensor a_perm = at::empty({m, chunks * 64}, opts.dtype(at::kChar));
    at::Tensor acc = at::empty({m, n}, opts.dtype(at::kInt));
    int8::permute_act4(aq.data_ptr<int8_t>(), k_gemm, m, k_gemm, a_perm.data_ptr<int8_t>(), chunks);
    const int8::Vnni4Args v{a_perm.data_ptr<int8_t>(), m, wp.data_ptr<uint8_t>(), wp.size(1), n, chunks,
                            acc.data_ptr<int32_t>()};
    at::parallel_for(0, ceil_div(n, 2), 8, [&](int64_t p0, int64_t p1) {
      int8::vnni4_gemm_cols(v, 2 * p0, std::min(n, 2 * p1));
    });
    epilogue(acc.data_ptr<int32_t>(), 0, 0, m, 0, n, 0, nullptr);
    return out;
  }
  // Scratch: tensors where the engine writes (at::_int_mm_out takes tensors); for small problems this thread's
  // reused host buffers (a tensor allocation costs about what a small problem's products do).
  at::Tensor acc_buf, w_buf, part_buf;
  int32_t* acc_ptr;
  int8_t* w_ptr;
  float* part_ptr = nullptr;
  if (small) {
    thread_local std::vector<int32_t> acc_v;
    thread_local std::vector<int8_t> w_v;
    thread_local std::vector<float> part_v;
    acc_v.resize(tm * tn);
    w_v.resize(tn * k_gemm);
    part_v.resize(with_partial ? tm * tn : 0);
    acc_ptr = acc_v.data(), w_ptr = w_v.data(), part_ptr = with_partial ? part_v.data() : nullptr;
  } else {
    acc_buf = at::empty({tm * tn}, opts.dtype(at::kInt));
    w_buf = at::empty({tn, k_gemm}, opts.dtype(at::kChar));
    part_buf = with_partial ? at::empty({tm * tn}, opts.dtype(at::kFloat)) : at::Tensor();
    acc_ptr = acc_buf.data_ptr<int32_t>(), w_ptr = w_buf.data_ptr<int8_t>();
    part_ptr = with_partial ? part_buf.data_ptr<float>() : nullptr;
  }
  for (int64_t jt = 0; jt < nt; ++jt) {
    const int64_t n0 = jt * tn, cols = std::min(tn, n - n0);
    const int8::UnpackArgs u{wp.data_ptr<uint8_t>() + n0 * wp.size(1), wp.size(1), static_cast<int>(w_bits), k, w_ptr,
                             k_gemm, vnni, n - n0};
    at::parallel_for(0, cols, grain(k_gemm), [&](int64_t r0, int64_t r1) { int8::unpack_weight_rows(u, r0, r1); });
    for (int64_t it = 0; it < mt; ++it) {
      const int64_t m0 = it * tm, rows = std::min(tm, m - m0);
      for (int64_t g = 0; g < groups; ++g) {
        if (small) {  // the products directly, no engine call
          const int8::SmallGemmArgs sg{aq.data_ptr<int8_t>() + m0 * k_gemm + g * gs_gemm, k_gemm, w_ptr + g * gs_gemm,
                                       k_gemm, acc_ptr, cols, cols, gs_gemm};
          int8::small_gemm_rows(sg, 0, rows);
        } else if (vnni) {
          at::parallel_for(0, cols, 16, [&](int64_t c0, int64_t c1) {
            const int8::SmallGemmArgs sg{aq.data_ptr<int8_t>() + m0 * k_gemm + g * gs_gemm, k_gemm,
                                         w_ptr + c0 * k_gemm + g * gs_gemm, k_gemm, acc_ptr + c0, cols, c1 - c0, gs_gemm};
            int8::vnni_gemm_rows(sg, 0, rows);
          });
        } else {
          at::Tensor acc = acc_buf.narrow(0, 0, rows * cols).view({rows, cols});
          at::_int_mm_out(acc, aq.narrow(0, m0, rows).narrow(1, g * gs_gemm, gs_gemm),
                          w_buf.narrow(0, 0, cols).narrow(1, g * gs_gemm, gs_gemm).t());
        }
        epilogue(acc_ptr, g, m0, rows, n0, cols, w_offset, part_ptr);
      }
    }
  }
  return out;
}

// Test hook: the int8 operand w' = q - c_w [N, k_out] (columns past K zero) unpacked from the codes at rest.
at::Tensor int8_unpack_weight(const at::Tensor& w_packed, int64_t w_bits, int64_t k, int64_t k_out) {
  QVGEN_CHECK_VALUE((w_bits == 3 || w_bits == 4 || w_bits == 8) && k >= 1 && k_out >= k && w_packed.dim() == 2 &&
                        w_packed.scalar_type() == at::kByte &&
                        w_packed.size(1) == packed_width(k, static_cast<int>(w_bits)),
                    "qvgen_ext::int8_unpack_weight: expected uint8 w_packed [N, packed_width(K, w_bits)], w_bits in"
                    " (3, 4, 8), k_out >= K >= 1, got ", w_packed.sizes(), " ", w_packed.scalar_type(), ", w_bits=",
                    w_bits, ", K=", k, ", k_out=", k_out);
  at::Tensor out = at::empty({w_packed.size(0), k_out}, w_packed.options().dtype(at::kChar));
  if (w_packed.is_meta() || out.numel() == 0) return out;
  const at::Tensor wp = w_packed.contiguous();
  const int8::UnpackArgs u{wp.data_ptr<uint8_t>(), wp.size(1), static_cast<int>(w_bits), k, out.data_ptr<int8_t>(),
                           k_out, false, wp.size(0)};
  at::parallel_for(0, wp.size(0), grain(k_out), [&](int64_t r0, int64_t r1) { int8::unpack_weight_rows(u, r0, r1); });
  return out;
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_colsum,
                       const at::Tensor& w_scale, const at::Tensor& w_zero, const std::optional<at::Tensor>& bias,
                       int64_t w_bits, int64_t a_bits, bool grouped, const at::Tensor& clip_lo,
                       const at::Tensor& clip_hi, int64_t activation) {
  QVGEN_CHECK_VALUE(x.dim() == 2 && w_packed.dim() == 2 && w_colsum.dim() == 2, "qvgen_ext::int8_linear: expected x"
                    " [M, K], w_packed [N, packed_width(K, w_bits)], w_colsum [G, N], got ", x.sizes(), ", ",
                    w_packed.sizes(), ", ", w_colsum.sizes());
  const int64_t k_gemm = std::max<int64_t>(x.size(1), 2);
  const auto [a, scale, rowsum, offset] = int8_quantize(x, a_bits, w_colsum.size(0), k_gemm, clip_lo, clip_hi);
  return int8_gemm(a, scale, rowsum, offset, w_packed, w_colsum, w_scale, w_zero, bias, w_bits, x.size(1), grouped,
                   x.scalar_type(), activation);
}

// Test hook: run the portable code instead of the AVX-512 code (returns the previous setting).
bool int8_set_simd(bool enabled) { return int8::set_simd(enabled); }

}  // namespace
}  // namespace qvgen

TORCH_LIBRARY_FRAGMENT(qvgen_ext, m) {
  m.def("int8_quantize(Tensor x, int a_bits, int groups, int k_gemm, Tensor clip_lo, Tensor clip_hi)"
        " -> (Tensor a, Tensor scale, Tensor rowsum, Tensor offset)");
  m.def("int8_gemm(Tensor a, Tensor a_scale, Tensor a_rowsum, Tensor a_offset, Tensor w_packed, Tensor w_colsum,"
        " Tensor w_scale, Tensor w_zero, Tensor? bias, int w_bits, int k, bool grouped, ScalarType out_dtype,"
        " int activation=0) -> Tensor");
  m.def("int8_unpack_weight(Tensor w_packed, int w_bits, int k, int k_out) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor w_packed, Tensor w_colsum, Tensor w_scale, Tensor w_zero, Tensor? bias,"
        " int w_bits, int a_bits, bool grouped, Tensor clip_lo, Tensor clip_hi, int activation=0) -> Tensor");
  m.def("int8_set_simd(bool enabled) -> bool", &qvgen::int8_set_simd);
}

#define QVGEN_INT8_IMPLS(m)                         \
  m.impl("int8_quantize", &qvgen::int8_quantize); \
  m.impl("int8_gemm", &qvgen::int8_gemm);         \
  m.impl("int8_unpack_weight", &qvgen::int8_unpack_weight); \
  m.impl("int8_linear", &qvgen::int8_linear)

TORCH_LIBRARY_IMPL(qvgen_ext, CPU, m) { QVGEN_INT8_IMPLS(m); }
// int8_linear's fake (meta) implementation is registered from Python (qvgen_kernels/backends/cpu_int8.py): it is
// the op torch.compile traces, and it must take symbolic sizes, which the checks here (numel) cannot.
TORCH_LIBRARY_IMPL(qvgen_ext, Meta, m) {
  m.impl("int8_quantize", &qvgen::int8_quantize);
  m.impl("int8_gemm", &qvgen::int8_gemm);
  m.impl("int8_unpack_weight", &qvgen::int8_unpack_weight);
}
