// The buffer cache behind cached_empty (see buffer_cache.h).
#include "cpu/runtime/buffer_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

namespace brnnseg::cpu {
namespace {

constexpr size_t kMinBytes = size_t(256) << 10;  // smaller buffers: at::empty
constexpr size_t kSmallGranule = kMinBytes;      // blocks under 2 MiB: multiples of 256 KiB
constexpr size_t kGranule = size_t(2) << 20;     // larger blocks: multiples of 2 MiB

size_t block_bytes(size_t n) {
  const size_t g = n < kGranule ? kSmallGranule : kGranule;
  return (std::max(n, size_t(1)) + g - 1) / g * g;
}

size_t cache_limit_bytes() {
  const char* v = std::getenv("BRNNSEG_CPU_CACHE_MB");
  return (v != nullptr ? static_cast<size_t>(std::strtoull(v, nullptr, 10)) : size_t(1024)) << 20;
}

class BlockCache {
 public:
  void* acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> g(mu_);
      // The smallest idle block that fits, unless it is over 1.5x the request.
      auto it = idle_.lower_bound(bytes);
      if (it != idle_.end() && it->first <= bytes + bytes / 2) {
        void* p = it->second;
        idle_bytes_ -= it->first;
        live_[p] = it->first;
        idle_.erase(it);
        return p;
      }
    }
    void* p = std::aligned_alloc(64, bytes);
    TORCH_CHECK(p != nullptr, "brnnseg: out of memory allocating ", bytes, " bytes");
    std::lock_guard<std::mutex> g(mu_);
    live_[p] = bytes;
    return p;
  }

  // Returns the block's size.
  size_t release(void* p) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return 0;  // not ours (cannot happen: only CachingAllocator installs this deleter)
    const size_t bytes = it->second;
    live_.erase(it);
    if (idle_bytes_ + bytes <= limit_) {
      idle_.emplace(bytes, p);
      idle_bytes_ += bytes;
    } else {
      std::free(p);
    }
    return bytes;
  }

  int64_t release_idle() {
    std::lock_guard<std::mutex> g(mu_);
    const int64_t freed = static_cast<int64_t>(idle_bytes_);
    for (auto& [bytes, p] : idle_) std::free(p);
    idle_.clear();
    idle_bytes_ = 0;
    return freed;
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> idle_;      // size -> block
  std::unordered_map<void*, size_t> live_;  // block -> size
  size_t idle_bytes_ = 0;
  const size_t limit_ = cache_limit_bytes();
};

// Never destroyed: tensors may outlive static destruction at interpreter exit.
BlockCache& cache() {
  static BlockCache* c = new BlockCache();
  return *c;
}

// Tensor bytes handed out and not yet freed, reported to the profiler like the default CPU
// allocator does, so profiles and the benchmarks' peak memory see these buffers too.
std::atomic<int64_t> g_in_use{0};

void report(void* p, int64_t delta) {
  const int64_t total = g_in_use.fetch_add(delta) + delta;
  if (c10::memoryProfilingEnabled())
    c10::reportMemoryUsageToProfiler(p, delta, static_cast<size_t>(total), static_cast<size_t>(total),
                                     c10::Device(c10::DeviceType::CPU));
}

void release_block(void* p) { report(p, -static_cast<int64_t>(cache().release(p))); }

struct CachingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = block_bytes(n);
    void* p = cache().acquire(bytes);
    report(p, static_cast<int64_t>(bytes));
    return {p, p, &release_block, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release_block; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

}  // namespace

at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat fmt) {
  TORCH_CHECK(options.device().is_cpu(), "cached_empty: CPU tensors only");
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(options.dtype().toScalarType());
  static const bool enabled = cache_limit_bytes() > 0;
  if (!enabled || bytes < kMinBytes) return at::empty(sizes, options.memory_format(fmt));
  return at::detail::empty_generic(sizes, &allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), fmt);
}

int64_t release_cached_buffers() { return cache().release_idle(); }

}  // namespace brnnseg::cpu
