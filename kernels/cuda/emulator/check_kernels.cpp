// Checks the CUDA kernels of medens without a GPU: the launchers in kernels/cuda/*.cu run in the CPU emulator
// (cuda_emulator.h) and their results are compared with the CPU kernels of csrc/cpu, which the op tests compare
// with the reference. Built and run by tests/ops/test_cuda.py, once under AddressSanitizer (out-of-bounds global or
// shared memory) and once under ThreadSanitizer (missing barriers, races between blocks).
//
//   g++ -std=c++20 -DMEDENS_CUDA_EMULATOR -Icsrc/include -Ikernels/cuda -ffp-contract=off -pthread
//       kernels/cuda/emulator/check_kernels.cpp csrc/cpu/*.cpp -o check_kernels && ./check_kernels [full|quick]
//
// Exact agreement is required for everything but sums of floating-point terms in a different order (entropies,
// normalised patches, gradients), which must agree to a few ulps. The run ends with a check that every kernel
// variant (vectorised and scalar paths, shared and global selection) was launched at least once.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "../entropy.cu"
#include "../masking.cu"
#include "../patches.cu"
#include "medens/cpu_kernels.h"

namespace {

using namespace medens;

int failures = 0;
int checks = 0;

void fail_case(const std::string& what) {
  if (++failures <= 50) std::printf("FAIL %s\n", what.c_str());
}

/// Host buffer of exactly `bytes` bytes (so AddressSanitizer sees any overflow), 64-byte aligned.
struct Buffer {
  explicit Buffer(size_t bytes = 0) : size(bytes) {
    if (posix_memalign(&data, 64, bytes ? bytes : 1) != 0) std::abort();
    std::memset(data, 0, bytes);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& other) noexcept : data(other.data), size(other.size) { other.data = nullptr; }
  ~Buffer() { std::free(data); }
  template <typename T> T* as() { return static_cast<T*>(data); }
  template <typename T> const T* as() const { return static_cast<const T*>(data); }
  void* data = nullptr;
  size_t size = 0;
};

size_t element_size(int dtype) {
  switch (dtype) {
    case kUInt8: return 1;
    case kFloat16:
    case kBFloat16: return 2;
    case kFloat32: return 4;
    default: return 8;
  }
}

const char* dtype_name(int dtype) {
  static const char* names[] = {"uint8", "float16", "bfloat16", "float32", "float64"};
  return names[dtype];
}

void store_value(int dtype, void* base, int64_t index, double v) {
  switch (dtype) {
    case kUInt8: static_cast<uint8_t*>(base)[index] = static_cast<uint8_t>(v); break;
    case kFloat16: static_cast<uint16_t*>(base)[index] = float_to_half(static_cast<float>(v)); break;
    case kBFloat16: static_cast<uint16_t*>(base)[index] = float_to_bfloat16(static_cast<float>(v)); break;
    case kFloat32: static_cast<float*>(base)[index] = static_cast<float>(v); break;
    default: static_cast<double*>(base)[index] = v;
  }
}

double load_value(int dtype, const void* base, int64_t index) {
  switch (dtype) {
    case kUInt8: return static_cast<const uint8_t*>(base)[index];
    case kFloat16: return half_to_float(static_cast<const uint16_t*>(base)[index]);
    case kBFloat16: return bfloat16_to_float(static_cast<const uint16_t*>(base)[index]);
    case kFloat32: return static_cast<const float*>(base)[index];
    default: return static_cast<const double*>(base)[index];
  }
}

enum Layout { kContiguous, kChannelsLast, kMisaligned, kPaddedRows, kNumLayouts };
const char* layout_name(int layout) {
  static const char* names[] = {"contiguous", "channels_last", "misaligned", "padded_rows"};
  return names[layout];
}

/// A (B, C, H, W) image in one of several memory layouts.
struct Image {
  int dtype;
  int64_t B, C, H, W;
  int64_t strides[4];
  int64_t offset;  // elements before element (0, 0, 0, 0)
  Buffer buffer;
  const void* ptr() const { return static_cast<const char*>(buffer.data) + offset * element_size(dtype); }
  int64_t index(int64_t b, int64_t c, int64_t y, int64_t x) const {
    return offset + b * strides[0] + c * strides[1] + y * strides[2] + x * strides[3];
  }
};

Image make_image(int dtype, int64_t B, int64_t C, int64_t H, int64_t W, int layout, std::mt19937_64& rng,
                 int value_kind) {
  int64_t strides[4], offset = 0, elements;
  if (layout == kChannelsLast) {
    strides[0] = H * W * C;
    strides[1] = 1;
    strides[2] = W * C;
    strides[3] = C;
    elements = B * C * H * W;
  } else if (layout == kPaddedRows) {
    const int64_t pitch = W + 3;
    strides[0] = C * H * pitch;
    strides[1] = H * pitch;
    strides[2] = pitch;
    strides[3] = 1;
    elements = B * C * H * pitch;
  } else {
    strides[0] = C * H * W;
    strides[1] = H * W;
    strides[2] = W;
    strides[3] = 1;
    offset = layout == kMisaligned ? 1 : 0;
    elements = B * C * H * W + offset;
  }
  Image image{dtype, B, C, H, W, {strides[0], strides[1], strides[2], strides[3]}, offset,
              Buffer(static_cast<size_t>(elements) * element_size(dtype))};
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int64_t i = 0; i < elements; ++i) {
    double v;
    if (dtype == kUInt8) {
      v = value_kind == 1 ? (i / 7) % 3 * 100 : byte(rng);  // kind 1: few distinct values
    } else if (value_kind == 1) {
      v = static_cast<double>((i / 5) % 4) / 3.0;
    } else {
      v = unit(rng) * 1.2 - 0.1;  // some values outside [0, 1): first and last bins
      const double special = unit(rng);
      if (value_kind == 2 && special < 0.01) v = NAN;
      else if (value_kind == 2 && special < 0.02) v = INFINITY;
      else if (value_kind == 2 && special < 0.03) v = -INFINITY;
    }
    store_value(dtype, image.buffer.data, i, v);
  }
  return image;
}

/// |a - b| within `tolerance` (absolute, and relative above 1), NaNs equal.
bool close(double a, double b, double tolerance) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (a == b) return true;
  return std::fabs(a - b) <= tolerance * std::max(1.0, std::fabs(b));
}

double tolerance_of(int dtype) {
  switch (dtype) {
    case kFloat16: return 2e-3;
    case kBFloat16: return 1.6e-2;
    case kFloat32: return 4e-6;
    default: return 1e-12;
  }
}

// ---- patch_entropy ------------------------------------------------------------------------------------------------

void check_entropy(int dtype, int64_t channels, int layout, int64_t patch, int64_t rows, int64_t cols, int bins,
                   int value_kind, std::mt19937_64& rng) {
  const int64_t B = 2, H = rows * patch, W = cols * patch, N = rows * cols;
  Image image = make_image(dtype, B, channels, H, W, layout, rng, value_kind);
  // ranges: the default, one whose width is not a power of two, one whose width is (multiplied by the reciprocal)
  const float ranges[3][2][2] = {{{0.0f, 255.0f}, {0.0f, 1.0f}},
                                 {{10.0f, 200.0f}, {0.25f, 0.8f}},
                                 {{0.0f, 256.0f}, {-0.5f, 1.5f}}};
  const float lo = ranges[value_kind][dtype == kUInt8 ? 0 : 1][0], hi = ranges[value_kind][dtype == kUInt8 ? 0 : 1][1];
  Buffer expected(B * N * sizeof(float)), actual(B * N * sizeof(float));
  Buffer terms(static_cast<size_t>(patch * patch + 1) * sizeof(double));
  const int cpu = cpu::patch_entropy(image.ptr(), dtype, B, channels, H, W, image.strides, patch, bins, lo, hi - lo,
                                     expected.as<float>(), 1);
  const int gpu = cuda::patch_entropy(image.ptr(), dtype, B, channels, H, W, image.strides, patch, bins, lo, hi - lo,
                                      terms.as<double>(), actual.as<float>(), 0, nullptr);
  char what[256];
  std::snprintf(what, sizeof what, "patch_entropy %s C=%lld %s p=%lld grid=%lldx%lld bins=%d values=%d range=[%g, %g]",
                dtype_name(dtype), (long long)channels, layout_name(layout), (long long)patch, (long long)rows,
                (long long)cols, bins, value_kind, lo, hi);
  ++checks;
  if (cpu != kOk || gpu != kOk) {
    fail_case(std::string(what) + ": status cpu " + std::to_string(cpu) + " cuda " + std::to_string(gpu));
    return;
  }
  for (int64_t i = 0; i < B * N; ++i) {
    if (!close(actual.as<float>()[i], expected.as<float>()[i], 2e-6)) {
      char detail[128];
      std::snprintf(detail, sizeof detail, ": patch %lld cuda %.9g cpu %.9g", (long long)i,
                    actual.as<float>()[i], expected.as<float>()[i]);
      fail_case(what + std::string(detail));
      return;
    }
  }
}

void entropy_cases(bool quick, std::mt19937_64& rng) {
  struct Shape { int64_t patch, rows, cols; };
  const Shape shapes[] = {{16, 2, 3}, {8, 3, 2}, {3, 2, 3}, {1, 4, 5}, {32, 1, 2}, {24, 1, 2}};
  const int bin_counts[] = {256, 7, 2, 4096, 100};
  int index = 0;
  for (int dtype : {kUInt8, kFloat16, kBFloat16, kFloat32}) {
    for (int64_t channels : {1, 3}) {
      for (int layout = 0; layout < kNumLayouts; ++layout) {
        if (quick && layout != (index / kNumLayouts) % kNumLayouts) {
          ++index;
          continue;
        }
        const Shape& s = shapes[index % (sizeof shapes / sizeof shapes[0])];
        const int bins = bin_counts[index % (sizeof bin_counts / sizeof bin_counts[0])];
        check_entropy(dtype, channels, layout, s.patch, s.rows, s.cols, bins, index % 3, rng);
        ++index;
      }
    }
  }
  // the benchmark's layout (float32 RGB, p = 16, 256 bins), and uint8 with its default range (bin = value)
  check_entropy(kFloat32, 3, kContiguous, 16, 2, 3, 256, 2, rng);
  check_entropy(kUInt8, 3, kContiguous, 16, 2, 2, 256, 0, rng);
  // more bins than pixels (pixel sweep) with the vector path
  check_entropy(kFloat32, 1, kContiguous, 8, 2, 2, 4096, 0, rng);
  check_entropy(kFloat16, 3, kContiguous, 16, 1, 2, 1000, 0, rng);
}

// ---- entropy_guided_mask ------------------------------------------------------------------------------------------

void check_mask(int64_t B, int64_t N, int64_t keep, double temperature, bool prefer_high, int scores_dtype,
                int noise_dtype, bool transposed, int tie_kind, std::mt19937_64& rng) {
  const size_t ss = element_size(scores_dtype), ns = element_size(noise_dtype);
  Buffer scores(B * N * ss), noise(B * N * ns);
  // transposed: element (b, i) at i * B + b
  const int64_t s0 = transposed ? 1 : N, s1 = transposed ? B : 1;
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i) {
      double s = unit(rng) * 8.0;
      if (tie_kind == 1) s = static_cast<double>(static_cast<int>(s));  // many equal scores
      if (tie_kind == 2) s = 0.0;                                       // all equal
      double u = unit(rng) * 0.98 + 0.01;
      if (tie_kind >= 1 && i % 3 == 0) u = 0.5;                         // equal noise too
      store_value(scores_dtype, scores.data, b * s0 + i * s1, s);
      store_value(noise_dtype, noise.data, b * s0 + i * s1, u);
    }
  const int64_t strides[2] = {s0, s1};
  const int64_t hidden = N - keep;
  Buffer mask_cpu(B * N), keep_cpu(B * keep * 8), hid_cpu(std::max<int64_t>(B * hidden, 1) * 8), rest_cpu(B * N * 8);
  Buffer mask_gpu(B * N), keep_gpu(B * keep * 8), hid_gpu(std::max<int64_t>(B * hidden, 1) * 8), rest_gpu(B * N * 8);
  Buffer workspace(N > cuda::kMaxSharedKeys ? B * N * 8 : 0);
  const int cpu = cpu::entropy_guided_mask(scores.data, scores_dtype, strides, noise.data, noise_dtype, strides, B, N,
                                           keep, temperature, prefer_high, mask_cpu.as<bool>(), keep_cpu.as<int64_t>(),
                                           hid_cpu.as<int64_t>(), rest_cpu.as<int64_t>(), 1);
  const int gpu = cuda::entropy_guided_mask(
      scores.data, scores_dtype, strides, temperature == 0.0 ? nullptr : noise.data, noise_dtype, strides, B, N, keep,
      temperature, prefer_high, N > cuda::kMaxSharedKeys ? workspace.as<uint64_t>() : nullptr, mask_gpu.as<bool>(),
      keep_gpu.as<int64_t>(), hid_gpu.as<int64_t>(), rest_gpu.as<int64_t>(), 0, nullptr);
  char what[256];
  std::snprintf(what, sizeof what, "entropy_guided_mask B=%lld N=%lld K=%lld T=%g prefer_%s scores=%s noise=%s%s ties=%d",
                (long long)B, (long long)N, (long long)keep, temperature, prefer_high ? "high" : "low",
                dtype_name(scores_dtype), dtype_name(noise_dtype), transposed ? " transposed" : "", tie_kind);
  ++checks;
  if (cpu != kOk || gpu != kOk) {
    fail_case(std::string(what) + ": status cpu " + std::to_string(cpu) + " cuda " + std::to_string(gpu));
    return;
  }
  if (std::memcmp(mask_cpu.data, mask_gpu.data, B * N) != 0) return fail_case(std::string(what) + ": mask differs");
  if (std::memcmp(keep_cpu.data, keep_gpu.data, B * keep * 8) != 0)
    return fail_case(std::string(what) + ": ids_keep differs");
  if (std::memcmp(hid_cpu.data, hid_gpu.data, B * hidden * 8) != 0)
    return fail_case(std::string(what) + ": ids_mask differs");
  if (std::memcmp(rest_cpu.data, rest_gpu.data, B * N * 8) != 0)
    return fail_case(std::string(what) + ": ids_restore differs");
}

void mask_cases(bool quick, std::mt19937_64& rng) {
  const double temperatures[] = {0.0, 1.0, 0.37, INFINITY};
  struct Row { int64_t n, keep; };
  // every temperature and preference on short rows (one block of 64 to 256 threads)
  const Row short_rows[] = {{196, 49}, {5, 1}, {1, 1}, {33, 33}, {255, 200}, {16, 15}};
  int index = 0;
  for (const Row& row : short_rows) {
    for (double t : temperatures) {
      for (bool prefer_high : {true, false}) {
        if (!quick || index % 3 == 0 || row.n == 196) {
          const int sd = index % 2 ? kFloat64 : kFloat32, nd = index % 3 ? kFloat32 : kFloat64;
          check_mask(3, row.n, row.keep, t, prefer_high, sd, nd, index % 4 == 1, index % 3, rng);
        }
        ++index;
      }
    }
  }
  // long rows (1024 threads, several chunks per thread): fewer combinations
  check_mask(2, 1000, 250, 1.0, true, kFloat32, kFloat32, false, 1, rng);
  check_mask(2, 4096, 1024, 0.0, false, kFloat64, kFloat32, true, 0, rng);
  // rows longer than the shared-memory limit go through the global workspace
  check_mask(2, 5000, 1250, 0.5, true, kFloat32, kFloat32, false, 0, rng);
  if (!quick) {
    check_mask(2, 4097, 4000, 0.0, false, kFloat64, kFloat64, true, 1, rng);
    check_mask(2, 2500, 1, INFINITY, true, kFloat32, kFloat64, false, 2, rng);
    check_mask(2, 1025, 1024, 1.0, false, kFloat64, kFloat64, false, 1, rng);
  }
}

// ---- gather_patches -----------------------------------------------------------------------------------------------

struct Ids {
  Buffer buffer;
  int64_t strides[2];
};

/// (B, K) ids in [0, N) with repeats; transposed storage when `transposed`; one id out of range when `bad`.
Ids make_ids(int64_t B, int64_t K, int64_t N, bool transposed, bool bad, std::mt19937_64& rng) {
  Ids ids{Buffer(B * K * 8), {transposed ? 1 : K, transposed ? B : 1}};
  std::uniform_int_distribution<int64_t> pick(0, N - 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k) ids.buffer.as<int64_t>()[b * ids.strides[0] + k * ids.strides[1]] = pick(rng);
  if (bad) ids.buffer.as<int64_t>()[(B - 1) * ids.strides[0] + (K / 2) * ids.strides[1]] = N;
  return ids;
}

void check_gather(int dtype, int64_t channels, int layout, int64_t patch, int64_t rows, int64_t cols, int64_t K,
                  bool normalize, bool transposed_ids, bool bad, std::mt19937_64& rng) {
  const int64_t B = 2, H = rows * patch, W = cols * patch, N = rows * cols, D = patch * patch * channels;
  Image image = make_image(dtype, B, channels, H, W, layout, rng, 0);
  Ids ids = make_ids(B, K, N, transposed_ids, bad, rng);
  const size_t es = element_size(dtype);
  Buffer expected(B * K * D * es), actual(B * K * D * es), flag(sizeof(int));
  const int cpu = cpu::gather_patches(image.ptr(), dtype, B, channels, H, W, image.strides, ids.buffer.as<int64_t>(),
                                      ids.strides, K, patch, normalize, 1e-6, expected.data, 1);
  const int gpu = cuda::gather_patches(image.ptr(), dtype, B, channels, H, W, image.strides, ids.buffer.as<int64_t>(),
                                       ids.strides, K, patch, normalize, 1e-6, actual.data, flag.as<int>(), 0, nullptr);
  char what[256];
  std::snprintf(what, sizeof what, "gather_patches %s C=%lld %s p=%lld grid=%lldx%lld K=%lld normalize=%d%s%s",
                dtype_name(dtype), (long long)channels, layout_name(layout), (long long)patch, (long long)rows,
                (long long)cols, (long long)K, normalize, transposed_ids ? " ids transposed" : "",
                bad ? " bad id" : "");
  ++checks;
  if (gpu != kOk) return fail_case(std::string(what) + ": cuda status " + std::to_string(gpu));
  if (bad) {
    if (cpu != kIndexOutOfRange) return fail_case(std::string(what) + ": cpu did not report the bad id");
    if (*flag.as<int>() != 1) return fail_case(std::string(what) + ": index_error not set");
    // the rows of good ids are still right; the bad row is NaN
    const int64_t bad_item = (B - 1) * K + K / 2;
    for (int64_t q = 0; q < D; ++q)
      if (!std::isnan(load_value(dtype, actual.data, bad_item * D + q)))
        return fail_case(std::string(what) + ": bad row not NaN");
    return;
  }
  if (cpu != kOk) return fail_case(std::string(what) + ": cpu status " + std::to_string(cpu));
  if (*flag.as<int>() != 0) return fail_case(std::string(what) + ": index_error set without a bad id");
  if (!normalize) {
    if (std::memcmp(expected.data, actual.data, B * K * D * es) != 0)
      return fail_case(std::string(what) + ": values differ (must be bit-exact)");
    return;
  }
  for (int64_t i = 0; i < B * K * D; ++i) {
    const double e = load_value(dtype, expected.data, i), a = load_value(dtype, actual.data, i);
    if (!close(a, e, tolerance_of(dtype))) {
      char detail[128];
      std::snprintf(detail, sizeof detail, ": element %lld cuda %.17g cpu %.17g", (long long)i, a, e);
      return fail_case(what + std::string(detail));
    }
  }
}

void check_gather_backward(int dtype, int64_t channels, int layout, int64_t patch, int64_t rows, int64_t cols,
                           int64_t K, bool normalize, bool bad, std::mt19937_64& rng) {
  const int64_t B = 2, H = rows * patch, W = cols * patch, N = rows * cols, D = patch * patch * channels;
  Image image = make_image(dtype, B, channels, H, W, layout, rng, 0);
  Ids ids = make_ids(B, K, N, false, bad, rng);
  const size_t es = element_size(dtype);
  Buffer grad(B * K * D * es), expected(B * channels * H * W * es), actual(B * channels * H * W * es),
      flag(sizeof(int));
  std::normal_distribution<double> normal;
  for (int64_t i = 0; i < B * K * D; ++i) store_value(dtype, grad.data, i, normal(rng));
  const int cpu = cpu::gather_patches_backward(grad.data, dtype, image.ptr(), image.strides, B, channels, H, W,
                                               ids.buffer.as<int64_t>(), ids.strides, K, patch, normalize, 1e-6,
                                               expected.data, 1);
  const int gpu = cuda::gather_patches_backward(grad.data, dtype, image.ptr(), image.strides, B, channels, H, W,
                                                ids.buffer.as<int64_t>(), ids.strides, K, patch, normalize, 1e-6,
                                                actual.data, flag.as<int>(), 0, nullptr);
  char what[256];
  std::snprintf(what, sizeof what, "gather_patches_backward %s C=%lld %s p=%lld grid=%lldx%lld K=%lld normalize=%d%s",
                dtype_name(dtype), (long long)channels, layout_name(layout), (long long)patch, (long long)rows,
                (long long)cols, (long long)K, normalize, bad ? " bad id" : "");
  ++checks;
  if (gpu != kOk) return fail_case(std::string(what) + ": cuda status " + std::to_string(gpu));
  if (bad) {
    if (cpu != kIndexOutOfRange) return fail_case(std::string(what) + ": cpu did not report the bad id");
    if (*flag.as<int>() != 1) return fail_case(std::string(what) + ": index_error not set");
    return;
  }
  if (cpu != kOk) return fail_case(std::string(what) + ": cpu status " + std::to_string(cpu));
  // repeated ids are summed in a different order: a few ulps of the largest contribution
  for (int64_t i = 0; i < B * channels * H * W; ++i) {
    const double e = load_value(dtype, expected.data, i), a = load_value(dtype, actual.data, i);
    if (!close(a, e, dtype == kFloat32 ? 2e-5 : 1e-12)) {
      char detail[128];
      std::snprintf(detail, sizeof detail, ": element %lld cuda %.17g cpu %.17g", (long long)i, a, e);
      return fail_case(what + std::string(detail));
    }
  }
}

void gather_cases(bool quick, std::mt19937_64& rng) {
  struct Shape { int64_t channels, patch, rows, cols, K; };
  const Shape shapes[] = {{3, 16, 2, 3, 4}, {1, 8, 3, 2, 5}, {3, 4, 2, 2, 7}, {2, 2, 3, 3, 9}, {1, 1, 4, 5, 6},
                          {3, 8, 2, 2, 3}, {3, 3, 2, 2, 3}};
  int index = 0;
  for (int dtype : {kFloat16, kBFloat16, kFloat32, kFloat64}) {
    for (int layout = 0; layout < kNumLayouts; ++layout) {
      for (bool normalize : {false, true}) {
        if (quick && (index % 2) != 0) {
          ++index;
          continue;
        }
        const Shape& s = shapes[index % (sizeof shapes / sizeof shapes[0])];
        if (!(normalize && s.patch * s.patch * s.channels < 2))
          check_gather(dtype, s.channels, layout, s.patch, s.rows, s.cols, s.K, normalize, index % 5 == 2, false, rng);
        ++index;
      }
    }
  }
  check_gather(kBFloat16, 3, kContiguous, 16, 2, 2, 5, true, false, false, rng);
  check_gather(kFloat16, 1, kContiguous, 8, 2, 2, 5, true, true, false, rng);
  // out-of-range ids, on both kernels
  check_gather(kFloat32, 3, kContiguous, 4, 2, 2, 4, false, false, true, rng);
  check_gather(kFloat32, 3, kChannelsLast, 4, 2, 2, 4, true, false, true, rng);
  // a patch too large to stage in shared memory (96 KiB of float64) takes the direct kernel
  check_gather(kFloat64, 3, kContiguous, 64, 1, 1, 2, true, false, false, rng);
  // a stage of exactly 48 KiB: one warp per block
  check_gather(kFloat32, 3, kContiguous, 64, 1, 1, 2, true, false, false, rng);

  int b = 0;
  for (int dtype : {kFloat32, kFloat64}) {
    for (int layout : {kContiguous, kChannelsLast}) {
      for (bool normalize : {false, true}) {
        const Shape& s = shapes[b % 4];
        check_gather_backward(dtype, s.channels, layout, s.patch, s.rows, s.cols, s.K, normalize, false, rng);
        ++b;
      }
    }
  }
  check_gather_backward(kFloat32, 3, kContiguous, 4, 2, 2, 4, true, true, rng);
}

// ---- apply_patch_mask ---------------------------------------------------------------------------------------------

void check_apply_mask(int dtype, int64_t channels, int layout, bool channels_last_out, int64_t patch, int64_t rows,
                      int64_t cols, bool transposed_mask, std::mt19937_64& rng) {
  const int64_t B = 2, H = rows * patch, W = cols * patch, N = rows * cols;
  Image image = make_image(dtype, B, channels, H, W, layout, rng, 0);
  const size_t es = element_size(dtype);
  Buffer mask(B * N);
  const int64_t mask_strides[2] = {transposed_mask ? 1 : N, transposed_mask ? B : 1};
  std::bernoulli_distribution hide(0.6);
  for (int64_t i = 0; i < B * N; ++i) mask.as<bool>()[i] = hide(rng);
  int64_t out_strides[4] = {channels * H * W, H * W, W, 1};
  if (channels_last_out) {
    out_strides[1] = 1;
    out_strides[2] = W * channels;
    out_strides[3] = channels;
  }
  Buffer fill(8);
  store_value(dtype, fill.data, 0, dtype == kUInt8 ? 7.0 : -0.5);
  uint64_t fill_bits = 0;
  std::memcpy(&fill_bits, fill.data, es);
  Buffer expected(B * channels * H * W * es), actual(B * channels * H * W * es);
  const int cpu = cpu::apply_patch_mask(image.ptr(), es, B, channels, H, W, image.strides, mask.as<bool>(),
                                        mask_strides, patch, fill_bits, expected.data, out_strides, 1);
  const int gpu = cuda::apply_patch_mask(image.ptr(), es, B, channels, H, W, image.strides, mask.as<bool>(),
                                         mask_strides, patch, fill_bits, actual.data, out_strides, 0, nullptr);
  char what[256];
  std::snprintf(what, sizeof what, "apply_patch_mask %s C=%lld %s out=%s p=%lld grid=%lldx%lld%s", dtype_name(dtype),
                (long long)channels, layout_name(layout), channels_last_out ? "channels_last" : "contiguous",
                (long long)patch, (long long)rows, (long long)cols, transposed_mask ? " mask transposed" : "");
  ++checks;
  if (cpu != kOk || gpu != kOk)
    return fail_case(std::string(what) + ": status cpu " + std::to_string(cpu) + " cuda " + std::to_string(gpu));
  if (std::memcmp(expected.data, actual.data, B * channels * H * W * es) != 0)
    fail_case(std::string(what) + ": values differ (must be bit-exact)");
}

void apply_mask_cases(std::mt19937_64& rng) {
  // vector kernel: patches narrower than a vector (f32: 4 per vector, p = 2), wider, and not dividing it (f64 p = 3)
  check_apply_mask(kFloat32, 3, kContiguous, false, 2, 3, 4, false, rng);
  check_apply_mask(kFloat32, 1, kContiguous, false, 16, 2, 2, true, rng);
  check_apply_mask(kFloat64, 3, kContiguous, false, 3, 2, 2, false, rng);
  check_apply_mask(kUInt8, 3, kContiguous, false, 4, 2, 8, false, rng);
  check_apply_mask(kFloat16, 1, kContiguous, false, 8, 3, 1, false, rng);
  check_apply_mask(kBFloat16, 3, kContiguous, false, 4, 2, 2, false, rng);
  // strided kernel: channels_last in and out, misaligned, rows not a whole number of vectors
  check_apply_mask(kFloat32, 3, kChannelsLast, true, 4, 2, 3, false, rng);
  check_apply_mask(kUInt8, 3, kContiguous, false, 3, 2, 3, false, rng);
  check_apply_mask(kFloat16, 3, kMisaligned, false, 4, 2, 2, true, rng);
  check_apply_mask(kFloat64, 1, kPaddedRows, true, 2, 2, 2, false, rng);
}

// ---- errors and devices -------------------------------------------------------------------------------------------

void error_cases() {
  // a bad device ordinal is a CUDA error, reported as kCudaErrorBase + cudaErrorInvalidDevice
  Buffer image(16 * 16 * 4), out(4);
  const int64_t strides[4] = {256, 256, 16, 1};
  ++checks;
  const int status = cuda::patch_entropy(image.data, kFloat32, 1, 1, 16, 16, strides, 16, 256, 0.0f, 1.0f, nullptr,
                                         out.as<float>(), 7, nullptr);
  if (status != cuda::kCudaErrorBase + cudaErrorInvalidDevice)
    fail_case("patch_entropy on device 7: status " + std::to_string(status));
  // device 1 is selected for the launch and device 0 restored afterwards
  ++checks;
  if (cuda::patch_entropy(image.data, kFloat32, 1, 1, 16, 16, strides, 16, 256, 0.0f, 1.0f, nullptr,
                          out.as<float>(), 1, nullptr) != kOk)
    fail_case("patch_entropy on device 1 failed");
  int current = -1;
  cudaGetDevice(&current);
  if (current != 0) fail_case("the device was not restored after a launch on device 1");
  ++checks;
  if (cuda::patch_entropy(image.data, kFloat32, 1, 1, 16, 16, strides, 16, cuda::kMaxBins + 1, 0.0f, 1.0f, nullptr,
                          out.as<float>(), 0, nullptr) != kBadArgument)
    fail_case("patch_entropy with too many bins was not rejected");
}

// ---- coverage -----------------------------------------------------------------------------------------------------

template <typename... Params>
const void* key(void (*kernel)(Params...)) {
  return reinterpret_cast<const void*>(kernel);
}

void check_coverage(const std::vector<emu::LaunchRecord>& launches) {
  std::set<const void*> launched;
  for (const auto& record : launches) launched.insert(record.kernel);
  struct Expected { const void* kernel; const char* name; };
  using namespace medens::cuda;
  const Expected expected[] = {
      {key(entropy_terms_kernel), "entropy_terms_kernel"},
      {key(patch_entropy_kernel<kFloat32, 3, 4>), "patch_entropy_kernel<float32, 3, vector>"},
      {key(patch_entropy_kernel<kFloat32, 3, 1>), "patch_entropy_kernel<float32, 3, scalar>"},
      {key(patch_entropy_kernel<kUInt8, 1, 8>), "patch_entropy_kernel<uint8, 1, vector>"},
      {key(patch_entropy_kernel<kFloat16, 3, 8>), "patch_entropy_kernel<float16, 3, vector>"},
      {key(select_kernel), "select_kernel"},
      {key(gather_staged_kernel<kFloat32, true, 4>), "gather_staged_kernel<float32, normalize>"},
      {key(gather_staged_kernel<kFloat32, false, 4>), "gather_staged_kernel<float32>"},
      {key(gather_staged_kernel<kBFloat16, true, 8>), "gather_staged_kernel<bfloat16, normalize>"},
      {key(gather_direct_kernel<kFloat64, true>), "gather_direct_kernel<float64, normalize>"},
      {key(gather_direct_kernel<kFloat32, false>), "gather_direct_kernel<float32>"},
      {key(gather_backward_kernel<float, true>), "gather_backward_kernel<float, normalize>"},
      {key(gather_backward_kernel<double, false>), "gather_backward_kernel<double>"},
      {key(apply_mask_vector_kernel<uint32_t, 4>), "apply_mask_vector_kernel<4 bytes>"},
      {key(apply_mask_vector_kernel<uint8_t, 16>), "apply_mask_vector_kernel<1 byte>"},
      {key(apply_mask_vector_kernel<uint64_t, 2>), "apply_mask_vector_kernel<8 bytes>"},
      {key(apply_mask_strided_kernel<uint32_t>), "apply_mask_strided_kernel<4 bytes>"},
      {key(apply_mask_strided_kernel<uint16_t>), "apply_mask_strided_kernel<2 bytes>"},
  };
  for (const Expected& e : expected) {
    ++checks;
    if (!launched.count(e.kernel)) fail_case(std::string("coverage: ") + e.name + " was never launched");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "full";
  const bool quick = mode == "quick";
  if (const char* seconds = std::getenv("EMU_TIMEOUT_S")) emu::config().timeout_seconds = std::atof(seconds);
  std::mt19937_64 rng(20240611);
  std::vector<emu::LaunchRecord> launches;
  const auto collect = [&] {
    auto more = emu::take_launches();
    launches.insert(launches.end(), more.begin(), more.end());
  };
  const auto start = std::chrono::steady_clock::now();
  const auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  entropy_cases(quick, rng);
  collect();
  std::printf("patch_entropy: done (%d checks so far, %.1f s)\n", checks, seconds());
  std::fflush(stdout);
  mask_cases(quick, rng);
  collect();
  std::printf("entropy_guided_mask: done (%d checks so far, %.1f s)\n", checks, seconds());
  std::fflush(stdout);
  gather_cases(quick, rng);
  collect();
  std::printf("gather_patches: done (%d checks so far, %.1f s)\n", checks, seconds());
  std::fflush(stdout);
  apply_mask_cases(rng);
  error_cases();
  collect();
  check_coverage(launches);
  std::printf("%d checks, %d failures, %zu kernel launches emulated\n", checks, failures, launches.size());
  return failures == 0 ? 0 : 1;
}
