// Packing of unsigned codes into the checkpoint layout (qvgen_kernels/format.py), one unit of 8
// codes at a time (torch-free, host and device).
//
// Layout per row of K codes (width = packed_width(K, bits) bytes):
//   8 bits: byte k = q[k].
//   4 bits: byte j = q[2j] | q[2j+1] << 4 (low nibble first).
//   3 bits: K8 = 8 * ceil(K / 8); plane 0 = bytes [0, K8/4), byte j = sum_i (q[4j+i] & 3) << 2i;
//           plane 1 = bytes [K8/4, 3K8/8), byte j = sum_i ((q[8j+i] >> 2) & 1) << i.
// Unit u holds codes [8u, 8u+8): at 8 bits bytes [8u, 8u+8), at 4 bits bytes [4u, 4u+4), at 3 bits
// plane-0 bytes 2u, 2u+1 and plane-1 byte u. Bytes at or past the row width are never touched,
// so a partial last unit is safe. Codes are masked to b bits so that an out-of-range code cannot
// spill into its neighbours.
#pragma once

#include "qvgen/common.h"

namespace qvgen {

// Write the unit `u` of a row of `k` codes; `c` holds the unit's 8 codes (padding included).
QVGEN_HD void pack_unit(const uint8_t* c, int bits, int64_t u, int64_t k, uint8_t* row) {
  const int64_t width = packed_width(k, bits);
  if (bits == 8) {
    for (int i = 0; i < kUnit; ++i) {
      if (kUnit * u + i < width) row[kUnit * u + i] = c[i];
    }
  } else if (bits == 4) {
    for (int i = 0; i < kUnit / 2; ++i) {
      const int64_t j = 4 * u + i;
      if (j < width) row[j] = static_cast<uint8_t>((c[2 * i] & 15) | ((c[2 * i + 1] & 15) << 4));
    }
  } else {
    uint8_t lo0 = 0, lo1 = 0, hi = 0;
    for (int i = 0; i < 4; ++i) {
      lo0 |= static_cast<uint8_t>((c[i] & 3) << (2 * i));
      lo1 |= static_cast<uint8_t>((c[4 + i] & 3) << (2 * i));
    }
    for (int i = 0; i < kUnit; ++i) hi |= static_cast<uint8_t>(((c[i] >> 2) & 1) << i);
    row[2 * u] = lo0;
    row[2 * u + 1] = lo1;
    row[2 * num_units(k) + u] = hi;
  }
}

// Read the unit `u` of a packed row of `k` codes into `c` (8 codes; codes past k are padding).
QVGEN_HD void unpack_unit(const uint8_t* row, int bits, int64_t u, int64_t k, uint8_t* c) {
  const int64_t width = packed_width(k, bits);
  if (bits == 8) {
    for (int i = 0; i < kUnit; ++i) c[i] = kUnit * u + i < width ? row[kUnit * u + i] : 0;
  } else if (bits == 4) {
    for (int i = 0; i < kUnit / 2; ++i) {
      const int64_t j = 4 * u + i;
      const uint8_t b = j < width ? row[j] : 0;
      c[2 * i] = b & 15;
      c[2 * i + 1] = b >> 4;
    }
  } else {
    const uint8_t lo0 = row[2 * u], lo1 = row[2 * u + 1];
    const uint8_t hi = row[2 * num_units(k) + u];
    for (int i = 0; i < 4; ++i) {
      c[i] = static_cast<uint8_t>((lo0 >> (2 * i)) & 3);
      c[4 + i] = static_cast<uint8_t>((lo1 >> (2 * i)) & 3);
    }
    for (int i = 0; i < kUnit; ++i) c[i] |= static_cast<uint8_t>(((hi >> i) & 1) << 2);
  }
}

// Gather the 8 codes of unit `u` from an unpacked row, using `pad` past k.
QVGEN_HD void load_unit_codes(const uint8_t* codes, int64_t u, int64_t k, uint8_t pad, uint8_t* c) {
  for (int i = 0; i < kUnit; ++i) {
    const int64_t j = kUnit * u + i;
    c[i] = j < k ? codes[j] : pad;
  }
}

}  // namespace qvgen
