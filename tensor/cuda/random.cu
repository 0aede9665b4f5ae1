// Philox fills on the GPU: element i of a contiguous tensor takes the same counter and lane
// as on the CPU (tensor/philox.h), so CPU and CUDA draws of one seed agree.
#include <cuda_runtime.h>

#include "tensor/cuda/backend.h"
#include "tensor/cuda/check.h"
#include "tensor/dispatch.h"
#include "tensor/philox.h"
#include "tensor/tensor.h"

namespace somnus::cuda {

template <class T, class Sample>
__global__ void philox_fill_kernel(T* dst, int64_t n, Sample sample) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = static_cast<T>(static_cast<compute_t<T>>(sample(static_cast<uint64_t>(i))));
  }
}

struct UniformSample {
  uint64_t seed, offset;
  double low, high;
  __device__ double operator()(uint64_t i) const {
    return low + (high - low) * (1.0 - static_cast<double>(philox::uniform_at(seed, offset, i)));
  }
};
struct NormalSample {
  uint64_t seed, offset;
  double mean, std;
  __device__ double operator()(uint64_t i) const {
    return mean + std * static_cast<double>(philox::normal_at(seed, offset, i));
  }
};
struct RandintSample {
  uint64_t seed, offset;
  int64_t low;
  uint64_t range;
  __device__ double operator()(uint64_t i) const {
    const philox::U4 r = philox::philox4x32_10(offset + i / 4, 0, seed);
    return static_cast<double>(low + static_cast<int64_t>(philox::lane(r, static_cast<int>(i % 4)) % range));
  }
};

template <class Sample>
static void launch_fill(const Tensor& dst, Sample sample) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  CUDA_CHECK(cudaSetDevice(dst.device().index));
  visit_dtype(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    philox_fill_kernel<T, Sample><<<grid_for(n, 256), 256>>>(static_cast<T*>(dst.data_ptr()), n, sample);
    CUDA_CHECK_LAUNCH();
  });
}

void fill_uniform(const Tensor& dst, uint64_t seed, uint64_t offset, double low, double high) {
  launch_fill(dst, UniformSample{seed, offset, low, high});
}
void fill_normal(const Tensor& dst, uint64_t seed, uint64_t offset, double mean, double std) {
  launch_fill(dst, NormalSample{seed, offset, mean, std});
}
void fill_randint(const Tensor& dst, uint64_t seed, uint64_t offset, int64_t low, int64_t high) {
  launch_fill(dst, RandintSample{seed, offset, low, static_cast<uint64_t>(high - low)});
}

}  // namespace somnus::cuda
