#include "nn/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <set>

#include "tensor/format.h"

namespace somnus {

const char* lr_schedule_kind_name(LrScheduleKind k) {
  switch (k) {
    case LrScheduleKind::constant: return "constant";
    case LrScheduleKind::cosine: return "cosine";
    case LrScheduleKind::wsd: return "wsd";
  }
  return "?";
}

const char* lr_decay_shape_name(LrDecayShape s) {
  switch (s) {
    case LrDecayShape::linear: return "linear";
    case LrDecayShape::cosine: return "cosine";
    case LrDecayShape::one_minus_sqrt: return "1-sqrt";
  }
  return "?";
}

void LrSchedule::validate() const {
  SOMNUS_CHECK(std::isfinite(max_lr) && max_lr >= 0, "lr schedule: max_lr must be finite and >= 0, got {}", max_lr);
  SOMNUS_CHECK(warmup_steps >= 0, "lr schedule: warmup_steps must be >= 0, got {}", warmup_steps);
  if (kind == LrScheduleKind::constant) return;
  SOMNUS_CHECK(total_steps > 0, "lr schedule ({}): total_steps must be > 0, got {}", lr_schedule_kind_name(kind),
               total_steps);
  SOMNUS_CHECK(warmup_steps <= total_steps, "lr schedule ({}): warmup_steps {} exceed total_steps {}",
               lr_schedule_kind_name(kind), warmup_steps, total_steps);
  SOMNUS_CHECK(min_ratio >= 0 && min_ratio <= 1, "lr schedule ({}): min_ratio must lie in [0, 1], got {}",
               lr_schedule_kind_name(kind), min_ratio);
  if (kind == LrScheduleKind::wsd) {
    SOMNUS_CHECK(decay_fraction >= 0 && decay_fraction <= 1, "lr schedule (wsd): decay_fraction must lie in [0, 1], "
                 "got {}", decay_fraction);
    const int64_t decay_steps = std::llround(decay_fraction * static_cast<double>(total_steps));
    SOMNUS_CHECK(warmup_steps <= total_steps - decay_steps,
                 "lr schedule (wsd): warmup_steps {} overlap the decay, which starts at step {} ({} of {} steps)",
                 warmup_steps, total_steps - decay_steps, decay_fraction, total_steps);
  }
}

double LrSchedule::lr_at(int64_t step) const {
  SOMNUS_CHECK(step >= 0, "lr schedule: negative step {}", step);
  if (step < warmup_steps) {
    return max_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  const double min_lr = min_ratio * max_lr;
  switch (kind) {
    case LrScheduleKind::constant: return max_lr;
    case LrScheduleKind::cosine: {
      if (step >= total_steps) return min_lr;
      const double span = static_cast<double>(total_steps - warmup_steps);
      const double progress = span > 0 ? static_cast<double>(step - warmup_steps) / span : 1.0;
      return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
    }
    case LrScheduleKind::wsd: {
      const int64_t decay_steps = std::llround(decay_fraction * static_cast<double>(total_steps));
      const int64_t decay_start = total_steps - decay_steps;
      if (step < decay_start) return max_lr;
      if (step >= total_steps) return min_lr;
      const double progress = static_cast<double>(step - decay_start) / static_cast<double>(decay_steps);
      double remaining = 1.0 - progress;  // 1 at the start of the decay, 0 at total_steps
      switch (decay_shape) {
        case LrDecayShape::linear: break;
        case LrDecayShape::cosine: remaining = 0.5 * (1.0 + std::cos(std::numbers::pi * progress)); break;
        case LrDecayShape::one_minus_sqrt: remaining = 1.0 - std::sqrt(progress); break;
      }
      return min_lr + (max_lr - min_lr) * remaining;
    }
  }
  return max_lr;
}

LrSchedule constant_schedule(double lr, int64_t warmup_steps) {
  LrSchedule s;
  s.kind = LrScheduleKind::constant;
  s.max_lr = lr;
  s.warmup_steps = warmup_steps;
  s.validate();
  return s;
}

LrSchedule cosine_schedule(double max_lr, int64_t warmup_steps, int64_t total_steps, double min_ratio) {
  LrSchedule s;
  s.kind = LrScheduleKind::cosine;
  s.max_lr = max_lr;
  s.warmup_steps = warmup_steps;
  s.total_steps = total_steps;
  s.min_ratio = min_ratio;
  s.validate();
  return s;
}

LrSchedule wsd_schedule(double max_lr, int64_t warmup_steps, int64_t total_steps, double decay_fraction,
                        double min_ratio, LrDecayShape shape) {
  LrSchedule s;
  s.kind = LrScheduleKind::wsd;
  s.max_lr = max_lr;
  s.warmup_steps = warmup_steps;
  s.total_steps = total_steps;
  s.decay_fraction = decay_fraction;
  s.min_ratio = min_ratio;
  s.decay_shape = shape;
  s.validate();
  return s;
}

void to_json(nlohmann::json& j, const LrSchedule& s) {
  j = nlohmann::json{{"kind", lr_schedule_kind_name(s.kind)},
                     {"max_lr", s.max_lr},
                     {"warmup_steps", s.warmup_steps},
                     {"total_steps", s.total_steps},
                     {"min_ratio", s.min_ratio},
                     {"decay_fraction", s.decay_fraction},
                     {"decay_shape", lr_decay_shape_name(s.decay_shape)}};
}

void from_json(const nlohmann::json& j, LrSchedule& s) {
  SOMNUS_CHECK(j.is_object(), "lr schedule: expected a JSON object, got {}", j.type_name());
  static const std::set<std::string> known = {"kind",      "max_lr",         "warmup_steps", "total_steps",
                                              "min_ratio", "decay_fraction", "decay_shape"};
  for (const auto& [k, v] : j.items()) {
    SOMNUS_CHECK(known.count(k) > 0, "lr schedule: unknown key '{}' (known: {})", k, fmt::join(known, ", "));
  }
  LrSchedule out;
  try {
    if (j.contains("kind")) {
      const std::string k = j.at("kind").get<std::string>();
      if (k == "constant") out.kind = LrScheduleKind::constant;
      else if (k == "cosine") out.kind = LrScheduleKind::cosine;
      else if (k == "wsd") out.kind = LrScheduleKind::wsd;
      else fail("lr schedule: unknown kind '{}' (expected constant, cosine or wsd)", k);
    }
    if (j.contains("max_lr")) out.max_lr = j.at("max_lr").get<double>();
    if (j.contains("warmup_steps")) out.warmup_steps = j.at("warmup_steps").get<int64_t>();
    if (j.contains("total_steps")) out.total_steps = j.at("total_steps").get<int64_t>();
    if (j.contains("min_ratio")) out.min_ratio = j.at("min_ratio").get<double>();
    if (j.contains("decay_fraction")) out.decay_fraction = j.at("decay_fraction").get<double>();
    if (j.contains("decay_shape")) {
      const std::string d = j.at("decay_shape").get<std::string>();
      if (d == "linear") out.decay_shape = LrDecayShape::linear;
      else if (d == "cosine") out.decay_shape = LrDecayShape::cosine;
      else if (d == "1-sqrt") out.decay_shape = LrDecayShape::one_minus_sqrt;
      else fail("lr schedule: unknown decay_shape '{}' (expected linear, cosine or 1-sqrt)", d);
    }
  } catch (const nlohmann::json::exception& e) {
    fail("lr schedule: bad value: {}", e.what());
  }
  out.validate();
  s = out;
}

}  // namespace somnus
