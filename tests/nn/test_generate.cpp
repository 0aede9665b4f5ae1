// Generation: KV-cache decoding equals full recomputation (tokens and log-probs) for GPT-2,
// Llama (GQA + RoPE) and CMS/MoE models; a left-padded batch equals each prompt alone; the
// samplers against hand-made rows (greedy, top-k, top-p, temperature, their composition,
// the inverse CDF); stop tokens, max_new_tokens and block_size; seeds; the cache's memory
// behaviour; and bad input.
#include "nn/generate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "kernels/ops.h"
#include "nn/transformer.h"
#include "nn_testing.h"
#include "tensor/allocator.h"
#include "tensor/random.h"

using namespace somnus;
using namespace somnus::nn;
using namespace somnus::nn::testing;
using nlohmann::json;

namespace {

constexpr int64_t kVocab = kTinyVocab;  // tiny_gpt2 / tiny_llama / tiny_cms (nn_testing.h)

// An f64 model whose parameters are redrawn with a larger spread than the GPT-2 init, so
// that next-token distributions are far from uniform (greedy ties are then impossible and
// top-k / top-p actually cut). The CMS model also gets an active, non-zero slot.
std::unique_ptr<Transformer> make_model(const TransformerConfig& cfg, uint64_t seed) {
  Generator gen(seed);
  auto m = std::make_unique<Transformer>(cfg, gen, DType::f64);
  if (cfg.levels.size() > 1) {
    Generator sg(seed + 1);
    m->level(0, 1).activate_slot(sg);
  }
  uint64_t s = seed * 1000;
  for (auto& [name, p] : m->named_parameters()) randomize(p, ++s, 0.3);
  return m;
}

std::vector<std::vector<TokenId>> ragged_prompts() {
  return {{3, 1, 4, 1, 5}, {9, 2}, {6, 5, 3, 5, 8, 9, 7}, {12}};
}

GenerateConfig sampled_cfg(uint64_t seed = 5) {
  GenerateConfig c;
  c.max_new_tokens = 8;
  c.temperature = 0.9;
  c.top_k = 6;
  c.top_p = 0.9;
  c.seed = seed;
  return c;
}

GenerateConfig greedy_cfg() {
  GenerateConfig c;
  c.max_new_tokens = 8;
  c.temperature = 0.0;
  return c;
}

// log_softmax of one forward of prompt + generated tokens, alone and unpadded: the
// reference log-probs (and greedy choices) by full recomputation.
void expect_matches_full_forward(Transformer& m, const std::vector<TokenId>& prompt, const GeneratedSequence& seq,
                                 bool greedy) {
  std::vector<double> ids(prompt.begin(), prompt.end());
  ids.insert(ids.end(), seq.tokens.begin(), seq.tokens.end());
  const int64_t T = static_cast<int64_t>(ids.size());
  NoGradGuard no_grad;
  const Tensor lp = kernels::log_softmax(m.forward(Tensor::from_vector(ids, {1, T}, DType::i64)).select(0, 0));
  const Tensor am = kernels::argmax(lp, -1);  // (T)
  const size_t P = prompt.size();
  for (size_t j = 0; j < seq.tokens.size(); ++j) {
    const int64_t row = static_cast<int64_t>(P + j - 1);  // the logits that predicted token j
    EXPECT_NEAR(seq.logprobs[j], lp.at({row, seq.tokens[j]}), 1e-10) << "token " << j;
    if (greedy) {
      EXPECT_EQ(seq.tokens[j], static_cast<TokenId>(am.at({row}))) << "token " << j;
    }
  }
}

void expect_same(const GenerateResult& a, const GenerateResult& b, double tol) {
  ASSERT_EQ(a.sequences.size(), b.sequences.size());
  for (size_t i = 0; i < a.sequences.size(); ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i));
    const GeneratedSequence &x = a.sequences[i], &y = b.sequences[i];
    EXPECT_EQ(x.tokens, y.tokens);
    EXPECT_EQ(x.finish, y.finish);
    ASSERT_EQ(x.logprobs.size(), y.logprobs.size());
    for (size_t j = 0; j < x.logprobs.size(); ++j) {
      EXPECT_NEAR(x.logprobs[j], y.logprobs[j], tol);
      EXPECT_NEAR(x.sampling_logprobs[j], y.sampling_logprobs[j], tol);
    }
  }
}

// logits (1, V) from probabilities.
Tensor logits_of(const std::vector<double>& probs) {
  std::vector<double> z;
  for (double p : probs) z.push_back(std::log(p));
  return Tensor::from_vector(z, {1, static_cast<int64_t>(z.size())}, DType::f64);
}

// How often each token is drawn over N stratified uniforms (j + 0.5) / N: exact inverse-CDF
// frequencies, no sampling noise.
std::map<TokenId, int64_t> histogram(const Tensor& logits, const GenerateConfig& cfg, int64_t N,
                                     std::map<TokenId, double>* sampling_lp = nullptr) {
  std::map<TokenId, int64_t> h;
  for (int64_t j = 0; j < N; ++j) {
    const SampleResult s = sample_next(logits, cfg, std::vector<double>{(j + 0.5) / N});
    ++h[s.tokens[0]];
    if (sampling_lp) (*sampling_lp)[s.tokens[0]] = s.sampling_logprobs[0];
  }
  return h;
}

std::set<TokenId> keys(const std::map<TokenId, int64_t>& h) {
  std::set<TokenId> s;
  for (auto& [k, v] : h) s.insert(k);
  return s;
}

}  // namespace

// ---------------------------------------------------------------- cache vs recomputation

TEST(Generate, KVCacheEqualsFullRecomputation) {
  for (const TransformerConfig& mc : {tiny_gpt2(), tiny_llama(), tiny_cms()}) {
    SCOPED_TRACE(json(mc).dump());
    auto m = make_model(mc, 21);
    for (GenerateConfig cfg : {greedy_cfg(), sampled_cfg()}) {
      SCOPED_TRACE(cfg.greedy() ? "greedy" : "sampled");
      const GenerateResult cached = generate(*m, ragged_prompts(), cfg);
      cfg.use_cache = false;
      const GenerateResult full = generate(*m, ragged_prompts(), cfg);
      expect_same(cached, full, 1e-10);
      EXPECT_GT(cached.forward_calls, 1);
      EXPECT_EQ(cached.forward_calls, full.forward_calls);
      for (size_t i = 0; i < cached.sequences.size(); ++i) {
        SCOPED_TRACE("sequence " + std::to_string(i));
        EXPECT_EQ(cached.sequences[i].tokens.size(), 8u);
        expect_matches_full_forward(*m, ragged_prompts()[i], cached.sequences[i], cfg.greedy());
      }
    }
  }
}

TEST(Generate, BatchedEqualsEachPromptAlone) {
  for (const TransformerConfig& mc : {tiny_gpt2(), tiny_llama(), tiny_cms()}) {
    SCOPED_TRACE(json(mc).dump());
    auto m = make_model(mc, 22);
    for (const GenerateConfig& base : {greedy_cfg(), sampled_cfg(9)}) {
      const auto prompts = ragged_prompts();
      const GenerateResult batched = generate(*m, prompts, base);
      for (size_t i = 0; i < prompts.size(); ++i) {
        GenerateConfig cfg = base;
        cfg.stream_offset = i;  // prompt i of the batch draws from stream i
        const GenerateResult alone = generate(*m, {prompts[i]}, cfg);
        GenerateResult one;
        one.sequences = {batched.sequences[i]};
        expect_same(one, alone, 1e-10);
      }
    }
  }
}

// ---------------------------------------------------------------- samplers

TEST(Sampler, GreedyIsArgmaxAndTopK1IsGreedy) {
  Generator g(31);
  const Tensor logits = randn({6, 50}, g, DType::f64, Device::cpu(), 0.0, 2.0);
  const std::vector<double> am = kernels::argmax(logits, -1).to_vector();
  const Tensor lp = kernels::log_softmax(logits);
  GenerateConfig greedy;
  greedy.temperature = 0.0;
  GenerateConfig top1;
  top1.temperature = 1.3;
  top1.top_k = 1;
  GenerateConfig cold;  // temperature -> 0 is greedy
  cold.temperature = 1e-9;
  GenerateConfig denormal;  // 1/t overflows: still the greedy limit, not NaN
  denormal.temperature = 1e-320;
  const std::vector<double> u{0.999, 0.5, 1e-6, 0.25, 0.75, 1.0};
  for (const GenerateConfig& cfg : {greedy, top1, cold, denormal}) {
    const SampleResult s = sample_next(logits, cfg, u);
    for (int64_t b = 0; b < 6; ++b) {
      EXPECT_EQ(s.tokens[b], static_cast<TokenId>(am[b])) << "row " << b;
      EXPECT_NEAR(s.logprobs[b], lp.at({b, static_cast<int64_t>(am[b])}), 1e-12);
      EXPECT_NEAR(s.sampling_logprobs[b], 0.0, 1e-12);  // a one-token distribution
    }
  }
}

TEST(Sampler, InverseCdfFollowsTemperatureSoftmax) {
  const std::vector<double> p{0.1, 0.5, 0.05, 0.2, 0.15};
  GenerateConfig cfg;
  cfg.temperature = 0.5;  // q ∝ p²
  const int64_t N = 20000;
  std::map<TokenId, double> slp;
  const auto h = histogram(logits_of(p), cfg, N, &slp);
  double z = 0.0;
  for (double x : p) z += x * x;
  for (TokenId t = 0; t < 5; ++t) {
    const double q = p[t] * p[t] / z;
    EXPECT_NEAR(static_cast<double>(h.count(t) ? h.at(t) : 0) / N, q, 1.5 / N) << "token " << t;
    EXPECT_NEAR(slp.at(t), std::log(q), 1e-12) << "token " << t;
  }
}

TEST(Sampler, TopPKeepsTheSmallestSetWithMassAtLeastP) {
  // Sorted: token 1 (0.5), 3 (0.2), 4 (0.15), 0 (0.1), 2 (0.05).
  const std::vector<double> p{0.1, 0.5, 0.05, 0.2, 0.15};
  const Tensor logits = logits_of(p);
  GenerateConfig cfg;
  cfg.temperature = 1.0;
  const int64_t N = 4000;
  const std::vector<std::pair<double, std::set<TokenId>>> cases{
      {0.49, {1}}, {0.69, {1, 3}}, {0.71, {1, 3, 4}}, {0.8, {1, 3, 4}}, {0.86, {1, 3, 4, 0}}, {1.0, {0, 1, 2, 3, 4}}};
  for (const auto& [top_p, expected] : cases) {
    SCOPED_TRACE(top_p);
    cfg.top_p = top_p;
    std::map<TokenId, double> slp;
    const auto h = histogram(logits, cfg, N, &slp);
    EXPECT_EQ(keys(h), expected);
    // Renormalised over the kept set.
    double mass = 0.0;
    for (TokenId t : expected) mass += p[t];
    for (TokenId t : expected) {
      EXPECT_NEAR(static_cast<double>(h.at(t)) / N, p[t] / mass, 1.5 / N) << "token " << t;
      EXPECT_NEAR(slp.at(t), std::log(p[t] / mass), 1e-12) << "token " << t;
    }
  }
}

TEST(Sampler, ComposesTemperatureThenTopKThenTopP) {
  const std::vector<double> p{0.1, 0.5, 0.05, 0.2, 0.15};
  const Tensor logits = logits_of(p);
  const int64_t N = 4000;
  GenerateConfig cfg;
  // top-k = 2 keeps {1: 0.5, 3: 0.2}, renormalised {0.714, 0.286}: top-p = 0.7 keeps only
  // token 1, top-p = 0.75 keeps both (top-p measured on the top-k set, not the full row).
  cfg.top_k = 2;
  cfg.top_p = 0.7;
  EXPECT_EQ(keys(histogram(logits, cfg, N)), (std::set<TokenId>{1}));
  cfg.top_p = 0.75;
  EXPECT_EQ(keys(histogram(logits, cfg, N)), (std::set<TokenId>{1, 3}));
  // top-k = 3 alone keeps 3 tokens, renormalised.
  cfg.top_p = 1.0;
  cfg.top_k = 3;
  const auto h3 = histogram(logits, cfg, N);
  EXPECT_EQ(keys(h3), (std::set<TokenId>{1, 3, 4}));
  EXPECT_NEAR(static_cast<double>(h3.at(4)) / N, 0.15 / 0.85, 1.5 / N);
  // Temperature first: at t = 0.5 the masses are ∝ p², {0.769, 0.123, 0.069, 0.031, 0.008}
  // over {1, 3, 4, 0, 2}, so top-p = 0.8 keeps {1, 3}; at t = 1 it keeps {1, 3, 4}.
  cfg.top_k = 0;
  cfg.top_p = 0.8;
  EXPECT_EQ(keys(histogram(logits, cfg, N)), (std::set<TokenId>{1, 3, 4}));
  cfg.temperature = 0.5;
  EXPECT_EQ(keys(histogram(logits, cfg, N)), (std::set<TokenId>{1, 3}));
}

TEST(Sampler, GeneratorOverloadIsSeededAndAdvances) {
  Generator lg(32);
  const Tensor logits = randn({8, 20}, lg, DType::f64);
  GenerateConfig cfg;
  cfg.temperature = 2.0;
  Generator a(7), b(7), c(8);
  const SampleResult sa = sample_next(logits, cfg, a), sb = sample_next(logits, cfg, b), sc = sample_next(logits, cfg, c);
  EXPECT_EQ(sa.tokens, sb.tokens);
  EXPECT_NE(sa.tokens, sc.tokens);
  EXPECT_GT(a.offset, 0u);
  const SampleResult sa2 = sample_next(logits, cfg, a);  // the next draw differs
  EXPECT_NE(sa.tokens, sa2.tokens);
}

TEST(Generate, TemperatureToZeroIsGreedy) {
  auto m = make_model(tiny_llama(), 23);
  GenerateConfig cold = sampled_cfg();
  cold.temperature = 1e-9;
  cold.top_k = 0;
  cold.top_p = 1.0;
  const GenerateResult g = generate(*m, ragged_prompts(), greedy_cfg());
  const GenerateResult c = generate(*m, ragged_prompts(), cold);
  for (size_t i = 0; i < g.sequences.size(); ++i) {
    EXPECT_EQ(g.sequences[i].tokens, c.sequences[i].tokens) << "sequence " << i;
    for (size_t j = 0; j < g.sequences[i].logprobs.size(); ++j)
      EXPECT_NEAR(g.sequences[i].logprobs[j], c.sequences[i].logprobs[j], 1e-12);
  }
}

// ---------------------------------------------------------------- stopping

TEST(Generate, StopTokensStopAndAreReported) {
  auto m = make_model(tiny_gpt2(), 24);
  const auto prompts = ragged_prompts();
  GenerateConfig cfg = sampled_cfg(3);
  cfg.temperature = 1.5;
  const GenerateResult free_run = generate(*m, prompts, cfg);
  // A stop token that sequence 0 produces at step 2 or later (and not before).
  const auto& t0 = free_run.sequences[0].tokens;
  TokenId stop = -1;
  for (size_t j = 2; j < t0.size() && stop < 0; ++j) {
    if (std::find(t0.begin(), t0.begin() + j, t0[j]) == t0.begin() + j) stop = t0[j];
  }
  ASSERT_GE(stop, 0) << "no fresh token in sequence 0";
  cfg.stop_tokens = {stop, 12345};
  const GenerateResult stopped = generate(*m, prompts, cfg);
  bool any_stop = false;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i));
    // Each sequence is its free run cut after the first stop token: the other sequences
    // are not disturbed by one that stops (their streams and rows are their own).
    const auto& f = free_run.sequences[i].tokens;
    const auto it = std::find(f.begin(), f.end(), stop);
    const std::vector<TokenId> expected(f.begin(), it == f.end() ? f.end() : it + 1);
    const GeneratedSequence& s = stopped.sequences[i];
    EXPECT_EQ(s.tokens, expected);
    EXPECT_EQ(s.logprobs.size(), expected.size());
    EXPECT_EQ(s.finish, it == f.end() ? FinishReason::max_new_tokens : FinishReason::stop_token);
    any_stop = any_stop || s.finish == FinishReason::stop_token;
  }
  EXPECT_TRUE(any_stop);
  EXPECT_EQ(stopped.sequences[0].finish, FinishReason::stop_token);
  EXPECT_EQ(stopped.sequences[0].tokens.back(), stop);
}

TEST(Generate, MaxNewTokensAndBlockSizeAreRespected) {
  auto m = make_model(tiny_llama(), 25);  // block_size 16
  GenerateConfig cfg = sampled_cfg();
  cfg.max_new_tokens = 4;
  GenerateResult r = generate(*m, ragged_prompts(), cfg);
  for (const auto& s : r.sequences) {
    EXPECT_EQ(s.tokens.size(), 4u);
    EXPECT_EQ(s.finish, FinishReason::max_new_tokens);
  }
  EXPECT_EQ(r.forward_calls, 4);
  // Prompt + generated never exceed block_size: 14 + 2, 16 + 0, 3 + 10.
  cfg.max_new_tokens = 10;
  const std::vector<std::vector<TokenId>> prompts{std::vector<TokenId>(14, 3), std::vector<TokenId>(16, 4), {1, 2, 3}};
  r = generate(*m, prompts, cfg);
  EXPECT_EQ(r.sequences[0].tokens.size(), 2u);
  EXPECT_EQ(r.sequences[0].finish, FinishReason::block_size);
  EXPECT_EQ(r.sequences[1].tokens.size(), 0u);
  EXPECT_EQ(r.sequences[1].finish, FinishReason::block_size);
  EXPECT_EQ(r.sequences[2].tokens.size(), 10u);
  EXPECT_EQ(r.sequences[2].finish, FinishReason::max_new_tokens);
  for (size_t i = 0; i < prompts.size(); ++i) expect_matches_full_forward(*m, prompts[i], r.sequences[i], false);
  // Nothing to generate: no forward at all.
  cfg.max_new_tokens = 0;
  r = generate(*m, ragged_prompts(), cfg);
  EXPECT_EQ(r.forward_calls, 0);
  for (const auto& s : r.sequences) {
    EXPECT_TRUE(s.tokens.empty());
    EXPECT_EQ(s.finish, FinishReason::max_new_tokens);
  }
}

// ---------------------------------------------------------------- seeds

TEST(Generate, SameSeedSameOutputDifferentSeedDifferentOutput) {
  auto m = make_model(tiny_cms(), 26);
  GenerateConfig cfg = sampled_cfg(11);
  cfg.temperature = 1.5;
  cfg.top_k = 0;
  cfg.top_p = 1.0;
  const GenerateResult a = generate(*m, ragged_prompts(), cfg);
  const GenerateResult b = generate(*m, ragged_prompts(), cfg);
  for (size_t i = 0; i < a.sequences.size(); ++i) {
    EXPECT_EQ(a.sequences[i].tokens, b.sequences[i].tokens);
    EXPECT_EQ(a.sequences[i].logprobs, b.sequences[i].logprobs);  // bitwise
  }
  cfg.seed = 12;
  const GenerateResult c = generate(*m, ragged_prompts(), cfg);
  int64_t differing = 0;
  for (size_t i = 0; i < a.sequences.size(); ++i) differing += a.sequences[i].tokens != c.sequences[i].tokens;
  EXPECT_GE(differing, 2);
  // Distinct streams within a batch: the same prompt twice samples differently.
  const GenerateResult twins = generate(*m, {{1, 2, 3}, {1, 2, 3}}, cfg);
  EXPECT_NE(twins.sequences[0].tokens, twins.sequences[1].tokens);
}

// ---------------------------------------------------------------- cache memory

TEST(StaticKVCache, WritesInPlaceWithoutAllocatingAndFreesOnDestruction) {
  const TransformerConfig mc = tiny_llama();  // 2 layers, Hkv 2, D 2
  Allocator& alloc = cpu_allocator();
  const int64_t before = alloc.stats().current;
  {
    StaticKVCache cache(mc, /*batch=*/3, /*capacity=*/10, DType::f64);
    EXPECT_EQ(cache.nbytes(), 2 * 2 * 3 * 2 * 10 * 2 * 8);
    EXPECT_GE(alloc.stats().current - before, cache.nbytes());
    std::vector<const void*> buffers;
    for (int64_t l = 0; l < 2; ++l) buffers.insert(buffers.end(), {cache.key_buffer(l).data_ptr(), cache.value_buffer(l).data_ptr()});
    Generator g(41);
    std::vector<Tensor> ks, vs;
    for (int64_t t = 0; t < 10; ++t) {  // inputs made up front: only update() runs below
      ks.push_back(randn({3, 2, 1, 2}, g, DType::f64));
      vs.push_back(randn({3, 2, 1, 2}, g, DType::f64));
    }
    int64_t update_allocs = 0;
    for (int64_t t = 0; t < 10; ++t) {
      for (int64_t l = 0; l < 2; ++l) {
        const int64_t allocs = alloc.stats().num_allocs;
        auto [K, V] = cache.update(l, ks[t], vs[t]);
        update_allocs += alloc.stats().num_allocs - allocs;
        EXPECT_EQ(K.size(2), t + 1);
        EXPECT_TRUE(K.storage() == cache.key_buffer(l).storage());  // a view, not a copy
        EXPECT_TRUE(V.storage() == cache.value_buffer(l).storage());
        EXPECT_TRUE(bitwise_equal(K.slice(2, t, t + 1), ks[t]));
      }
    }
    EXPECT_EQ(update_allocs, 0) << "update() allocated";
    EXPECT_EQ(cache.length(), 10);
    for (int64_t l = 0; l < 2; ++l) {
      EXPECT_EQ(cache.key_buffer(l).data_ptr(), buffers[2 * l]);
      EXPECT_EQ(cache.value_buffer(l).data_ptr(), buffers[2 * l + 1]);
    }
    expect_error([&] { cache.update(0, ks[0], vs[0]); }, {"StaticKVCache", "capacity 10"});
    cache.reset();
    EXPECT_EQ(cache.length(), 0);
    EXPECT_EQ(cache.update(0, ks[0], vs[0]).first.size(2), 1);
    expect_error([&] { cache.update(0, randn({3, 2, 1, 3}, g, DType::f64), vs[0]); }, {"StaticKVCache", "(3, 2, 1, 3)"});
    expect_error([&] { cache.update(0, ks[0].to(DType::f32), vs[0].to(DType::f32)); }, {"StaticKVCache", "f32"});
    expect_error([&] { cache.update(2, ks[0], vs[0]); }, {"StaticKVCache", "layer 2"});
  }
  EXPECT_EQ(alloc.stats().current, before) << "the cache's buffers were not freed";
}

TEST(StaticKVCache, DecodeThroughTheModelKeepsItsBuffers) {
  auto m = make_model(tiny_gpt2(), 27);
  StaticKVCache cache(m->config(), /*batch=*/2, /*capacity=*/0, DType::f64);  // capacity = block_size
  EXPECT_EQ(cache.capacity(), 16);
  const void* k0 = cache.key_buffer(0).data_ptr();
  Generator g(42);
  const Tensor ids = randint(0, kVocab, {2, 9}, g);
  NoGradGuard no_grad;
  const Tensor full = m->forward(ids);  // (2, 9, V)
  ForwardContext ctx;
  ctx.cache = &cache;
  std::vector<Tensor> pieces{m->forward(ids.slice(1, 0, 4), ctx)};
  for (int64_t t = 4; t < 9; ++t) {
    ctx.pos_offset = t;
    pieces.push_back(m->forward(ids.slice(1, t, t + 1), ctx));
    EXPECT_EQ(cache.length(0), t + 1);
    EXPECT_EQ(cache.length(1), t + 1);
  }
  EXPECT_EQ(cache.key_buffer(0).data_ptr(), k0);
  EXPECT_LT(rel_error(kernels::concat(pieces, 1), full), 1e-12);
}

// ---------------------------------------------------------------- bad input

TEST(Generate, BadInputThrows) {
  auto m = make_model(tiny_gpt2(), 28);
  const GenerateConfig ok = sampled_cfg();
  expect_error([&] { generate(*m, {}, ok); }, {"generate", "no prompts"});
  expect_error([&] { generate(*m, {{1, 2}, {}}, ok); }, {"generate", "prompt 1 is empty"});
  expect_error([&] { generate(*m, {std::vector<TokenId>(17, 1)}, ok); }, {"generate", "17 tokens", "block_size = 16"});
  expect_error([&] { generate(*m, {{1, 13}}, ok); }, {"generate", "token id 13"});
  expect_error([&] { generate(*m, {{1, -1}}, ok); }, {"generate", "token id -1"});
  auto bad = [&](auto edit, const char* what) {
    GenerateConfig c = ok;
    edit(c);
    expect_error([&] { generate(*m, {{1, 2}}, c); }, {"GenerateConfig", what});
    expect_error([&] { sample_next(Tensor::zeros({1, 4}, DType::f64), c, std::vector<double>{0.5}); },
                 {"GenerateConfig", what});
  };
  bad([](GenerateConfig& c) { c.top_p = 0.0; }, "top_p");
  bad([](GenerateConfig& c) { c.top_p = 1.5; }, "top_p");
  bad([](GenerateConfig& c) { c.temperature = -1.0; }, "temperature");
  bad([](GenerateConfig& c) { c.temperature = NAN; }, "temperature");
  bad([](GenerateConfig& c) { c.top_k = -1; }, "top_k");
  bad([](GenerateConfig& c) { c.max_new_tokens = -1; }, "max_new_tokens");
  expect_error([&] { sample_next(Tensor::zeros({2, 4}, DType::f64), ok, std::vector<double>{0.5}); },
               {"sample_next", "1 uniforms for 2 rows"});
  expect_error([&] { sample_next(Tensor::zeros({4}, DType::f64), ok, std::vector<double>{0.5}); },
               {"sample_next", "(B, V)"});
  expect_error([&] { sample_next(Tensor::from_vector({0.0, NAN}, {1, 2}, DType::f64), ok, std::vector<double>{0.5}); },
               {"sample_next", "NaN"});
  expect_error([&] { StaticKVCache(m->config(), 0); }, {"StaticKVCache", "batch"});
}
