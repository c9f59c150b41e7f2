// The tensor-core GEMM's launchers, one explicit instantiation per translation unit (gemm_sm80_*.cu,
// gemm_sm90_*.cu); gemm.cu picks one. Template parameters: 8-bit weights (else the 4-bit nibble layout),
// weight groups (else per channel).
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>

#include "qvgen/tc.h"

namespace qvgen {
namespace cuda {
namespace tc {

// The current device, its attributes queried once per process (gemm.cu).
struct Device {
  int index, cc, num_sms;
};

// Sets a kernel's dynamic shared-memory limit once per device: `done` is that kernel's bit set of devices.
template <class Kernel>
cudaError_t set_smem_once(Kernel* kernel, int smem, int dev, std::atomic<uint64_t>& done) {
  const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  const cudaError_t st = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (st == cudaSuccess) done.fetch_or(bit, std::memory_order_acq_rel);
  return st;
}

template <bool kW8, bool kGrouped>
cudaError_t launch_sm80(const TcGemmArgs& g, const Device& dev, cudaStream_t stream);

template <bool kW8, bool kGrouped>
cudaError_t launch_sm90(const TcGemmArgs& g, const Device& dev, cudaStream_t stream);

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
