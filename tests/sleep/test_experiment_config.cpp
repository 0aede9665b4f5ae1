// The experiment runner's config resolution (sleep/experiment.h resolve_experiment_config):
// tiny/gpu/object configs, dotted overrides, strict keys, and every TransformerConfig key
// under "model" (not only those the tiny config spells out).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "nn/transformer.h"
#include "sleep/experiment.h"
#include "sleep/sleep_method.h"
#include "testing.h"

namespace somnus::sleep {
namespace {

using nlohmann::json;
using somnus::testing::expect_error;

TEST(ExperimentConfig, TinyOverridesAndModelKeys) {
  const json tiny = resolve_experiment_config("clinc150", "tiny");
  EXPECT_EQ(tiny.at("model").at("n_layer"), 2);
  EXPECT_EQ(tiny.at("model").at("attention_period"), 1) << "TransformerConfig defaults fill the model";

  const json c = resolve_experiment_config("clinc150", "tiny",
                                           {{"seeds", "[4]"}, {"model.attention_period", "8"}, {"model.n_embd", "64"}});
  EXPECT_EQ(c.at("seeds"), json::array({4}));
  EXPECT_EQ(c.at("model").at("attention_period"), 8);
  EXPECT_EQ(c.at("model").at("n_embd"), 64);
  EXPECT_EQ(c.at("model").at("n_layer"), 2) << "keys not overridden keep the tiny values";
  nn::TransformerConfig mc = c.at("model").get<nn::TransformerConfig>();
  EXPECT_EQ(mc.attention_period, 8);

  const json obj = resolve_experiment_config("clinc150", json{{"num_domains", 2}});
  EXPECT_EQ(obj.at("num_domains"), 2);
  EXPECT_EQ(obj.at("steps_per_domain"), tiny.at("steps_per_domain"));
}

// The gpu configs have never run here (no GPU): at least they resolve, and their models parse
// into valid TransformerConfigs, for every registered experiment.
TEST(ExperimentConfig, EveryTinyAndGpuConfigResolves) {
  const std::vector<std::string> names = experiment_names();
  EXPECT_GE(names.size(), 5u);
  for (const std::string& name : names) {
    for (const char* which : {"tiny", "gpu"}) {
      json c;
      ASSERT_NO_THROW(c = resolve_experiment_config(name, which)) << name << " " << which;
      if (c.contains("model")) {
        json m = c.at("model");
        m["vocab_size"] = 512;  // set from the task's tokenizer at run time
        EXPECT_NO_THROW((void)m.get<nn::TransformerConfig>()) << name << " " << which << ": " << m.dump();
      }
    }
  }
}

TEST(ExperimentConfig, UnknownKeysAndBadConfigsAreErrors) {
  expect_error([] { resolve_experiment_config("clinc150", "tiny", {{"model.attention_perod", "8"}}); },
               {"unknown key 'attention_perod'"});
  expect_error([] { resolve_experiment_config("clinc150", "tiny", {{"num_domain", "3"}}); }, {"unknown key 'num_domain'"});
  expect_error([] { resolve_experiment_config("clinc150", json(3)); }, {"\"tiny\", \"gpu\" or a JSON object"});
  expect_error([] { resolve_experiment_config("nosuch", "tiny"); }, {"unknown experiment 'nosuch'"});
  // vocab_size comes from the task's tokenizer: setting it would silently do nothing.
  expect_error([] { resolve_experiment_config("clinc150", "tiny", {{"model.vocab_size", "100"}}); },
               {"unknown key 'vocab_size'"});
}

// A bad --set value is blamed on the --set, not on the config it overrides: `somnus experiment
// clinc150 --set 'seeds=[-1]'` said "experiment clinc150 config: 'seeds' must be ...", naming
// the built-in tiny (or gpu) config, which is fine, as the culprit.
TEST(ExperimentConfig, BadOverrideNamesTheSet) {
  for (const char* which : {"tiny", "gpu"}) {
    SCOPED_TRACE(which);
    const std::string msg = somnus::testing::error_of([&] { resolve_experiment_config("clinc150", which, {{"seeds", "[-1]"}}); });
    EXPECT_EQ(msg.rfind("experiment clinc150: --set seeds=[-1]: 'seeds' must be a list of elements each a non-negative "
                        "integer, got [-1]",
                        0),
              0u)
        << msg;
    EXPECT_EQ(msg.find("config"), std::string::npos) << msg;
  }
  expect_error([] { resolve_experiment_config("clinc150", "tiny", {{"seeds", "[0]"}, {"seeds", "-1"}}); },
               {"experiment clinc150: --set seeds=-1: 'seeds' must be an array, got -1"});
  expect_error([] { resolve_experiment_config("arc", "tiny", {{"model.n_layer", "two"}}); },
               {"experiment arc: --set model.n_layer=two: 'n_layer' must be"});
  expect_error([] { resolve_experiment_config("clinc150", "tiny", {{"modl.n_layer", "2"}}); },
               {"experiment clinc150: --set modl.n_layer=2: unknown key 'modl'"});
  // A bad value in the config itself still names the config.
  expect_error([] { resolve_experiment_config("clinc150", json{{"seeds", json::array({-1})}}); },
               {"experiment clinc150 config: 'seeds' must be a list of elements each a non-negative integer"});
  // Good overrides still apply, later ones winning.
  EXPECT_EQ(resolve_experiment_config("clinc150", "gpu", {{"seeds", "[3]"}, {"seeds", "[7]"}}).at("seeds"),
            json::array({7}));
}

// A Sleep row's consolidation follows the run seed (Knowledge Seeding's teacher samples, slot
// init and batch picks; the imitation rollouts), as its wake batches and dreams do: every seed
// used to share ks.seed 1234 and imitation.seed 0, so "independent" seeds were not. Seed 0 keeps
// the defaults; the experiment's and the row's own consolidation config still win.
TEST(ExperimentConfig, SleepConsolidationFollowsTheRunSeed) {
  register_sleep_method();
  const json cfg = {{"steps", 2}, {"lr", 1e-3}, {"batch_size", 2}};
  const auto sleep_config = [](const std::unique_ptr<Method>& m) {
    const auto* s = dynamic_cast<const SleepMethod*>(m.get());
    EXPECT_NE(s, nullptr);
    return s != nullptr ? s->config() : SleepMethodConfig{};
  };
  const ExperimentRow row{"sleep", "sleep"};
  const SleepMethodConfig c0 = sleep_config(make_row_method(row, cfg, 0));
  const SleepMethodConfig c2 = sleep_config(make_row_method(row, cfg, 2));
  EXPECT_EQ(c0.consolidation.ks.seed, SeedingConfig{}.seed);
  EXPECT_EQ(c0.consolidation.ks.imitation.seed, ImitationConfig{}.seed);
  EXPECT_EQ(c2.consolidation.ks.seed, SeedingConfig{}.seed + 2);
  EXPECT_EQ(c2.consolidation.ks.imitation.seed, ImitationConfig{}.seed + 2);
  EXPECT_EQ(c2.dream.seed, 2u);
  json fixed = cfg;
  fixed["consolidation"] = {{"ks", {{"seed", 7}}}};
  EXPECT_EQ(sleep_config(make_row_method(row, fixed, 2)).consolidation.ks.seed, 7u);
  ExperimentRow own{"sleep-own", "sleep"};
  own.config = {{"consolidation", {{"ks", {{"imitation", {{"seed", 9}}}}}}}};
  EXPECT_EQ(sleep_config(make_row_method(own, cfg, 2)).consolidation.ks.imitation.seed, 9u);
}

}  // namespace
}  // namespace somnus::sleep
