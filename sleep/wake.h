// Wake: online multi-frequency learning (PARADIGM.md §1), test-time training on long streams,
// and the triggers of consolidation (§2).
//
//   train_step(batch)   one step of the multi-frequency rule: backward adds into every level's
//                       accumulator, the optimiser applies level ℓ only at multiples of C_ℓ
//                       (nn/optim.h). When consolidation is scheduled for this step (the
//                       sender is due and this is its consolidate_every-th application), θ_old
//                       of the sender is snapshotted before the step and consolidation runs
//                       right after it — the student is "sender at θ_new". Under
//                       sleep_teacher = "since_last_sleep" it then moves the anchor (below).
//   sleep()             an explicit consolidation (a task boundary). The sender's pending
//                       accumulation is applied now (the sender level's own optimiser groups:
//                       the wake optimiser splits the sender off any group that shares its
//                       period, so another level's or attention's pending window stays
//                       pending until its own due step), then consolidation with a teacher
//                       whose sender weights are, by `sleep_teacher`:
//                         "since_last_sleep" [choice, default]: the sender as it was at the
//                           previous consolidation, explicit or scheduled (the anchor):
//                           θ_old → θ_new is everything the fast level learned while awake
//                           since, so the new slot is taught to keep the behaviour the fast
//                           level has since overwritten. A scheduled consolidation moves the
//                           anchor too (to the sender as it left it: θ_new, slots reset), since
//                           what the sender knew until then is in a receiver slot and must not
//                           be distilled a second time. The first consolidation of a learner
//                           has no earlier sender to keep: a sleep() before any consolidation
//                           only records the anchor (report.skipped); the model's initial
//                           weights are not knowledge worth a slot;
//                         "pending": only the pending accumulation (the literal reading of
//                           PARADIGM §2 (a)); with C_ℓ = 1 nothing is pending at a task
//                           boundary, teacher and student coincide and seeding has nothing
//                           to distil.
//                       A consolidation that would be refused (no free receiver slot under
//                       on_exhausted = error, a bad prompt) throws before anything changes:
//                       the pending update stays pending and the anchor is kept. The same
//                       holds for a scheduled consolidation in train_step (thrown before the step).
//   read_stream(tokens) test-time training: the stream is read in chunks of ttt_chunk tokens
//                       (≤ block_size, the attention window); after each chunk a gradient step
//                       on the levels in ttt_levels only (their own optimiser), from the
//                       next-token loss on the chunk just read, with the multi-frequency rule:
//                       level ℓ applies every C_ℓ chunks (its period), accumulating meanwhile;
//                       a partial window is applied at the end of the stream. This is how
//                       context becomes parameters.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "nn/data.h"
#include "nn/optim.h"
#include "nn/train_guard.h"
#include "nn/transformer.h"
#include "sleep/consolidation.h"

namespace somnus::sleep {

struct WakeConfig {
  double lr = 3e-3;
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double grad_clip = 1.0;         // 0 = off; clips the groups that apply this step
  double aux_loss_weight = 0.01;  // MoE load balancing
  // Scheduled consolidation: after every consolidate_every-th application of the sender level
  // (0 = only at explicit sleep() calls; consolidating at every multiple of C_ℓ is the paper's
  // literal schedule and costs a Knowledge Seeding run each time).
  int64_t consolidate_every = 0;
  // Test-time training (read_stream).
  int64_t ttt_chunk = 0;  // tokens per chunk, 0 = block_size
  double ttt_lr = 1e-3;
  std::vector<int64_t> ttt_levels = {0};  // the fast CMS levels updated while reading
  std::string sleep_teacher = "since_last_sleep";  // or "pending" (see sleep() above)
  // What learns while awake: "all" [default] (every parameter, each at its level's period), or
  // "sender" (only the sender level; attention, embeddings and the other levels stay as they
  // are, so the teacher of the next sleep — the model with the sender's old weights — is
  // exactly the model as it was). The first train_all_steps steps of the learner train
  // everything whatever `train` says (a warm-up: features must exist before the fast level
  // alone can carry new tasks).
  std::string train = "all";
  int64_t train_all_steps = 0;
  // Loss-spike guard (nn/train_guard.h, as `somnus train`'s): a step whose loss lies more than
  // spike_zscore standard deviations above the mean of the last spike_window accepted losses
  // is skipped like a non-finite one (0 = off, the default).
  double spike_zscore = 0.0;
  int64_t spike_window = 100;

  void validate(const nn::TransformerConfig& model) const;
};
void to_json(nlohmann::json& j, const WakeConfig& c);
void from_json(const nlohmann::json& j, WakeConfig& c);

struct WakeStepLog {
  int64_t step = 0;
  double loss = 0;       // cross-entropy
  double grad_norm = 0;  // of the groups that applied
  std::vector<int64_t> periods_applied;
  // The loss or the gradient norm was NaN/Inf: the gradients were discarded (the step count
  // still advances, so the slow levels' windows stay aligned; a partial window is lost) and
  // no scheduled consolidation ran. A NaN never reaches the weights.
  bool skipped_non_finite = false;
  // The loss was a spike (WakeConfig::spike_zscore): skipped the same way.
  bool skipped_spike = false;
  std::optional<ConsolidationReport> consolidation;
};

struct StreamLog {
  std::vector<double> chunk_loss;  // next-token loss of each chunk when it was read (before its step)
  int64_t tokens = 0;
};

// What a learner needs, beside the model's weights and its optimiser's state, to continue
// bit-exactly after a restart (somnus sleep --resume): the sender's application count, the
// sleep prompts, the consolidator's state (slot activation order, consolidation count, its
// generator) as JSON, and the sender anchor of "since_last_sleep" as tensors (empty before
// the first sleep or scheduled consolidation). read_stream's own optimiser is not part of it
// (a resumed learner's next read_stream starts with fresh moments).
struct LearnerState {
  nlohmann::json scalars;
  NamedTensors anchor;
};

class WakeLearner {
 public:
  WakeLearner(nn::Transformer& model, WakeConfig wake, ConsolidationConfig consolidation);

  // batch.input/target (B, T); mask as in nn/data.h.
  WakeStepLog train_step(const nn::Batch& batch);
  // Prompts for the teacher sampling of consolidation (default: token 0 alone).
  void set_sleep_prompts(std::vector<std::vector<TokenId>> prompts);
  ConsolidationReport sleep(const SeedingLogFn& log = {});
  StreamLog read_stream(const std::vector<TokenId>& stream);

  nn::Transformer& model() { return model_; }
  AdamW& optimizer() { return *opt_; }
  Consolidator& consolidator() { return consolidator_; }
  const WakeConfig& config() const { return cfg_; }
  int64_t sender_applications() const { return sender_applications_; }

  LearnerState state() const;
  // Strict: the anchor must match the sender's layout (names, shapes, dtypes); nothing changes
  // unless everything is valid. The optimiser's state is loaded separately (Optimizer::load_state).
  void load_state(const LearnerState& s);

 private:
  void after_consolidation(const ConsolidationReport& rep);

  nn::Transformer& model_;
  WakeConfig cfg_;
  Consolidator consolidator_;
  std::unique_ptr<AdamW> opt_;
  std::vector<size_t> sender_groups_;  // opt_'s groups that hold the sender level (and nothing else)
  std::unique_ptr<AdamW> ttt_opt_;
  nn::TrainStepGuard guard_;  // non-finite and (spike_zscore > 0) spike steps
  std::vector<std::vector<TokenId>> prompts_{{0}};
  int64_t sender_applications_ = 0;
  NamedTensors sender_anchor_;  // the sender at the last consolidation ("since_last_sleep")
  std::vector<Tensor> outside_sender_;  // trainable parameters outside the sender level (train = "sender")
};

}  // namespace somnus::sleep
