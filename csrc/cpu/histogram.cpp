// The sweep of patch histograms (see histogram.h): an AVX-512 version picked at run time, and a portable one.
#include "histogram.h"

#include <algorithm>

#include "medens/patch_math.h"
#include "parallel.h"
#include "x86.h"

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

#if defined(MEDENS_X86_DISPATCH)
__attribute__((target("avx512f"))) inline double sweep_histogram_avx512(int32_t* hist, int num_bins, const float* terms) {
  const __m512 t0 = _mm512_loadu_ps(terms), t1 = _mm512_loadu_ps(terms + 16);
  const __m512 t2 = _mm512_loadu_ps(terms + 32), t3 = _mm512_loadu_ps(terms + 48);
  const __m512i bit5 = _mm512_set1_epi32(32), largest_in_registers = _mm512_set1_epi32(kRegisterTerms - 1);
  __m512d total_lo = _mm512_setzero_pd(), total_hi = _mm512_setzero_pd();
  int k = 0;
  while (k + 16 <= num_bins) {
    __m512 group = _mm512_setzero_ps();
    for (int v = 0; v < 8 && k + 16 <= num_bins; ++v, k += 16) {
      const __m512i counts = _mm512_loadu_si512(hist + k);
      const __m512 low = _mm512_permutex2var_ps(t0, counts, t1);   // counts 0..31 (bit 5 clear)
      const __m512 high = _mm512_permutex2var_ps(t2, counts, t3);  // counts 32..63
      __m512 term = _mm512_mask_blend_ps(_mm512_test_epi32_mask(counts, bit5), low, high);
      const __mmask16 large = _mm512_cmpgt_epi32_mask(counts, largest_in_registers);
      if (large) term = _mm512_mask_i32gather_ps(term, large, counts, terms, 4);
      group = _mm512_add_ps(group, term);
      _mm512_storeu_si512(hist + k, _mm512_setzero_si512());
    }
    total_lo = _mm512_add_pd(total_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(group)));
    total_hi = _mm512_add_pd(total_hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(group), 1))));
  }
  double sum = _mm512_reduce_add_pd(_mm512_add_pd(total_lo, total_hi));
  for (; k < num_bins; ++k) {
    sum += terms[hist[k]];
    hist[k] = 0;
  }
  return sum;
}

/// sweep_histograms on AVX-512: the whole band in one function, so each sweep is inlined.
__attribute__((target("avx512f"))) void sweep_histograms_avx512(int32_t* hists, int64_t count, int64_t stride,
                                                                int num_bins, const float* terms, double n,
                                                                float* entropies) {
  for (int64_t j = 0; j < count; ++j)
    entropies[j] = entropy_from_terms(sweep_histogram_avx512(hists + j * stride, num_bins, terms), n);
}
#endif

}  // namespace

void sweep_histograms(int32_t* hists, int64_t count, int64_t stride, int num_bins, const float* terms, double n,
                      float* entropies) {
#if defined(MEDENS_X86_DISPATCH)
  if (cpu_has_avx512()) return sweep_histograms_avx512(hists, count, stride, num_bins, terms, n, entropies);
#endif
  for (int64_t j = 0; j < count; ++j)
    entropies[j] = entropy_from_terms(sweep_histogram_portable(hists + j * stride, num_bins, terms), n);
}

}  // namespace cpu
}  // namespace medens
