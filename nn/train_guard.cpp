#include "nn/train_guard.h"

#include <cmath>

#include "tensor/format.h"

namespace somnus::nn {

const char* step_verdict_name(StepVerdict v) {
  switch (v) {
    case StepVerdict::ok: return "ok";
    case StepVerdict::non_finite: return "non_finite";
    case StepVerdict::spike: return "spike";
  }
  return "?";
}

TrainStepGuard::TrainStepGuard(int64_t window, double zscore) : window_(window), zscore_(zscore) {
  SOMNUS_CHECK(window >= 2, "TrainStepGuard: window must be >= 2, got {}", window);
  SOMNUS_CHECK(zscore >= 0.0 && std::isfinite(zscore), "TrainStepGuard: zscore must be >= 0 (0: off), got {}", zscore);
}

StepVerdict TrainStepGuard::judge(double loss, double grad_norm, double* zscore_out) {
  if (zscore_out) *zscore_out = 0.0;
  if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
    ++consecutive_non_finite_;
    ++skipped_;
    return StepVerdict::non_finite;
  }
  consecutive_non_finite_ = 0;
  if (zscore_ > 0.0 && static_cast<int64_t>(losses_.size()) == window_) {
    // Two passes in f64 over the window, in order: deterministic.
    double mean = 0.0;
    for (double x : losses_) mean += x;
    mean /= static_cast<double>(losses_.size());
    double var = 0.0;
    for (double x : losses_) var += (x - mean) * (x - mean);
    const double sd = std::sqrt(var / static_cast<double>(losses_.size() - 1));
    const double z = sd > 0.0 ? (loss - mean) / sd : 0.0;
    if (zscore_out) *zscore_out = z;
    if (z > zscore_ && consecutive_spikes_ < kMaxConsecutiveSpikes) {
      ++consecutive_spikes_;
      ++skipped_;
      return StepVerdict::spike;
    }
  }
  consecutive_spikes_ = 0;
  losses_.push_back(loss);
  if (static_cast<int64_t>(losses_.size()) > window_) losses_.pop_front();
  return StepVerdict::ok;
}

nlohmann::json TrainStepGuard::to_json() const {
  return {{"window", window_},
          {"losses", std::vector<double>(losses_.begin(), losses_.end())},
          {"consecutive_spikes", consecutive_spikes_},
          {"consecutive_non_finite", consecutive_non_finite_},
          {"skipped", skipped_}};
}

void TrainStepGuard::load_json(const nlohmann::json& j) {
  auto count = [&](const char* key) {
    SOMNUS_CHECK(j.is_object() && j.contains(key) && j.at(key).is_number_integer() && j.at(key).get<int64_t>() >= 0,
                 "TrainStepGuard: state must hold a non-negative integer '{}'", key);
    return j.at(key).get<int64_t>();
  };
  const int64_t window = count("window");
  SOMNUS_CHECK(j.contains("losses") && j.at("losses").is_array() &&
                   static_cast<int64_t>(j.at("losses").size()) <= window,
               "TrainStepGuard: state must hold at most {} losses", window);
  std::deque<double> losses;
  for (const auto& v : j.at("losses")) {
    SOMNUS_CHECK(v.is_number() && std::isfinite(v.get<double>()), "TrainStepGuard: state losses must be finite numbers");
    losses.push_back(v.get<double>());
  }
  // A different window (the config changed on resume) keeps the newest losses that fit.
  while (static_cast<int64_t>(losses.size()) > window_) losses.pop_front();
  consecutive_spikes_ = count("consecutive_spikes");
  consecutive_non_finite_ = count("consecutive_non_finite");
  skipped_ = count("skipped");
  losses_ = std::move(losses);
}

}  // namespace somnus::nn
