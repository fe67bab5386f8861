// Natural logarithms of many float64 values at once: the masking keys take three per patch.
#pragma once

#include <cstdint>

namespace medens {
namespace cpu {

/// values[i] = log(values[i]) for i < count. On AVX-512 machines eight at a time (within one unit in the last
/// place of the exact result, like glibc's and torch's logs); elsewhere std::log. Zero, negative, infinite, NaN
/// and subnormal values get std::log's answer either way.
void log_in_place(double* values, int64_t count);

/// values[i] = -log(-log(values[i])): Gumbel noise from uniform noise in (0, 1).
void gumbel_in_place(double* values, int64_t count);

}  // namespace cpu
}  // namespace medens
