// Memory Consolidation = expansion + Knowledge Seeding (PARADIGM.md §2).
//
// When a sender level ℓ is about to apply its update (on schedule, or at an explicit sleep()):
//   (a) the caller snapshots the sender's θ_old (snapshot_sender()) and lets the optimiser
//       compute and write θ_new — the student is now "sender at θ_new";
//   (b) consolidate(): in every layer the sender's active slots are reset (their old B kept
//       for the teacher), one free slot of the receiver ℓ+1 is activated (A ~ N(0, 1/C),
//       B = 0: a no-op at first; a full receiver first frees its oldest slot, by
//       on_exhausted), and Knowledge Seeding trains only those new slots ({A, B}, plus the
//       router row on an MoE level) so that the student imitates the teacher — the same
//       model seen through a TeacherView (teacher_view.h) with θ_old and the old slots
//       (and, under merge_oldest, the evicted receiver slot's old occupant);
//   (c) the new slots stay active; θ_new stays applied; θ_old and the old B's (and an
//       evicted slot's old weights) are dropped.
//
// Knowledge Seeding, one step (no external data: the teacher's own samples are the replay):
//   D           n_samples sequences sampled from the teacher (prompts given by the caller:
//               a BOS for free-running, or task prompts such as known labels), once.
//   distill     a batch of (1−λ)·B rows from D and λ·B rows whose continuation the student
//               samples on-policy from D's prompts (no gradient through sampling); the
//               teacher's hidden states (no_grad, through the view) and the student's (tape
//               from the lowest receiver level up) go to the fused chunked linear_jsd with
//               the shared lm head, on the continuation tokens only: JSD_β at temperature τ.
//   imitate     (when α < 1) GRPO learning-to-imitate (sleep/imitation.h): random prefixes
//               of D, G student completions each, Levenshtein + semantic rewards, the fused
//               clipped surrogate (linear_ppo_loss).
//   total       L_KS = α·L_distill + (1−α)·L_PPO   (L_PPO = −J_imitate), AdamW on the slots.
// Memory: teacher forwards keep no activations; rollouts and their KV caches are freed before
// the update; logits never exist for more than one chunk of rows.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/tokenizer.h"
#include "nn/transformer.h"
#include "sleep/imitation.h"
#include "tensor/random.h"

namespace somnus::sleep {

// What consolidation does in a layer whose receiver level has no free slot (see
// ConsolidationConfig::on_exhausted).
enum class SlotPolicy { error, evict_oldest, merge_oldest };

// Knowledge Seeding hyper-parameters; the [choice] defaults of PARADIGM §2.
struct SeedingConfig {
  int64_t n_samples = 16;          // |D|
  int64_t sample_tokens = 32;      // new tokens per teacher sample (capped by block_size)
  double sample_temperature = 1.0;
  int64_t sample_top_k = 0;
  // Sampling (teacher samples, on-policy continuations, and imitation rollouts when the
  // imitation config names none) stops at these tokens, e.g. EOS: a sample is one sequence
  // rather than one followed by whatever the model emits after it.
  std::vector<TokenId> stop_tokens;
  int64_t steps = 30;              // KS optimiser steps
  int64_t batch_size = 8;          // distillation rows per step
  double lr = 1e-2;                // AdamW on the new slots
  double weight_decay = 0.0;
  double grad_clip = 1.0;          // global-norm clipping over the slots; 0 = off
  double lambda = 0.5;             // GKD on-policy fraction λ ∈ [0, 1] (the paper leaves it open)
  double beta = 0.5;               // JSD_β [choice]
  double temperature = 1.0;        // τ [choice]
  double alpha = 0.5;              // L_KS = α·L_distill + (1−α)·L_PPO [choice]
  int64_t imitation_samples = 2;   // teacher samples per step for the imitation term (× G completions)
  ImitationConfig imitation;
  uint64_t seed = 1234;

  void validate() const;
};
void to_json(nlohmann::json& j, const SeedingConfig& c);
void from_json(const nlohmann::json& j, SeedingConfig& c);

struct ConsolidationConfig {
  int64_t sender = 0;         // ℓ; the receiver is ℓ + 1
  bool expansion = true;      // false: the "without expansion" ablation (θ_new only, no slot, no seeding)
  bool seeding = true;        // false: expansion without Knowledge Seeding (the slot stays a no-op)
  // When every slot of the receiver is active in a layer (PARADIGM says nothing of eviction):
  //   "error" [default]  consolidate() and check_ready() throw, changing nothing;
  //   "evict_oldest"     reset the receiver's oldest slot first. The reset comes before the
  //                      teacher view is built, so what that slot held is dropped, not
  //                      distilled into the new slot (the teacher is the current model
  //                      without it);
  //   "merge_oldest"     the oldest slot is re-initialised as the student's new slot too, but
  //                      the teacher keeps its old A, B (and router row) active
  //                      (TeacherViewSpec::receiver_evicted): Knowledge Seeding distils what
  //                      it held into the new slot together with the sender's change, so the
  //                      eviction costs capacity (one rank-r slot carries both) rather than
  //                      what the slot knew. Without seeding ('seeding': false or ks.steps =
  //                      0) nothing is distilled and it drops the slot as evict_oldest does.
  SlotPolicy on_exhausted = SlotPolicy::error;
  double slot_init_std = 0.0;  // std of the new slot's A; 0 = 1/√d ([choice] A ~ N(0, 1/d), B = 0)
  SeedingConfig ks;

  void validate(const nn::TransformerConfig& model) const;
};
void to_json(nlohmann::json& j, const ConsolidationConfig& c);
void from_json(const nlohmann::json& j, ConsolidationConfig& c);

struct SeedingStepLog {
  int64_t step = 0;
  double loss = 0, jsd = 0, ppo_loss = 0, mean_reward = 0, clip_fraction = 0;
  double tokens_per_s = 0;  // teacher + student tokens processed (sampled, forwarded) per second
  double seconds = 0;
};

struct ConsolidationReport {
  int64_t sender = 0, receiver = 0;
  bool skipped = false;                  // nothing was consolidated (see WakeLearner::sleep)
  std::vector<int64_t> new_slots;        // per layer, in the receiver
  std::vector<int64_t> evicted_slots;    // per layer, -1 when none
  bool evicted_merged = false;           // merge_oldest: an evicted slot was distilled into the new one
  int64_t sender_slots_reset = 0;        // over all layers
  double jsd_before = 0, jsd_after = 0;  // on D (teacher samples), mean per continuation token
  std::vector<SeedingStepLog> steps;
  int64_t teacher_tokens = 0;            // sampled into D
  // The imitation term's r_sem (SemanticReward::name): "hidden_cosine", "answer_match", or
  // "answer_match, else hidden_cosine" (the default where the task has answers); "" when no
  // imitation ran (ks.alpha = 1, no seeding, skipped). With an answer match: the teacher
  // references the rollouts scored, and how many held an answer (the rest took the cosine,
  // or scored 0); both 0 otherwise.
  std::string semantic_reward;
  int64_t imitation_references = 0, references_with_answer = 0;
  double seconds = 0;
  nlohmann::json to_json() const;
};

using SeedingLogFn = std::function<void(const SeedingStepLog&)>;

class Consolidator {
 public:
  Consolidator(nn::Transformer& model, ConsolidationConfig cfg);

  // θ_old: a copy of every non-slot parameter of the sender level in every layer, LoRA adapter
  // handles (lora_A, lora_B) excluded. Take it before the optimiser applies the sender. Besides
  // it, consolidate() copies only slot-sized tensors: the sender slots' B (kept for the teacher)
  // and, under merge_oldest, the evicted receiver slot's A, B and router row.
  NamedTensors snapshot_sender() const;

  // Steps (b) and (c). `sender_old` from snapshot_sender() (empty: θ_new = θ_old); prompts:
  // non-empty token prompts for teacher sampling (cycled to n_samples). Throws when the
  // receiver has no free slot and the policy is `error`, leaving the model unchanged.
  ConsolidationReport consolidate(const NamedTensors& sender_old, const std::vector<std::vector<TokenId>>& prompts,
                                  const SeedingLogFn& log = {});
  // Throws what consolidate() would throw on these prompts and the model's slot pool (no
  // prompts, a prompt of 0 or >= block_size tokens, no free receiver slot under policy
  // `error`), changing nothing. A caller that must change state before consolidating (e.g.
  // apply the sender's pending update) calls it first, so that a refused consolidation
  // leaves everything as it was.
  void check_ready(const std::vector<std::vector<TokenId>>& prompts) const;

  // The task's answer field (PARADIGM §2: r_sem = answer match where the task defines one):
  // the answer of a whole teacher sample or student completion (prompt included), nullopt when
  // it has none. Unset (the default, or an empty function): the task has none, and r_sem is
  // the hidden-state cosine. ks.imitation.semantic_reward chooses between them. Not saved
  // with state(): the task sets it again (SleepMethod does, every episode).
  void set_answer_extractor(AnswerMatchReward::Extractor answer_of) { answer_of_ = std::move(answer_of); }
  // Throws (changing nothing) when the config asks for "answer_match" and consolidation would
  // run the imitation term without an extractor; part of check_ready(). SleepMethod calls it
  // before an episode's wake, so a bad config fails before any training.
  void check_semantic_reward() const;

  // Activation order of the receiver slots (for evict_oldest / merge_oldest), saved with
  // sleep checkpoints.
  nlohmann::json state() const;
  void load_state(const nlohmann::json& j);

  const ConsolidationConfig& config() const { return cfg_; }

 private:
  nn::Transformer& model_;
  ConsolidationConfig cfg_;
  Generator gen_;
  int64_t consolidations_ = 0;
  AnswerMatchReward::Extractor answer_of_;
  // activation_[layer][slot] = the consolidation count when the receiver slot was activated.
  std::vector<std::vector<int64_t>> activation_;
};

}  // namespace somnus::sleep
