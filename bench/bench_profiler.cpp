// The profiler's cost (tensor/profiler.h), on the tiny GPT-2-style training step of
// bench_train_step (L = 4, C = 256, 4 heads, T = 128, B = 8, vocab 4096, f32, AdamW).
//
//   BM_DisabledScope / BM_DisabledOpScope   one guard with the profiler off (ns): the relaxed
//                                           load and the branch; the op guard also builds its
//                                           input list, as the hooks in kernels/ops.cpp do
//   BM_TrainStep/profiler:0                 the step with the profiler off, with counters
//       guards_per_step     guards the step runs (each recorded op and scope; the guards of
//                           ops nested in ops are not recorded, so this counts them twice over
//                           as an upper bound)
//       off_overhead_pct    guards_per_step × the disabled op guard's cost / the step's time:
//                           what the hooks cost when off (the bound: ≤ 1%)
//   BM_TrainStep/profiler:1                 the same step profiled (records kept per step)
//
// Wall-clock time (UseRealTime): the step is multi-threaded. Use --benchmark_min_time=3.
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>
#include <vector>

#include "autograd/engine.h"
#include "nn/optim.h"
#include "nn/transformer.h"
#include "tensor/profiler.h"
#include "tensor/random.h"

using namespace somnus;
using namespace somnus::nn;

namespace {

constexpr int64_t kB = 8, kT = 128, kL = 4, kC = 256, kH = 4, kV = 4096;

struct Setup {
  TransformerConfig cfg = TransformerConfig::gpt2_style(kV, kL, kC, kH, /*block_size=*/kT);
  Generator gen{1337};
  std::unique_ptr<Transformer> model;
  std::unique_ptr<AdamW> opt;
  Tensor ids, targets;

  Setup() {
    model = std::make_unique<Transformer>(cfg, gen);
    ParamGroup decay, no_decay;
    decay.lr = no_decay.lr = 3e-4;
    decay.weight_decay = 0.1;
    for (const Tensor& p : model->parameters()) (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
    opt = std::make_unique<AdamW>(std::vector<ParamGroup>{decay, no_decay}, AdamWOptions{0.9, 0.95, 1e-8});
    Generator data(7);
    ids = randint(0, kV, {kB, kT}, data, DType::i64);
    targets = randint(0, kV, {kB, kT}, data, DType::i64);
  }

  void step() {
    opt->zero_grad();
    Tensor loss = model->loss(ids, targets).ce;
    backward(loss);
    opt->step();
  }
};

Setup& setup() {
  static Setup s;
  return s;
}

// ns per disabled op guard, timed by hand (the train-step benchmark needs the figure).
double disabled_op_guard_ns() {
  const Tensor a = Tensor::zeros({2, 2}), b = Tensor::zeros({2, 2});
  constexpr int64_t kIters = 20'000'000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < kIters; ++i) {
    const profiler::OpScope guard("matmul", {&a, &b}, [&] { return 2.0 * static_cast<double>(i); });
    benchmark::ClobberMemory();
  }
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  return ns / static_cast<double>(kIters);
}

void BM_DisabledScope(benchmark::State& state) {
  profiler::disable();
  for (auto _ : state) {
    SOMNUS_PROFILE_SCOPE("layer");
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_DisabledScope);

void BM_DisabledOpScope(benchmark::State& state) {
  profiler::disable();
  const Tensor a = Tensor::zeros({2, 2}), b = Tensor::zeros({2, 2}), bias;
  for (auto _ : state) {
    const profiler::OpScope guard("matmul", {&a, &b, &bias}, [&] { return 16.0; });
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_DisabledOpScope);

void BM_TrainStep(benchmark::State& state) {
  const bool on = state.range(0) != 0;
  Setup& s = setup();
  s.step();  // warm-up
  // Guards per step: count one profiled step's records.
  profiler::reset();
  {
    profiler::Session session;
    SOMNUS_PROFILE_SCOPE("train_step");
    s.step();
  }
  const double guards = 2.0 * static_cast<double>(profiler::records().size());
  profiler::reset();
  const double guard_ns = on ? 0.0 : disabled_op_guard_ns();
  double step_ns = 0;
  int64_t steps = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    if (on) {
      profiler::reset();
      profiler::Session session;
      SOMNUS_PROFILE_SCOPE("train_step");
      s.step();
    } else {
      s.step();
    }
    step_ns += std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    ++steps;
  }
  profiler::disable();
  profiler::reset();
  state.counters["guards_per_step"] = guards;
  if (!on && steps > 0) {
    state.counters["guard_ns"] = guard_ns;
    state.counters["off_overhead_pct"] = 100.0 * guards * guard_ns / (step_ns / static_cast<double>(steps));
  }
}
BENCHMARK(BM_TrainStep)->ArgName("profiler")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
