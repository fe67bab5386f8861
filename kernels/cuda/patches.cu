// gather_patches (forward and backward) and apply_patch_mask on the GPU.
//
// A patch is flattened in MAE's patchify order: element (py * p + px) * C + c holds image[b, c, pi*p + py, pj*p + px].
//
// gather, staged (the common case: rows of 16 bytes' worth of elements, contiguous along W): one warp per output
//   patch, grid-stride. The warp reads every row of every channel of its patch with 16-byte loads, scatters the
//   values into a per-warp staging buffer in shared memory in patchify order (the channel interleave), computes
//   the mean and 1/std there when normalising (two passes in double, warp shuffles), and writes the patch out with
//   16-byte stores, normalised on the way. The input is read once.
// gather, direct (any strides, or patches too large to stage): one warp per output patch, scalar loads in
//   output order; normalisation reads the patch again for each pass (from cache).
// gather backward: one warp per output patch; the gradient (and, when normalising, the patch and its moments) is
//   recomputed per element and written into the zero-filled image gradient. The warp first counts its id among
//   the row's ids: a patch gathered once owns its pixels and stores them; a repeated one adds with atomicAdd, so
//   repeats accumulate (rows of more than kScannedIds ids are not counted and always add).
// apply_patch_mask: grid-stride over 16-byte vectors of contiguous rows (elements copied as raw bits), skipping the
//   load of vectors that are entirely hidden; a scalar kernel handles any other strides.
// Out-of-range ids never touch memory out of bounds: the row is filled with NaN (forward) or skipped (backward)
// and *index_error is set.
#include "launch.cuh"

namespace medens {
namespace cuda {
namespace {

constexpr int kGatherWarps = 8;
constexpr int kMaskThreads = 256;
constexpr int64_t kScannedIds = 1024;  // longest row of ids the backward searches for repeats

struct PatchGeometry {
  int64_t channels, height, width, patch, patches_per_row, num_patches, dim;  // dim = p * p * C
  int64_t stride_b, stride_c, stride_h, stride_w;                             // of the images read

  /// Offset of the first element of patch n of image b.
  __device__ __forceinline__ int64_t origin(int64_t b, int64_t n) const {
    const int64_t pi = n / patches_per_row, pj = n - pi * patches_per_row;
    return b * stride_b + pi * patch * stride_h + pj * patch * stride_w;
  }

  /// Offset of element q (patchify order) from its patch's first element. 32-bit divisions when the patch has
  /// fewer than 2^31 values (always, in practice): 64-bit ones cost several times more, and the gather kernels
  /// compute this offset for every element they read or write.
  __device__ __forceinline__ int64_t within(int64_t q) const {
    int64_t c, py, px;
    if (dim <= INT32_MAX) {
      const int32_t q32 = static_cast<int32_t>(q), c32 = static_cast<int32_t>(channels);
      const int32_t p32 = static_cast<int32_t>(patch);
      const int32_t pixel = q32 / c32, row = pixel / p32;
      c = q32 - pixel * c32;
      py = row;
      px = pixel - row * p32;
    } else {
      const int64_t pixel = q / channels;
      c = q - pixel * channels;
      py = pixel / patch;
      px = pixel - py * patch;
    }
    return c * stride_c + py * stride_h + px * stride_w;
  }
};

struct GatherParams {
  PatchGeometry g;
  const void* images;
  const int64_t* ids;
  int64_t ids_stride0, ids_stride1, num_ids, total;
  double eps;
  void* out;
  int* index_error;
  int64_t stage_pitch;  // elements of shared memory per warp (staged kernel)
};

/// Patch index of work item `item` (= b * num_ids + k), or -1 (and the error flag set) when out of range.
__device__ __forceinline__ int64_t patch_of(const int64_t* ids, int64_t s0, int64_t s1, int64_t num_ids,
                                            int64_t num_patches, int64_t item, int* index_error, int lane) {
  const int64_t b = item / num_ids, k = item - b * num_ids;
  const int64_t n = ids[b * s0 + k * s1];
  if (n >= 0 && n < num_patches) return n;
  if (lane == 0) atomicOr(index_error, 1);
  return -1;
}

/// The value normalisation writes for element x, rounded exactly as the CPU kernel rounds it.
template <int DT>
__device__ __forceinline__ typename Element<DT>::storage normalized(typename Element<DT>::storage x, double mean,
                                                                    double inv_std) {
  using E = Element<DT>;
  using F = decltype(E::to_float(x));
  return E::from_float(static_cast<F>((static_cast<double>(E::to_float(x)) - mean) * inv_std));
}

/// Mean and 1 / sqrt(unbiased variance + eps) of the n values value(0..n-1), two passes in double, over a warp.
template <typename Value>
__device__ __forceinline__ void warp_moments(Value value, int64_t n, double eps, int lane, double* mean,
                                             double* inv_std) {
  double sum = 0.0;
  for (int64_t i = lane; i < n; i += kWarpSize) sum += value(i);
  const double m = warp_sum(sum) / static_cast<double>(n);
  double squares = 0.0;
  for (int64_t i = lane; i < n; i += kWarpSize) {
    const double d = value(i) - m;
    squares += d * d;
  }
  const double var = warp_sum(squares) / static_cast<double>(n - 1);
  *mean = m;
  *inv_std = 1.0 / sqrt(var + eps);
}

template <int DT>
__device__ __forceinline__ typename Element<DT>::storage not_a_number() {
  return Element<DT>::from_float(static_cast<decltype(Element<DT>::to_float(typename Element<DT>::storage()))>(NAN));
}

/// Runs body(out, b, n, lane) for each gathered patch of this warp (one warp per patch, grid-stride over all
/// batch * num_ids of them): `out` is the patch's output row, b its image and n its patch index. A patch whose id
/// is out of range sets the error flag and gets NaN in every output value instead.
template <int DT, typename Body>
__device__ __forceinline__ void for_each_warp_patch(const GatherParams& a, Body body) {
  using T = typename Element<DT>::storage;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  const int64_t step = static_cast<int64_t>(gridDim.x) * warps;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * warps + static_cast<int>(threadIdx.x) / kWarpSize;
  for (int64_t item = first; item < a.total; item += step) {
    T* out = static_cast<T*>(a.out) + item * a.g.dim;
    const int64_t n = patch_of(a.ids, a.ids_stride0, a.ids_stride1, a.num_ids, a.g.num_patches, item,
                               a.index_error, lane);
    if (n < 0) {
      for (int64_t q = lane; q < a.g.dim; q += kWarpSize) out[q] = not_a_number<DT>();
      continue;
    }
    body(out, item / a.num_ids, n, lane);
  }
}

/// VEC = 16 bytes of elements; requires stride_w == 1, p % VEC == 0 and 16-byte aligned rows (checked by the
/// launcher), and stage_pitch >= dim.
template <int DT, bool NORMALIZE, int VEC>
__global__ void __launch_bounds__(kGatherWarps * kWarpSize) gather_staged_kernel(GatherParams a) {
  using E = Element<DT>;
  using T = typename E::storage;
  MEDENS_DYNAMIC_SHARED(smem);
  T* stage = reinterpret_cast<T*>(smem) + (static_cast<int>(threadIdx.x) / kWarpSize) * a.stage_pitch;
  const PatchGeometry& g = a.g;
  const int64_t p = g.patch, C = g.channels, per_row = p / VEC, loads = C * p * per_row;
  const T* images = static_cast<const T*>(a.images);
  for_each_warp_patch<DT>(a, [&](T* out, int64_t b, int64_t n, int lane) {
    const int64_t pi = n / g.patches_per_row, pj = n - pi * g.patches_per_row;
    const T* origin = images + b * g.stride_b + pi * p * g.stride_h + pj * p;
    for (int64_t t = lane; t < loads; t += kWarpSize) {
      const int64_t line = t / per_row;  // c * p + py
      const int64_t px = (t - line * per_row) * VEC;
      const int64_t c = line / p, py = line - c * p;
      T values[VEC];
      load_vector<T, VEC>(origin + c * g.stride_c + py * g.stride_h + px, values);
      T* dst = stage + (py * p + px) * C + c;
      MEDENS_UNROLL
      for (int e = 0; e < VEC; ++e) dst[e * C] = values[e];
    }
    __syncwarp();
    double mean = 0.0, inv_std = 0.0;
    if constexpr (NORMALIZE) {
      warp_moments([stage](int64_t i) { return static_cast<double>(E::to_float(stage[i])); }, g.dim, a.eps, lane,
                   &mean, &inv_std);
    }
    for (int64_t t = lane; t < g.dim / VEC; t += kWarpSize) {
      T values[VEC];
      load_vector<T, VEC>(stage + t * VEC, values);
      if constexpr (NORMALIZE) {
        MEDENS_UNROLL
        for (int e = 0; e < VEC; ++e) values[e] = normalized<DT>(values[e], mean, inv_std);
      }
      store_vector<T, VEC>(out + t * VEC, values);
    }
    __syncwarp();  // the stage is rewritten by the next item
  });
}

template <int DT, bool NORMALIZE>
__global__ void __launch_bounds__(kGatherWarps * kWarpSize) gather_direct_kernel(GatherParams a) {
  using E = Element<DT>;
  using T = typename E::storage;
  const PatchGeometry& g = a.g;
  const T* images = static_cast<const T*>(a.images);
  for_each_warp_patch<DT>(a, [&](T* out, int64_t b, int64_t n, int lane) {
    const T* source = images + g.origin(b, n);
    if constexpr (NORMALIZE) {
      double mean, inv_std;
      warp_moments([&](int64_t q) { return static_cast<double>(E::to_float(source[g.within(q)])); }, g.dim, a.eps,
                   lane, &mean, &inv_std);
      for (int64_t q = lane; q < g.dim; q += kWarpSize) out[q] = normalized<DT>(source[g.within(q)], mean, inv_std);
    } else {
      for (int64_t q = lane; q < g.dim; q += kWarpSize) out[q] = source[g.within(q)];
    }
  });
}

struct BackwardParams {
  PatchGeometry g;  // strides of `images`
  const void* grad;
  const void* images;
  const int64_t* ids;
  int64_t ids_stride0, ids_stride1, num_ids, total;
  double eps;
  void* grad_images;  // contiguous (B, C, H, W)
  int* index_error;
};

/// Whether patch n occurs exactly once among the ids of image b (uniform across the warp). Rows longer than
/// kScannedIds count as repeated, so that the search stays a small part of the work.
__device__ __forceinline__ bool gathered_once(const BackwardParams& a, int64_t b, int64_t n, int lane) {
  if (a.num_ids > kScannedIds) return false;
  int matches = 0;
  for (int64_t k = lane; k < a.num_ids; k += kWarpSize) matches += a.ids[b * a.ids_stride0 + k * a.ids_stride1] == n;
  return warp_sum(matches) == 1;
}

/// Adds v to a zero-filled gradient element: a store where the patch owns it (+ 0 makes a -0 the +0 that
/// 0 + (-0) gives), else an atomicAdd.
template <typename T>
__device__ __forceinline__ void accumulate(T* element, T v, bool owned) {
  if (owned) {
    *element = v + static_cast<T>(0);
  } else {
    atomicAdd(element, v);
  }
}

template <typename T, bool NORMALIZE>
__global__ void __launch_bounds__(kGatherWarps * kWarpSize) gather_backward_kernel(BackwardParams a) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  const PatchGeometry& g = a.g;
  PatchGeometry contiguous = g;
  contiguous.stride_w = 1;
  contiguous.stride_h = g.width;
  contiguous.stride_c = g.height * g.width;
  contiguous.stride_b = g.channels * g.height * g.width;
  const T* images = static_cast<const T*>(a.images);
  T* grad_images = static_cast<T*>(a.grad_images);
  const int64_t step = static_cast<int64_t>(gridDim.x) * warps;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * warps + warp; item < a.total; item += step) {
    const int64_t n = patch_of(a.ids, a.ids_stride0, a.ids_stride1, a.num_ids, g.num_patches, item,
                               a.index_error, lane);
    if (n < 0) continue;
    const int64_t b = item / a.num_ids;
    const T* grad = static_cast<const T*>(a.grad) + item * g.dim;
    const T* source = images + g.origin(b, n);
    T* target = grad_images + contiguous.origin(b, n);
    const bool owned = gathered_once(a, b, n, lane);
    if constexpr (NORMALIZE) {
      const auto value = [&](int64_t q) { return static_cast<double>(source[g.within(q)]); };
      double mean, inv_std;
      warp_moments(value, g.dim, a.eps, lane, &mean, &inv_std);
      double grad_sum = 0.0, grad_dot_y = 0.0;
      for (int64_t q = lane; q < g.dim; q += kWarpSize) {
        const double gq = static_cast<double>(grad[q]);
        grad_sum += gq;
        grad_dot_y += gq * ((value(q) - mean) * inv_std);
      }
      const double grad_mean = warp_sum(grad_sum) / static_cast<double>(g.dim);
      const double y_coef = warp_sum(grad_dot_y) / static_cast<double>(g.dim - 1);
      for (int64_t q = lane; q < g.dim; q += kWarpSize) {
        const double y = (value(q) - mean) * inv_std;
        const double dv = inv_std * (static_cast<double>(grad[q]) - grad_mean - y * y_coef);
        accumulate(target + contiguous.within(q), static_cast<T>(dv), owned);
      }
    } else {
      for (int64_t q = lane; q < g.dim; q += kWarpSize) accumulate(target + contiguous.within(q), grad[q], owned);
    }
  }
}

struct MaskParams {
  const void* images;
  void* out;
  const bool* mask;
  int64_t in_stride[4], out_stride[4], mask_stride0, mask_stride1;
  int64_t channels, height, width, patch, patches_per_row, total;  // total = B * C * H * W
  uint64_t fill_bits;
};

/// images and out contiguous (B, C, H, W), W % VEC == 0, both 16-byte aligned.
template <typename R, int VEC>
__global__ void __launch_bounds__(kMaskThreads) apply_mask_vector_kernel(MaskParams a) {
  const R fill = static_cast<R>(a.fill_bits);
  const R* in = static_cast<const R*>(a.images);
  R* out = static_cast<R*>(a.out);
  const int64_t vectors = a.total / VEC;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < vectors; v += step) {
    const int64_t first = v * VEC;
    const int64_t line = first / a.width;  // (b * C + c) * H + y
    const int64_t x0 = first - line * a.width;
    const int64_t y = line % a.height, b = line / (a.height * a.channels);
    const bool* mask_row = a.mask + b * a.mask_stride0 + (y / a.patch) * a.patches_per_row * a.mask_stride1;
    int64_t j = x0 / a.patch, next = (j + 1) * a.patch;
    bool hidden[VEC];
    bool any_visible = false;
    MEDENS_UNROLL
    for (int e = 0; e < VEC; ++e) {
      if (x0 + e == next) {
        ++j;
        next += a.patch;
      }
      hidden[e] = mask_row[j * a.mask_stride1];
      any_visible = any_visible || !hidden[e];
    }
    R values[VEC];
    if (any_visible) {
      load_vector<R, VEC>(in + first, values);
    }
    MEDENS_UNROLL
    for (int e = 0; e < VEC; ++e)
      if (!any_visible || hidden[e]) values[e] = fill;
    store_vector<R, VEC>(out + first, values);
  }
}

template <typename R>
__global__ void __launch_bounds__(kMaskThreads) apply_mask_strided_kernel(MaskParams a) {
  const R fill = static_cast<R>(a.fill_bits);
  const R* in = static_cast<const R*>(a.images);
  R* out = static_cast<R*>(a.out);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.total; i += step) {
    const int64_t x = i % a.width, line = i / a.width;
    const int64_t y = line % a.height, bc = line / a.height;
    const int64_t c = bc % a.channels, b = bc / a.channels;
    const bool hidden =
        a.mask[b * a.mask_stride0 + ((y / a.patch) * a.patches_per_row + x / a.patch) * a.mask_stride1];
    const int64_t o = b * a.out_stride[0] + c * a.out_stride[1] + y * a.out_stride[2] + x * a.out_stride[3];
    out[o] = hidden ? fill : in[b * a.in_stride[0] + c * a.in_stride[1] + y * a.in_stride[2] + x * a.in_stride[3]];
  }
}

PatchGeometry geometry(int64_t channels, int64_t height, int64_t width, int64_t patch, const int64_t* strides) {
  PatchGeometry g{};
  g.channels = channels;
  g.height = height;
  g.width = width;
  g.patch = patch;
  g.patches_per_row = width / patch;
  g.num_patches = (height / patch) * g.patches_per_row;
  g.dim = patch * patch * channels;
  g.stride_b = strides[0];
  g.stride_c = strides[1];
  g.stride_h = strides[2];
  g.stride_w = strides[3];
  return g;
}

template <int DT, bool NORMALIZE>
int launch_gather(GatherParams a, cudaStream_t stream) {
  using T = typename Element<DT>::storage;
  constexpr int V = static_cast<int>(16 / sizeof(T));
  const PatchGeometry& g = a.g;
  const int64_t pitch = (g.dim + V - 1) / V * V;  // keeps every warp's stage 16-byte aligned
  const int64_t stage_bytes = pitch * static_cast<int64_t>(sizeof(T));
  const bool vectorized = g.stride_w == 1 && g.patch % V == 0 && aligned(a.images, 16) && g.stride_b % V == 0 &&
                          g.stride_c % V == 0 && g.stride_h % V == 0 && aligned(a.out, 16);
  if (vectorized && stage_bytes <= static_cast<int64_t>(kDefaultSharedBytes)) {
    const int fit = static_cast<int>(static_cast<int64_t>(kDefaultSharedBytes) / stage_bytes);
    const int warps = fit < kGatherWarps ? fit : kGatherWarps;
    a.stage_pitch = pitch;
    return launch(gather_staged_kernel<DT, NORMALIZE, V>, dim3(grid_blocks(a.total, warps)), dim3(warps * kWarpSize),
                  static_cast<size_t>(warps) * stage_bytes, stream, a);
  }
  return launch(gather_direct_kernel<DT, NORMALIZE>, dim3(grid_blocks(a.total, kGatherWarps)),
                dim3(kGatherWarps * kWarpSize), 0, stream, a);
}

template <int DT>
int launch_gather(const GatherParams& a, bool normalize, cudaStream_t stream) {
  return normalize ? launch_gather<DT, true>(a, stream) : launch_gather<DT, false>(a, stream);
}

template <typename R>
int launch_apply_mask(const MaskParams& a, cudaStream_t stream) {
  constexpr int V = static_cast<int>(16 / sizeof(R));
  const int64_t H = a.height, W = a.width, C = a.channels;
  const auto contiguous = [&](const int64_t* s) {
    return s[3] == 1 && s[2] == W && s[1] == H * W && s[0] == C * H * W;
  };
  if (contiguous(a.in_stride) && contiguous(a.out_stride) && W % V == 0 && aligned(a.images, 16) &&
      aligned(a.out, 16)) {
    return launch(apply_mask_vector_kernel<R, V>, dim3(grid_blocks(a.total / V, kMaskThreads)), dim3(kMaskThreads),
                  0, stream, a);
  }
  return launch(apply_mask_strided_kernel<R>, dim3(grid_blocks(a.total, kMaskThreads)), dim3(kMaskThreads), 0,
                stream, a);
}

/// The fields the forward and backward gathers' parameters share: geometry, images, ids, the work items
/// (batch * num_ids), eps and the index-error flag.
template <typename Params>
void set_gather_fields(Params& a, int64_t batch, const PatchGeometry& g, const void* images, const int64_t* ids,
                       const int64_t* ids_strides, int64_t num_ids, double eps, int* index_error) {
  a.g = g;
  a.images = images;
  a.ids = ids;
  a.ids_stride0 = ids_strides[0];
  a.ids_stride1 = ids_strides[1];
  a.num_ids = num_ids;
  a.total = batch * num_ids;
  a.eps = eps;
  a.index_error = index_error;
}

}  // namespace

int gather_patches(const void* images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
                   const int64_t* strides, const int64_t* ids, const int64_t* ids_strides, int64_t num_ids,
                   int64_t patch, bool normalize, double eps, void* out, int* index_error, int device,
                   cudaStream_t stream) {
  if (patch < 1 || channels < 1 || (normalize && patch * patch * channels < 2)) return kBadArgument;
  if (dtype != kFloat16 && dtype != kBFloat16 && dtype != kFloat32 && dtype != kFloat64) return kBadDType;
  const DeviceGuard guard(device);
  if (guard.status() != kOk) return guard.status();
  GatherParams a{};
  set_gather_fields(a, batch, geometry(channels, height, width, patch, strides), images, ids, ids_strides, num_ids,
                    eps, index_error);
  a.out = out;
  if (a.total == 0 || a.g.dim == 0) return kOk;
  switch (dtype) {
    case kFloat16: return launch_gather<kFloat16>(a, normalize, stream);
    case kBFloat16: return launch_gather<kBFloat16>(a, normalize, stream);
    case kFloat32: return launch_gather<kFloat32>(a, normalize, stream);
    default: return launch_gather<kFloat64>(a, normalize, stream);
  }
}

int gather_patches_backward(const void* grad, int dtype, const void* images, const int64_t* image_strides,
                            int64_t batch, int64_t channels, int64_t height, int64_t width, const int64_t* ids,
                            const int64_t* ids_strides, int64_t num_ids, int64_t patch, bool normalize, double eps,
                            void* grad_images, int* index_error, int device, cudaStream_t stream) {
  if (patch < 1 || channels < 1 || (normalize && patch * patch * channels < 2)) return kBadArgument;
  if (dtype != kFloat32 && dtype != kFloat64) return kBadDType;
  const DeviceGuard guard(device);
  if (guard.status() != kOk) return guard.status();
  BackwardParams a{};
  set_gather_fields(a, batch, geometry(channels, height, width, patch, image_strides), images, ids, ids_strides,
                    num_ids, eps, index_error);
  a.grad = grad;
  a.grad_images = grad_images;
  if (a.total == 0 || a.g.dim == 0) return kOk;
  const dim3 grid(grid_blocks(a.total, kGatherWarps)), block(kGatherWarps * kWarpSize);
  if (dtype == kFloat32) {
    return normalize ? launch(gather_backward_kernel<float, true>, grid, block, 0, stream, a)
                     : launch(gather_backward_kernel<float, false>, grid, block, 0, stream, a);
  }
  return normalize ? launch(gather_backward_kernel<double, true>, grid, block, 0, stream, a)
                   : launch(gather_backward_kernel<double, false>, grid, block, 0, stream, a);
}

int apply_patch_mask(const void* images, int64_t element_size, int64_t batch, int64_t channels, int64_t height,
                     int64_t width, const int64_t* strides, const bool* mask, const int64_t* mask_strides,
                     int64_t patch, uint64_t fill_bits, void* out, const int64_t* out_strides, int device,
                     cudaStream_t stream) {
  if (patch < 1) return kBadArgument;
  const DeviceGuard guard(device);
  if (guard.status() != kOk) return guard.status();
  MaskParams a{};
  a.images = images;
  a.out = out;
  a.mask = mask;
  for (int d = 0; d < 4; ++d) {
    a.in_stride[d] = strides[d];
    a.out_stride[d] = out_strides[d];
  }
  a.mask_stride0 = mask_strides[0];
  a.mask_stride1 = mask_strides[1];
  a.channels = channels;
  a.height = height;
  a.width = width;
  a.patch = patch;
  a.patches_per_row = width / patch;
  a.total = batch * channels * height * width;
  a.fill_bits = fill_bits;
  if (a.total == 0) return kOk;
  switch (element_size) {
    case 1: return launch_apply_mask<uint8_t>(a, stream);
    case 2: return launch_apply_mask<uint16_t>(a, stream);
    case 4: return launch_apply_mask<uint32_t>(a, stream);
    case 8: return launch_apply_mask<uint64_t>(a, stream);
    default: return kBadDType;
  }
}

}  // namespace cuda
}  // namespace medens
