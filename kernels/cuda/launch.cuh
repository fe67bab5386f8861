// Launch and error-check helpers shared by the CUDA kernels in kernels/cuda.
//
// Every launcher selects the tensor's device (DeviceGuard), launches on the stream it was given (PyTorch's current
// stream, passed from Python) with `launch`, and returns a status: medens::kOk, a medens::Status code, or
// kCudaErrorBase + the cudaError_t of a failed launch. The Python side turns a non-zero status into an exception
// naming the op.
//
// The same sources compile unchanged for the CPU emulator (kernels/cuda/emulator), which runs the kernels with one
// host thread per CUDA thread so that the tests can check them, under AddressSanitizer and ThreadSanitizer, on a
// machine without a GPU. Hence two rules for kernel code: shared memory is only the dynamic buffer declared with
// MEDENS_DYNAMIC_SHARED, and launches go through `launch`, never `<<<...>>>` directly.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(MEDENS_CUDA_EMULATOR)
#include "emulator/cuda_emulator.h"
#define MEDENS_DYNAMIC_SHARED(name) unsigned char* name = ::emu::dynamic_shared_memory()
#define MEDENS_UNROLL
#else
#include <cuda_runtime.h>
#define MEDENS_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#define MEDENS_UNROLL _Pragma("unroll")
#endif

#include "cuda_kernels.h"
#include "medens/patch_math.h"

namespace medens {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
/// Dynamic shared memory a kernel may use without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize).
constexpr size_t kDefaultSharedBytes = 48 * 1024;

inline int status_of(cudaError_t error) { return error == cudaSuccess ? kOk : kCudaErrorBase + static_cast<int>(error); }

/// Makes `device` current for the lifetime of the guard and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    cudaError_t error = cudaGetDevice(&previous_);
    if (error == cudaSuccess && previous_ != device_) error = cudaSetDevice(device_);
    status_ = status_of(error);
  }
  ~DeviceGuard() {
    if (status_ == kOk && previous_ != device_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  int status() const { return status_; }

 private:
  int device_;
  int previous_ = -1;
  int status_ = kOk;
};

/// Number of streaming multiprocessors of the current device (cached per device), for sizing grid-stride loops.
inline int multiprocessors() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return 1;
  int count = cache[device].load(std::memory_order_relaxed);
  if (count == 0) {
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count < 1) {
      (void)cudaGetLastError();
      count = 1;
    }
    cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

/// Blocks for a grid-stride loop over `items` work items, `per_block` of them per block per step: enough blocks
/// to fill the device several times over, never more than the work needs.
inline unsigned grid_blocks(int64_t items, int64_t per_block, int blocks_per_multiprocessor = 32) {
  const int64_t needed = (items + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(multiprocessors()) * blocks_per_multiprocessor;
  const int64_t blocks = needed < cap ? needed : cap;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

/// Launches `kernel` on `stream` and checks the launch. Returns kOk or kCudaErrorBase + the CUDA error.
/// Kernels that need more than 48 KiB of dynamic shared memory get it here (opt-in attribute).
template <typename... Params, typename... Args>
int launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
           Args&&... args) {
  (void)cudaGetLastError();  // start from a clean error state; sticky errors reappear below
  if (shared_bytes > kDefaultSharedBytes) {
    const cudaError_t error =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes));
    if (error != cudaSuccess) return status_of(error);
  }
#if defined(MEDENS_CUDA_EMULATOR)
  ::emu::launch(kernel, grid, block, shared_bytes, stream, static_cast<Params>(args)...);
#else
  kernel<<<grid, block, shared_bytes, stream>>>(static_cast<Params>(args)...);
#endif
  return status_of(cudaGetLastError());
}

// ---- device helpers ---------------------------------------------------------------------------------------------

/// Sum over the 32 lanes of a warp; every lane gets the total. All lanes must call it.
template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
  MEDENS_UNROLL
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

/// An unsigned integer type of exactly `Bytes` bytes, for vector loads and stores.
template <int Bytes> struct Raw;
template <> struct Raw<1> { using type = uint8_t; };
template <> struct Raw<2> { using type = uint16_t; };
template <> struct Raw<4> { using type = uint32_t; };
template <> struct Raw<8> { using type = uint2; };
template <> struct Raw<16> { using type = uint4; };

/// Loads VEC consecutive elements with one memory access; `p` must be aligned to VEC * sizeof(T).
template <typename T, int VEC>
__device__ __forceinline__ void load_vector(const T* p, T (&values)[VEC]) {
  using R = typename Raw<static_cast<int>(sizeof(T)) * VEC>::type;
  const R raw = *reinterpret_cast<const R*>(p);
  memcpy(values, &raw, sizeof raw);
}

/// Stores VEC consecutive elements with one memory access; `p` must be aligned to VEC * sizeof(T).
template <typename T, int VEC>
__device__ __forceinline__ void store_vector(T* p, const T (&values)[VEC]) {
  using R = typename Raw<static_cast<int>(sizeof(T)) * VEC>::type;
  R raw;
  memcpy(&raw, values, sizeof raw);
  *reinterpret_cast<R*>(p) = raw;
}

/// True when `p` is aligned to `bytes`.
inline bool aligned(const void* p, size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

}  // namespace cuda
}  // namespace medens
