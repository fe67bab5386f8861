// The cache of large host blocks: see medens/host_cache.h.
#include "medens/host_cache.h"

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#include "parallel.h"

namespace medens {
namespace cpu {
namespace {

constexpr int64_t kHugePage = int64_t(1) << 21;
constexpr int64_t kSmallGranule = int64_t(1) << 16;

struct Cache {
  std::mutex lock;
  std::multimap<int64_t, void*> idle;  // capacity -> block
  int64_t limit = int64_t(1) << 30;
  int64_t idle_bytes = 0, in_use_bytes = 0, hits = 0, misses = 0;

  // Frees the largest idle blocks until the idle bytes fit within `keep`. Caller holds the lock.
  void trim(int64_t keep) {
    while (idle_bytes > keep && !idle.empty()) {
      auto largest = std::prev(idle.end());
      idle_bytes -= largest->first;
      std::free(largest->second);
      idle.erase(largest);
    }
  }
};

Cache* the_cache = nullptr;  // created once, never destroyed: tensors may give blocks back during interpreter exit

void lock_for_fork() { the_cache->lock.lock(); }
void unlock_after_fork() { the_cache->lock.unlock(); }

Cache& cache() {
  static const bool created = [] {
    the_cache = new Cache();
#if defined(__unix__) || defined(__APPLE__)
    // A fork (DataLoader workers) while another thread holds the lock would leave the child's copy locked
    // forever: the lock is taken before a fork and released on both sides after it.
    pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork);
#endif
    return true;
  }();
  (void)created;
  return *the_cache;
}

int64_t round_up(int64_t value, int64_t granule) { return (value + granule - 1) / granule * granule; }

}  // namespace

void* host_cache_acquire(int64_t bytes, int64_t* capacity) {
  const bool large = bytes >= 2 * kHugePage;
  const int64_t size = round_up(std::max<int64_t>(bytes, 1), large ? kHugePage : kSmallGranule);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> guard(c.lock);
    // The smallest idle block that fits, unless it would waste more than a quarter of itself.
    auto found = c.idle.lower_bound(size);
    if (found != c.idle.end() && found->first - size <= found->first / 4) {
      void* block = found->second;
      *capacity = found->first;
      c.idle_bytes -= found->first;
      c.in_use_bytes += found->first;
      ++c.hits;
      c.idle.erase(found);
      return block;
    }
    ++c.misses;
  }
  void* block = std::aligned_alloc(static_cast<size_t>(large ? kHugePage : 64), static_cast<size_t>(size));
  if (block == nullptr) {
    std::lock_guard<std::mutex> guard(c.lock);
    c.trim(0);  // give idle memory back and try once more
    block = std::aligned_alloc(static_cast<size_t>(large ? kHugePage : 64), static_cast<size_t>(size));
    if (block == nullptr) return nullptr;
  }
  if (large) advise_huge_pages(block, size);
  std::lock_guard<std::mutex> guard(c.lock);
  c.in_use_bytes += size;
  *capacity = size;
  return block;
}

void host_cache_release(void* block, int64_t capacity) {
  if (block == nullptr) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> guard(c.lock);
  c.in_use_bytes -= capacity;
  if (capacity > c.limit) {
    std::free(block);
    return;
  }
  c.idle.emplace(capacity, block);
  c.idle_bytes += capacity;
  c.trim(c.limit);
}

void host_cache_set_limit(int64_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> guard(c.lock);
  c.limit = std::max<int64_t>(bytes, 0);
  c.trim(c.limit);
}

int64_t host_cache_clear() {
  Cache& c = cache();
  std::lock_guard<std::mutex> guard(c.lock);
  const int64_t freed = c.idle_bytes;
  c.trim(0);
  return freed;
}

HostCacheInfo host_cache_info() {
  Cache& c = cache();
  std::lock_guard<std::mutex> guard(c.lock);
  return HostCacheInfo{c.limit, c.idle_bytes, static_cast<int64_t>(c.idle.size()), c.in_use_bytes, c.hits, c.misses};
}

}  // namespace cpu
}  // namespace medens
