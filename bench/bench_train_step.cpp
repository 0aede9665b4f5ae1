// One full CPU training step of the documented tiny GPT-2-style config (issue 3 §9):
//   L = 4 layers, C = 256, 4 heads, T = 128, B = 8, vocab 4096, MLP 4·C, learned positions,
//   tied embeddings, f32; AdamW (decay on matrices, none on biases and norm weights).
// A step is zero_grad, forward, loss, backward, AdamW step: what a trainer does per batch.
//
// Counters: tokens/s, and model FLOP/s with llm.c's convention (DESIGN §6): 6·N + 6·L·T·C
// FLOPs per token, N = the parameter count (the tied embedding counted once).
// The sub-part benchmarks (forward only, forward + backward, optimiser step only) are the
// breakdown of the step, for profiling; they are not separate targets.
// Memory (BM_train_step): peak_MB is the CPU allocator's high-water mark during the timed
// steps (weights, AdamW state, activations, grads); step_peak_MB is that peak above what was
// live when a step began (what one step adds: activations, the loss, grads).
// Wall-clock time (UseRealTime): the step is multi-threaded. Use --benchmark_min_time=5 (or
// more) for a stable figure; the default gives only a few steps. Threads: OMP_NUM_THREADS (and
// OpenBLAS's pool, set the same by the environment). bench/reference/train_step.py times the
// same model and step in PyTorch at the same thread count and runs this binary beside it.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "nn/optim.h"
#include "nn/transformer.h"
#include "tensor/allocator.h"
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

  double flops_per_step() const {
    const double n = static_cast<double>(model->num_parameters());
    return static_cast<double>(kB * kT) * (6.0 * n + 6.0 * kL * kT * kC);
  }
};

void set_counters(benchmark::State& st, double flops) {
  st.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kB * kT), benchmark::Counter::kIsIterationInvariantRate);
  if (flops > 0) st.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_train_step(benchmark::State& st) {
  Setup s;
  s.step();  // warm-up: optimiser state and allocator caches
  Allocator& a = cpu_allocator();
  int64_t peak = 0, step_peak = 0;
  for (auto _ : st) {
    const int64_t before = a.stats().current;
    a.reset_peak();
    s.step();
    peak = std::max(peak, a.stats().peak);
    step_peak = std::max(step_peak, a.stats().peak - before);
  }
  set_counters(st, s.flops_per_step());
  st.counters["peak_MB"] = static_cast<double>(peak) / (1024.0 * 1024.0);
  st.counters["step_peak_MB"] = static_cast<double>(step_peak) / (1024.0 * 1024.0);
  st.counters["params"] = static_cast<double>(s.model->num_parameters());
}

// Forward and loss only, with the tape (what a training forward costs).
void BM_train_forward(benchmark::State& st) {
  Setup s;
  for (auto _ : st) {
    Tensor loss = s.model->loss(s.ids, s.targets).ce;
    benchmark::DoNotOptimize(loss.item());
  }
  set_counters(st, 0);
}

// Forward, loss and backward (grads set to none first, as zero_grad does).
void BM_train_forward_backward(benchmark::State& st) {
  Setup s;
  for (auto _ : st) {
    s.opt->zero_grad();
    backward(s.model->loss(s.ids, s.targets).ce);
  }
  set_counters(st, 0);
}

// The AdamW update alone, on fixed gradients. It processes no tokens: its counter is the
// parameters updated per second (a tokens/s here read 170k/s, the step's batch over 6 ms).
void BM_train_adamw(benchmark::State& st) {
  Setup s;
  backward(s.model->loss(s.ids, s.targets).ce);
  std::vector<Tensor> grads;
  for (const Tensor& p : s.model->parameters()) grads.push_back(p.grad());
  const std::vector<Tensor> params = s.model->parameters();
  for (auto _ : st) {
    for (size_t i = 0; i < params.size(); ++i) params[i].set_grad(grads[i]);  // step() clears them
    s.opt->step();
  }
  st.counters["params/s"] = benchmark::Counter(static_cast<double>(s.model->num_parameters()),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_train_step)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_train_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_train_forward_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_train_adamw)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
