// The whole wake → sleep → dream cycle through the Sleep method (sleep/sleep_method.h) on a
// tiny model, and its registration beside the baselines.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>

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
