// The profiler on CUDA (tensor/profiler.h, tensor/cuda/profile.cu): ops on a CUDA device are
// timed by event pairs recorded on the stream, with no synchronize per op, and resolved by
// profiler::records(). The check that nothing waits: a queue of large matmuls is launched
// under the profiler, and right after the last launch returns the stream must still be busy
// (a synchronize in any op's guard would have drained it); once records() has resolved the
// events, every op carries a device time, in stream order, and the stream is idle.
//
// Without a CUDA device every test calls GTEST_SKIP() with a message (ctest label `cuda`).
#include <gtest/gtest.h>

#ifdef SOMNUS_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tensor/profiler.h"
#include "tensor/random.h"

using namespace somnus;

namespace {

const char* const kNoCuda = "no CUDA device: the CUDA profiler test needs a GPU (run tools/gpu_check.sh on one)";

class CudaProfiler : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << kNoCuda;
    profiler::disable();
    profiler::reset();
  }
  void TearDown() override {
    profiler::disable();
    profiler::reset();
  }
};

TEST_F(CudaProfiler, EventsRecordedWithoutSyncPerOp) {
#ifdef SOMNUS_WITH_CUDA
  Generator gen(5);
  const int64_t n = 4096;
  const Tensor a = randn({n, n}, gen).to(Device::cuda()), b = randn({n, n}, gen).to(Device::cuda());
  constexpr int kOps = 24;  // ~3.3 TFLOP queued: milliseconds of GPU work, microseconds to launch
  std::vector<Tensor> outs;
  // Warm-up outside the profile: the cuBLASLt plan and workspace, and kOps cached output
  // blocks, so no cudaMalloc runs among the profiled launches.
  for (int i = 0; i < kOps; ++i) outs.push_back(kernels::matmul(a, b));
  outs.clear();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  bool busy_after_launch = false;
  {
    profiler::Session session;
    SOMNUS_PROFILE_SCOPE("queue");
    for (int i = 0; i < kOps; ++i) outs.push_back(kernels::matmul(a, b));
    busy_after_launch = cudaStreamQuery(nullptr) == cudaErrorNotReady;
  }
  EXPECT_TRUE(busy_after_launch) << "the stream was idle right after the launches: something synchronized";
  const std::vector<profiler::Record> recs = profiler::records();
  EXPECT_EQ(cudaStreamQuery(nullptr), cudaSuccess) << "records() resolves the events, so the work is done";
  int ops = 0;
  double prev_end = -1;
  for (const profiler::Record& r : recs) {
    if (r.kind != profiler::Kind::op) continue;
    ++ops;
    EXPECT_EQ(r.name, "matmul");
    EXPECT_EQ(r.device, Device::cuda());
    EXPECT_EQ(r.scope, "queue");
    EXPECT_GT(r.gpu_dur_us, 0.0);
    EXPECT_DOUBLE_EQ(r.time_us(), r.gpu_dur_us);
    EXPECT_DOUBLE_EQ(r.flops, 2.0 * n * n * n);
    EXPECT_GE(r.alloc_bytes, n * n * 4);
    // One stream: each op's device interval starts after the previous one ends (event times
    // have ~0.5 µs resolution).
    EXPECT_GE(r.gpu_start_us, prev_end - 1.0);
    prev_end = r.gpu_start_us + r.gpu_dur_us;
  }
  EXPECT_EQ(ops, kOps);
  // The trace draws the device times on their own track (pid 1).
  const nlohmann::json doc = nlohmann::json::parse(profiler::chrome_trace_json(recs));
  int gpu_events = 0;
  for (const auto& e : doc["traceEvents"])
    if (e["ph"] == "X" && e["pid"] == 1) ++gpu_events;
  EXPECT_EQ(gpu_events, kOps);
#else
  GTEST_SKIP() << "this build has no CUDA backend";
#endif
}

TEST_F(CudaProfiler, OffRecordsNothingOnCuda) {
  Generator gen(6);
  const Tensor a = randn({64, 64}, gen).to(Device::cuda());
  { const Tensor c = kernels::matmul(a, a); }
  EXPECT_TRUE(profiler::records().empty());
}

}  // namespace
