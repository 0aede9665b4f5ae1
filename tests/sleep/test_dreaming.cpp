// Dreaming (sleep/dreaming.h): sampling with the random extra expert, gradient selection,
// isolated trials and their rewards, ReST-EM on the rewarded dreams only, and the apply step.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "nn/nn_testing.h"
#include "sleep/baselines/training.h"
#include "sleep/dreaming.h"

namespace somnus::sleep {
namespace {

using nlohmann::json;
using nn::Transformer;
using nn::TransformerConfig;
using nn::testing::expect_error;
using nn::testing::randomize;
using nn::testing::raw_bytes;

constexpr int64_t kVocab = 32;

TransformerConfig dense_tiny() {
  TransformerConfig c = TransformerConfig::llama_style(kVocab, 1, 16, 4, 2, 32);
  c.levels[0].hidden = 24;
  return c;
}

// A fast dense level and a slow MoE level (3 experts, top-1) with slots.
TransformerConfig moe_tiny() {
  TransformerConfig c = dense_tiny();
  nn::LevelConfig fast;
  fast.hidden = 24;
  nn::LevelConfig slow;
  slow.kind = nn::LevelKind::moe;
  slow.period = 2;
  slow.hidden = 12;
  slow.n_experts = 3;
  slow.top_k = 1;
  slow.n_slots = 2;
  slow.slot_rank = 2;
  c.levels = {fast, slow};
  c.n_layer = 2;
  return c;
}

const std::vector<TokenId> kTarget = {3, 9, 4, 17, 11, 5, 8, 2};

// τ = mean log-prob of kTarget (after a bos-like token 1): raised by training on kTarget.
double target_logprob(Transformer& m) {
  std::vector<TokenId> row = {1};
  row.insert(row.end(), kTarget.begin(), kTarget.end());
  return mean_logprob(m, {{row, 1}});
}

DreamTask target_task() {
  DreamTask t;
  t.name = "target";
  t.context = {3, 9, 4, 17};
  t.prompt_prefix = {1};
  t.prompt_suffix = {2};
  t.train_prefix = {1};
  t.score = target_logprob;
  return t;
}

DreamConfig small_config() {
  DreamConfig c;
  c.num_dreams = 4;
  c.dream_length = 6;
  c.top_k = 1;
  c.keep_random = 1;
  c.trial_steps = 3;
  c.rest_iterations = 2;
  c.rest_steps = 2;
  c.apply_steps = 4;
  c.lora.rank = 2;
  c.lora.alpha = 4.0;
  c.seed = 3;
  return c;
}

std::vector<std::string> bytes_of(const std::vector<Tensor>& ts) {
  std::vector<std::string> out;
  for (const Tensor& t : ts) out.push_back(raw_bytes(t));
  return out;
}

TEST(Dreaming, SelectKeepsTheTopKPlusRandomOthers) {
  const std::vector<double> scores = {0.1, 5.0, 0.3, 4.0, 2.0, 0.2};
  Generator g(1);
  EXPECT_EQ(select_dreams(scores, 2, 0, g), (std::vector<size_t>{1, 3}));
  EXPECT_EQ(select_dreams(scores, 3, 0, g), (std::vector<size_t>{1, 3, 4}));
  // Ties: the lower index first.
  EXPECT_EQ(select_dreams({1.0, 2.0, 2.0, 0.5}, 1, 0, g), (std::vector<size_t>{1}));
  // Plus b random others, never a top-k one, reproducible from the seed, and varying with it.
  std::set<size_t> seen;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Generator a(seed), b(seed);
    const std::vector<size_t> k = select_dreams(scores, 2, 2, a);
    EXPECT_EQ(k, select_dreams(scores, 2, 2, b));
    ASSERT_EQ(k.size(), 4u);
    EXPECT_TRUE(std::is_sorted(k.begin(), k.end()));
    EXPECT_TRUE(std::count(k.begin(), k.end(), 1) == 1 && std::count(k.begin(), k.end(), 3) == 1);
    EXPECT_EQ(std::set<size_t>(k.begin(), k.end()).size(), 4u);
    for (size_t i : k) seen.insert(i);
  }
  EXPECT_EQ(seen.size(), 6u);  // every other dream got picked at random at some seed
  // Everything when k + b covers the dreams.
  EXPECT_EQ(select_dreams(scores, 4, 2, g).size(), 6u);
}

TEST(Dreaming, ImportanceIsLargestForTheDreamsTheModelHasNotLearned) {
  Generator gen(2);
  Transformer m(dense_tiny(), gen);
  Dreamer d(m, small_config());
  // Teach the base model kTarget, so its gradient becomes small, while a random sequence's
  // stays large.
  std::vector<TokenId> known = {1};
  known.insert(known.end(), kTarget.begin(), kTarget.end());
  train_sft(m, m.parameters(true), {{known, 1}}, SftSteps{.steps = 40, .lr = 1e-2}, gen);
  const std::vector<TokenId> unknown = {30, 7, 22, 14, 27, 6, 19, 12};
  const std::vector<std::vector<TokenId>> dreams = {kTarget, unknown, kTarget, {29, 13, 0, 25, 16, 10, 21, 15}};
  const std::vector<double> imp = d.importance(target_task(), dreams);
  ASSERT_EQ(imp.size(), 4u);
  EXPECT_DOUBLE_EQ(imp[0], imp[2]);  // the same dream, the same fresh adapter state
  EXPECT_GT(imp[1], 3.0 * imp[0]);
  EXPECT_GT(imp[3], 3.0 * imp[0]);
  EXPECT_GT(imp[0], 0.0);
  Generator g(0);
  EXPECT_EQ(select_dreams(imp, 2, 0, g), (std::vector<size_t>{1, 3}));
  EXPECT_EQ(d.adapters().active(), "");
}

TEST(Dreaming, RewardIsOneExactlyWhenTauImproves) {
  Generator gen(3);
  Transformer m(dense_tiny(), gen);
  DreamConfig cfg = small_config();
  cfg.trial_lr = 5e-2;
  Dreamer d(m, cfg);
  DreamTask up = target_task();
  const double base = d.score(up);
  std::vector<double> taus;
  // Training on kTarget raises its log-prob (reward 1); on an unrelated sequence it does not
  // raise it by as much as the first one, so with τ = −log-prob the reward flips.
  const std::vector<std::vector<TokenId>> dreams = {kTarget, {30, 30, 30, 30, 30, 30}};
  const std::vector<int> r = d.try_dreams(up, dreams, base, &taus);
  ASSERT_EQ(r.size(), 2u);
  ASSERT_EQ(taus.size(), 2u);
  EXPECT_EQ(r[0], 1);
  for (size_t i = 0; i < r.size(); ++i) EXPECT_EQ(r[i], taus[i] > base ? 1 : 0);

  DreamTask down = target_task();
  down.score = [](Transformer& mm) { return -target_logprob(mm); };
  std::vector<double> taus_down;
  const std::vector<int> r_down = d.try_dreams(down, {kTarget}, d.score(down), &taus_down);
  EXPECT_EQ(r_down[0], 0);
  EXPECT_LT(taus_down[0], d.score(down));
  // The base model is untouched by the trials (each was an isolated adapter).
  EXPECT_DOUBLE_EQ(d.score(up), base);
  // A margin: no reward unless τ improves by more than min_improvement.
  DreamConfig strict = cfg;
  strict.min_improvement = 1e6;
  Dreamer d2(m, strict);
  EXPECT_EQ(d2.try_dreams(up, {kTarget}, base)[0], 0);
}

TEST(Dreaming, RestEmTrainsTheDreamerOnlyOnRewardedDreams) {
  const std::vector<std::vector<TokenId>> dreams = {{1, 2}, {3, 4, 5}, {6}};
  EXPECT_EQ(rest_training_set(dreams, {0, 1, 1}), (std::vector<std::vector<TokenId>>{{3, 4, 5}, {6}}));
  EXPECT_TRUE(rest_training_set(dreams, {0, 0, 0}).empty());
  expect_error([&] { rest_training_set(dreams, {1}); }, {"3 dreams but 1 rewards"});

  Generator gen(4);
  Transformer m(dense_tiny(), gen);
  Dreamer d(m, small_config());
  const DreamTask task = target_task();
  const std::vector<Tensor> dreamer = d.adapters().parameters("dreamer");
  randomize(dreamer[1], 5, 0.1);
  const std::vector<std::string> before = bytes_of(dreamer);
  EXPECT_TRUE(d.learn_to_dream(task, {kTarget, {7, 7, 7}}, {0, 0}).empty());
  EXPECT_EQ(bytes_of(dreamer), before);  // nothing rewarded: the dreamer is untouched

  // One rewarded dream: the dreamer learns to produce it after the prompt, and the base
  // model (no adapter) does not change.
  std::vector<TokenId> row = task.dream_prompt();
  const auto plen = static_cast<int64_t>(row.size());
  row.insert(row.end(), kTarget.begin(), kTarget.end());
  const double base_lp = mean_logprob(m, {{row, plen}});
  d.adapters().enable("dreamer");
  const double lp0 = mean_logprob(m, {{row, plen}});
  d.adapters().disable();
  const std::vector<double> losses = d.learn_to_dream(task, {{7, 7, 7}, kTarget}, {0, 1});
  ASSERT_EQ(losses.size(), 2u);
  EXPECT_NE(bytes_of(dreamer), before);
  d.adapters().enable("dreamer");
  EXPECT_GT(mean_logprob(m, {{row, plen}}), lp0);
  d.adapters().disable();
  EXPECT_DOUBLE_EQ(mean_logprob(m, {{row, plen}}), base_lp);
  EXPECT_EQ(d.adapters().active(), "");
}

// A Dreamer that starts from a carried dream generator (load_dreamer_state) samples from it,
// and draws nothing for the load: its random stream (the trials' inits, selection, ...) is the
// one a Dreamer of the same config has without it. A state for other layers is refused.
TEST(Dreaming, LoadDreamerStateCarriesTheGeneratorAndDrawsNothing) {
  Generator gen(4);
  Transformer m(dense_tiny(), gen);
  const DreamTask task = target_task();
  DreamerState trained;
  {
    Dreamer first(m, small_config());
    first.run(task);
    const std::vector<Tensor> p = first.adapters().parameters("dreamer");
    randomize(p[1], 8, 0.5);  // a generator that surely differs from a fresh one
    trained = first.dreamer_state();
    EXPECT_EQ(trained.runs, 1);
  }
  DreamConfig cfg = small_config();
  cfg.seed = 21;
  Dreamer plain(m, cfg), carried(m, cfg);
  carried.load_dreamer_state(trained);
  std::vector<Tensor> trained_tensors;
  for (const auto& [k, t] : trained.adapter) trained_tensors.push_back(t);
  const std::vector<std::string> trained_bytes = bytes_of(trained_tensors);
  EXPECT_TRUE(bytes_of(carried.adapters().parameters("dreamer")) == trained_bytes);
  EXPECT_EQ(carried.dreamer_state().runs, 1);
  EXPECT_EQ(carried.generator().seed, plain.generator().seed);
  EXPECT_EQ(carried.generator().offset, plain.generator().offset);
  EXPECT_NE(carried.sample(task), plain.sample(task));
  carried.load_dreamer_state(DreamerState{});  // empty: nothing changes
  EXPECT_TRUE(bytes_of(carried.adapters().parameters("dreamer")) == trained_bytes);
  DreamConfig narrow = cfg;
  narrow.lora.targets = {"attn"};
  Generator g2(4);
  Transformer m2(dense_tiny(), g2);
  Dreamer other(m2, narrow);
  expect_error([&] { other.load_dreamer_state(trained); }, {"load_adapter_state", "'dreamer'"});
}

int64_t extra_per_token(Transformer& m) {
  return m.level(0, 1).moe->last_routing().per_token;
}

TEST(Dreaming, SamplingTurnsTheRandomExtraExpertOnAndRestoresIt) {
  Generator gen(6);
  Transformer m(moe_tiny(), gen);
  Dreamer d(m, small_config());
  const DreamTask task = target_task();
  const std::vector<std::vector<TokenId>> dreams = d.sample(task);
  ASSERT_EQ(dreams.size(), 4u);
  for (const auto& x : dreams) {
    EXPECT_GE(x.size(), 1u);
    EXPECT_LE(x.size(), 6u);
  }
  // The last forward (a decode step of the sampling) used top_k + 1 experts per token ...
  EXPECT_EQ(extra_per_token(m), 2);
  // ... and the flag is off again on every MoE level.
  for (int64_t l = 0; l < 2; ++l) EXPECT_FALSE(m.level(l, 1).moe->random_extra_expert());
  {
    NoGradGuard no_grad;
    m.forward(Tensor::from_vector({1, 2, 3}, {1, 3}, DType::i64));
  }
  EXPECT_EQ(extra_per_token(m), 1);

  DreamConfig off = small_config();
  off.random_extra_expert = false;
  Dreamer plain(m, off);
  plain.sample(task);
  EXPECT_EQ(extra_per_token(m), 1);

  // Same seed, same dreams (samples are reproducible).
  Generator g2(6);
  Transformer m2(moe_tiny(), g2);
  Dreamer d2(m2, small_config());
  EXPECT_EQ(d2.sample(task), dreams);
}

TEST(Dreaming, ApplyTrainsTheModelIntoLoraOrIntoANewSlot) {
  const DreamTask task = target_task();
  {
    Generator gen(7);
    Transformer m(moe_tiny(), gen);
    Dreamer d(m, small_config());
    const std::string w = raw_bytes(m.blocks->operator[](0).attn->wo->weight);
    const double before = d.score(task);
    EXPECT_EQ(d.apply(task, {}), 0);  // nothing rewarded, nothing applied
    EXPECT_EQ(raw_bytes(m.blocks->operator[](0).attn->wo->weight), w);
    EXPECT_EQ(d.apply(task, {kTarget}), 4);
    EXPECT_GT(d.score(task), before + 0.05);  // merged into the base: no adapter is active
    EXPECT_EQ(d.adapters().active(), "");
    EXPECT_NE(raw_bytes(m.blocks->operator[](0).attn->wo->weight), w);
  }
  {
    Generator gen(7);
    Transformer m(moe_tiny(), gen);
    DreamConfig cfg = small_config();
    cfg.apply_target = ApplyTarget::slots;
    Dreamer d(m, cfg);
    const std::string w = raw_bytes(m.blocks->operator[](0).attn->wo->weight);
    const double before = d.score(task);
    d.apply(task, {kTarget});
    for (int64_t l = 0; l < 2; ++l) EXPECT_EQ(m.level(l, 1).active_slots(), std::vector<int64_t>{0});
    EXPECT_GT(d.score(task), before + 0.02);
    EXPECT_EQ(raw_bytes(m.blocks->operator[](0).attn->wo->weight), w);  // only the slot trained
  }
  {
    Generator gen(7);
    Transformer m(dense_tiny(), gen);
    DreamConfig cfg = small_config();
    cfg.apply_target = ApplyTarget::slots;
    Dreamer d(m, cfg);
    expect_error([&] { d.apply(task, {kTarget}); }, {"slots", "levels[0]"});
  }
}

// apply_target = slots when a later layer's slowest level is full used to throw from
// activate_slot after the earlier layers' slots were activated: they stayed active, untrained.
TEST(Dreaming, ApplyIntoSlotsRefusesAFullLayerBeforeActivatingAny) {
  const DreamTask task = target_task();
  Generator gen(7);
  Transformer m(moe_tiny(), gen);
  Generator slot_gen(1);
  for (int64_t s = 0; s < 2; ++s) m.level(1, 1).activate_slot(slot_gen);  // layer 1: both slots taken
  DreamConfig cfg = small_config();
  cfg.apply_target = ApplyTarget::slots;
  Dreamer d(m, cfg);
  expect_error([&] { d.apply(task, {kTarget}); }, {"Dreamer::apply", "layer 1", "no free slot"});
  EXPECT_TRUE(m.level(0, 1).active_slots().empty()) << "layer 0's slot must not be taken by a refused apply";
}

TEST(Dreaming, ApplyGuardRejectsAnUpdateThatLowersTau) {
  // τ rewards the opposite of what the dream teaches: applying it lowers τ, so the guard
  // leaves the model (weights, slots) exactly as it was; without the guard it is applied.
  DreamTask task = target_task();
  const DreamTask target = target_task();
  task.score = [target](nn::Transformer& m) { return -target.score(m); };
  for (ApplyTarget where : {ApplyTarget::lora, ApplyTarget::slots}) {
    Generator gen(7);
    Transformer m(moe_tiny(), gen);
    DreamConfig cfg = small_config();
    cfg.apply_target = where;
    Dreamer d(m, cfg);
    const std::string w = raw_bytes(m.blocks->operator[](0).attn->wo->weight);
    EXPECT_EQ(d.apply(task, {kTarget}), 0) << apply_target_name(where);
    EXPECT_EQ(raw_bytes(m.blocks->operator[](0).attn->wo->weight), w);
    EXPECT_TRUE(m.level(0, 1).active_slots().empty());
    cfg.apply_guard = false;
    Dreamer unguarded(m, cfg);
    EXPECT_EQ(unguarded.apply(task, {kTarget}), cfg.apply_steps) << apply_target_name(where);
  }
}

TEST(Dreaming, RunReportsEveryIteration) {
  Generator gen(8);
  Transformer m(moe_tiny(), gen);
  DreamConfig cfg = small_config();
  cfg.trial_lr = 5e-2;
  Dreamer d(m, cfg);
  const DreamTask task = target_task();
  std::vector<DreamIterationMetrics> seen;
  const DreamResult r = d.run(task, [&](const DreamIterationMetrics& x) { seen.push_back(x); });
  ASSERT_EQ(r.iterations.size(), 2u);
  ASSERT_EQ(seen.size(), 2u);
  int64_t rewarded = 0;
  for (const DreamIterationMetrics& x : r.iterations) {
    EXPECT_EQ(x.sampled, 4);
    EXPECT_EQ(x.kept, 2);  // top_k 1 + 1 random
    EXPECT_LE(x.rewarded, x.kept);
    EXPECT_DOUBLE_EQ(x.base_tau, r.tau_before);
    EXPECT_GE(x.max_tau, x.mean_tau);
    EXPECT_GT(x.tokens_per_s, 0.0);
    rewarded += x.rewarded;
  }
  EXPECT_EQ(static_cast<int64_t>(r.rewarded.size()), rewarded);
  // The rewarded dreams are applied for apply_steps, unless the apply guard rejects the update
  // (τ did not improve), which leaves the model, and so τ, as it was.
  EXPECT_EQ(r.applied_steps, rewarded > 0 && r.tau_after > r.tau_before ? 4 : 0);
  if (r.applied_steps == 0) EXPECT_EQ(r.tau_after, r.tau_before);
  EXPECT_EQ(d.adapters().active(), "");
  EXPECT_FALSE(m.level(0, 1).moe->random_extra_expert());
  const json j = r.iterations[0];
  EXPECT_TRUE(j.contains("tokens_per_s") && j.contains("rewarded") && j.contains("mean_tau"));

  // Without selection every dream is tried.
  cfg.selection = false;
  Dreamer all(m, cfg);
  EXPECT_EQ(all.run(task).iterations[0].kept, 4);
}

TEST(Dreaming, RunReturnsTheDreamsItSampledAndTheObserverSeesThem) {
  Generator gen(8);
  Transformer m(moe_tiny(), gen);
  Generator gen2(8);
  Transformer twin(moe_tiny(), gen2);  // the same weights, for an independent first sample
  const DreamConfig cfg = small_config();
  const DreamTask task = target_task();
  std::vector<std::vector<std::vector<TokenId>>> observed;  // per iteration
  int64_t trials = 0;
  DreamResult r;
  {
    DreamObserver obs;
    obs.on_sample = [&](const DreamTask& t, int64_t it, const std::vector<std::vector<TokenId>>& dreams) {
      EXPECT_EQ(t.name, task.name);
      EXPECT_EQ(it, static_cast<int64_t>(observed.size()));
      observed.push_back(dreams);
    };
    Dreamer d(m, cfg);
    obs.on_trial = [&](const DreamTask&, const std::vector<TokenId>& dream, Transformer& adapted) {
      EXPECT_EQ(&adapted, &m);
      EXPECT_EQ(d.adapters().active(), "trial");  // the isolated trial model
      EXPECT_FALSE(is_grad_enabled());
      EXPECT_LE(static_cast<int64_t>(dream.size()), cfg.dream_length);
      ++trials;
    };
    const ScopedDreamObserver scope(obs);
    r = d.run(task);
  }
  ASSERT_EQ(observed.size(), 2u);
  ASSERT_EQ(r.dreams.size(), 8u);  // 2 iterations x 4 dreams, in sampling order
  std::vector<std::vector<TokenId>> rewarded;
  for (size_t i = 0; i < r.dreams.size(); ++i) {
    const SampledDream& s = r.dreams[i];
    EXPECT_EQ(s.iteration, static_cast<int64_t>(i / 4));
    EXPECT_EQ(s.tokens, observed[i / 4][i % 4]);
    EXPECT_FALSE(s.tokens.empty());
    EXPECT_LE(static_cast<int64_t>(s.tokens.size()), cfg.dream_length);
    for (TokenId t : s.tokens) EXPECT_TRUE(t >= 0 && t < kVocab) << t;
    if (!s.kept) {
      EXPECT_EQ(s.reward, 0);
    }
    if (s.reward == 1) rewarded.push_back(s.tokens);
  }
  for (size_t it = 0; it < 2; ++it) {
    int64_t kept = 0;
    for (size_t k = 0; k < 4; ++k) kept += r.dreams[it * 4 + k].kept ? 1 : 0;
    EXPECT_EQ(kept, r.iterations[it].kept);
  }
  EXPECT_EQ(trials, r.iterations[0].kept + r.iterations[1].kept);
  EXPECT_EQ(rewarded, r.rewarded);
  // The first iteration's dreams are what a fresh dreamer samples from the same model.
  Dreamer fresh(twin, cfg);
  EXPECT_EQ(fresh.sample(task), observed[0]);
  // Out of scope the observer is gone.
  Dreamer after(twin, cfg);
  (void)after.run(task);
  EXPECT_EQ(observed.size(), 2u);
}

// The per-episode dream seed (SleepMethod and SEAL build a Dreamer per episode): episode 0 is
// the seed itself, later episodes get distinct values, the same inputs the same value.
TEST(Dreaming, EpisodeDreamSeedIsDistinctPerEpisodeAndDeterministic) {
  EXPECT_EQ(episode_dream_seed(7, 0), 7u);
  std::set<uint64_t> seen;
  for (uint64_t seed : {0ull, 1ull, 2ull, 1000ull, 1001ull})
    for (int64_t e = 0; e < 50; ++e) {
      EXPECT_EQ(episode_dream_seed(seed, e), episode_dream_seed(seed, e));
      seen.insert(episode_dream_seed(seed, e));
    }
  EXPECT_EQ(seen.size(), 5u * 50u) << "a (seed, episode) pair repeats another's stream";
  EXPECT_THROW((void)episode_dream_seed(0, -1), Error);
}

TEST(Dreaming, BadConfigsAndTasksGiveClearErrors) {
  const DreamConfig ok = small_config();
  const DreamConfig back = json(ok).get<DreamConfig>();
  EXPECT_EQ(json(back), json(ok));
  auto with = [&](const char* key, const json& value) {
    json j = ok;
    j[key] = value;
    return j;
  };
  expect_error([&] { with("num_dreams", 0).get<DreamConfig>(); }, {"DreamConfig", "'num_dreams'"});
  expect_error([&] { with("temperature", 0.0).get<DreamConfig>(); }, {"'temperature'"});
  expect_error([&] { with("trial_steps", 0).get<DreamConfig>(); }, {"'trial_steps'"});
  expect_error([&] { with("apply_target", "weights").get<DreamConfig>(); }, {"'apply_target'", "weights"});
  expect_error([&] { with("selection", 1).get<DreamConfig>(); }, {"'selection'", "wrong type"});
  expect_error([&] { with("lora", json{{"rank", 0}}).get<DreamConfig>(); }, {"'lora'", "'rank'"});
  expect_error([&] { with("dreams", 3).get<DreamConfig>(); }, {"unknown key 'dreams'"});
  json none = with("top_k", 0);
  none["keep_random"] = 0;
  expect_error([&] { none.get<DreamConfig>(); }, {"'top_k'", "'keep_random'"});
  none["selection"] = false;
  EXPECT_NO_THROW(none.get<DreamConfig>());
  EXPECT_TRUE(json::object().get<DreamConfig>().random_extra_expert);  // on by default
  EXPECT_TRUE(json::object().get<DreamConfig>().persist_dreamer);      // on by default
  EXPECT_FALSE(with("persist_dreamer", false).get<DreamConfig>().persist_dreamer);
  expect_error([&] { with("persist_dreamer", "yes").get<DreamConfig>(); }, {"'persist_dreamer'", "wrong type"});

  DreamTask t = target_task();
  t.context.clear();
  expect_error([&] { t.validate(); }, {"missing field 'context'"});
  t = target_task();
  t.score = nullptr;
  expect_error([&] { t.validate(); }, {"missing field 'score'"});
  t = target_task();
  t.prompt_prefix.clear();
  t.prompt_suffix.clear();
  expect_error([&] { t.dream_prompt(); }, {"missing field 'prompt template'"});
  t.make_prompt = [](const std::vector<TokenId>& c) {
    std::vector<TokenId> p = {5};
    p.insert(p.end(), c.begin(), c.end());
    return p;
  };
  EXPECT_EQ(t.dream_prompt(), (std::vector<TokenId>{5, 3, 9, 4, 17}));

  Generator gen(9);
  Transformer m(dense_tiny(), gen);
  Dreamer d(m, small_config());
  DreamTask no_score = target_task();
  no_score.score = nullptr;
  expect_error([&] { d.run(no_score); }, {"'score'"});
  DreamTask long_prompt = target_task();
  long_prompt.context = std::vector<TokenId>(40, 3);
  expect_error([&] { d.sample(long_prompt); }, {"block_size"});
}

}  // namespace
}  // namespace somnus::sleep
