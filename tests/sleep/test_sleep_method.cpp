// The whole wake → sleep → dream cycle through the Sleep method (sleep/sleep_method.h) on a
// tiny model, and its registration beside the baselines.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "sleep/baselines/baselines.h"
#include "sleep/baselines/training.h"
#include "sleep/sleep_method.h"
#include "testing.h"

namespace somnus::sleep {
namespace {

nn::TransformerConfig tiny() {
  nn::TransformerConfig c;
  c.vocab_size = 32;
  c.n_layer = 1;
  c.n_embd = 16;
  c.n_head = 2;
  c.block_size = 48;
  c.levels = {nn::LevelConfig{}, nn::LevelConfig{}};
  c.levels[0].hidden = 32;
  c.levels[0].n_slots = 2;
  c.levels[0].slot_rank = 4;
  c.levels[1].period = 2;
  c.levels[1].hidden = 32;
  c.levels[1].n_slots = 2;
  c.levels[1].slot_rank = 4;
  return c;
}

LearningEpisode episode() {
  LearningEpisode ep;
  ep.name = "toy";
  for (int i = 0; i < 24; ++i) ep.context.push_back(static_cast<TokenId>(3 + (i * 7) % 13));
  for (int i = 0; i < 6; ++i) ep.examples.push_back({{1, static_cast<TokenId>(3 + i)}, {static_cast<TokenId>(20 + i % 3)}});
  const std::vector<TrainSequence> probe{{ep.context, 1}};
  ep.score = [probe](nn::Transformer& m) { return mean_logprob(m, probe); };
  ep.dream_prefix = {1};
  ep.dream_suffix = {2};
  ep.train_prefix = {1};
  return ep;
}

SleepMethodConfig small_config() {
  SleepMethodConfig c;
  c.wake_steps = 30;
  c.batch_size = 4;
  c.wake.lr = 1e-2;
  c.consolidation.ks.steps = 4;
  c.consolidation.ks.n_samples = 4;
  c.consolidation.ks.sample_tokens = 12;
  c.consolidation.ks.batch_size = 4;
  c.consolidation.ks.imitation.group_size = 2;
  c.dream.num_dreams = 3;
  c.dream.dream_length = 8;
  c.dream.top_k = 1;
  c.dream.keep_random = 1;
  c.dream.trial_steps = 2;
  c.dream.rest_iterations = 1;
  c.dream.rest_steps = 2;
  c.dream.apply_steps = 2;
  return c;
}

TEST(SleepMethod, FullWakeSleepDreamCycle) {
  const auto t0 = std::chrono::steady_clock::now();
  Generator gen(1);
  nn::Transformer model(tiny(), gen);
  register_sleep_method();
  auto method = make_method("sleep", nlohmann::json(small_config()));
  ASSERT_EQ(method->name(), "sleep");
  const LearningEpisode ep = episode();
  method->learn(model, ep);
  const nlohmann::json& m = method->last_metrics();
  ASSERT_TRUE(m.contains("wake") && m.contains("consolidation") && m.contains("dream")) << m.dump();
  EXPECT_LT(m["wake"]["last_loss"].get<double>(), m["wake"]["first_loss"].get<double>());
  EXPECT_TRUE(m["consolidation"]["skipped"].get<bool>()) << "the first sleep only anchors the sender";
  EXPECT_EQ(m["dream"]["iterations"].size(), 1u);
  // A second episode goes through the same learner: now a slot is grown and seeded.
  method->learn(model, ep);
  const nlohmann::json& m2 = method->last_metrics();
  EXPECT_FALSE(m2["consolidation"]["skipped"].get<bool>());
  EXPECT_EQ(m2["consolidation"]["new_slots"].size(), 1u);
  EXPECT_EQ(model.level(0, 1).active_slots().size(), 1u);
  // The teacher (the sender as of the first sleep) differs from the student, and seeding
  // trained the new slot (its B left 0). JSD reduction is asserted in test_consolidation.
  EXPECT_GT(m2["consolidation"]["jsd_before"].get<double>(), 0.0);
  double b2 = 0;
  for (double v : model.level(0, 1).slot(model.level(0, 1).active_slots()[0]).B.to_vector()) b2 += v * v;
  EXPECT_GT(b2, 0.0);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 60.0);  // issue 6: the cycle fits a test (generous: a sanity bound, not a benchmark)
}

// anchor_at_start: the anchor is the model as given, so the first episode's sleep already grows
// and seeds a slot (for a pretrained model, what it knew before the episode).
TEST(SleepMethod, AnchorAtStartConsolidatesInTheFirstEpisode) {
  Generator gen(1);
  nn::Transformer model(tiny(), gen);
  register_sleep_method();
  SleepMethodConfig c = small_config();
  c.anchor_at_start = true;
  c.dreaming = false;
  auto method = make_method("sleep", nlohmann::json(c));
  method->learn(model, episode());
  const nlohmann::json& m = method->last_metrics();
  EXPECT_FALSE(m["consolidation"]["skipped"].get<bool>());
  EXPECT_GT(m["consolidation"]["jsd_before"].get<double>(), 0.0);
  EXPECT_EQ(model.level(0, 1).active_slots().size(), 1u);
  EXPECT_TRUE(nlohmann::json(c).get<SleepMethodConfig>().anchor_at_start);
}

TEST(SleepMethod, ConfigErrors) {
  register_sleep_method();
  somnus::testing::expect_error([] { (void)make_method("sleep", {{"wake_stepz", 3}}); }, {"unknown key 'wake_stepz'"});
  somnus::testing::expect_error(
      [] { (void)make_method("sleep", {{"consolidation", {{"ks", {{"alpha", 2.0}}}}}}); }, {"'alpha' must be in [0, 1]"});
  somnus::testing::expect_error([] { (void)make_method("sleep", {{"sleep_prompts", {std::vector<int>{}}}}); },
                                {"empty sleep prompt"});
  Generator gen(1);
  nn::TransformerConfig one_level = tiny();
  one_level.levels.resize(1);
  nn::Transformer model(one_level, gen);
  auto method = make_method("sleep");
  somnus::testing::expect_error([&] { method->learn(model, episode()); }, {"needs a receiver level 1"});
}

// The episode's sleep prompts were set only at the sleep step, after the wake: a scheduled
// consolidation during the wake (wake.consolidate_every) sampled its teacher from token 0 in
// the first episode and from the previous episode's prompts later.
TEST(SleepMethod, ScheduledConsolidationsUseTheEpisodesSleepPrompts) {
  Generator gen(1);
  nn::Transformer model(tiny(), gen);
  SleepMethodConfig c = small_config();
  c.wake_steps = 2;
  c.wake.consolidate_every = 1;  // one scheduled consolidation per wake step (period 1)
  c.consolidate = false;
  c.dreaming = false;
  c.consolidation.ks.steps = 1;
  SleepMethod method(c);
  LearningEpisode ep = episode();
  ep.train_prefix = {5, 6};
  // A refused prompt shows which prompts the wake's consolidations use: one as long as the
  // window is refused by the consolidation (and so by the step that schedules it).
  LearningEpisode too_long = ep;
  too_long.train_prefix.assign(static_cast<size_t>(tiny().block_size), 5);
  somnus::testing::expect_error([&] { method.learn(model, too_long); }, {"consolidate: every prompt needs"});
  EXPECT_TRUE(model.level(0, 1).active_slots().empty());

  SleepMethod ok(c);
  Generator gen2(1);
  nn::Transformer model2(tiny(), gen2);
  ok.learn(model2, ep);
  EXPECT_EQ(model2.level(0, 1).active_slots().size(), 2u);  // both steps consolidated
  EXPECT_EQ(ok.learner()->state().scalars.at("prompts"), nlohmann::json({{5, 6}}));
}

// Each episode's Dreamer draws its own random stream (episode_dream_seed): a SleepMethod used
// to build every episode's Dreamer from the same dream.seed, so with the model unchanged
// between episodes (no wake, no sleep, nothing applied) every episode dreamt the same dreams.
// The streams stay deterministic: a second method with the same config replays them.
TEST(SleepMethod, EachEpisodeDreamsFromItsOwnSeed) {
  SleepMethodConfig c = small_config();
  c.wake_steps = 0;
  c.consolidate = false;
  c.dream.apply_steps = 0;  // the model stays as it is: only the seed can tell episodes apart
  c.dream.num_dreams = 4;
  c.dream.dream_length = 12;
  c.dream.seed = 5;
  register_sleep_method();
  auto dreams_per_episode = [&](int episodes) {
    Generator gen(1);
    nn::Transformer model(tiny(), gen);
    auto method = make_method("sleep", nlohmann::json(c));
    std::vector<std::vector<std::vector<TokenId>>> out;
    DreamObserver obs;
    obs.on_sample = [&](const DreamTask&, int64_t, const std::vector<std::vector<TokenId>>& dreams) {
      out.push_back(dreams);
    };
    const ScopedDreamObserver scope(obs);
    for (int e = 0; e < episodes; ++e) method->learn(model, episode());
    return out;
  };
  const auto a = dreams_per_episode(3);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_NE(a[0], a[1]) << "episodes 0 and 1 dreamt the same dreams: the same dream seed";
  EXPECT_NE(a[1], a[2]);
  EXPECT_NE(a[0], a[2]);
  EXPECT_EQ(dreams_per_episode(3), a) << "the per-episode streams are deterministic";
  // Episode 0 dreams from dream.seed itself: what a lone Dreamer with the config dreams.
  Generator gen(1);
  nn::Transformer model(tiny(), gen);
  Dreamer lone(model, c.dream);
  EXPECT_EQ(lone.sample(dream_task_of(episode())), a[0]);
}

// τ for the dreamer tests: rises at every call, so every trial beats the base score computed
// before it and every kept dream is rewarded: ReST-EM then always trains the dreamer (a real
// τ rewards nothing in some episodes of a model this small, which would test nothing).
std::function<double(nn::Transformer&)> rising_score() {
  auto calls = std::make_shared<int64_t>(0);
  return [calls](nn::Transformer&) { return static_cast<double>(++*calls); };
}

std::vector<std::string> state_bytes(const NamedTensors& state) {
  std::vector<std::string> out;
  for (const auto& [k, t] : state) out.push_back(k + ":" + somnus::testing::raw_bytes(t));
  return out;
}

double sum_sq(const NamedTensors& state, const char* suffix) {
  double s = 0.0;
  for (const auto& [k, t] : state)
    if (k.size() >= 6 && k.compare(k.size() - 6, 6, suffix) == 0)
      for (double v : t.to_vector()) s += v * v;
  return s;
}

// The dream generator persists across episodes (dream.persist_dreamer): the dreamer adapter
// the second episode's Dreamer starts from is the one ReST-EM left at the end of the first,
// not a fresh one (B = 0, a no-op). Off: every episode starts from the fresh adapter of its
// own seed, as before.
TEST(SleepMethod, TheDreamGeneratorPersistsAcrossEpisodes) {
  LearningEpisode ep = episode();
  ep.score = rising_score();
  auto run = [&](bool persist, std::vector<NamedTensors>& at_start, std::vector<NamedTensors>& at_end,
                 std::vector<nlohmann::json>& metrics, NamedTensors& fresh_second) {
    SleepMethodConfig c = small_config();
    c.wake_steps = 4;
    c.dream.seed = 11;
    c.dream.persist_dreamer = persist;
    Generator gen(1);
    nn::Transformer model(tiny(), gen);
    SleepMethod method(c);
    DreamObserver obs;
    obs.on_start = [&](const DreamTask&, Dreamer& d) { at_start.push_back(d.adapters().adapter_state("dreamer")); };
    const ScopedDreamObserver scope(obs);
    for (int e = 0; e < 3; ++e) {
      method.learn(model, ep);
      at_end.push_back(method.dreamer_state().adapter);
      metrics.push_back(method.last_metrics());
    }
    // What a fresh Dreamer of the second episode starts from (its seed; the model already has
    // LoRA on the targeted layers, as the second episode's had).
    DreamConfig second = c.dream;
    second.seed = episode_dream_seed(c.dream.seed, 1);
    Dreamer fresh(model, second);
    fresh_second = fresh.adapters().adapter_state("dreamer");
  };
  std::vector<NamedTensors> start, end, start_off, end_off;
  std::vector<nlohmann::json> m, m_off;
  NamedTensors fresh, fresh_off;
  run(true, start, end, m, fresh);
  ASSERT_EQ(start.size(), 3u);
  ASSERT_EQ(end.size(), 3u);
  // Episode 1's ReST-EM trained the dreamer (B moved off zero) ...
  EXPECT_GE(m[0]["dream"]["dreamer"]["updates"].get<int64_t>(), 1) << m[0].dump();
  EXPECT_FALSE(m[0]["dream"]["dreamer"]["carried"].get<bool>());
  EXPECT_EQ(sum_sq(start[0], "lora_B"), 0.0);
  EXPECT_GT(sum_sq(end[0], "lora_B"), 0.0);
  // ... and episode 2 starts from exactly that adapter, not from its own fresh one.
  EXPECT_TRUE(state_bytes(start[1]) == state_bytes(end[0])) << "episode 2 did not start from episode 1's dreamer";
  EXPECT_TRUE(state_bytes(start[1]) != state_bytes(fresh)) << "episode 2 started from a fresh dreamer";
  EXPECT_TRUE(state_bytes(start[2]) == state_bytes(end[1])) << "episode 3 did not start from episode 2's dreamer";
  EXPECT_TRUE(m[1]["dream"]["dreamer"]["carried"].get<bool>());
  EXPECT_EQ(m[2]["dream"]["dreamer"]["runs"].get<int64_t>(), 3);
  EXPECT_GE(m[2]["dream"]["dreamer"]["updates"].get<int64_t>(), 3);

  // Off: every episode starts fresh (B = 0), episode 2 from its seed's own init; nothing kept.
  run(false, start_off, end_off, m_off, fresh_off);
  ASSERT_EQ(start_off.size(), 3u);
  EXPECT_TRUE(state_bytes(start_off[1]) == state_bytes(fresh_off)) << "off: episode 2 did not start fresh";
  for (const NamedTensors& s0 : start_off) EXPECT_EQ(sum_sq(s0, "lora_B"), 0.0);
  for (const NamedTensors& e0 : end_off) EXPECT_TRUE(e0.empty());
  EXPECT_FALSE(m_off[1]["dream"]["dreamer"]["carried"].get<bool>());
  EXPECT_EQ(m_off[1]["dream"]["dreamer"]["runs"].get<int64_t>(), 1);
  // The first episode is the same either way (nothing to carry yet).
  EXPECT_TRUE(state_bytes(start_off[0]) == state_bytes(start[0]));
  EXPECT_EQ(m_off[0]["dream"]["iterations"][0]["rewarded"], m[0]["dream"]["iterations"][0]["rewarded"]);
}

// The carried adapter changes the dreams and nothing else: it is switched off (an exact zero
// delta) whenever the model wakes, sleeps or is evaluated. With apply_steps = 0 the dreams
// never reach the weights, so a run with the dreamer carried and one without must leave
// bit-identical models and logits after every episode (the wake and the consolidation of
// episodes 2 and 3 train on and sample from the model while the trained adapter exists),
// while the dreams themselves differ from episode 2 on.
TEST(SleepMethod, TheCarriedDreamerChangesTheDreamsAndNothingElse) {
  LearningEpisode ep = episode();
  ep.score = rising_score();
  Generator idg(5);
  const Tensor ids = randint(0, tiny().vocab_size, {2, 12}, idg);
  struct Run {
    std::vector<std::vector<std::string>> states;  // the model's state dict after each episode
    std::vector<std::string> logits;
    std::vector<std::vector<std::vector<TokenId>>> dreams;  // per episode
    NamedTensors carried;
  };
  auto run = [&](bool persist) {
    SleepMethodConfig c = small_config();
    c.wake_steps = 6;
    c.dream.apply_steps = 0;
    c.dream.num_dreams = 4;
    c.dream.dream_length = 12;
    c.dream.rest_steps = 4;
    c.dream.rest_lr = 5e-2;
    c.dream.persist_dreamer = persist;
    Generator gen(1);
    nn::Transformer model(tiny(), gen);
    SleepMethod method(c);
    Run r;
    DreamObserver obs;
    obs.on_sample = [&](const DreamTask&, int64_t, const std::vector<std::vector<TokenId>>& d) { r.dreams.push_back(d); };
    const ScopedDreamObserver scope(obs);
    for (int e = 0; e < 3; ++e) {
      method.learn(model, ep);
      std::vector<std::string> sd;
      for (const auto& [k, t] : model.state_dict()) sd.push_back(k + ":" + somnus::testing::raw_bytes(t));
      r.states.push_back(sd);
      NoGradGuard no_grad;
      r.logits.push_back(somnus::testing::raw_bytes(model.forward(ids)));
    }
    r.carried = method.dreamer_state().adapter;
    return r;
  };
  const Run on = run(true), off = run(false);
  ASSERT_EQ(on.dreams.size(), 3u);
  ASSERT_EQ(off.dreams.size(), 3u);
  EXPECT_GT(sum_sq(on.carried, "lora_B"), 0.0) << "the carried adapter is trained (else this tests nothing)";
  EXPECT_EQ(on.dreams[0], off.dreams[0]);
  EXPECT_NE(on.dreams[1], off.dreams[1]) << "the carried dreamer did not change what episode 2 dreamt";
  for (size_t e = 0; e < 3; ++e) {
    EXPECT_TRUE(on.states[e] == off.states[e]) << "episode " << e + 1 << ": the model differs";
    EXPECT_TRUE(on.logits[e] == off.logits[e]) << "episode " << e + 1 << ": the logits differ";
  }
}

// Values of the right JSON kind at the top but wrong inside (list elements) or negative where
// the field is unsigned used to pass check_config_keys: nlohmann's own type_error (naming no
// key), or a seed of -1 read as 18446744073709551615, or a sleep prompt [-3] accepted.
TEST(SleepMethod, ConfigListElementsAndSeedsAreChecked) {
  using nlohmann::json;
  auto parse = [](const char* text) { (void)json::parse(text).get<SleepMethodConfig>(); };
  somnus::testing::expect_error([&] { parse(R"({"sleep_prompts": [["a"]]})"); },
                                {"sleep method config", "'sleep_prompts[0]' must be a list of token ids"});
  somnus::testing::expect_error([&] { parse(R"({"sleep_prompts": [[1], [-3]]})"); },
                                {"'sleep_prompts[1]' must be a list of token ids"});
  somnus::testing::expect_error([&] { parse(R"({"sleep_prompts": [1]})"); }, {"'sleep_prompts[0]'"});
  somnus::testing::expect_error([&] { parse(R"({"wake": {"ttt_levels": ["x"]}})"); },
                                {"sleep method config.wake", "'ttt_levels' must be a list of elements each an integer"});
  somnus::testing::expect_error([&] { parse(R"({"seed": -1})"); }, {"'seed' must be a non-negative integer, got -1"});
  somnus::testing::expect_error([&] { parse(R"({"consolidation": {"ks": {"seed": -5}}})"); },
                                {"'seed' must be a non-negative integer"});
  const SleepMethodConfig ok = json::parse(R"({"sleep_prompts": [[1, 2], [3]], "seed": 7,
      "wake": {"ttt_levels": [0, 1]}, "consolidation": {"ks": {"seed": 9}}})").get<SleepMethodConfig>();
  EXPECT_EQ(ok.sleep_prompts, (std::vector<std::vector<TokenId>>{{1, 2}, {3}}));
  EXPECT_EQ(ok.seed, 7u);
  EXPECT_EQ(ok.wake.ttt_levels, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(ok.consolidation.ks.seed, 9u);
  EXPECT_EQ(json(ok).get<SleepMethodConfig>().sleep_prompts, ok.sleep_prompts);
}

}  // namespace
}  // namespace somnus::sleep
