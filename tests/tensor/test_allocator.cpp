// Allocator stats, and the caching allocator's reuse and out-of-memory retry (exercised on
// CPU through a budget-limited RawAllocator; the CUDA allocator is the same class over cudaMalloc).
#include <gtest/gtest.h>

#include <cstdlib>
#include <limits>
#include <map>
#include <set>

#include "tensor/allocator.h"
#include "tensor/tensor.h"

using namespace somnus;

TEST(CpuAllocator, StatsRiseAndFall) {
  Allocator& a = cpu_allocator();
  const AllocatorStats before = a.stats();
  a.reset_peak();
  {
    Tensor x = Tensor::empty({1000}, DType::f32);  // 4000 bytes
    AllocatorStats s = a.stats();
    EXPECT_EQ(s.current - before.current, 4000);
    EXPECT_EQ(s.num_allocs - before.num_allocs, 1);
    {
      Tensor y = Tensor::empty({500}, DType::f64);  // 4000 more
      EXPECT_EQ(a.stats().current - before.current, 8000);
      Tensor view = y.transpose(0, 0);  // views allocate nothing
      EXPECT_EQ(a.stats().num_allocs - before.num_allocs, 2);
    }
    s = a.stats();
    EXPECT_EQ(s.current - before.current, 4000);
    EXPECT_GE(s.peak - before.current, 8000);
    a.reset_peak();
    EXPECT_EQ(a.stats().peak, a.stats().current);
  }
  EXPECT_EQ(a.stats().current, before.current);
  EXPECT_EQ(a.stats().num_frees - before.num_frees, 2);
}

namespace {
// malloc with a byte budget; counts calls so tests can see cache hits.
class BudgetRaw final : public RawAllocator {
 public:
  explicit BudgetRaw(size_t budget) : budget_(budget) {}
  void* raw_alloc(size_t n) override {
    ++calls;
    if (used_ + n > budget_) return nullptr;
    used_ += n;
    void* p = std::malloc(n);
    sizes_[p] = n;
    return p;
  }
  void raw_free(void* p) override {
    ++frees;
    used_ -= sizes_[p];
    sizes_.erase(p);
    std::free(p);
  }
  std::string name() const override { return "budget"; }
  int calls = 0, frees = 0;

 private:
  size_t budget_, used_ = 0;
  std::map<void*, size_t> sizes_;
};
}  // namespace

TEST(CachingAllocator, ReusesFreedBlocks) {
  BudgetRaw raw(1 << 20);
  CachingAllocator a(&raw, Device::cpu());
  void* p = a.allocate(1000);
  EXPECT_EQ(a.stats().current, 1000);
  EXPECT_EQ(a.stats().reserved, 1024);  // rounded to 512 B
  a.deallocate(p, 1000);
  EXPECT_EQ(a.stats().current, 0);
  EXPECT_EQ(a.stats().reserved, 1024);  // cached, not returned
  void* q = a.allocate(900);            // same bin: served from cache
  EXPECT_EQ(q, p);
  EXPECT_EQ(raw.calls, 1);
  a.deallocate(q, 900);
  void* big = a.allocate(4096);  // the cached 1024-B block is too small
  EXPECT_EQ(raw.calls, 2);
  a.deallocate(big, 4096);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, 0);
  EXPECT_EQ(raw.frees, 2);
  EXPECT_EQ(a.stats().num_allocs, 3);
  EXPECT_EQ(a.stats().num_frees, 3);
}

// A request so large that rounding it up to the 512-byte bin would wrap is refused; it used to
// round to 0, succeed, and take `current` below zero when freed.
TEST(CachingAllocator, HugeRequestIsRefusedNotWrapped) {
  BudgetRaw raw(1 << 20);
  CachingAllocator a(&raw, Device::cpu());
  EXPECT_THROW(a.allocate(std::numeric_limits<size_t>::max() - 3), Error);
  EXPECT_EQ(a.stats().current, 0);
  EXPECT_EQ(raw.calls, 0);
}

TEST(CachingAllocator, PeakAndResetPeak) {
  BudgetRaw raw(1 << 20);
  CachingAllocator a(&raw, Device::cpu());
  void* p = a.allocate(10000);
  void* q = a.allocate(20000);
  a.deallocate(q, 20000);
  EXPECT_EQ(a.stats().peak, 30000);
  EXPECT_EQ(a.stats().current, 10000);
  a.reset_peak();
  EXPECT_EQ(a.stats().peak, 10000);
  a.deallocate(p, 10000);
}

TEST(CachingAllocator, OutOfMemoryFreesCacheAndRetriesOnce) {
  BudgetRaw raw(8192);
  CachingAllocator a(&raw, Device::cpu());
  void* p = a.allocate(3000);  // 3072 reserved
  void* q = a.allocate(3000);  // 6144 reserved
  a.deallocate(p, 3000);       // cached
  // 4096 does not fit beside 6144 reserved, and no cached block fits: the cache is freed
  // and the retry succeeds.
  void* r = a.allocate(4096);
  EXPECT_NE(r, nullptr);
  EXPECT_EQ(raw.frees, 1);
  EXPECT_EQ(a.stats().reserved, 3072 + 4096);
  // Now nothing can make room: a clear error naming requested and in-use bytes.
  try {
    a.allocate(5000);
    FAIL() << "expected out of memory";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("out of memory allocating 5000 bytes"), std::string::npos) << m;
    EXPECT_NE(m.find("7096 bytes in use"), std::string::npos) << m;
  }
  a.deallocate(q, 3000);
  a.deallocate(r, 4096);
  EXPECT_EQ(a.stats().current, 0);
}

TEST(CachingAllocator, ForeignPointerIsIgnored) {
  BudgetRaw raw(1 << 16);
  CachingAllocator a(&raw, Device::cpu());
  int x = 0;
  a.deallocate(&x, 4);  // must not touch the stats or free anything
  EXPECT_EQ(a.stats().num_frees, 0);
  EXPECT_EQ(raw.frees, 0);
}
