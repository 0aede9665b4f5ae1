// CPU kernel benchmarks (Google Benchmark). FLOP convention: matmul 2·M·N·K (DESIGN §6).
// Each family runs next to its baseline in the same binary and the same run:
//   matmul          vs a raw cblas_sgemm call on the same buffers (the cost of our dispatch)
//   add / sum / softmax  vs memcpy of the same bytes (the memory-bandwidth ceiling)
// Bytes counted: the minimum traffic (each input read once, the output written once).
// Thread count: OMP_NUM_THREADS (and OpenBLAS's own pool, set to the same count by the
// environment). bench/reference/matmul.py times PyTorch at the same sizes and threads.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstring>

#include "kernels/ops.h"
#include "tensor/random.h"

using namespace somnus;

static void set_rates(benchmark::State& st, double flops_per_iter, double bytes_per_iter) {
  if (flops_per_iter > 0)
    st.counters["FLOP/s"] = benchmark::Counter(flops_per_iter, benchmark::Counter::kIsIterationInvariantRate);
  if (bytes_per_iter > 0)
    st.counters["bytes/s"] = benchmark::Counter(bytes_per_iter, benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1024);
}

static void BM_matmul_somnus(benchmark::State& st) {
  const int64_t n = st.range(0);
  Generator g(1);
  Tensor a = randn({n, n}, g), b = randn({n, n}, g);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::matmul(a, b).data_ptr());
  set_rates(st, 2.0 * n * n * n, 0);
}

static void BM_matmul_cblas(benchmark::State& st) {
  const int64_t n = st.range(0);
  Generator g(1);
  Tensor a = randn({n, n}, g), b = randn({n, n}, g), c = Tensor::empty({n, n});
  for (auto _ : st) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n,
                0.0f, c.data<float>(), n);
    benchmark::ClobberMemory();
  }
  set_rates(st, 2.0 * n * n * n, 0);
}

// a @ b^T through a transposed view: must not copy b.
static void BM_matmul_somnus_bT(benchmark::State& st) {
  const int64_t n = st.range(0);
  Generator g(1);
  Tensor a = randn({n, n}, g), b = randn({n, n}, g);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::matmul(a, b.transpose(0, 1)).data_ptr());
  set_rates(st, 2.0 * n * n * n, 0);
}

static void BM_add_f32(benchmark::State& st) {
  const int64_t n = st.range(0);
  Generator g(1);
  Tensor a = randn({n}, g), b = randn({n}, g);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::binary(kernels::Binary::add, a, b).data_ptr());
  set_rates(st, static_cast<double>(n), 3.0 * 4 * n);
}

static void BM_add_broadcast_row(benchmark::State& st) {
  const int64_t n = st.range(0);
  Generator g(1);
  Tensor a = randn({n / 1024, 1024}, g), b = randn({1024}, g);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::binary(kernels::Binary::add, a, b).data_ptr());
  set_rates(st, static_cast<double>(n), 2.0 * 4 * n);
}

static void BM_gelu_f32(benchmark::State& st) {
  const int64_t n = st.range(0);
  Generator g(1);
  Tensor a = randn({n}, g);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::unary(kernels::Unary::gelu, a).data_ptr());
  set_rates(st, 0, 2.0 * 4 * n);
}

static void BM_sum_lastdim(benchmark::State& st) {
  const int64_t n = st.range(0);
  Generator g(1);
  Tensor a = randn({n / 1024, 1024}, g);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::reduce(kernels::Reduce::sum, a, -1).data_ptr());
  set_rates(st, 0, 4.0 * n);
}

static void BM_sum_firstdim(benchmark::State& st) {
  const int64_t n = st.range(0);
  Generator g(1);
  Tensor a = randn({n / 1024, 1024}, g);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::reduce(kernels::Reduce::sum, a, 0).data_ptr());
  set_rates(st, 0, 4.0 * n);
}

static void BM_softmax(benchmark::State& st) {
  const int64_t n = st.range(0);
  Generator g(1);
  Tensor a = randn({n / 4096, 4096}, g);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::softmax(a).data_ptr());
  set_rates(st, 0, 2.0 * 4 * n);
}

// Baseline for the bandwidth-bound ops: copying the same number of f32 (read + write).
static void BM_memcpy_baseline(benchmark::State& st) {
  const int64_t n = st.range(0);
  Tensor a = Tensor::ones({n}), c = Tensor::empty({n});
  for (auto _ : st) {
    std::memcpy(c.data_ptr(), a.data_ptr(), static_cast<size_t>(4 * n));
    benchmark::ClobberMemory();
  }
  set_rates(st, 0, 2.0 * 4 * n);
}

BENCHMARK(BM_matmul_somnus)->Arg(512)->Arg(1024)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_matmul_cblas)->Arg(512)->Arg(1024)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_matmul_somnus_bT)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
constexpr int64_t kElems = 1 << 24;  // 16M f32 = 64 MiB per tensor: well beyond the caches
BENCHMARK(BM_memcpy_baseline)->Arg(kElems)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_add_f32)->Arg(kElems)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_add_broadcast_row)->Arg(kElems)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gelu_f32)->Arg(kElems)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_sum_lastdim)->Arg(kElems)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_sum_firstdim)->Arg(kElems)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_softmax)->Arg(kElems)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
