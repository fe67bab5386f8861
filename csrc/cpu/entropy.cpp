// patch_entropy on the CPU.
//
// Work is split into bands: one image and one row of patches (p image rows). A band is read once, row by row,
// in memory order; each row is turned into histogram bins, then the histogram and entropy of every patch in the
// band are computed from the band's bins, which stay in the L1/L2 cache.
#include <algorithm>
#include <cmath>
#include <vector>

#include "medens/cpu_kernels.h"
#include "medens/patch_math.h"
#include "parallel.h"

namespace medens {
namespace cpu {
namespace {

/// Largest patch (p * p values) for which the entropy terms are tabulated per call.
constexpr int64_t kMaxTabulatedPatch = 1 << 16;

struct EntropyParams {
  int64_t channels, width, stride_c, stride_w, patch;
  float lo, range_width, bins_f;
  bool pow2;        // range_width is a power of two: multiply by inv_width instead of dividing (exactly equal)
  float inv_width;
};

MEDENS_SIMD_CLONES
void bins_f32_rgb(const float* red, const float* green, const float* blue, int64_t count, const EntropyParams& P,
                  uint16_t* bins) {
  const float lo = P.lo, nb = P.bins_f;
  if (P.pow2) {
    const float inv = P.inv_width;
    for (int64_t x = 0; x < count; ++x)
      bins[x] = static_cast<uint16_t>(grey_bin_pow2(luma(red[x], green[x], blue[x]), lo, inv, nb));
  } else {
    const float w = P.range_width;
    for (int64_t x = 0; x < count; ++x)
      bins[x] = static_cast<uint16_t>(grey_bin(luma(red[x], green[x], blue[x]), lo, w, nb));
  }
}

MEDENS_SIMD_CLONES
void bins_f32_grey(const float* grey, int64_t count, const EntropyParams& P, uint16_t* bins) {
  const float lo = P.lo, nb = P.bins_f;
  if (P.pow2) {
    const float inv = P.inv_width;
    for (int64_t x = 0; x < count; ++x) bins[x] = static_cast<uint16_t>(grey_bin_pow2(grey[x], lo, inv, nb));
  } else {
    const float w = P.range_width;
    for (int64_t x = 0; x < count; ++x) bins[x] = static_cast<uint16_t>(grey_bin(grey[x], lo, w, nb));
  }
}

MEDENS_SIMD_CLONES
void bins_u8_rgb(const uint8_t* red, const uint8_t* green, const uint8_t* blue, int64_t count,
                 const EntropyParams& P, uint16_t* bins) {
  const float lo = P.lo, w = P.range_width, nb = P.bins_f;
  for (int64_t x = 0; x < count; ++x) {
    const float v = luma(static_cast<float>(red[x]), static_cast<float>(green[x]), static_cast<float>(blue[x]));
    bins[x] = static_cast<uint16_t>(grey_bin(v, lo, w, nb));
  }
}

/// Bins of the first `count` pixels of one image row. `row` points at (b, 0, y, 0).
template <int D>
void row_bins(const typename Element<D>::storage* row, const EntropyParams& P, int64_t count, uint16_t* bins,
              const uint16_t* u8_lut) {
  using E = Element<D>;
  if constexpr (D == kUInt8) {
    if (P.channels == 1) {  // one channel: a 256-entry table holds every possible bin
      for (int64_t x = 0; x < count; ++x) bins[x] = u8_lut[row[x * P.stride_w]];
      return;
    }
    if (P.stride_w == 1) {
      bins_u8_rgb(row, row + P.stride_c, row + 2 * P.stride_c, count, P, bins);
      return;
    }
  }
  if constexpr (D == kFloat32) {
    if (P.stride_w == 1) {
      if (P.channels == 1)
        bins_f32_grey(row, count, P, bins);
      else
        bins_f32_rgb(row, row + P.stride_c, row + 2 * P.stride_c, count, P, bins);
      return;
    }
  }
  const float lo = P.lo, w = P.range_width, nb = P.bins_f;
  const int64_t s = P.stride_w;
  if (P.channels == 1) {
    for (int64_t x = 0; x < count; ++x) bins[x] = static_cast<uint16_t>(grey_bin(E::to_float(row[x * s]), lo, w, nb));
    return;
  }
  const auto* red = row;
  const auto* green = row + P.stride_c;
  const auto* blue = row + 2 * P.stride_c;
  for (int64_t x = 0; x < count; ++x) {
    const float v = luma(E::to_float(red[x * s]), E::to_float(green[x * s]), E::to_float(blue[x * s]));
    bins[x] = static_cast<uint16_t>(grey_bin(v, lo, w, nb));
  }
}

/// Sum of terms[hist[k]] over all bins, zeroing the histogram. Eight independent partial sums keep the
/// floating-point adds from forming one long dependency chain (and let the compiler use gathers).
MEDENS_SIMD_CLONES
double sweep_histogram(int32_t* hist, int num_bins, const double* terms) {
  double partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int k = 0;
  for (; k + 8 <= num_bins; k += 8)
    for (int i = 0; i < 8; ++i) partial[i] += terms[hist[k + i]];
  for (; k < num_bins; ++k) partial[0] += terms[hist[k]];
  std::fill(hist, hist + num_bins, 0);
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
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

template <int D>
void patch_entropy_impl(const void* images, int64_t batch, int64_t channels, int64_t height, int64_t width,
                        const int64_t* strides, int64_t p, int bins, float lo, float range_width, float* out,
                        int num_threads) {
  using T = typename Element<D>::storage;
  const T* base = static_cast<const T*>(images);
  const int64_t bands = height / p, patches_per_row = width / p, used_width = patches_per_row * p;
  const int64_t n = p * p;
  const double log2_n = log2(static_cast<double>(n));
  std::vector<double> table;
  if (n <= kMaxTabulatedPatch) {
    table.resize(n + 1);
    for (int64_t c = 0; c <= n; ++c) table[c] = entropy_term(static_cast<double>(c), log2_n);
  }
  const double* terms = table.empty() ? nullptr : table.data();
  const bool pow2 = is_power_of_two(range_width);
  const EntropyParams P{channels, width,       strides[1], strides[3], p, lo, range_width, static_cast<float>(bins),
                        pow2,     pow2 ? 1.0f / range_width : 0.0f};
  uint16_t u8_lut[256];
  for (int v = 0; v < 256; ++v) u8_lut[v] = static_cast<uint16_t>(grey_bin(static_cast<float>(v), lo, range_width, P.bins_f));

  const int64_t hist_size = static_cast<int64_t>(bins);
  const bool sweep = terms != nullptr && bins <= n;
  // With about as many bins as pixels, sweeping every bin per patch costs as much as counting: keep each
  // patch's sum of terms up to date while counting instead (sum += term(c + 1) - term(c)), then clear.
  const bool incremental = sweep && 2 * bins > n;
  std::vector<double> deltas;
  if (incremental) {
    deltas.resize(n);
    for (int64_t c = 0; c < n; ++c) deltas[c] = table[c + 1] - table[c];
  }

  parallel_for(batch * bands, p * width * channels, num_threads, [&](int64_t item) {
    const int64_t b = item / bands, band = item % bands;
    const T* band_origin = base + b * strides[0] + band * p * strides[2];
    float* dst = out + (b * bands + band) * patches_per_row;
    if (sweep) {
      // Row by row: bin a row, then add it to the histograms of the patches it crosses. Reading the next row
      // overlaps the counting of this one; the histograms (one per patch of the band) stay in L1/L2.
      thread_local std::vector<uint16_t> row_buffer;
      thread_local std::vector<int32_t> hists;
      thread_local std::vector<double> sums;
      sums.assign(static_cast<size_t>(patches_per_row), 0.0);
      row_buffer.resize(static_cast<size_t>(used_width));
      if (hists.size() < static_cast<size_t>(patches_per_row * hist_size))
        hists.assign(static_cast<size_t>(patches_per_row * hist_size), 0);
      for (int64_t r = 0; r < p; ++r) {
        row_bins<D>(band_origin + r * strides[2], P, used_width, row_buffer.data(), u8_lut);
        const uint16_t* rb = row_buffer.data();
        if (incremental) {
          const double* delta = deltas.data();
          for (int64_t j = 0; j < patches_per_row; ++j) {
            int32_t* h = hists.data() + j * hist_size;
            const uint16_t* seg = rb + j * p;
            double partial[4] = {0, 0, 0, 0};
            int64_t x = 0;
            for (; x + 4 <= p; x += 4)
              for (int i = 0; i < 4; ++i) partial[i] += delta[h[seg[x + i]]++];
            for (; x < p; ++x) partial[0] += delta[h[seg[x]]++];
            sums[j] += (partial[0] + partial[1]) + (partial[2] + partial[3]);
          }
        } else {
          for (int64_t j = 0; j < patches_per_row; ++j) {
            int32_t* h = hists.data() + j * hist_size;
            const uint16_t* seg = rb + j * p;
            for (int64_t x = 0; x < p; ++x) ++h[seg[x]];
          }
        }
      }
      for (int64_t j = 0; j < patches_per_row; ++j) {
        int32_t* h = hists.data() + j * hist_size;
        double sum;
        if (incremental) {
          std::fill(h, h + hist_size, 0);
          // A constant patch telescopes to term(n) = 0 up to rounding: no other patch comes within 1e-9 bits of 0
          // (the least non-zero entropy of n <= 65536 values is above 2e-4 bits).
          sum = std::abs(sums[j]) < 1e-9 * static_cast<double>(n) ? 0.0 : sums[j];
          sums[j] = 0.0;
        } else {
          sum = sweep_histogram(h, bins, terms);
        }
        dst[j] = entropy_from_terms(sum, static_cast<double>(n));
      }
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
