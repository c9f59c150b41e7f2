// Explicit instantiations of the wgmma GEMM for 3/4-bit (nibble) weights, per channel and per group.
#include "sm90.cuh"

namespace qvgen {
namespace cuda {
namespace tc {

QVGEN_TC_SM90_INSTANTIATE(false, false)
QVGEN_TC_SM90_INSTANTIATE(false, true)

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
