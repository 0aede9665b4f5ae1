// The tape's nodes (node.h) and the backward engine (engine.h).
#include "autograd/engine.h"

#include <atomic>
#include <cmath>
#include <queue>
#include <unordered_map>

#include "autograd/grad_mode.h"
#include "kernels/ops.h"
#include "tensor/format.h"

namespace somnus::autograd {

namespace {
std::atomic<uint64_t> next_sequence_nr{0};

Tensor add_grads(const Tensor& a, const Tensor& b) { return kernels::binary(kernels::Binary::add, a, b); }

thread_local bool anomaly_enabled = false;
thread_local bool deterministic_enabled = false;

// "NaN" or "Inf" for the first non-finite element of a floating tensor, else nullptr.
const char* first_non_finite(const Tensor& t) {
  if (!t.defined() || !is_floating(t.dtype()) || t.numel() == 0) return nullptr;
  for (const double x : t.to_vector()) {
    if (std::isnan(x)) return "NaN";
    if (std::isinf(x)) return "Inf";
  }
  return nullptr;
}
}  // namespace

bool is_anomaly_enabled() { return anomaly_enabled; }
void set_anomaly_enabled(bool enabled) { anomaly_enabled = enabled; }
AnomalyModeGuard::AnomalyModeGuard(bool enabled) : previous_(anomaly_enabled) { anomaly_enabled = enabled; }
AnomalyModeGuard::~AnomalyModeGuard() { anomaly_enabled = previous_; }
bool is_deterministic() { return deterministic_enabled; }
void set_deterministic(bool enabled) { deterministic_enabled = enabled; }
DeterministicGuard::DeterministicGuard(bool enabled) : previous_(deterministic_enabled) {
  deterministic_enabled = enabled;
}
DeterministicGuard::~DeterministicGuard() { deterministic_enabled = previous_; }

Node::Node() : sequence_nr(next_sequence_nr.fetch_add(1, std::memory_order_relaxed)) {}

Node::~Node() {
  // Dropping a graph that never ran backward (a forward with grad on, then discarded) frees
  // its chain of nodes here. Recursing through the shared_ptrs would overflow the stack on
  // a deep graph, so nodes that only this chain owns are unlinked through a worklist.
  std::vector<std::shared_ptr<Node>> pending;
  for (Edge& e : next_edges) {
    if (e.node) pending.push_back(std::move(e.node));
  }
  while (!pending.empty()) {
    std::shared_ptr<Node> n = std::move(pending.back());
    pending.pop_back();
    if (n.use_count() == 1) {
      for (Edge& e : n->next_edges) {
        if (e.node) pending.push_back(std::move(e.node));
      }
      n->next_edges.clear();
    }
  }  // each n is destroyed with no edges left, so its own destructor does not recurse
}

// ---------------------------------------------------------------- nodes

TensorList AccumulateGrad::backward(const TensorList& grad_outputs) {
  const Tensor& g = grad_outputs.at(0);
  if (!g.defined()) return {};
  if (!leaf->grad) {
    // A fresh copy: g may alias a tensor someone else owns (a user-given root gradient, a
    // view), and later accumulations write into .grad in place.
    leaf->grad = g.clone().impl_ptr();
    return {};
  }
  Tensor acc(leaf->grad);
  SOMNUS_CHECK(acc.shape() == g.shape() && acc.device() == g.device(),
               "backward: cannot accumulate a gradient of shape {} on {} into .grad of shape {} on {}",
               shape_str(g.shape()), g.device().str(), shape_str(acc.shape()), acc.device().str());
  // In place, so a handle on .grad (an optimiser's) sees the sum.
  acc.copy_(add_grads(acc, g));
  return {};
}

TensorList LambdaNode::backward(const TensorList& grad_outputs) {
  SOMNUS_CHECK(fn_ != nullptr, "backward: the saved tensors of '{}' were already freed", name_);
  return fn_(grad_outputs);
}

Edge gradient_edge(const Tensor& t) {
  Edge e;
  if (!t.defined()) return e;
  if (t.grad_fn()) {
    e.node = t.grad_fn();
    e.input_nr = t.impl().output_nr;
  } else if (t.requires_grad()) {
    e.node = std::make_shared<AccumulateGrad>(t.impl_ptr());
  } else {
    return e;
  }
  e.shape = t.shape();
  e.dtype = t.dtype();
  e.device = t.device();
  return e;
}

bool needs_grad(const TensorList& inputs) {
  if (!is_grad_enabled()) return false;
  for (const Tensor& t : inputs) {
    if (t.defined() && (t.requires_grad() || t.grad_fn())) return true;
  }
  return false;
}

bool record(const std::shared_ptr<Node>& node, const TensorList& inputs, TensorList& outputs) {
  if (!needs_grad(inputs)) return false;
  if (anomaly_enabled) {
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (const char* bad = first_non_finite(outputs[i])) {
        fail("anomaly mode: the forward of '{}' produced {} in output {} of shape {}", node->name(), bad, i,
             shape_str(outputs[i].shape()));
      }
    }
  }
  node->next_edges.clear();
  node->next_edges.reserve(inputs.size());
  for (const Tensor& t : inputs) node->next_edges.push_back(gradient_edge(t));
  node->num_outputs = static_cast<uint32_t>(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    Tensor& out = outputs[i];
    if (!out.defined()) continue;
    // A kernel may hand back an input (or another tensor with history) unchanged; giving it
    // this node would rewrite that tensor's history, so take a fresh handle.
    if (out.grad_fn() || out.requires_grad()) out = out.detach();
    if (!is_floating(out.dtype())) continue;  // integer outputs carry no gradient
    TensorImpl& impl = out.impl();
    impl.grad_fn = node;
    impl.output_nr = static_cast<uint32_t>(i);
    impl.requires_grad = true;
  }
  return true;
}

Tensor record(std::string name, const TensorList& inputs, Tensor output, BackwardFn fn) {
  if (!needs_grad(inputs)) return output;
  TensorList outs{std::move(output)};
  record(std::make_shared<LambdaNode>(std::move(name), std::move(fn)), inputs, outs);
  return outs[0];
}

TensorList record(std::string name, const TensorList& inputs, TensorList outputs, BackwardFn fn) {
  if (!needs_grad(inputs)) return outputs;
  record(std::make_shared<LambdaNode>(std::move(name), std::move(fn)), inputs, outputs);
  return outputs;
}

// ---------------------------------------------------------------- engine

namespace {

struct Pending {
  std::shared_ptr<Node> node;  // keeps the node alive until it has run
  int64_t dependencies = 0;    // edges from not-yet-run nodes into this one
  TensorList grads;            // summed gradients of the node's outputs
};

// A gradient a rule returned, checked against the input it is for.
Tensor checked_grad(const Tensor& g, const Edge& edge, const Node& from, size_t input) {
  SOMNUS_CHECK(g.shape() == edge.shape, "backward of '{}': gradient for input {} has shape {}, expected {}",
               from.name(), input, shape_str(g.shape()), shape_str(edge.shape));
  SOMNUS_CHECK(g.device() == edge.device, "backward of '{}': gradient for input {} is on {}, expected {}", from.name(),
               input, g.device().str(), edge.device.str());
  return g.dtype() == edge.dtype ? g : kernels::cast(g, edge.dtype);
}

}  // namespace

void backward(const TensorList& roots, const TensorList& grads, bool retain_graph) {
  SOMNUS_CHECK(roots.size() == grads.size(), "backward: {} roots but {} gradients", roots.size(), grads.size());
  NoGradGuard no_grad;

  std::unordered_map<Node*, Pending> graph;
  std::vector<Node*> stack;
  auto visit = [&](const std::shared_ptr<Node>& n) -> Pending& {
    auto [it, inserted] = graph.try_emplace(n.get());
    if (inserted) {
      SOMNUS_CHECK(!n->released,
                   "backward: '{}' was already freed by an earlier backward through this graph "
                   "(recompute the forward, or pass retain_graph = true)",
                   n->name());
      it->second.node = n;
      it->second.grads.resize(n->num_outputs);
      stack.push_back(n.get());
    }
    return it->second;
  };

  // Seed the roots' gradients.
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& root = roots[i];
    const Tensor& g = grads[i];
    if (!g.defined()) continue;
    SOMNUS_CHECK(root.defined(), "backward: root {} is undefined", i);
    const Edge e = gradient_edge(root);
    SOMNUS_CHECK(e.valid(), "backward: root {} of shape {} does not require grad and has no grad_fn", i,
                 shape_str(root.shape()));
    SOMNUS_CHECK(g.shape() == root.shape(), "backward: gradient of shape {} given for root {} of shape {}",
                 shape_str(g.shape()), i, shape_str(root.shape()));
    SOMNUS_CHECK(g.dtype() == root.dtype() && g.device() == root.device(),
                 "backward: gradient ({}, {}) given for root {} ({}, {})", dtype_name(g.dtype()), g.device().str(), i,
                 dtype_name(root.dtype()), root.device().str());
    Tensor& slot = visit(e.node).grads[e.input_nr];
    slot = slot.defined() ? add_grads(slot, g) : g;
  }

  // Every reachable node, with the number of edges that lead into it.
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->next_edges) {
      if (e.valid()) visit(e.node).dependencies++;
    }
  }

  // Newest node first among the ready ones (a valid topological order either way).
  using Ready = std::pair<uint64_t, Node*>;
  std::priority_queue<Ready> ready;
  for (auto& [n, p] : graph) {
    if (p.dependencies == 0) ready.push({n->sequence_nr, n});
  }

  while (!ready.empty()) {
    Node* n = ready.top().second;
    ready.pop();
    auto it = graph.find(n);
    Pending p = std::move(it->second);  // p.node keeps n alive to the end of this iteration
    graph.erase(it);

    bool any_grad = false;
    for (const Tensor& g : p.grads) any_grad = any_grad || g.defined();
    TensorList input_grads;
    if (any_grad) {
      input_grads = n->backward(p.grads);
      SOMNUS_CHECK(input_grads.size() == n->next_edges.size(), "backward of '{}': returned {} gradients for {} inputs",
                   n->name(), input_grads.size(), n->next_edges.size());
    }
    p.grads.clear();  // the output gradients are no longer needed

    for (size_t j = 0; j < n->next_edges.size(); ++j) {
      const Edge& e = n->next_edges[j];
      if (!e.valid()) continue;
      Pending& q = graph.at(e.node.get());
      if (any_grad && input_grads[j].defined()) {
        Tensor g = checked_grad(input_grads[j], e, *n, j);
        if (anomaly_enabled) {
          if (const char* bad = first_non_finite(g)) {
            fail("anomaly mode: the backward of '{}' produced {} in the gradient for input {} of shape {}", n->name(),
                 bad, j, shape_str(g.shape()));
          }
        }
        Tensor& slot = q.grads[e.input_nr];
        slot = slot.defined() ? add_grads(slot, g) : std::move(g);
      }
      if (--q.dependencies == 0) ready.push({e.node->sequence_nr, e.node.get()});
    }
    input_grads.clear();

    if (!retain_graph) {
      n->release();
      n->next_edges.clear();  // frees the graph node by node (no deep recursive destruction)
      n->released = true;
    }
  }
  SOMNUS_CHECK(graph.empty(), "backward: internal error: {} nodes never became ready", graph.size());
}

void backward(const Tensor& root, const Tensor& grad, bool retain_graph) {
  SOMNUS_CHECK(root.defined(), "backward: called on an undefined tensor");
  SOMNUS_CHECK(root.grad_fn() || root.requires_grad(),
               "backward: tensor of shape {} does not require grad and has no grad_fn (computed under no_grad, "
               "or from inputs that do not require grad?)",
               shape_str(root.shape()));
  Tensor g = grad;
  if (!g.defined()) {
    SOMNUS_CHECK(root.numel() == 1,
                 "backward: a gradient can be implied only for a scalar output, but the root has shape {} "
                 "(pass a gradient of that shape)",
                 shape_str(root.shape()));
    g = Tensor::ones(root.shape(), root.dtype(), root.device());
  }
  backward(TensorList{root}, TensorList{g}, retain_graph);
}

}  // namespace somnus::autograd
