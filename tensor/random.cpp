#include "tensor/random.h"

#include <cmath>

#include "tensor/cuda/backend.h"
#include "tensor/dispatch.h"
#include "tensor/format.h"
#include "tensor/philox.h"

namespace somnus {

Generator& default_generator() {
  static Generator g(0);
  return g;
}

void manual_seed(uint64_t seed) {
  default_generator() = Generator(seed);
}

template <class Sample>
static void fill_cpu(const Tensor& t, Sample sample) {
  visit_dtype(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = t.data<T>();
    const int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(static_cast<compute_t<T>>(sample(static_cast<uint64_t>(i))));
  });
}

Tensor rand(const Shape& shape, Generator& gen, DType dtype, Device device, double low, double high) {
  SOMNUS_CHECK(is_floating(dtype), "rand: expected a floating dtype, got {}", dtype_name(dtype));
  SOMNUS_CHECK(low < high, "rand: empty range [{}, {})", low, high);
  Tensor t = Tensor::empty(shape, dtype, device);
  const uint64_t seed = gen.seed, offset = gen.advance(static_cast<uint64_t>(t.numel()));
  if (device.is_cuda()) {
    cuda::fill_uniform(t, seed, offset, low, high);
  } else {
    // uniform_at is in (0, 1]; 1 - u maps it to [0, 1).
    fill_cpu(t, [&](uint64_t i) { return low + (high - low) * (1.0 - philox::uniform_at(seed, offset, i)); });
  }
  return t;
}

Tensor randn(const Shape& shape, Generator& gen, DType dtype, Device device, double mean, double std) {
  SOMNUS_CHECK(is_floating(dtype), "randn: expected a floating dtype, got {}", dtype_name(dtype));
  Tensor t = Tensor::empty(shape, dtype, device);
  const uint64_t seed = gen.seed, offset = gen.advance(static_cast<uint64_t>(t.numel()));
  if (device.is_cuda()) {
    cuda::fill_normal(t, seed, offset, mean, std);
  } else {
    fill_cpu(t, [&](uint64_t i) { return mean + std * static_cast<double>(philox::normal_at(seed, offset, i)); });
  }
  return t;
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& gen, DType dtype, Device device) {
  SOMNUS_CHECK(low < high, "randint: empty range [{}, {})", low, high);
  SOMNUS_CHECK(is_integral(dtype), "randint: expected an integer dtype, got {}", dtype_name(dtype));
  Tensor t = Tensor::empty(shape, dtype, device);
  const uint64_t seed = gen.seed, offset = gen.advance(static_cast<uint64_t>(t.numel()));
  if (device.is_cuda()) {
    cuda::fill_randint(t, seed, offset, low, high);
  } else {
    const uint64_t range = static_cast<uint64_t>(high - low);
    fill_cpu(t, [&](uint64_t i) {
      const philox::U4 r = philox::philox4x32_10(offset + i / 4, 0, seed);
      return static_cast<double>(low + static_cast<int64_t>(philox::lane(r, static_cast<int>(i % 4)) % range));
    });
  }
  return t;
}

}  // namespace somnus
