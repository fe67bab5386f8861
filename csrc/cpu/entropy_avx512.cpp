// patch_entropy's most common case on AVX-512 machines: float32 RGB images with contiguous rows, at most 256 bins.
//
// The same band-by-rows scheme as entropy.cpp, with the binning, the counting and the sweep inlined into one
// function per (power-of-two range, patch size) so nothing is called per row or per patch:
// - a row is binned sixteen pixels at a time into a byte buffer (plain stores, so the counting that follows reads
//   them straight from the store buffer; a masked store, used only for a short last step, does not allow that);
// - each patch segment of the row is counted into its patch's histogram (count_bins, unrolled for p = 16 and 32);
// - once the band's rows are counted, each histogram is swept (sweep_histogram_avx512).
// Interleaving the binning and the counting more finely was measured slower on the development machine.
#include <vector>

#include "entropy_band.h"
#include "histogram.h"
#include "medens/cpu_kernels.h"
#include "medens/patch_math.h"
#include "x86.h"

namespace medens {
namespace cpu {

#if defined(MEDENS_X86_DISPATCH)
namespace {

#define MEDENS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

/// How a grey level is scaled to a bin: the default range [0, 1) (v * bins), a power-of-two width
/// ((v - lo) * (1 / width) * bins) or any width ((v - lo) / width * bins). Each rounds exactly as grey_bin.
enum class Scaling { kUnitRange, kPow2, kDivide };

/// The constants of row_bins_avx512, in registers.
struct BinScale {
  __m512 red_weight, green_weight, blue_weight, lo, one, num_bins, last_bin, scale;
};

/// Bins of sixteen pixels: grey level 0.299 R + 0.587 G + 0.114 B, then grey_bin, exactly.
template <Scaling S>
MEDENS_AVX512 inline __m128i bins_of(__m512 r, __m512 g, __m512 b, const BinScale& k) {
  const __m512 v = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(r, k.red_weight), _mm512_mul_ps(g, k.green_weight)),
                                 _mm512_mul_ps(b, k.blue_weight));
  __m512 t;
  if constexpr (S == Scaling::kUnitRange)  // v - 0 == v and v * 1 == v exactly, so both steps can go
    t = _mm512_mul_ps(v, k.num_bins);
  else if constexpr (S == Scaling::kPow2)
    t = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(v, k.lo), k.scale), k.num_bins);
  else
    t = _mm512_mul_ps(_mm512_div_ps(_mm512_sub_ps(v, k.lo), k.scale), k.num_bins);
  t = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(t, k.one, _CMP_GE_OQ), t);                      // below 1 or NaN: bin 0
  t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, k.num_bins, _CMP_LT_OQ), k.last_bin, t);  // at or past the top
  return _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(t));
}

/// Bins of one row into bytes.
template <Scaling S>
MEDENS_AVX512 inline void row_bins_avx512(const float* red, const float* green, const float* blue, int64_t count,
                                          const EntropyParams& P, uint8_t* bins) {
  const BinScale k{_mm512_set1_ps(0.299f),  _mm512_set1_ps(0.587f), _mm512_set1_ps(0.114f),
                   _mm512_set1_ps(P.lo),    _mm512_set1_ps(1.0f),   _mm512_set1_ps(P.bins_f),
                   _mm512_set1_ps(P.bins_f - 1.0f),
                   _mm512_set1_ps(S == Scaling::kDivide ? P.range_width : P.inv_width)};
  int64_t x = 0;
  for (; x + 16 <= count; x += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bins + x),
                     bins_of<S>(_mm512_loadu_ps(red + x), _mm512_loadu_ps(green + x), _mm512_loadu_ps(blue + x), k));
  if (x < count) {
    const __mmask16 lanes = static_cast<__mmask16>((1u << (count - x)) - 1);
    _mm_mask_storeu_epi8(bins + x, lanes,
                         bins_of<S>(_mm512_maskz_loadu_ps(lanes, red + x), _mm512_maskz_loadu_ps(lanes, green + x),
                                    _mm512_maskz_loadu_ps(lanes, blue + x), k));
  }
}

/// One band. FixedPatch is the patch size when it is 16 or 32 (fully unrolled counting), else 0.
template <Scaling S, int FixedPatch>
MEDENS_AVX512 void band_entropy(const float* band_origin, int64_t row_stride, const EntropyParams& P,
                                int64_t patches_per_row, int num_bins, const float* terms, float* dst) {
  const int64_t p = FixedPatch ? FixedPatch : P.patch, used_width = patches_per_row * p;
  thread_local std::vector<uint8_t> row_buffer;
  thread_local std::vector<int32_t> hist_buffer;
  if (row_buffer.size() < static_cast<size_t>(used_width)) row_buffer.resize(static_cast<size_t>(used_width));
  constexpr int64_t kStride = 256;  // byte bins: every histogram fits 256 counts, whatever num_bins is
  const size_t hist_values = static_cast<size_t>(patches_per_row * kStride);
  if (hist_buffer.size() < hist_values) hist_buffer.assign(hist_values, 0);
  uint8_t* bins = row_buffer.data();
  int32_t* hists = hist_buffer.data();
  for (int64_t r = 0; r < p; ++r) {
    const float* red = band_origin + r * row_stride;
    row_bins_avx512<S>(red, red + P.stride_c, red + 2 * P.stride_c, used_width, P, bins);
    for (int64_t j = 0; j < patches_per_row; ++j) count_bins(bins + j * p, p, hists + j * kStride);
  }
  const double n = static_cast<double>(p * p);
  for (int64_t j = 0; j < patches_per_row; ++j)
    dst[j] = entropy_from_terms(sweep_histogram_avx512(hists + j * kStride, num_bins, terms), n);
}

template <Scaling S>
void band_entropy_for_patch(const float* band_origin, int64_t row_stride, const EntropyParams& P,
                            int64_t patches_per_row, int num_bins, const float* terms, float* dst) {
  if (P.patch == 16)
    band_entropy<S, 16>(band_origin, row_stride, P, patches_per_row, num_bins, terms, dst);
  else if (P.patch == 32)
    band_entropy<S, 32>(band_origin, row_stride, P, patches_per_row, num_bins, terms, dst);
  else
    band_entropy<S, 0>(band_origin, row_stride, P, patches_per_row, num_bins, terms, dst);
}

}  // namespace

bool band_entropy_f32_rgb_avx512(const float* band_origin, int64_t row_stride, const EntropyParams& P,
                                 int64_t patches_per_row, int num_bins, const float* terms, float* dst) {
  if (!cpu_has_avx512()) return false;
  if (P.lo == 0.0f && P.range_width == 1.0f)
    band_entropy_for_patch<Scaling::kUnitRange>(band_origin, row_stride, P, patches_per_row, num_bins, terms, dst);
  else if (P.pow2)
    band_entropy_for_patch<Scaling::kPow2>(band_origin, row_stride, P, patches_per_row, num_bins, terms, dst);
  else
    band_entropy_for_patch<Scaling::kDivide>(band_origin, row_stride, P, patches_per_row, num_bins, terms, dst);
  return true;
}

bool avx512_kernels() { return cpu_has_avx512(); }

#else  // no AVX-512 dispatch on this compiler or architecture

bool avx512_kernels() { return false; }

bool band_entropy_f32_rgb_avx512(const float*, int64_t, const EntropyParams&, int64_t, int, const float*, float*) {
  return false;
}

#endif

}  // namespace cpu
}  // namespace medens
