// A parallel loop over [0, n) on OpenMP threads.
//
// Small jobs run on the calling thread: waking a thread team costs microseconds, and far more when the machine
// is busy (a barrier then waits for a descheduled thread). `work_per_item` is a rough element count per item;
// one thread is used for each kMinWorkPerThread elements, up to num_threads.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(MEDENS_OPENMP)
#include <omp.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

// Hot loops are compiled for several x86 levels and picked at load time (GCC/Clang target_clones), so a
// portable build still uses AVX2/AVX-512 where the machine has them. MEDENS_NATIVE builds skip this.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(MEDENS_NATIVE_BUILD)
#define MEDENS_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MEDENS_SIMD_CLONES
#endif

namespace medens {
namespace cpu {

constexpr int64_t kMinWorkPerThread = 1 << 15;

inline int threads_for(int64_t n, int64_t work_per_item, int num_threads) {
  const int64_t total = n * std::max<int64_t>(work_per_item, 1);
  const int64_t wanted = std::max<int64_t>(total / kMinWorkPerThread, 1);
  return static_cast<int>(std::min<int64_t>({wanted, static_cast<int64_t>(std::max(num_threads, 1)), std::max<int64_t>(n, 1)}));
}

template <typename Body>
void parallel_for(int64_t n, int64_t work_per_item, int num_threads, Body body) {
#if defined(MEDENS_OPENMP)
  const int threads = threads_for(n, work_per_item, num_threads);
  if (threads > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#else
  (void)work_per_item;
  (void)num_threads;
#endif
  for (int64_t i = 0; i < n; ++i) body(i);
}

/// Asks the kernel to back a large, freshly allocated output with transparent huge pages (Linux, THP in
/// "madvise" mode). Writing a new multi-megabyte tensor otherwise spends most of its time in 4 KiB page faults.
inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < static_cast<int64_t>(4 * kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice only
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace cpu
}  // namespace medens
