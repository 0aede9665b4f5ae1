// Gradient checkpointing: trade compute for memory on a segment of the forward.
//
//   auto out = checkpoint([&](const TensorList& in) { return TensorList{block(in[0])}; }, {x});
//
// The forward runs `fn` under no_grad, so none of the segment's intermediates are kept;
// only the inputs are saved. In backward, the node recomputes `fn` with grad enabled on
// detached copies of the inputs (the default Generator replays the same random stream, so
// dropout masks match), backpropagates the incoming gradients through that recomputed
// subgraph — parameters captured by `fn` accumulate their grads as usual — and returns the
// gradients of the inputs.
//
// Unlike torch's reentrant checkpoint, the node is recorded whenever grad mode is on, even
// if no input requires grad, so that parameters used inside `fn` still get gradients.
// `fn` must be deterministic given its inputs and the default Generator; random ops that
// draw from another Generator are not replayed.
#pragma once
#include <functional>
#include <vector>

#include "autograd/node.h"

namespace somnus::autograd {

using SegmentFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

std::vector<Tensor> checkpoint(SegmentFn fn, const std::vector<Tensor>& inputs);

}  // namespace somnus::autograd

namespace somnus {
using autograd::checkpoint;
}  // namespace somnus
