// Fused chunked lm-head losses vs their unfused composition (matmul + log_softmax + the
// formula through autograd, forward + backward), in the same binary and run.
//   CPU: BT = 2048, H = 256, V = 8192, f32 (issue 5). Targets: fused peak ≤ 0.25× unfused,
//        fused time ≤ 1.0× unfused.
//   CUDA: BT = 8192, H = 4096, V = 128256, bf16 — needs the CUDA kernels and a device; the
//        benchmarks skip with "no CUDA device" (or "CUDA kernel not built") otherwise.
// Each iteration is one forward + backward giving dh and dW. Counters:
//   peak_MB  the allocator's peak above what was live before the iteration (reset_peak()
//            first; measured, DESIGN §3), max over iterations;
//   FLOP/s   with 6·N·V·H per GEMM triple (+2·N·V·Ht for the JSD teacher forward);
//   proc_cpu_ms  user + system CPU time of the whole process (all threads) per iteration: the
//            work done, robust to other processes competing for the cores (wall time is not).
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <algorithm>
#include <string_view>
#include <vector>

#include "autograd/functions.h"
#include "autograd/losses.h"
#include "tensor/allocator.h"
#include "tensor/random.h"

using namespace somnus;

namespace {

constexpr int64_t kN = 2048, kH = 256, kV = 8192;

struct Inputs {
  Tensor h, W, ht, Wt, targets, mask, old_lp, ref_lp, adv, actions;
};

Inputs make_inputs(int64_t N, int64_t H, int64_t V) {
  Generator g(7);
  Inputs in;
  in.h = randn({N, H}, g).set_requires_grad(true);
  in.W = randn({V, H}, g, DType::f32, Device::cpu(), 0.0, 0.05).set_requires_grad(true);
  in.ht = randn({N, H}, g);
  in.Wt = randn({V, H}, g, DType::f32, Device::cpu(), 0.0, 0.05);
  in.targets = randint(0, V, {N}, g);
  std::vector<double> m(N, 1.0);
  for (int64_t i = 0; i < N; i += 9) m[i] = 0.0;
  in.mask = Tensor::from_vector(m, {N});
  in.actions = in.targets.view({16, N / 16});
  in.old_lp = randn({16, N / 16}, g, DType::f32, Device::cpu(), -9.0, 0.2);
  in.ref_lp = randn({16, N / 16}, g, DType::f32, Device::cpu(), -9.0, 0.2);
  in.adv = randn({16}, g);
  return in;
}

Inputs& inputs() {
  static Inputs in = make_inputs(kN, kH, kV);
  return in;
}

// Runs fn once per iteration with the grads cleared, recording the allocator peak above
// the live bytes before the call.
template <class F>
void run(benchmark::State& st, double flops, F&& fn) {
  Inputs& in = inputs();
  Allocator& a = cpu_allocator();
  int64_t peak = 0;
  const auto cpu_s = [] {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  };
  const double cpu0 = cpu_s();
  for (auto _ : st) {
    in.h.set_grad(Tensor());
    in.W.set_grad(Tensor());
    const int64_t before = a.stats().current;
    a.reset_peak();
    fn(in);
    peak = std::max(peak, a.stats().peak - before);
    benchmark::DoNotOptimize(in.W.grad().data_ptr());
  }
  st.counters["peak_MB"] = static_cast<double>(peak) / (1024.0 * 1024.0);
  st.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["proc_cpu_ms"] = 1e3 * (cpu_s() - cpu0) / static_cast<double>(st.iterations());
}

const double kGemm3 = 6.0 * kN * kV * kH;

// ---------------------------------------------------------------- CE

void BM_ce_fused(benchmark::State& st) {
  run(st, kGemm3, [](Inputs& in) { backward(linear_cross_entropy(in.h, in.W, in.targets)); });
}
void BM_ce_unfused(benchmark::State& st) {
  run(st, kGemm3, [](Inputs& in) {
    Tensor lsm = log_softmax(matmul(in.h, transpose(in.W, 0, 1)));
    Tensor nll = neg(mean(gather(lsm, 1, in.targets.view({kN, 1}))));
    backward(nll);
  });
}

// ---------------------------------------------------------------- JSD (β = 0.5, masked)

void BM_jsd_fused(benchmark::State& st) {
  run(st, kGemm3 + 2.0 * kN * kV * kH, [](Inputs& in) {
    LinearJSDOptions o;
    o.beta = 0.5;
    o.mask = in.mask;
    backward(linear_jsd(in.h, in.W, in.ht, in.Wt, o));
  });
}
void BM_jsd_unfused(benchmark::State& st) {
  run(st, kGemm3 + 2.0 * kN * kV * kH, [](Inputs& in) {
    const double beta = 0.5;
    Tensor lps = log_softmax(matmul(in.h, transpose(in.W, 0, 1)));
    Tensor lpt;
    {
      NoGradGuard ng;
      lpt = log_softmax(matmul(in.ht, transpose(in.Wt, 0, 1)));
    }
    Tensor ps = exp(lps), pt = exp(lpt);
    Tensor lm = log(pt * beta + ps * (1 - beta));
    Tensor per = sum(pt * (lpt - lm), 1) * beta + sum(ps * (lps - lm), 1) * (1 - beta);
    backward(sum(per * in.mask) / sum(in.mask).item());
  });
}

// ---------------------------------------------------------------- PPO (grpo, k3 KL)

void BM_ppo_fused(benchmark::State& st) {
  run(st, kGemm3, [](Inputs& in) {
    LinearPPOOptions o;
    o.kl_beta = 0.04;
    Tensor h3 = view(in.h, {16, kN / 16, kH});
    backward(linear_ppo_loss(h3, in.W, in.actions, in.old_lp, in.ref_lp, in.adv, Tensor(), o).loss);
  });
}
void BM_ppo_unfused(benchmark::State& st) {
  run(st, kGemm3, [](Inputs& in) {
    const double eps = 0.2, kl_beta = 0.04;
    Tensor lsm = log_softmax(matmul(in.h, transpose(in.W, 0, 1)));
    Tensor lp = view(gather(lsm, 1, in.targets.view({kN, 1})), {16, kN / 16});
    Tensor ratio = exp(lp - in.old_lp);
    Tensor clipped = minimum(maximum(ratio, Tensor::scalar(1 - eps)), Tensor::scalar(1 + eps));
    Tensor A = in.adv.view({16, 1});
    Tensor per = neg(minimum(ratio * A, clipped * A));
    Tensor d = in.ref_lp - lp;
    per = per + (exp(d) - d - 1.0) * kl_beta;
    backward(mean(mean(per, 1)));
  });
}

}  // namespace

BENCHMARK(BM_ce_unfused)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ce_fused)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_jsd_unfused)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_jsd_fused)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ppo_unfused)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ppo_fused)->Unit(benchmark::kMillisecond)->UseRealTime();

// 2 s per benchmark by default (an iteration is 0.1-0.5 s), unless --benchmark_min_time says
// otherwise: a per-benchmark MinTime(2.0) overrode the flag, so --benchmark_min_time=1 (the
// command in bench/RESULTS.md) or 0.05 still ran 2 s each.
int main(int argc, char** argv) {
  std::vector<char*> args(argv, argv + argc);
  bool has_min_time = false;
  for (int i = 1; i < argc; ++i) has_min_time |= std::string_view(argv[i]).starts_with("--benchmark_min_time");
  static char default_min_time[] = "--benchmark_min_time=2";
  if (!has_min_time) args.insert(args.begin() + 1, default_min_time);
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
