// Per-patch math shared by the CPU (csrc/cpu) and CUDA (kernels/cuda) kernels.
//
// Every function here is compiled for host and device, so the CPU tests exercise exactly the arithmetic the GPU
// runs. The formulas are the specification in medens/ops/reference.py, written so that rounding is identical:
// float32 for grey levels and bins (no fused multiply-adds: the build passes -ffp-contract=off / --fmad=false),
// float64 for entropies and masking keys.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MEDENS_HD __host__ __device__ __forceinline__
#else
#define MEDENS_HD inline
#endif

namespace medens {

// ---- dtype codes (must match DTYPE_CODES in medens/ops/_launch.py) -------------------------------------------
enum DType : int {
  kUInt8 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat32 = 3,
  kFloat64 = 4,
};

// ---- status codes returned by the kernels (STATUS_MESSAGES in medens/ops/_launch.py) --------------------------
enum Status : int {
  kOk = 0,
  kBadDType = 1,
  kIndexOutOfRange = 2,
  kBadArgument = 3,
};

// ---- bit casts and 16-bit float conversions ---------------------------------------------------------------------
MEDENS_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

MEDENS_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

/// IEEE binary16 -> float (exact).
MEDENS_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/// float -> IEEE binary16, round to nearest even (as torch's .half()).
MEDENS_HD uint16_t float_to_half(float f) {
  uint32_t bits = float_to_bits(f);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // inf or NaN (NaN stays quiet)
    return static_cast<uint16_t>(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0u));
  }
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to infinity
  if (magnitude < 0x38800000u) {
    // result is subnormal or zero: adding 0.5f rounds |f| to a multiple of 2^-24 (round to nearest even)
    const float rounded = bits_to_float(magnitude) + 0.5f;
    return static_cast<uint16_t>(sign | (float_to_bits(rounded) - 0x3f000000u));
  }
  const uint32_t odd = (magnitude >> 13) & 1u;
  magnitude += 0xc8000fffu + odd;  // rebias exponent (127 -> 15) and round to nearest even
  return static_cast<uint16_t>(sign | (magnitude >> 13));
}

/// bfloat16 -> float (exact).
MEDENS_HD float bfloat16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

/// float -> bfloat16, round to nearest even (as torch's .bfloat16()).
MEDENS_HD uint16_t float_to_bfloat16(float f) {
  uint32_t bits = float_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

/// Storage type and float conversion for each dtype code.
template <int D> struct Element;
template <> struct Element<kUInt8> {
  using storage = uint8_t;
  MEDENS_HD static float to_float(storage v) { return static_cast<float>(v); }
};
template <> struct Element<kFloat16> {
  using storage = uint16_t;
  MEDENS_HD static float to_float(storage v) { return half_to_float(v); }
  MEDENS_HD static storage from_float(float v) { return float_to_half(v); }
};
template <> struct Element<kBFloat16> {
  using storage = uint16_t;
  MEDENS_HD static float to_float(storage v) { return bfloat16_to_float(v); }
  MEDENS_HD static storage from_float(float v) { return float_to_bfloat16(v); }
};
template <> struct Element<kFloat32> {
  using storage = float;
  MEDENS_HD static float to_float(storage v) { return v; }
  MEDENS_HD static storage from_float(float v) { return v; }
};
template <> struct Element<kFloat64> {
  using storage = double;
  MEDENS_HD static double to_float(storage v) { return v; }
  MEDENS_HD static storage from_float(double v) { return v; }
};

// ---- patch entropy --------------------------------------------------------------------------------------------
/// Grey level of an RGB pixel: 0.299 R + 0.587 G + 0.114 B, in float32, summed left to right.
MEDENS_HD float luma(float r, float g, float b) {
  const float red = 0.299f * r;
  const float green = 0.587f * g;
  const float blue = 0.114f * b;
  return (red + green) + blue;
}

/// Histogram bin of grey level v: floor((v - lo) / width * bins), clamped to [0, bins - 1]; NaN -> 0.
/// `width` is (hi - lo) computed in float32. Branch-free, so loops over it vectorise.
MEDENS_HD int grey_bin(float v, float lo, float width, float bins_f) {
  float x = (v - lo) / width * bins_f;
  x = (x >= 1.0f) ? x : 0.0f;                 // negatives, NaN and [0, 1) all land in bin 0
  x = (x < bins_f) ? x : (bins_f - 1.0f);     // at or past the top: last bin
  return static_cast<int>(x);                 // truncation == floor for x >= 0
}

/// grey_bin for a power-of-two width: multiplying by 1 / width is then exactly the division (no rounding),
/// and much cheaper. Callers check is_power_of_two(width) first.
MEDENS_HD int grey_bin_pow2(float v, float lo, float inv_width, float bins_f) {
  float x = (v - lo) * inv_width * bins_f;
  x = (x >= 1.0f) ? x : 0.0f;
  x = (x < bins_f) ? x : (bins_f - 1.0f);
  return static_cast<int>(x);
}

/// True when w is a positive power of two whose reciprocal is a normal float (so x / w == x * (1 / w)).
MEDENS_HD bool is_power_of_two(float w) {
  const uint32_t bits = float_to_bits(w);
  const uint32_t exponent = (bits >> 23) & 0xffu;
  return (bits & 0x807fffffu) == 0u && exponent >= 2u && exponent <= 252u;
}

/// Contribution of one histogram bin holding `count` of `n` values to n * entropy: count * log2(n / count).
/// Written as count * (log2(n) - log2(count)) so that a constant patch gives exactly 0 and a uniform one exactly
/// log2(#bins).
MEDENS_HD double entropy_term(double count, double log2_n) {
  return count > 0.0 ? count * (log2_n - log2(count)) : 0.0;
}

/// Shannon entropy (bits) from the sum of entropy_term over the bins of a patch of n values.
MEDENS_HD float entropy_from_terms(double sum_terms, double n) {
  const double h = sum_terms / n;
  return static_cast<float>(h > 0.0 ? h : 0.0);
}

// ---- entropy-guided masking -----------------------------------------------------------------------------------
/// Offset added to scores before the log, so zero scores stay finite.
constexpr double kScoreEps = 1e-6;

/// Gumbel top-k key of one patch. `log_weight_scale` is +1/T (prefer high), -1/T (prefer low) or 0 (T = inf).
/// T = 0 is handled by the caller with plain_key. gumbel_key_from_logs combines the two parts when the caller has
/// taken log(score + kScoreEps) and -log(-log(noise)) itself (the CPU kernel, many at a time).
MEDENS_HD double gumbel_key_from_logs(double log_score, double gumbel, double log_weight_scale) {
  return log_weight_scale * log_score + gumbel;
}

MEDENS_HD double gumbel_key(double score, double noise, double log_weight_scale) {
  const double gumbel = -log(-log(noise));
  if (log_weight_scale == 0.0) return gumbel;
  return gumbel_key_from_logs(log(score + kScoreEps), gumbel, log_weight_scale);
}

/// Key for T = 0: the score itself (prefer high) or its negation (prefer low).
MEDENS_HD double plain_key(double score, bool prefer_high) { return prefer_high ? score : -score; }

/// Strict ordering of (key, index) pairs: larger key first, ties to the lower index. The first N - K in this
/// order are hidden.
MEDENS_HD bool key_before(double key_a, int64_t index_a, double key_b, int64_t index_b) {
  return key_a > key_b || (key_a == key_b && index_a < index_b);
}

// ---- patch normalisation (MAE's norm_pix_loss targets) ----------------------------------------------------------
/// Mean and 1 / sqrt(unbiased variance + eps) of n values, two-pass in double precision.
template <typename Loader>
MEDENS_HD void patch_moments(Loader load, int64_t n, double eps, double* mean_out, double* inv_std_out) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(load(i));
  const double mean = sum / static_cast<double>(n);
  double sq = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(load(i)) - mean;
    sq += d * d;
  }
  const double var = sq / static_cast<double>(n - 1);
  *mean_out = mean;
  *inv_std_out = 1.0 / sqrt(var + eps);
}

}  // namespace medens
