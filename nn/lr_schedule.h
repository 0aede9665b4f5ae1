// Learning-rate schedules: constant, warmup + cosine, and WSD (warmup-stable-decay).
//
// `step` is the 0-based index of the optimiser step about to be taken (the training loop's
// iteration counter; Optimizer::step_count() before calling step()).
//   warmup:   lr = max_lr · (step + 1) / warmup_steps      for step < warmup_steps
//             (never 0, reaching max_lr at step warmup_steps − 1)
//   constant: max_lr after the warmup.
//   cosine:   from max_lr at step warmup_steps down to min_lr = min_ratio · max_lr at
//             step total_steps:  min_lr + (max_lr − min_lr) · ½(1 + cos(π·progress)),
//             progress = (step − warmup_steps) / (total_steps − warmup_steps); min_lr after.
//   wsd:      max_lr until the decay starts at step total_steps − decay_steps, with
//             decay_steps = round(decay_fraction · total_steps); then down to min_lr at
//             total_steps along decay_shape (linear, cosine, or 1−sqrt as in Hägele et al.
//             2024); min_lr after.
// For use with Optimizer::set_lr_scale, set max_lr = 1 and the group lrs to their peaks.
//
// JSON (nlohmann): {"kind": "cosine", "max_lr": 3e-4, "warmup_steps": 100, "total_steps": 5000,
//                   "min_ratio": 0.1, "decay_fraction": 0.2, "decay_shape": "linear"}
// Missing keys keep their defaults; unknown keys, unknown kinds and out-of-range values throw
// somnus::Error.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace somnus {

enum class LrScheduleKind { constant, cosine, wsd };
enum class LrDecayShape { linear, cosine, one_minus_sqrt };

struct LrSchedule {
  LrScheduleKind kind = LrScheduleKind::cosine;
  double max_lr = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1000;  // cosine and wsd: the step at which lr reaches min_lr
  double min_ratio = 0.1;      // min_lr = min_ratio · max_lr (cosine, wsd)
  double decay_fraction = 0.2;  // wsd: the share of total_steps spent decaying
  LrDecayShape decay_shape = LrDecayShape::linear;  // wsd

  double lr_at(int64_t step) const;
  // Throws somnus::Error on negative steps/lrs, ratios outside [0, 1], warmup > total, ...
  void validate() const;
};

// Shorthands.
LrSchedule constant_schedule(double lr, int64_t warmup_steps = 0);
LrSchedule cosine_schedule(double max_lr, int64_t warmup_steps, int64_t total_steps, double min_ratio = 0.1);
LrSchedule wsd_schedule(double max_lr, int64_t warmup_steps, int64_t total_steps, double decay_fraction = 0.2,
                        double min_ratio = 0.0, LrDecayShape shape = LrDecayShape::linear);

const char* lr_schedule_kind_name(LrScheduleKind k);
const char* lr_decay_shape_name(LrDecayShape s);

void to_json(nlohmann::json& j, const LrSchedule& s);
void from_json(const nlohmann::json& j, LrSchedule& s);  // validates

}  // namespace somnus
