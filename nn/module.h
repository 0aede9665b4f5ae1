// Module: the base of every nn/ layer. A module owns named parameters (trainable tensors),
// named buffers (tensors that are state but not trained: RoPE tables, slot masks) and named
// submodules, and gives the whole tree the PyTorch-style conveniences: recursive dotted
// names ("blocks.0.attn.wqkv.weight"), state_dict / load_state_dict, to(device/dtype),
// train()/eval(), zero_grad() and parameter counts.
//
// A parameter is a plain Tensor that requires grad and has no history (a leaf). "Frozen"
// means requires_grad = false: it still takes part in forward, but the tape does not reach
// it and it gets no .grad. Consolidation (PARADIGM §2) freezes everything but one slot.
//
// Registration stores a pointer to the member Tensor itself, so the module's members are
// the one source of truth: `set_parameter` can swap the handle a layer computes with (the
// teacher view of PARADIGM §2 swaps the sender's old tensors in; tests swap gradcheck's
// handles in), and `to()` replaces handles. Modules are therefore neither copyable nor
// movable; they live behind std::shared_ptr.
//
// Ordering: a module's own parameters in registration order, then each submodule's, in
// registration order, depth first (PyTorch's order). It is deterministic, so optimiser
// state and checkpoints line up with parameters by position as well as by name.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace somnus {

// Name -> tensor, in a fixed order (the same alias as nn/safetensors.h, so a state_dict can
// be saved as safetensors directly).
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

namespace nn {

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // ---- the tree
  // Every parameter with its dotted name. trainable_only skips frozen ones.
  NamedTensors named_parameters(bool trainable_only = false) const;
  std::vector<Tensor> parameters(bool trainable_only = false) const;
  // Buffers, persistent and not.
  NamedTensors named_buffers() const;
  // (dotted name, module) for this module ("") and every descendant, depth first.
  std::vector<std::pair<std::string, Module*>> named_modules();
  // Element count of the parameters.
  int64_t num_parameters(bool trainable_only = false) const;

  // The parameter with this dotted name; throws somnus::Error naming it when absent.
  Tensor parameter(const std::string& name) const;
  bool has_parameter(const std::string& name) const;
  // Replaces the handle the module computes with (same shape, dtype and device; throws
  // otherwise). Returns the previous handle. The new tensor is used as is (its requires_grad
  // included): this is how a teacher view swaps old weights in without copying a model.
  Tensor set_parameter(const std::string& name, const Tensor& value);

  // ---- state
  // Parameters and persistent buffers, by dotted name (handles, not copies).
  NamedTensors state_dict() const;
  // Copies values into the existing tensors (so optimiser handles stay valid), converting
  // device as needed. Everything is validated before anything is copied. Errors name the
  // tensor:
  //   strict:   missing and unexpected names, shape mismatches, dtype mismatches;
  //   relaxed:  missing/unexpected names are skipped and dtypes converted; shapes must still match.
  // Afterwards every module's on_load() runs, so modules with host-side state derived from
  // buffers (the slot masks) resynchronise.
  void load_state_dict(const NamedTensors& state, bool strict = true);
  void load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);

  // ---- conversion and modes
  // Moves parameters and buffers (new handles; do it before building an optimiser). to(dtype)
  // converts floating tensors only: integer buffers (masks) keep their dtype.
  void to(Device device);
  void to(DType dtype);
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Sets every parameter's .grad to none.
  void zero_grad();
  // requires_grad = !frozen for every parameter of the tree.
  void set_frozen(bool frozen);
  void freeze() { set_frozen(true); }
  void unfreeze() { set_frozen(false); }

 protected:
  // Registers a member tensor as a parameter: `weight = ...; register_parameter("weight", weight);`.
  // The member's address is kept, so the member must outlive the module's use (any data
  // member does). Sets requires_grad = !frozen.
  void register_parameter(const std::string& name, Tensor& member, bool frozen = false);
  // A buffer: persistent buffers are part of state_dict.
  void register_buffer(const std::string& name, Tensor& member, bool persistent = true);
  // Registers and returns the submodule (so `fc = register_module("fc", std::make_shared<Linear>(...))`).
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_module(name, module);
    return module;
  }
  // Called on every module after load_state_dict has copied the values.
  virtual void on_load() {}

 private:
  struct ParamEntry {
    std::string name;
    Tensor* member;
  };
  struct BufferEntry {
    std::string name;
    Tensor* member;
    bool persistent;
  };
  void add_module(const std::string& name, std::shared_ptr<Module> module);
  void check_new_name(const std::string& name, const char* what) const;
  // (dotted name, member pointer) for every parameter / buffer of the tree.
  void collect_parameters(const std::string& prefix, std::vector<std::pair<std::string, Tensor*>>& out) const;
  void collect_buffers(const std::string& prefix, bool persistent_only,
                       std::vector<std::pair<std::string, Tensor*>>& out) const;
  Tensor* find_parameter(const std::string& name) const;

  std::vector<ParamEntry> params_;
  std::vector<BufferEntry> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// A list of submodules named "0", "1", ... (PyTorch's nn.ModuleList), typed for access.
template <class M>
class ModuleList : public Module {
 public:
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    register_module(std::to_string(items_.size()), module);
    items_.push_back(module);
    return module;
  }
  M& operator[](size_t i) const { return *items_.at(i); }
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<std::shared_ptr<M>> items_;
};

}  // namespace nn
}  // namespace somnus
