// Module tree walks: names, state_dict, load_state_dict, conversion (see module.h).
#include "nn/module.h"

#include <map>
#include <set>

#include "autograd/grad_mode.h"
#include "tensor/format.h"

namespace somnus::nn {

namespace {

std::string join(const std::string& prefix, const std::string& name) {
  if (prefix.empty()) return name;
  return name.empty() ? prefix : prefix + "." + name;
}

// A parameter keeps being a leaf with its requires_grad flag across a handle replacement.
Tensor as_leaf(const Tensor& t, bool requires_grad) {
  Tensor leaf = t.detach();
  if (requires_grad) leaf.set_requires_grad(true);
  return leaf;
}

}  // namespace

// ---------------------------------------------------------------- registration

void Module::check_new_name(const std::string& name, const char* what) const {
  SOMNUS_CHECK(!name.empty() && name.find('.') == std::string::npos,
               "Module: {} name '{}' must be non-empty and contain no '.'", what, name);
  for (const auto& p : params_) SOMNUS_CHECK(p.name != name, "Module: {} name '{}' is already a parameter", what, name);
  for (const auto& b : buffers_) SOMNUS_CHECK(b.name != name, "Module: {} name '{}' is already a buffer", what, name);
  for (const auto& c : children_)
    SOMNUS_CHECK(c.first != name, "Module: {} name '{}' is already a submodule", what, name);
}

void Module::register_parameter(const std::string& name, Tensor& member, bool frozen) {
  check_new_name(name, "parameter");
  SOMNUS_CHECK(member.defined(), "Module: parameter '{}' is undefined", name);
  SOMNUS_CHECK(is_floating(member.dtype()), "Module: parameter '{}' must be floating, got {}", name,
               dtype_name(member.dtype()));
  SOMNUS_CHECK(member.grad_fn() == nullptr, "Module: parameter '{}' must be a leaf (no autograd history)", name);
  member.set_requires_grad(!frozen);
  params_.push_back({name, &member});
}

void Module::register_buffer(const std::string& name, Tensor& member, bool persistent) {
  check_new_name(name, "buffer");
  SOMNUS_CHECK(member.defined(), "Module: buffer '{}' is undefined", name);
  buffers_.push_back({name, &member, persistent});
}

void Module::add_module(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name(name, "submodule");
  SOMNUS_CHECK(module != nullptr, "Module: submodule '{}' is null", name);
  children_.emplace_back(name, std::move(module));
}

// ---------------------------------------------------------------- walks

void Module::collect_parameters(const std::string& prefix, std::vector<std::pair<std::string, Tensor*>>& out) const {
  for (const auto& p : params_) out.emplace_back(join(prefix, p.name), p.member);
  for (const auto& [name, child] : children_) child->collect_parameters(join(prefix, name), out);
}

void Module::collect_buffers(const std::string& prefix, bool persistent_only,
                             std::vector<std::pair<std::string, Tensor*>>& out) const {
  for (const auto& b : buffers_) {
    if (!persistent_only || b.persistent) out.emplace_back(join(prefix, b.name), b.member);
  }
  for (const auto& [name, child] : children_) child->collect_buffers(join(prefix, name), persistent_only, out);
}

NamedTensors Module::named_parameters(bool trainable_only) const {
  std::vector<std::pair<std::string, Tensor*>> all;
  collect_parameters("", all);
  NamedTensors out;
  for (const auto& [name, t] : all) {
    if (!trainable_only || t->requires_grad()) out.emplace_back(name, *t);
  }
  return out;
}

std::vector<Tensor> Module::parameters(bool trainable_only) const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters(trainable_only)) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor*>> all;
  collect_buffers("", false, all);
  NamedTensors out;
  for (const auto& [name, t] : all) out.emplace_back(name, *t);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{"", this}};
  for (const auto& [name, child] : children_) {
    for (auto& [sub, m] : child->named_modules()) out.emplace_back(join(name, sub), m);
  }
  return out;
}

int64_t Module::num_parameters(bool trainable_only) const {
  int64_t n = 0;
  for (const auto& [name, t] : named_parameters(trainable_only)) n += t.numel();
  return n;
}

Tensor* Module::find_parameter(const std::string& name) const {
  std::vector<std::pair<std::string, Tensor*>> all;
  collect_parameters("", all);
  for (const auto& [n, t] : all) {
    if (n == name) return t;
  }
  return nullptr;
}

bool Module::has_parameter(const std::string& name) const { return find_parameter(name) != nullptr; }

Tensor Module::parameter(const std::string& name) const {
  Tensor* t = find_parameter(name);
  SOMNUS_CHECK(t != nullptr, "Module: no parameter named '{}'", name);
  return *t;
}

Tensor Module::set_parameter(const std::string& name, const Tensor& value) {
  Tensor* t = find_parameter(name);
  SOMNUS_CHECK(t != nullptr, "set_parameter: no parameter named '{}'", name);
  SOMNUS_CHECK(value.defined(), "set_parameter: '{}': the new tensor is undefined", name);
  SOMNUS_CHECK(value.shape() == t->shape() && value.dtype() == t->dtype() && value.device() == t->device(),
               "set_parameter: '{}' is {} {} on {}, the new tensor is {} {} on {}", name, shape_str(t->shape()),
               dtype_name(t->dtype()), t->device().str(), shape_str(value.shape()), dtype_name(value.dtype()),
               value.device().str());
  Tensor old = *t;
  *t = value;
  return old;
}

// ---------------------------------------------------------------- state

NamedTensors Module::state_dict() const {
  std::vector<std::pair<std::string, Tensor*>> all;
  collect_parameters("", all);
  collect_buffers("", true, all);
  NamedTensors out;
  for (const auto& [name, t] : all) out.emplace_back(name, *t);
  return out;
}

void Module::load_state_dict(const NamedTensors& state, bool strict) {
  std::vector<std::pair<std::string, Tensor*>> own;
  collect_parameters("", own);
  collect_buffers("", true, own);

  std::map<std::string, const Tensor*> given;
  for (const auto& [name, t] : state) {
    SOMNUS_CHECK(given.emplace(name, &t).second, "load_state_dict: tensor '{}' appears twice", name);
    SOMNUS_CHECK(t.defined(), "load_state_dict: tensor '{}' is undefined", name);
  }

  // Validate everything first: a failed load leaves the model untouched.
  std::set<std::string> own_names;
  std::vector<std::pair<Tensor*, const Tensor*>> copies;
  for (const auto& [name, t] : own) {
    own_names.insert(name);
    auto it = given.find(name);
    if (it == given.end()) {
      SOMNUS_CHECK(!strict, "load_state_dict: missing tensor '{}' (expected {} {})", name, shape_str(t->shape()),
                   dtype_name(t->dtype()));
      continue;
    }
    const Tensor& src = *it->second;
    SOMNUS_CHECK(src.shape() == t->shape(), "load_state_dict: shape mismatch for '{}': given {}, model has {}", name,
                 shape_str(src.shape()), shape_str(t->shape()));
    SOMNUS_CHECK(!strict || src.dtype() == t->dtype(),
                 "load_state_dict: dtype mismatch for '{}': given {}, model has {}", name, dtype_name(src.dtype()),
                 dtype_name(t->dtype()));
    SOMNUS_CHECK(is_floating(src.dtype()) == is_floating(t->dtype()),
                 "load_state_dict: dtype mismatch for '{}': given {}, model has {}", name, dtype_name(src.dtype()),
                 dtype_name(t->dtype()));
    copies.emplace_back(t, &src);
  }
  if (strict) {
    for (const auto& [name, t] : state) {
      SOMNUS_CHECK(own_names.count(name) != 0, "load_state_dict: unexpected tensor '{}' {} {}", name,
                   shape_str(t.shape()), dtype_name(t.dtype()));
    }
  }

  NoGradGuard no_grad;
  for (auto& [dst, src] : copies) dst->copy_(*src);
  for (auto& [name, m] : named_modules()) m->on_load();
}

void Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  load_state_dict(NamedTensors(state.begin(), state.end()), strict);
}

// ---------------------------------------------------------------- conversion and modes

void Module::to(Device device) {
  for (auto& [name, m] : named_modules()) {
    for (auto& p : m->params_) {
      if (p.member->device() == device) continue;
      *p.member = as_leaf(p.member->to(device), p.member->requires_grad());
    }
    for (auto& b : m->buffers_) {
      if (b.member->device() != device) *b.member = b.member->to(device);
    }
  }
}

void Module::to(DType dtype) {
  SOMNUS_CHECK(is_floating(dtype), "Module::to: expected a floating dtype, got {}", dtype_name(dtype));
  for (auto& [name, m] : named_modules()) {
    for (auto& p : m->params_) {
      if (p.member->dtype() == dtype) continue;
      *p.member = as_leaf(p.member->to(dtype), p.member->requires_grad());
    }
    for (auto& b : m->buffers_) {
      if (is_floating(b.member->dtype()) && b.member->dtype() != dtype) *b.member = b.member->to(dtype);
    }
  }
}

void Module::train(bool on) {
  for (auto& [name, m] : named_modules()) m->training_ = on;
}

void Module::zero_grad() {
  for (auto& [name, m] : named_modules()) {
    for (auto& p : m->params_) p.member->set_grad(Tensor());
  }
}

void Module::set_frozen(bool frozen) {
  for (auto& [name, m] : named_modules()) {
    for (auto& p : m->params_) p.member->set_requires_grad(!frozen);
  }
}

}  // namespace somnus::nn
