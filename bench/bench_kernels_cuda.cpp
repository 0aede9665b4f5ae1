// CUDA kernel benchmarks (Google Benchmark), each with its baseline in the same binary and run:
//   matmul         TFLOP/s (2·M·N·K per call) for f32 (full precision), f32 on TF32 tensor
//                  cores, and bf16, square sizes 1024…8192; the f32 run is the others' baseline.
//   linear+gelu    the fused cuBLASLt epilogue (bias + GELU + pre_gelu in the GEMM) against
//                  the unfused path (matmul, then add, then gelu) on a GPT-2 MLP shape.
//   elementwise,   GB/s (bytes read + written per call) against a device-to-device cudaMemcpy
//   softmax,       of the same traffic, measured in the same benchmark: `vs_memcpy` is the
//   reductions,    fraction of copy bandwidth reached. Softmax is also timed against its
//   embedding      unfused composition (max, sub, exp, sum, div through separate ops).
// Timing: cudaEvents around each call on the default stream (UseManualTime), after warm-up
// calls that fill the caching allocator and cuBLASLt's heuristic cache.
// Without a device (or in a CPU-only build) every benchmark reports SkipWithError.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/ops.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

#ifdef SOMNUS_WITH_CUDA
#include <cuda_runtime.h>

#include "tensor/cuda/check.h"
#endif

using namespace somnus;
using namespace somnus::kernels;
using benchmark::Counter;

namespace {

Device gpu() { return Device::cuda(0); }

// Times one call of fn on the GPU (events on the default stream).
class GpuTimer {
 public:
#ifdef SOMNUS_WITH_CUDA
  GpuTimer() {
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~GpuTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  template <class F>
  double seconds(F&& fn) {
    CUDA_CHECK(cudaEventRecord(start_, 0));
    fn();
    CUDA_CHECK(cudaEventRecord(stop_, 0));
    CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return static_cast<double>(ms) * 1e-3;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
#else
  template <class F>
  double seconds(F&& fn) {  // unreachable: benchmarks skip without CUDA
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
#endif
};

bool skip_without_cuda(benchmark::State& state) {
  if (somnus::cuda_available()) return false;
  state.SkipWithError("no CUDA device");
  return true;
}

// The benchmark loop: warm-up, then one timed call per iteration. Returns mean seconds.
double timed_loop(benchmark::State& state, const std::function<void()>& fn) {
  GpuTimer timer;
  for (int i = 0; i < 3; ++i) timer.seconds(fn);
  double total = 0.0;
  int64_t n = 0;
  for (auto _ : state) {
    const double s = timer.seconds(fn);
    state.SetIterationTime(s);
    total += s;
    ++n;
  }
  return n > 0 ? total / static_cast<double>(n) : 0.0;
}

// Median seconds of a few calls (for baselines measured inside another benchmark).
double median_seconds(const std::function<void()>& fn, int reps = 9) {
  GpuTimer timer;
  for (int i = 0; i < 2; ++i) timer.seconds(fn);
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(timer.seconds(fn));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Bytes/s of a device-to-device copy moving `traffic` bytes (half read, half written).
double memcpy_bytes_per_second(int64_t traffic) {
  const Tensor src = Tensor::zeros({std::max<int64_t>(1, traffic / 2)}, DType::f32, gpu());
  const double s = median_seconds([&] { benchmark::DoNotOptimize(src.clone()); });
  return static_cast<double>(traffic) / s;
}

// Reports bytes/s for `traffic` bytes per call, and the fraction of memcpy bandwidth.
void report_bandwidth(benchmark::State& state, double mean_seconds, int64_t traffic) {
  state.counters["bytes/s"] = Counter(static_cast<double>(traffic), Counter::kIsIterationInvariantRate);
  if (mean_seconds > 0.0) {
    const double base = memcpy_bytes_per_second(traffic);
    state.counters["memcpy_bytes/s"] = base;
    state.counters["vs_memcpy"] = (static_cast<double>(traffic) / mean_seconds) / base;
  }
}

int64_t bytes_of(DType d) { return dtype_size(d); }

// ---------------------------------------------------------------- matmul

void set_tf32(bool on) {
#ifdef SOMNUS_WITH_CUDA
  somnus::kernels::cuda::set_allow_tf32(on);
#else
  (void)on;
#endif
}

void BM_matmul(benchmark::State& state, DType dtype, bool tf32) {
  if (skip_without_cuda(state)) return;
  const int64_t n = state.range(0);
  Generator g(1);
  const Tensor a = randn({n, n}, g, dtype, gpu()), b = randn({n, n}, g, dtype, gpu());
  set_tf32(tf32);
  timed_loop(state, [&] { benchmark::DoNotOptimize(matmul(a, b)); });
  set_tf32(false);
  state.counters["FLOP/s"] = Counter(2.0 * n * n * n, Counter::kIsIterationInvariantRate);
}

// GPT-2 small MLP up-projection: x (B·T, C) @ w (C, 4C) + bias, then gelu, keeping pre_gelu.
void BM_linear_gelu(benchmark::State& state, DType dtype, bool fused) {
  if (skip_without_cuda(state)) return;
  const int64_t M = 8192, K = 768, N = 3072;
  Generator g(2);
  const Tensor x = randn({M, K}, g, dtype, gpu());
  const Tensor w = randn({N, K}, g, dtype, gpu()).transpose(0, 1);  // stored (N, K) like a Linear
  const Tensor bias = randn({N}, g, dtype, gpu());
  auto run_fused = [&] {
    Tensor pre;
    benchmark::DoNotOptimize(matmul(x, w, bias, true, &pre));
  };
  auto run_unfused = [&] {
    const Tensor pre = binary(Binary::add, matmul(x, w), bias);
    benchmark::DoNotOptimize(unary(Unary::gelu, pre));
  };
  const double mean = fused ? timed_loop(state, run_fused) : timed_loop(state, run_unfused);
  state.counters["FLOP/s"] = Counter(2.0 * M * N * K, Counter::kIsIterationInvariantRate);
  if (fused && mean > 0.0) state.counters["speedup_vs_unfused"] = median_seconds(run_unfused) / mean;
}

// ---------------------------------------------------------------- memory-bound ops

void BM_memcpy(benchmark::State& state) {
  if (skip_without_cuda(state)) return;
  const int64_t n = state.range(0);
  const Tensor x = Tensor::zeros({n}, DType::f32, gpu());
  timed_loop(state, [&] { benchmark::DoNotOptimize(x.clone()); });
  state.counters["bytes/s"] = Counter(2.0 * n * 4, Counter::kIsIterationInvariantRate);
}

void BM_unary_gelu(benchmark::State& state, DType dtype, bool transposed) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = 8192, cols = 8192;
  Generator g(3);
  const Tensor x = transposed ? randn({cols, rows}, g, dtype, gpu()).transpose(0, 1) : randn({rows, cols}, g, dtype, gpu());
  const double mean = timed_loop(state, [&] { benchmark::DoNotOptimize(unary(Unary::gelu, x)); });
  report_bandwidth(state, mean, 2 * rows * cols * bytes_of(dtype));
}

void BM_binary_add(benchmark::State& state, DType dtype, bool bias_broadcast) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = 8192, cols = 8192;
  Generator g(4);
  const Tensor a = randn({rows, cols}, g, dtype, gpu());
  const Tensor b = bias_broadcast ? randn({cols}, g, dtype, gpu()) : randn({rows, cols}, g, dtype, gpu());
  const double mean = timed_loop(state, [&] { benchmark::DoNotOptimize(binary(Binary::add, a, b)); });
  const int64_t traffic = (bias_broadcast ? 2 * rows * cols + cols : 3 * rows * cols) * bytes_of(dtype);
  report_bandwidth(state, mean, traffic);
}

void BM_softmax(benchmark::State& state, DType dtype, bool log) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = state.range(0), n = state.range(1);
  Generator g(5);
  const Tensor x = randn({rows, n}, g, dtype, gpu());
  const double mean = timed_loop(state, [&] { benchmark::DoNotOptimize(log ? log_softmax(x) : softmax(x)); });
  report_bandwidth(state, mean, 2 * rows * n * bytes_of(dtype));
  if (!log && mean > 0.0) {
    // The unfused composition: max, sub, exp, sum, div as separate ops.
    const double unfused = median_seconds([&] {
      const Tensor m = reduce(Reduce::max, x, -1, true);
      const Tensor e = unary(Unary::exp, binary(Binary::sub, x, m));
      benchmark::DoNotOptimize(binary(Binary::div, e, reduce(Reduce::sum, e, -1, true)));
    });
    state.counters["speedup_vs_unfused"] = unfused / mean;
  }
}

void BM_softmax_backward(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = state.range(0), n = state.range(1);
  Generator g(6);
  const Tensor y = softmax(randn({rows, n}, g, dtype, gpu()));
  const Tensor dy = randn({rows, n}, g, dtype, gpu());
  const double mean = timed_loop(state, [&] { benchmark::DoNotOptimize(softmax_backward(y, dy)); });
  report_bandwidth(state, mean, 3 * rows * n * bytes_of(dtype));
}

// dim: 1 (last, rows), 0 (columns), -2: everything (reduce_all).
void BM_reduce_sum(benchmark::State& state, DType dtype, int dim) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = 8192, cols = 8192;
  Generator g(7);
  const Tensor x = randn({rows, cols}, g, dtype, gpu());
  const double mean = timed_loop(state, [&] {
    benchmark::DoNotOptimize(dim == -2 ? reduce_all(Reduce::sum, x) : reduce(Reduce::sum, x, dim));
  });
  report_bandwidth(state, mean, rows * cols * bytes_of(dtype));
}

void BM_argmax(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = 2048, vocab = 50304;
  Generator g(8);
  const Tensor x = randn({rows, vocab}, g, dtype, gpu());
  const double mean = timed_loop(state, [&] { benchmark::DoNotOptimize(argmax(x, -1)); });
  report_bandwidth(state, mean, rows * vocab * bytes_of(dtype));
}

void BM_embedding(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t V = 50304, C = 768, N = 8192;
  Generator g(9);
  const Tensor w = randn({V, C}, g, dtype, gpu());
  const Tensor ids = randint(0, V, {N}, g, DType::i64, gpu());
  const double mean = timed_loop(state, [&] { benchmark::DoNotOptimize(embedding(w, ids)); });
  report_bandwidth(state, mean, 2 * N * C * bytes_of(dtype) + N * 8);
}

void BM_embedding_backward(benchmark::State& state, DType dtype, bool deterministic) {
  if (skip_without_cuda(state)) return;
  const int64_t V = 50304, C = 768, N = 8192;
  Generator g(10);
  const Tensor dout = randn({N, C}, g, dtype, gpu());
  const Tensor ids = randint(0, V, {N}, g, DType::i64, gpu());
  const double mean =
      timed_loop(state, [&] { benchmark::DoNotOptimize(embedding_backward(dout, ids, V, deterministic)); });
  // dout read, touched rows written, plus zero-filling the (V, C) gradient.
  report_bandwidth(state, mean, 2 * N * C * bytes_of(dtype) + V * C * bytes_of(dtype));
}

void register_all() {
  using benchmark::RegisterBenchmark;
  auto manual = [](benchmark::internal::Benchmark* b) {
    return b->UseManualTime()->Unit(benchmark::kMicrosecond);
  };
  for (int64_t n : {1024, 2048, 4096, 8192}) {
    manual(RegisterBenchmark("matmul/f32", BM_matmul, DType::f32, false)->Arg(n));
    manual(RegisterBenchmark("matmul/f32_tf32", BM_matmul, DType::f32, true)->Arg(n));
    manual(RegisterBenchmark("matmul/bf16", BM_matmul, DType::bf16, false)->Arg(n));
  }
  for (DType d : {DType::bf16, DType::f32}) {
    const std::string t = dtype_name(d);
    manual(RegisterBenchmark(("linear_gelu_fused/" + t).c_str(), BM_linear_gelu, d, true));
    manual(RegisterBenchmark(("linear_gelu_unfused/" + t).c_str(), BM_linear_gelu, d, false));
  }
  manual(RegisterBenchmark("memcpy_d2d/f32", BM_memcpy)->Arg(int64_t{1} << 26));
  for (DType d : {DType::f32, DType::bf16}) {
    const std::string t = dtype_name(d);
    manual(RegisterBenchmark(("gelu/" + t + "/8192x8192").c_str(), BM_unary_gelu, d, false));
    manual(RegisterBenchmark(("gelu_transposed_in/" + t + "/8192x8192").c_str(), BM_unary_gelu, d, true));
    manual(RegisterBenchmark(("add/" + t + "/8192x8192").c_str(), BM_binary_add, d, false));
    manual(RegisterBenchmark(("add_bias_broadcast/" + t + "/8192x8192").c_str(), BM_binary_add, d, true));
    for (bool log : {false, true}) {
      auto* b = manual(RegisterBenchmark(((log ? "log_softmax/" : "softmax/") + t).c_str(), BM_softmax, d, log));
      b->Args({16384, 1024})->Args({4096, 8192})->Args({2048, 50304});
    }
    manual(RegisterBenchmark(("softmax_backward/" + t).c_str(), BM_softmax_backward, d))
        ->Args({16384, 1024})
        ->Args({2048, 50304});
    manual(RegisterBenchmark(("sum_lastdim/" + t + "/8192x8192").c_str(), BM_reduce_sum, d, 1));
    manual(RegisterBenchmark(("sum_dim0/" + t + "/8192x8192").c_str(), BM_reduce_sum, d, 0));
    manual(RegisterBenchmark(("sum_all/" + t + "/8192x8192").c_str(), BM_reduce_sum, d, -2));
    manual(RegisterBenchmark(("argmax/" + t + "/2048x50304").c_str(), BM_argmax, d));
    manual(RegisterBenchmark(("embedding/" + t + "/V50304_C768_N8192").c_str(), BM_embedding, d));
    manual(RegisterBenchmark(("embedding_backward_deterministic/" + t).c_str(), BM_embedding_backward, d, true));
    manual(RegisterBenchmark(("embedding_backward_atomic/" + t).c_str(), BM_embedding_backward, d, false));
  }
}

void add_device_context() {
#ifdef SOMNUS_WITH_CUDA
  if (!somnus::cuda_available()) {
    benchmark::AddCustomContext("cuda_device", "none");
    return;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    benchmark::AddCustomContext("cuda_device", prop.name);
    benchmark::AddCustomContext("cuda_sm", std::to_string(prop.major) + std::to_string(prop.minor));
  }
#else
  benchmark::AddCustomContext("cuda_device", "none (CPU-only build)");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  add_device_context();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
