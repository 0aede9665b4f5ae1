// Dreaming (PARADIGM §3): the model rewrites a new context C into m "dreams", keeps the ones
// whose SFT gradient matters most, tries each on an isolated LoRA delta, rewards those that
// improve the task score τ, learns to dream better from them (ReST-EM), and finally trains
// itself on the rewarded dreams.
//
//   for it in 1..rest_iterations:
//     1. Dream:  m samples ~ model+dreamer(·| prompt(C)), every MoE router adding one
//                uniformly random extra expert (random_extra_expert)
//     2. Select: importance_i = ‖∇_{LoRA} SFT(dream_i)‖₂ on a fresh trial adapter (B = 0, so
//                only the B gradients are non-zero); keep the top_k, plus keep_random others
//                drawn uniformly (selection = false keeps every dream: SEAL, the ablation)
//     3. Try:    per kept dream, reset the "trial" adapter, trial_steps of SFT on the dream,
//                reward_i = 1 iff τ(model + trial) > τ(model) (τ of the base computed once)
//     4. ReST-EM: SFT of the "dreamer" adapter on (prompt(C) -> dream) for reward-1 dreams
//   5. Apply:    train on every rewarded dream: into the "apply" adapter, merged into the
//                base weights at the end (apply_target = lora), or into a newly activated
//                slot of each layer's slowest CMS level (apply_target = slots)
//
// Isolation: every adapter is a LoRA delta on the one set of base weights (sleep/lora.h); the
// model is never copied. The dreamer adapter is active only while sampling and while ReST-EM
// trains it.
//
// Across episodes. A Dreamer runs one task. A method that dreams over a sequence of episodes
// (SleepMethod, SealMethod) builds one Dreamer per episode and, with
// DreamConfig::persist_dreamer, carries the dream generator from each to the next as a
// DreamerState (the "dreamer" adapter's tensors): what ReST-EM taught it in episode k is what
// episode k+1 samples from. The trial and apply adapters are per episode either way.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/tokenizer.h"
#include "nn/transformer.h"
#include "sleep/baselines/training.h"
#include "sleep/lora.h"
#include "tensor/random.h"

namespace somnus::sleep {

// A task (C, τ) with its dream prompt template.
struct DreamTask {
  std::string name = "task";
  std::vector<TokenId> context;                   // C
  std::function<double(nn::Transformer&)> score;  // τ, higher is better (runs under no_grad)
  // The template: prompt = prompt_prefix ++ C ++ prompt_suffix, unless make_prompt is set.
  std::vector<TokenId> prompt_prefix, prompt_suffix;
  std::function<std::vector<TokenId>(const std::vector<TokenId>&)> make_prompt;
  // Tokens placed before a dream when the model trains on it (Try, Apply), e.g. [bos]; the
  // loss counts the dream tokens only. Empty: the dream alone (its first token unpredicted).
  std::vector<TokenId> train_prefix;
  std::vector<TokenId> answer;       // optional (scorers may use it)
  std::vector<TokenId> stop_tokens;  // end a dream early

  // Throws somnus::Error naming the missing field: an empty context, no scorer, no template
  // (make_prompt unset and both prompt_prefix and prompt_suffix empty).
  void validate() const;
  // The prompt the dreams continue (validates; throws on an empty result).
  std::vector<TokenId> dream_prompt() const;
};

enum class ApplyTarget { lora, slots };
const char* apply_target_name(ApplyTarget t);

struct DreamConfig {
  int64_t num_dreams = 8;       // m
  int64_t dream_length = 32;    // max new tokens per dream
  double temperature = 1.0;     // > 0
  int64_t top_k = 4;            // kept by importance
  int64_t keep_random = 1;      // b kept uniformly at random among the rest
  LoraConfig lora;              // adapters (trial, dreamer, apply)
  int64_t trial_steps = 4;      // isolated SFT steps per kept dream
  double trial_lr = 1e-2;
  int64_t rest_iterations = 2;  // ReST-EM outer iterations
  int64_t rest_steps = 4;       // dreamer SFT steps per iteration
  double rest_lr = 1e-2;
  int64_t apply_steps = 8;
  double apply_lr = 1e-2;
  ApplyTarget apply_target = ApplyTarget::lora;
  bool random_extra_expert = true;
  bool selection = true;        // false: keep every dream (SEAL; "without gradient selection")
  double min_improvement = 0.0;  // reward 1 iff τ_trial > τ_base + min_improvement
  // Keep the applied update only if τ improves over the model before applying (the trials
  // score one dream each; the applied mix of several can still overshoot). Off: always keep.
  bool apply_guard = true;
  // [choice] Carry the learned dream generator (the "dreamer" adapter) from one episode's
  // Dreamer to the next, in a method that dreams over a sequence of episodes (SleepMethod,
  // SealMethod), and from one `somnus sleep` to the next through its checkpoint
  // (tools/cmd_sleep.cpp); a lone Dreamer::run ignores it. PARADIGM §3 has the model "learn to dream
  // better, by RL": a policy learned by ReST-EM across tasks, as SEAL's self-edit policy is.
  // Without it every episode starts from a fresh adapter (a no-op: B = 0), so with
  // rest_iterations = 1 what ReST-EM trains is never sampled from. Off: that old behaviour,
  // kept as an ablation. The adapter is a LoRA delta on the current base weights, switched
  // off except while dreaming, so nothing but the dreams themselves depends on it.
  bool persist_dreamer = true;
  uint64_t seed = 0;

  // Throws somnus::Error naming the bad field.
  void validate() const;
};
void to_json(nlohmann::json& j, const DreamConfig& c);
// Strict: unknown keys and wrong types are errors. Validates.
void from_json(const nlohmann::json& j, DreamConfig& c);

// The dream seed of the `episode`-th Dreamer (0, 1, …) a method builds from one DreamConfig
// (SleepMethod, SealMethod: one Dreamer per episode). Episode 0 uses `seed` itself, so a lone
// run (one episode, `somnus sleep`) dreams exactly as a Dreamer with the config does; episode
// k >= 1 uses splitmix64_mix(seed ^ (k · 0x9E3779B97F4A7C15)), a well-mixed value that differs
// from episode to episode and from the small seeds the experiments hand out. The Dreamer's
// whole random stream (sampling, the random extra expert, selection, adapter inits) follows.
// Deterministic: the same (seed, episode) always gives the same value. Throws on episode < 0.
uint64_t episode_dream_seed(uint64_t seed, int64_t episode);

struct DreamIterationMetrics {
  int64_t iteration = 0;
  int64_t sampled = 0, kept = 0, rewarded = 0;
  double base_tau = 0.0;
  double mean_tau = 0.0;  // mean τ over the tried (adapted) models
  double max_tau = 0.0;
  double tokens_per_s = 0.0;  // dream tokens sampled per second of sampling
  double seconds = 0.0;       // the whole iteration
};
void to_json(nlohmann::json& j, const DreamIterationMetrics& m);

// One sampled dream and what became of it (DreamResult::dreams).
struct SampledDream {
  int64_t iteration = 0;
  std::vector<TokenId> tokens;  // the dream alone (no prompt), up to and including a stop token
  bool kept = false;            // selected for a trial
  int reward = 0;               // 1 iff its trial improved τ (0 when not tried)
  double tau = 0.0;             // τ after its trial (kept dreams only)
};

struct DreamResult {
  std::vector<DreamIterationMetrics> iterations;
  std::vector<std::vector<TokenId>> rewarded;  // every reward-1 dream, in order
  std::vector<SampledDream> dreams;            // every sampled dream, iteration by iteration, in sampling order
  double tau_before = 0.0, tau_after = 0.0;
  int64_t applied_steps = 0;
};

// The learned dream generator carried from one episode's Dreamer to the next
// (DreamConfig::persist_dreamer): a copy of the "dreamer" adapter's tensors
// (AdapterSet::adapter_state: "<layer>.lora_A", "<layer>.lora_B" per targeted layer). There is
// no optimiser state to carry: each ReST-EM fine-tune (one per iteration) starts its own AdamW,
// within an episode as across episodes. Tiny: rank · (in + out) numbers per targeted layer.
struct DreamerState {
  NamedTensors adapter;  // empty: nothing carried yet (the first episode starts fresh)
  int64_t runs = 0;      // Dreamer runs it has been through
  int64_t updates = 0;   // ReST-EM fine-tunes it has had (iterations with a reward-1 dream)
  bool empty() const { return adapter.empty(); }
};

class Dreamer;

// Sees what Dreamer::run dreams on this thread while a ScopedDreamObserver holds it: for
// callers that reach the Dreamer through a Method (SEAL, Sleep) and so never see its
// DreamResult, e.g. an experiment that scores the dreams themselves (sleep/exp_arc.cpp).
struct DreamObserver {
  // At the start of each run, before anything is sampled: e.g. to read the adapters the run
  // starts from (the dreamer adapter a method carried in). Must not change the dreamer.
  std::function<void(const DreamTask&, Dreamer&)> on_start;
  // After each iteration's sampling: its dreams, in sampling order.
  std::function<void(const DreamTask&, int64_t iteration, const std::vector<std::vector<TokenId>>& dreams)> on_sample;
  // Inside each isolated trial (try_dreams), after the trial's SFT steps and τ, with the trial
  // adapter active on `adapted` and under no_grad: it may evaluate the adapted model (e.g. the
  // task's held-out answer), never train it.
  std::function<void(const DreamTask&, const std::vector<TokenId>& dream, nn::Transformer& adapted)> on_trial;
};
// Installs an observer for the current thread until destroyed (the previous one is restored:
// scopes nest, the innermost observes).
class ScopedDreamObserver {
 public:
  explicit ScopedDreamObserver(DreamObserver observer);
  ~ScopedDreamObserver();
  ScopedDreamObserver(const ScopedDreamObserver&) = delete;
  ScopedDreamObserver& operator=(const ScopedDreamObserver&) = delete;

 private:
  DreamObserver observer_;
  const DreamObserver* previous_ = nullptr;
};

// Indices of the dreams to try: the top_k largest scores (ties: lower index first), then
// keep_random others drawn uniformly without replacement from gen; returned ascending.
// Everything when top_k + keep_random >= scores.size().
std::vector<size_t> select_dreams(const std::vector<double>& importance, int64_t top_k, int64_t keep_random,
                                  Generator& gen);

// The ReST-EM training set: the dreams with reward 1, in order.
std::vector<std::vector<TokenId>> rest_training_set(const std::vector<std::vector<TokenId>>& dreams,
                                                    const std::vector<int>& rewards);

class Dreamer {
 public:
  // Builds the adapters ("trial", "dreamer", "apply") on the model (sleep/lora.h). The model
  // must outlive the dreamer. Validates cfg.
  Dreamer(nn::Transformer& model, DreamConfig cfg);

  // Step 1: m dreams of the task's prompt under the dreamer adapter, with the random extra
  // expert on every MoE level when configured (each level's flag is restored afterwards).
  std::vector<std::vector<TokenId>> sample(const DreamTask& task);
  // Step 2: the L2 norm of each dream's SFT-loss gradient over the trial adapter (fresh).
  std::vector<double> importance(const DreamTask& task, const std::vector<std::vector<TokenId>>& dreams);
  // Step 3: rewards (0/1) of the dreams against base_tau; also returns each adapted τ.
  std::vector<int> try_dreams(const DreamTask& task, const std::vector<std::vector<TokenId>>& dreams, double base_tau,
                              std::vector<double>* taus = nullptr);
  // Step 4: dreamer SFT on (prompt -> dream) for the reward-1 dreams; returns the loss per step
  // (empty, and the dreamer untouched, when nothing is rewarded).
  std::vector<double> learn_to_dream(const DreamTask& task, const std::vector<std::vector<TokenId>>& dreams,
                                     const std::vector<int>& rewards);
  // Step 5: trains the model on the dreams; returns the number of steps taken (0 when none, or
  // when apply_guard rejected the update because τ did not improve: the model is then as before).
  // apply_target = slots needs a free slot in the slowest level of every layer; without one it
  // throws before activating any.
  int64_t apply(const DreamTask& task, const std::vector<std::vector<TokenId>>& dreams);

  // The whole loop. on_iteration (optional) sees each iteration's metrics as they come.
  DreamResult run(const DreamTask& task, const std::function<void(const DreamIterationMetrics&)>& on_iteration = {});

  // τ of the model as it is (no adapter active), under no_grad.
  double score(const DreamTask& task);

  // The dream generator as it is now (a copy), with the runs and updates it has seen,
  // for the next episode's Dreamer (DreamConfig::persist_dreamer).
  DreamerState dreamer_state() const;
  // Starts from a carried dream generator: copies it into the "dreamer" adapter (strict, see
  // AdapterSet::load_adapter_state: the same targeted layers and shapes, else it throws and
  // nothing changes). An empty state changes nothing. Nothing of the random stream is drawn,
  // so every other draw of this Dreamer is what it would be without the call.
  void load_dreamer_state(const DreamerState& state);

  AdapterSet& adapters() { return *adapters_; }
  const DreamConfig& config() const { return cfg_; }
  Generator& generator() { return gen_; }

 private:
  TrainSequence dream_row(const DreamTask& task, const std::vector<TokenId>& dream) const;

  nn::Transformer& model_;
  DreamConfig cfg_;
  Generator gen_;
  std::unique_ptr<AdapterSet> adapters_;
  uint64_t sample_calls_ = 0;
  int64_t runs_ = 0, updates_ = 0;  // of the dream generator, carried ones included
};

// One episode of a method that dreams over a sequence of episodes (SleepMethod, SealMethod):
// a Dreamer seeded with episode_dream_seed(cfg.seed, episode) runs `task`, starting from the
// dream generator in `carried` under cfg.persist_dreamer (then `carried` holds the one this run
// left, for the next episode; with it off `carried` is left alone). `dreamer_metrics` gets
// {"carried": whether it started from one, "runs", "updates": the generator's counts after
// the run}.
DreamResult dream_episode(nn::Transformer& model, const DreamConfig& cfg, int64_t episode, const DreamTask& task,
                          DreamerState& carried, nlohmann::json& dreamer_metrics);

}  // namespace somnus::sleep
