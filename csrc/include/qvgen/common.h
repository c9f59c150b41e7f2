// Shared definitions of the qvgen low-bit format for the C++/CUDA kernels (torch-free).
//
// Mirrors qvgen_kernels/format.py bit for bit: codes q in [0, P], P = 2^b - 1, b in {3, 4, 8};
// packing geometry; the activation scale floor ACT_EPS. Float helpers force IEEE round-to-nearest
// operations on the device so that nvcc cannot contract a*b+c into an FMA (the reference rounds
// every product and sum separately).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define QVGEN_HD __host__ __device__ __forceinline__
#else
#define QVGEN_HD inline
#endif

namespace qvgen {

// fp32 value of format.ACT_EPS (torch clamps an fp32 tensor with the scalar cast to fp32).
constexpr float kActEps = 1e-8f;

// Element types the kernels read or write, as plain tags (no torch dependency).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

QVGEN_HD bool is_packed_bits(int bits) { return bits == 3 || bits == 4 || bits == 8; }

// Largest code P = 2^b - 1.
QVGEN_HD int qmax(int bits) { return (1 << bits) - 1; }

// Codes are handled in units of 8: a unit is the smallest whole number of bytes for every width
// (8 bytes at 8 bits, 4 at 4 bits, 3 at 3 bits), so units can be packed independently.
constexpr int kUnit = 8;

QVGEN_HD int64_t num_units(int64_t k) { return (k + kUnit - 1) / kUnit; }

QVGEN_HD int pack_factor(int bits) { return bits == 8 ? 1 : (bits == 4 ? 2 : 8); }

QVGEN_HD int64_t padded_k(int64_t k, int bits) {
  const int f = pack_factor(bits);
  return (k + f - 1) / f * f;
}

// Bytes per row of k codes in the checkpoint layout.
QVGEN_HD int64_t packed_width(int64_t k, int bits) { return padded_k(k, bits) * bits / 8; }

QVGEN_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

QVGEN_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

QVGEN_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

QVGEN_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Round half to even (torch.round). On the host this relies on the default FE_TONEAREST mode.
QVGEN_HD float round_half_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  return std::nearbyint(v);
#endif
}

QVGEN_HD float clamp_code(float v, float p) { return fminf(fmaxf(v, 0.0f), p); }

}  // namespace qvgen
