// Reverse-mode backward over the tape of autograd/node.h.
//
// The engine finds every node reachable from the roots, counts for each how many edges
// lead into it (its dependencies), and runs a node only once all of them have delivered
// their gradient; gradients that reach the same node output along several paths are summed
// first, so every node runs exactly once. Among ready nodes the newest runs first.
// Undefined gradients (an output nobody used) flow as "no gradient"; a node whose output
// gradients are all undefined is skipped. Leaves accumulate into `.grad` with `+=`, so
// two backward calls add up (zero the grads between steps).
//
// The graph is freed as it is consumed: each node releases its saved tensors and edges
// after it runs, so a second backward through the same graph throws (unless retain_graph).
// Backward rules run with grad mode off: no graph is built for the backward itself.
#pragma once
#include "autograd/node.h"

namespace somnus::autograd {

// From a scalar root (grad defaults to ones) or with a given gradient of root's shape.
// Throws somnus::Error when root requires no grad, or is not a scalar and grad is undefined.
void backward(const Tensor& root, const Tensor& grad = Tensor(), bool retain_graph = false);

// Several roots at once (checkpoint uses this). grads[i] may be undefined for a root that
// receives no gradient; then that root is skipped (and may be a tensor without history).
void backward(const TensorList& roots, const TensorList& grads, bool retain_graph = false);

// Anomaly mode (thread-local, off by default), for finding where a NaN or Inf is born: while
// it is on, record() checks every floating output of each op it records (the forward of
// every op whose inputs need grad) and the engine checks every gradient a backward rule
// returns; the first non-finite value throws somnus::Error naming the op, e.g.
//   anomaly mode: the forward of 'log' produced NaN in output 0 of shape (4, 8)
//   anomaly mode: the backward of 'div' produced Inf in the gradient for input 1 of shape (8)
// Each check copies the tensor to the host: a debugging tool, not for production runs.
// Ops recorded before the guard (or run without grad) are not checked.
bool is_anomaly_enabled();
void set_anomaly_enabled(bool enabled);

// `AnomalyModeGuard anomaly;` turns anomaly mode on for a scope (restored on exit).
class AnomalyModeGuard {
 public:
  explicit AnomalyModeGuard(bool enabled = true);
  ~AnomalyModeGuard();
  AnomalyModeGuard(const AnomalyModeGuard&) = delete;
  AnomalyModeGuard& operator=(const AnomalyModeGuard&) = delete;

 private:
  bool previous_;
};

// Deterministic mode (thread-local, off by default; issue 8 §5): ops recorded while it is on
// get backward rules without atomics on CUDA, so two runs give bitwise-identical gradients:
// embedding and attention use their fixed-order kernels (sorted ids; a separate dQ pass), and
// gather / index_select, whose CUDA scatter kernels add atomically, scatter on the host
// instead (slow; debugging and reproducibility runs). The CPU backend is deterministic with
// or without it. Read when an op is recorded, so set it before the forward.
bool is_deterministic();
void set_deterministic(bool enabled);

class DeterministicGuard {
 public:
  explicit DeterministicGuard(bool enabled = true);
  ~DeterministicGuard();
  DeterministicGuard(const DeterministicGuard&) = delete;
  DeterministicGuard& operator=(const DeterministicGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace somnus::autograd

namespace somnus {
using autograd::backward;
using autograd::AnomalyModeGuard;
using autograd::DeterministicGuard;
}  // namespace somnus
