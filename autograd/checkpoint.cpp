// Gradient checkpointing (see checkpoint.h): a node that saves only its segment's inputs
// and recomputes the segment during backward.
#include "autograd/checkpoint.h"

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "tensor/format.h"
#include "tensor/random.h"

namespace somnus::autograd {

namespace {

struct CheckpointNode final : Node {
  CheckpointNode(SegmentFn fn, std::vector<Tensor> inputs, Generator rng, bool deterministic)
      : fn(std::move(fn)), inputs(std::move(inputs)), rng(rng), deterministic(deterministic) {}

  std::string name() const override { return "checkpoint"; }
  void release() override {
    fn = nullptr;
    inputs.clear();
  }

  TensorList backward(const TensorList& grad_outputs) override {
    SOMNUS_CHECK(fn != nullptr, "backward: the saved inputs of 'checkpoint' were already freed");
    // Detached copies of the inputs become the leaves of the recomputed subgraph.
    TensorList leaves;
    for (size_t i = 0; i < inputs.size(); ++i) {
      Tensor leaf = inputs[i].defined() ? inputs[i].detach() : Tensor();
      if (needs_input_grad(i)) leaf.set_requires_grad(true);
      leaves.push_back(leaf);
    }
    // Replay the forward's random stream, then put the generator back where it was.
    TensorList outputs;
    {
      Generator& gen = default_generator();
      const Generator resume = gen;
      gen = rng;
      try {
        EnableGradGuard grad_on;
        // The segment's ops are recorded now, so they take the deterministic mode the forward
        // ran under (engine.h reads it when an op is recorded), not whatever is set at backward.
        DeterministicGuard same_mode(deterministic);
        outputs = fn(leaves);
      } catch (...) {
        gen = resume;
        throw;
      }
      gen = resume;
    }
    SOMNUS_CHECK(outputs.size() == grad_outputs.size(), "checkpoint: the recompute returned {} outputs, the forward {}",
                 outputs.size(), grad_outputs.size());
    TensorList roots, grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (!grad_outputs[i].defined() || !outputs[i].defined()) continue;
      if (!outputs[i].grad_fn() && !outputs[i].requires_grad()) continue;  // does not depend on anything trainable
      roots.push_back(outputs[i]);
      grads.push_back(grad_outputs[i]);
    }
    if (!roots.empty()) autograd::backward(roots, grads);
    TensorList input_grads;
    for (const Tensor& leaf : leaves)
      input_grads.push_back(leaf.defined() && leaf.requires_grad() ? leaf.grad() : Tensor());
    return input_grads;
  }

  SegmentFn fn;
  std::vector<Tensor> inputs;  // detached
  Generator rng;               // the default generator's state when the forward began
  bool deterministic;          // is_deterministic() when the forward ran
};

}  // namespace

std::vector<Tensor> checkpoint(SegmentFn fn, const std::vector<Tensor>& inputs) {
  const Generator rng = default_generator();
  std::vector<Tensor> outputs;
  {
    NoGradGuard no_grad;
    outputs = fn(inputs);
  }
  if (!is_grad_enabled()) return outputs;

  std::vector<Tensor> saved;
  for (const Tensor& t : inputs) saved.push_back(t.defined() ? t.detach() : Tensor());
  auto node = std::make_shared<CheckpointNode>(std::move(fn), std::move(saved), rng, is_deterministic());
  node->next_edges.clear();
  for (const Tensor& t : inputs) node->next_edges.push_back(gradient_edge(t));
  node->num_outputs = static_cast<uint32_t>(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].defined()) continue;
    // Fresh handles: fn may return an input or a captured tensor unchanged.
    outputs[i] = outputs[i].detach();
    if (!is_floating(outputs[i].dtype())) continue;
    TensorImpl& impl = outputs[i].impl();
    impl.grad_fn = node;
    impl.output_nr = static_cast<uint32_t>(i);
    impl.requires_grad = true;
  }
  return outputs;
}

}  // namespace somnus::autograd
