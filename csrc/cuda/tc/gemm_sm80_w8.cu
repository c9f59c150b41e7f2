// Explicit instantiations of the mma.sync GEMM for 8-bit weights, per channel and per group.
#include "sm80.cuh"

namespace qvgen {
namespace cuda {
namespace tc {

QVGEN_TC_SM80_INSTANTIATE(true, false)
QVGEN_TC_SM80_INSTANTIATE(true, true)

}  // namespace tc
}  // namespace cuda
}  // namespace qvgen
