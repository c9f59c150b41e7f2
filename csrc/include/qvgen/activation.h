// Activations fused into the CPU int8 epilogue (applied to the layer's output after it is rounded to the
// output dtype, so a fused layer equals "linear, then the activation on its stored output" up to the
// activation's own evaluation).
//
// GELU, tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3), evaluated as
// x / (1 + exp(-2u)): the same function (1 + tanh(u) = 2 / (1 + exp(-2u))) without the cancellation of
// 1 + tanh(u) for negative u. exp: t = n ln2 + r with n = round(t / ln2), |r| <= ln2 / 2 (Cody-Waite: ln2 in two
// parts, the high part with 9 trailing zero bits, so n ln2_hi is exact for |n| < 2^9), e^r by its Taylor
// series to r^7 (truncation below 0.1 ulp), scaled by 2^n with one correctly rounded ldexp. Every step is an
// IEEE-exact fp32 operation (fma, mul, add, div, ldexp, round to nearest even) in a fixed order, so the
// portable and AVX-512 code give the same bits.
#pragma once

#include <cmath>
#include <cstdint>

namespace qvgen {

enum class Activation : int { kNone = 0, kGeluTanh = 1 };

namespace act {

constexpr float kLog2e = 1.4426950408889634f;        // 1 / ln 2
constexpr float kLn2Hi = 0.693145751953125f;         // 0x3F317200
constexpr float kLn2Lo = 1.4286068203094173e-06f;    // ln 2 - kLn2Hi
constexpr float kExpLo = -104.0f, kExpHi = 89.0f;    // beyond these e^t rounds to 0 / overflows anyway
constexpr float kTaylor[8] = {1.0f, 1.0f, 0.5f, 1.6666666666666666e-01f, 4.1666666666666664e-02f,
                              8.3333333333333332e-03f, 1.3888888888888889e-03f, 1.9841269841269841e-04f};
constexpr float kGeluK = 0.044715f;
constexpr float kMinusTwoSqrt2OverPi = -1.5957691216057308f;  // -2 sqrt(2 / pi)

// maxps / minps semantics (the second operand when either is NaN), so that both codes clamp alike.
inline float max_ps(float a, float b) { return a > b ? a : b; }
inline float min_ps(float a, float b) { return a < b ? a : b; }

inline float exp_f32(float t) {
  t = min_ps(max_ps(t, kExpLo), kExpHi);
  const float n = std::nearbyint(t * kLog2e);  // default rounding mode: nearest even
  float r = std::fma(n, -kLn2Hi, t);
  r = std::fma(n, -kLn2Lo, r);
  float p = kTaylor[7];
  for (int i = 6; i >= 0; --i) p = std::fma(p, r, kTaylor[i]);
  return std::ldexp(p, static_cast<int>(n));
}

inline float gelu_tanh(float x) {
  const float p = std::fma(x * x, kGeluK, 1.0f);          // 1 + 0.044715 x^2
  const float t = (x * kMinusTwoSqrt2OverPi) * p;         // -2u
  return x / (1.0f + exp_f32(t));
}

inline float apply(Activation a, float x) { return a == Activation::kGeluTanh ? gelu_tanh(x) : x; }

}  // namespace act
}  // namespace qvgen
