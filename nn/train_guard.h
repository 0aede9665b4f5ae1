// Numeric guards of the training loop (issue 8 §4): decide, after backward and before the
// optimiser step, whether a step's update may be applied.
//
//   non_finite  the loss or the global gradient norm is NaN or Inf: always skipped.
//   spike       (when zscore > 0) the loss lies more than `zscore` standard deviations above
//               the mean of the last `window` accepted losses; judged only once the window
//               is full. A skipped spike does not enter the window; after
//               kMaxConsecutiveSpikes skips in a row the guard accepts the loss, since a
//               lasting shift is a new level rather than a spike.
// The caller skips a step by discarding the gradients (Optimizer::zero_grad_all) and still
// calling step(), so the optimiser's step count — and with it the windows of slow groups —
// stays aligned with the loop (a slow group's partial window sum is lost with it).
// The guard's state (the window) is saved in checkpoints (to_json/from_json), so a resumed
// run judges exactly as an uninterrupted one.
#pragma once
#include <cstdint>
#include <deque>
#include <nlohmann/json.hpp>

namespace somnus::nn {

enum class StepVerdict { ok, non_finite, spike };
const char* step_verdict_name(StepVerdict v);  // "ok", "non_finite", "spike"

class TrainStepGuard {
 public:
  static constexpr int64_t kMaxConsecutiveSpikes = 5;
  // window >= 2; zscore 0 turns the spike check off. Throws somnus::Error otherwise.
  explicit TrainStepGuard(int64_t window = 100, double zscore = 0.0);

  // Judges one step and records its loss when accepted. `zscore_out` (optional) receives the
  // loss's z-score against the window (0 while the window is not full).
  StepVerdict judge(double loss, double grad_norm, double* zscore_out = nullptr);

  int64_t skipped() const { return skipped_; }  // steps skipped so far
  int64_t consecutive_non_finite() const { return consecutive_non_finite_; }

  nlohmann::json to_json() const;
  void load_json(const nlohmann::json& j);  // strict; throws somnus::Error

 private:
  int64_t window_;
  double zscore_;
  std::deque<double> losses_;
  int64_t consecutive_spikes_ = 0;
  int64_t consecutive_non_finite_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace somnus::nn
