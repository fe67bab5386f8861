// A CPU emulator for the subset of CUDA that kernels/cuda uses, so the CUDA kernels can be tested without a GPU.
//
// The .cu files compile unchanged as C++ with -DMEDENS_CUDA_EMULATOR (see launch.cuh). A launch runs every
// block with one host thread per CUDA thread: __syncthreads is a real barrier over the block's threads, warp
// shuffles and ballots exchange values through a per-warp barrier, atomics are host atomics, and the dynamic
// shared memory of each block is a fresh heap buffer of exactly the requested size, filled with garbage.
// Two blocks run at once (on separate thread pools), so races between blocks are visible too.
//
// Built with -fsanitize=address this is our memcheck: any out-of-bounds access to global or shared memory aborts.
// Built with -fsanitize=thread it is our racecheck: shared or global memory touched by two threads without a
// barrier (__syncthreads, __syncwarp) or an atomic in between is reported; as in the CUDA memory model, shuffles
// and ballots exchange values but do not order memory. The emulator is stricter than the hardware where the
// hardware is undefined: warp collectives need all 32 lanes present and a full mask, blocks must be whole warps,
// a barrier that not every live thread reaches is a deadlock (reported after a timeout), and a kernel that
// requests more than 48 KiB of dynamic shared memory without opting in fails to launch, as on a GPU.
//
// What it cannot check: timing, occupancy, memory coalescing, and the device's own floating-point library (device
// `log` and `log2` are host libm here; both are within 1 ulp of the exact result).
#pragma once

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

// ---- CUDA keywords and types ------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr : int { cudaDevAttrMultiProcessorCount = 16 };

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace emu {

// ---- configuration and failure ----------------------------------------------------------------------------------
struct Config {
  int multiprocessors = 2;        // small, so that grid-stride loops take several steps
  int device_count = 2;
  size_t max_shared_optin = 227 * 1024;
  int concurrent_blocks = 2;
  double timeout_seconds = 300.0;  // a barrier waiting longer than this is a deadlock
};
inline Config& config() {
  static Config c;
  return c;
}

[[noreturn]] inline void fail(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::fprintf(stderr, "cuda emulator: ");
  std::vfprintf(stderr, format, args);
  std::fprintf(stderr, "\n");
  va_end(args);
  std::fflush(stderr);
  std::abort();
}

// ---- barriers ---------------------------------------------------------------------------------------------------
/// A reusable barrier whose participants may leave for good (drop), like threads that exit a kernel.
/// Arrivals are counted under a mutex; waiters sleep on a futex over the generation counter, so a release wakes
/// them without a stampede on the mutex. The release/acquire pair on `generation_` orders memory (and tells
/// ThreadSanitizer) that everything before the barrier happens before everything after it.
class Barrier {
 public:
  void reset(int expected) {
    std::lock_guard<std::mutex> lock(mutex_);
    expected_.store(expected, std::memory_order_relaxed);
    arrived_.store(0, std::memory_order_relaxed);
  }
  void arrive_and_wait(const char* what) {
    uint32_t generation;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation = generation_.load(std::memory_order_relaxed);
      const int arrived = arrived_.load(std::memory_order_relaxed) + 1;
      arrived_.store(arrived, std::memory_order_relaxed);
      if (arrived >= expected_.load(std::memory_order_relaxed)) {
        release();
        return;
      }
    }
    wait(generation, what);
  }
  void drop() {
    std::lock_guard<std::mutex> lock(mutex_);
    const int expected = expected_.load(std::memory_order_relaxed) - 1;
    expected_.store(expected, std::memory_order_relaxed);
    const int arrived = arrived_.load(std::memory_order_relaxed);
    if (arrived > 0 && arrived >= expected) release();
  }

 private:
  void release() {  // with mutex_ held
    arrived_.store(0, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&generation_), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
  }
  void wait(uint32_t generation, const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(config().timeout_seconds);
    while (generation_.load(std::memory_order_acquire) == generation) {
      const timespec slice{1, 0};
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&generation_), FUTEX_WAIT_PRIVATE, generation, &slice, nullptr,
              0);
      if (std::chrono::steady_clock::now() > deadline)
        fail("deadlock at %s (thread %u of block %u): not every live thread reached it", what, threadIdx.x,
             blockIdx.x);
    }
  }
  // Atomics although guarded by mutex_: a warp rendezvous hides the mutex from ThreadSanitizer (see below).
  std::mutex mutex_;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> expected_{0};
  std::atomic<int> arrived_{0};
};

constexpr int kWarp = 32;

struct Warp {
  Barrier barrier;
  uint64_t slots[kWarp];
  std::atomic<int> live{kWarp};
  void reset() {
    barrier.reset(kWarp);
    live.store(kWarp);
  }
};

struct Block {
  Barrier barrier;
  std::unique_ptr<Warp[]> warps;
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;
  int threads = 0;

  void prepare(int num_threads, size_t bytes) {
    threads = num_threads;
    if (!warps) warps.reset(new Warp[num_threads / kWarp]);
    for (int w = 0; w < num_threads / kWarp; ++w) warps[w].reset();
    barrier.reset(num_threads);
    std::free(shared);
    shared_bytes = bytes;
    shared = static_cast<unsigned char*>(std::malloc(bytes ? bytes : 1));
    std::memset(shared, 0xCD, bytes);  // garbage, as uninitialised shared memory is
  }
  ~Block() { std::free(shared); }
};

inline thread_local Block* current_block = nullptr;
inline thread_local Warp* current_warp = nullptr;

inline unsigned char* dynamic_shared_memory() { return current_block->shared; }
inline int lane() { return static_cast<int>(threadIdx.x % kWarp); }

inline void require_whole_warp(unsigned mask, const char* what) {
  if (mask != 0xffffffffu) fail("%s with partial mask 0x%08x is not supported by the emulator", what, mask);
  if (current_warp->live.load() != kWarp)
    fail("%s in warp %u of block %u after some of its lanes exited (undefined on the GPU)", what,
         threadIdx.x / kWarp, blockIdx.x);
}

#if defined(__SANITIZE_THREAD__)
extern "C" void AnnotateIgnoreSyncBegin(const char* file, int line);
extern "C" void AnnotateIgnoreSyncEnd(const char* file, int line);
#endif

/// Waits for the whole warp in a shuffle or ballot. On the GPU these exchange values but do not order memory
/// (only __syncwarp, __syncthreads and atomics do), so under ThreadSanitizer the wait is hidden from its
/// happens-before tracking: a kernel that relies on a shuffle to order shared-memory accesses is reported.
inline void warp_rendezvous(Warp& w, const char* what) {
#if defined(__SANITIZE_THREAD__)
  AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
  w.barrier.arrive_and_wait(what);
  AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
#else
  w.barrier.arrive_and_wait(what);
#endif
}

/// Every lane publishes `value`, then reads the value published by lane `source`.
template <typename T>
T exchange(unsigned mask, T value, int source, const char* what) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 64 bits");
  require_whole_warp(mask, what);
  Warp& w = *current_warp;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  __atomic_store_n(&w.slots[lane()], bits, __ATOMIC_RELAXED);
  warp_rendezvous(w, what);
  const uint64_t read = __atomic_load_n(&w.slots[source], __ATOMIC_RELAXED);
  warp_rendezvous(w, what);
  T out;
  std::memcpy(&out, &read, sizeof(T));
  return out;
}

// ---- runtime state ----------------------------------------------------------------------------------------------
inline thread_local cudaError_t last_error = cudaSuccess;
inline thread_local int current_device = 0;

struct LaunchRecord {
  const void* kernel;
  dim3 grid, block;
  size_t shared_bytes;
};

struct Registry {
  std::mutex mutex;
  std::vector<std::pair<const void*, size_t>> shared_optin;  // kernel -> opted-in dynamic shared memory
  std::vector<LaunchRecord> launches;
};
inline Registry& registry() {
  static Registry r;
  return r;
}

inline size_t shared_limit(const void* kernel) {
  std::lock_guard<std::mutex> lock(registry().mutex);
  for (const auto& [k, bytes] : registry().shared_optin)
    if (k == kernel) return bytes;
  return 48 * 1024;
}

/// Kernels launched so far (cleared by the caller when it wants to look at one case).
inline std::vector<LaunchRecord> take_launches() {
  std::lock_guard<std::mutex> lock(registry().mutex);
  std::vector<LaunchRecord> out;
  out.swap(registry().launches);
  return out;
}

struct ThreadStart {
  void (*run)(void*);
  void* arg;
};

inline void* thread_entry(void* p) {
  auto* start = static_cast<ThreadStart*>(p);
  start->run(start->arg);
  return nullptr;
}

/// Runs blocks first, first + stride, ... of a launch on `num_threads` host threads.
template <typename Body>
void run_pool(const Body& body, int num_threads, size_t shared_bytes, int64_t first, int64_t stride,
              int64_t num_blocks, dim3 grid, dim3 block) {
  Block state;
  Barrier pool;
  pool.reset(num_threads);
  state.prepare(num_threads, shared_bytes);
  struct Arg {
    const Body* body;
    Block* state;
    Barrier* pool;
    int tid;
    int num_threads;
    size_t shared_bytes;
    int64_t first, stride, num_blocks;
    dim3 grid, block;
  };
  auto run = [](void* p) {
    const Arg& a = *static_cast<Arg*>(p);
    for (int64_t linear = a.first; linear < a.num_blocks; linear += a.stride) {
      a.pool->arrive_and_wait("block start");
      threadIdx = uint3{static_cast<unsigned>(a.tid), 0, 0};
      blockIdx = uint3{static_cast<unsigned>(linear % a.grid.x), static_cast<unsigned>((linear / a.grid.x) % a.grid.y),
                       static_cast<unsigned>(linear / (static_cast<int64_t>(a.grid.x) * a.grid.y))};
      blockDim = a.block;
      gridDim = a.grid;
      current_block = a.state;
      current_warp = &a.state->warps[a.tid / kWarp];
      (*a.body)();
      // the thread exits: it no longer takes part in barriers or warp collectives of this block
      current_warp->live.fetch_sub(1);
      current_warp->barrier.drop();
      current_block->barrier.drop();
      a.pool->arrive_and_wait("block end");
      if (a.tid == 0 && linear + a.stride < a.num_blocks) a.state->prepare(a.num_threads, a.shared_bytes);
    }
  };
  std::vector<Arg> args(num_threads);
  std::vector<ThreadStart> starts(num_threads);
  std::vector<pthread_t> handles(num_threads);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 1 << 20);
  for (int t = 0; t < num_threads; ++t) {
    args[t] = Arg{&body, &state, &pool, t, num_threads, shared_bytes, first, stride, num_blocks, grid, block};
    starts[t] = ThreadStart{run, &args[t]};
    if (pthread_create(&handles[t], &attr, thread_entry, &starts[t]) != 0) fail("cannot start thread %d", t);
  }
  pthread_attr_destroy(&attr);
  for (int t = 0; t < num_threads; ++t) pthread_join(handles[t], nullptr);
}

/// Emulates kernel<<<grid, block, shared_bytes, stream>>>(args...). Errors go to cudaGetLastError().
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t, Args... args) {
  const void* key = reinterpret_cast<const void*>(kernel);
  if (block.y != 1 || block.z != 1 || block.x < 32 || block.x > 1024 || block.x % kWarp != 0 || grid.x < 1 ||
      grid.x > 0x7fffffffu || grid.y < 1 || grid.y > 65535 || grid.z < 1 || grid.z > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (shared_bytes > shared_limit(key)) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  {
    std::lock_guard<std::mutex> lock(registry().mutex);
    registry().launches.push_back(LaunchRecord{key, grid, block, shared_bytes});
  }
  const int64_t num_blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  const auto run_kernel = [&]() { kernel(args...); };
  using Body = decltype(run_kernel);
  const int64_t pools = num_blocks < config().concurrent_blocks ? num_blocks : config().concurrent_blocks;
  std::vector<pthread_t> runners(pools);
  struct PoolArg {
    const Body* body;
    int threads;
    size_t shared_bytes;
    int64_t first, stride, num_blocks;
    dim3 grid, block;
  };
  std::vector<PoolArg> pool_args(pools);
  std::vector<ThreadStart> starts(pools);
  for (int64_t p = 0; p < pools; ++p) {
    pool_args[p] = PoolArg{&run_kernel, static_cast<int>(block.x), shared_bytes, p, pools, num_blocks, grid, block};
    starts[p] = ThreadStart{[](void* q) {
                              const PoolArg& a = *static_cast<PoolArg*>(q);
                              run_pool(*a.body, a.threads, a.shared_bytes, a.first, a.stride, a.num_blocks, a.grid,
                                       a.block);
                            },
                            &pool_args[p]};
    if (pthread_create(&runners[p], nullptr, thread_entry, &starts[p]) != 0) fail("cannot start a block pool");
  }
  for (auto& r : runners) pthread_join(r, nullptr);
}

}  // namespace emu

// ---- device intrinsics ------------------------------------------------------------------------------------------
inline void __syncthreads() { emu::current_block->barrier.arrive_and_wait("__syncthreads"); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  emu::require_whole_warp(mask, "__syncwarp");
  emu::current_warp->barrier.arrive_and_wait("__syncwarp");
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  if (width != 32) emu::fail("__shfl_xor_sync with width %d is not supported", width);
  return emu::exchange(mask, value, emu::lane() ^ lane_mask, "__shfl_xor_sync");
}

template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  if (width != 32) emu::fail("__shfl_up_sync with width %d is not supported", width);
  const int source = emu::lane() - static_cast<int>(delta);
  return emu::exchange(mask, value, source < 0 ? emu::lane() : source, "__shfl_up_sync");
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  if (width != 32) emu::fail("__shfl_down_sync with width %d is not supported", width);
  const int source = emu::lane() + static_cast<int>(delta);
  return emu::exchange(mask, value, source >= emu::kWarp ? emu::lane() : source, "__shfl_down_sync");
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source, int width = 32) {
  if (width != 32) emu::fail("__shfl_sync with width %d is not supported", width);
  return emu::exchange(mask, value, source & (emu::kWarp - 1), "__shfl_sync");
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  emu::require_whole_warp(mask, "__ballot_sync");
  emu::Warp& w = *emu::current_warp;
  __atomic_store_n(&w.slots[emu::lane()], predicate ? uint64_t{1} : uint64_t{0}, __ATOMIC_RELAXED);
  emu::warp_rendezvous(w, "__ballot_sync");
  unsigned ballot = 0;
  for (int l = 0; l < emu::kWarp; ++l)
    ballot |= static_cast<unsigned>(__atomic_load_n(&w.slots[l], __ATOMIC_RELAXED) != 0) << l;
  emu::warp_rendezvous(w, "__ballot_sync");
  return ballot;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

inline long long __double_as_longlong(double d) {
  long long v;
  std::memcpy(&v, &d, sizeof v);
  return v;
}
inline double __longlong_as_double(long long v) {
  double d;
  std::memcpy(&d, &v, sizeof d);
  return d;
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}

inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}
inline int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}

template <typename F, typename U>
F atomic_float_add(F* address, F value) {
  U* bits = reinterpret_cast<U*>(address);
  U expected = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    F current;
    std::memcpy(&current, &expected, sizeof current);
    const F sum = current + value;
    U desired;
    std::memcpy(&desired, &sum, sizeof desired);
    if (__atomic_compare_exchange_n(bits, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
      return current;
  }
}
inline float atomicAdd(float* address, float value) { return atomic_float_add<float, uint32_t>(address, value); }
inline double atomicAdd(double* address, double value) {
  return atomic_float_add<double, uint64_t>(address, value);
}

inline unsigned atomicExch(unsigned* address, unsigned value) {
  return __atomic_exchange_n(address, value, __ATOMIC_RELAXED);
}
inline int atomicExch(int* address, int value) { return __atomic_exchange_n(address, value, __ATOMIC_RELAXED); }
inline int atomicOr(int* address, int value) { return __atomic_fetch_or(address, value, __ATOMIC_RELAXED); }

// ---- runtime API ------------------------------------------------------------------------------------------------
inline cudaError_t cudaGetLastError() {
  const cudaError_t error = emu::last_error;
  emu::last_error = cudaSuccess;
  return error;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
  }
  return "unknown error";
}

inline cudaError_t cudaGetDevice(int* device) {
  *device = emu::current_device;
  return cudaSuccess;
}

inline cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= emu::config().device_count) return emu::last_error = cudaErrorInvalidDevice;
  emu::current_device = device;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device < 0 || device >= emu::config().device_count) return emu::last_error = cudaErrorInvalidDevice;
  if (attribute != cudaDevAttrMultiProcessorCount) return emu::last_error = cudaErrorInvalidValue;
  *value = emu::config().multiprocessors;
  return cudaSuccess;
}

inline cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = 0;
  return cudaSuccess;
}

template <typename T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > emu::config().max_shared_optin)
    return emu::last_error = cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(emu::registry().mutex);
  const void* key = reinterpret_cast<const void*>(kernel);
  for (auto& entry : emu::registry().shared_optin)
    if (entry.first == key) {
      entry.second = static_cast<size_t>(value);
      return cudaSuccess;
    }
  emu::registry().shared_optin.emplace_back(key, static_cast<size_t>(value));
  return cudaSuccess;
}
