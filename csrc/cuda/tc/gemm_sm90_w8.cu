// Explicit instantiations of the wgmma GEMM for 8-bit weights, per channel and per group.
#include "sm90.cuh"

namespace qvgen {
namespace cuda {
namespace tc {

QVGEN_TC_SM90_INSTANTIATE(true, false)
QVGEN_TC_SM90_INSTANTIATE(true, true)

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
