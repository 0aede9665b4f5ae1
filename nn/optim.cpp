#include "nn/optim.h"

#include <algorithm>
#include <cstring>
#include <cmath>
#include <set>
#include <type_traits>

#include "kernels/ops.h"
#include "tensor/dispatch.h"
#include "tensor/format.h"
#include "tensor/random.h"

namespace somnus {

namespace {

using kernels::Binary;

constexpr const char* kMasterBuffer = "master";
constexpr const char* kGradAccum = "grad_accum";
constexpr const char* kMetaKey = "somnus.optimizer";
constexpr int kStateFormat = 1;
// Elementwise updates spread over OpenMP threads above this size; each element's arithmetic
// is independent of the split, so results do not depend on the thread count.
constexpr int64_t kParallelMin = 1 << 16;

// kernels:: op shorthands for the device-generic update path. Scalars become 0-dim tensors
// of the operand's dtype on its device, converted exactly as the CPU loops convert them.
Tensor scalar_like(double v, const Tensor& like) { return Tensor::scalar(v, like.dtype(), like.device()); }
Tensor k_add(const Tensor& a, const Tensor& b) { return kernels::binary(Binary::add, a, b); }
Tensor k_sub(const Tensor& a, const Tensor& b) { return kernels::binary(Binary::sub, a, b); }
Tensor k_mul(const Tensor& a, const Tensor& b) { return kernels::binary(Binary::mul, a, b); }
Tensor k_div(const Tensor& a, const Tensor& b) { return kernels::binary(Binary::div, a, b); }
Tensor k_mul(const Tensor& a, double b) { return k_mul(a, scalar_like(b, a)); }
Tensor k_div(const Tensor& a, double b) { return k_div(a, scalar_like(b, a)); }
Tensor k_add(const Tensor& a, double b) { return k_add(a, scalar_like(b, a)); }

// A CPU snapshot that later updates cannot change.
Tensor host_copy(const Tensor& t) {
  Tensor c = t.detach().to(Device::cpu());
  return c.storage() == t.storage() ? c.clone() : c.contiguous();
}

const char* reduction_name(AccumulationReduction r) { return r == AccumulationReduction::mean ? "mean" : "sum"; }

DType compute_dtype(DType d) { return d == DType::f64 ? DType::f64 : DType::f32; }

// Calls f with a typed pointer to the contiguous CPU tensor t's data, applying f in place
// even when t is a non-contiguous view (through a contiguous copy written back).
template <class F>
void with_contiguous_host(const Tensor& t, F&& f) {
  if (t.is_contiguous()) {
    f(t);
  } else {
    Tensor c = t.contiguous();
    f(c);
    t.copy_(c);
  }
}

// Elements of the bf16 parameter p that are not the optimiser's rounding of the f32 master
// were written by someone else since the last update (a checkpoint load, a LoRA merge): the
// master adopts them. Nearest-even: the rounding is one value. Stochastic: either bf16
// neighbour of the master (on the host exactly; through kernels:: ops, anything within one
// bf16 spacing, |p − m| ≤ 2⁻⁷·|m|).
void resync_master(const Tensor& master, const Tensor& p, bool cpu_loops, bool stochastic) {
  if (cpu_loops) {
    const Tensor pc = p.contiguous();
    float* m = master.data<float>();
    const bf16* q = pc.data<bf16>();
    const int64_t n = master.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      bool ours = bf16::from_float(m[i]) == q[i].bits;
      if (!ours && stochastic) {
        uint32_t u;
        std::memcpy(&u, &m[i], sizeof u);
        const auto down = static_cast<uint16_t>(u >> 16);  // toward zero; the other neighbour is one step out
        ours = q[i].bits == down || q[i].bits == static_cast<uint16_t>(down + 1);
      }
      if (!ours) m[i] = static_cast<float>(q[i]);
    }
    return;
  }
  const Tensor pf = kernels::cast(p, DType::f32);
  if (stochastic) {
    const Tensor off = kernels::unary(kernels::Unary::relu,
                                      k_sub(kernels::unary(kernels::Unary::abs, k_sub(pf, master)),
                                            k_mul(kernels::unary(kernels::Unary::abs, master), 0.0078125)));
    master.copy_(kernels::where(off, pf, master));
    return;
  }
  const Tensor rounded = kernels::cast(kernels::cast(master, DType::bf16), DType::f32);
  master.copy_(kernels::where(k_sub(rounded, pf), pf, master));
}

}  // namespace

// ---------------------------------------------------------------- Optimizer

Optimizer::Optimizer(std::vector<ParamGroup> groups, AccumulationReduction reduction) : reduction_(reduction) {
  for (auto& g : groups) add_param_group(std::move(g));
}

void Optimizer::add_param_group(ParamGroup group) {
  const size_t g = groups_.size();
  SOMNUS_CHECK(group.period >= 1, "optimizer: group {} ('{}'): period must be >= 1, got {}", g, group.name,
               group.period);
  std::set<const TensorImpl*> seen;
  for (const auto& other : groups_) {
    for (const Tensor& p : other.params) seen.insert(&p.impl());
  }
  for (size_t i = 0; i < group.params.size(); ++i) {
    const Tensor& p = group.params[i];
    SOMNUS_CHECK(p.defined(), "optimizer: group {} ('{}'): parameter {} is undefined", g, group.name, i);
    SOMNUS_CHECK(is_floating(p.dtype()), "optimizer: group {} ('{}'): parameter {} {} has dtype {}, expected a "
                 "floating dtype", g, group.name, i, shape_str(p.shape()), dtype_name(p.dtype()));
    SOMNUS_CHECK(seen.insert(&p.impl()).second, "optimizer: group {} ('{}'): parameter {} {} appears more than once",
                 g, group.name, i, shape_str(p.shape()));
  }
  state_.emplace_back(group.params.size());
  applications_.push_back(0);
  forced_.push_back(0);
  groups_.push_back(std::move(group));
}

void Optimizer::check_layout() const {
  SOMNUS_CHECK(groups_.size() == state_.size(), "optimizer: {} groups but state for {}: add groups with "
               "add_param_group(), not through groups()", groups_.size(), state_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    SOMNUS_CHECK(groups_[g].params.size() == state_[g].size(),
                 "optimizer: group {} ('{}') now has {} parameters but state for {}: parameters cannot be added to "
                 "or removed from a group (use add_param_group)", g, groups_[g].name, groups_[g].params.size(),
                 state_[g].size());
    SOMNUS_CHECK(groups_[g].period >= 1, "optimizer: group {} ('{}'): period must be >= 1, got {}", g,
                 groups_[g].name, groups_[g].period);
  }
}

std::vector<Tensor> Optimizer::params() const {
  std::vector<Tensor> out;
  for (const auto& g : groups_) out.insert(out.end(), g.params.begin(), g.params.end());
  return out;
}

std::vector<size_t> Optimizer::groups_due(int64_t k) const {
  if (k < 0) k = step_ + 1;
  std::vector<size_t> out;
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (k % groups_[g].period == 0) out.push_back(g);
  }
  return out;
}

ScaledParams Optimizer::due_params(int64_t k) const {
  ScaledParams out;
  for (size_t g : groups_due(k)) {
    const double scale =
        reduction_ == AccumulationReduction::mean ? 1.0 / static_cast<double>(groups_[g].period) : 1.0;
    for (const Tensor& p : groups_[g].params) {
      out.params.push_back(p);
      out.scales.push_back(scale);
    }
  }
  return out;
}

Tensor Optimizer::master_weight(size_t group, size_t param) const {
  const auto& b = state_.at(group).at(param).buffers;
  auto it = b.find(kMasterBuffer);
  return it == b.end() ? Tensor() : it->second;
}

Tensor& Optimizer::buffer(ParamState& s, const std::string& name, const Tensor& weight) {
  auto it = s.buffers.find(name);
  if (it == s.buffers.end()) {
    it = s.buffers.emplace(name, Tensor::zeros(weight.shape(), weight.dtype(), weight.device())).first;
  }
  return it->second;
}

void Optimizer::step() {
  check_layout();
  ++step_;
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (step_ % groups_[g].period != 0) continue;
    apply_group(g);
  }
}

void Optimizer::apply_group_now(size_t g) {
  check_layout();
  SOMNUS_CHECK(g < groups_.size(), "optimizer: apply_group_now: group {} out of range [0, {})", g, groups_.size());
  ++forced_[g];
  apply_group(g);
}

void Optimizer::reset_state(const std::vector<Tensor>& params) {
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      const TensorImpl* impl = &groups_[g].params[i].impl();
      for (const Tensor& t : params) {
        if (t.defined() && &t.impl() == impl) state_[g][i] = ParamState{};
      }
    }
  }
}

struct Optimizer::Prepared {
  Tensor param, weight, grad;  // weight: contiguous compute-dtype working copy; grad: in its dtype
  double grad_scale = 1.0;
};

void Optimizer::apply_group(size_t g) {
  ++applications_[g];
  const ParamGroup& grp = groups_[g];
  std::vector<Prepared> prepared;
  std::vector<size_t> index;  // parameter index of each prepared entry
  prepared.reserve(grp.params.size());
  for (size_t i = 0; i < grp.params.size(); ++i) {
    Prepared p;
    if (prepare_param(g, i, p)) {
      prepared.push_back(std::move(p));
      index.push_back(i);
    }
  }
  std::vector<UpdateArgs> updates;
  updates.reserve(prepared.size());
  const double lr = grp.lr * lr_scale_;
  std::vector<bool> written(prepared.size(), false);  // bf16 copies the update wrote itself
  for (size_t k = 0; k < prepared.size(); ++k) {
    const Prepared& p = prepared[k];
    const bool cpu_loops = p.param.device().is_cpu() && path_ == UpdatePath::automatic;
    UpdateArgs a{grp, state_[g][index[k]], p.weight, p.grad, p.grad_scale, lr, cpu_loops};
    if (writes_bf16_copy() && (cpu_loops || p.param.device().is_cuda()) && p.param.dtype() == DType::bf16 &&
        p.param.is_contiguous() && !p.weight.same(p.param)) {
      a.bf16_param = p.param;
      written[k] = true;
    }
    updates.push_back(a);
  }
  update_group(updates);
  for (size_t k = 0; k < prepared.size(); ++k) {
    const Prepared& p = prepared[k];
    // The rounded master (unless the update wrote it), or a strided parameter's copy.
    if (!written[k] && !p.weight.same(p.param)) p.param.copy_(p.weight);
  }
  clear_group(g, /*set_to_none=*/true);
}

void Optimizer::update_group(const std::vector<UpdateArgs>& updates) {
  for (const UpdateArgs& a : updates) update(a);
}

bool Optimizer::prepare_param(size_t g, size_t i, Prepared& out) {
  const ParamGroup& grp = groups_[g];
  const Tensor& p = grp.params[i];
  const Tensor grad = p.grad();
  if (!grad.defined()) return false;
  SOMNUS_CHECK(grad.shape() == p.shape() && grad.device() == p.device(),
               "optimizer: group {} ('{}'): parameter {}: gradient {} on {} does not match the parameter {} on {}", g,
               grp.name, i, shape_str(grad.shape()), grad.device().str(), shape_str(p.shape()), p.device().str());
  ParamState& s = state_[g][i];
  ++s.step;
  const bool cpu_loops = p.device().is_cpu() && path_ == UpdatePath::automatic;

  Tensor w;  // what the update works on, contiguous in the compute dtype
  if (p.dtype() == DType::bf16) {
    auto it = s.buffers.find(kMasterBuffer);
    if (it == s.buffers.end()) {
      Tensor master = Tensor::empty(p.shape(), DType::f32, p.device());
      master.copy_(p);
      it = s.buffers.emplace(kMasterBuffer, master).first;
    } else {
      resync_master(it->second, p, cpu_loops, stochastic_bf16());
    }
    w = it->second;
  } else {
    w = p.is_contiguous() ? p : p.contiguous();
  }
  Tensor gw = grad.dtype() == w.dtype() ? grad : grad.to(w.dtype());
  out.param = p;
  out.weight = w;
  out.grad = gw.contiguous();
  out.grad_scale = reduction_ == AccumulationReduction::mean ? 1.0 / static_cast<double>(grp.period) : 1.0;
  return true;
}

void Optimizer::clear_group(size_t g, bool set_to_none) {
  for (const Tensor& p : groups_[g].params) {
    if (set_to_none) {
      p.set_grad(Tensor());
    } else if (Tensor gr = p.grad(); gr.defined()) {
      gr.fill_(0.0);
    }
  }
}

void Optimizer::zero_grad(bool set_to_none) {
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (step_ % groups_[g].period == 0) clear_group(g, set_to_none);
  }
}

void Optimizer::zero_grad_all(bool set_to_none) {
  for (size_t g = 0; g < groups_.size(); ++g) clear_group(g, set_to_none);
}

// ---------------------------------------------------------------- state

OptimizerState Optimizer::state_dict() const {
  check_layout();
  OptimizerState out;
  nlohmann::json& meta = out.meta;
  meta["format"] = kStateFormat;
  meta["type"] = type();
  meta["step"] = step_;
  meta["lr_scale"] = lr_scale_;
  meta["reduction"] = reduction_name(reduction_);
  meta["hyperparameters"] = hyperparameters();
  nlohmann::json groups = nlohmann::json::array();
  for (size_t g = 0; g < groups_.size(); ++g) {
    const ParamGroup& grp = groups_[g];
    const bool mid_window = step_ % grp.period != 0;
    nlohmann::json jg;
    jg["name"] = grp.name;
    jg["period"] = grp.period;
    jg["lr"] = grp.lr;
    jg["weight_decay"] = grp.weight_decay;
    jg["applications"] = applications_[g];
    jg["forced"] = forced_[g];
    jg["params"] = nlohmann::json::array();
    for (size_t i = 0; i < grp.params.size(); ++i) {
      const Tensor& p = grp.params[i];
      const ParamState& s = state_[g][i];
      nlohmann::json jp;
      jp["shape"] = p.shape();
      jp["dtype"] = dtype_name(p.dtype());
      jp["step"] = s.step;
      jp["buffers"] = nlohmann::json::array();
      const std::string prefix = fmt::format("opt.{}.{}.", g, i);
      for (const auto& [name, t] : s.buffers) {
        jp["buffers"].push_back(name);
        out.tensors.emplace_back(prefix + name, host_copy(t));
      }
      // A slow group's partial sum is state too: without it a resumed run loses those steps.
      const Tensor grad = p.grad();
      jp["grad_accum"] = mid_window && grad.defined();
      if (mid_window && grad.defined()) out.tensors.emplace_back(prefix + kGradAccum, host_copy(grad));
      jg["params"].push_back(std::move(jp));
    }
    groups.push_back(std::move(jg));
  }
  meta["groups"] = std::move(groups);
  return out;
}

void Optimizer::load_state_dict(const OptimizerState& state) {
  check_layout();
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, t] : state.tensors) {
    SOMNUS_CHECK(tensors.emplace(name, t).second, "optimizer state: tensor '{}' appears more than once", name);
  }
  // Build the new state completely before touching anything, so a bad file changes nothing.
  std::vector<std::vector<ParamState>> new_state(groups_.size());
  std::vector<std::vector<Tensor>> new_grads(groups_.size());
  std::vector<int64_t> new_apps(groups_.size()), new_forced(groups_.size());
  int64_t new_step = 0;
  double new_lr_scale = 1.0;
  std::set<std::string> used;
  try {
    const nlohmann::json& meta = state.meta;
    SOMNUS_CHECK(meta.is_object(), "optimizer state: metadata must be a JSON object");
    SOMNUS_CHECK(meta.at("format").get<int>() == kStateFormat, "optimizer state: unsupported format {}, expected {}",
                 meta.at("format").dump(), kStateFormat);
    const std::string t = meta.at("type").get<std::string>();
    SOMNUS_CHECK(t == type(), "optimizer state: saved by a {} optimizer, loading into {}", t, type());
    const std::string red = meta.at("reduction").get<std::string>();
    SOMNUS_CHECK(red == reduction_name(reduction_), "optimizer state: saved with '{}' accumulation, this optimizer "
                 "uses '{}'", red, reduction_name(reduction_));
    new_step = meta.at("step").get<int64_t>();
    SOMNUS_CHECK(new_step >= 0, "optimizer state: negative step {}", new_step);
    new_lr_scale = meta.at("lr_scale").get<double>();
    const nlohmann::json& jgroups = meta.at("groups");
    SOMNUS_CHECK(jgroups.is_array() && jgroups.size() == groups_.size(),
                 "optimizer state: {} parameter groups saved, this optimizer has {}",
                 jgroups.is_array() ? jgroups.size() : 0, groups_.size());
    std::set<std::string> allowed;
    for (const auto& b : buffer_names()) allowed.insert(b);
    for (size_t g = 0; g < groups_.size(); ++g) {
      const ParamGroup& grp = groups_[g];
      const nlohmann::json& jg = jgroups[g];
      const int64_t period = jg.at("period").get<int64_t>();
      SOMNUS_CHECK(period == grp.period, "optimizer state: group {} ('{}') was saved with period {}, now has {}", g,
                   grp.name, period, grp.period);
      new_apps[g] = jg.at("applications").get<int64_t>();
      // "forced": applications by apply_group_now (absent in states saved before it existed).
      new_forced[g] = jg.contains("forced") ? jg.at("forced").get<int64_t>() : 0;
      SOMNUS_CHECK(new_forced[g] >= 0, "optimizer state: group {} ('{}'): negative forced count {}", g, grp.name,
                   new_forced[g]);
      // Not step / period + forced: a group added mid-run (add_param_group) or whose period was
      // edited has applied on a schedule of its own, and its state must load all the same.
      SOMNUS_CHECK(new_forced[g] <= new_apps[g],
                   "optimizer state: group {} ('{}'): {} out-of-schedule applications recorded, more than its {} "
                   "applications in all",
                   g, grp.name, new_forced[g], new_apps[g]);
      const nlohmann::json& jparams = jg.at("params");
      SOMNUS_CHECK(jparams.is_array() && jparams.size() == grp.params.size(),
                   "optimizer state: group {} ('{}') has {} parameters saved, this optimizer has {}", g, grp.name,
                   jparams.is_array() ? jparams.size() : 0, grp.params.size());
      new_state[g].resize(grp.params.size());
      new_grads[g].resize(grp.params.size());
      for (size_t i = 0; i < grp.params.size(); ++i) {
        const Tensor& p = grp.params[i];
        const nlohmann::json& jp = jparams[i];
        const Shape shape = jp.at("shape").get<Shape>();
        const std::string dt = jp.at("dtype").get<std::string>();
        SOMNUS_CHECK(shape == p.shape() && dt == dtype_name(p.dtype()),
                     "optimizer state: group {} ('{}') parameter {}: saved for {} {}, the parameter is {} {}", g,
                     grp.name, i, dt, shape_str(shape), dtype_name(p.dtype()), shape_str(p.shape()));
        ParamState& s = new_state[g][i];
        s.step = jp.at("step").get<int64_t>();
        SOMNUS_CHECK(s.step >= 0, "optimizer state: group {} parameter {}: negative step {}", g, i, s.step);
        const std::string prefix = fmt::format("opt.{}.{}.", g, i);
        for (const auto& jb : jp.at("buffers")) {
          const std::string b = jb.get<std::string>();
          const bool is_master = b == kMasterBuffer;
          SOMNUS_CHECK(allowed.count(b) > 0 || (is_master && p.dtype() == DType::bf16),
                       "optimizer state: group {} parameter {}: unexpected buffer '{}' for {} on a {} parameter", g, i,
                       b, type(), dtype_name(p.dtype()));
          auto it = tensors.find(prefix + b);
          SOMNUS_CHECK(it != tensors.end(), "optimizer state: missing tensor '{}'", prefix + b);
          const DType want = compute_dtype(p.dtype());
          SOMNUS_CHECK(it->second.shape() == p.shape() && it->second.dtype() == want,
                       "optimizer state: tensor '{}' is {} {}, expected {} {}", it->first,
                       dtype_name(it->second.dtype()), shape_str(it->second.shape()), dtype_name(want),
                       shape_str(p.shape()));
          s.buffers[b] = it->second.to(p.device()).clone();
          used.insert(it->first);
        }
        if (jp.at("grad_accum").get<bool>()) {
          auto it = tensors.find(prefix + kGradAccum);
          SOMNUS_CHECK(it != tensors.end(), "optimizer state: missing tensor '{}'", prefix + kGradAccum);
          SOMNUS_CHECK(it->second.shape() == p.shape() && is_floating(it->second.dtype()),
                       "optimizer state: tensor '{}' is {} {}, expected a floating tensor of shape {}", it->first,
                       dtype_name(it->second.dtype()), shape_str(it->second.shape()), shape_str(p.shape()));
          new_grads[g][i] = it->second.to(p.device()).clone();
          used.insert(it->first);
        }
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail("optimizer state: malformed metadata: {}", e.what());
  }
  for (const auto& [name, t] : tensors) {
    SOMNUS_CHECK(used.count(name) > 0, "optimizer state: unexpected tensor '{}' {}", name, shape_str(t.shape()));
  }
  state_ = std::move(new_state);
  applications_ = std::move(new_apps);
  forced_ = std::move(new_forced);
  step_ = new_step;
  lr_scale_ = new_lr_scale;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < groups_[g].params.size(); ++i) groups_[g].params[i].set_grad(new_grads[g][i]);
  }
}

void Optimizer::save_state(const std::string& path) const {
  OptimizerState s = state_dict();
  save_safetensors(path, s.tensors, {{kMetaKey, s.meta.dump()}});
}

void Optimizer::load_state(const std::string& path) {
  SafetensorsFile f = load_safetensors(path);
  auto it = f.metadata.find(kMetaKey);
  SOMNUS_CHECK(it != f.metadata.end(), "optimizer state: {}: no '{}' metadata (not an optimizer state file?)", path,
               kMetaKey);
  OptimizerState s;
  s.meta = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  SOMNUS_CHECK(!s.meta.is_discarded(), "optimizer state: {}: '{}' metadata is not valid JSON", path, kMetaKey);
  s.tensors = std::move(f.tensors);
  try {
    load_state_dict(s);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
}

// ---------------------------------------------------------------- AdamW

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options)
    : Optimizer(std::move(groups), options.reduction), options_(options) {
  SOMNUS_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1,
               "AdamW: betas must lie in [0, 1), got ({}, {})", options.beta1, options.beta2);
  SOMNUS_CHECK(options.eps >= 0, "AdamW: eps must be >= 0, got {}", options.eps);
}

nlohmann::json AdamW::hyperparameters() const {
  return {{"beta1", options_.beta1}, {"beta2", options_.beta2}, {"eps", options_.eps}};
}

void AdamW::update_group(const std::vector<UpdateArgs>& updates) {
  // The fused kernel's lists, one per (device, dtype) bucket in first-seen order; the
  // ops-path updates go one by one. Elementwise math: grouping changes no result bit.
  struct Bucket {
    Device device;
    DType dtype;
    std::vector<Tensor> w, g, m, v, bf16;  // bf16: the parameter's copy to write, or undefined
    std::vector<kernels::AdamWHyper> hyper;
  };
  std::vector<Bucket> buckets;
  for (const UpdateArgs& a : updates) {
    const Tensor& w = a.weight;
    if (!(a.cpu_loops || w.device().is_cuda())) {
      update(a);
      continue;
    }
    SOMNUS_CHECK(w.dtype() != DType::bf16, "AdamW: internal error: bf16 working weights");
    Tensor& m = buffer(a.state, "exp_avg", w);
    Tensor& v = buffer(a.state, "exp_avg_sq", w);
    auto it = std::find_if(buckets.begin(), buckets.end(),
                           [&](const Bucket& b) { return b.device == w.device() && b.dtype == w.dtype(); });
    if (it == buckets.end()) it = buckets.insert(buckets.end(), Bucket{w.device(), w.dtype(), {}, {}, {}, {}, {}, {}});
    it->w.push_back(w);
    it->bf16.push_back(a.bf16_param);
    it->g.push_back(a.grad);
    it->m.push_back(m);
    it->v.push_back(v);
    it->hyper.push_back(kernels::AdamWHyper{.lr = a.lr,
                                            .weight_decay = a.group.weight_decay,
                                            .beta1 = options_.beta1,
                                            .beta2 = options_.beta2,
                                            .eps = options_.eps,
                                            .grad_scale = a.grad_scale,
                                            .step = a.state.step});
  }
  for (const Bucket& b : buckets) {
    const bool any16 = std::any_of(b.bf16.begin(), b.bf16.end(), [](const Tensor& t) { return t.defined(); });
    kernels::adamw_step(b.w, b.g, b.m, b.v, b.hyper, Tensor(), any16 ? b.bf16 : std::vector<Tensor>{},
                        options_.stochastic_rounding, rounding_seed());
  }
}

uint64_t AdamW::rounding_seed() const {
  // One Philox key per optimiser step (the kernel counts elements across a call's list);
  // restored with the step count, so a resumed run rounds as an uninterrupted one.
  return splitmix64_mix(options_.rounding_seed ^ (static_cast<uint64_t>(step_count()) * 0x9E3779B97F4A7C15ULL));
}

void AdamW::update(const UpdateArgs& a) {
  const Tensor& w = a.weight;
  Tensor& m = buffer(a.state, "exp_avg", w);
  Tensor& v = buffer(a.state, "exp_avg_sq", w);
  const double t = static_cast<double>(a.state.step);
  const double bc1 = 1.0 - std::pow(options_.beta1, t);
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(options_.beta2, t));
  const double step_size = a.lr / bc1;
  const bool decay = a.group.weight_decay != 0.0;
  const double decay_factor = 1.0 - a.lr * a.group.weight_decay;
  if (a.cpu_loops || w.device().is_cuda()) {
    // The fused AdamW kernel (kernels/{cpu,cuda}/adamw, math in kernels/adamw_math.h): the
    // expressions of the former CPU loop in the same order, so CPU results did not change.
    SOMNUS_CHECK(w.dtype() != DType::bf16, "AdamW: internal error: bf16 working weights");
    const kernels::AdamWHyper h{.lr = a.lr,
                                .weight_decay = a.group.weight_decay,
                                .beta1 = options_.beta1,
                                .beta2 = options_.beta2,
                                .eps = options_.eps,
                                .grad_scale = a.grad_scale,
                                .step = a.state.step};
    kernels::adamw_step({w}, {a.grad}, {m}, {v}, {h}, Tensor(),
                        a.bf16_param.defined() ? std::vector<Tensor>{a.bf16_param} : std::vector<Tensor>{},
                        options_.stochastic_rounding, rounding_seed());
    return;
  }
  // The same expressions, in the same order, with kernels:: ops (any device).
  const Tensor g = k_mul(a.grad, a.grad_scale);
  const Tensor wd = decay ? k_mul(w, decay_factor) : w;
  const Tensor m_new = k_add(k_mul(m, options_.beta1), k_mul(g, 1.0 - options_.beta1));
  const Tensor v_new = k_add(k_mul(v, options_.beta2), k_mul(k_mul(g, g), 1.0 - options_.beta2));
  const Tensor denom = k_add(k_div(kernels::unary(kernels::Unary::sqrt, v_new), bc2_sqrt), options_.eps);
  const Tensor w_new = k_sub(wd, k_div(k_mul(m_new, step_size), denom));
  m.copy_(m_new);
  v.copy_(v_new);
  w.copy_(w_new);
}

// ---------------------------------------------------------------- SGD

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions options)
    : Optimizer(std::move(groups), options.reduction), options_(options) {
  SOMNUS_CHECK(options.momentum >= 0, "SGD: momentum must be >= 0, got {}", options.momentum);
  SOMNUS_CHECK(!options.nesterov || (options.momentum > 0 && options.dampening == 0),
               "SGD: nesterov needs momentum > 0 and dampening 0, got momentum {} dampening {}", options.momentum,
               options.dampening);
}

nlohmann::json SGD::hyperparameters() const {
  return {{"momentum", options_.momentum}, {"dampening", options_.dampening}, {"nesterov", options_.nesterov}};
}

namespace {

template <class T>
void sgd_loop(T* w, const T* g, T* buf, int64_t n, T grad_scale, bool decay, T wd, bool momentum, bool first, T mu,
              T one_minus_dampening, bool nesterov, T lr) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    T gi = g[i] * grad_scale;
    if (decay) gi = gi + w[i] * wd;
    if (momentum) {
      const T b = first ? gi : buf[i] * mu + gi * one_minus_dampening;
      buf[i] = b;
      gi = nesterov ? gi + b * mu : b;
    }
    w[i] = w[i] - gi * lr;
  }
}

}  // namespace

void SGD::update(const UpdateArgs& a) {
  const Tensor& w = a.weight;
  const bool momentum = options_.momentum != 0.0;
  const bool first = a.state.step == 1 || a.state.buffers.count("momentum_buffer") == 0;
  Tensor buf = momentum ? buffer(a.state, "momentum_buffer", w) : Tensor();
  const bool decay = a.group.weight_decay != 0.0;
  if (a.cpu_loops) {
    visit_floating(w.dtype(), "SGD", [&](auto tag) {
      using T = decltype(tag);
      if constexpr (std::is_same_v<T, bf16>) {
        fail("SGD: internal error: bf16 working weights");
      } else {
        sgd_loop<T>(w.data<T>(), a.grad.data<T>(), momentum ? buf.data<T>() : nullptr, w.numel(), T(a.grad_scale),
                    decay, T(a.group.weight_decay), momentum, first, T(options_.momentum),
                    T(1.0 - options_.dampening), options_.nesterov, T(a.lr));
      }
    });
    return;
  }
  Tensor g = k_mul(a.grad, a.grad_scale);
  if (decay) g = k_add(g, k_mul(w, a.group.weight_decay));
  if (momentum) {
    const Tensor b = first ? g : k_add(k_mul(buf, options_.momentum), k_mul(g, 1.0 - options_.dampening));
    buf.copy_(b);
    g = options_.nesterov ? k_add(g, k_mul(b, options_.momentum)) : b;
  }
  w.copy_(k_sub(w, k_mul(g, a.lr)));
}

// ---------------------------------------------------------------- gradient utilities

double grad_norm(const std::vector<Tensor>& params) { return grad_norm(ScaledParams{params, {}}); }

double grad_norm(const ScaledParams& sp) {
  const std::vector<Tensor>& params = sp.params;
  SOMNUS_CHECK(sp.scales.empty() || sp.scales.size() == params.size(),
               "grad_norm: {} scales for {} parameters", sp.scales.size(), params.size());
  // A scale of exactly 1 multiplies exactly, so unscaled norms keep their bits.
  const auto scale_of = [&](size_t i) { return sp.scales.empty() ? 1.0 : sp.scales[i]; };
  // Device grads first: each tensor's Σg² by reduce_all (f32 accumulation on CUDA), left on
  // the device, then gathered into one tensor per device and read back at once: one host
  // round trip per device, not one per tensor. Then, in parameter order, the f64 sum of the
  // CPU grads' squares and the device partials, exactly as when each partial was read alone.
  std::vector<std::pair<Device, std::vector<Tensor>>> device_sums;  // per device: (1,) sums in order
  for (const Tensor& p : params) {
    if (!p.defined()) continue;
    const Tensor g = p.grad();
    if (!g.defined() || g.device().is_cpu()) continue;
    const Tensor gf = g.dtype() == DType::f64 ? g : kernels::cast(g, DType::f32);
    const Tensor part = kernels::reduce_all(kernels::Reduce::sum, kernels::unary(kernels::Unary::square, gf));
    auto it = std::find_if(device_sums.begin(), device_sums.end(),
                           [&](const auto& d) { return d.first == g.device(); });
    if (it == device_sums.end()) it = device_sums.insert(device_sums.end(), {g.device(), {}});
    it->second.push_back(kernels::cast(part, DType::f64).reshape({1}));  // exact
  }
  std::vector<std::vector<double>> host(device_sums.size());
  for (size_t d = 0; d < device_sums.size(); ++d) host[d] = kernels::concat(device_sums[d].second, 0).to_vector();
  std::vector<size_t> next(device_sums.size(), 0);

  double sum_sq = 0.0;  // f64, in parameter order: deterministic
  for (size_t pi = 0; pi < params.size(); ++pi) {
    const Tensor& p = params[pi];
    if (!p.defined()) continue;
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    const double s = scale_of(pi);
    if (g.device().is_cpu()) {
      const Tensor gc = g.contiguous();
      visit_floating(gc.dtype(), "grad_norm", [&](auto tag) {
        using T = decltype(tag);
        const T* d = gc.data<T>();
        const int64_t n = gc.numel();
        for (int64_t i = 0; i < n; ++i) {
          const double x = s * static_cast<double>(static_cast<compute_t<T>>(d[i]));
          sum_sq += x * x;
        }
      });
    } else {
      size_t d = 0;
      while (device_sums[d].first != g.device()) ++d;
      sum_sq += s * s * host[d][next[d]++];
    }
  }
  return std::sqrt(sum_sq);
}

void scale_grads(const std::vector<Tensor>& params, double factor) {
  for (const Tensor& p : params) {
    if (!p.defined()) continue;
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    if (g.device().is_cpu()) {
      with_contiguous_host(g, [&](const Tensor& gc) {
        visit_floating(gc.dtype(), "scale_grads", [&](auto tag) {
          using T = decltype(tag);
          using C = compute_t<T>;
          T* d = gc.data<T>();
          const C f = static_cast<C>(factor);
          const int64_t n = gc.numel();
          for (int64_t i = 0; i < n; ++i) d[i] = static_cast<T>(static_cast<C>(d[i]) * f);
        });
      });
    } else {
      const Tensor gf = g.dtype() == DType::bf16 ? kernels::cast(g, DType::f32) : g;
      g.copy_(k_mul(gf, factor));
    }
  }
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  return clip_grad_norm(ScaledParams{params, {}}, max_norm);
}

double clip_grad_norm(const ScaledParams& params, double max_norm) {
  SOMNUS_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be positive, got {}", max_norm);
  const double total = grad_norm(params);
  if (std::isfinite(total) && total > max_norm) scale_grads(params.params, max_norm / (total + 1e-6));
  return total;
}

}  // namespace somnus
