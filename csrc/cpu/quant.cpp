// CPU per-token activation quantization (formula in qvgen/quant.h). Reads fp32 x.
#include <algorithm>
#include <vector>

#include "qvgen/kernels.h"
#include "qvgen/pack.h"
#include "qvgen/quant.h"

namespace qvgen {
namespace cpu {

void quantize_per_token_rows(const QuantArgs& args, int64_t r0, int64_t r1) {
  const int64_t k = args.k;
  const int64_t width = packed_width(k, args.bits);
  const int64_t units = num_units(k);
  const float* x = static_cast<const float*>(args.x);
  std::vector<uint8_t> codes(static_cast<size_t>(k));
  uint8_t unit[kUnit];
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * k;
    float mn = xr[0], mx = xr[0];
    for (int64_t i = 1; i < k; ++i) {
      mn = std::min(mn, xr[i]);
      mx = std::max(mx, xr[i]);
    }
    const ActQParams qp = act_qparams(mn, mx, args.clip_lo[r], args.clip_hi[r], args.bits);
    const int32_t z = static_cast<int32_t>(qp.zero);
    int32_t sum = 0;
    for (int64_t i = 0; i < k; ++i) {
      codes[i] = act_code(xr[i], qp, args.bits);
      sum += static_cast<int32_t>(codes[i]) - z;
    }
    // The padding code z gives a = 0 in the GEMM (format.py).
    for (int64_t u = 0; u < units; ++u) {
      load_unit_codes(codes.data(), u, k, static_cast<uint8_t>(z), unit);
      pack_unit(unit, args.bits, u, k, args.packed + r * width);
    }
    args.scale[r] = qp.scale;
    args.zero[r] = z;
    args.rowsum[r] = sum;
  }
}

}  // namespace cpu
}  // namespace qvgen
