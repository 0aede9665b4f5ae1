// CPU kernel benchmarks (Google Benchmark). FLOP convention: matmul 2·M·N·K (DESIGN §6).
// Each family runs next to its baseline in the same binary and the same run:
//   matmul          vs a raw cblas_sgemm call on the same buffers (the cost of our dispatch)
//   add / sum / softmax  vs memcpy of the same bytes (the memory-bandwidth ceiling)
// Bytes counted: the minimum traffic (each input read once, the output written once).
// Thread count: OMP_NUM_THREADS (and OpenBLAS's own pool, set to the same count by the
// environment). bench/reference/matmul.py times PyTorch at the same sizes and threads.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cmath>
#include <cstring>
#include <vector>

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

// ---------------------------------------------------------------- attention (issue 4 §1)
// Fused flash attention (kernels::attention_fwd/bwd, the CUDA kernels' CPU twin) against the
// composed path (batched sgemm for the scores, a mask, softmax, sgemm; the (B·H, T, T)
// scores materialised) on the same f32 inputs. B·T = 2048 tokens, H = 4, D = 64 (the
// tiny-GPT shape and longer), causal. FLOPs (DESIGN §6): fwd 4·B·H·T²·D halved when causal;
// fwd+bwd 3.5× fwd. The composed backward is softmax_backward plus four GEMMs.
struct CpuAttn {
  int64_t B, H, T, D;
  Tensor q, k, v, dout, mask;
};

static CpuAttn make_cpu_attn(int64_t T) {
  CpuAttn a{2048 / T, 4, T, 64, {}, {}, {}, {}, {}};
  Generator g(3);
  a.q = randn({a.B, a.H, T, a.D}, g);
  a.k = randn({a.B, a.H, T, a.D}, g);
  a.v = randn({a.B, a.H, T, a.D}, g);
  a.dout = randn({a.B, a.H, T, a.D}, g);
  const Tensor qi = Tensor::arange(1, T + 1, 1, DType::f32).view({T, 1});
  const Tensor kj = Tensor::arange(0, T, 1, DType::f32).view({1, T});
  a.mask = kernels::unary(kernels::Unary::relu, kernels::binary(kernels::Binary::sub, qi, kj));
  return a;
}

static void BM_attention_cpu(benchmark::State& st) {
  const bool fused = st.range(1) != 0, backward = st.range(2) != 0;
  const CpuAttn a = make_cpu_attn(st.range(0));
  const double scale = 1.0 / std::sqrt(static_cast<double>(a.D));
  const Tensor q = a.q.view({a.B * a.H, a.T, a.D}), k = a.k.view({a.B * a.H, a.T, a.D});
  const Tensor v = a.v.view({a.B * a.H, a.T, a.D}), g = a.dout.view({a.B * a.H, a.T, a.D});
  const Tensor sc = Tensor::scalar(scale), ninf = Tensor::scalar(-INFINITY);
  for (auto _ : st) {
    if (fused) {
      const kernels::AttentionOutput o = kernels::attention_fwd(a.q, a.k, a.v, true);
      if (backward) {
        benchmark::DoNotOptimize(
            kernels::attention_bwd(a.q, a.k, a.v, o.o, o.lse, a.dout, true, 0.0, 0, true).dq.data_ptr());
      }
      benchmark::DoNotOptimize(o.o.data_ptr());
    } else {
      using kernels::Binary;
      const Tensor s = kernels::matmul(kernels::binary(Binary::mul, q, sc), k.transpose(1, 2));
      const Tensor p = kernels::softmax(kernels::where(a.mask, s, ninf));
      benchmark::DoNotOptimize(kernels::matmul(p, v).data_ptr());
      if (backward) {
        benchmark::DoNotOptimize(kernels::matmul(p.transpose(1, 2), g).data_ptr());  // dV
        const Tensor ds = kernels::binary(Binary::mul, kernels::softmax_backward(p, kernels::matmul(g, v.transpose(1, 2))), sc);
        benchmark::DoNotOptimize(kernels::matmul(ds, k).data_ptr());                  // dQ
        benchmark::DoNotOptimize(kernels::matmul(ds.transpose(1, 2), q).data_ptr());  // dK
      }
    }
  }
  const double f = 4.0 * a.B * a.H * static_cast<double>(a.T) * a.T * a.D * 0.5;
  set_rates(st, backward ? 3.5 * f : f, 0);
}
// Args: T, fused (1) or composed (0), with backward (1) or forward only (0).
BENCHMARK(BM_attention_cpu)
    ->ArgsProduct({{128, 512, 2048}, {1, 0}, {0, 1}})
    ->ArgNames({"T", "fused", "bwd"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// ---------------------------------------------------------------- end attention

// ---------------------------------------------------------------- fused norms, activations, RoPE, AdamW (issue 4 §2)
// GB/s against BM_memcpy_baseline above (same binary, same run); the unfused compositions they
// replace run beside them. Bytes: the minimum traffic of the fused op (inputs read once,
// outputs written once). (B·T, C) = (16384, 1024) f32: 64 MiB per tensor, beyond the caches.
namespace fused_bench {
constexpr int64_t kRows = 16384, kC = 1024;
using kernels::Binary;
using kernels::Reduce;
using kernels::Unary;

// Args: fused (1) or composed (0); residual (1) or not (0).
static void BM_rms_norm_fwd(benchmark::State& st) {
  const bool fused = st.range(0) != 0, res = st.range(1) != 0;
  Generator g(1);
  Tensor x = randn({kRows, kC}, g), r = randn({kRows, kC}, g), w = randn({kC}, g);
  for (auto _ : st) {
    if (fused) {
      benchmark::DoNotOptimize(kernels::rms_norm(x, res ? r : Tensor(), w, 1e-5).y.data_ptr());
    } else {
      const Tensor h = res ? kernels::binary(Binary::add, x, r) : x;
      const Tensor ms = kernels::reduce(Reduce::mean, kernels::unary(Unary::square, h), -1, true);
      const Tensor rs = kernels::unary(Unary::rsqrt, kernels::binary(Binary::add, ms, Tensor::scalar(1e-5)));
      benchmark::DoNotOptimize(kernels::binary(Binary::mul, kernels::binary(Binary::mul, h, rs), w).data_ptr());
    }
  }
  set_rates(st, 0, 4.0 * kRows * kC * (res ? 4 : 2));
}
static void BM_layer_norm_fwd(benchmark::State& st) {
  const bool res = st.range(0) != 0;
  Generator g(1);
  Tensor x = randn({kRows, kC}, g), r = randn({kRows, kC}, g), w = randn({kC}, g), b = randn({kC}, g);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::layer_norm(x, res ? r : Tensor(), w, b, 1e-5).y.data_ptr());
  set_rates(st, 0, 4.0 * kRows * kC * (res ? 4 : 2));
}
// Args: layer (1) or rms (0). Reads dy, h, dh_in; writes dh.
static void BM_norm_bwd(benchmark::State& st) {
  const bool layer = st.range(0) != 0;
  Generator g(1);
  Tensor x = randn({kRows, kC}, g), w = randn({kC}, g), b = randn({kC}, g), dy = randn({kRows, kC}, g);
  Tensor dh = randn({kRows, kC}, g);
  kernels::NormResult f = layer ? kernels::layer_norm(x, Tensor(), w, b, 1e-5) : kernels::rms_norm(x, Tensor(), w, 1e-5);
  for (auto _ : st) {
    benchmark::DoNotOptimize(kernels::norm_backward(layer, dy, dh, f.h, w, f.mean, f.rstd, layer).dh.data_ptr());
  }
  set_rates(st, 0, 4.0 * kRows * kC * 4);
}
// Args: fused (1) or composed silu, mul (0).
static void BM_swiglu_fwd(benchmark::State& st) {
  const bool fused = st.range(0) != 0;
  Generator g(1);
  Tensor a = randn({kRows, kC}, g), u = randn({kRows, kC}, g);
  for (auto _ : st) {
    benchmark::DoNotOptimize((fused ? kernels::swiglu(a, u)
                                    : kernels::binary(Binary::mul, kernels::unary(Unary::silu, a), u))
                                 .data_ptr());
  }
  set_rates(st, 0, 4.0 * kRows * kC * 3);
}
static void BM_swiglu_bwd(benchmark::State& st) {
  Generator g(1);
  Tensor a = randn({kRows, kC}, g), u = randn({kRows, kC}, g), dy = randn({kRows, kC}, g);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::swiglu_backward(a, u, dy).first.data_ptr());
  set_rates(st, 0, 4.0 * kRows * kC * 5);
}
// (B, H, T, D) = (8, 16, 512, 64): 16 MiB of f32.
static void BM_rope_fwd(benchmark::State& st) {
  Generator g(1);
  Tensor x = randn({8, 16, 512, 64}, g), c = randn({512, 32}, g), s = randn({512, 32}, g);
  Tensor pos = Tensor::arange(0, 512);
  for (auto _ : st) benchmark::DoNotOptimize(kernels::rope(x, c, s, pos).data_ptr());
  set_rates(st, 0, 4.0 * x.numel() * 2);
}
// 16 tensors of 1M f32 (16M parameters): reads w, g, m, v and writes w, m, v = 28 B/param.
static void BM_adamw_step(benchmark::State& st) {
  Generator g(1);
  std::vector<Tensor> w, gr, m, v;
  std::vector<kernels::AdamWHyper> h(16, kernels::AdamWHyper{.lr = 1e-4, .weight_decay = 0.1});
  for (int i = 0; i < 16; ++i) {
    w.push_back(randn({1 << 20}, g));
    gr.push_back(randn({1 << 20}, g));
    m.push_back(Tensor::zeros({1 << 20}));
    v.push_back(Tensor::zeros({1 << 20}));
  }
  for (auto _ : st) {
    kernels::adamw_step(w, gr, m, v, h);
    benchmark::ClobberMemory();
  }
  set_rates(st, 0, 28.0 * 16 * (1 << 20));
}
BENCHMARK(BM_rms_norm_fwd)->ArgsProduct({{1, 0}, {0, 1}})->ArgNames({"fused", "res"})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_layer_norm_fwd)->Arg(0)->Arg(1)->ArgName("res")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_norm_bwd)->Arg(0)->Arg(1)->ArgName("layer")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_swiglu_fwd)->Arg(1)->Arg(0)->ArgName("fused")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_swiglu_bwd)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_rope_fwd)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_adamw_step)->Unit(benchmark::kMillisecond)->UseRealTime();
}  // namespace fused_bench
// ---------------------------------------------------------------- end fused norms, activations, RoPE, AdamW

BENCHMARK_MAIN();
