// Host check of the per-token padding of the tensor-core GEMMs (qvgen/tc_tiles.h): for every M up to 20000 and
// every kernel's token tile, the rows a tile touches stay inside MP, and MP is the least such multiple of all
// tiles. Torch- and CUDA-free; built and run by tests/kernels/test_tc_tiles.py.
#include <cstdio>

#include "qvgen/tc_tiles.h"

int main() {
  using namespace qvgen;
  const int tiles[] = {kTcSm80TileM, kTcSm80GroupedTileM, kTcSm90TileM, kTcSm90GroupedTileM};
  int failures = 0;
  for (int t : tiles) {
    if (kTcTokenAlign % t != 0) {
      std::printf("FAIL: padding %lld is not a multiple of tile %d\n", static_cast<long long>(kTcTokenAlign), t);
      ++failures;
    }
  }
  for (int64_t m = 1; m <= 20000; ++m) {
    const int64_t mp = tc_token_rows(m);
    if (mp < m || mp % kTcTokenAlign != 0 || mp - m >= kTcTokenAlign) ++failures;
    for (int t : tiles) {
      if (tc_tile_rows(m, t) > mp) {
        if (failures < 10) std::printf("FAIL: M=%lld tile %d reads %lld rows of %lld\n", static_cast<long long>(m), t,
                                       static_cast<long long>(tc_tile_rows(m, t)), static_cast<long long>(mp));
        ++failures;
      }
    }
  }
  std::printf("padding %lld, tiles %d %d %d %d, %d failures\n", static_cast<long long>(kTcTokenAlign), tiles[0],
              tiles[1], tiles[2], tiles[3], failures);
  return failures == 0 ? 0 : 1;
}
