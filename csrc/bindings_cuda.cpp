// CUDA half of the bindings: device guard and current stream (the launch-status check is bindings_cuda.h's).
// Compiled into the extension only when it is built with CUDA (setup.py defines QVGEN_WITH_CUDA).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bindings_cuda.h"
#include "qvgen/cuda.h"

namespace qvgen {

void cuda_pack(const at::Tensor& codes, int64_t bits, at::Tensor& packed) {
  const c10::cuda::CUDAGuard guard(codes.device());
  const int64_t k = codes.size(-1);
  check_launch("qvgen_ext::pack",
               cuda::pack(codes.data_ptr<uint8_t>(), codes.numel() / k, k, static_cast<int>(bits),
                          packed.data_ptr<uint8_t>(), c10::cuda::getCurrentCUDAStream()));
}

void cuda_unpack(const at::Tensor& packed, int64_t bits, int64_t k, at::Tensor& codes) {
  const c10::cuda::CUDAGuard guard(packed.device());
  check_launch("qvgen_ext::unpack",
               cuda::unpack(packed.data_ptr<uint8_t>(), codes.numel() / k, k, static_cast<int>(bits),
                            codes.data_ptr<uint8_t>(), c10::cuda::getCurrentCUDAStream()));
}

void cuda_quantize_per_token(const at::Tensor& x, const QuantArgs& args) {
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch("qvgen_ext::quantize_per_token", cuda::quantize_per_token(args, c10::cuda::getCurrentCUDAStream()));
}

void cuda_lowbit_gemm(const at::Tensor& a_packed, const GemmArgs& args) {
  const c10::cuda::CUDAGuard guard(a_packed.device());
  check_launch("qvgen_ext::lowbit_gemm", cuda::lowbit_gemm(args, c10::cuda::getCurrentCUDAStream()));
}

}  // namespace qvgen
