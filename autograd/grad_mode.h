// Thread-local grad mode. While it is off, differentiable functions (autograd/functions.h)
// record no history: inference paths (teacher forwards, rollouts, evaluation) run under
// NoGradGuard and keep no activations alive. The backward engine itself runs with grad
// mode off; gradient checkpointing turns it back on for its recompute.
#pragma once

namespace somnus::autograd {

bool is_grad_enabled();
void set_grad_enabled(bool enabled);

// Sets grad mode for a scope and restores the previous mode when the scope ends (exceptions included).
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled);
  ~GradModeGuard();
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool previous_;
};

// `NoGradGuard no_grad;` — nothing in this scope records history.
class NoGradGuard : public GradModeGuard {
 public:
  NoGradGuard() : GradModeGuard(false) {}
};

// Re-enables recording inside a no-grad scope (used by checkpoint's recompute).
class EnableGradGuard : public GradModeGuard {
 public:
  EnableGradGuard() : GradModeGuard(true) {}
};

}  // namespace somnus::autograd

namespace somnus {
using autograd::EnableGradGuard;
using autograd::is_grad_enabled;
using autograd::NoGradGuard;
}  // namespace somnus
