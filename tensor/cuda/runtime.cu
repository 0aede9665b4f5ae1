// CUDA runtime glue for the tensor layer: device discovery, the raw cudaMalloc backend of
// the caching allocator, and host<->device copies.
#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <vector>

#include "tensor/allocator.h"
#include "tensor/cuda/backend.h"
#include "tensor/cuda/check.h"

namespace somnus::cuda {

int device_count() {
  static int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return 0;
    }
    return n;
  }();
  return count;
}

namespace {
class CudaRawAllocator final : public RawAllocator {
 public:
  explicit CudaRawAllocator(int device) : device_(device) {}
  void* raw_alloc(size_t nbytes) override {
    CUDA_CHECK(cudaSetDevice(device_));
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, nbytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return nullptr;  // the caching allocator frees its cache and retries
    }
    CUDA_CHECK(err);
    return p;
  }
  void raw_free(void* p) override {
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaFree(p));
  }
  std::string name() const override { return "cudaMalloc:" + std::to_string(device_); }

 private:
  int device_;
};
}  // namespace

RawAllocator* raw_allocator(int device) {
  static std::mutex mu;
  static auto* raws = new std::vector<std::unique_ptr<CudaRawAllocator>>();
  std::lock_guard<std::mutex> lock(mu);
  if (raws->size() <= static_cast<size_t>(device)) raws->resize(device + 1);
  auto& r = (*raws)[device];
  if (!r) r = std::make_unique<CudaRawAllocator>(device);
  return r.get();
}

void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) {
  if (nbytes == 0) return;
  cudaMemcpyKind kind;
  if (dst_dev.is_cuda() && src_dev.is_cuda()) {
    kind = cudaMemcpyDeviceToDevice;
  } else if (dst_dev.is_cuda()) {
    kind = cudaMemcpyHostToDevice;
  } else if (src_dev.is_cuda()) {
    kind = cudaMemcpyDeviceToHost;
  } else {
    kind = cudaMemcpyHostToHost;
  }
  if (dst_dev.is_cuda() && src_dev.is_cuda() && dst_dev.index != src_dev.index) {
    CUDA_CHECK(cudaMemcpyPeer(dst, dst_dev.index, src, src_dev.index, nbytes));
    return;
  }
  CUDA_CHECK(cudaSetDevice(dst_dev.is_cuda() ? dst_dev.index : src_dev.index));
  CUDA_CHECK(cudaMemcpy(dst, src, nbytes, kind));
}

void synchronize(int device) {
  CUDA_CHECK(cudaSetDevice(device));
  CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace somnus::cuda
