// gather_patches (forward and backward) and apply_patch_mask on the CPU.
//
// A patch is flattened in MAE's patchify order: row, then column, then channel, i.e. element
// (py * p + px) * C + c holds image[b, c, pi * p + py, pj * p + px] for patch index n = pi * (W / p) + pj.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "medens/cpu_kernels.h"
#include "medens/patch_math.h"
#include "parallel.h"

namespace medens {
namespace cpu {
namespace {

struct Geometry {
  int64_t batch, channels, height, width, patch;
  int64_t patches_per_row() const { return width / patch; }
  int64_t num_patches() const { return (height / patch) * (width / patch); }
  int64_t patch_dim() const { return patch * patch * channels; }
};

/// Offset (in elements) of the top-left pixel of patch n of image b.
inline int64_t patch_origin(const Geometry& g, const int64_t* strides, int64_t b, int64_t n) {
  const int64_t pi = n / g.patches_per_row(), pj = n % g.patches_per_row();
  return b * strides[0] + pi * g.patch * strides[2] + pj * g.patch * strides[3];
}

/// dst[3 x + c] = channel c's row[x]: the interleave of one patch row of three 4-byte channels.
MEDENS_SIMD_CLONES
void interleave3_u32(const uint32_t* red, const uint32_t* green, const uint32_t* blue, int64_t count,
                     uint32_t* dst) {
  for (int64_t x = 0; x < count; ++x) {
    dst[3 * x] = red[x];
    dst[3 * x + 1] = green[x];
    dst[3 * x + 2] = blue[x];
  }
}

/// Copies one patch into dst in patchify order, converting each element with `convert`.
template <typename Src, typename Dst, typename Convert>
void copy_patch(const Src* src, const int64_t* strides, const Geometry& g, Dst* dst, Convert convert) {
  const int64_t p = g.patch, C = g.channels;
  if (C == 1 && strides[3] == 1) {
    for (int64_t py = 0; py < p; ++py) {
      const Src* row = src + py * strides[2];
      Dst* out = dst + py * p;
      for (int64_t px = 0; px < p; ++px) out[px] = convert(row[px]);
    }
    return;
  }
  for (int64_t py = 0; py < p; ++py)
    for (int64_t c = 0; c < C; ++c) {
      const Src* row = src + c * strides[1] + py * strides[2];
      Dst* out = dst + py * p * C + c;
      for (int64_t px = 0; px < p; ++px) out[px * C] = convert(row[px * strides[3]]);
    }
}

/// Raw (bit-exact) gather for any element type of the given storage size.
/// copy_patch for raw elements, with a vectorised path for three 4-byte channels with contiguous rows.
template <typename Raw>
void copy_patch_raw(const Raw* src, const int64_t* strides, const Geometry& g, Raw* dst) {
  if constexpr (sizeof(Raw) == 4) {
    if (g.channels == 3 && strides[3] == 1) {
      const int64_t p = g.patch;
      for (int64_t py = 0; py < p; ++py) {
        const Raw* row = src + py * strides[2];
        interleave3_u32(row, row + strides[1], row + 2 * strides[1], p, dst + py * p * 3);
      }
      return;
    }
  }
  copy_patch(src, strides, g, dst, [](Raw v) { return v; });
}

/// Mean and 1 / sqrt(unbiased variance + eps) of a float32 patch whose rows are contiguous, in one pass over
/// values shifted by the patch's first value (the shifted-data algorithm: flat patches, whose deviations are tiny,
/// keep their precision).
MEDENS_SIMD_CLONES
void moments_f32_rows(const float* origin, int64_t channels, int64_t p, int64_t stride_c, int64_t stride_h,
                      double eps, double* mean_out, double* inv_std_out) {
  const int64_t n = channels * p * p;
  const float shift = origin[0];
  // Eight float32 lanes for the whole patch (GCC/Clang vector extension), reduced once at the end. Shifted values
  // are small, so float32 partial sums of a few hundred values keep ~1e-7 relative precision.
  typedef float Lanes __attribute__((vector_size(32)));
  const Lanes shift_lanes = Lanes{} + shift;
  Lanes lane{}, lane_sq{};
  float tail = 0.0f, tail_sq = 0.0f;
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t py = 0; py < p; ++py) {
      const float* row = origin + c * stride_c + py * stride_h;
      int64_t x = 0;
      for (; x + 8 <= p; x += 8) {
        Lanes v;
        std::memcpy(&v, row + x, sizeof v);
        const Lanes d = v - shift_lanes;
        lane += d;
        lane_sq += d * d;
      }
      for (; x < p; ++x) {
        const float d = row[x] - shift;
        tail += d;
        tail_sq += d * d;
      }
    }
  double sum = tail, squares = tail_sq;
  for (int i = 0; i < 8; ++i) {
    sum += static_cast<double>(lane[i]);
    squares += static_cast<double>(lane_sq[i]);
  }
  const double mean_shifted = sum / static_cast<double>(n);
  const double var = std::max(squares - sum * mean_shifted, 0.0) / static_cast<double>(n - 1);
  *mean_out = static_cast<double>(shift) + mean_shifted;
  *inv_std_out = 1.0 / sqrt(var + eps);
}

// Three channel rows of 16 (or 8) float32 values, interleaved into patchify order: dst[3 x + c] = channel c at x.
// __builtin_shufflevector picks lanes from the concatenation of its two operands; with AVX-512 each output
// vector is two permutes, and on older targets the compiler lowers the same code to narrower instructions.
// Vectors travel by pointer: clang refuses vector-typed arguments in the clones built without AVX.
typedef float Floats16 __attribute__((vector_size(64)));
typedef float Floats8 __attribute__((vector_size(32)));

__attribute__((always_inline)) inline void interleave3_block(const Floats16* rgb, float* dst) {
  const Floats16 r = rgb[0], g = rgb[1], b = rgb[2];
  const Floats16 rg0 = __builtin_shufflevector(r, g, 0, 16, 0, 1, 17, 0, 2, 18, 0, 3, 19, 0, 4, 20, 0, 5);
  const Floats16 rg1 = __builtin_shufflevector(r, g, 21, 0, 6, 22, 0, 7, 23, 0, 8, 24, 0, 9, 25, 0, 10, 26);
  const Floats16 rg2 = __builtin_shufflevector(r, g, 0, 11, 27, 0, 12, 28, 0, 13, 29, 0, 14, 30, 0, 15, 31, 0);
  const Floats16 out[3] = {
      __builtin_shufflevector(rg0, b, 0, 1, 16, 3, 4, 17, 6, 7, 18, 9, 10, 19, 12, 13, 20, 15),
      __builtin_shufflevector(rg1, b, 0, 21, 2, 3, 22, 5, 6, 23, 8, 9, 24, 11, 12, 25, 14, 15),
      __builtin_shufflevector(rg2, b, 26, 1, 2, 27, 4, 5, 28, 7, 8, 29, 10, 11, 30, 13, 14, 31)};
  std::memcpy(dst, out, sizeof out);
}

__attribute__((always_inline)) inline void interleave3_block(const Floats8* rgb, float* dst) {
  const Floats8 r = rgb[0], g = rgb[1], b = rgb[2];
  const Floats8 rg0 = __builtin_shufflevector(r, g, 0, 8, 0, 1, 9, 0, 2, 10);
  const Floats8 rg1 = __builtin_shufflevector(r, g, 0, 3, 11, 0, 4, 12, 0, 5);
  const Floats8 rg2 = __builtin_shufflevector(r, g, 13, 0, 6, 14, 0, 7, 15, 0);
  const Floats8 out[3] = {__builtin_shufflevector(rg0, b, 0, 1, 8, 3, 4, 9, 6, 7),
                          __builtin_shufflevector(rg1, b, 10, 1, 2, 11, 4, 5, 12, 7),
                          __builtin_shufflevector(rg2, b, 0, 13, 2, 3, 14, 5, 6, 15)};
  std::memcpy(dst, out, sizeof out);
}

/// Normalises `Lanes`-wide blocks of the three channel rows from column x on; returns the first column not done.
template <typename Lanes>
__attribute__((always_inline)) inline int64_t write_normalized_blocks(const float* row, int64_t stride_c, int64_t p,
                                                                      int64_t x, float mean, float scale, float* dst) {
  constexpr int64_t kWidth = sizeof(Lanes) / sizeof(float);
  const Lanes mean_lanes = Lanes{} + mean, scale_lanes = Lanes{} + scale;
  for (; x + kWidth <= p; x += kWidth) {
    Lanes v[3];
    for (int c = 0; c < 3; ++c) {
      std::memcpy(&v[c], row + c * stride_c + x, sizeof(Lanes));
      v[c] = (v[c] - mean_lanes) * scale_lanes;
    }
    interleave3_block(v, dst + 3 * x);
  }
  return x;
}

/// dst (patchify order) = (v - mean) * inv_std for a float32 patch whose rows are contiguous.
MEDENS_SIMD_CLONES
void write_normalized_f32_rows(const float* origin, int64_t channels, int64_t p, int64_t stride_c, int64_t stride_h,
                               float mean, float inv_std, float* dst) {
  for (int64_t py = 0; py < p; ++py) {
    const float* row = origin + py * stride_h;
    float* o = dst + py * p * channels;
    int64_t x = 0;
    if (channels == 3) {
      x = write_normalized_blocks<Floats16>(row, stride_c, p, x, mean, inv_std, o);
      x = write_normalized_blocks<Floats8>(row, stride_c, p, x, mean, inv_std, o);
    }
    for (; x < p; ++x)
      for (int64_t c = 0; c < channels; ++c) o[x * channels + c] = (row[c * stride_c + x] - mean) * inv_std;
  }
}

template <typename Raw>
bool gather_raw(const void* images, const int64_t* strides, const Geometry& g, const int64_t* ids,
                const int64_t* ids_strides, int64_t num_ids, void* out, int num_threads) {
  const Raw* base = static_cast<const Raw*>(images);
  Raw* dst = static_cast<Raw*>(out);
  const int64_t N = g.num_patches(), D = g.patch_dim();
  advise_huge_pages(out, g.batch * num_ids * D * static_cast<int64_t>(sizeof(Raw)));
  std::atomic<bool> ok{true};
  parallel_for(g.batch * num_ids, D, num_threads, [&](int64_t item) {
    const int64_t b = item / num_ids, k = item % num_ids;
    const int64_t n = ids[b * ids_strides[0] + k * ids_strides[1]];
    if (n < 0 || n >= N) {
      ok.store(false, std::memory_order_relaxed);
      return;
    }
    copy_patch_raw(base + patch_origin(g, strides, b, n), strides, g, dst + item * D);
  });
  return ok.load();
}

/// Gather with per-patch normalisation: (v - mean) / sqrt(var_unbiased + eps).
template <int DT>
bool gather_normalized(const void* images, const int64_t* strides, const Geometry& g, const int64_t* ids,
                       const int64_t* ids_strides, int64_t num_ids, double eps, void* out, int num_threads) {
  using E = Element<DT>;
  using T = typename E::storage;
  const T* base = static_cast<const T*>(images);
  T* dst = static_cast<T*>(out);
  const int64_t N = g.num_patches(), D = g.patch_dim();
  advise_huge_pages(out, g.batch * num_ids * D * static_cast<int64_t>(sizeof(T)));
  std::atomic<bool> ok{true};
  parallel_for(g.batch * num_ids, D, num_threads, [&](int64_t item) {
    thread_local std::vector<double> values;
    values.resize(D);
    const int64_t b = item / num_ids, k = item % num_ids;
    const int64_t n = ids[b * ids_strides[0] + k * ids_strides[1]];
    if (n < 0 || n >= N) {
      ok.store(false, std::memory_order_relaxed);
      return;
    }
    const T* origin = base + patch_origin(g, strides, b, n);
    if constexpr (DT == kFloat32) {
      if (strides[3] == 1) {
        double mean, inv_std;
        moments_f32_rows(origin, g.channels, g.patch, strides[1], strides[2], eps, &mean, &inv_std);
        write_normalized_f32_rows(origin, g.channels, g.patch, strides[1], strides[2], static_cast<float>(mean),
                                  static_cast<float>(inv_std), dst + item * D);
        return;
      }
    }
    double* v = values.data();
    copy_patch(origin, strides, g, v,
               [](T x) { return static_cast<double>(E::to_float(x)); });
    double mean, inv_std;
    patch_moments([v](int64_t i) { return v[i]; }, D, eps, &mean, &inv_std);
    T* o = dst + item * D;
    for (int64_t i = 0; i < D; ++i) o[i] = E::from_float(static_cast<decltype(E::to_float(T()))>((v[i] - mean) * inv_std));
  });
  return ok.load();
}

template <typename T>
bool gather_backward_impl(const T* grad, const T* images, const int64_t* image_strides, const Geometry& g,
                          const int64_t* ids, const int64_t* ids_strides, int64_t num_ids, bool normalize,
                          double eps, T* grad_images, int num_threads) {
  const int64_t N = g.num_patches(), D = g.patch_dim(), p = g.patch, C = g.channels;
  const int64_t out_strides[4] = {C * g.height * g.width, g.height * g.width, g.width, 1};
  std::atomic<bool> ok{true};
  // One task per image: every write of a task lands in its own image, so repeated ids accumulate safely. The task
  // zeroes its image first (the output is not initialised by the caller), which keeps the image in cache for the
  // accumulation that follows.
  parallel_for(g.batch, num_ids * D, num_threads, [&](int64_t b) {
    thread_local std::vector<double> values;
    values.resize(D);
    std::fill(grad_images + b * out_strides[0], grad_images + (b + 1) * out_strides[0], T(0));
    for (int64_t k = 0; k < num_ids; ++k) {
      const int64_t n = ids[b * ids_strides[0] + k * ids_strides[1]];
      if (n < 0 || n >= N) {
        ok.store(false, std::memory_order_relaxed);
        return;
      }
      const T* gk = grad + (b * num_ids + k) * D;
      double* dv = values.data();
      if (normalize) {
        copy_patch(images + patch_origin(g, image_strides, b, n), image_strides, g, dv,
                   [](T x) { return static_cast<double>(x); });
        double mean, inv_std;
        patch_moments([dv](int64_t i) { return dv[i]; }, D, eps, &mean, &inv_std);
        double grad_mean = 0.0, grad_dot_y = 0.0;
        for (int64_t i = 0; i < D; ++i) {
          dv[i] = (dv[i] - mean) * inv_std;  // normalised output y
          grad_mean += static_cast<double>(gk[i]);
          grad_dot_y += static_cast<double>(gk[i]) * dv[i];
        }
        grad_mean /= static_cast<double>(D);
        const double y_coef = grad_dot_y / static_cast<double>(D - 1);
        for (int64_t i = 0; i < D; ++i) dv[i] = inv_std * (static_cast<double>(gk[i]) - grad_mean - dv[i] * y_coef);
      } else {
        for (int64_t i = 0; i < D; ++i) dv[i] = static_cast<double>(gk[i]);
      }
      T* origin = grad_images + patch_origin(g, out_strides, b, n);
      for (int64_t py = 0; py < p; ++py)
        for (int64_t px = 0; px < p; ++px)
          for (int64_t c = 0; c < C; ++c)
            origin[c * out_strides[1] + py * out_strides[2] + px] += static_cast<T>(dv[(py * p + px) * C + c]);
    }
  });
  return ok.load();
}

template <typename Raw>
void apply_mask_impl(const void* images, const int64_t* strides, const Geometry& g, const bool* mask,
                     const int64_t* mask_strides, uint64_t fill_bits, void* out, const int64_t* out_strides,
                     int num_threads) {
  const Raw* src = static_cast<const Raw*>(images);
  Raw* dst = static_cast<Raw*>(out);
  const Raw value = static_cast<Raw>(fill_bits);  // the low sizeof(Raw) bytes: the element's bit pattern
  const int64_t p = g.patch, wp = g.patches_per_row(), bands = g.height / p, C = g.channels;
  const bool contiguous_rows = strides[3] == 1 && out_strides[3] == 1;
  advise_huge_pages(out, g.batch * C * g.height * g.width * static_cast<int64_t>(sizeof(Raw)));
  // One task per (image, channel, band of patch rows). The band's mask is turned once into runs of hidden or
  // visible patches; every image row of the band is then a few block copies and fills.
  parallel_for(g.batch * C * bands, p * g.width, num_threads, [&](int64_t item) {
    const int64_t band = item % bands, c = (item / bands) % C, b = item / (bands * C);
    const bool* mask_row = mask + b * mask_strides[0] + band * wp * mask_strides[1];
    thread_local std::vector<int64_t> run_ends;  // end column (in patches) of each run; runs alternate
    run_ends.clear();
    const bool first_hidden = wp > 0 && mask_row[0];
    bool current = first_hidden;
    for (int64_t j = 1; j <= wp; ++j) {
      if (j == wp || mask_row[j * mask_strides[1]] != current) {
        run_ends.push_back(j);
        if (j < wp) current = !current;
      }
    }
    for (int64_t r = 0; r < p; ++r) {
      const int64_t y = band * p + r;
      const Raw* in_row = src + b * strides[0] + c * strides[1] + y * strides[2];
      Raw* out_row = dst + b * out_strides[0] + c * out_strides[1] + y * out_strides[2];
      bool hidden = first_hidden;
      int64_t start = 0;
      for (const int64_t end_patch : run_ends) {
        const int64_t begin_x = start * p, end_x = end_patch * p;
        if (contiguous_rows) {
          if (hidden)
            std::fill(out_row + begin_x, out_row + end_x, value);
          else
            std::memcpy(out_row + begin_x, in_row + begin_x, (end_x - begin_x) * sizeof(Raw));
        } else {
          for (int64_t x = begin_x; x < end_x; ++x)
            out_row[x * out_strides[3]] = hidden ? value : in_row[x * strides[3]];
        }
        start = end_patch;
        hidden = !hidden;
      }
    }
  });
}

}  // namespace

int gather_patches(const void* images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
                   const int64_t* strides, const int64_t* ids, const int64_t* ids_strides, int64_t num_ids,
                   int64_t patch, bool normalize, double eps, void* out, int num_threads) {
  const Geometry g{batch, channels, height, width, patch};
  if (patch < 1 || (normalize && g.patch_dim() < 2)) return kBadArgument;
  bool ok;
  if (!normalize) {
    switch (dtype) {
      case kUInt8: ok = gather_raw<uint8_t>(images, strides, g, ids, ids_strides, num_ids, out, num_threads); break;
      case kFloat16:
      case kBFloat16: ok = gather_raw<uint16_t>(images, strides, g, ids, ids_strides, num_ids, out, num_threads); break;
      case kFloat32: ok = gather_raw<uint32_t>(images, strides, g, ids, ids_strides, num_ids, out, num_threads); break;
      case kFloat64: ok = gather_raw<uint64_t>(images, strides, g, ids, ids_strides, num_ids, out, num_threads); break;
      default: return kBadDType;
    }
  } else {
    switch (dtype) {
      case kFloat16: ok = gather_normalized<kFloat16>(images, strides, g, ids, ids_strides, num_ids, eps, out, num_threads); break;
      case kBFloat16: ok = gather_normalized<kBFloat16>(images, strides, g, ids, ids_strides, num_ids, eps, out, num_threads); break;
      case kFloat32: ok = gather_normalized<kFloat32>(images, strides, g, ids, ids_strides, num_ids, eps, out, num_threads); break;
      case kFloat64: ok = gather_normalized<kFloat64>(images, strides, g, ids, ids_strides, num_ids, eps, out, num_threads); break;
      default: return kBadDType;
    }
  }
  return ok ? kOk : kIndexOutOfRange;
}

int gather_patches_backward(const void* grad, int dtype, const void* images, const int64_t* image_strides,
                            int64_t batch, int64_t channels, int64_t height, int64_t width, const int64_t* ids,
                            const int64_t* ids_strides, int64_t num_ids, int64_t patch, bool normalize, double eps,
                            void* grad_images, int num_threads) {
  const Geometry g{batch, channels, height, width, patch};
  if (patch < 1 || (normalize && g.patch_dim() < 2)) return kBadArgument;
  bool ok;
  switch (dtype) {
    case kFloat32:
      ok = gather_backward_impl(static_cast<const float*>(grad), static_cast<const float*>(images), image_strides, g,
                                ids, ids_strides, num_ids, normalize, eps, static_cast<float*>(grad_images),
                                num_threads);
      break;
    case kFloat64:
      ok = gather_backward_impl(static_cast<const double*>(grad), static_cast<const double*>(images), image_strides,
                                g, ids, ids_strides, num_ids, normalize, eps, static_cast<double*>(grad_images),
                                num_threads);
      break;
    default:
      return kBadDType;
  }
  return ok ? kOk : kIndexOutOfRange;
}

int apply_patch_mask(const void* images, int64_t element_size, int64_t batch, int64_t channels, int64_t height,
                     int64_t width, const int64_t* strides, const bool* mask, const int64_t* mask_strides,
                     int64_t patch, uint64_t fill_bits, void* out, const int64_t* out_strides, int num_threads) {
  const Geometry g{batch, channels, height, width, patch};
  if (patch < 1) return kBadArgument;
  const auto fill = [&](auto raw) {
    apply_mask_impl<decltype(raw)>(images, strides, g, mask, mask_strides, fill_bits, out, out_strides, num_threads);
  };
  switch (element_size) {
    case 1: fill(uint8_t{}); break;
    case 2: fill(uint16_t{}); break;
    case 4: fill(uint32_t{}); break;
    case 8: fill(uint64_t{}); break;
    default: return kBadDType;
  }
  return kOk;
}

}  // namespace cpu
}  // namespace medens
