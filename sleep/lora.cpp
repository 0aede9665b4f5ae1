#include "sleep/lora.h"

#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "sleep/baselines/json_fields.h"
#include "tensor/format.h"

namespace somnus::sleep {

using nlohmann::json;

namespace {
constexpr const char* kWhere = "LoraConfig";
}

void LoraConfig::validate() const {
  SOMNUS_CHECK(rank >= 1, "{}: 'rank' must be >= 1, got {}", kWhere, rank);
  SOMNUS_CHECK(std::isfinite(alpha) && alpha > 0.0, "{}: 'alpha' must be > 0, got {}", kWhere, alpha);
  SOMNUS_CHECK(!targets.empty(), "{}: 'targets' must name at least one module (e.g. \"attn\", \"mlp\")", kWhere);
  for (const std::string& t : targets) SOMNUS_CHECK(!t.empty(), "{}: 'targets' holds an empty name", kWhere);
}

void to_json(json& j, const LoraConfig& c) { j = json{{"rank", c.rank}, {"alpha", c.alpha}, {"targets", c.targets}}; }

void from_json(const json& j, LoraConfig& out) {
  detail::check_known_keys(j, {"rank", "alpha", "targets"}, kWhere);
  LoraConfig c;
  detail::read_field(j, "rank", c.rank, kWhere);
  detail::read_field(j, "alpha", c.alpha, kWhere);
  detail::read_field(j, "targets", c.targets, kWhere);
  c.validate();
  out = c;
}

// ---------------------------------------------------------------- AdapterSet

namespace {
// The Linear layers a config targets, in model order: every Linear but the lm_head whose name
// contains one of the targets.
std::vector<std::pair<std::string, nn::Linear*>> targeted_linears(nn::Transformer& model, const LoraConfig& cfg) {
  std::vector<std::pair<std::string, nn::Linear*>> out;
  for (auto& [name, m] : model.named_modules()) {
    auto* lin = dynamic_cast<nn::Linear*>(m);
    if (lin == nullptr || name == "lm_head") continue;
    bool match = false;
    for (const std::string& t : cfg.targets) match = match || name.find(t) != std::string::npos;
    if (match) out.emplace_back(name, lin);
  }
  return out;
}
}  // namespace

void check_adapter_state_fits(nn::Transformer& model, const LoraConfig& cfg, const NamedTensors& state) {
  cfg.validate();
  std::map<std::string, const Tensor*> by_key;
  for (const auto& [key, t] : state)
    SOMNUS_CHECK(by_key.emplace(key, &t).second, "adapter state: '{}' is in the state twice", key);
  for (const auto& [name, lin] : targeted_linears(model, cfg)) {
    for (size_t k = 0; k < 2; ++k) {
      const std::string key = name + (k == 0 ? ".lora_A" : ".lora_B");
      const Shape want = k == 0 ? Shape{cfg.rank, lin->in_features()} : Shape{lin->out_features(), cfg.rank};
      const auto it = by_key.find(key);
      SOMNUS_CHECK(it != by_key.end(), "adapter state: no '{}' (the config targets [{}] at rank {})", key,
                   fmt::join(cfg.targets, ", "), cfg.rank);
      const Tensor& t = *it->second;
      SOMNUS_CHECK(t.defined() && t.shape() == want, "adapter state: '{}' has shape {}, the layer's at rank {} is {}", key,
                   t.defined() ? fmt::format("{}", fmt::join(t.shape(), "x")) : std::string("(undefined)"), cfg.rank,
                   fmt::format("{}", fmt::join(want, "x")));
      by_key.erase(it);
    }
  }
  SOMNUS_CHECK(by_key.empty(), "adapter state: '{}' is no layer the config targets ([{}])", by_key.begin()->first,
               fmt::join(cfg.targets, ", "));
}

AdapterSet::AdapterSet(nn::Transformer& model, LoraConfig cfg, Generator& gen) : model_(model), cfg_(std::move(cfg)) {
  cfg_.validate();
  for (auto& [name, lin] : targeted_linears(model_, cfg_)) {
    if (lin->has_lora()) {
      SOMNUS_CHECK(lin->lora_rank() == cfg_.rank &&
                       std::abs(lin->lora_scale() - cfg_.alpha / static_cast<double>(cfg_.rank)) < 1e-12,
                   "AdapterSet: layer '{}' already has LoRA with rank {} and scale {}, the config asks rank {} alpha {}",
                   name, lin->lora_rank(), lin->lora_scale(), cfg_.rank, cfg_.alpha);
      SOMNUS_CHECK(!lin->lora_merged(), "AdapterSet: layer '{}' has its LoRA merged; unmerge it first", name);
    } else {
      lin->enable_lora(cfg_.rank, cfg_.alpha, gen);
    }
    names_.push_back(name);
    layers_.push_back(lin);
    const Tensor& w = lin->weight;
    Pair off{Tensor::zeros({cfg_.rank, lin->in_features()}, w.dtype(), w.device()),
             Tensor::zeros({lin->out_features(), cfg_.rank}, w.dtype(), w.device())};
    off_.push_back(std::move(off));
  }
  SOMNUS_CHECK(!layers_.empty(), "AdapterSet: no Linear layer of the model matches the targets [{}]",
               fmt::join(cfg_.targets, ", "));
  disable();
}

AdapterSet::~AdapterSet() {
  // The layers keep the off pair (zeros, frozen), which the set no longer needs to own: the
  // tensors are shared handles.
  try {
    disable();
  } catch (...) {
  }
}

void AdapterSet::add(const std::string& name, Generator& gen) {
  SOMNUS_CHECK(!name.empty(), "AdapterSet::add: the adapter name is empty");
  SOMNUS_CHECK(!has(name), "AdapterSet::add: adapter '{}' exists already", name);
  Adapter a;
  for (const nn::Linear* lin : layers_) {
    const Tensor& w = lin->weight;
    Pair p{Tensor::zeros({cfg_.rank, lin->in_features()}, w.dtype(), w.device()),
           Tensor::zeros({lin->out_features(), cfg_.rank}, w.dtype(), w.device())};
    a.push_back(std::move(p));
  }
  adapters_.emplace(name, std::move(a));
  reset(name, gen);
}

const AdapterSet::Adapter& AdapterSet::get(const std::string& name) const {
  const auto it = adapters_.find(name);
  SOMNUS_CHECK(it != adapters_.end(), "AdapterSet: no adapter named '{}'", name);
  return it->second;
}

void AdapterSet::reset(const std::string& name, Generator& gen) {
  const Adapter& a = get(name);
  NoGradGuard no_grad;
  for (size_t i = 0; i < a.size(); ++i) {
    const int64_t in = layers_[i]->in_features();
    const Tensor& A = a[i].A;
    A.copy_(randn(A.shape(), gen, A.dtype(), A.device(), 0.0, 1.0 / std::sqrt(static_cast<double>(in))));
    a[i].B.fill_(0.0);
    A.set_grad(Tensor());
    a[i].B.set_grad(Tensor());
  }
}

void AdapterSet::swap_in(const Adapter& a) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    layers_[i]->set_parameter("lora_A", a[i].A);
    layers_[i]->set_parameter("lora_B", a[i].B);
  }
}

void AdapterSet::enable(const std::string& name) {
  const Adapter& a = get(name);
  for (const Pair& p : a) {
    // Tensor handles are shared: set_requires_grad acts on the impl the adapter keeps.
    Tensor A = p.A, B = p.B;
    A.set_requires_grad(true);
    B.set_requires_grad(true);
  }
  swap_in(a);
  active_ = name;
}

void AdapterSet::disable() {
  for (const Pair& p : off_) {
    Tensor A = p.A, B = p.B;
    A.set_requires_grad(false);
    B.set_requires_grad(false);
  }
  swap_in(off_);
  active_.clear();
}

std::vector<Tensor> AdapterSet::parameters(const std::string& name) const {
  std::vector<Tensor> out;
  for (const Pair& p : get(name)) {
    out.push_back(p.A);
    out.push_back(p.B);
  }
  return out;
}

void AdapterSet::merge(const std::string& name, Generator& gen) {
  const Adapter& a = get(name);
  {
    NoGradGuard no_grad;
    for (size_t i = 0; i < a.size(); ++i) {
      nn::Linear& lin = *layers_[i];
      const Tensor delta = matmul(a[i].B.detach(), a[i].A.detach()) * lin.lora_scale();  // (out, in)
      lin.weight.copy_(lin.weight.detach() + delta);
    }
  }
  reset(name, gen);
}

NamedTensors AdapterSet::adapter_state(const std::string& name) const {
  const Adapter& a = get(name);
  NamedTensors out;
  for (size_t i = 0; i < a.size(); ++i) {
    out.emplace_back(names_[i] + ".lora_A", a[i].A.detach().clone());
    out.emplace_back(names_[i] + ".lora_B", a[i].B.detach().clone());
  }
  return out;
}

void AdapterSet::load_adapter_state(const std::string& name, const NamedTensors& state) {
  const Adapter& a = get(name);
  std::map<std::string, const Tensor*> by_key;
  for (const auto& [key, t] : state) {
    SOMNUS_CHECK(by_key.emplace(key, &t).second, "AdapterSet::load_adapter_state: adapter '{}': '{}' is in the state twice",
                 name, key);
  }
  // Every check before the first copy: a refused state leaves the adapter as it was.
  std::vector<const Tensor*> src;
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t k = 0; k < 2; ++k) {
      const std::string key = names_[i] + (k == 0 ? ".lora_A" : ".lora_B");
      const Tensor& mine = k == 0 ? a[i].A : a[i].B;
      const auto it = by_key.find(key);
      SOMNUS_CHECK(it != by_key.end(), "AdapterSet::load_adapter_state: adapter '{}': the state has no '{}'", name, key);
      const Tensor& t = *it->second;
      SOMNUS_CHECK(t.defined() && t.shape() == mine.shape(),
                   "AdapterSet::load_adapter_state: adapter '{}': '{}' has shape {}, the layer's is {}", name, key,
                   t.defined() ? fmt::format("{}", fmt::join(t.shape(), "x")) : std::string("(undefined)"),
                   fmt::format("{}", fmt::join(mine.shape(), "x")));
      src.push_back(&t);
      by_key.erase(it);
    }
  }
  SOMNUS_CHECK(by_key.empty(), "AdapterSet::load_adapter_state: adapter '{}': the state has '{}', which is no targeted layer's",
               name, by_key.begin()->first);
  NoGradGuard no_grad;
  for (size_t i = 0; i < a.size(); ++i) {
    a[i].A.copy_(src[2 * i]->detach());
    a[i].B.copy_(src[2 * i + 1]->detach());
    a[i].A.set_grad(Tensor());
    a[i].B.set_grad(Tensor());
  }
}

// ---------------------------------------------------------------- without LoRA

NamedTensors state_dict_without_lora(nn::Module& model) {
  // The folded weight of every Linear with an unmerged adapter, by its state-dict key.
  std::map<std::string, Tensor> folded;
  std::set<std::string> lora_keys;
  for (auto& [name, m] : model.named_modules()) {
    const auto* lin = dynamic_cast<const nn::Linear*>(m);
    if (lin == nullptr || !lin->has_lora()) continue;
    const std::string prefix = name.empty() ? "" : name + ".";
    lora_keys.insert(prefix + "lora_A");
    lora_keys.insert(prefix + "lora_B");
    if (lin->lora_merged()) continue;
    NoGradGuard no_grad;
    const Tensor delta = matmul(lin->lora_B.detach(), lin->lora_A.detach()) * lin->lora_scale();  // (out, in)
    folded.emplace(prefix + "weight", lin->weight.detach() + delta);
  }
  NamedTensors out;
  for (auto& [key, t] : model.state_dict()) {
    if (lora_keys.count(key)) continue;
    const auto it = folded.find(key);
    out.emplace_back(key, it == folded.end() ? t : it->second);
  }
  return out;
}

// ---------------------------------------------------------------- TrainableScope

TrainableScope::TrainableScope(nn::Module& model, const std::vector<Tensor>& trainable) {
  for (const Tensor& p : model.parameters()) saved_.emplace_back(p, p.requires_grad());
  for (const Tensor& p : trainable) saved_.emplace_back(p, p.requires_grad());
  for (auto& [p, flag] : saved_) p.set_requires_grad(false);
  for (Tensor p : trainable) p.set_requires_grad(true);
}

TrainableScope::~TrainableScope() {
  // Reverse order, so a tensor listed twice gets its first (original) flag back.
  for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) it->first.set_requires_grad(it->second);
}

}  // namespace somnus::sleep
