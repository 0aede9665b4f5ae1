// Learning to imitate (PARADIGM.md §2 item 3): the RL term J_imitate of Knowledge Seeding.
//
// For each teacher sample d: draw a random prefix (a fraction in [prefix_min, prefix_max] of
// d), let the student write G completions of it (KV-cached nn::generate, no grad), score
// each against the rest of d (sleep/rewards.h), and turn the rewards into group-normalised
// advantages (GRPO). The update is a PPO-style clipped surrogate through the fused
// linear_ppo_loss (autograd/losses.h): one student forward over the rows prefix + completion,
// the loss taken on the completion tokens only, straight from the hidden states (no (N, V)
// logits). The returned loss is −J_imitate, ready for L_KS = α·L_distill + (1 − α)·loss.
//
// Memory (PARADIGM §2, teacher-in-the-loop): imitation_rollouts returns host data only;
// the KV caches, logits and teacher activations of the rollout are freed before it returns,
// so the update's tape is the only large thing alive during imitation_loss.
//
// Usage:
//   ImitationRollouts r = imitation_rollouts(student, teacher_samples, cfg, round, sem);
//   ImitationLoss l = imitation_loss(student, r, cfg);            // + teacher when kl_beta > 0
//   total = α·jsd + (1 − α)·l.loss;  backward(total);  opt.step();
// Gradients reach whatever student parameters require grad; nothing is frozen here.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "autograd/losses.h"
#include "nn/transformer.h"
#include "sleep/rewards.h"

namespace somnus::sleep {

// A plain struct with defaults; JSON via to_json/from_json (strict: unknown keys and wrong
// types are errors). validate() throws somnus::Error naming the offending field.
struct ImitationConfig {
  int64_t group_size = 4;           // G completions per prefix (>= 2: a group of one has no advantage)
  double prefix_min_fraction = 0.25;  // prefix length ∈ [ceil(min·|d|), floor(max·|d|)],
  double prefix_max_fraction = 0.75;  // then clamped to [1, |d| − 1]
  // r_abs threshold z0, relative to max(|d̂|, |d|): r_abs = 0 when lev > z0_fraction·max.
  // [choice] 0.8: a completion must share at least ~20% of the reference (edit-wise) before
  // it earns any r_abs, so chance overlaps of an unrelated sample earn nothing, while two
  // honest samples of the same model (which drift apart at temperature 1) still score. 1 = off.
  double z0_fraction = 0.8;
  double gamma = 0.5;              // r = γ·r_sem + (1 − γ)·r_abs (r = r_abs without a semantic reward)
  double cosine_threshold = 0.9;   // for make_semantic_reward's HiddenCosineReward
  // Which r_sem (PARADIGM §2 [choice]): "auto" [default] the task's answer match when the task
  // defines an answer field (an answer extractor is given, e.g. LearningEpisode::answer_of),
  // and the hidden-state cosine otherwise: for tasks without one, and for teacher samples that
  // hold no answer; "answer_match" the answer match alone (samples without an answer score 0;
  // an error where the task gives no extractor); "hidden_cosine" (always, e.g. to compare).
  std::string semantic_reward = "auto";
  double eps_low = 0.2;            // PPO clip: ratio in [1 − eps_low, 1 + eps_high]
  double eps_high = 0.2;
  double kl_beta = 0.0;            // weight of the k3 KL to the teacher (needs a teacher in imitation_loss)
  PPOLossType loss_type = PPOLossType::grpo;  // JSON: "grpo" | "bnpo" | "dr_grpo" | "dapo"
  double advantage_eps = 1e-4;     // A = (r − mean)/(std + advantage_eps)
  double temperature = 1.0;        // rollout sampling temperature (> 0)
  int64_t top_k = 0;               // rollout sampling top-k (0: off)
  // Completion length: the rest of the teacher sample, capped by this when > 0 (and always
  // by block_size − prefix).
  int64_t max_completion_tokens = 0;
  std::vector<TokenId> stop_tokens;  // a completion ends at (and includes) the first of these
  int64_t rollout_batch_size = 0;    // prompts per generate() call (0: all at once); results do not depend on it
  uint64_t seed = 0;                 // prefixes and sampling; see imitation_rollouts' round

  void validate() const;
};

void to_json(nlohmann::json& j, const ImitationConfig& c);
// Strict; validates. Errors read "imitation config: ...".
void from_json(const nlohmann::json& j, ImitationConfig& c);

// The semantic reward the config describes (cfg.semantic_reward):
//   an AnswerMatchReward over `answer_of` when the task gives one (answer_of set) and the
//   config says "auto" (with the cosine below for samples without an answer) or
//   "answer_match" (without it);
//   else a HiddenCosineReward with cfg.cosine_threshold over `teacher`, fed ids on `device`
//   (pass the teacher's, e.g. model.lm_head_weight().device(), when it is not the CPU).
// Throws somnus::Error for "answer_match" without an extractor.
std::unique_ptr<SemanticReward> make_semantic_reward(const ImitationConfig& cfg, TeacherForward teacher,
                                                     Device device = Device::cpu(),
                                                     const AnswerMatchReward::Extractor& answer_of = {});

// ---------------------------------------------------------------- rollouts

// Host data only. Rows are group-major: row i belongs to teacher sample i / G.
struct ImitationRollouts {
  int64_t group_size = 0;
  std::vector<std::vector<TokenId>> prefixes;    // (N) per teacher sample
  std::vector<std::vector<TokenId>> references;  // (N) the rest of each teacher sample
  std::vector<std::vector<TokenId>> completions;  // (N·G)
  std::vector<std::vector<double>> old_logprobs;  // (N·G) per completion token, log π_old at temperature 1
  std::vector<double> r_abs, r_sem, rewards, advantages;  // (N·G); r_sem empty without a semantic reward
  int64_t tokens_generated = 0;  // Σ completion lengths
  double seconds = 0;            // wall time of generation + scoring
  double tokens_per_second = 0;

  int64_t rows() const { return static_cast<int64_t>(completions.size()); }
  const std::vector<TokenId>& prefix_of(int64_t row) const {
    return prefixes.at(static_cast<size_t>(row / group_size));
  }
  double mean_reward() const;
};

// Draws the prefix length of a sample of `length` tokens (>= 2) from gen: uniform over
// [lo, hi], lo = ceil(min·length) and hi = floor(max·length), both clamped to [1, length − 1]
// (hi = lo when rounding empties the range). Exposed for tests and for the dreaming code.
int64_t draw_prefix_length(int64_t length, double min_fraction, double max_fraction, Generator& gen);

// For each teacher sample (each of 2..block_size tokens, ids within the vocabulary): a
// random prefix, G completions by the student (nn::generate, KV cache, no grad), r_abs
// against the rest of the sample, r_sem from `semantic` when given, the γ mix, and the
// group advantages. Deterministic in (cfg.seed, round): call k of a training loop passes
// round = k to get fresh prefixes and samples. Throws somnus::Error on bad input.
ImitationRollouts imitation_rollouts(nn::Transformer& student, const std::vector<std::vector<TokenId>>& teacher_samples,
                                     const ImitationConfig& cfg, uint64_t round = 0,
                                     SemanticReward* semantic = nullptr);

// ---------------------------------------------------------------- generic GRPO helpers

// Training rows for a policy-gradient loss (host-built, on the model's device):
//   ids      (B, T) i64   prompt + completion without its last token, right-padded with 0
//   actions  (B, T) i64   the token each position predicts (0 on pads)
//   mask     (B, T) f32   1 on the completion tokens, 0 elsewhere
//   old_logp (B, T) f32   the rollout log-probs on the completion tokens, 0 elsewhere
// with T = max(|prompt| + |completion|) − 1. Every prompt and completion must be non-empty
// and prompt + completion <= block_size; old_logprobs[i] has |completion i| entries.
struct PolicyBatch {
  Tensor ids, actions, mask, old_logp;
  int64_t max_completion_length = 0;
  int64_t completion_tokens = 0;
};
PolicyBatch make_policy_batch(const std::vector<std::vector<TokenId>>& prompts,
                              const std::vector<std::vector<TokenId>>& completions,
                              const std::vector<std::vector<double>>& old_logprobs, Device device = Device::cpu());

// log π_ref(action) (B, T) under a reference model (its hidden states from `forward`, its
// lm-head weight W_ref (V, C)), under no_grad, through the fused PPO kernel's selective
// log-prob (never the (B, T, V) logits). 0 on masked positions is not guaranteed: callers mask.
Tensor reference_logprobs(const TeacherForward& forward, const Tensor& W_ref, const PolicyBatch& batch);

// The clipped surrogate of `model` on `batch`: hidden_states(ids) -> linear_ppo_loss with
// W = model.lm_head_weight(). advantages (B) f64/f32 host values; ref_logp (B, T) or
// undefined. opt.max_completion_length is filled from the batch when 0 (dr_grpo).
PPOLossOutput policy_loss(nn::Transformer& model, const PolicyBatch& batch, const std::vector<double>& advantages,
                          const LinearPPOOptions& opt, const Tensor& ref_logp = Tensor());

// ---------------------------------------------------------------- the imitation loss

struct ImitationLoss {
  Tensor loss;  // 0-dim, differentiable: the PPO surrogate = −J_imitate
  double mean_reward = 0;
  double clip_low_fraction = 0, clip_high_fraction = 0;
  double mean_kl = 0;  // k3 to the teacher (0 unless kl_beta > 0)
  double entropy = 0;
  int64_t tokens_generated = 0;
  double rollout_tokens_per_second = 0;
  int64_t num_valid = 0;  // completion tokens in the loss
};

// One student forward over the rollout rows and the fused PPO loss. When cfg.kl_beta > 0,
// `teacher` (hidden states) and `teacher_lm_head` (V, C) give ref_logp under no_grad;
// they are required then and ignored otherwise.
ImitationLoss imitation_loss(nn::Transformer& student, const ImitationRollouts& rollouts, const ImitationConfig& cfg,
                             const TeacherForward& teacher = nullptr, const Tensor& teacher_lm_head = Tensor());

}  // namespace somnus::sleep
