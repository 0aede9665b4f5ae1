// CUDA fused lm-head losses and the GPU sampler vs their baselines, in the same binary/run
// (run by tools/gpu_check.sh). Shapes of issue 5: BT = 8192, H = 4096, V = 128256; inputs
// bf16 (the CUDA loss kernels take bf16 GEMM operands with f32 logits chunks; the previous
// path, SOMNUS_LOSS_CUDA=f32, copies h and W to f32 first — 2 GB for W, counted in its peak —
// and runs as the extra row kl_fused_f32path). Without a device every benchmark calls
// SkipWithError("no CUDA device").
//   fused   kernels::linear_* (loss + dh + dW in one chunked pass)
//   unfused the autograd composition: matmul + log_softmax + the formula, then backward
//   peak_MB cuda_allocator() peak above the live bytes before the iteration (reset_peak()).
//   sampling: unfiltered temperature sampling (no sort) vs the same rows with top_p = 0.9999,
//   which sorts every row (the sort-everything baseline); B = 64, V = 128256. top-k (50, 1000)
//   with top_p = 0.9 through the radix-select prefilter vs the same draw through the full
//   sort (SOMNUS_SAMPLING_PREFILTER=0).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

#include <algorithm>
#include <vector>

#include "autograd/functions.h"
#include "autograd/losses.h"
#include "kernels/sampling.h"
#include "tensor/allocator.h"
#include "tensor/random.h"

using namespace somnus;

namespace {

constexpr int64_t kN = 8192, kH = 4096, kV = 128256;

struct Inputs {
  Tensor h, W, ht, Wt, targets, old_lp, ref_lp, adv;
};

Inputs& inputs() {
  static Inputs in = [] {
    Generator g(7);
    Inputs x;
    const Device d = Device::cuda(0);
    x.h = randn({kN, kH}, g, DType::bf16, d).set_requires_grad(true);
    x.W = randn({kV, kH}, g, DType::bf16, d, 0.0, 0.02).set_requires_grad(true);
    x.ht = randn({kN, kH}, g, DType::bf16, d);
    x.Wt = randn({kV, kH}, g, DType::bf16, d, 0.0, 0.02);
    x.targets = randint(0, kV, {kN}, g, DType::i64, d);
    x.old_lp = randn({16, kN / 16}, g, DType::f32, d, -11.0, 0.2);
    x.ref_lp = randn({16, kN / 16}, g, DType::f32, d, -11.0, 0.2);
    x.adv = randn({16}, g, DType::f32, d);
    return x;
  }();
  return in;
}

template <class F>
void run(benchmark::State& st, double flops, F&& fn) {
  if (!cuda_available()) {
    st.SkipWithError("no CUDA device");
    return;
  }
  Inputs& in = inputs();
  Allocator& a = cuda_allocator();
  int64_t peak = 0;
  // One untimed call first (cuBLASLt heuristics, the allocator's first cudaMallocs): at
  // ~100 ms per call Google Benchmark times only one or two iterations, so a cold first call
  // would be most of the figure (2026-11-26, H100: CE unfused read 200 ms cold vs 71 ms warm).
  // The slow f32 path (SOMNUS_LOSS_CUDA=f32, ~2 s per call, a fixed 2 iterations) skips it.
  const char* path = std::getenv("SOMNUS_LOSS_CUDA");
  if (path == nullptr || std::string(path) != "f32") {
    in.h.set_grad(Tensor());
    in.W.set_grad(Tensor());
    benchmark::DoNotOptimize(fn(in));
  }
  for (auto _ : st) {
    in.h.set_grad(Tensor());
    in.W.set_grad(Tensor());
    const int64_t before = a.stats().current;
    a.reset_peak();
    const double l = fn(in);  // .item() synchronises
    peak = std::max(peak, a.stats().peak - before);
    benchmark::DoNotOptimize(l);
  }
  st.counters["peak_MB"] = static_cast<double>(peak) / (1024.0 * 1024.0);
  st.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

const double kGemm3 = 6.0 * kN * kV * kH;

void BM_ce_fused_cuda(benchmark::State& st) {
  run(st, kGemm3, [](Inputs& in) {
    Tensor l = linear_cross_entropy(in.h, in.W, in.targets);
    backward(l);
    return l.item();
  });
}
void BM_ce_unfused_cuda(benchmark::State& st) {
  run(st, kGemm3, [](Inputs& in) {
    Tensor lsm = log_softmax(to(matmul(in.h, transpose(in.W, 0, 1)), DType::f32));
    Tensor l = neg(mean(gather(lsm, 1, in.targets.view({kN, 1}))));
    backward(l);
    return l.item();
  });
}
void BM_kl_fused_cuda(benchmark::State& st) {
  run(st, kGemm3 + 2.0 * kN * kV * kH, [](Inputs& in) {
    LinearJSDOptions o;
    o.beta = 0.0;
    Tensor l = linear_jsd(in.h, in.W, in.ht, in.Wt, o);
    backward(l);
    return l.item();
  });
}
void BM_kl_unfused_cuda(benchmark::State& st) {
  run(st, kGemm3 + 2.0 * kN * kV * kH, [](Inputs& in) {
    Tensor lps = log_softmax(to(matmul(in.h, transpose(in.W, 0, 1)), DType::f32));
    Tensor lpt;
    {
      NoGradGuard ng;
      lpt = log_softmax(to(matmul(in.ht, transpose(in.Wt, 0, 1)), DType::f32));
    }
    Tensor l = sum(exp(lpt) * (lpt - lps)) / static_cast<double>(kN);
    backward(l);
    return l.item();
  });
}
// The same through the previous f32-copy path (SOMNUS_LOSS_CUDA=f32): the old baseline.
// The same with 256 MB logits chunks (R = 512 rows instead of the default 1024): twice as
// many passes of the memory-bound dW += Gᵀh accumulation (2.1 GB f32 read and written per
// row chunk), for 0.5 GB less of chunk buffers.
void BM_kl_fused_chunk256MB_cuda(benchmark::State& st) {
  setenv("SOMNUS_LOSS_CUDA_CHUNK_MB", "256", 1);
  BM_kl_fused_cuda(st);
  unsetenv("SOMNUS_LOSS_CUDA_CHUNK_MB");
}
void BM_kl_fused_f32path_cuda(benchmark::State& st) {
  setenv("SOMNUS_LOSS_CUDA", "f32", 1);
  BM_kl_fused_cuda(st);
  unsetenv("SOMNUS_LOSS_CUDA");
}
void BM_ppo_fused_cuda(benchmark::State& st) {
  run(st, kGemm3, [](Inputs& in) {
    LinearPPOOptions o;
    o.kl_beta = 0.04;
    Tensor l = linear_ppo_loss(view(in.h, {16, kN / 16, kH}), in.W, in.targets.view({16, kN / 16}), in.old_lp,
                               in.ref_lp, in.adv, Tensor(), o)
                   .loss;
    backward(l);
    return l.item();
  });
}
// Two-level chunking (rows × vocab chunks of 16384, online logsumexp; the logits recomputed
// for the gradient: 8·N·V·H FLOPs). Default path: R = 4096 rows of (R, 16384) f32 = 256 MB
// per chunk (the whole-vocab run has R = 512); the f32 path: 256 rows instead of 32, ≤ 16 MB.
void BM_ppo_fused_vocab_chunks_cuda(benchmark::State& st) {
  run(st, kGemm3 + 2.0 * kN * kV * kH, [](Inputs& in) {
    LinearPPOOptions o;
    o.kl_beta = 0.04;
    o.chunking.vocab_chunk = 16384;
    Tensor l = linear_ppo_loss(view(in.h, {16, kN / 16, kH}), in.W, in.targets.view({16, kN / 16}), in.old_lp,
                               in.ref_lp, in.adv, Tensor(), o)
                   .loss;
    backward(l);
    return l.item();
  });
}
void BM_ppo_unfused_cuda(benchmark::State& st) {
  run(st, kGemm3, [](Inputs& in) {
    Tensor lsm = log_softmax(to(matmul(in.h, transpose(in.W, 0, 1)), DType::f32));
    Tensor lp = view(gather(lsm, 1, in.targets.view({kN, 1})), {16, kN / 16});
    Tensor ratio = exp(lp - in.old_lp);
    Tensor clipped = minimum(maximum(ratio, Tensor::scalar(0.8, DType::f32, Device::cuda(0))),
                             Tensor::scalar(1.2, DType::f32, Device::cuda(0)));
    Tensor A = in.adv.view({16, 1});
    Tensor d = in.ref_lp - lp;
    Tensor per = neg(minimum(ratio * A, clipped * A)) + (exp(d) - d - 1.0) * 0.04;
    Tensor l = mean(mean(per, 1));
    backward(l);
    return l.item();
  });
}

// 64 rows of V logits sampled at temperature 1 with top_k, top_p; prefilter = false runs the
// same draw through the full sort of every row (SOMNUS_SAMPLING_PREFILTER=0).
void sample_bench(benchmark::State& st, int64_t top_k, double top_p, bool prefilter = true) {
  if (!cuda_available()) {
    st.SkipWithError("no CUDA device");
    return;
  }
  Generator g(3);
  Tensor logits = randn({64, kV}, g, DType::f32, Device::cuda(0), 0.0, 3.0);
  SamplingOptions o;
  o.top_k = top_k;
  o.top_p = top_p;
  if (!prefilter) setenv("SOMNUS_SAMPLING_PREFILTER", "0", 1);
  for (auto _ : st) {
    ++o.step;
    benchmark::DoNotOptimize(kernels::sample_tokens(logits, o).tokens.to_vector());
  }
  unsetenv("SOMNUS_SAMPLING_PREFILTER");
  st.counters["bytes/s"] = benchmark::Counter(64.0 * kV * 4, benchmark::Counter::kIsIterationInvariantRate);
}
void BM_sample_fused_cuda(benchmark::State& st) { sample_bench(st, 0, 1.0); }
void BM_sample_sort_all_cuda(benchmark::State& st) { sample_bench(st, 0, 0.9999); }
// top-k (arg) with the radix-select prefilter (issue 5 §4), and the same draw through the full
// sort of every row: the sort-everything baseline.
void BM_sample_topk_topp_prefilter_cuda(benchmark::State& st) { sample_bench(st, st.range(0), 0.9); }
void BM_sample_topk_topp_sort_all_cuda(benchmark::State& st) { sample_bench(st, st.range(0), 0.9, false); }

}  // namespace

BENCHMARK(BM_ce_unfused_cuda)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ce_fused_cuda)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kl_unfused_cuda)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kl_fused_cuda)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kl_fused_chunk256MB_cuda)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kl_fused_f32path_cuda)->Iterations(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ppo_unfused_cuda)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ppo_fused_cuda)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ppo_fused_vocab_chunks_cuda)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_sample_sort_all_cuda)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_sample_fused_cuda)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_sample_topk_topp_sort_all_cuda)->Arg(50)->Arg(1000)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_sample_topk_topp_prefilter_cuda)->Arg(50)->Arg(1000)->Unit(benchmark::kMicrosecond)->UseRealTime();

BENCHMARK_MAIN();
