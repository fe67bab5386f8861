// What the CPU patch_entropy kernels share: the binning parameters of a call, and the AVX-512 row binning.
#pragma once

#include <cstdint>

namespace medens {
namespace cpu {

struct EntropyParams {
  int64_t channels, width, stride_c, stride_w, patch;
  float lo, range_width, bins_f;
  bool pow2;  // range_width is a power of two: multiply by inv_width instead of dividing (exactly equal)
  float inv_width;
};

/// The byte bins of `count` float32 RGB pixels whose channel rows are contiguous (at most 256 bins), exactly as
/// grey_bin gives them. Returns false, doing nothing, where the machine lacks AVX-512; entropy_avx512.cpp.
bool row_bins_f32_rgb_avx512(const float* red, const float* green, const float* blue, int64_t count,
                             const EntropyParams& P, uint8_t* bins);

}  // namespace cpu
}  // namespace medens
