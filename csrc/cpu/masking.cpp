// entropy_guided_mask on the CPU: one row of patches per task; keys in float64, the N - K largest hidden
// (ties to the lower index, as key_before orders them), found by selecting the (N - K)-th largest key rather than
// sorting. The three logarithms per key are taken for a whole row at once (vector_log.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "medens/cpu_kernels.h"
#include "medens/patch_math.h"
#include "parallel.h"
#include "vector_log.h"

namespace medens {
namespace cpu {
namespace {

double load_as_double(const void* data, int dtype, int64_t offset) {
  return dtype == kFloat64 ? static_cast<const double*>(data)[offset]
                           : static_cast<double>(static_cast<const float*>(data)[offset]);
}

/// Maps a double to an unsigned integer of the same order (-0.0 and +0.0 must be made equal beforehand).
inline uint64_t order_bits(double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  return (bits >> 63) ? ~bits : (bits | (uint64_t(1) << 63));
}

/// The m-th largest of keys[0, n) (m >= 1), by radix selection on the order-preserving bit pattern: one byte
/// per pass from the top, keeping only the candidates that share the bytes chosen so far. No data-dependent
/// branches beyond the bucket walk, and usually done after two or three passes.
uint64_t mth_largest(const uint64_t* keys, int64_t n, int64_t m) {
  uint64_t prefix = 0, prefix_mask = 0;
  int64_t candidates = n;
  for (int shift = 56; shift >= 0; shift -= 8) {
    int32_t count[256] = {0};
    for (int64_t i = 0; i < n; ++i)
      if ((keys[i] & prefix_mask) == prefix) ++count[(keys[i] >> shift) & 0xff];
    int digit = 255;
    for (; digit > 0; --digit) {
      if (m <= count[digit]) break;
      m -= count[digit];
    }
    prefix |= static_cast<uint64_t>(digit) << shift;
    prefix_mask |= uint64_t(0xff) << shift;
    candidates = count[digit];
    if (candidates == 1) {  // one key left with this prefix: it is the answer
      for (int64_t i = 0; i < n; ++i)
        if ((keys[i] & prefix_mask) == prefix) return keys[i];
    }
  }
  return prefix;
}

}  // namespace

int entropy_guided_mask(const void* scores, int scores_dtype, const int64_t* scores_strides, const void* noise,
                        int noise_dtype, const int64_t* noise_strides, int64_t batch, int64_t num_patches,
                        int64_t num_keep, double temperature, bool prefer_high, bool* mask, int64_t* ids_keep,
                        int64_t* ids_mask, int64_t* ids_restore, int num_threads) {
  const bool plain = temperature == 0.0;
  if (scores_dtype != kFloat32 && scores_dtype != kFloat64) return kBadDType;
  if (!plain && noise_dtype != kFloat32 && noise_dtype != kFloat64) return kBadDType;
  if (num_keep < 1 || num_keep > num_patches || temperature < 0.0) return kBadArgument;
  const int64_t num_hidden = num_patches - num_keep;
  const double scale = std::isinf(temperature) ? 0.0 : (prefer_high ? 1.0 : -1.0) / temperature;

  parallel_for(batch, num_patches * 16, num_threads, [&](int64_t b) {
    thread_local std::vector<uint64_t> keys;
    thread_local std::vector<double> log_scores, gumbels;
    keys.resize(num_patches);
    auto score_at = [&](int64_t i) {
      return load_as_double(scores, scores_dtype, b * scores_strides[0] + i * scores_strides[1]);
    };
    if (plain) {
      for (int64_t i = 0; i < num_patches; ++i) keys[i] = order_bits(plain_key(score_at(i), prefer_high) + 0.0);
    } else {
      // gumbel_key for the whole row, its logarithms taken many at a time.
      gumbels.resize(num_patches);
      for (int64_t i = 0; i < num_patches; ++i)
        gumbels[i] = load_as_double(noise, noise_dtype, b * noise_strides[0] + i * noise_strides[1]);
      gumbel_in_place(gumbels.data(), num_patches);
      if (scale != 0.0) {
        log_scores.resize(num_patches);
        for (int64_t i = 0; i < num_patches; ++i) log_scores[i] = score_at(i) + kScoreEps;
        log_in_place(log_scores.data(), num_patches);
      }
      for (int64_t i = 0; i < num_patches; ++i) {
        const double key = scale == 0.0 ? gumbels[i] : gumbel_key_from_logs(log_scores[i], gumbels[i], scale);
        keys[i] = order_bits(key + 0.0);  // + 0.0 turns -0.0 into +0.0, which compares equal to it
      }
    }
    // The hidden patches are the num_hidden first in key_before order: every key above the num_hidden-th largest
    // key, then, among keys equal to it, the lowest indices.
    uint64_t threshold = 0;
    int64_t equal_to_hide = 0;
    if (num_hidden > 0) {
      threshold = mth_largest(keys.data(), num_patches, num_hidden);
      int64_t above = 0;
      for (int64_t i = 0; i < num_patches; ++i) above += keys[i] > threshold;
      equal_to_hide = num_hidden - above;
    }

    bool* row_mask = mask + b * num_patches;
    int64_t* keep = ids_keep + b * num_keep;
    int64_t* hidden = ids_mask + b * num_hidden;
    int64_t* restore = ids_restore + b * num_patches;
    int64_t kept = 0, masked = 0;
    for (int64_t i = 0; i < num_patches; ++i) {
      bool hide = false;
      if (num_hidden > 0) {
        if (keys[i] > threshold) {
          hide = true;
        } else if (keys[i] == threshold && equal_to_hide > 0) {
          hide = true;
          --equal_to_hide;
        }
      }
      row_mask[i] = hide;
      if (hide) {
        hidden[masked] = i;
        restore[i] = num_keep + masked;
        ++masked;
      } else {
        keep[kept] = i;
        restore[i] = kept;
        ++kept;
      }
    }
  });
  return kOk;
}

}  // namespace cpu
}  // namespace medens
