// Rewards of learning-to-imitate (PARADIGM.md §2 item 3) and the GRPO group advantages.
//
// A teacher sample d is split into a prefix and its reference continuation; the student
// writes a completion d̂ of the prefix. The reward of d̂ is
//   r = γ·r_sem + (1 − γ)·r_abs            (r = r_abs when there is no semantic reward)
//   r_abs = 1 − lev(d̂, d)/max(|d̂|, |d|)   if lev(d̂, d) <= z0, else 0
// where lev is the token-level Levenshtein distance between the completion and the
// reference continuation (the shared prefix is left out: it would only dilute the distance).
//
// r_sem is pluggable ([choice] PARADIGM §2): AnswerMatchReward (a task's answer field) and
// HiddenCosineReward (cosine of mean-pooled final hidden states of a frozen teacher).
// Everything here is host-side and small; the only model work is the teacher forward of
// HiddenCosineReward, under no_grad.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nn/tokenizer.h"
#include "tensor/tensor.h"

namespace somnus::sleep {

using nn::TokenId;

// ---------------------------------------------------------------- r_abs

// Token-level edit distance (insert, delete, substitute, each cost 1). O(|a|·|b|) time,
// O(min(|a|, |b|)) memory (one DP row over the shorter sequence).
int64_t levenshtein(std::span<const TokenId> a, std::span<const TokenId> b);

// 1 − lev/max(|completion|, |reference|) when lev <= z0, else 0. Two empty sequences are
// identical: 1. z0 is in tokens (+inf: no threshold); it must be >= 0.
double absolute_reward(std::span<const TokenId> completion, std::span<const TokenId> reference, double z0);
// The same with the threshold relative to the longer sequence: z0 = z0_fraction·max(|d̂|, |d|)
// (what ImitationConfig uses, since teacher samples have many lengths). z0_fraction >= 1
// never zeroes anything, because lev <= max(|d̂|, |d|) always.
double absolute_reward_relative(std::span<const TokenId> completion, std::span<const TokenId> reference,
                                double z0_fraction);

// ---------------------------------------------------------------- the mix

// γ·r_sem + (1 − γ)·r_abs; γ in [0, 1].
double mix_reward(double r_sem, double r_abs, double gamma);
// Element-wise; r_sem empty (no semantic reward) returns r_abs unchanged, whatever γ is.
std::vector<double> mix_rewards(const std::vector<double>& r_sem, const std::vector<double>& r_abs, double gamma);

// ---------------------------------------------------------------- group advantages (GRPO)

// rewards (N·G), group-major (the G completions of a prompt are contiguous) -> advantages
// A_i = (r_i − mean_group)/(std_group + eps), std the unbiased sample std (TRL's choice).
// A group whose rewards are all equal gets all-zero advantages. Generic (the dreaming and
// GRPO-baseline code use it too); it wraps kernels::group_advantages (kernels/losses.h).
std::vector<double> group_advantages(const std::vector<double>& rewards, int64_t group_size, double eps = 1e-4);

// ---------------------------------------------------------------- r_sem

// A semantic reward: how well each completion of `prefix` means what `reference` means.
// prefix + reference is the teacher sample d, prefix + completions[i] the student's d̂_i.
// Returns one score in [0, 1] per completion.
class SemanticReward {
 public:
  virtual ~SemanticReward() = default;
  virtual std::vector<double> score(const std::vector<TokenId>& prefix, const std::vector<TokenId>& reference,
                                    const std::vector<std::vector<TokenId>>& completions) = 0;
  virtual std::string name() const = 0;
};

// lowercase (ASCII), trim, and collapse runs of whitespace to one space.
std::string normalize_answer(std::string_view s);

// r_sem = 1 when the task's answer of prefix + completion matches the answer of
// prefix + reference after normalize_answer, else 0. The extractor reads the whole sequence
// (the answer field may begin in the prefix); nullopt means "no answer found". A missing or
// empty (after normalisation) answer on either side never matches.
// A reference without an answer (a teacher sample that never reached the answer field, e.g.
// a passage where the task also has questions) is scored by `fallback` when one is given
// (PARADIGM §2's "otherwise": the hidden-state cosine), else every completion scores 0.
class AnswerMatchReward : public SemanticReward {
 public:
  using Extractor = std::function<std::optional<std::string>(const std::vector<TokenId>& ids)>;
  explicit AnswerMatchReward(Extractor extract, std::unique_ptr<SemanticReward> fallback = nullptr);
  std::vector<double> score(const std::vector<TokenId>& prefix, const std::vector<TokenId>& reference,
                            const std::vector<std::vector<TokenId>>& completions) override;
  // "answer_match", or "answer_match, else <fallback's name>".
  std::string name() const override;
  // References scored so far, and how many of them had an answer (the rest went to the
  // fallback, or scored 0).
  int64_t references() const { return references_; }
  int64_t references_with_answer() const { return with_answer_; }

 private:
  Extractor extract_;
  std::unique_ptr<SemanticReward> fallback_;
  int64_t references_ = 0, with_answer_ = 0;
};

// ids (B, T) i64 -> final hidden states (B, T, C) of a frozen teacher. Called under no_grad
// (e.g. sleep::TeacherView::hidden_states, or a lambda over Transformer::hidden_states).
// The ids are on the device its user was given (the teacher's).
using TeacherForward = std::function<Tensor(const Tensor& ids)>;

// r_sem = 1 when cos(mean-pooled teacher hidden states of d̂, of d) >= threshold, else 0.
// One teacher forward over the rows [prefix + reference, prefix + completion_1, ...],
// right-padded with token 0 (causal attention: pads never affect the real tokens before
// them); the pooling averages the hidden states of the continuation tokens only, each read
// in the context of the prefix. An empty continuation has no pooled state: it scores 1
// against an empty reference, else 0.
class HiddenCosineReward : public SemanticReward {
 public:
  // device: where the ids are built (the teacher's device).
  HiddenCosineReward(TeacherForward teacher, double threshold = 0.9, Device device = Device::cpu());
  std::vector<double> score(const std::vector<TokenId>& prefix, const std::vector<TokenId>& reference,
                            const std::vector<std::vector<TokenId>>& completions) override;
  // The cosines themselves (NaN-free: a zero pooled vector has cosine 0), one per completion.
  std::vector<double> cosines(const std::vector<TokenId>& prefix, const std::vector<TokenId>& reference,
                              const std::vector<std::vector<TokenId>>& completions);
  std::string name() const override { return "hidden_cosine"; }
  double threshold() const { return threshold_; }

 private:
  TeacherForward teacher_;
  double threshold_;
  Device device_;
};

}  // namespace somnus::sleep
