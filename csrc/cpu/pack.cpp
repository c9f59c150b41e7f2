// CPU pack / unpack (layout in qvgen/pack.h).
#include <algorithm>

#include "qvgen/kernels.h"
#include "qvgen/pack.h"

namespace qvgen {
namespace cpu {

void pack_rows(const uint8_t* codes, int64_t k, int bits, uint8_t* packed, int64_t r0, int64_t r1) {
  const int64_t width = packed_width(k, bits);
  const int64_t units = num_units(k);
  uint8_t unit[kUnit];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* src = codes + r * k;
    uint8_t* dst = packed + r * width;
    for (int64_t u = 0; u < units; ++u) {
      load_unit_codes(src, u, k, /*pad=*/0, unit);
      pack_unit(unit, bits, u, k, dst);
    }
  }
}

void unpack_rows(const uint8_t* packed, int64_t k, int bits, uint8_t* codes, int64_t r0, int64_t r1) {
  const int64_t width = packed_width(k, bits);
  const int64_t units = num_units(k);
  uint8_t unit[kUnit];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* src = packed + r * width;
    uint8_t* dst = codes + r * k;
    for (int64_t u = 0; u < units; ++u) {
      unpack_unit(src, bits, u, k, unit);
      const int64_t n = std::min<int64_t>(kUnit, k - kUnit * u);
      std::copy(unit, unit + n, dst + kUnit * u);
    }
  }
}

}  // namespace cpu
}  // namespace qvgen
