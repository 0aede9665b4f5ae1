// The baselines of PARADIGM §4 behind the Method interface (method.h).
//
//   ICL   no weight change; eval_prefix = context ++ every example's prompt ++ answer.
//   SFT   AdamW on every trainable parameter, next-token loss on the episode's rows.
//   EWC   SFT + λ/2 · Σ_i F_i (θ_i − θ*_i)² (Kirkpatrick et al. 2017). After each episode the
//         diagonal (empirical) Fisher F = mean over its rows of (∇ log-likelihood)² is added
//         to the running F, and θ* becomes the weights after that episode.
//   GRPO  per step: G sampled completions per example prompt, the task reward, group-
//         normalised advantages (kernels' group_advantages), the clipped surrogate through
//         the fused linear_ppo_loss on the hidden states.
//   OPSD  on-policy self-distillation: the student samples y ~ model(·|prompt) without the
//         context; the loss is the per-token reverse KL(p(·|prompt, y<t) ‖ p(·|C, prompt, y<t))
//         to the same model conditioned on the context (teacher forward under no_grad),
//         through the fused linear_jsd with β = 1.
//   SEAL  dreaming (dreaming.h) without gradient selection and without random experts.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "sleep/baselines/method.h"
#include "sleep/dreaming.h"

namespace somnus::sleep {

// ---------------------------------------------------------------- ICL

class IclMethod : public Method {
 public:
  std::string name() const override { return "icl"; }
  void learn(nn::Transformer& model, const LearningEpisode& ep) override;
  std::vector<TokenId> eval_prefix(const LearningEpisode& ep) const override;
};

// ---------------------------------------------------------------- SFT / EWC

struct SftConfig {
  int64_t steps = 20;
  double lr = 1e-3;
  int64_t batch_size = 0;  // 0: every row each step
  double weight_decay = 0.0;
  double grad_clip = 1.0;  // 0: off
  uint64_t seed = 0;
  void validate() const;
};
void to_json(nlohmann::json& j, const SftConfig& c);
void from_json(const nlohmann::json& j, SftConfig& c);

class SftMethod : public Method {
 public:
  explicit SftMethod(SftConfig cfg = {});
  std::string name() const override { return "sft"; }
  void learn(nn::Transformer& model, const LearningEpisode& ep) override;
  const SftConfig& config() const { return cfg_; }

 private:
  SftConfig cfg_;
  Generator gen_;
};

struct EwcConfig {
  SftConfig sft;
  double lambda = 100.0;
  int64_t fisher_rows = 0;  // rows of the episode used for the Fisher; 0: all
  void validate() const;
};
void to_json(nlohmann::json& j, const EwcConfig& c);
// The SFT keys sit at the top level beside "lambda" and "fisher_rows".
void from_json(const nlohmann::json& j, EwcConfig& c);

class EwcMethod : public Method {
 public:
  explicit EwcMethod(EwcConfig cfg = {});
  std::string name() const override { return "ewc"; }
  void learn(nn::Transformer& model, const LearningEpisode& ep) override;

  // λ/2 · Σ F (θ − θ*)² over the parameters with a Fisher entry (0-dim, with history in θ);
  // an exact 0 before the first episode.
  Tensor penalty(nn::Transformer& model) const;
  // Adds the episode's diagonal Fisher to the running one and sets θ* to the current weights.
  void consolidate(nn::Transformer& model, const LearningEpisode& ep);
  bool has_fisher() const { return !fisher_.empty(); }
  const NamedTensors& fisher() const { return fisher_; }
  const NamedTensors& anchor() const { return anchor_; }

 private:
  EwcConfig cfg_;
  Generator gen_;
  NamedTensors fisher_, anchor_;  // by parameter name, no history
};

// ---------------------------------------------------------------- GRPO

struct GrpoConfig {
  int64_t steps = 10;
  double lr = 1e-3;
  int64_t group_size = 4;        // G completions per prompt
  int64_t prompts_per_step = 0;  // 0: every example each step
  int64_t max_new_tokens = 8;
  double temperature = 1.0;
  double eps_low = 0.2, eps_high = 0.2;
  double grad_clip = 1.0;
  uint64_t seed = 0;
  void validate() const;
};
void to_json(nlohmann::json& j, const GrpoConfig& c);
void from_json(const nlohmann::json& j, GrpoConfig& c);

class GrpoMethod : public Method {
 public:
  explicit GrpoMethod(GrpoConfig cfg = {});
  std::string name() const override { return "grpo"; }
  // Needs examples (their prompts); metrics: "mean_reward" per step.
  void learn(nn::Transformer& model, const LearningEpisode& ep) override;

 private:
  GrpoConfig cfg_;
  Generator gen_;
  uint64_t rollouts_ = 0;
};

// ---------------------------------------------------------------- OPSD

struct OpsdConfig {
  int64_t steps = 10;
  double lr = 1e-3;
  int64_t prompts_per_step = 0;  // 0: every example each step
  int64_t max_new_tokens = 8;
  double temperature = 1.0;
  double grad_clip = 1.0;
  uint64_t seed = 0;
  void validate() const;
};
void to_json(nlohmann::json& j, const OpsdConfig& c);
void from_json(const nlohmann::json& j, OpsdConfig& c);

class OpsdMethod : public Method {
 public:
  explicit OpsdMethod(OpsdConfig cfg = {});
  std::string name() const override { return "opsd"; }
  // Needs a context and examples (their prompts); metrics: "reverse_kl" per step.
  void learn(nn::Transformer& model, const LearningEpisode& ep) override;

 private:
  OpsdConfig cfg_;
  Generator gen_;
  uint64_t rollouts_ = 0;
};

// Mean per-token KL(p(·|prompt, y<t) ‖ p(·|context, prompt, y<t)) over the completion's
// tokens. With grad mode on (and trainable weights) the result has history in the student
// side only; the context is cut from the left to fit block_size.
Tensor opsd_reverse_kl(nn::Transformer& model, const std::vector<TokenId>& context, const std::vector<TokenId>& prompt,
                       const std::vector<TokenId>& completion);

// ---------------------------------------------------------------- SEAL

class SealMethod : public Method {
 public:
  // cfg.selection and cfg.random_extra_expert must be false (they are SEAL's definition).
  explicit SealMethod(DreamConfig cfg);
  SealMethod();
  std::string name() const override { return "seal"; }
  // Needs the episode's context, score and dream template; metrics: the dream iterations.
  // The k-th learn call's Dreamer is seeded with episode_dream_seed(cfg.seed, k). With
  // cfg.persist_dreamer [default] it starts from the dream generator the previous call's
  // ReST-EM left (SEAL learns its self-edit policy across tasks by ReST-EM); off: fresh.
  void learn(nn::Transformer& model, const LearningEpisode& ep) override;
  const DreamConfig& config() const { return cfg_; }
  // The dream generator carried to the next learn call (empty before the first, and always
  // with persist_dreamer off).
  const DreamerState& dreamer_state() const { return dreamer_state_; }

 private:
  DreamConfig cfg_;
  int64_t episodes_ = 0;
  DreamerState dreamer_state_;
};
// DreamConfig with SEAL's defaults (selection and random_extra_expert off).
DreamConfig seal_default_config();
// The DreamTask of an episode (context, score, template, train prefix, stop tokens).
DreamTask dream_task_of(const LearningEpisode& ep);

}  // namespace somnus::sleep
