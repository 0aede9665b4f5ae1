// bench/gpu_timer.h: the L2 flush and the delay kernel that precede each timed call.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>

#include "bench/gpu_timer.h"
#include "tensor/cuda/check.h"

namespace somnus::bench {
namespace {

// Reads n 16-byte words. The store never happens (the words' folded value would have to equal
// an improbable constant; the buffer is zero) but keeps the compiler from dropping the loads.
__global__ void __launch_bounds__(512) l2_flush_kernel(const uint4* __restrict__ p, int64_t n, unsigned* __restrict__ sink) {
  unsigned acc = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 w = p[i];
    acc += w.x ^ w.y ^ w.z ^ w.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// One thread spins on the global nanosecond timer.
__global__ void delay_kernel(unsigned long long ns) {
  unsigned long long t0 = 0, t = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

struct FlushBuffer {
  void* data = nullptr;
  long long bytes = 0;
  int blocks = 0;  // one full wave of l2_flush_kernel's 512-thread blocks
};

// One buffer per device, allocated on first use (cudaMalloc: outside the tensor allocator, so
// it never shows in the allocator's statistics) and zeroed once.
FlushBuffer& flush_buffer() {
  constexpr int kMaxDevices = 64;
  static std::mutex mu;
  static FlushBuffer per_device[kMaxDevices];
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= kMaxDevices) throw_error("gpu_timer: device index past 64");
  std::lock_guard<std::mutex> lock(mu);
  FlushBuffer& b = per_device[dev];
  if (b.data == nullptr) {
    int l2 = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    int sms = 0, per_sm = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, l2_flush_kernel, 512, 0));
    b.blocks = sms * std::max(per_sm, 1);
    b.bytes = 2LL * l2 + 16;  // + the sink word, after the words read
    CUDA_CHECK(cudaMalloc(&b.data, static_cast<size_t>(b.bytes)));
    CUDA_CHECK(cudaMemset(b.data, 0, static_cast<size_t>(b.bytes)));
  }
  return b;
}

}  // namespace

void enqueue_l2_flush() {
  const FlushBuffer& b = flush_buffer();
  const int64_t words = (b.bytes - 16) / 16;
  auto* sink = reinterpret_cast<unsigned*>(static_cast<char*>(b.data) + words * 16);
  l2_flush_kernel<<<b.blocks, 512>>>(static_cast<const uint4*>(b.data), words, sink);
  CUDA_CHECK_LAUNCH();
}

void enqueue_delay(double delay_us) {
  if (delay_us <= 0.0) return;
  delay_kernel<<<1, 1>>>(static_cast<unsigned long long>(delay_us * 1e3));
  CUDA_CHECK_LAUNCH();
}

}  // namespace somnus::bench
