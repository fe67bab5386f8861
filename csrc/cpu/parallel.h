// A parallel loop over [0, n) on OpenMP threads (serial when built without OpenMP or asked for one thread).
#pragma once

#include <cstdint>

#if defined(MEDENS_OPENMP)
#include <omp.h>
#endif

namespace medens {
namespace cpu {

template <typename Body>
void parallel_for(int64_t n, int num_threads, Body body) {
#if defined(MEDENS_OPENMP)
  const int threads = num_threads > 1 ? num_threads : 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && n > 1)
  for (int64_t i = 0; i < n; ++i) body(i);
#else
  (void)num_threads;
  for (int64_t i = 0; i < n; ++i) body(i);
#endif
}

}  // namespace cpu
}  // namespace medens
