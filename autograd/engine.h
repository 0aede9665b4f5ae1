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

}  // namespace somnus::autograd

namespace somnus {
using autograd::backward;
}  // namespace somnus
