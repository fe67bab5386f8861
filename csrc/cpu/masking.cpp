// entropy_guided_mask on the CPU: one row of patches per task; keys in float64, the N - K largest hidden
// (ties to the lower index), found with a partial selection rather than a full sort.
#include <algorithm>
#include <cmath>
#include <vector>

#include "medens/cpu_kernels.h"
#include "medens/patch_math.h"
#include "parallel.h"

namespace medens {
namespace cpu {
namespace {

double load_as_double(const void* data, int dtype, int64_t offset) {
  return dtype == kFloat64 ? static_cast<const double*>(data)[offset]
                           : static_cast<double>(static_cast<const float*>(data)[offset]);
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
    thread_local std::vector<double> keys;
    thread_local std::vector<int64_t> order;
    keys.resize(num_patches);
    order.resize(num_patches);
    for (int64_t i = 0; i < num_patches; ++i) {
      const double score = load_as_double(scores, scores_dtype, b * scores_strides[0] + i * scores_strides[1]);
      keys[i] = plain ? plain_key(score, prefer_high)
                      : gumbel_key(score, load_as_double(noise, noise_dtype, b * noise_strides[0] + i * noise_strides[1]),
                                   scale);
      order[i] = i;
    }
    const double* k = keys.data();
    auto before = [k](int64_t a, int64_t c) { return key_before(k[a], a, k[c], c); };
    if (num_hidden > 0 && num_hidden < num_patches)
      std::nth_element(order.begin(), order.begin() + num_hidden, order.end(), before);

    bool* row_mask = mask + b * num_patches;
    std::fill(row_mask, row_mask + num_patches, false);
    for (int64_t j = 0; j < num_hidden; ++j) row_mask[order[j]] = true;

    int64_t* keep = ids_keep + b * num_keep;
    int64_t* hidden = ids_mask + b * num_hidden;
    int64_t* restore = ids_restore + b * num_patches;
    int64_t kept = 0, masked = 0;
    for (int64_t i = 0; i < num_patches; ++i) {
      if (row_mask[i]) {
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
