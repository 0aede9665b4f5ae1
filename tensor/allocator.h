// One allocator per device, each with stats that tests and benchmarks read:
// memory claims in somnus are measured here, never estimated.
//
//   current   bytes handed out and not yet returned (what tensors hold)
//   peak      the high-water mark of `current` since the last reset_peak()
//   reserved  bytes held from the system (rounded live blocks + the cache)
//   num_allocs / num_frees   calls served
//
// CPU: a CachingAllocator over 64-byte aligned malloc.
// CUDA: a CachingAllocator over cudaMalloc. On out-of-memory it frees
// its cache and retries once; if that fails it throws somnus::Error naming the requested
// and the in-use bytes. The caching logic is backend-agnostic so that it is tested on CPU
// with a budget-limited RawAllocator.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "tensor/device.h"

namespace somnus {

struct AllocatorStats {
  int64_t current = 0;
  int64_t peak = 0;
  int64_t reserved = 0;
  int64_t num_allocs = 0;
  int64_t num_frees = 0;
  int64_t allocated_bytes = 0;  // cumulative bytes handed out (never decreases; for the profiler)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
  virtual AllocatorStats stats() const = 0;
  virtual void reset_peak() = 0;
  // Nested high-water marks for the profiler, independent of peak/reset_peak (which callers
  // own): push_peak_window() opens a window at `current` and returns a token for the window it
  // nests in; pop_peak_window(token) returns the closed window's high-water mark and folds it
  // into the enclosing one. One window stack per allocator: meant for one profiled thread.
  virtual int64_t push_peak_window() { return 0; }
  virtual int64_t pop_peak_window(int64_t token) { return stats().peak; }
  // Return cached blocks to the system (no-op without a cache).
  virtual void empty_cache() {}
  virtual Device device() const = 0;
};

// The system-level allocation a caching allocator sits on. Returns nullptr when out of memory.
class RawAllocator {
 public:
  virtual ~RawAllocator() = default;
  virtual void* raw_alloc(size_t nbytes) = 0;
  virtual void raw_free(void* ptr) = 0;
  virtual std::string name() const = 0;
};

// Size-binned free lists (best fit by size, blocks rounded to 512 B); not split or merged,
// which keeps it obviously correct. Thread-safe.
class CachingAllocator final : public Allocator {
 public:
  CachingAllocator(RawAllocator* raw, Device device) : raw_(raw), device_(device) {}
  ~CachingAllocator() override;
  void* allocate(size_t nbytes) override;
  void deallocate(void* ptr, size_t nbytes) override;
  AllocatorStats stats() const override;
  void reset_peak() override;
  int64_t push_peak_window() override;
  int64_t pop_peak_window(int64_t token) override;
  void empty_cache() override;
  Device device() const override { return device_; }
  static size_t round_size(size_t nbytes);

 private:
  void empty_cache_locked();
  RawAllocator* raw_;
  Device device_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_blocks_;        // rounded size -> block
  std::unordered_map<void*, size_t> live_blocks_;    // block -> rounded size
  AllocatorStats stats_;
  int64_t window_peak_ = 0;  // high-water mark of the innermost peak window
};

Allocator& cpu_allocator();
// The caching allocator of CUDA device `index`; throws when CUDA is not compiled in.
Allocator& cuda_allocator(int index = 0);
Allocator& allocator_for(Device d);

}  // namespace somnus
