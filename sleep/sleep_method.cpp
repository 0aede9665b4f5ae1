// The Sleep method: wake → sleep → dream per episode (see sleep_method.h).
#include "sleep/sleep_method.h"

#include <algorithm>
#include <mutex>
#include <utility>

#include "sleep/baselines/baselines.h"
#include "sleep/config_json.h"
#include "tensor/format.h"

namespace somnus::sleep {

using nlohmann::json;

void SleepMethodConfig::validate() const {
  SOMNUS_CHECK(wake_steps >= 0, "sleep method config: 'wake_steps' must be >= 0, got {}", wake_steps);
  SOMNUS_CHECK(batch_size >= 1, "sleep method config: 'batch_size' must be >= 1, got {}", batch_size);
  for (const auto& p : sleep_prompts) SOMNUS_CHECK(!p.empty(), "sleep method config: an empty sleep prompt");
  consolidation.ks.validate();
  dream.validate();
}

void to_json(json& j, const SleepMethodConfig& c) {
  j = json{{"wake_steps", c.wake_steps},         {"batch_size", c.batch_size},
           {"wake", c.wake},                     {"consolidate", c.consolidate},
           {"consolidation", c.consolidation},   {"dreaming", c.dreaming},
           {"dream", c.dream},                   {"sleep_prompts", c.sleep_prompts},
           {"anchor_at_start", c.anchor_at_start}, {"seed", c.seed}};
}

void from_json(const json& j, SleepMethodConfig& c) {
  json defaults = SleepMethodConfig{};
  const json m = merge_config(j, defaults, "sleep method config");
  c.wake_steps = m.at("wake_steps").get<int64_t>();
  c.batch_size = m.at("batch_size").get<int64_t>();
  c.wake = m.at("wake").get<WakeConfig>();
  c.consolidate = m.at("consolidate").get<bool>();
  c.consolidation = m.at("consolidation").get<ConsolidationConfig>();
  c.dreaming = m.at("dreaming").get<bool>();
  c.dream = m.at("dream").get<DreamConfig>();
  const json& prompts = m.at("sleep_prompts");  // an array (check_config_keys); its elements:
  c.sleep_prompts.clear();
  for (size_t i = 0; i < prompts.size(); ++i)
    c.sleep_prompts.push_back(token_ids_from_json(prompts[i], "sleep method config", fmt::format("sleep_prompts[{}]", i)));
  c.anchor_at_start = m.at("anchor_at_start").get<bool>();
  c.seed = m.at("seed").get<uint64_t>();
  c.validate();
}

SleepMethod::SleepMethod(SleepMethodConfig cfg) : cfg_(std::move(cfg)), gen_(cfg_.seed) { cfg_.validate(); }

void SleepMethod::learn(nn::Transformer& model, const LearningEpisode& ep) {
  ep.validate();
  if (!learner_) {
    model_ = &model;
    ConsolidationConfig cc = cfg_.consolidation;  // sampling stops where the task's answers stop
    if (cc.ks.stop_tokens.empty()) cc.ks.stop_tokens = ep.stop_tokens;
    learner_ = std::make_unique<WakeLearner>(model, cfg_.wake, cc);
    if (cfg_.anchor_at_start && cfg_.wake.sleep_teacher == "since_last_sleep") learner_->sleep();  // records the anchor
  }
  SOMNUS_CHECK(model_ == &model, "sleep method: one SleepMethod follows one model; got a different model");
  ++episodes_;
  metrics_ = json::object();

  // The episode's sleep prompts, before the wake: a scheduled consolidation during it
  // (wake.consolidate_every > 0) samples its teacher from them too, not from the previous
  // episode's (or, in the first episode, from token 0).
  std::vector<std::vector<TokenId>> prompts = cfg_.sleep_prompts;
  if (prompts.empty()) prompts = {ep.train_prefix.empty() ? std::vector<TokenId>{0} : ep.train_prefix};
  learner_->set_sleep_prompts(prompts);
  learner_->consolidator().set_answer_extractor(ep.answer_of);  // r_sem: the episode's answer field, if any
  if (cfg_.consolidate) learner_->consolidator().check_semantic_reward();  // before the wake changes anything

  // 1. wake
  const int64_t block = model.config().block_size;
  const std::vector<TrainSequence> rows = ep.sft_rows(block);
  std::vector<double> losses;
  for (int64_t s = 0; s < cfg_.wake_steps && !rows.empty(); ++s) {
    std::vector<TrainSequence> pick;
    const int64_t n = std::min<int64_t>(cfg_.batch_size, static_cast<int64_t>(rows.size()));
    const std::vector<double> idx = randint(0, static_cast<int64_t>(rows.size()), {n}, gen_).to_vector();
    for (double i : idx) pick.push_back(rows[static_cast<size_t>(i)]);
    losses.push_back(learner_->train_step(make_batch(pick, block, model.config().vocab_size)).loss);
  }
  if (!losses.empty()) metrics_["wake"] = {{"steps", losses.size()}, {"first_loss", losses.front()}, {"last_loss", losses.back()}};

  // 2. sleep
  if (cfg_.consolidate) metrics_["consolidation"] = learner_->sleep().to_json();

  // 3. dream
  if (cfg_.dreaming && ep.score && !ep.context.empty()) {
    json dreamer;  // the dream generator: carried in from an earlier episode or fresh, and
                   // the ReST-EM fine-tunes it has had (this episode's included)
    const DreamResult r = dream_episode(model, cfg_.dream, episodes_ - 1, dream_task_of(ep), dreamer_state_, dreamer);
    metrics_["dream"] = {{"iterations", r.iterations},       {"sampled", r.dreams.size()},
                         {"rewarded", r.rewarded.size()},    {"tau_before", r.tau_before},
                         {"tau_after", r.tau_after},         {"dreamer", dreamer}};
  }
}

void register_sleep_method() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_method("sleep", [](const json& config) {
      SleepMethodConfig c;
      if (!config.is_null()) c = config.get<SleepMethodConfig>();
      return std::make_unique<SleepMethod>(c);
    });
  });
}

}  // namespace somnus::sleep
