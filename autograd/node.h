// The autograd tape: a graph of Nodes. Every tensor produced by a differentiable function
// with grad enabled points (TensorImpl::grad_fn, output_nr) at the Node that made it; each
// Node points at the nodes of its inputs through `next_edges`. Leaves that require grad get
// an AccumulateGrad node, which adds (`+=`) the incoming gradient into the leaf's `.grad`.
//
// A Node saves what its backward rule needs. Saved tensors are always detached handles
// (no grad_fn), so a node that saves its own output does not form a reference cycle.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace somnus::autograd {

using TensorList = std::vector<Tensor>;

struct Node;

// Where the gradient of one input goes: output `input_nr` of `node`. A null node means
// the input needs no gradient (a constant, an index tensor, an undefined optional input).
// shape/dtype/device describe the input, so the engine can check each gradient a backward
// rule returns.
struct Edge {
  std::shared_ptr<Node> node;
  uint32_t input_nr = 0;
  Shape shape;
  DType dtype = DType::f32;
  Device device;
  bool valid() const { return node != nullptr; }
};

struct Node {
  Node();
  virtual ~Node();  // frees long chains of nodes iteratively, not recursively
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Gradients of this node's outputs (one per output; undefined = that output was not
  // used) -> gradients of its inputs (one per next_edges entry; undefined = none).
  virtual TensorList backward(const TensorList& grad_outputs) = 0;
  virtual std::string name() const = 0;
  // Drop saved tensors; the engine calls this once the node has run (the graph is freed).
  virtual void release() {}

  // Whether input i needs a gradient; rules skip work for inputs that do not.
  bool needs_input_grad(size_t i) const { return i < next_edges.size() && next_edges[i].valid(); }

  std::vector<Edge> next_edges;  // one per input
  uint32_t num_outputs = 1;
  uint64_t sequence_nr;  // creation order; among ready nodes the engine runs the newest first
  bool released = false;
};

// The sink for a leaf tensor that requires grad: accumulates into leaf->grad.
struct AccumulateGrad final : Node {
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf) : leaf(std::move(leaf)) {}
  TensorList backward(const TensorList& grad_outputs) override;
  std::string name() const override { return "AccumulateGrad"; }
  std::shared_ptr<TensorImpl> leaf;
};

// A node whose backward rule is a lambda; the lambda captures the saved tensors, so
// release() simply destroys it. This is what autograd/functions.cpp uses for every op.
using BackwardFn = std::function<TensorList(const TensorList& grad_outputs)>;
struct LambdaNode final : Node {
  LambdaNode(std::string name, BackwardFn fn) : name_(std::move(name)), fn_(std::move(fn)) {}
  TensorList backward(const TensorList& grad_outputs) override;
  std::string name() const override { return name_; }
  void release() override { fn_ = nullptr; }

 private:
  std::string name_;
  BackwardFn fn_;
};

// The edge the gradient of `t` flows along: its grad_fn, a (fresh) AccumulateGrad for a
// leaf that requires grad, or an invalid edge.
Edge gradient_edge(const Tensor& t);

// True when grad mode is on and some (defined) input requires grad.
bool needs_grad(const TensorList& inputs);

// Makes `outputs` the results of `node`: connects node to the inputs' edges, and sets
// grad_fn/output_nr/requires_grad on each output. Does nothing (returns false) unless
// needs_grad(inputs). An output that shares its TensorImpl with an input is first replaced
// by a detached handle, so an input's own history is never overwritten.
bool record(const std::shared_ptr<Node>& node, const TensorList& inputs, TensorList& outputs);

// Convenience for custom ops (nn/ fused kernels use it too):
//   return autograd::record("exp", {x}, y, [y = y.detach()](const TensorList& g) {
//     return TensorList{kernels::binary(kernels::Binary::mul, g[0], y)}; });
// The lambda must capture only detached tensors (save with .detach()).
Tensor record(std::string name, const TensorList& inputs, Tensor output, BackwardFn fn);
TensorList record(std::string name, const TensorList& inputs, TensorList outputs, BackwardFn fn);

}  // namespace somnus::autograd
