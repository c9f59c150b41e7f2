// tc_gemm: picks the tensor-core kernel for the current device (qvgen/tc.h).
#include "launchers.h"

namespace qvgen {
namespace cuda {
namespace {

template <bool kW8>
cudaError_t run(const TcGemmArgs& g, TcKernel kernel, int num_sms, cudaStream_t stream) {
  const bool grouped = g.groups > 1;
  if (kernel == TcKernel::kSm90) {
    return grouped ? tc::launch_sm90<kW8, true>(g, num_sms, stream) : tc::launch_sm90<kW8, false>(g, num_sms, stream);
  }
  return grouped ? tc::launch_sm80<kW8, true>(g, stream) : tc::launch_sm80<kW8, false>(g, stream);
}

}  // namespace

cudaError_t tc_gemm(const TcGemmArgs& g, TcKernel kernel, cudaStream_t stream) {
  if (g.m == 0 || g.n == 0) return cudaSuccess;
  int dev = 0, major = 0, minor = 0, num_sms = 0;
  cudaError_t st = cudaGetDevice(&dev);
  if (st == cudaSuccess) st = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (st == cudaSuccess) st = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (st == cudaSuccess) st = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev);
  if (st != cudaSuccess) return st;
  const int cc = 10 * major + minor;
  // The wgmma kernel is sm_90a code: Hopper only (not its successors).
  if (kernel == TcKernel::kAuto) kernel = cc == 90 ? TcKernel::kSm90 : TcKernel::kSm80;
  if (cc < 80 || (kernel == TcKernel::kSm90 && cc != 90)) return cudaErrorInvalidDeviceFunction;
  return g.w_bits == 8 ? run<true>(g, kernel, num_sms, stream) : run<false>(g, kernel, num_sms, stream);
}

}  // namespace cuda
}  // namespace qvgen
