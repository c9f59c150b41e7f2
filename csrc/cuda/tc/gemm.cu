// tc_gemm: picks the tensor-core kernel for the current device (qvgen/tc.h).
#include <atomic>

#include "launchers.h"
#include "tma.h"

namespace qvgen {
namespace cuda {
namespace {

template <bool kW8>
cudaError_t run(const TcGemmArgs& g, TcKernel kernel, const tc::Device& dev, cudaStream_t stream) {
  const bool grouped = g.groups > 1;
  if (kernel == TcKernel::kSm90) {
    return grouped ? tc::launch_sm90<kW8, true>(g, dev, stream) : tc::launch_sm90<kW8, false>(g, dev, stream);
  }
  return grouped ? tc::launch_sm80<kW8, true>(g, dev, stream) : tc::launch_sm80<kW8, false>(g, dev, stream);
}

// The current device with its compute capability and SM count, queried once per device and process
// (packed as cc << 16 | num_sms; 0 = not yet queried).
cudaError_t current_device(tc::Device* out) {
  constexpr int kMaxDevices = 64;
  static std::atomic<uint32_t> known[kMaxDevices] = {};
  int dev = 0;
  cudaError_t st = cudaGetDevice(&dev);
  if (st != cudaSuccess) return st;
  uint32_t packed = dev < kMaxDevices ? known[dev].load(std::memory_order_relaxed) : 0;
  if (packed == 0) {
    int major = 0, minor = 0, num_sms = 0;
    st = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (st == cudaSuccess) st = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (st == cudaSuccess) st = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev);
    if (st != cudaSuccess) return st;
    packed = static_cast<uint32_t>(10 * major + minor) << 16 | static_cast<uint32_t>(num_sms & 0xFFFF);
    if (dev < kMaxDevices) known[dev].store(packed, std::memory_order_relaxed);
  }
  *out = {dev, static_cast<int>(packed >> 16), static_cast<int>(packed & 0xFFFF)};
  return cudaSuccess;
}

// The wgmma kernel is sm_90a code: Hopper only (not its successors).
bool runs_sm90(int cc) { return cc == 90; }

}  // namespace

cudaError_t tc_gemm(const TcGemmArgs& g, TcKernel kernel, cudaStream_t stream) {
  if (g.m == 0 || g.n == 0) return cudaSuccess;
  tc::Device dev{};
  const cudaError_t st = current_device(&dev);
  if (st != cudaSuccess) return st;
  if (kernel == TcKernel::kAuto) kernel = runs_sm90(dev.cc) ? TcKernel::kSm90 : TcKernel::kSm80;
  if (dev.cc < 80 || (kernel == TcKernel::kSm90 && !runs_sm90(dev.cc))) return cudaErrorInvalidDeviceFunction;
  return g.w_bits == 8 ? run<true>(g, kernel, dev, stream) : run<false>(g, kernel, dev, stream);
}

cudaError_t tc_prepare_weight(const void* w, int64_t n, int64_t kp, int w_bits) {
  tc::Device dev{};
  const cudaError_t st = current_device(&dev);
  if (st != cudaSuccess || !runs_sm90(dev.cc) || n == 0) return st;
  CUtensorMap map;
  return tc::sm90_weight_map(w, n, kp, w_bits == 8, &map);
}

}  // namespace cuda
}  // namespace qvgen
