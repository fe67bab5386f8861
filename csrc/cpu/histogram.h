// Per-patch histograms for patch_entropy on the CPU: counting bins into them, and summing entropy terms over them.
//
// Counting is one load, increment and store per pixel, the bulk of the op's work. With bins that fit a byte, the
// bins of a row are read eight at a time (one 64-bit load, then shifts), so reading a bin costs an eighth of a
// load instead of one.
//
// The sweep sums terms[count] over the bins of a histogram and clears it. On AVX-512 machines the terms of counts
// below 64 come from four vector registers (two two-table permutes and a blend) instead of a gather; a vector that
// holds a larger count (a flat patch) gathers those lanes. Terms are float32; each lane adds at most eight of them
// in float32 before the lanes are added in float64, which keeps the entropy within about 1e-5 bits of an exact sum.
#pragma once

#include <cstdint>
#include <cstring>

#include "x86.h"

namespace medens {
namespace cpu {

/// Counts in registers on the AVX-512 path: the float term table must hold at least this many entries.
constexpr int kRegisterTerms = 64;

/// Adds `count` byte-sized bins to `hist`.
inline void count_bins(const uint8_t* bins, int64_t count, int32_t* hist) {
  int64_t x = 0;
  for (; x + 8 <= count; x += 8) {
    uint64_t word;
    std::memcpy(&word, bins + x, sizeof word);  // the order of the bytes does not matter to a histogram
    ++hist[word & 0xff];
    ++hist[(word >> 8) & 0xff];
    ++hist[(word >> 16) & 0xff];
    ++hist[(word >> 24) & 0xff];
    ++hist[(word >> 32) & 0xff];
    ++hist[(word >> 40) & 0xff];
    ++hist[(word >> 48) & 0xff];
    ++hist[word >> 56];
  }
  for (; x < count; ++x) ++hist[bins[x]];
}

/// Adds `count` bins to `hist` and returns the change in the patch's sum of entropy terms:
/// deltas[c] = term(c + 1) - term(c). Used instead of a sweep where a sweep would read a large table per patch
/// (no AVX-512, about as many bins as pixels).
template <typename Bin>
inline double count_bins_tracking_terms(const Bin* bins, int64_t count, int32_t* hist, const double* deltas) {
  double partial[4] = {0, 0, 0, 0};
  const int64_t whole = count - count % 4;
  for (int64_t x = 0; x < whole; x += 4)
    for (int i = 0; i < 4; ++i) partial[i] += deltas[hist[bins[x + i]]++];
  for (int64_t x = whole; x < count; ++x) partial[0] += deltas[hist[bins[x]]++];
  return (partial[0] + partial[1]) + (partial[2] + partial[3]);
}

/// Adds `count` 16-bit bins to `hist`.
inline void count_bins(const uint16_t* bins, int64_t count, int32_t* hist) {
  for (int64_t x = 0; x < count; ++x) ++hist[bins[x]];
}

#if defined(MEDENS_X86_DISPATCH)
/// sweep_histogram on AVX-512 (inline, so that AVX-512 kernels can inline it too).
__attribute__((target("avx512f"))) inline double sweep_histogram_avx512(int32_t* hist, int num_bins,
                                                                        const float* terms) {
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
#endif

/// Sum of terms[hist[k]] over k < num_bins, leaving the histogram all zero. `terms` is indexed by count and has
/// at least max(n + 1, kRegisterTerms) entries for patches of n pixels. Defined in histogram.cpp.
double sweep_histogram(int32_t* hist, int num_bins, const float* terms);

}  // namespace cpu
}  // namespace medens
