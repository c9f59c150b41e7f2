// CUDA pack / unpack: one thread per unit of 8 codes (layout in qvgen/pack.h).
#include <algorithm>

#include "qvgen/cuda.h"
#include "qvgen/pack.h"

namespace qvgen {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__global__ void pack_kernel(const uint8_t* __restrict__ codes, int64_t rows, int64_t k, int bits,
                            uint8_t* __restrict__ packed) {
  const int64_t units = num_units(k);
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= rows * units) return;
  const int64_t r = id / units, u = id - r * units;
  uint8_t c[kUnit];
  load_unit_codes(codes + r * k, u, k, /*pad=*/0, c);
  pack_unit(c, bits, u, k, packed + r * packed_width(k, bits));
}

__global__ void unpack_kernel(const uint8_t* __restrict__ packed, int64_t rows, int64_t k, int bits,
                              uint8_t* __restrict__ codes) {
  const int64_t units = num_units(k);
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= rows * units) return;
  const int64_t r = id / units, u = id - r * units;
  uint8_t c[kUnit];
  unpack_unit(packed + r * packed_width(k, bits), bits, u, k, c);
  uint8_t* dst = codes + r * k + kUnit * u;
  const int64_t n = k - kUnit * u < kUnit ? k - kUnit * u : kUnit;
  for (int i = 0; i < n; ++i) dst[i] = c[i];
}

unsigned int num_blocks(int64_t rows, int64_t k) {
  return static_cast<unsigned int>((rows * num_units(k) + kThreads - 1) / kThreads);
}

}  // namespace

cudaError_t pack(const uint8_t* codes, int64_t rows, int64_t k, int bits, uint8_t* packed, cudaStream_t stream) {
  if (rows * k == 0) return cudaSuccess;
  pack_kernel<<<num_blocks(rows, k), kThreads, 0, stream>>>(codes, rows, k, bits, packed);
  return cudaGetLastError();
}

cudaError_t unpack(const uint8_t* packed, int64_t rows, int64_t k, int bits, uint8_t* codes, cudaStream_t stream) {
  if (rows * k == 0) return cudaSuccess;
  unpack_kernel<<<num_blocks(rows, k), kThreads, 0, stream>>>(packed, rows, k, bits, codes);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace qvgen
