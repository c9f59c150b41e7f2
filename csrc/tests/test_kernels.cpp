// Torch-free checks of the CPU kernels on known vectors (run by CTest, see CMakeLists.txt).
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "qvgen/kernels.h"
#include "qvgen/pack.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

std::vector<uint8_t> pack(const std::vector<uint8_t>& codes, int bits) {
  const int64_t k = static_cast<int64_t>(codes.size());
  std::vector<uint8_t> out(static_cast<size_t>(qvgen::packed_width(k, bits)), 0xAA);
  qvgen::cpu::pack_rows(codes.data(), k, bits, out.data(), 0, 1);
  return out;
}

void test_pack_examples() {
  // The worked example of qvgen_kernels/format.py.
  expect(pack({5, 3, 7, 0, 1, 2, 6, 4}, 3) == std::vector<uint8_t>{0x3D, 0x29, 0xC5}, "3-bit example");
  // K = 3 at 3 bits: padded to 8 with code 0.
  expect(pack({7, 1, 4}, 3) == std::vector<uint8_t>{0x07 | (1 << 2) | (0 << 4), 0x00, 0x05}, "3-bit pad");
  expect(pack({1, 2, 3}, 4) == std::vector<uint8_t>{0x21, 0x03}, "4-bit low nibble first, odd K");
  expect(pack({0, 255, 17}, 8) == std::vector<uint8_t>{0, 255, 17}, "8-bit identity");
}

void test_roundtrip() {
  std::mt19937 rng(0);
  for (int bits : {3, 4, 8}) {
    for (int64_t k = 1; k <= 41; ++k) {
      std::vector<uint8_t> codes(static_cast<size_t>(2 * k));
      for (auto& c : codes) c = static_cast<uint8_t>(rng() % (qvgen::qmax(bits) + 1));
      std::vector<uint8_t> packed(static_cast<size_t>(2 * qvgen::packed_width(k, bits)));
      std::vector<uint8_t> back(codes.size());
      qvgen::cpu::pack_rows(codes.data(), k, bits, packed.data(), 0, 2);
      qvgen::cpu::unpack_rows(packed.data(), k, bits, back.data(), 0, 2);
      expect(back == codes, "pack/unpack round trip");
    }
  }
}

void test_quantize() {
  // 8 bits, range [-2.5, 252.5]: s = 1, z = round(2.5) = 2 (half to even); codes round(x) + z.
  const std::vector<float> x = {-2.5f, 0.5f, 1.5f, 252.5f};
  const float one = 1.0f;
  std::vector<uint8_t> packed(4);
  float scale = 0;
  int32_t zero = 0, rowsum = 0;
  qvgen::QuantArgs args{x.data(), qvgen::DType::kFloat32, 1, 4, 8, &one, &one, packed.data(), &scale, &zero, &rowsum};
  qvgen::cpu::quantize_per_token_rows(args, 0, 1);
  expect(scale == 1.0f && zero == 2, "quantize scale / zero");
  expect(packed == std::vector<uint8_t>{0, 2, 4, 254}, "quantize codes, round half to even");
  expect(rowsum == (0 - 2) + (2 - 2) + (4 - 2) + (254 - 2), "quantize row sum");
  // An all-zero row: s = ACT_EPS, every code z = 0.
  const std::vector<float> zeros(5, 0.0f);
  std::vector<uint8_t> packed4(3, 0xAA);
  qvgen::QuantArgs zargs{zeros.data(), qvgen::DType::kFloat32, 1, 5, 4, &one, &one, packed4.data(), &scale, &zero, &rowsum};
  qvgen::cpu::quantize_per_token_rows(zargs, 0, 1);
  expect(scale == qvgen::kActEps && zero == 0 && rowsum == 0, "all-zero row");
  expect(packed4 == std::vector<uint8_t>{0, 0, 0}, "all-zero row codes");
}

// A small GEMM against a direct evaluation of the format's formula: per channel (scales [N]) and
// grouped (scales [N, G], G = 1 or 2).
void test_gemm(int64_t groups, bool grouped) {
  const int64_t m = 3, n = 5, k = 14;
  const int a_bits = 4, w_bits = 3;
  std::mt19937 rng(1);
  std::vector<uint8_t> qa(m * k), qw(n * k);
  for (auto& c : qa) c = static_cast<uint8_t>(rng() % 16);
  for (auto& c : qw) c = static_cast<uint8_t>(rng() % 8);
  std::vector<float> sx = {0.5f, 0.25f, 2.0f}, sw(n * groups), zw(n * groups), bias = {1, -1, 0.5f, 0, 2};
  for (int64_t i = 0; i < n * groups; ++i) {
    sw[i] = 0.125f * static_cast<float>(1 + i % 3);
    zw[i] = 3.5f - static_cast<float>(i % 2);
  }
  std::vector<int32_t> za = {3, 8, 0}, rs(m);
  for (int64_t i = 0; i < m; ++i) {
    rs[i] = 0;
    for (int64_t j = 0; j < k; ++j) rs[i] += qa[i * k + j] - za[i];
  }
  std::vector<uint8_t> pa(m * qvgen::packed_width(k, a_bits)), pw(n * qvgen::packed_width(k, w_bits));
  qvgen::cpu::pack_rows(qa.data(), k, a_bits, pa.data(), 0, m);
  qvgen::cpu::pack_rows(qw.data(), k, w_bits, pw.data(), 0, n);
  std::vector<float> y(m * n);
  qvgen::GemmArgs g{pa.data(), sx.data(), za.data(), rs.data(), pw.data(), sw.data(), zw.data(), bias.data(),
                    m, n, k, groups, grouped, a_bits, w_bits, y.data(), qvgen::DType::kFloat32};
  qvgen::cpu::lowbit_gemm_rows(g, 0, m);
  const int64_t gs = k / groups;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float sum = 0;
      for (int64_t grp = 0; grp < groups; ++grp) {
        int32_t acc = 0, r = 0;
        for (int64_t t = grp * gs; t < (grp + 1) * gs; ++t) {
          acc += (qa[i * k + t] - za[i]) * qw[j * k + t];
          r += qa[i * k + t] - za[i];
        }
        const int64_t idx = j * groups + grp;
        const float corrected = static_cast<float>(acc) - zw[idx] * static_cast<float>(grouped ? r : rs[i]);
        sum = grouped ? sum + sw[idx] * corrected : (sx[i] * sw[idx]) * corrected;
      }
      const float want = (grouped ? sx[i] * sum : sum) + bias[j];
      expect(y[i * n + j] == want, grouped ? "gemm per group" : "gemm per channel");
    }
  }
}

}  // namespace

int main() {
  test_pack_examples();
  test_roundtrip();
  test_quantize();
  test_gemm(1, false);
  test_gemm(1, true);
  test_gemm(2, true);
  if (failures == 0) std::printf("all kernel checks passed\n");
  return failures == 0 ? 0 : 1;
}
