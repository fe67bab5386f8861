// What the CPU patch_entropy kernels share: the binning parameters of a call, and the AVX-512 band kernel.
#pragma once

#include <cstdint>

namespace medens {
namespace cpu {

/// Largest patch (p * p values) for which the entropy terms are tabulated per call.
constexpr int64_t kMaxTabulatedPatch = 1 << 16;

struct EntropyParams {
  int64_t channels, width, stride_c, stride_w, patch;
  float lo, range_width, bins_f;
  bool pow2;  // range_width is a power of two: multiply by inv_width instead of dividing (exactly equal)
  float inv_width;
};

/// The entropies of one band (p rows of patches' pixels, `patches_per_row` patches) of a float32 RGB image with
/// contiguous rows, for at most 256 bins and no more bins than pixels per patch. `terms` is the float table of
/// sweep_histogram. Returns false, doing nothing, where the machine lacks AVX-512; entropy_avx512.cpp.
bool band_entropy_f32_rgb_avx512(const float* band_origin, int64_t row_stride, const EntropyParams& P,
                                 int64_t patches_per_row, int num_bins, const float* terms, float* dst);

}  // namespace cpu
}  // namespace medens
