// Per-token activation quantization and the GEMM epilogue, as scalar functions (torch-free,
// host and device). The operation order is the one of qvgen_kernels/format.py:
//   lo = c_lo * min(0, min_k x)     hi = c_hi * max(0, max_k x)
//   s  = max((hi - lo) / P, ACT_EPS)
//   z  = clamp(round(-lo / s), 0, P)
//   q  = clamp(round(x / s) + z, 0, P)
// all in fp32 with IEEE division and round half to even.
#pragma once

#include "qvgen/common.h"

namespace qvgen {

struct ActQParams {
  float scale;
  float zero;  // an integer value in [0, P], kept in fp32 for the code formula
};

QVGEN_HD ActQParams act_qparams(float row_min, float row_max, float clip_lo, float clip_hi, int bits) {
  const float p = static_cast<float>(qmax(bits));
  const float lo = mul_rn(clip_lo, fminf(row_min, 0.0f));
  const float hi = mul_rn(clip_hi, fmaxf(row_max, 0.0f));
  const float scale = fmaxf(div_rn(sub_rn(hi, lo), p), kActEps);
  const float zero = clamp_code(round_half_even(div_rn(-lo, scale)), p);
  return {scale, zero};
}

QVGEN_HD uint8_t act_code(float x, ActQParams qp, int bits) {
  const float p = static_cast<float>(qmax(bits));
  return static_cast<uint8_t>(clamp_code(add_rn(round_half_even(div_rn(x, qp.scale)), qp.zero), p));
}

// The GEMM epilogue, fp32, in the reference's order (qvgen_kernels/reference/gemm.py):
//   per channel (w_scale [N]):   Y = (s_x * s_w) * (float(acc) - z_w * float(r)) + bias
//   per group (w_scale [N, G]):  t = 0; t = t + s_w[g] * (float(acc_g) - z_w[g] * float(r_g)) for
//                                g = 0, 1, ...;  Y = s_x * t + bias
QVGEN_HD float zero_corrected(float z_w, int32_t acc, int32_t r) {
  return sub_rn(static_cast<float>(acc), mul_rn(z_w, static_cast<float>(r)));
}

QVGEN_HD float channel_epilogue(float s_x, float s_w, float z_w, int32_t acc, int32_t r) {
  return mul_rn(mul_rn(s_x, s_w), zero_corrected(z_w, acc, r));
}

// Adds group g's share to the running sum t (start from t = 0).
QVGEN_HD float group_accumulate(float t, float s_w, float z_w, int32_t acc, int32_t r) {
  return add_rn(t, mul_rn(s_w, zero_corrected(z_w, acc, r)));
}

}  // namespace qvgen
