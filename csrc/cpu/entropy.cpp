// patch_entropy on the CPU.
//
// Work is split into bands: one image and one row of patches (p image rows). A band is read once, row by row,
// in memory order; each row is turned into histogram bins, then the histogram and entropy of every patch in the
// band are computed from the band's bins, which stay in the L1/L2 cache.
#include <algorithm>
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
};

/// Bins of the first `count` pixels of one image row. `row` points at (b, 0, y, 0).
template <int D>
void row_bins(const typename Element<D>::storage* row, const EntropyParams& P, int64_t count, uint16_t* bins) {
  using E = Element<D>;
  const float lo = P.lo, w = P.range_width, nb = P.bins_f;
  if (P.channels == 1) {
    if (P.stride_w == 1) {
      for (int64_t x = 0; x < count; ++x) bins[x] = static_cast<uint16_t>(grey_bin(E::to_float(row[x]), lo, w, nb));
    } else {
      for (int64_t x = 0; x < count; ++x)
        bins[x] = static_cast<uint16_t>(grey_bin(E::to_float(row[x * P.stride_w]), lo, w, nb));
    }
    return;
  }
  const auto* red = row;
  const auto* green = row + P.stride_c;
  const auto* blue = row + 2 * P.stride_c;
  if (P.stride_w == 1) {
    for (int64_t x = 0; x < count; ++x) {
      const float v = luma(E::to_float(red[x]), E::to_float(green[x]), E::to_float(blue[x]));
      bins[x] = static_cast<uint16_t>(grey_bin(v, lo, w, nb));
    }
  } else {
    const int64_t s = P.stride_w;
    for (int64_t x = 0; x < count; ++x) {
      const float v = luma(E::to_float(red[x * s]), E::to_float(green[x * s]), E::to_float(blue[x * s]));
      bins[x] = static_cast<uint16_t>(grey_bin(v, lo, w, nb));
    }
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
  if (num_bins <= n) {  // fewer bins than pixels: sweep the histogram
    for (int k = 0; k < num_bins; ++k) {
      const int32_t c = hist[k];
      sum += terms ? terms[c] : entropy_term(c, log2_n);
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
  const EntropyParams P{channels, width, strides[1], strides[3], p, lo, range_width, static_cast<float>(bins)};

  parallel_for(batch * bands, num_threads, [&](int64_t item) {
    thread_local std::vector<uint16_t> band_bins;
    thread_local std::vector<int32_t> hist;
    band_bins.resize(static_cast<size_t>(p * used_width));
    if (hist.size() < static_cast<size_t>(bins)) hist.assign(bins, 0);
    const int64_t b = item / bands, band = item % bands;
    for (int64_t r = 0; r < p; ++r) {
      const T* row = base + b * strides[0] + (band * p + r) * strides[2];
      row_bins<D>(row, P, used_width, band_bins.data() + r * used_width);
    }
    float* dst = out + (b * bands + band) * patches_per_row;
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
