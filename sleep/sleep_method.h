// The Sleep method (PARADIGM.md §2–§3) behind the common Method interface of
// sleep/baselines/method.h, so that an experiment runs it beside ICL, SFT, EWC, GRPO, OPSD
// and SEAL by name ("sleep", registered by register_sleep_method()).
//
// learn(model, episode):
//   1. wake      `wake_steps` multi-frequency steps (sleep/wake.h) on the episode's SFT rows:
//                fast levels apply every step, slow levels every C_ℓ steps;
//   2. sleep     an explicit consolidation at the episode's end (sleep/consolidation.h):
//                the sender's slots and θ_old are distilled into a new receiver slot by
//                Knowledge Seeding on the model's own samples (prompts: `sleep_prompts`, or
//                the episode's train_prefix, or token 0; sampling stops at
//                consolidation.ks.stop_tokens, or, when those are empty, at the first
//                episode's stop_tokens, for every later sleep too); the same prompts
//                serve the scheduled consolidations of the episode's wake
//                (wake.consolidate_every > 0);
//   3. dream     when `dreaming` is on and the episode has a scorer τ and a context: the
//                Dreamer loop (sleep/dreaming.h), applying the rewarded dreams. The k-th
//                episode's Dreamer (k = 0, 1, …, counting every learn call) is seeded with
//                episode_dream_seed(dream.seed, k): episodes draw distinct, reproducible streams.
//                With dream.persist_dreamer [default], the dream generator (the "dreamer"
//                adapter) ReST-EM trained in one episode is the one the next episode's
//                Dreamer starts from (a DreamerState the method keeps; loading it draws
//                nothing, so every other random draw is as without it); off: a fresh one
//                per episode (the ablation).
// The wake learner (its optimiser, its accumulators, the consolidator's slot ages) and the
// dream generator persist across episodes: one SleepMethod follows one model through a whole
// continual run. The carried adapter is off (an exact zero delta) outside dreaming: the wake,
// the sleep and every evaluation of the model compute as without it.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "sleep/baselines/method.h"
#include "sleep/consolidation.h"
#include "sleep/dreaming.h"
#include "sleep/wake.h"

namespace somnus::sleep {

struct SleepMethodConfig {
  int64_t wake_steps = 100;  // per episode
  int64_t batch_size = 16;
  WakeConfig wake;
  bool consolidate = true;   // false: wake only (the CMS model without sleep)
  ConsolidationConfig consolidation;
  bool dreaming = true;      // only where the episode has a scorer and a context
  DreamConfig dream;
  std::vector<std::vector<TokenId>> sleep_prompts;  // empty: the episode's train_prefix, else {0}
  // With wake.sleep_teacher = "since_last_sleep": true records the anchor before the first
  // wake, so the first sleep already consolidates what the fast level knew before it (right
  // for a pretrained model); false [default]: the first sleep only records the anchor (a
  // model trained from nothing has no earlier knowledge worth a slot).
  bool anchor_at_start = false;
  uint64_t seed = 0;

  void validate() const;
};
void to_json(nlohmann::json& j, const SleepMethodConfig& c);
void from_json(const nlohmann::json& j, SleepMethodConfig& c);

class SleepMethod : public Method {
 public:
  explicit SleepMethod(SleepMethodConfig cfg = {});
  std::string name() const override { return "sleep"; }
  // metrics: wake losses (first, last), the consolidation report, the dream iterations.
  void learn(nn::Transformer& model, const LearningEpisode& ep) override;
  const SleepMethodConfig& config() const { return cfg_; }
  WakeLearner* learner() { return learner_.get(); }
  // The dream generator carried to the next episode (empty before the first dreaming episode,
  // and always with dream.persist_dreamer off).
  const DreamerState& dreamer_state() const { return dreamer_state_; }

 private:
  SleepMethodConfig cfg_;
  nn::Transformer* model_ = nullptr;
  std::unique_ptr<WakeLearner> learner_;
  Generator gen_;
  int64_t episodes_ = 0;
  DreamerState dreamer_state_;
};

// Makes make_method("sleep", config) build a SleepMethod (idempotent).
void register_sleep_method();

}  // namespace somnus::sleep
