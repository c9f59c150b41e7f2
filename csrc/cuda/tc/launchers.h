// The tensor-core GEMM's launchers, one explicit instantiation per translation unit (gemm_sm80_*.cu,
// gemm_sm90_*.cu); gemm.cu picks one. Template parameters: 8-bit weights (else the 4-bit nibble layout),
// weight groups (else per channel).
#pragma once

#include <cuda_runtime_api.h>

#include "qvgen/tc.h"

namespace qvgen {
namespace cuda {
namespace tc {

template <bool kW8, bool kGrouped>
cudaError_t launch_sm80(const TcGemmArgs& g, cudaStream_t stream);

template <bool kW8, bool kGrouped>
cudaError_t launch_sm90(const TcGemmArgs& g, int num_sms, cudaStream_t stream);

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
