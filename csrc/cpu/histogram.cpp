// The sweep of a patch histogram (see histogram.h): an AVX-512 version picked at run time, and a portable one.
#include "histogram.h"

#include <algorithm>

#include "parallel.h"

namespace medens {
namespace cpu {
namespace {

/// Portable sweep: eight independent partial sums (and gathers, where the clone's instruction set has them).
MEDENS_SIMD_CLONES
double sweep_histogram_portable(int32_t* hist, int num_bins, const float* terms) {
  double partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int k = 0;
  for (; k + 8 <= num_bins; k += 8)
    for (int i = 0; i < 8; ++i) partial[i] += terms[hist[k + i]];
  for (; k < num_bins; ++k) partial[0] += terms[hist[k]];
  std::fill(hist, hist + num_bins, 0);
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}


}  // namespace

double sweep_histogram(int32_t* hist, int num_bins, const float* terms) {
#if defined(MEDENS_X86_DISPATCH)
  if (cpu_has_avx512()) return sweep_histogram_avx512(hist, num_bins, terms);
#endif
  return sweep_histogram_portable(hist, num_bins, terms);
}

}  // namespace cpu
}  // namespace medens
