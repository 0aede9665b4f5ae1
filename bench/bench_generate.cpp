// Generation throughput (Google Benchmark): tokens/s of nn::generate with the KV cache at
// batch 1 and 16, and the no-cache path (full recomputation of the sequence at every step)
// as the in-binary baseline, same model, same run.
//
// Config (documented, matched by bench/reference/generate.py): GPT-2 style, L = 4,
// C = 256, H = 4, V = 4096, block_size = 128, f32, seed 1234 (nanoGPT init). Prompts: B
// random sequences of 32 tokens (same length: no padding); 96 new tokens each, sampled at
// temperature 1 (no top-k / top-p, no stop tokens), so every iteration generates B·96
// tokens. Counters: tokens/s (generated tokens, wall clock) and s/step (one token for
// each sequence).
// Also the sampler's top-k step at B = 64, V = 32768 (see BM_sample_tokens_top_k below).
// Thread count: OMP_NUM_THREADS (OpenBLAS's pool too); give PyTorch the same (DESIGN §6).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "kernels/sampling.h"
#include "nn/generate.h"
#include "nn/transformer.h"
#include "tensor/random.h"

using namespace somnus;
using namespace somnus::nn;

namespace {

constexpr int64_t kPrompt = 32, kNew = 96;

TransformerConfig bench_config() {
  TransformerConfig c = TransformerConfig::gpt2_style(/*vocab=*/4096, /*n_layer=*/4, /*n_embd=*/256, /*n_head=*/4,
                                                      /*block=*/128);
  return c;
}

Transformer& bench_model() {
  static Generator gen(1234);
  static Transformer model(bench_config(), gen);
  return model;
}

std::vector<std::vector<TokenId>> bench_prompts(int64_t B) {
  Generator g(99);
  const std::vector<double> ids = randint(0, 4096, {B, kPrompt}, g).to_vector();
  std::vector<std::vector<TokenId>> p(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < kPrompt; ++t) p[static_cast<size_t>(b)].push_back(static_cast<TokenId>(ids[b * kPrompt + t]));
  return p;
}

void run(benchmark::State& st, bool use_cache) {
  const int64_t B = st.range(0);
  Transformer& model = bench_model();
  const auto prompts = bench_prompts(B);
  GenerateConfig cfg;
  cfg.max_new_tokens = kNew;
  cfg.temperature = 1.0;
  cfg.seed = 7;
  cfg.use_cache = use_cache;
  int64_t tokens = 0;
  for (auto _ : st) {
    const GenerateResult r = generate(model, prompts, cfg);
    for (const auto& s : r.sequences) tokens += static_cast<int64_t>(s.tokens.size());
    benchmark::DoNotOptimize(r.sequences.data());
  }
  if (tokens != B * kNew * static_cast<int64_t>(st.iterations())) st.SkipWithError("generated fewer tokens than asked");
  st.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
  // Seconds per decode step (one token for each of the B sequences), shown with an SI prefix.
  st.counters["s/step"] = benchmark::Counter(static_cast<double>(tokens) / static_cast<double>(B),
                                             benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_generate_kv_cache(benchmark::State& st) { run(st, true); }
void BM_generate_no_cache(benchmark::State& st) { run(st, false); }

// ---- the sampler's top-k step (kernels/cpu/sampling.cpp), B = 64 rows of V = 32768 logits
// (randn · 2), k = st.range(0):
//   BM_sample_tokens_top_k       the whole batched sampler (stats, weights, top-k, walk); k <= 64
//                                selects with a heap, larger k through the radix prefilter
//   BM_topk_order_partial_sort   the former ordering step alone: std::partial_sort of the k first
//   BM_topk_order_full_sort      the sort-everything baseline: std::sort of all V
// (one thread for the two ordering baselines; the sampler spreads rows over OMP_NUM_THREADS).
constexpr int64_t kSampleB = 64, kSampleV = 32768;

const std::vector<double>& sample_logits() {
  static const std::vector<double> x = [] {
    Generator g(5);
    return randn({kSampleB, kSampleV}, g, DType::f64, Device::cpu(), 0.0, 2.0).to_vector();
  }();
  return x;
}

void BM_sample_tokens_top_k(benchmark::State& st) {
  const Tensor logits = Tensor::from_vector(sample_logits(), {kSampleB, kSampleV}, DType::f32);
  SamplingOptions o;
  o.top_k = st.range(0);
  o.seed = 3;
  for (auto _ : st) {
    ++o.step;
    benchmark::DoNotOptimize(kernels::sample_tokens(logits, o).tokens.data_ptr());
  }
  st.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(kSampleB), benchmark::Counter::kIsIterationInvariantRate);
}

template <class Order>
void topk_order(benchmark::State& st, Order&& order_rows) {
  const std::vector<double>& x = sample_logits();
  const int64_t k = st.range(0);
  std::vector<int32_t> order(kSampleV);
  for (auto _ : st) {
    for (int64_t b = 0; b < kSampleB; ++b) {
      const double* r = x.data() + b * kSampleV;
      auto before = [r](int32_t a, int32_t c) { return r[a] > r[c] || (r[a] == r[c] && a < c); };
      std::iota(order.begin(), order.end(), 0);
      order_rows(order, k, before);
      benchmark::DoNotOptimize(order.data());
    }
  }
  st.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(kSampleB), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_topk_order_partial_sort(benchmark::State& st) {
  topk_order(st, [](std::vector<int32_t>& o, int64_t k, auto before) {
    std::partial_sort(o.begin(), o.begin() + k, o.end(), before);
  });
}
void BM_topk_order_full_sort(benchmark::State& st) {
  topk_order(st, [](std::vector<int32_t>& o, int64_t, auto before) { std::sort(o.begin(), o.end(), before); });
}

}  // namespace

BENCHMARK(BM_sample_tokens_top_k)->ArgName("k")->Arg(50)->Arg(1000)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_topk_order_partial_sort)->ArgName("k")->Arg(50)->Arg(1000)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_topk_order_full_sort)->ArgName("k")->Arg(50)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK(BM_generate_kv_cache)->ArgName("B")->Arg(1)->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime();
// The baseline is O(S) times more work per step: one iteration each is enough.
BENCHMARK(BM_generate_no_cache)
    ->ArgName("B")
    ->Arg(1)
    ->Arg(16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(1);

BENCHMARK_MAIN();
