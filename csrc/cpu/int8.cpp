// CPU int8 path: per-token quantization to int8 operands and the fused GEMM epilogue (identities in
// qvgen/int8.h). Two implementations with identical results: AVX-512 (chosen at run time when the
// CPU has it) and portable scalar code. Both use only IEEE-exact operations (division, round to
// nearest even, int<->float conversions of exact integers) in the reference's order, so they agree
// bit for bit with each other and with qvgen_kernels/reference.
#include "qvgen/int8.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "qvgen/pack.h"
#include "qvgen/quant.h"

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12's AVX-512 headers build "undefined" vectors by self-initialisation, which -Wall reports
// as uninitialised use inside every inlined intrinsic: a known false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define QVGEN_X86_SIMD 1
#define QVGEN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#endif

namespace qvgen {
namespace int8 {
namespace {

// ---- portable code ------------------------------------------------------------------------------

float load_scalar(const void* x, DType dt, int64_t i) {
  switch (dt) {
    case DType::kBFloat16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(x)[i]) << 16;
      float v;
      std::memcpy(&v, &bits, sizeof v);
      return v;
    }
    case DType::kFloat16:
      return static_cast<float>(static_cast<const _Float16*>(x)[i]);
    default:
      return static_cast<const float*>(x)[i];
  }
}

bool is_nonfinite(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & 0x7f800000u) == 0x7f800000u;
}

// torch's fp32 -> bf16 conversion: round to nearest even, NaN -> 0x7FC0.
uint16_t to_bf16_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if (v != v) return 0x7FC0;
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

void store_scalar(void* out, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::kBFloat16:
      static_cast<uint16_t*>(out)[i] = to_bf16_bits(v);
      break;
    case DType::kFloat16:
      static_cast<_Float16*>(out)[i] = static_cast<_Float16>(v);
      break;
    default:
      static_cast<float*>(out)[i] = v;
  }
}

// y as stored in dtype dt, back in fp32 (the value an activation applied after the layer would read).
float round_to_dtype(float y, DType dt) {
  if (dt == DType::kFloat32) return y;
  float slot = 0.0f;  // wide enough for any dtype's store (only its first 2 bytes are used here)
  store_scalar(&slot, dt, 0, y);
  return load_scalar(&slot, dt, 0);
}

int act_offset(int bits) { return bits == 8 ? 128 : -1; }  // -1: c_a = z_x

void quantize_row_scalar(const QuantArgs& g, int64_t r) {
  const int64_t k = g.k, base = r * k, gs = k / g.groups;
  int8_t* a_row = g.a + r * g.a_stride;
  float mn = 0.0f, mx = 0.0f;  // the range always contains 0 (format.py)
  int32_t bad = 0;
  for (int64_t i = 0; i < k; ++i) {
    const float v = load_scalar(g.x, g.x_dtype, base + i);
    bad |= is_nonfinite(v);
    mn = std::min(mn, v);
    mx = std::max(mx, v);
  }
  const ActQParams qp = act_qparams(mn, mx, g.clip_lo[r * g.lo_stride], g.clip_hi[r * g.hi_stride], g.bits);
  const int32_t z = static_cast<int32_t>(qp.zero);
  const int32_t ca = act_offset(g.bits) < 0 ? z : act_offset(g.bits);
  for (int64_t grp = 0; grp < g.groups; ++grp) {
    int32_t sum = 0;
    for (int64_t i = grp * gs; i < (grp + 1) * gs; ++i) {
      const int32_t q = act_code(load_scalar(g.x, g.x_dtype, base + i), qp, g.bits);
      a_row[i] = static_cast<int8_t>(q - ca);
      sum += q - z;
    }
    g.rowsum[r * g.groups + grp] = sum;
  }
  g.scale[r] = qp.scale;
  g.offset[r] = ca - z;
  g.nonfinite[r] = bad;
}

// The integer of format.py from the engine's product (wrapping arithmetic, exact: see int8.h).
int32_t format_integer(int32_t acc, uint32_t row_term, int32_t d, int32_t colsum) {
  return static_cast<int32_t>(static_cast<uint32_t>(acc) + row_term +
                              static_cast<uint32_t>(d) * static_cast<uint32_t>(colsum));
}

uint32_t row_term(const EpilogueArgs& e, int64_t r) {
  // c_w * S'_g with S'_g = r_g - |g| d.
  const uint32_t s = static_cast<uint32_t>(e.rowsum[r * e.groups + e.group]) -
                     static_cast<uint32_t>(e.group_size) * static_cast<uint32_t>(e.offset[r]);
  return static_cast<uint32_t>(e.w_offset) * s;
}

void epilogue_row_scalar(const EpilogueArgs& e, int64_t r) {
  const int64_t off = e.group * e.n, t_row = (r - e.row0) * e.tile_stride - e.n0;
  const uint32_t rt = row_term(e, r);
  const int32_t d = e.offset[r], rg = e.rowsum[r * e.groups + e.group];
  const float sx = e.a_scale[r];
  const bool last = e.group == e.groups - 1;
  for (int64_t j = e.n0; j < e.n1; ++j) {
    const int32_t ival = format_integer(e.acc[t_row + j], rt, d, e.colsum[off + j]);
    float y;
    if (!e.grouped) {
      y = channel_epilogue(sx, e.w_scale[j], e.w_zero[j], ival, rg);
    } else {
      const float t0 = e.group == 0 ? 0.0f : e.partial[t_row + j];
      const float t = group_accumulate(t0, e.w_scale[off + j], e.w_zero[off + j], ival, rg);
      if (!last) {
        e.partial[t_row + j] = t;
        continue;
      }
      y = mul_rn(sx, t);
    }
    if (e.bias != nullptr) y = add_rn(y, e.bias[j]);
    if (e.activation != Activation::kNone) y = act::apply(e.activation, round_to_dtype(y, e.out_dtype));
    store_scalar(e.out, e.out_dtype, r * e.n + j, y);
  }
}

// ---- weight unpack ------------------------------------------------------------------------------

void unpack_row_scalar(const UnpackArgs& u, int64_t r) {
  const uint8_t* row = u.packed + r * u.packed_stride;
  int8_t* out = u.out + r * u.out_stride;
  const int c_w = u.bits == 8 && !u.raw ? 128 : 0;
  uint8_t c[kUnit];
  for (int64_t unit = 0; unit < num_units(u.k); ++unit) {
    unpack_unit(row, u.bits, unit, u.k, c);
    for (int i = 0; i < kUnit && unit * kUnit + i < u.k; ++i) {
      out[unit * kUnit + i] = static_cast<int8_t>(static_cast<int>(c[i]) - c_w);
    }
  }
  for (int64_t i = u.k; i < u.out_stride; ++i) out[i] = 0;
}

// ---- AVX-512 ------------------------------------------------------------------------------------
#ifdef QVGEN_X86_SIMD

QVGEN_AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// 16 values of x from index i as fp32 (masked lanes read 0, inside the range that always holds 0).
QVGEN_AVX512 inline __m512 load16(const void* x, DType dt, int64_t i, __mmask16 m) {
  switch (dt) {
    case DType::kBFloat16: {
      const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(x) + i);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case DType::kFloat16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(x) + i));
    default:
      return _mm512_maskz_loadu_ps(m, static_cast<const float*>(x) + i);
  }
}

QVGEN_AVX512 void quantize_row_simd(const QuantArgs& g, int64_t r) {
  const int64_t k = g.k, base = r * k, gs = k / g.groups;
  int8_t* a_row = g.a + r * g.a_stride;
  __m512 vmn = _mm512_setzero_ps(), vmx = _mm512_setzero_ps();
  const __m512i exp_mask = _mm512_set1_epi32(0x7f800000);
  __mmask16 bad = 0;
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 m = tail_mask(k - i);
    const __m512 v = load16(g.x, g.x_dtype, base + i, m);
    const __m512i e = _mm512_and_si512(_mm512_castps_si512(v), exp_mask);
    bad |= _mm512_cmpeq_epi32_mask(e, exp_mask);
    vmn = _mm512_min_ps(vmn, v);
    vmx = _mm512_max_ps(vmx, v);
  }
  const ActQParams qp = act_qparams(_mm512_reduce_min_ps(vmn), _mm512_reduce_max_ps(vmx),
                                    g.clip_lo[r * g.lo_stride], g.clip_hi[r * g.hi_stride], g.bits);
  const int32_t z = static_cast<int32_t>(qp.zero);
  const int32_t ca = act_offset(g.bits) < 0 ? z : act_offset(g.bits);
  const __m512 vs = _mm512_set1_ps(qp.scale), vz = _mm512_set1_ps(qp.zero);
  const __m512 vp = _mm512_set1_ps(static_cast<float>(qmax(g.bits))), v0 = _mm512_setzero_ps();
  const __m512i vca = _mm512_set1_epi32(ca), vzi = _mm512_set1_epi32(z);
  const int64_t esize = g.x_dtype == DType::kFloat32 ? 4 : 2;
  const char* next = static_cast<const char*>(g.x) + (base + k) * esize;
  for (int64_t grp = 0; grp < g.groups; ++grp) {
    __m512i vsum = _mm512_setzero_si512();
    const int64_t end = (grp + 1) * gs;
    for (int64_t i = grp * gs; i < end; i += 16) {
      const __mmask16 m = tail_mask(end - i);
      // The next row is read from memory while this one is quantized from L1 (a row's second pass is
      // compute-bound, its first memory-bound: 1024 x 8960 bf16, one thread, 3.1 ms -> 1.35 ms).
      if (r + 1 < g.rows) _mm_prefetch(next + i * esize, _MM_HINT_T0);
      const __m512 v = load16(g.x, g.x_dtype, base + i, m);
      // act_code: clamp(round(x / s) + z, 0, P) with IEEE division and round half to even.
      __m512 q = _mm512_roundscale_ps(_mm512_div_ps(v, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, vz), v0), vp);
      const __m512i qi = _mm512_cvtps_epi32(q);
      // Narrowed in a register, then a plain masked store: the narrowing store to memory (vpmovdb m128) is
      // several times slower on AMD cores.
      _mm_mask_storeu_epi8(a_row + i, m, _mm512_cvtepi32_epi8(_mm512_sub_epi32(qi, vca)));
      vsum = _mm512_mask_add_epi32(vsum, m, vsum, _mm512_sub_epi32(qi, vzi));
    }
    g.rowsum[r * g.groups + grp] = _mm512_reduce_add_epi32(vsum);
  }
  g.scale[r] = qp.scale;
  g.offset[r] = ca - z;
  g.nonfinite[r] = bad != 0;
}

// torch's fp32 -> bf16 rounding (to_bf16_bits), 16 lanes: the bf16 bits in the low half of each 32-bit lane.
QVGEN_AVX512 inline __m512i bf16_bits16(__m512 y) {
  const __m512i b = _mm512_castps_si512(y);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
}

QVGEN_AVX512 inline void store16(void* out, DType dt, int64_t i, __m512 y, __mmask16 m) {
  switch (dt) {
    case DType::kBFloat16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + i, m, _mm512_cvtepi32_epi16(bf16_bits16(y)));
      break;
    case DType::kFloat16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + i, m,
                               _mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default:
      _mm512_mask_storeu_ps(static_cast<float*>(out) + i, m, y);
  }
}

// round_to_dtype, 16 lanes.
QVGEN_AVX512 inline __m512 round16(__m512 y, DType dt) {
  switch (dt) {
    case DType::kBFloat16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits16(y), 16));
    case DType::kFloat16:
      return _mm512_cvtph_ps(_mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    default:
      return y;
  }
}

// act::gelu_tanh, 16 lanes: the same operations in the same order (activation.h).
QVGEN_AVX512 inline __m512 gelu_tanh16(__m512 x) {
  using namespace act;
  const __m512 p2 = _mm512_fmadd_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(kGeluK), _mm512_set1_ps(1.0f));
  __m512 t = _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(kMinusTwoSqrt2OverPi)), p2);
  t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(kExpLo)), _mm512_set1_ps(kExpHi));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Hi), t);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kTaylor[7]);
  for (int i = 6; i >= 0; --i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kTaylor[i]));
  const __m512 e = _mm512_scalef_ps(p, n);
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

QVGEN_AVX512 void epilogue_row_simd(const EpilogueArgs& e, int64_t r) {
  const int64_t off = e.group * e.n, t_row = (r - e.row0) * e.tile_stride - e.n0;
  const int32_t rg = e.rowsum[r * e.groups + e.group];
  const __m512i vrt = _mm512_set1_epi32(static_cast<int32_t>(row_term(e, r)));
  const __m512i vd = _mm512_set1_epi32(e.offset[r]);
  const __m512 vsx = _mm512_set1_ps(e.a_scale[r]), vr = _mm512_set1_ps(static_cast<float>(rg));
  const bool last = e.group == e.groups - 1;
  for (int64_t j = e.n0; j < e.n1; j += 16) {
    const __mmask16 m = tail_mask(e.n1 - j);
    // Wrapping int32 adds and multiplies: exact (int8.h).
    __m512i ival = _mm512_maskz_loadu_epi32(m, e.acc + t_row + j);
    ival = _mm512_add_epi32(_mm512_add_epi32(ival, vrt),
                            _mm512_mullo_epi32(vd, _mm512_maskz_loadu_epi32(m, e.colsum + off + j)));
    const __m512 sw = _mm512_maskz_loadu_ps(m, e.w_scale + off + j);
    const __m512 zw = _mm512_maskz_loadu_ps(m, e.w_zero + off + j);
    const __m512 term = _mm512_sub_ps(_mm512_cvtepi32_ps(ival), _mm512_mul_ps(zw, vr));
    __m512 y;
    if (!e.grouped) {
      y = _mm512_mul_ps(_mm512_mul_ps(vsx, sw), term);
    } else {
      const __m512 t0 = e.group == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, e.partial + t_row + j);
      const __m512 t = _mm512_add_ps(t0, _mm512_mul_ps(sw, term));
      if (!last) {
        _mm512_mask_storeu_ps(e.partial + t_row + j, m, t);
        continue;
      }
      y = _mm512_mul_ps(vsx, t);
    }
    if (e.bias != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, e.bias + j));
    if (e.activation == Activation::kGeluTanh) y = gelu_tanh16(round16(y, e.out_dtype));
    store16(e.out, e.out_dtype, r * e.n + j, y, m);
  }
}

QVGEN_AVX512 inline __mmask64 tail_mask64(int64_t left) {
  return left >= 64 ? ~static_cast<__mmask64>(0) : (static_cast<__mmask64>(1) << left) - 1;
}

// 64 codes per step. 4 bits: 32 bytes widened to 16-bit lanes b, then (b & 0xF) | (b << 4 & 0xF00) puts the
// low nibble in the lane's first byte and the high nibble in its second: the codes in order. 3 bits: 16
// plane-0 bytes widened to 32-bit lanes b, b | b << 6 | b << 12 | b << 18 masked to 0x03030303 spreads the
// four 2-bit fields to the lane's four bytes; the 8 plane-1 bytes are the 64 high bits, a byte mask.
// 8 bits: q - 128 = q ^ 0x80 as int8.
constexpr int64_t kPrefetchRows = 4;

QVGEN_AVX512 void unpack_row_simd(const UnpackArgs& u, int64_t r) {
  const uint8_t* row = u.packed + r * u.packed_stride;
  int8_t* out = u.out + r * u.out_stride;
  const int64_t k = u.k, width = packed_width(k, u.bits);
  // The codes of a row a few rows ahead are requested from memory while this one is unpacked (a deployed
  // layer's codes come from DRAM: 16 x 1536 x 8960 W4A4 from a cold cache, one thread, 1.94 -> 1.08 ms per call).
  if (r + kPrefetchRows < u.rows) {
    const uint8_t* ahead = row + kPrefetchRows * u.packed_stride;
    for (int64_t b = 0; b < width; b += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + b), _MM_HINT_T0);
  }
  for (int64_t c = 0; c < k; c += 64) {
    const __mmask64 store = tail_mask64(k - c);
    __m512i v;
    if (u.bits == 8) {
      v = _mm512_maskz_loadu_epi8(store, row + c);
      if (!u.raw) v = _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80)));
    } else if (u.bits == 4) {
      const int64_t b0 = c / 2;
      const __m256i bytes = _mm256_maskz_loadu_epi8(static_cast<__mmask32>(tail_mask64(width - b0)), row + b0);
      const __m512i w = _mm512_cvtepu8_epi16(bytes);
      v = _mm512_or_si512(_mm512_and_si512(w, _mm512_set1_epi16(0x000F)),
                          _mm512_and_si512(_mm512_slli_epi16(w, 4), _mm512_set1_epi16(0x0F00)));
    } else {
      const int64_t k8 = num_units(k) * kUnit, p0 = c / 4, p1 = k8 / 4 + c / 8;
      const __m128i lo = _mm_maskz_loadu_epi8(static_cast<__mmask16>(tail_mask64(k8 / 4 - p0)), row + p0);
      const __m512i b = _mm512_cvtepu8_epi32(lo);
      const __m512i spread = _mm512_or_si512(_mm512_or_si512(b, _mm512_slli_epi32(b, 6)),
                                             _mm512_or_si512(_mm512_slli_epi32(b, 12), _mm512_slli_epi32(b, 18)));
      uint64_t hi = 0;
      std::memcpy(&hi, row + p1, static_cast<size_t>(std::min<int64_t>(8, width - p1)));
      v = _mm512_or_si512(_mm512_and_si512(spread, _mm512_set1_epi32(0x03030303)),
                          _mm512_maskz_set1_epi8(static_cast<__mmask64>(hi), 4));
    }
    _mm512_mask_storeu_epi8(out + c, store, v);
  }
  for (int64_t i = k; i < u.out_stride; ++i) out[i] = 0;
}

#define QVGEN_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

// Operands of the VNNI products, 64 columns (one chunk) at a time: int8 weight rows (unsigned codes) against
// int8 activation rows, the last chunk masked past k (zero bytes add nothing).
struct Int8Operands {
  const SmallGemmArgs& g;
  int64_t chunks() const { return (g.k + 63) / 64; }
  int64_t full_chunks() const { return g.k / 64; }
  template <bool TAIL>
  QVGEN_VNNI __attribute__((always_inline)) __m512i weights(int64_t j, int64_t ch) const { return load<TAIL>(g.w + j * g.ldw + ch * 64, ch); }
  template <bool TAIL>
  QVGEN_VNNI __attribute__((always_inline)) __m512i acts(int64_t r, int64_t ch) const { return load<TAIL>(g.a + r * g.lda + ch * 64, ch); }
  template <bool TAIL>
  QVGEN_VNNI __attribute__((always_inline)) __m512i load(const int8_t* p, int64_t ch) const {
    return TAIL ? _mm512_maskz_loadu_epi8(tail_mask64(g.k - ch * 64), p) : _mm512_loadu_si512(p);
  }
  void store(int64_t r, int64_t j, int32_t v) const { g.acc[r * g.ldc + j] = v; }
};

// 64 codes of one weight row: 32 bytes (masked past the row's width), low nibbles then high nibbles.
QVGEN_VNNI __attribute__((always_inline)) inline __m512i load_codes4(const uint8_t* row, int64_t byte0, int64_t width) {
  const int64_t left = width - byte0;
  const __mmask32 m = left >= 32 ? static_cast<__mmask32>(0xFFFFFFFFu) : static_cast<__mmask32>((1u << left) - 1u);
  const __m256i b = _mm256_maskz_loadu_epi8(m, row + byte0);
  const __m256i nib = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_and_si256(b, nib), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), nib);
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// 4-bit codes as they rest against activations permuted to the nibble order (whole chunks, zero past k).
struct Codes4Operands {
  const Vnni4Args& g;
  int64_t chunks() const { return g.chunks; }
  int64_t full_chunks() const { return g.chunks; }  // activations padded to whole chunks; codes masked by width
  template <bool TAIL>
  QVGEN_VNNI __attribute__((always_inline)) __m512i weights(int64_t j, int64_t ch) const {
    return load_codes4(g.codes + j * g.width, ch * 32, g.width);
  }
  template <bool TAIL>
  QVGEN_VNNI __attribute__((always_inline)) __m512i acts(int64_t r, int64_t ch) const {
    return _mm512_loadu_si512(g.a + (r * g.chunks + ch) * 64);
  }
  void store(int64_t r, int64_t j, int32_t v) const { g.acc[r * g.n + j] = v; }
};

// An R x C block of products: R activation rows against C weight rows, R * C accumulators in registers
// (compile-time sizes, so that none is spilled), one 64-column chunk per iteration.
template <bool TAIL, int R, int C, typename Ops>
QVGEN_VNNI __attribute__((always_inline)) inline void vnni_chunk(const Ops& ops, __m512i (&acc)[R][C], int64_t r0, int64_t j0, int64_t ch) {
  __m512i wv[C];
  for (int c = 0; c < C; ++c) wv[c] = ops.template weights<TAIL>(j0 + c, ch);
  for (int r = 0; r < R; ++r) {
    const __m512i av = ops.template acts<TAIL>(r0 + r, ch);
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], wv[c], av);
  }
}

template <int R, int C, typename Ops>
QVGEN_VNNI void vnni_block(const Ops& ops, int64_t r0, int64_t j0) {
  __m512i acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
  const int64_t full = ops.full_chunks();
  for (int64_t ch = 0; ch < full; ++ch) vnni_chunk<false>(ops, acc, r0, j0, ch);
  if (full < ops.chunks()) vnni_chunk<true>(ops, acc, r0, j0, full);  // masked: zero bytes add nothing
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) ops.store(r0 + r, j0 + c, _mm512_reduce_add_epi32(acc[r][c]));
}

// Activation rows [r0, r1) against C weight rows from j, RMAX rows at a time.
template <int RMAX, int C, typename Ops>
QVGEN_VNNI void vnni_col_block(const Ops& ops, int64_t r0, int64_t r1, int64_t j) {
  int64_t r = r0;
  for (; r + RMAX <= r1; r += RMAX) vnni_block<RMAX, C>(ops, r, j);
  switch (r1 - r) {
    case 7: if constexpr (RMAX > 7) vnni_block<7, C>(ops, r, j); break;
    case 6: if constexpr (RMAX > 6) vnni_block<6, C>(ops, r, j); break;
    case 5: if constexpr (RMAX > 5) vnni_block<5, C>(ops, r, j); break;
    case 4: if constexpr (RMAX > 4) vnni_block<4, C>(ops, r, j); break;
    case 3: vnni_block<3, C>(ops, r, j); break;
    case 2: vnni_block<2, C>(ops, r, j); break;
    case 1: vnni_block<1, C>(ops, r, j); break;
    default: break;
  }
}

// Weight rows outer, activation rows inner: each group of 4 weight rows is read from cache once per 4
// activation rows while it is in L1 (the few activation rows stay in L1/L2 throughout).
QVGEN_VNNI void vnni_rows(const SmallGemmArgs& g, int64_t r0, int64_t r1) {
  const Int8Operands ops{g};
  int64_t j = 0;
  for (; j + 4 <= g.n; j += 4) vnni_col_block<4, 4>(ops, r0, r1, j);
  for (; j < g.n; ++j) vnni_col_block<4, 1>(ops, r0, r1, j);
}

// Pairs of weight rows, each pair's codes read from memory once for all activation rows (up to 8 at a time: 16
// accumulators); the codes of the pair 4 pairs ahead are requested while this one is summed.
QVGEN_VNNI void vnni4_cols(const Vnni4Args& g, int64_t j0, int64_t j1) {
  constexpr int64_t kAhead = 8;
  const Codes4Operands ops{g};
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    if (j + kAhead + 2 <= g.n) {
      const uint8_t* ahead = g.codes + (j + kAhead) * g.width;
      for (int64_t b = 0; b < 2 * g.width; b += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + b), _MM_HINT_T0);
    }
    vnni_col_block<8, 2>(ops, 0, g.m, j);
  }
  if (j < j1) vnni_col_block<8, 1>(ops, 0, g.m, j);
}

// Per 64 columns: the even columns (the low 8 bits of each 16-bit pair) then the odd ones; zero past k.
QVGEN_VNNI void permute_act4_rows(const int8_t* a, int64_t lda, int64_t m, int64_t k, int8_t* out,
                                  int64_t chunks) {
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t c0 = ch * 64;
      const __m512i v = _mm512_maskz_loadu_epi8(tail_mask64(k - c0), a + r * lda + c0);
      const __m256i even = _mm512_cvtepi16_epi8(v);
      const __m256i odd = _mm512_cvtepi16_epi8(_mm512_srli_epi16(v, 8));
      _mm512_storeu_si512(out + r * chunks * 64 + c0,
                          _mm512_inserti64x4(_mm512_castsi256_si512(even), odd, 1));
    }
  }
}

bool cpu_has_vnni() { return __builtin_cpu_supports("avx512vnni"); }

bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#else
bool cpu_has_avx512() { return false; }
bool cpu_has_vnni() { return false; }
#endif

std::atomic<bool>& simd_flag() {
  static std::atomic<bool> flag{cpu_has_avx512()};
  return flag;
}

}  // namespace

bool set_simd(bool enabled) { return simd_flag().exchange(enabled && cpu_has_avx512()); }
bool simd_active() { return simd_flag().load(); }

namespace {

// Rows [r0, r1) through the AVX-512 code when it is active, else the portable code.
template <typename Args>
void for_rows(const Args& args, int64_t r0, int64_t r1, void (*simd)(const Args&, int64_t),
              void (*portable)(const Args&, int64_t)) {
  auto row = simd_active() && simd != nullptr ? simd : portable;
  for (int64_t r = r0; r < r1; ++r) row(args, r);
}

#ifdef QVGEN_X86_SIMD
constexpr auto kQuantizeSimd = &quantize_row_simd;
constexpr auto kEpilogueSimd = &epilogue_row_simd;
constexpr auto kUnpackSimd = &unpack_row_simd;
#else
constexpr void (*kQuantizeSimd)(const QuantArgs&, int64_t) = nullptr;
constexpr void (*kEpilogueSimd)(const EpilogueArgs&, int64_t) = nullptr;
constexpr void (*kUnpackSimd)(const UnpackArgs&, int64_t) = nullptr;
#endif

}  // namespace

void quantize_rows(const QuantArgs& args, int64_t r0, int64_t r1) {
  for_rows(args, r0, r1, kQuantizeSimd, &quantize_row_scalar);
}

void unpack_weight_rows(const UnpackArgs& args, int64_t r0, int64_t r1) {
  for_rows(args, r0, r1, kUnpackSimd, &unpack_row_scalar);
}

bool vnni_active() {
  static const bool has = cpu_has_avx512() && cpu_has_vnni();
  return has && simd_active();
}

bool vnni_gemm_rows(const SmallGemmArgs& g, int64_t r0, int64_t r1) {
#ifdef QVGEN_X86_SIMD
  if (!vnni_active()) return false;
  vnni_rows(g, r0, r1);
  return true;
#else
  (void)g, (void)r0, (void)r1;
  return false;
#endif
}

void permute_act4(const int8_t* a, int64_t lda, int64_t m, int64_t k, int8_t* out, int64_t chunks) {
#ifdef QVGEN_X86_SIMD
  permute_act4_rows(a, lda, m, k, out, chunks);
#else
  (void)a, (void)lda, (void)m, (void)k, (void)out, (void)chunks;
#endif
}

void vnni4_gemm_cols(const Vnni4Args& g, int64_t j0, int64_t j1) {
#ifdef QVGEN_X86_SIMD
  vnni4_cols(g, j0, j1);
#else
  (void)g, (void)j0, (void)j1;
#endif
}

void small_gemm_rows(const SmallGemmArgs& g, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* a = g.a + r * g.lda;
    for (int64_t j = 0; j < g.n; ++j) {
      const int8_t* w = g.w + j * g.ldw;
      int32_t sum = 0;  // |a w| <= 2^14 per term, K * 2^14 < 2^31 (the caller's accumulator bound)
      for (int64_t i = 0; i < g.k; ++i) sum += static_cast<int32_t>(a[i]) * static_cast<int32_t>(w[i]);
      g.acc[r * g.ldc + j] = sum;
    }
  }
}

void epilogue_rows(const EpilogueArgs& args, int64_t r0, int64_t r1) {
  for_rows(args, r0, r1, kEpilogueSimd, &epilogue_row_scalar);
}

}  // namespace int8
}  // namespace qvgen
