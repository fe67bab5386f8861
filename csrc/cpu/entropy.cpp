// patch_entropy on the CPU.
//
// Work is split into bands: one image and one row of patches (p image rows). A band is read once, row by row,
// in memory order; each row is turned into histogram bins, which are counted into the histograms of the patches
// the row crosses (histogram.h). The entropy of each patch then comes from a sweep of its histogram.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "medens/cpu_kernels.h"
#include "medens/patch_math.h"
#include "entropy_band.h"
#include "histogram.h"
#include "parallel.h"

namespace medens {
namespace cpu {
namespace {

/// Largest patch (p * p values) for which the entropy terms are tabulated per call.
constexpr int64_t kMaxTabulatedPatch = 1 << 16;

// The binning loops, each written once for both bin types. target_clones cannot apply to a template (clang), so
// the plain functions below carry the clones and inline these bodies.
template <typename Bin>
__attribute__((always_inline)) inline void f32_rgb_loop(const float* red, const float* green, const float* blue,
                                                        int64_t count, const EntropyParams& P, Bin* bins) {
  const float lo = P.lo, nb = P.bins_f;
  if (P.pow2) {
    const float inv = P.inv_width;
    for (int64_t x = 0; x < count; ++x)
      bins[x] = static_cast<Bin>(grey_bin_pow2(luma(red[x], green[x], blue[x]), lo, inv, nb));
  } else {
    const float w = P.range_width;
    for (int64_t x = 0; x < count; ++x)
      bins[x] = static_cast<Bin>(grey_bin(luma(red[x], green[x], blue[x]), lo, w, nb));
  }
}

template <typename Bin>
__attribute__((always_inline)) inline void f32_grey_loop(const float* grey, int64_t count, const EntropyParams& P,
                                                         Bin* bins) {
  const float lo = P.lo, nb = P.bins_f;
  if (P.pow2) {
    const float inv = P.inv_width;
    for (int64_t x = 0; x < count; ++x) bins[x] = static_cast<Bin>(grey_bin_pow2(grey[x], lo, inv, nb));
  } else {
    const float w = P.range_width;
    for (int64_t x = 0; x < count; ++x) bins[x] = static_cast<Bin>(grey_bin(grey[x], lo, w, nb));
  }
}

template <typename Bin>
__attribute__((always_inline)) inline void u8_rgb_loop(const uint8_t* red, const uint8_t* green, const uint8_t* blue,
                                                       int64_t count, const EntropyParams& P, Bin* bins) {
  const float lo = P.lo, w = P.range_width, nb = P.bins_f;
  for (int64_t x = 0; x < count; ++x) {
    const float v = luma(static_cast<float>(red[x]), static_cast<float>(green[x]), static_cast<float>(blue[x]));
    bins[x] = static_cast<Bin>(grey_bin(v, lo, w, nb));
  }
}

// One clone-carrying function per loop; `bins` holds bytes when `bytes`, else 16-bit bins.
MEDENS_SIMD_CLONES void bins_f32_rgb(const float* r, const float* g, const float* b, int64_t count,
                                     const EntropyParams& P, void* bins, bool bytes) {
  if (bytes)
    f32_rgb_loop(r, g, b, count, P, static_cast<uint8_t*>(bins));
  else
    f32_rgb_loop(r, g, b, count, P, static_cast<uint16_t*>(bins));
}

MEDENS_SIMD_CLONES void bins_f32_grey(const float* grey, int64_t count, const EntropyParams& P, void* bins,
                                      bool bytes) {
  if (bytes)
    f32_grey_loop(grey, count, P, static_cast<uint8_t*>(bins));
  else
    f32_grey_loop(grey, count, P, static_cast<uint16_t*>(bins));
}

MEDENS_SIMD_CLONES void bins_u8_rgb(const uint8_t* r, const uint8_t* g, const uint8_t* b, int64_t count,
                                    const EntropyParams& P, void* bins, bool bytes) {
  if (bytes)
    u8_rgb_loop(r, g, b, count, P, static_cast<uint8_t*>(bins));
  else
    u8_rgb_loop(r, g, b, count, P, static_cast<uint16_t*>(bins));
}

/// Bins of the first `count` pixels of one image row. `row` points at (b, 0, y, 0).
template <int D, typename Bin>
void row_bins(const typename Element<D>::storage* row, const EntropyParams& P, int64_t count, Bin* bins,
              const uint16_t* u8_lut) {
  using E = Element<D>;
  if constexpr (D == kUInt8) {
    if (P.channels == 1) {  // one channel: a 256-entry table holds every possible bin
      for (int64_t x = 0; x < count; ++x) bins[x] = static_cast<Bin>(u8_lut[row[x * P.stride_w]]);
      return;
    }
    if (P.stride_w == 1) {
      bins_u8_rgb(row, row + P.stride_c, row + 2 * P.stride_c, count, P, bins, sizeof(Bin) == 1);
      return;
    }
  }
  if constexpr (D == kFloat32) {
    if (P.stride_w == 1) {
      const float *green = row + P.stride_c, *blue = row + 2 * P.stride_c;
      if (P.channels == 1)
        bins_f32_grey(row, count, P, bins, sizeof(Bin) == 1);
      else if (!(std::is_same_v<Bin, uint8_t> &&
                 row_bins_f32_rgb_avx512(row, green, blue, count, P, reinterpret_cast<uint8_t*>(bins))))
        bins_f32_rgb(row, green, blue, count, P, bins, sizeof(Bin) == 1);
      return;
    }
  }
  const float lo = P.lo, w = P.range_width, nb = P.bins_f;
  const int64_t s = P.stride_w;
  if (P.channels == 1) {
    for (int64_t x = 0; x < count; ++x) bins[x] = static_cast<Bin>(grey_bin(E::to_float(row[x * s]), lo, w, nb));
    return;
  }
  const auto* red = row;
  const auto* green = row + P.stride_c;
  const auto* blue = row + 2 * P.stride_c;
  for (int64_t x = 0; x < count; ++x) {
    const float v = luma(E::to_float(red[x * s]), E::to_float(green[x * s]), E::to_float(blue[x * s]));
    bins[x] = static_cast<Bin>(grey_bin(v, lo, w, nb));
  }
}

/// Entropy of one patch whose bins are the p x p block starting at `bins` (row pitch `pitch`).
/// `hist` must be all zero on entry and is all zero again on return.
float patch_entropy_from_bins(const uint16_t* bins, int64_t pitch, int64_t p, int num_bins, int32_t* hist,
                              const double* terms, double log2_n) {
  for (int64_t r = 0; r < p; ++r) {
    const uint16_t* row = bins + r * pitch;
    for (int64_t x = 0; x < p; ++x) ++hist[row[x]];
  }
  const int64_t n = p * p;
  double sum = 0.0;
  if (num_bins <= n) {  // no more bins than pixels (untabulated huge patch): sweep the histogram
    for (int k = 0; k < num_bins; ++k) {
      sum += entropy_term(hist[k], log2_n);
      hist[k] = 0;
    }
  } else {  // sweep the pixels, visiting each used bin once
    for (int64_t r = 0; r < p; ++r) {
      const uint16_t* row = bins + r * pitch;
      for (int64_t x = 0; x < p; ++x) {
        const int32_t c = hist[row[x]];
        if (c) {
          sum += terms ? terms[c] : entropy_term(c, log2_n);
          hist[row[x]] = 0;
        }
      }
    }
  }
  return entropy_from_terms(sum, static_cast<double>(n));
}

/// One band (p image rows of one image), counted row by row into one histogram per patch: bin a row, then add
/// each of its patch segments to that patch's histogram. The histograms stay in L1/L2, and reading the next row
/// overlaps the counting of this one. Bins are bytes when there are at most 256 of them. With `deltas`, each
/// patch's sum of entropy terms is kept up to date while counting and the histograms are only cleared; without,
/// each histogram is swept with `terms` at the end.
template <int D, typename Bin>
void band_entropy_by_rows(const typename Element<D>::storage* band_origin, const int64_t* strides,
                          const EntropyParams& P, int64_t patches_per_row, int num_bins, const float* terms,
                          const double* deltas, const uint16_t* u8_lut, float* dst) {
  const int64_t p = P.patch, used_width = patches_per_row * p, n = p * p;
  thread_local std::vector<Bin> row_buffer;
  thread_local std::vector<int32_t> hists;
  thread_local std::vector<double> sums;
  row_buffer.resize(static_cast<size_t>(used_width));
  const size_t hist_values = static_cast<size_t>(patches_per_row * num_bins);
  if (hists.size() < hist_values) hists.assign(hist_values, 0);
  sums.assign(static_cast<size_t>(patches_per_row), 0.0);
  // Segments of 16 and 32 pixels (the usual patch sizes) are counted by fully unrolled code.
  auto count_row = [&](auto segment) {
    constexpr int64_t kFixed = decltype(segment)::value;
    const int64_t length = kFixed ? kFixed : p;
    const Bin* row = row_buffer.data();
    if (deltas) {
      for (int64_t j = 0; j < patches_per_row; ++j)
        sums[j] += count_bins_tracking_terms(row + j * length, length, hists.data() + j * num_bins, deltas);
    } else {
      for (int64_t j = 0; j < patches_per_row; ++j) count_bins(row + j * length, length, hists.data() + j * num_bins);
    }
  };
  for (int64_t r = 0; r < p; ++r) {
    row_bins<D>(band_origin + r * strides[2], P, used_width, row_buffer.data(), u8_lut);
    if (p == 16)
      count_row(std::integral_constant<int64_t, 16>{});
    else if (p == 32)
      count_row(std::integral_constant<int64_t, 32>{});
    else
      count_row(std::integral_constant<int64_t, 0>{});
  }
  if (!deltas) {
    sweep_histograms(hists.data(), patches_per_row, num_bins, num_bins, terms, static_cast<double>(n), dst);
    return;
  }
  std::fill(hists.begin(), hists.begin() + static_cast<int64_t>(hist_values), 0);
  for (int64_t j = 0; j < patches_per_row; ++j) {
    // A constant patch telescopes to term(n) = 0 up to rounding: no other patch comes within 1e-9 bits of 0
    // (the least non-zero entropy of n <= 65536 values is above 2e-4 bits).
    const double sum = std::abs(sums[j]) < 1e-9 * static_cast<double>(n) ? 0.0 : sums[j];
    dst[j] = entropy_from_terms(sum, static_cast<double>(n));
  }
}

template <int D>
void patch_entropy_impl(const void* images, int64_t batch, int64_t channels, int64_t height, int64_t width,
                        const int64_t* strides, int64_t p, int bins, float lo, float range_width, float* out,
                        int num_threads) {
  using T = typename Element<D>::storage;
  const T* base = static_cast<const T*>(images);
  const int64_t bands = height / p, patches_per_row = width / p, used_width = patches_per_row * p;
  const int64_t n = p * p;
  const double log2_n = log2(static_cast<double>(n));
  const bool pow2 = is_power_of_two(range_width);
  const EntropyParams P{channels, width,       strides[1], strides[3], p, lo, range_width, static_cast<float>(bins),
                        pow2,     pow2 ? 1.0f / range_width : 0.0f};
  uint16_t u8_lut[256];
  for (int v = 0; v < 256; ++v)
    u8_lut[v] = static_cast<uint16_t>(grey_bin(static_cast<float>(v), lo, range_width, P.bins_f));

  // With no more bins than pixels, each patch's histogram is counted and then swept bin by bin, the entropy term
  // of each count read from a float table. With more bins than pixels, the band's bins are kept and each patch
  // visits only the bins it uses (terms from a float64 table, or computed for huge patches).
  const bool tabulated = n <= kMaxTabulatedPatch;
  const bool sweep = tabulated && bins <= n;
  // Without AVX-512, sweeping a histogram of about as many bins as pixels costs as much as counting: keep each
  // patch's sum of terms up to date while counting instead.
  const bool track_terms = sweep && 2 * static_cast<int64_t>(bins) > n && !avx512_kernels();
  std::vector<float> float_terms;
  std::vector<double> double_terms, deltas;
  if (sweep && !track_terms) {
    float_terms.assign(static_cast<size_t>(std::max<int64_t>(n + 1, kRegisterTerms)), 0.0f);
    for (int64_t c = 0; c <= n; ++c) float_terms[c] = static_cast<float>(entropy_term(static_cast<double>(c), log2_n));
  }
  if (tabulated && (!sweep || track_terms)) {
    double_terms.resize(n + 1);
    for (int64_t c = 0; c <= n; ++c) double_terms[c] = entropy_term(static_cast<double>(c), log2_n);
  }
  if (track_terms) {
    deltas.resize(n);
    for (int64_t c = 0; c < n; ++c) deltas[c] = double_terms[c + 1] - double_terms[c];
  }
  const double* terms = double_terms.empty() ? nullptr : double_terms.data();
  const double* term_deltas = deltas.empty() ? nullptr : deltas.data();

  parallel_for(batch * bands, p * width * channels, num_threads, [&](int64_t item) {
    const int64_t b = item / bands, band = item % bands;
    const T* band_origin = base + b * strides[0] + band * p * strides[2];
    float* dst = out + (b * bands + band) * patches_per_row;
    if (sweep) {
      if (bins <= 256)
        band_entropy_by_rows<D, uint8_t>(band_origin, strides, P, patches_per_row, bins, float_terms.data(),
                                         term_deltas, u8_lut, dst);
      else
        band_entropy_by_rows<D, uint16_t>(band_origin, strides, P, patches_per_row, bins, float_terms.data(),
                                          term_deltas, u8_lut, dst);
      return;
    }
    // Many bins, few pixels: keep the band's bins and visit only the bins each patch uses.
    thread_local std::vector<uint16_t> band_bins;
    thread_local std::vector<int32_t> hist;
    band_bins.resize(static_cast<size_t>(p * used_width));
    if (hist.size() < static_cast<size_t>(bins)) hist.assign(bins, 0);
    for (int64_t r = 0; r < p; ++r)
      row_bins<D>(band_origin + r * strides[2], P, used_width, band_bins.data() + r * used_width, u8_lut);
    for (int64_t j = 0; j < patches_per_row; ++j)
      dst[j] = patch_entropy_from_bins(band_bins.data() + j * p, used_width, p, bins, hist.data(), terms, log2_n);
  });
}

}  // namespace

int patch_entropy(const void* images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
                  const int64_t* strides, int64_t patch, int bins, float lo, float range_width, float* out,
                  int num_threads) {
  if (patch < 1 || bins < 2 || bins > 65535 || (channels != 1 && channels != 3)) return kBadArgument;
  switch (dtype) {
    case kUInt8:
      patch_entropy_impl<kUInt8>(images, batch, channels, height, width, strides, patch, bins, lo, range_width,
                                 out, num_threads);
      return kOk;
    case kFloat16:
      patch_entropy_impl<kFloat16>(images, batch, channels, height, width, strides, patch, bins, lo, range_width,
                                   out, num_threads);
      return kOk;
    case kBFloat16:
      patch_entropy_impl<kBFloat16>(images, batch, channels, height, width, strides, patch, bins, lo,
                                    range_width, out, num_threads);
      return kOk;
    case kFloat32:
      patch_entropy_impl<kFloat32>(images, batch, channels, height, width, strides, patch, bins, lo, range_width,
                                   out, num_threads);
      return kOk;
    default:
      return kBadDType;
  }
}

}  // namespace cpu
}  // namespace medens
