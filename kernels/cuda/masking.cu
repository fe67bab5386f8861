// entropy_guided_mask on the GPU: one block per row of patches.
//
// 1. Every thread computes float64 keys for its patches with the shared header functions (gumbel_key / plain_key)
//    and stores them as order-preserving 64-bit integers: in shared memory for rows of up to kMaxSharedKeys patches,
//    in a global workspace beyond.
// 2. Radix select finds the key of the (N - K)-th largest patch, 8 bits a pass from the most significant: each pass
//    counts the digits of the keys that still match the prefix found so far in a 256-bin shared histogram, and one
//    warp picks the digit by a prefix sum over lanes. After 8 passes the threshold key is exact, as is the number
//    of patches *at* the threshold that must be hidden.
// 3. One pass in index order decides and places every patch: keys above the threshold are hidden, and among keys
//    equal to it the lowest indices first (ties to the lower index, as key_before says). Block-wide prefix counts
//    (warp ballots + a scan over warps) give each patch its position in ids_keep / ids_mask, ascending by
//    construction, and its ids_restore entry.
// O(N) work per row for any N; no sort.
#include "launch.cuh"

namespace medens {
namespace cuda {
namespace {

constexpr int kDigitBits = 8;
constexpr int kDigits = 1 << kDigitBits;
constexpr int kMaxSelectThreads = 1024;
constexpr int kScanSlots = 64;  // warp totals (up to 32) and the block total

struct SelectParams {
  const void* scores;
  const void* noise;
  int scores_dtype, noise_dtype;
  int64_t scores_stride0, scores_stride1, noise_stride0, noise_stride1;
  int64_t n, keep;
  double scale;  // +-1/T, or 0 for T = inf
  bool plain, prefer_high, shared_keys;
  uint64_t* workspace;  // B * n keys when !shared_keys
  bool* mask;
  int64_t *ids_keep, *ids_mask, *ids_restore;
};

/// Bytes of shared memory before the keys: histogram, scan slots and the two chosen values.
constexpr size_t kSelectHeaderBytes = kDigits * sizeof(uint32_t) + kScanSlots * sizeof(uint32_t) + 2 * sizeof(int64_t);

__device__ __forceinline__ double load_double(const void* data, int dtype, int64_t offset) {
  return dtype == kFloat64 ? static_cast<const double*>(data)[offset]
                           : static_cast<double>(static_cast<const float*>(data)[offset]);
}

/// Maps a double to an integer with the same order (for non-NaN keys); -0.0 and +0.0 map to the same value, as
/// they compare equal.
__device__ __forceinline__ uint64_t ordered_key(double key) {
  key = key + 0.0;  // -0.0 + 0.0 == +0.0
  const uint64_t bits = static_cast<uint64_t>(__double_as_longlong(key));
  return (bits >> 63) ? ~bits : (bits | (uint64_t{1} << 63));
}

/// Exclusive prefix count of `flag` over the block's threads in thread order; *total gets the block's count.
/// Every thread of the block must call it.
__device__ uint32_t block_exclusive_count(bool flag, uint32_t* scan, uint32_t* total) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  const unsigned ballot = __ballot_sync(kFullMask, flag);
  const uint32_t in_warp = static_cast<uint32_t>(__popc(ballot & ((1u << lane) - 1u)));
  if (lane == 0) scan[warp] = static_cast<uint32_t>(__popc(ballot));
  __syncthreads();
  if (warp == 0) {
    const uint32_t own = lane < warps ? scan[lane] : 0u;
    uint32_t inclusive = own;
    MEDENS_UNROLL
    for (int d = 1; d < kWarpSize; d *= 2) {
      const uint32_t up = __shfl_up_sync(kFullMask, inclusive, d);
      if (lane >= d) inclusive += up;
    }
    if (lane < warps) scan[lane] = inclusive - own;
    if (lane == kWarpSize - 1) scan[kWarpSize] = inclusive;
  }
  __syncthreads();
  const uint32_t result = scan[warp] + in_warp;
  *total = scan[kWarpSize];
  __syncthreads();  // the slots are reused by the next call
  return result;
}

/// Warp 0: the digit d such that the keys matching the prefix with a digit above d number fewer than
/// `remaining`, and those with a digit of d or above at least `remaining`. Writes d and the rank still to find
/// among the keys with that digit.
__device__ void choose_digit(const uint32_t* hist, int64_t remaining, int64_t* chosen) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  constexpr int per_lane = kDigits / kWarpSize;
  const int top = kDigits - 1 - per_lane * lane;  // lane 0 holds the largest digits
  uint32_t own = 0;
  MEDENS_UNROLL
  for (int j = 0; j < per_lane; ++j) own += hist[top - j];
  uint32_t inclusive = own;
  MEDENS_UNROLL
  for (int d = 1; d < kWarpSize; d *= 2) {
    const uint32_t up = __shfl_up_sync(kFullMask, inclusive, d);
    if (lane >= d) inclusive += up;
  }
  const unsigned reached = __ballot_sync(kFullMask, static_cast<int64_t>(inclusive) >= remaining);
  if (reached != 0u && lane == __ffs(static_cast<int>(reached)) - 1) {
    int64_t above = static_cast<int64_t>(inclusive - own);
    for (int j = 0; j < per_lane; ++j) {
      const int64_t count = hist[top - j];
      if (above + count >= remaining) {
        chosen[0] = top - j;
        chosen[1] = remaining - above;
        break;
      }
      above += count;
    }
  }
}

__global__ void __launch_bounds__(kMaxSelectThreads) select_kernel(SelectParams a) {
  MEDENS_DYNAMIC_SHARED(smem);
  uint32_t* hist = reinterpret_cast<uint32_t*>(smem);
  uint32_t* scan = hist + kDigits;
  int64_t* chosen = reinterpret_cast<int64_t*>(scan + kScanSlots);
  const int64_t row = blockIdx.x;
  uint64_t* keys = a.shared_keys ? reinterpret_cast<uint64_t*>(smem + kSelectHeaderBytes) : a.workspace + row * a.n;
  const int tid = static_cast<int>(threadIdx.x), threads = static_cast<int>(blockDim.x);
  const int warp = tid / kWarpSize;

  for (int64_t i = tid; i < a.n; i += threads) {
    const double score = load_double(a.scores, a.scores_dtype, row * a.scores_stride0 + i * a.scores_stride1);
    const double key = a.plain ? plain_key(score, a.prefer_high)
                               : gumbel_key(score, load_double(a.noise, a.noise_dtype,
                                                               row * a.noise_stride0 + i * a.noise_stride1),
                                            a.scale);
    keys[i] = ordered_key(key);
  }
  __syncthreads();

  const int64_t hidden = a.n - a.keep;
  uint64_t threshold = 0, known = 0;  // the digits found so far, and which bits they cover
  int64_t remaining = hidden;         // rank (from 1) of the threshold among the keys matching `threshold`
  if (hidden > 0) {
    for (int shift = 64 - kDigitBits; shift >= 0; shift -= kDigitBits) {
      for (int d = tid; d < kDigits; d += threads) hist[d] = 0u;
      __syncthreads();
      for (int64_t i = tid; i < a.n; i += threads) {
        const uint64_t k = keys[i];
        if ((k & known) == threshold) atomicAdd(&hist[(k >> shift) & (kDigits - 1)], 1u);
      }
      __syncthreads();
      if (warp == 0) choose_digit(hist, remaining, chosen);
      __syncthreads();
      threshold |= static_cast<uint64_t>(chosen[0]) << shift;
      known |= static_cast<uint64_t>(kDigits - 1) << shift;
      remaining = chosen[1];
      __syncthreads();  // everyone has read `chosen` before the next pass
    }
  }

  bool* mask = a.mask + row * a.n;
  int64_t* ids_keep = a.ids_keep + row * a.keep;
  int64_t* ids_mask = a.ids_mask + row * hidden;
  int64_t* ids_restore = a.ids_restore + row * a.n;
  int64_t ties_before = 0, hidden_before = 0;
  for (int64_t start = 0; start < a.n; start += threads) {
    const int64_t i = start + tid;
    const bool valid = i < a.n;
    const uint64_t k = valid ? keys[i] : 0;
    const bool tie = valid && hidden > 0 && k == threshold;
    uint32_t ties_here, hidden_here;
    const int64_t tie_rank = ties_before + block_exclusive_count(tie, scan, &ties_here);
    const bool hide = valid && hidden > 0 && (k > threshold || (tie && tie_rank < remaining));
    const int64_t hide_rank = hidden_before + block_exclusive_count(hide, scan, &hidden_here);
    if (valid) {
      mask[i] = hide;
      if (hide) {
        ids_mask[hide_rank] = i;
        ids_restore[i] = a.keep + hide_rank;
      } else {
        ids_keep[i - hide_rank] = i;
        ids_restore[i] = i - hide_rank;
      }
    }
    ties_before += ties_here;
    hidden_before += hidden_here;
  }
}

}  // namespace

int entropy_guided_mask(const void* scores, int scores_dtype, const int64_t* scores_strides, const void* noise,
                        int noise_dtype, const int64_t* noise_strides, int64_t batch, int64_t num_patches,
                        int64_t num_keep, double temperature, bool prefer_high, uint64_t* key_workspace, bool* mask,
                        int64_t* ids_keep, int64_t* ids_mask, int64_t* ids_restore, int device, cudaStream_t stream) {
  const bool plain = temperature == 0.0;
  if (scores_dtype != kFloat32 && scores_dtype != kFloat64) return kBadDType;
  if (!plain && noise_dtype != kFloat32 && noise_dtype != kFloat64) return kBadDType;
  if (num_keep < 1 || num_keep > num_patches || num_patches > 0x7fffffff || !(temperature >= 0.0) ||
      batch > 0x7fffffff)
    return kBadArgument;
  const bool shared_keys = num_patches <= kMaxSharedKeys;
  if (!shared_keys && key_workspace == nullptr) return kBadArgument;
  const DeviceGuard guard(device);
  if (guard.status() != kOk) return guard.status();
  if (batch == 0) return kOk;

  SelectParams a{};
  a.scores = scores;
  a.noise = plain ? scores : noise;
  a.scores_dtype = scores_dtype;
  a.noise_dtype = plain ? scores_dtype : noise_dtype;
  a.scores_stride0 = scores_strides[0];
  a.scores_stride1 = scores_strides[1];
  a.noise_stride0 = plain ? 0 : noise_strides[0];
  a.noise_stride1 = plain ? 0 : noise_strides[1];
  a.n = num_patches;
  a.keep = num_keep;
  a.scale = std::isinf(temperature) ? 0.0 : (prefer_high ? 1.0 : -1.0) / temperature;
  a.plain = plain;
  a.prefer_high = prefer_high;
  a.shared_keys = shared_keys;
  a.workspace = key_workspace;
  a.mask = mask;
  a.ids_keep = ids_keep;
  a.ids_mask = ids_mask;
  a.ids_restore = ids_restore;

  const int64_t rounded = (num_patches + kWarpSize - 1) / kWarpSize * kWarpSize;
  const int threads = static_cast<int>(rounded < 64 ? 64 : (rounded > kMaxSelectThreads ? kMaxSelectThreads : rounded));
  const size_t shared = kSelectHeaderBytes + (shared_keys ? static_cast<size_t>(num_patches) * sizeof(uint64_t) : 0);
  return launch(select_kernel, dim3(static_cast<unsigned>(batch)), dim3(threads), shared, stream, a);
}

}  // namespace cuda
}  // namespace medens
