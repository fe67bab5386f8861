// patch_entropy on the GPU.
//
// One warp per patch (grid-stride over all B * N patches, 8 warps a block), each warp with a private histogram of
// `bins` counters in shared memory. The warp reads its patch once, row by row: a lane loads VEC consecutive pixels of
// each channel with one vector load (8 or 16 bytes) when the rows allow it, turns them into grey levels and bins
// with the shared per-patch math (luma, grey_bin or, for a power-of-two range, grey_bin_pow2 in medens/patch_math.h,
// compiled with --fmad=false so the rounding is the CPU's), and counts them with shared-memory atomics. The entropy terms count * (log2 n - log2 count) come
// from a table of n + 1 doubles built by a small kernel before the main one; the warp sums them in double and
// reduces with shuffles. With more bins than pixels, the warp revisits its pixels (from L1) instead of sweeping
// empty bins, claiming each bin's count with atomicExch so that every used bin is counted exactly once and left
// zero for the next patch.
#include "launch.cuh"

namespace medens {
namespace cuda {
namespace {

constexpr int kEntropyWarps = 8;

struct EntropyParams {
  const void* images;
  int64_t stride_b, stride_c, stride_h, stride_w;
  int64_t patch, patches_per_row, num_patches, total;
  int bins;
  float lo, range_width, bins_f;
  bool pow2;        // range_width is a power of two: multiply by inv_width, exactly equal to dividing
  float inv_width;
  const double* terms;  // entropy_term(c, log2_n) for c in [0, n], or null
  double log2_n;
  float* out;
};

/// Pixels per vector load: 8 bytes of uint8, 16 bytes of the other dtypes.
template <int DT> constexpr int kEntropyVec = DT == kUInt8 ? 8 : static_cast<int>(16 / sizeof(typename Element<DT>::storage));

__global__ void entropy_terms_kernel(double* terms, int64_t n, double log2_n) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c <= n; c += step)
    terms[c] = entropy_term(static_cast<double>(c), log2_n);
}

__device__ __forceinline__ int bin_of(float grey, const EntropyParams& a) {
  return a.pow2 ? grey_bin_pow2(grey, a.lo, a.inv_width, a.bins_f) : grey_bin(grey, a.lo, a.range_width, a.bins_f);
}

/// Bins of the VEC pixels of work item t of a patch whose top-left pixel is `origin`: item t covers row
/// t / per_row, columns (t % per_row) * VEC ... + VEC - 1.
template <int DT, int CH, int VEC>
__device__ __forceinline__ void item_bins(const typename Element<DT>::storage* origin, int64_t t, int64_t per_row,
                                          const EntropyParams& a, int (&bins)[VEC]) {
  using E = Element<DT>;
  using T = typename E::storage;
  const int64_t r = t / per_row;
  const int64_t x = (t - r * per_row) * VEC;
  const T* px = origin + r * a.stride_h + x * a.stride_w;
  T first[VEC];
  load_vector<T, VEC>(px, first);
  if constexpr (CH == 1) {
    MEDENS_UNROLL
    for (int e = 0; e < VEC; ++e) bins[e] = bin_of(E::to_float(first[e]), a);
  } else {
    T second[VEC], third[VEC];
    load_vector<T, VEC>(px + a.stride_c, second);
    load_vector<T, VEC>(px + 2 * a.stride_c, third);
    MEDENS_UNROLL
    for (int e = 0; e < VEC; ++e) {
      bins[e] = bin_of(luma(E::to_float(first[e]), E::to_float(second[e]), E::to_float(third[e])), a);
    }
  }
}

__device__ __forceinline__ double term(const EntropyParams& a, uint32_t count) {
  return a.terms ? __ldg(a.terms + count) : entropy_term(static_cast<double>(count), a.log2_n);
}

/// VEC > 1 requires stride_w == 1 and every row start aligned to VEC elements (checked by the launcher).
template <int DT, int CH, int VEC>
__global__ void __launch_bounds__(kEntropyWarps * kWarpSize) patch_entropy_kernel(EntropyParams a) {
  using T = typename Element<DT>::storage;
  MEDENS_DYNAMIC_SHARED(smem);
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  uint32_t* hist = reinterpret_cast<uint32_t*>(smem) + static_cast<int64_t>(warp) * a.bins;
  for (int k = lane; k < a.bins; k += kWarpSize) hist[k] = 0u;
  __syncwarp();

  const int64_t p = a.patch, n = p * p;
  const int64_t per_row = p / VEC, items = p * per_row;
  const T* base = static_cast<const T*>(a.images);
  const int64_t step = static_cast<int64_t>(gridDim.x) * warps;
  for (int64_t patch = static_cast<int64_t>(blockIdx.x) * warps + warp; patch < a.total; patch += step) {
    const int64_t b = patch / a.num_patches, m = patch - b * a.num_patches;
    const int64_t pi = m / a.patches_per_row, pj = m - pi * a.patches_per_row;
    const T* origin = base + b * a.stride_b + pi * p * a.stride_h + pj * p * a.stride_w;
    for (int64_t t = lane; t < items; t += kWarpSize) {
      int bins[VEC];
      item_bins<DT, CH, VEC>(origin, t, per_row, a, bins);
      MEDENS_UNROLL
      for (int e = 0; e < VEC; ++e) atomicAdd(&hist[bins[e]], 1u);
    }
    __syncwarp();
    double sum = 0.0;
    if (a.bins <= n) {  // sweep the bins, clearing them for the next patch
      for (int k = lane; k < a.bins; k += kWarpSize) {
        const uint32_t count = hist[k];
        if (count) {
          sum += term(a, count);
          hist[k] = 0u;
        }
      }
    } else {  // sweep the pixels: the lane that takes a bin's count adds its term
      for (int64_t t = lane; t < items; t += kWarpSize) {
        int bins[VEC];
        item_bins<DT, CH, VEC>(origin, t, per_row, a, bins);
        MEDENS_UNROLL
        for (int e = 0; e < VEC; ++e) {
          const uint32_t count = atomicExch(&hist[bins[e]], 0u);
          if (count) sum += term(a, count);
        }
      }
    }
    sum = warp_sum(sum);
    if (lane == 0) a.out[patch] = entropy_from_terms(sum, static_cast<double>(n));
    __syncwarp();
  }
}

template <int DT, int CH>
int launch_entropy(const EntropyParams& a, bool vectorized, cudaStream_t stream) {
  // as many warps (histograms) as fit in the default 48 KiB of shared memory, at most kEntropyWarps
  const int fit = static_cast<int>(kDefaultSharedBytes / (static_cast<size_t>(a.bins) * sizeof(uint32_t)));
  const int warps = fit < kEntropyWarps ? fit : kEntropyWarps;
  const dim3 grid(grid_blocks(a.total, warps));
  const dim3 block(warps * kWarpSize);
  const size_t shared = static_cast<size_t>(warps) * a.bins * sizeof(uint32_t);
  if (vectorized) return launch(patch_entropy_kernel<DT, CH, kEntropyVec<DT>>, grid, block, shared, stream, a);
  return launch(patch_entropy_kernel<DT, CH, 1>, grid, block, shared, stream, a);
}

template <int DT>
int launch_entropy(const EntropyParams& a, int64_t channels, const int64_t* strides, cudaStream_t stream) {
  using T = typename Element<DT>::storage;
  constexpr int V = kEntropyVec<DT>;
  const bool vectorized = strides[3] == 1 && a.patch % V == 0 && aligned(a.images, V * sizeof(T)) &&
                          strides[0] % V == 0 && strides[2] % V == 0 && (channels == 1 || strides[1] % V == 0);
  return channels == 1 ? launch_entropy<DT, 1>(a, vectorized, stream) : launch_entropy<DT, 3>(a, vectorized, stream);
}

}  // namespace

int patch_entropy(const void* images, int dtype, int64_t batch, int64_t channels, int64_t height, int64_t width,
                  const int64_t* strides, int64_t patch, int bins, float lo, float range_width, double* terms,
                  float* out, int device, cudaStream_t stream) {
  if (patch < 1 || bins < 2 || bins > kMaxBins || (channels != 1 && channels != 3)) return kBadArgument;
  if (dtype != kUInt8 && dtype != kFloat16 && dtype != kBFloat16 && dtype != kFloat32) return kBadDType;
  const DeviceGuard guard(device);
  if (guard.status() != kOk) return guard.status();

  EntropyParams a{};
  a.images = images;
  a.stride_b = strides[0];
  a.stride_c = strides[1];
  a.stride_h = strides[2];
  a.stride_w = strides[3];
  a.patch = patch;
  a.patches_per_row = width / patch;
  a.num_patches = (height / patch) * a.patches_per_row;
  a.total = batch * a.num_patches;
  a.bins = bins;
  a.lo = lo;
  a.range_width = range_width;
  a.bins_f = static_cast<float>(bins);
  a.pow2 = is_power_of_two(range_width);
  a.inv_width = a.pow2 ? 1.0f / range_width : 0.0f;
  a.out = out;
  if (a.total == 0) return kOk;
  const int64_t n = patch * patch;
  a.log2_n = std::log2(static_cast<double>(n));
  if (terms != nullptr && n <= kMaxTabulatedPatch) {
    const int status = launch(entropy_terms_kernel, dim3(grid_blocks(n + 1, 256)), dim3(256), 0, stream, terms, n,
                              a.log2_n);
    if (status != kOk) return status;
    a.terms = terms;
  }
  switch (dtype) {
    case kUInt8: return launch_entropy<kUInt8>(a, channels, strides, stream);
    case kFloat16: return launch_entropy<kFloat16>(a, channels, strides, stream);
    case kBFloat16: return launch_entropy<kBFloat16>(a, channels, strides, stream);
    default: return launch_entropy<kFloat32>(a, channels, strides, stream);
  }
}

}  // namespace cuda
}  // namespace medens
