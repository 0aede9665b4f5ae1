// The CUDA side of the tensor layer: host <-> device round trips, strided copies and dtype
// casts on the device (bitwise equal to the CPU, bf16 rounding to nearest-even included),
// fill and factories, the Philox streams (the same Generator seed gives the same numbers on
// CPU and CUDA), the caching allocator's stats on a real device, and the out-of-memory error.
//
// Without a CUDA device every test calls GTEST_SKIP() with a message (ctest label `cuda`).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "tensor/allocator.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

using namespace somnus;

namespace {

const char* const kNoCuda = "no CUDA device: CUDA tensor tests need a GPU (run tools/gpu_check.sh on one)";

Device gpu() { return Device::cuda(0); }

constexpr DType kAllTypes[] = {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64};

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const Tensor c = t.to(Device::cpu()).contiguous();
  std::vector<uint8_t> b(static_cast<size_t>(c.nbytes()));
  if (!b.empty()) std::memcpy(b.data(), c.data_ptr(), b.size());
  return b;
}

// Fresh values of any dtype: uniform floats in [-100, 100) or integers in [-1000, 1000).
Tensor random_of(const Shape& shape, DType dtype, Generator& g) {
  return is_floating(dtype) ? rand(shape, g, dtype, Device::cpu(), -100.0, 100.0)
                            : randint(-1000, 1000, shape, g, dtype);
}

// An f32 CPU tensor holding exactly these bit patterns.
Tensor f32_from_bits(const std::vector<uint32_t>& bits) {
  Tensor t = Tensor::empty({static_cast<int64_t>(bits.size())}, DType::f32);
  std::memcpy(t.data_ptr(), bits.data(), bits.size() * 4);
  return t;
}

std::vector<uint16_t> bf16_bits(const Tensor& t) {
  const std::vector<uint8_t> b = bytes_of(t);
  std::vector<uint16_t> r(b.size() / 2);
  if (!r.empty()) std::memcpy(r.data(), b.data(), b.size());
  return r;
}

}  // namespace

TEST(CudaTensor, DeviceIsVisible) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  EXPECT_TRUE(cuda_compiled());
  EXPECT_GE(cuda_device_count(), 1);
  const Tensor t = Tensor::zeros({2, 3}, DType::f32, gpu());
  EXPECT_TRUE(t.device().is_cuda());
  EXPECT_EQ(t.device().str(), "cuda:0");
  EXPECT_EQ(Device::parse("cuda"), gpu());
}

TEST(CudaTensor, RoundTripsEveryDtype) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(201);
  const Shape shapes[] = {{}, {0}, {7}, {33, 65}, {2, 3, 4}, {100003}};
  for (DType dtype : kAllTypes) {
    for (const Shape& shape : shapes) {
      const std::string what = std::string(dtype_name(dtype)) + " " + shape_str(shape);
      const Tensor c = random_of(shape, dtype, g);
      const Tensor d = c.to(gpu());
      ASSERT_TRUE(d.device().is_cuda()) << what;
      ASSERT_EQ(d.shape(), shape) << what;
      ASSERT_EQ(d.dtype(), dtype) << what;
      const Tensor back = d.to(Device::cpu());
      EXPECT_TRUE(back.device().is_cpu()) << what;
      EXPECT_EQ(bytes_of(back), bytes_of(c)) << what << ": round trip changed bytes";
      if (shape.size() == 2) {  // a non-contiguous source moves too
        EXPECT_EQ(bytes_of(c.transpose(0, 1).to(gpu())), bytes_of(c.transpose(0, 1).contiguous())) << what;
      }
    }
  }
  // Host access reads device tensors.
  const Tensor m = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::f32, gpu());
  EXPECT_EQ(m.at({1, 2}), 6.0);
  EXPECT_EQ(m.select(0, 1).select(0, 0).item(), 4.0);
  EXPECT_EQ(m.to_vector(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  EXPECT_FALSE(m.str().empty());
}

TEST(CudaTensor, StridedCopiesMatchCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(202);
  for (DType dtype : kAllTypes) {
    const std::string what = dtype_name(dtype);
    const Tensor c = random_of({4, 5, 6}, dtype, g);
    const Tensor d = c.to(gpu());
    // Views made contiguous on the device.
    EXPECT_EQ(bytes_of(d.transpose(0, 2).contiguous()), bytes_of(c.transpose(0, 2).contiguous())) << what;
    EXPECT_EQ(bytes_of(d.permute({1, 2, 0}).contiguous()), bytes_of(c.permute({1, 2, 0}).contiguous())) << what;
    EXPECT_EQ(bytes_of(d.slice(2, 1, 6, 2).clone()), bytes_of(c.slice(2, 1, 6, 2).clone())) << what;
    EXPECT_EQ(bytes_of(d.select(1, 3).contiguous()), bytes_of(c.select(1, 3).contiguous())) << what;
    // A broadcast copy into a strided destination view touches only that view.
    const Tensor row_c = random_of({6}, dtype, g);
    const Tensor dst_c = random_of({4, 5, 6}, dtype, g);
    const Tensor dst_d = dst_c.to(gpu());
    dst_c.slice(1, 0, 5, 2).copy_(row_c);
    dst_d.slice(1, 0, 5, 2).copy_(row_c.to(gpu()));
    EXPECT_EQ(bytes_of(dst_d), bytes_of(dst_c)) << what << ": broadcast copy_ into a strided view";
    // copy_ from a CPU tensor into a device view (moved, then copied on the device).
    const Tensor src_c = random_of({5, 4}, dtype, g);
    dst_d.select(2, 1).copy_(src_c.transpose(0, 1));
    dst_c.select(2, 1).copy_(src_c.transpose(0, 1));
    EXPECT_EQ(bytes_of(dst_d), bytes_of(dst_c)) << what << ": cross-device copy_";
  }
}

TEST(CudaTensor, CastsMatchCpuBitwise) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(203);
  for (DType from : kAllTypes) {
    const Tensor c = random_of({37, 29}, from, g);
    const Tensor d = c.to(gpu());
    for (DType to : kAllTypes) {
      const std::string what = std::string(dtype_name(from)) + " -> " + dtype_name(to);
      const Tensor cast_d = d.to(to);
      EXPECT_TRUE(cast_d.device().is_cuda()) << what;
      EXPECT_EQ(bytes_of(cast_d), bytes_of(c.to(to))) << what;
      EXPECT_EQ(bytes_of(d.transpose(0, 1).to(to)), bytes_of(c.transpose(0, 1).to(to))) << what << " (strided)";
      // Device and dtype in one call.
      EXPECT_EQ(bytes_of(c.to(gpu(), to)), bytes_of(c.to(to))) << what << " (to(cuda, dtype))";
      EXPECT_EQ(bytes_of(d.to(Device::cpu(), to)), bytes_of(c.to(to))) << what << " (to(cpu, dtype))";
    }
  }
}

TEST(CudaTensor, Bf16RoundsToNearestEvenOnDevice) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const std::vector<uint32_t> in = {
      0x3f800000u,  // 1.0 exact
      0x3f807fffu,  // below half: down
      0x3f808001u,  // above half: up
      0x3f808000u,  // tie, even stays
      0x3f818000u,  // tie, odd rounds up to even
      0xbf818000u,  // negative tie, odd rounds (away) to even
      0x7f7fffffu,  // max float rounds to inf
      0xff800000u,  // -inf stays
      0x00000001u,  // smallest subnormal rounds to 0
      0x80000000u,  // -0 stays -0
  };
  const std::vector<uint16_t> expect = {0x3f80, 0x3f80, 0x3f81, 0x3f80, 0x3f82, 0xbf82, 0x7f80, 0xff80, 0x0000, 0x8000};
  const Tensor c = f32_from_bits(in);
  const Tensor on_gpu = c.to(gpu()).to(DType::bf16);
  EXPECT_EQ(bf16_bits(on_gpu), expect);
  EXPECT_EQ(bf16_bits(on_gpu), bf16_bits(c.to(DType::bf16)));
  // NaN stays NaN (quiet).
  const Tensor nan = f32_from_bits({0x7fc00000u, 0x7f800001u}).to(gpu()).to(DType::bf16);
  for (double v : nan.to_vector()) EXPECT_TRUE(std::isnan(v));
  // A random sweep: every f32 -> bf16 rounding agrees with the CPU.
  Generator g(204);
  const Tensor r = randn({1 << 16}, g, DType::f32, Device::cpu(), 0.0, 1e3);
  EXPECT_EQ(bf16_bits(r.to(gpu()).to(DType::bf16)), bf16_bits(r.to(DType::bf16)));
}

TEST(CudaTensor, FillAndFactories) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  for (DType dtype : kAllTypes) {
    const std::string what = dtype_name(dtype);
    EXPECT_EQ(Tensor::zeros({3, 4}, dtype, gpu()).to_vector(), std::vector<double>(12, 0.0)) << what;
    EXPECT_EQ(Tensor::ones({5}, dtype, gpu()).to_vector(), std::vector<double>(5, 1.0)) << what;
    EXPECT_EQ(Tensor::full({2, 2}, -3.0, dtype, gpu()).to_vector(), std::vector<double>(4, -3.0)) << what;
    EXPECT_EQ(Tensor::scalar(7.0, dtype, gpu()).item(), 7.0) << what;
    EXPECT_EQ(Tensor::arange(0, 10, 3, dtype, gpu()).to_vector(), (std::vector<double>{0, 3, 6, 9})) << what;
    // fill_ on a strided view changes exactly that view.
    const Tensor t = Tensor::zeros({4, 6}, dtype, gpu());
    t.slice(1, 1, 6, 2).fill_(2.0);
    const Tensor c = Tensor::zeros({4, 6}, dtype);
    c.slice(1, 1, 6, 2).fill_(2.0);
    EXPECT_EQ(t.to_vector(), c.to_vector()) << what;
  }
  // A large fill (many blocks of the grid-stride loop).
  const Tensor big = Tensor::full({3, 1000003}, 0.5, DType::f32, gpu());
  const std::vector<double> v = big.to_vector();
  for (size_t i = 0; i < v.size(); i += 9973) ASSERT_EQ(v[i], 0.5);
  EXPECT_EQ(v.back(), 0.5);
}

TEST(CudaTensor, PhiloxStreamsMatchCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  for (uint64_t seed : {uint64_t{0}, uint64_t{1}, uint64_t{12345}, uint64_t{0xdeadbeefcafeull}}) {
    Generator gc(seed), gg(seed);
    for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
      for (const Shape& shape : {Shape{1001}, Shape{3, 77}, Shape{}}) {
        const std::string what = "seed " + std::to_string(seed) + " " + dtype_name(dtype) + " " + shape_str(shape);
        // Uniform: the same bits (the arithmetic after the Philox words is IEEE double).
        const Tensor uc = rand(shape, gc, dtype, Device::cpu(), -2.0, 5.0);
        const Tensor ug = rand(shape, gg, dtype, gpu(), -2.0, 5.0);
        EXPECT_TRUE(ug.device().is_cuda());
        EXPECT_EQ(bytes_of(ug), bytes_of(uc)) << what << " rand";
        // Normal: Box-Muller's log/cos/sin may differ in the last bits between libm and CUDA.
        const std::vector<double> nc = randn(shape, gc, dtype, Device::cpu(), 1.0, 2.0).to_vector();
        const std::vector<double> ng = randn(shape, gg, dtype, gpu(), 1.0, 2.0).to_vector();
        ASSERT_EQ(nc.size(), ng.size()) << what;
        const double rel = dtype == DType::bf16 ? 8e-3 : 1e-6;  // bf16: one rounding step apart at most
        for (size_t i = 0; i < nc.size(); ++i) {
          ASSERT_NEAR(ng[i], nc[i], rel * std::max(1.0, std::abs(nc[i]))) << what << " randn at " << i;
        }
        // Integers: identical.
        const Tensor ic = randint(-7, 1000, shape, gc, DType::i64);
        const Tensor ig = randint(-7, 1000, shape, gg, DType::i64, gpu());
        EXPECT_EQ(bytes_of(ig), bytes_of(ic)) << what << " randint";
      }
    }
    EXPECT_EQ(gc.offset, gg.offset) << "generators advanced differently";
  }
}

TEST(CudaTensor, CachingAllocatorStats) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Allocator& a = cuda_allocator(0);
  EXPECT_EQ(&allocator_for(gpu()), &a);
  a.empty_cache();
  a.reset_peak();
  const AllocatorStats s0 = a.stats();
  EXPECT_EQ(s0.peak, s0.current);
  EXPECT_GE(s0.reserved, s0.current);  // live blocks are rounded up to 512 bytes
  const int64_t bytes = int64_t{4} << 20;  // 4 MiB, a multiple of the 512-byte rounding
  {
    const Tensor t = Tensor::empty({bytes / 4}, DType::f32, gpu());
    const AllocatorStats s1 = a.stats();
    EXPECT_EQ(s1.current - s0.current, bytes);
    EXPECT_EQ(s1.peak - s0.current, bytes);
    EXPECT_EQ(s1.reserved - s0.reserved, bytes);
    EXPECT_EQ(s1.num_allocs - s0.num_allocs, 1);
    {
      const Tensor u = Tensor::empty({bytes / 8}, DType::f64, gpu());
      EXPECT_EQ(a.stats().current - s0.current, 2 * bytes);
      const Tensor view = u.transpose(0, 0);  // views allocate nothing
      EXPECT_EQ(a.stats().num_allocs - s0.num_allocs, 2);
    }
    const AllocatorStats s2 = a.stats();
    EXPECT_EQ(s2.current - s0.current, bytes) << "current must fall when a tensor dies";
    EXPECT_EQ(s2.peak - s0.current, 2 * bytes) << "peak keeps the high-water mark";
    EXPECT_EQ(s2.reserved - s0.reserved, 2 * bytes) << "the freed block stays cached";
    EXPECT_EQ(s2.num_frees - s0.num_frees, 1);
  }
  const AllocatorStats s3 = a.stats();
  EXPECT_EQ(s3.current, s0.current);
  EXPECT_EQ(s3.reserved - s0.reserved, 2 * bytes);
  // A request of a cached size is served from the cache: reserved does not grow.
  {
    const Tensor again = Tensor::empty({bytes / 4}, DType::f32, gpu());
    EXPECT_EQ(a.stats().reserved, s3.reserved);
    EXPECT_EQ(a.stats().current - s0.current, bytes);
  }
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, s0.reserved) << "empty_cache returns every cached block";
  a.reset_peak();
  EXPECT_EQ(a.stats().peak, a.stats().current);
}

TEST(CudaTensor, OutOfMemoryNamesRequestedAndInUseBytes) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Allocator& a = cuda_allocator(0);
  const Tensor held = Tensor::empty({1 << 18}, DType::f32, gpu());  // 1 MiB in use
  const AllocatorStats before = a.stats();
  const int64_t tib = int64_t{1} << 40;
  try {
    const Tensor huge = Tensor::empty({tib / 4}, DType::f32, gpu());
    FAIL() << "a 1 TiB CUDA allocation did not throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(tib)), std::string::npos) << "message lacks the requested bytes: " << msg;
    EXPECT_NE(msg.find("in use"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(before.current)), std::string::npos)
        << "message lacks the in-use bytes (" << before.current << "): " << msg;
    EXPECT_NE(msg.find("cuda:0"), std::string::npos) << msg;
  }
  // The failure left the allocator consistent and usable.
  EXPECT_EQ(a.stats().current, before.current);
  const Tensor small = Tensor::ones({1000}, DType::f32, gpu());
  EXPECT_EQ(small.to_vector(), std::vector<double>(1000, 1.0));
}
