// CUDA kernel benchmarks (Google Benchmark), each with its baseline in the same binary and run:
//   matmul         TFLOP/s (2·M·N·K per call) for f32 (full precision), f32 on TF32 tensor
//                  cores, and bf16, square sizes 1024…8192; the f32 run is the others' baseline.
//   linear+gelu    the fused cuBLASLt epilogue (bias + GELU + pre_gelu in the GEMM) against
//                  the unfused path (matmul, then add, then gelu) on a GPT-2 MLP shape.
//   elementwise,   GB/s (bytes read + written per call) against a device-to-device cudaMemcpy
//   softmax,       of the same traffic, measured in the same benchmark: `vs_memcpy` is the
//   reductions,    fraction of copy bandwidth reached. Softmax is also timed against its
//   embedding      unfused composition (max, sub, exp, sum, div through separate ops).
//                  `vs_hbm_copy`: the same rate against a 1 GiB copy (HBM bandwidth, for the
//                  decode target; hbm_copy_bytes_per_second says why).
// Timing: cudaEvents around each call on the default stream (UseManualTime), after warm-up
// calls that fill the caching allocator and cuBLASLt's heuristic cache. Each call starts from
// a cold L2 with its launches already queued (GpuTimer below; SOMNUS_BENCH_TIMING=call for
// the method of runs 1–7); `host_us` is the host's enqueue time of a call, `late` the
// fraction of calls whose enqueue outlasted the delay kernel in front of them.
// Without a device (or in a CPU-only build) every benchmark reports SkipWithError.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "kernels/ops.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

#ifdef SOMNUS_WITH_CUDA
#include <cuda_runtime.h>

#include "bench/gpu_timer.h"
#include "tensor/cuda/check.h"
#endif

using namespace somnus;
using namespace somnus::kernels;
using benchmark::Counter;

namespace {

Device gpu() { return Device::cuda(0); }

// Times one call of fn on the GPU: events on the default stream around the call. By default
// ("device" timing, since 2026-11-27 late) the call starts from a cold L2 and a busy GPU, as
// bench/gpu_timer.h says: an L2 flush and a delay kernel are enqueued before the start event,
// and the delay is 2 × the host's enqueue time of the previous call + 10 µs (at most 2 ms),
// so the events bracket the device's work alone. A call whose host enqueue outlasted the delay
// before it counts as `late` (the GPU may have waited on the host inside the timed region).
// SOMNUS_BENCH_TIMING=call times as runs 1–7 did: nothing before the start event, so a row
// includes the host's enqueue time and whatever of its inputs L2 still held.
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
    const double delay = delay_us_;
    if (device_timing()) {
      somnus::bench::enqueue_l2_flush();
      somnus::bench::enqueue_delay(delay);
    }
    CUDA_CHECK(cudaEventRecord(start_, 0));
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double host_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    CUDA_CHECK(cudaEventRecord(stop_, 0));
    CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    ++calls_;
    host_us_sum_ += host_us;
    if (device_timing() && host_us > delay) ++late_;
    delay_us_ = std::clamp(2.0 * host_us + 10.0, 10.0, 2000.0);
    return static_cast<double>(ms) * 1e-3;
  }
  static bool device_timing() {
    static const bool on = [] {
      const char* e = std::getenv("SOMNUS_BENCH_TIMING");
      return e == nullptr || std::string(e) != "call";
    }();
    return on;
  }
  void reset_stats() { calls_ = late_ = 0, host_us_sum_ = 0.0; }
  // The mean host time of a call (enqueueing its launches), µs, and the fraction of calls that
  // were late, since reset_stats.
  double host_us() const { return calls_ > 0 ? host_us_sum_ / static_cast<double>(calls_) : 0.0; }
  double late_fraction() const { return calls_ > 0 ? static_cast<double>(late_) / static_cast<double>(calls_) : 0.0; }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  double delay_us_ = 200.0, host_us_sum_ = 0.0;
  int64_t calls_ = 0, late_ = 0;
#else
  template <class F>
  double seconds(F&& fn) {  // unreachable: benchmarks skip without CUDA
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  static bool device_timing() { return false; }
  void reset_stats() {}
  double host_us() const { return 0.0; }
  double late_fraction() const { return 0.0; }
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
  timer.reset_stats();
  double total = 0.0;
  int64_t n = 0;
  for (auto _ : state) {
    const double s = timer.seconds(fn);
    state.SetIterationTime(s);
    total += s;
    ++n;
  }
  state.counters["host_us"] = timer.host_us();
  if (GpuTimer::device_timing()) state.counters["late"] = timer.late_fraction();
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

// Bytes/s of a device-to-device copy moving `traffic` bytes (half read, half written): a copy
// of traffic / 2 bytes, i.e. traffic / 8 f32 elements. (Until 2026-11-26 this copied
// traffic / 2 elements, 4× the bytes it counted, so vs_memcpy read 4× too high.)
double memcpy_bytes_per_second(int64_t traffic) {
  const Tensor src = Tensor::zeros({std::max<int64_t>(1, traffic / 8)}, DType::f32, gpu());
  const double s = median_seconds([&] { benchmark::DoNotOptimize(src.clone()); });
  return static_cast<double>(traffic) / s;
}

// Bytes/s of a copy far larger than L2 (1 GiB of traffic; H100 and H200 have 50 MB of L2):
// the HBM bandwidth a kernel can reach, measured once per process. The same-traffic copy
// above is the baseline DESIGN §6 asks for, but below ~2× L2 its writes can stay in L2 as
// dirty lines, written back only during the next call's L2 flush, outside the timed events;
// it can then read faster than HBM and understate a read-mostly kernel such as the decode at
// S 1024 (there the copy moves 16.8 MB each way). Both are reported.
double hbm_copy_bytes_per_second() {
  static const double rate = memcpy_bytes_per_second(int64_t{1} << 30);
  return rate;
}

// Reports bytes/s for `traffic` bytes per call, and the fraction of the bandwidth of a copy
// of the same traffic (vs_memcpy) and of a copy far larger than L2 (vs_hbm_copy).
void report_bandwidth(benchmark::State& state, double mean_seconds, int64_t traffic) {
  state.counters["bytes/s"] = Counter(static_cast<double>(traffic), Counter::kIsIterationInvariantRate);
  if (mean_seconds > 0.0) {
    const double base = memcpy_bytes_per_second(traffic), hbm = hbm_copy_bytes_per_second();
    const double rate = static_cast<double>(traffic) / mean_seconds;
    state.counters["memcpy_bytes/s"] = base;
    state.counters["vs_memcpy"] = rate / base;
    state.counters["hbm_copy_bytes/s"] = hbm;
    state.counters["vs_hbm_copy"] = rate / hbm;
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

// One version everywhere (SOMNUS_REDUCE = v1: the previous kernels; v2: the new ones) beside the
// default rows above (v2's rows and whole-tensor kernels, v1's columns).
void BM_reduce_sum_version(benchmark::State& state, DType dtype, int dim, const char* version) {
  setenv("SOMNUS_REDUCE", version, 1);
  BM_reduce_sum(state, dtype, dim);
  unsetenv("SOMNUS_REDUCE");
}

// The norm backward's partial sums (ops.cpp norm_backward): planes (1: RMSNorm's dw; 2:
// LayerNorm's dw and db, one buffer since 2026-11-27) × 512 chunks × 4096 f32, over the chunks,
// with the default kernels (version "") or SOMNUS_REDUCE=v1 / v2.
void BM_reduce_sum_norm_partials(benchmark::State& state, const char* version, int64_t planes) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = 512, cols = 4096;
  Generator g(7);
  const Tensor x = randn({planes, rows, cols}, g, DType::f32, gpu());
  if (*version != '\0') setenv("SOMNUS_REDUCE", version, 1);
  const double mean = timed_loop(state, [&] { benchmark::DoNotOptimize(reduce(Reduce::sum, x, 1)); });
  unsetenv("SOMNUS_REDUCE");
  report_bandwidth(state, mean, planes * rows * cols * 4);
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
    manual(RegisterBenchmark(("sum_lastdim_v1/" + t + "/8192x8192").c_str(), BM_reduce_sum_version, d, 1, "v1"));
    manual(RegisterBenchmark(("sum_dim0_v1/" + t + "/8192x8192").c_str(), BM_reduce_sum_version, d, 0, "v1"));
    manual(RegisterBenchmark(("sum_all_v1/" + t + "/8192x8192").c_str(), BM_reduce_sum_version, d, -2, "v1"));
    manual(RegisterBenchmark(("sum_dim0_v2/" + t + "/8192x8192").c_str(), BM_reduce_sum_version, d, 0, "v2"));
    if (d == DType::f32) {
      for (const char* v : {"", "v1", "v2"}) {
        const std::string suffix = *v ? std::string("_") + v : "";
        manual(RegisterBenchmark(("sum_dim0" + suffix + "/f32/512x4096").c_str(), BM_reduce_sum_norm_partials, v,
                                 int64_t{1}));
        manual(RegisterBenchmark(("sum_dim1" + suffix + "/f32/2x512x4096").c_str(), BM_reduce_sum_norm_partials, v,
                                 int64_t{2}));
      }
    }
    manual(RegisterBenchmark(("argmax/" + t + "/2048x50304").c_str(), BM_argmax, d));
    manual(RegisterBenchmark(("embedding/" + t + "/V50304_C768_N8192").c_str(), BM_embedding, d));
    manual(RegisterBenchmark(("embedding_backward_deterministic/" + t).c_str(), BM_embedding_backward, d, true));
    manual(RegisterBenchmark(("embedding_backward_atomic/" + t).c_str(), BM_embedding_backward, d, false));
  }
}

// ---------------------------------------------------------------- attention (issue 4 §1)
// Fused flash attention (kernels::attention_fwd/bwd, bf16) at B·T = 16k tokens, H·D = 2048
// (MHA), T ∈ {512 … 8k}, D ∈ {64, 128}, causal or not. FLOPs (DESIGN §6): fwd 4·B·H·T²·D,
// halved when causal; bwd 2.5× fwd; fwd+bwd 3.5× fwd. Counter speedup_vs_unfused: the same
// pass through the unfused composition (cuBLASLt batched GEMMs, a mask, the softmax kernel;
// the (B·H, T, T) scores materialised), median of 3 calls in the same run.
struct AttnBench {
  int64_t B, H, T, D;
  bool causal;
  Tensor q, k, v, dout, mask;  // mask (T, T): non-zero where visible
};

AttnBench make_attn_bench(int64_t T, int64_t D, bool causal) {
  AttnBench a{std::max<int64_t>(1, 16384 / T), 2048 / D, T, D, causal, {}, {}, {}, {}, {}};
  Generator g(3);
  a.q = randn({a.B, a.H, T, D}, g, DType::bf16, gpu());
  a.k = randn({a.B, a.H, T, D}, g, DType::bf16, gpu());
  a.v = randn({a.B, a.H, T, D}, g, DType::bf16, gpu());
  a.dout = randn({a.B, a.H, T, D}, g, DType::bf16, gpu());
  if (causal) {  // (i + 1) − j > 0 <=> j <= i
    const Tensor qi = Tensor::arange(1, T + 1, 1, DType::f32, gpu()).view({T, 1});
    const Tensor kj = Tensor::arange(0, T, 1, DType::f32, gpu()).view({1, T});
    a.mask = unary(Unary::relu, binary(Binary::sub, qi, kj));
  }
  return a;
}

// The unfused forward: returns P (B·H, T, T) and O (B·H, T, D).
std::pair<Tensor, Tensor> attn_unfused_fwd(const AttnBench& a) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(a.D));
  const Tensor q = a.q.view({a.B * a.H, a.T, a.D}), k = a.k.view({a.B * a.H, a.T, a.D});
  const Tensor v = a.v.view({a.B * a.H, a.T, a.D});
  Tensor s = matmul(binary(Binary::mul, q, Tensor::scalar(scale, DType::bf16, gpu())), k.transpose(1, 2));
  if (a.causal) s = where(a.mask, s, Tensor::scalar(-INFINITY, DType::bf16, gpu()));
  Tensor p = softmax(s);
  return {p, matmul(p, v)};
}

// The unfused backward from P: dV = Pᵀ dO, dP = dO Vᵀ, dS = softmax_backward, dQ, dK.
void attn_unfused_bwd(const AttnBench& a, const Tensor& p) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(a.D));
  const Tensor q = a.q.view({a.B * a.H, a.T, a.D}), k = a.k.view({a.B * a.H, a.T, a.D});
  const Tensor v = a.v.view({a.B * a.H, a.T, a.D}), g = a.dout.view({a.B * a.H, a.T, a.D});
  const Tensor dv = matmul(p.transpose(1, 2), g);
  const Tensor dp = matmul(g, v.transpose(1, 2));
  const Tensor ds = binary(Binary::mul, softmax_backward(p, dp), Tensor::scalar(scale, DType::bf16, gpu()));
  const Tensor dq = matmul(ds, k), dk = matmul(ds.transpose(1, 2), q);
  benchmark::DoNotOptimize(dv.data_ptr());
  benchmark::DoNotOptimize(dq.data_ptr());
  benchmark::DoNotOptimize(dk.data_ptr());
}

// pass: 0 fwd, 1 bwd, 2 fwd+bwd.
void BM_attention(benchmark::State& state, int pass, bool causal) {
  if (skip_without_cuda(state)) return;
  const AttnBench a = make_attn_bench(state.range(0), state.range(1), causal);
  const AttentionOutput fwd = attention_fwd(a.q, a.k, a.v, causal);
  const auto fused = [&] {
    if (pass == 1) {
      benchmark::DoNotOptimize(attention_bwd(a.q, a.k, a.v, fwd.o, fwd.lse, a.dout, causal).dq.data_ptr());
    } else {
      const AttentionOutput o = attention_fwd(a.q, a.k, a.v, causal);
      if (pass == 2) benchmark::DoNotOptimize(attention_bwd(a.q, a.k, a.v, o.o, o.lse, a.dout, causal).dq.data_ptr());
    }
  };
  const double mean = timed_loop(state, fused);
  const double f = 4.0 * a.B * a.H * static_cast<double>(a.T) * a.T * a.D * (causal ? 0.5 : 1.0);
  const double flops = pass == 0 ? f : pass == 1 ? 2.5 * f : 3.5 * f;
  state.counters["FLOP/s"] = Counter(flops, Counter::kIsIterationInvariantRate);
  state.counters["B"] = static_cast<double>(a.B);
  state.counters["H"] = static_cast<double>(a.H);
  if (mean > 0.0) {
    Tensor p_saved = pass == 1 ? attn_unfused_fwd(a).first : Tensor();
    const auto unfused = [&] {
      if (pass == 1) {
        attn_unfused_bwd(a, p_saved);
      } else {
        auto [p, o] = attn_unfused_fwd(a);
        benchmark::DoNotOptimize(o.data_ptr());
        if (pass == 2) attn_unfused_bwd(a, p);
      }
    };
    state.counters["speedup_vs_unfused"] = median_seconds(unfused, 3) / mean;
  }
}

// The forward's kernel versions (SOMNUS_ATTN_FWD = v1: plain shared loads; v2: ldmatrix, no
// cp.async pipeline; mma: v2 with cp.async double buffering, the default until 2026-11-27; v3:
// 128-row blocks, base-2 softmax (the default off sm_90a); wgmma: v3 on
// Hopper's warpgroup MMA; wgmma_pipe: wgmma with 128-key tiles and P V overlapping the next
// softmax; wgmma_ws: wgmma_pipe's consumers fed by a TMA producer warpgroup; wgmma_wspp: wgmma_ws
// with ping-pong between the consumers; wgmma_persist: wgmma_wspp on persistent blocks, the
// default on sm_90a since the H100 run of 2026-11-27) at T = 4096, beside the default in the rows
// above: the variant ladder of the forward.
void BM_attention_fwd_version(benchmark::State& state, const char* version, bool causal) {
  if (skip_without_cuda(state)) return;
  const AttnBench a = make_attn_bench(state.range(0), state.range(1), causal);
  setenv("SOMNUS_ATTN_FWD", version, 1);
#ifdef SOMNUS_WITH_CUDA
  // A version the device cannot run (v3: two resident blocks; wgmma: sm_90a) would time mma
  // under the version's name.
  const std::string runs = kernels::cuda::attention_fwd_kernel(DType::bf16, a.D, 1.0 / std::sqrt(double(a.D)));
  if (runs != version) {
    unsetenv("SOMNUS_ATTN_FWD");
    state.SkipWithError(("SOMNUS_ATTN_FWD=" + std::string(version) + " runs " + runs + " on this device").c_str());
    return;
  }
#endif
  const double mean = timed_loop(state, [&] { benchmark::DoNotOptimize(attention_fwd(a.q, a.k, a.v, causal).o.data_ptr()); });
  unsetenv("SOMNUS_ATTN_FWD");
  (void)mean;
  const double f = 4.0 * a.B * a.H * static_cast<double>(a.T) * a.T * a.D * (causal ? 0.5 : 1.0);
  state.counters["FLOP/s"] = Counter(f, Counter::kIsIterationInvariantRate);
}

// The backward's versions (SOMNUS_ATTN_BWD = v1: plain shared loads; v2: ldmatrix without the
// cp.async prefetch; mma: v2 with it, the default until 2026-11-27; simt: the first, SIMT kernels; v3: base-2 p, masks only where needed,
// ldmatrix A fragments; v4: v3 with 8-warp, 128-key dK/dV blocks; wgmma: v4's blocks on
// Hopper's warpgroup MMA; wgmma_ws: wgmma warp-specialized, TMA loads, dQ by bulk reductions,
// the default on sm_90a since 2026-11-27)
// at T = 4096, beside the default above.
void BM_attention_bwd_version(benchmark::State& state, const char* version, bool causal) {
  if (skip_without_cuda(state)) return;
  const AttnBench a = make_attn_bench(state.range(0), state.range(1), causal);
  const AttentionOutput fwd = attention_fwd(a.q, a.k, a.v, causal);
  setenv("SOMNUS_ATTN_BWD", version, 1);
#ifdef SOMNUS_WITH_CUDA
  const std::string runs = kernels::cuda::attention_bwd_kernel(DType::bf16, a.D, 1.0 / std::sqrt(double(a.D)));
  if (runs != version) {  // a version the device cannot run would time another one
    unsetenv("SOMNUS_ATTN_BWD");
    state.SkipWithError(("SOMNUS_ATTN_BWD=" + std::string(version) + " runs " + runs + " on this device").c_str());
    return;
  }
#endif
  timed_loop(state, [&] {
    benchmark::DoNotOptimize(attention_bwd(a.q, a.k, a.v, fwd.o, fwd.lse, a.dout, causal).dq.data_ptr());
  });
  unsetenv("SOMNUS_ATTN_BWD");
  const double f = 4.0 * a.B * a.H * static_cast<double>(a.T) * a.T * a.D * (causal ? 0.5 : 1.0);
  state.counters["FLOP/s"] = Counter(2.5 * f, Counter::kIsIterationInvariantRate);
}

// Forward + backward with chosen versions (SOMNUS_ATTN_FWD=fwd: v3, wgmma, wgmma_pipe, wgmma_ws, wgmma_wspp or wgmma_persist,
// SOMNUS_ATTN_BWD=bwd: v3, v4, wgmma or wgmma_ws), the headline shape family: the numbers to compare
// with attention_fwd_bwd above.
void BM_attention_fwd_bwd_new(benchmark::State& state, const char* fwd, const char* bwd, bool causal) {
  if (skip_without_cuda(state)) return;
  const AttnBench a = make_attn_bench(state.range(0), state.range(1), causal);
  setenv("SOMNUS_ATTN_FWD", fwd, 1);
  setenv("SOMNUS_ATTN_BWD", bwd, 1);
#ifdef SOMNUS_WITH_CUDA
  const double sc = 1.0 / std::sqrt(double(a.D));
  if (kernels::cuda::attention_fwd_kernel(DType::bf16, a.D, sc) != fwd ||
      kernels::cuda::attention_bwd_kernel(DType::bf16, a.D, sc) != bwd) {
    unsetenv("SOMNUS_ATTN_FWD");
    unsetenv("SOMNUS_ATTN_BWD");
    state.SkipWithError((std::string("forward ") + fwd + " / backward " + bwd + " not runnable on this device").c_str());
    return;
  }
#endif
  timed_loop(state, [&] {
    const AttentionOutput o = attention_fwd(a.q, a.k, a.v, causal);
    benchmark::DoNotOptimize(attention_bwd(a.q, a.k, a.v, o.o, o.lse, a.dout, causal).dq.data_ptr());
  });
  unsetenv("SOMNUS_ATTN_FWD");
  unsetenv("SOMNUS_ATTN_BWD");
  const double f = 4.0 * a.B * a.H * static_cast<double>(a.T) * a.T * a.D * (causal ? 0.5 : 1.0);
  state.counters["FLOP/s"] = Counter(3.5 * f, Counter::kIsIterationInvariantRate);
}

// Split-K decode: 1 query token per sequence against a cache of S keys, B = 8, Hq = 32,
// Hkv = 8, D = 128, bf16. Bytes: the K and V caches read once (they dominate). Baseline:
// the device-to-device copy bandwidth of the same traffic. `s256`: the split count of the
// rule before 2026-11-26 (S / 256 in [1, 64]) instead of the backend's wave-efficiency choice
// (kernels/decode_splits.h), so the two are compared in one run. `variant`: SOMNUS_ATTN_DECODE
// for the other variants of the GQA kernel ("pipe"; "unpiped", the default until 2026-11-27;
// "pipe_wide", the default from then until 2026-11-28; "ring", the cp.async ring), "fused" for
// SOMNUS_DECODE_COMBINE=fused (on pipe_wide), or "ring_fused" for both ring and fused; "" the
// default (the ring at this shape since 2026-11-28). Each row takes the automatic split count for its own kernel's
// occupancy: on an H100 / H200, 4 splits for pipe_wide and fused (2 blocks per SM), 6 for pipe,
// unpiped and ring (3 per SM; ncu, H200, S 1024: 384 blocks for the ring), so a row compares
// kernel and split count together; the s256 row (S / 256 splits, on the default kernel)
// separates them.
void BM_attention_decode(benchmark::State& state, bool s256, const char* variant) {
  if (skip_without_cuda(state)) return;
  const int64_t B = 8, Hq = 32, Hkv = 8, D = 128, S = state.range(0);
  const int64_t splits = s256 ? std::clamp<int64_t>(S / 256, 1, 64) : 0;
  Generator g(5);
  const Tensor q = randn({B, Hq, 1, D}, g, DType::bf16, gpu());
  const Tensor k = randn({B, Hkv, S, D}, g, DType::bf16, gpu()), v = randn({B, Hkv, S, D}, g, DType::bf16, gpu());
  const std::string var = variant;
  const bool fused = var == "fused" || var == "ring_fused";
  const std::string kernel = var == "ring_fused" ? "ring" : fused ? "" : var;  // SOMNUS_ATTN_DECODE
  if (fused) setenv("SOMNUS_DECODE_COMBINE", "fused", 1);
  if (!kernel.empty()) setenv("SOMNUS_ATTN_DECODE", kernel.c_str(), 1);
  const double mean = timed_loop(state, [&] {
    benchmark::DoNotOptimize(attention_decode(q, k, v, true, 0.0, S - 1, splits).o.data_ptr());
  });
  unsetenv("SOMNUS_DECODE_COMBINE");
  unsetenv("SOMNUS_ATTN_DECODE");
  report_bandwidth(state, mean, 2 * B * Hkv * S * D * 2);
}

void register_attention() {
  for (int pass = 0; pass < 3; ++pass) {
    for (bool causal : {true, false}) {
      const std::string name = std::string("attention_") + (pass == 0 ? "fwd" : pass == 1 ? "bwd" : "fwd_bwd") +
                               (causal ? "/causal" : "/full") + "/bf16";
      auto* b = RegisterBenchmark(name.c_str(), BM_attention, pass, causal);
      for (int64_t D : {64, 128}) {
        for (int64_t T : {512, 1024, 2048, 4096, 8192}) b->Args({T, D});
      }
      b->ArgNames({"T", "D"})->UseManualTime()->Unit(benchmark::kMillisecond);
    }
  }
  for (const char* version : {"v1", "v2", "mma", "v3", "wgmma", "wgmma_pipe", "wgmma_ws", "wgmma_wspp", "wgmma_persist"}) {
    for (bool causal : {true, false}) {
      RegisterBenchmark((std::string("attention_fwd_") + version + (causal ? "/causal" : "/full") + "/bf16").c_str(),
                        BM_attention_fwd_version, version, causal)
          ->Args({4096, 64})
          ->Args({4096, 128})
          ->ArgNames({"T", "D"})
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
  for (const char* version : {"v1", "v2", "mma", "simt", "v3", "v4", "wgmma", "wgmma_ws"}) {
    RegisterBenchmark((std::string("attention_bwd_") + version + "/causal/bf16").c_str(), BM_attention_bwd_version,
                      version, true)
        ->Args({4096, 64})
        ->Args({4096, 128})
        ->ArgNames({"T", "D"})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
  // Names: attention_fwd_bwd_<bwd> with the v3 forward (as before), _wgmma_<bwd> with the Hopper one.
  for (const auto& [fwd, bwd] :
       {std::pair{"v3", "v3"}, std::pair{"v3", "v4"}, std::pair{"wgmma", "v4"}, std::pair{"wgmma", "wgmma"},
        std::pair{"wgmma_pipe", "wgmma"}, std::pair{"wgmma_ws", "wgmma"}, std::pair{"wgmma_wspp", "wgmma"},
        std::pair{"wgmma_persist", "wgmma"}, std::pair{"wgmma_persist", "wgmma_ws"}}) {
    for (bool causal : {true, false}) {
      const std::string label = std::string(fwd) == "v3" ? bwd : std::string(fwd) + "_" + bwd;
      RegisterBenchmark((std::string("attention_fwd_bwd_") + label + (causal ? "/causal/bf16" : "/full/bf16")).c_str(),
                        BM_attention_fwd_bwd_new, fwd, bwd, causal)
          ->Args({4096, 64})
          ->Args({4096, 128})
          ->ArgNames({"T", "D"})
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
  for (const char* variant : {"", "_s256", "_pipe", "_unpiped", "_pipe_wide", "_ring", "_fused", "_ring_fused"}) {
    const std::string v = variant;
    RegisterBenchmark(("attention_decode" + v + "/bf16/B8_Hq32_Hkv8_D128").c_str(), BM_attention_decode,
                      v == "_s256", v == "_s256" || v.empty() ? "" : variant + 1)
        ->Arg(1024)
        ->Arg(4096)
        ->Arg(32768)
        ->ArgName("S")
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
}
// ---------------------------------------------------------------- end attention

// ---------------------------------------------------------------- fused norms, activations, RoPE, AdamW (issue 4 §2)
// GB/s of the minimum traffic (inputs read once, outputs written once) and vs_memcpy, the
// fraction of the device-to-device copy bandwidth of the same traffic, measured in the same
// benchmark (report_bandwidth). Norm forward is also timed against the unfused composition.
// (B·T, C) = (16384, 4096): 128 MiB per bf16 tensor.

// `version`: SOMNUS_NORM_FWD for the run ("" = the default register kernel, "v1" = the previous).
void BM_norm_fwd(benchmark::State& state, DType dtype, bool layer, bool residual, const char* version) {
  if (skip_without_cuda(state)) return;
  setenv("SOMNUS_NORM_FWD", version, 1);
  const int64_t rows = 16384, C = 4096;
  Generator g(6);
  const Tensor x = randn({rows, C}, g, dtype, gpu()), r = randn({rows, C}, g, dtype, gpu());
  const Tensor w = randn({C}, g, dtype, gpu()), b = randn({C}, g, dtype, gpu());
  auto fused = [&] {
    benchmark::DoNotOptimize((layer ? layer_norm(x, residual ? r : Tensor(), w, b, 1e-5)
                                    : rms_norm(x, residual ? r : Tensor(), w, 1e-5))
                                 .y.data_ptr());
  };
  const double mean = timed_loop(state, fused);
  report_bandwidth(state, mean, (residual ? 4 : 2) * rows * C * bytes_of(dtype));
  if (!layer && mean > 0.0) {
    auto unfused = [&] {
      const Tensor h = residual ? binary(Binary::add, x, r) : x;
      const Tensor ms = reduce(Reduce::mean, unary(Unary::square, h), -1, true);
      const Tensor rs = unary(Unary::rsqrt, binary(Binary::add, ms, Tensor::scalar(1e-5, dtype, gpu())));
      benchmark::DoNotOptimize(binary(Binary::mul, binary(Binary::mul, h, rs), w).data_ptr());
    };
    state.counters["speedup_vs_unfused"] = median_seconds(unfused, 3) / mean;
  }
  unsetenv("SOMNUS_NORM_FWD");
}

// `version`: SOMNUS_NORM_BWD for the timed calls ("" the default; "pair": LayerNorm's dw/db
// accumulators side by side; "racc": dw/db in registers, 512 threads a block at C = 4096 bf16 /
// f32; kernels/cuda/norm.cu).
void BM_norm_bwd(benchmark::State& state, DType dtype, bool layer, const char* version) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = 16384, C = 4096;
  Generator g(7);
  const Tensor x = randn({rows, C}, g, dtype, gpu()), w = randn({C}, g, dtype, gpu()), b = randn({C}, g, dtype, gpu());
  const Tensor dy = randn({rows, C}, g, dtype, gpu()), dh = randn({rows, C}, g, dtype, gpu());
  const NormResult f = layer ? layer_norm(x, Tensor(), w, b, 1e-5) : rms_norm(x, Tensor(), w, 1e-5);
  if (*version != '\0') setenv("SOMNUS_NORM_BWD", version, 1);
  const double mean = timed_loop(state, [&] {
    benchmark::DoNotOptimize(norm_backward(layer, dy, dh, f.h, w, f.mean, f.rstd, layer).dh.data_ptr());
  });
  unsetenv("SOMNUS_NORM_BWD");
  report_bandwidth(state, mean, 4 * rows * C * bytes_of(dtype));  // dy, h, dh_in read; dh written
}

void BM_swiglu(benchmark::State& state, DType dtype, bool backward) {
  if (skip_without_cuda(state)) return;
  const int64_t n = int64_t{1} << 26;
  Generator g(8);
  const Tensor a = randn({n}, g, dtype, gpu()), u = randn({n}, g, dtype, gpu()), dy = randn({n}, g, dtype, gpu());
  const double mean = timed_loop(state, [&] {
    if (backward) {
      benchmark::DoNotOptimize(swiglu_backward(a, u, dy).first.data_ptr());
    } else {
      benchmark::DoNotOptimize(swiglu(a, u).data_ptr());
    }
  });
  report_bandwidth(state, mean, (backward ? 5 : 3) * n * bytes_of(dtype));
}

// (B, H, T, D) = (16, 32, 1024, 128).
void BM_rope(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  Generator g(9);
  const Tensor x = randn({16, 32, 1024, 128}, g, dtype, gpu());
  const Tensor c = randn({1024, 64}, g, dtype, gpu()), s = randn({1024, 64}, g, dtype, gpu());
  const Tensor pos = Tensor::arange(0, 1024, 1, DType::i64, gpu());
  const double mean = timed_loop(state, [&] { benchmark::DoNotOptimize(rope(x, c, s, pos).data_ptr()); });
  report_bandwidth(state, mean, 2 * x.numel() * bytes_of(dtype));
}

// The previous RoPE kernel (SOMNUS_ROPE=v1: a thread per pair, 64-bit index math per pair)
// beside the default v2 rows above.
void BM_rope_v1(benchmark::State& state, DType dtype) {
  setenv("SOMNUS_ROPE", "v1", 1);
  BM_rope(state, dtype);
  unsetenv("SOMNUS_ROPE");
}

// 100 tensors, 1M…~2M f32 each (154M parameters): 28 B/param, +2 with the bf16 copy.
void BM_adamw(benchmark::State& state, bool bf16_copy, bool stochastic) {
  if (skip_without_cuda(state)) return;
  Generator g(10);
  std::vector<Tensor> w, gr, m, v, out;
  std::vector<AdamWHyper> h;
  int64_t total = 0;
  for (int i = 0; i < 100; ++i) {
    const int64_t n = (int64_t{1} << 20) + 10007 * i;
    w.push_back(randn({n}, g, DType::f32, gpu()));
    gr.push_back(randn({n}, g, DType::f32, gpu()));
    m.push_back(Tensor::zeros({n}, DType::f32, gpu()));
    v.push_back(Tensor::zeros({n}, DType::f32, gpu()));
    if (bf16_copy) out.push_back(Tensor::zeros({n}, DType::bf16, gpu()));
    h.push_back(AdamWHyper{.lr = 1e-4, .weight_decay = 0.1});
    total += n;
  }
  const Tensor clip = Tensor::scalar(0.5, DType::f32, gpu());
  const double mean = timed_loop(state, [&] { adamw_step(w, gr, m, v, h, clip, out, stochastic, 1); });
  report_bandwidth(state, mean, total * (28 + (bf16_copy ? 2 : 0)));
}

void register_fused() {
  for (DType dt : {DType::bf16, DType::f32}) {
    const std::string d = dt == DType::bf16 ? "bf16" : "f32";
    for (bool layer : {false, true}) {
      for (bool res : {false, true}) {
        RegisterBenchmark(((layer ? "layer_norm_fwd" : "rms_norm_fwd") + std::string(res ? "_residual/" : "/") + d +
                           "/16384x4096")
                              .c_str(),
                          BM_norm_fwd, dt, layer, res, "")
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
        RegisterBenchmark(((layer ? "layer_norm_fwd_v1" : "rms_norm_fwd_v1") + std::string(res ? "_residual/" : "/") +
                           d + "/16384x4096")
                              .c_str(),
                          BM_norm_fwd, dt, layer, res, "v1")
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
      RegisterBenchmark(((layer ? "layer_norm_bwd/" : "rms_norm_bwd/") + d + "/16384x4096").c_str(), BM_norm_bwd, dt,
                        layer, "")
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
      if (layer) {
        RegisterBenchmark(("layer_norm_bwd_pair/" + d + "/16384x4096").c_str(), BM_norm_bwd, dt, layer, "pair")
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
      RegisterBenchmark(((layer ? "layer_norm_bwd_racc/" : "rms_norm_bwd_racc/") + d + "/16384x4096").c_str(),
                        BM_norm_bwd, dt, layer, "racc")
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
    for (bool bwd : {false, true}) {
      RegisterBenchmark(((bwd ? "swiglu_bwd/" : "swiglu_fwd/") + d + "/64M").c_str(), BM_swiglu, dt, bwd)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
    RegisterBenchmark(("rope/" + d + "/16x32x1024x128").c_str(), BM_rope, dt)->UseManualTime()->Unit(benchmark::kMicrosecond);
    RegisterBenchmark(("rope_v1/" + d + "/16x32x1024x128").c_str(), BM_rope_v1, dt)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
  RegisterBenchmark("adamw/f32/100_tensors_154M", BM_adamw, false, false)->UseManualTime()->Unit(benchmark::kMicrosecond);
  RegisterBenchmark("adamw/f32_master+bf16/100_tensors_154M", BM_adamw, true, false)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
  RegisterBenchmark("adamw/f32_master+bf16_sr/100_tensors_154M", BM_adamw, true, true)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}
// ---------------------------------------------------------------- end fused norms, activations, RoPE, AdamW

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
  register_attention();
  register_fused();
  add_device_context();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
