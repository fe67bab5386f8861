// patch_entropy's binning of float32 RGB rows into byte bins with AVX-512 (the common case: contiguous rows, at
// most 256 bins), sixteen pixels per step. The steps use plain stores, because the counting that follows
// (entropy.cpp) reads the bytes at once, and a load can take its data from a plain store still in the store
// buffer but not from a masked one; only a short last step is masked.
#include "entropy_band.h"
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

}  // namespace

bool row_bins_f32_rgb_avx512(const float* red, const float* green, const float* blue, int64_t count,
                             const EntropyParams& P, uint8_t* bins) {
  if (!cpu_has_avx512()) return false;
  if (P.lo == 0.0f && P.range_width == 1.0f)
    row_bins_avx512<Scaling::kUnitRange>(red, green, blue, count, P, bins);
  else if (P.pow2)
    row_bins_avx512<Scaling::kPow2>(red, green, blue, count, P, bins);
  else
    row_bins_avx512<Scaling::kDivide>(red, green, blue, count, P, bins);
  return true;
}

bool avx512_kernels() { return cpu_has_avx512(); }

#else  // no AVX-512 dispatch on this compiler or architecture

bool avx512_kernels() { return false; }

bool row_bins_f32_rgb_avx512(const float*, const float*, const float*, int64_t, const EntropyParams&, uint8_t*) {
  return false;
}

#endif

}  // namespace cpu
}  // namespace medens
