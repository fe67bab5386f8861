// A cache of large host blocks for the outputs of the CPU kernels.
//
// A new multi-megabyte tensor from the system allocator is a fresh mapping: the first write to each page is a
// page fault in which the kernel zeroes the page, and for a large output that costs several times the op itself.
// A training loop asks for outputs of the same sizes every step, so blocks are kept when their tensor dies and
// handed out again, already mapped, as CUDA's caching allocator does for device memory. Idle blocks are bounded
// by a limit (bytes); blocks beyond it are freed at once.
#pragma once

#include <cstdint>

namespace medens {
namespace cpu {

struct HostCacheInfo {
  int64_t limit_bytes;   // most bytes kept idle
  int64_t idle_bytes;    // bytes in idle blocks now
  int64_t idle_blocks;
  int64_t in_use_bytes;  // bytes in blocks handed out and not yet returned
  int64_t hits;          // requests served from an idle block
  int64_t misses;        // requests that allocated a new block
};

/// A block of at least `bytes` bytes, 64-byte aligned (2 MiB aligned when large); its capacity in `*capacity`.
/// Returns nullptr when memory is exhausted.
void* host_cache_acquire(int64_t bytes, int64_t* capacity);

/// Gives back a block from host_cache_acquire; kept for reuse while the idle bytes stay within the limit.
void host_cache_release(void* block, int64_t capacity);

/// Sets the most idle bytes to keep (0 keeps none) and frees idle blocks beyond it.
void host_cache_set_limit(int64_t bytes);

/// Frees every idle block; returns the bytes freed.
int64_t host_cache_clear();

HostCacheInfo host_cache_info();

}  // namespace cpu
}  // namespace medens
