// Timing events and NVTX ranges for the profiler (see tensor/cuda/profile.h). Events are
// created once and reused across profiling sessions: cudaEventCreate is far costlier than
// cudaEventRecord, and a profiled step records two per op.
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include <mutex>
#include <vector>

#include "tensor/cuda/check.h"
#include "tensor/cuda/profile.h"

namespace somnus::cuda {

namespace {
struct EventPool {
  std::vector<cudaEvent_t> events;
  size_t used = 0;
};
std::mutex g_mu;
std::vector<EventPool>& pools() {
  static auto* p = new std::vector<EventPool>();  // leaked: outlives static destructors
  return *p;
}
}  // namespace

int profile_event_record(int device) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto& ps = pools();
  if (ps.size() <= static_cast<size_t>(device)) ps.resize(device + 1);
  EventPool& pool = ps[device];
  CUDA_CHECK(cudaSetDevice(device));
  if (pool.used == pool.events.size()) {
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreate(&e));
    pool.events.push_back(e);
  }
  const int handle = static_cast<int>(pool.used++);
  CUDA_CHECK(cudaEventRecord(pool.events[handle], /*stream=*/0));
  return handle;
}

float profile_event_elapsed_ms(int device, int from, int to) {
  cudaEvent_t a, b;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    a = pools().at(device).events.at(from);
    b = pools().at(device).events.at(to);
  }
  CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  return ms;
}

void profile_events_clear() {
  std::lock_guard<std::mutex> lock(g_mu);
  for (auto& p : pools()) p.used = 0;
}

void nvtx_push(const char* name) { nvtxRangePushA(name); }
void nvtx_pop() { nvtxRangePop(); }

}  // namespace somnus::cuda
