#include "tensor/allocator.h"

#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

#include "tensor/cuda/backend.h"
#include "tensor/format.h"

namespace somnus {

namespace {

// CPU: 64-byte aligned blocks (SIMD loads, BLAS) from the system, cached by the same
// CachingAllocator as CUDA: large mallocs are mmap'd and page-faulted on first touch, which
// cost more than the kernels that fill them.
class AlignedMallocRaw final : public RawAllocator {
 public:
  void* raw_alloc(size_t nbytes) override { return std::aligned_alloc(64, (nbytes + 63) / 64 * 64); }
  void raw_free(void* p) override { std::free(p); }
  std::string name() const override { return "aligned_alloc"; }
};

}  // namespace

// ---------------------------------------------------------------- CachingAllocator

size_t CachingAllocator::round_size(size_t nbytes) {
  SOMNUS_CHECK(nbytes <= std::numeric_limits<size_t>::max() - 511, "allocator: a request of {} bytes cannot be met",
               nbytes);
  return nbytes < 512 ? 512 : (nbytes + 511) / 512 * 512;
}

CachingAllocator::~CachingAllocator() {
  // Process teardown: hand cached blocks back; live blocks belong to tensors still alive.
  try {
    std::lock_guard<std::mutex> lock(mu_);
    empty_cache_locked();
  } catch (...) {
  }
}

void* CachingAllocator::allocate(size_t nbytes) {
  const size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  void* p = nullptr;
  // Best fit among cached blocks, but never more than 2x the request (avoids pinning a huge
  // block for a tiny tensor).
  auto it = free_blocks_.lower_bound(size);
  if (it != free_blocks_.end() && it->first <= 2 * size) {
    p = it->second;
    live_blocks_[p] = it->first;
    free_blocks_.erase(it);
  } else {
    p = raw_->raw_alloc(size);
    if (p == nullptr) {
      empty_cache_locked();
      p = raw_->raw_alloc(size);
    }
    if (p == nullptr) {
      fail("{} allocator: out of memory allocating {} bytes ({} rounded); {} bytes in use by tensors, {} reserved",
           device_.str(), nbytes, size, stats_.current, stats_.reserved);
    }
    live_blocks_[p] = size;
    stats_.reserved += static_cast<int64_t>(size);
  }
  stats_.current += static_cast<int64_t>(nbytes);
  stats_.peak = std::max(stats_.peak, stats_.current);
  window_peak_ = std::max(window_peak_, stats_.current);
  stats_.allocated_bytes += static_cast<int64_t>(nbytes);
  ++stats_.num_allocs;
  return p;
}

void CachingAllocator::deallocate(void* ptr, size_t nbytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_blocks_.find(ptr);
  if (it == live_blocks_.end()) return;  // not ours; never free foreign memory
  free_blocks_.emplace(it->second, ptr);
  live_blocks_.erase(it);
  stats_.current -= static_cast<int64_t>(nbytes);
  ++stats_.num_frees;
}

void CachingAllocator::empty_cache_locked() {
  for (auto& [size, p] : free_blocks_) {
    raw_->raw_free(p);
    stats_.reserved -= static_cast<int64_t>(size);
  }
  free_blocks_.clear();
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  empty_cache_locked();
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak = stats_.current;
}

int64_t CachingAllocator::push_peak_window() {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t enclosing = window_peak_;
  window_peak_ = stats_.current;
  return enclosing;
}

int64_t CachingAllocator::pop_peak_window(int64_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t peak = window_peak_;
  window_peak_ = std::max(token, peak);
  return peak;
}

// ---------------------------------------------------------------- registry

Allocator& cpu_allocator() {
  // Leaked on purpose: outlives tensors with static storage duration.
  static auto* raw = new AlignedMallocRaw();
  static auto* a = new CachingAllocator(raw, Device::cpu());
  return *a;
}

Allocator& cuda_allocator(int index) {
  SOMNUS_CHECK(cuda_compiled(), "cuda_allocator: this build has no CUDA backend");
  const int n = cuda::device_count();
  SOMNUS_CHECK(index >= 0 && index < n, "cuda_allocator: device cuda:{} requested but {} CUDA device(s) visible",
               index, n);
  static std::mutex mu;
  static std::vector<std::unique_ptr<CachingAllocator>>* allocators =
      new std::vector<std::unique_ptr<CachingAllocator>>();
  std::lock_guard<std::mutex> lock(mu);
  if (allocators->size() < static_cast<size_t>(n)) allocators->resize(n);
  auto& slot = (*allocators)[index];
  if (!slot) slot = std::make_unique<CachingAllocator>(cuda::raw_allocator(index), Device::cuda(index));
  return *slot;
}

Allocator& allocator_for(Device d) { return d.is_cpu() ? cpu_allocator() : cuda_allocator(d.index); }

}  // namespace somnus
