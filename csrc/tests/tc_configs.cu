// Prints the tile configuration of every tensor-core GEMM variant as JSON lines (host code only: runs
// without a GPU). Read by benchmarks/sass_roofline.py, so the static figures use the kernels' own constants.
#include <cstdio>

#include "../cuda/tc/sm80.cuh"
#include "../cuda/tc/sm90.cuh"

namespace tc = qvgen::cuda::tc;

template <class C>
void print(const char* kernel, bool w8, bool grouped, int warps) {
  std::printf(
      "{\"kernel\": \"%s\", \"w8\": %s, \"grouped\": %s, \"block\": [128, %d, %d], \"stages\": %d, "
      "\"smem_bytes\": %d, \"mma_warps\": %d, \"threads\": %d}\n",
      kernel, w8 ? "true" : "false", grouped ? "true" : "false", C::kBM, tc::kBK, C::kStages, C::kSmem, warps,
      C::kThreads);
}

template <bool kW8, bool kGrouped>
void print_both() {
  print<tc::Sm80Config<kW8, kGrouped>>("tc_gemm_sm80_kernel", kW8, kGrouped, 4);
  print<tc::Sm90Config<kW8, kGrouped>>("tc_gemm_sm90_kernel", kW8, kGrouped, 8);
}

int main() {
  print_both<false, false>();
  print_both<false, true>();
  print_both<true, false>();
  print_both<true, true>();
  return 0;
}
