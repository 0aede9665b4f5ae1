// LoRA adapter sets over a Transformer (PARADIGM §3): several named adapters ("dreamer",
// "trial", "apply", ...) on one set of shared base weights.
//
// How the sharing works. Each targeted nn::Linear gets LoRA enabled once (Linear::enable_lora
// registers the parameters "lora_A" (r, in) and "lora_B" (out, r)). An adapter is one (A, B)
// pair of tensors per targeted layer, owned here; activating it swaps those handles into the
// layers with Module::set_parameter. Nothing of the base model is copied: the weights the
// layers compute with are the same tensors (same data pointers) whichever adapter is active.
// With no adapter active, an "off" pair (A = 0, B = 0, frozen) is swapped in, so the adapter
// branch adds an exact zero and outputs are those of the base model.
//
// Side effect to know about: once an AdapterSet has been built, the targeted layers keep
// their (frozen, zero) lora_A/lora_B parameters, so the model's state_dict lists them and a
// strict load into a plain model refuses it; state_dict_without_lora (below) gives the plain
// architecture's state dict.
//
// Which layers: every Linear of the model whose dotted module name contains one of the
// `targets` substrings, e.g. "attn" (wqkv, wo), "mlp" (dense MLPs of every level), "experts"
// (MoE experts), "router". The lm head and embeddings are never targeted.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/layers.h"
#include "nn/transformer.h"
#include "tensor/random.h"

namespace somnus::sleep {

struct LoraConfig {
  int64_t rank = 4;
  double alpha = 8.0;  // scale = alpha / rank
  std::vector<std::string> targets = {"attn", "mlp"};
  // Throws somnus::Error naming the bad field (rank < 1, alpha <= 0, no target, an empty target).
  void validate() const;
};
void to_json(nlohmann::json& j, const LoraConfig& c);
// Strict: unknown keys and wrong types are errors. Validates.
void from_json(const nlohmann::json& j, LoraConfig& c);

class AdapterSet {
 public:
  // Enables LoRA on the targeted layers that do not have it yet (a layer that already has
  // LoRA must have the same rank and alpha) and swaps the "off" adapter in. Throws when no
  // Linear matches the targets. The model must outlive the set.
  AdapterSet(nn::Transformer& model, LoraConfig cfg, Generator& gen);
  ~AdapterSet();
  AdapterSet(const AdapterSet&) = delete;
  AdapterSet& operator=(const AdapterSet&) = delete;

  // A new adapter: A ~ N(0, 1/in), B = 0 (a no-op until trained). Throws if the name exists.
  void add(const std::string& name, Generator& gen);
  bool has(const std::string& name) const { return adapters_.count(name) != 0; }
  // Redraws A ~ N(0, 1/in) and zeroes B, in place (handles stay valid), and clears grads.
  void reset(const std::string& name, Generator& gen);

  // Swaps the adapter's tensors into the layers; they require grad (the base weights keep
  // their own flags: freeze them with TrainableScope when training the adapter).
  void enable(const std::string& name);
  // Swaps the off adapter in: the model computes exactly its base function again.
  void disable();
  // "" when none is active.
  const std::string& active() const { return active_; }

  // The adapter's tensors, A and B per layer (for an optimiser).
  std::vector<Tensor> parameters(const std::string& name) const;
  // W += (alpha/r) · B @ A for every layer (no history), then resets the adapter (B = 0) so
  // that its delta is not counted twice. Works whether the adapter is active or not.
  void merge(const std::string& name, Generator& gen);

  // A copy of the adapter's tensors (detached, no grad), keyed "<layer>.lora_A" and
  // "<layer>.lora_B" per targeted layer in model order: what a caller keeps of an adapter
  // beyond this set's lifetime (e.g. the learned dream generator, sleep/dreaming.h).
  NamedTensors adapter_state(const std::string& name) const;
  // Copies such a state into the adapter, in place (handles stay valid; grads cleared).
  // Strict: the keys must be exactly this set's (in any order: a checkpoint's tensors come
  // back sorted by name), each shape must match; otherwise throws somnus::Error naming the
  // first difference, and the adapter is unchanged.
  void load_adapter_state(const std::string& name, const NamedTensors& state);

  // Dotted module names of the targeted layers, in model order.
  const std::vector<std::string>& layer_names() const { return names_; }
  nn::Linear& layer(size_t i) const { return *layers_.at(i); }
  const LoraConfig& config() const { return cfg_; }

 private:
  struct Pair {
    Tensor A;  // (r, in)
    Tensor B;  // (out, r)
  };
  using Adapter = std::vector<Pair>;  // one per layer
  const Adapter& get(const std::string& name) const;
  void swap_in(const Adapter& a);

  nn::Transformer& model_;
  LoraConfig cfg_;
  std::vector<std::string> names_;
  std::vector<nn::Linear*> layers_;
  Adapter off_;
  std::map<std::string, Adapter> adapters_;
  std::string active_;
};

// The model's state dict as the plain architecture (no LoRA) has it, for saving a model that
// has had adapters (e.g. after dreaming) so that a strict load into a freshly built model of
// the same config accepts it: every "lora_A" / "lora_B" entry is left out, and the weight of
// each Linear whose LoRA is enabled and not merged carries the adapter swapped in at the time,
// W + (alpha/r) · B @ A, so the result computes what the model computes now. With an
// AdapterSet's "off" pair in place (no adapter active: what a Dreamer leaves behind, its
// applied update already merged into W) that delta is exactly zero and the weight equals W bit for bit.
// A layer whose LoRA is merged (Linear::merge_lora) has the delta in W already. The model is
// not changed: weights with a delta added are new tensors, every other entry is the model's
// own handle (as in state_dict()).
NamedTensors state_dict_without_lora(nn::Module& model);

// Whether an adapter state (AdapterSet::adapter_state's keys and shapes) fits the adapter an
// AdapterSet with `cfg` would build on `model`, checked without building it (the model gets no
// LoRA parameters): throws somnus::Error naming the first missing, extra or misshapen entry. For
// refusing a carried state before work that would be lost (e.g. `somnus sleep`'s wake), where
// load_adapter_state would refuse it only once the set exists.
void check_adapter_state_fits(nn::Transformer& model, const LoraConfig& cfg, const NamedTensors& state);

// Makes exactly `trainable` require grad for its lifetime: every parameter of the model is
// frozen, then the given tensors are unfrozen. The previous flags are restored on destruction
// (the tensors the model holds at that point, by name, plus the given ones).
class TrainableScope {
 public:
  TrainableScope(nn::Module& model, const std::vector<Tensor>& trainable);
  ~TrainableScope();
  TrainableScope(const TrainableScope&) = delete;
  TrainableScope& operator=(const TrainableScope&) = delete;

 private:
  std::vector<std::pair<Tensor, bool>> saved_;
};

}  // namespace somnus::sleep
