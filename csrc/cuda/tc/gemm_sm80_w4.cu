// Explicit instantiations of the mma.sync GEMM for 3/4-bit (nibble) weights, per channel and per group.
#include "sm80.cuh"

namespace qvgen {
namespace cuda {
namespace tc {

QVGEN_TC_SM80_INSTANTIATE(false, false)
QVGEN_TC_SM80_INSTANTIATE(false, true)

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
