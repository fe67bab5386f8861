// log_in_place and gumbel_in_place (vector_log.h).
//
// The AVX-512 logarithm: x = 2^e * m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), s = f / (2 + f), and
// log(1 + f) = 2 atanh(s) = f - (f^2/2 - s (f^2/2 + R)), R = sum_{k=1..10} 2 s^(2k) / (2k + 1): the atanh series,
// whose first omitted term is below 1e-19 here since s^2 <= 0.0295. e ln 2 is added in two parts (a head that
// e multiplies exactly, and a tail) so that the rounding of the product does not reach the result.
#include "vector_log.h"

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "x86.h"

namespace medens {
namespace cpu {
namespace {

#if defined(MEDENS_X86_DISPATCH)
#define MEDENS_AVX512_F __attribute__((target("avx512f")))

// ln 2 with its low 21 significand bits cleared (e * kLn2Head is exact for |e| < 2^11), and the rest of ln 2.
constexpr double kLn2Head = 0x1.62e42fee00000p-1;
constexpr double kLn2Tail = 0x1.a39ef35793c76p-33;

MEDENS_AVX512_F inline __m512d log8(__m512d x) {
  const __m512d one = _mm512_set1_pd(1.0);
  __m512d e = _mm512_getexp_pd(x);                                         // floor(log2 x)
  __m512d m = _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);  // x / 2^e, in [1, 2)
  const __mmask8 upper = _mm512_cmp_pd_mask(m, _mm512_set1_pd(M_SQRT2), _CMP_GT_OQ);
  m = _mm512_mask_mul_pd(m, upper, m, _mm512_set1_pd(0.5));  // exact
  e = _mm512_mask_add_pd(e, upper, e, one);
  const __m512d f = _mm512_sub_pd(m, one);
  const __m512d s = _mm512_div_pd(f, _mm512_add_pd(_mm512_set1_pd(2.0), f));
  const __m512d z = _mm512_mul_pd(s, s);
  __m512d series = _mm512_set1_pd(2.0 / 21.0);  // R / z as a polynomial in z, highest term first
  for (int k = 9; k >= 1; --k) series = _mm512_fmadd_pd(series, z, _mm512_set1_pd(2.0 / (2 * k + 1)));
  const __m512d r = _mm512_mul_pd(series, z);
  const __m512d half_f_squared = _mm512_mul_pd(_mm512_mul_pd(_mm512_set1_pd(0.5), f), f);
  const __m512d small = _mm512_fmadd_pd(s, _mm512_add_pd(half_f_squared, r), _mm512_mul_pd(e, _mm512_set1_pd(kLn2Tail)));
  const __m512d log_m = _mm512_sub_pd(f, _mm512_sub_pd(half_f_squared, small));
  return _mm512_fmadd_pd(e, _mm512_set1_pd(kLn2Head), log_m);
}

/// -v, exactly as the scalar minus (signed zeros too).
MEDENS_AVX512_F inline __m512d negate(__m512d v) {
  return _mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(v), _mm512_set1_epi64(INT64_MIN)));
}

/// out[lane] = log(x[lane]) for the lanes in `lanes`: log8 for positive normal finite values, std::log for the rest.
MEDENS_AVX512_F inline void log_lanes(__m512d x, double* out, __mmask8 lanes) {
  const __mmask8 normal = _mm512_cmp_pd_mask(x, _mm512_set1_pd(DBL_MIN), _CMP_GE_OQ) &
                          _mm512_cmp_pd_mask(x, _mm512_set1_pd(DBL_MAX), _CMP_LE_OQ);
  _mm512_mask_storeu_pd(out, lanes & normal, log8(x));
  const __mmask8 special = lanes & static_cast<__mmask8>(~normal);
  if (special == 0) return;
  double v[8];
  _mm512_storeu_pd(v, x);
  for (__mmask8 rest = special; rest; rest &= static_cast<__mmask8>(rest - 1)) {
    const int lane = __builtin_ctz(rest);
    out[lane] = std::log(v[lane]);
  }
}

/// log (or, with Gumbel, -log(-log)) of values[0, count) in place, eight at a time; the last step masked.
template <bool Gumbel>
MEDENS_AVX512_F void transform_avx512(double* values, int64_t count) {
  for (int64_t i = 0; i < count; i += 8) {
    const __mmask8 lanes = count - i >= 8 ? __mmask8(0xff) : static_cast<__mmask8>((1u << (count - i)) - 1);
    log_lanes(_mm512_mask_loadu_pd(_mm512_set1_pd(1.0), lanes, values + i), values + i, lanes);
    if constexpr (Gumbel) {  // -log(-log(u))
      log_lanes(negate(_mm512_mask_loadu_pd(_mm512_set1_pd(-1.0), lanes, values + i)), values + i, lanes);
      _mm512_mask_storeu_pd(values + i, lanes, negate(_mm512_maskz_loadu_pd(lanes, values + i)));
    }
  }
}
#endif

}  // namespace

void log_in_place(double* values, int64_t count) {
#if defined(MEDENS_X86_DISPATCH)
  if (cpu_has_avx512()) return transform_avx512<false>(values, count);
#endif
  for (int64_t i = 0; i < count; ++i) values[i] = std::log(values[i]);
}

void gumbel_in_place(double* values, int64_t count) {
#if defined(MEDENS_X86_DISPATCH)
  if (cpu_has_avx512()) return transform_avx512<true>(values, count);
#endif
  for (int64_t i = 0; i < count; ++i) values[i] = -std::log(-std::log(values[i]));
}

}  // namespace cpu
}  // namespace medens
