// Per-patch histograms for patch_entropy on the CPU: counting bins into them, and summing entropy terms over them.
//
// Counting is one load, increment and store per pixel, the bulk of the op's work. With bins that fit a byte, the
// bins of a row are read eight at a time (one 64-bit load, then shifts), so reading a bin costs an eighth of a
// load instead of one.
//
// The sweep sums terms[count] over the bins of a histogram and clears it. On AVX-512 machines the terms of counts
// below 64 come from four vector registers (two two-table permutes and a blend) instead of a gather; a vector that
// holds a larger count (a flat patch) gathers those lanes. Terms are float32; each lane adds at most eight of them
// in float32 before the lanes are added in float64. Measured against entropies computed in float64 (random
// images of 224 and 256 px; p = 16, 32, 64, 128 with 256 to 4096 bins): within 5.1e-7 bits, where rounding the
// result to float32 alone moves it by up to 2.4e-7, and the float32 reference is within 1.5e-6.
#pragma once

#include <cstdint>
#include <cstring>

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


/// The entropies (bits) of `count` histograms of patches of n pixels, `stride` counts apart, from sums of
/// terms[hist[k]] over k < num_bins; leaves every histogram all zero. `terms` is indexed by count and has at least
/// max(n + 1, kRegisterTerms) entries. Defined in histogram.cpp.
void sweep_histograms(int32_t* hists, int64_t count, int64_t stride, int num_bins, const float* terms, double n,
                      float* entropies);

}  // namespace cpu
}  // namespace medens
