// Dense MLP, MoE, CMS level with low-rank slots, CMS chain (see mlp.h).
#include "nn/mlp.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/fused_mlp.h"
#include "autograd/node.h"
#include "kernels/ops.h"
#include "tensor/format.h"
#include "tensor/random.h"

namespace somnus::nn {

namespace {

// out (rows, ...) = zeros with out[index[i]] += src[i]: the scatter that returns expert
// outputs to their tokens. Differentiable in src; its backward is the gather index_select.
// A token routed to several experts receives several rows: CUDA's index_add adds them with
// atomics (order-dependent rounding), so deterministic mode (autograd/engine.h) uses the
// fixed-order embedding_backward scatter instead (the same sum: ids sorted, added in order).
Tensor index_add_rows(int64_t rows, const Tensor& index, const Tensor& src) {
  Shape shape = src.shape();
  shape[0] = rows;
  const bool fixed_order = autograd::is_deterministic() && src.device().is_cuda() && src.dim() == 2;
  Tensor y = fixed_order ? kernels::embedding_backward(src, index, rows, /*deterministic=*/true)
                         : kernels::index_add(shape, 0, index, src);
  return autograd::record("index_add_rows", {src}, y, [index = index.detach()](const autograd::TensorList& g) {
    return autograd::TensorList{kernels::index_select(g[0], 0, index)};
  });
}

Tensor index_tensor(const std::vector<int64_t>& values, Device device) {
  std::vector<double> v(values.begin(), values.end());
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, DType::i64, device);
}

}  // namespace

// ---------------------------------------------------------------- dense MLP

const char* mlp_kind_name(MlpKind k) { return k == MlpKind::gelu ? "gelu" : "swiglu"; }

int64_t default_mlp_hidden(MlpKind kind, int64_t n_embd) {
  if (kind == MlpKind::gelu) return 4 * n_embd;
  const int64_t h = (8 * n_embd + 2) / 3;  // ceil(2/3 · 4C)
  return (h + 7) / 8 * 8;
}

MLP::MLP(const MlpConfig& cfg, Generator& gen, DType dtype, Device device)
    : kind_(cfg.kind), hidden_(cfg.hidden > 0 ? cfg.hidden : default_mlp_hidden(cfg.kind, cfg.n_embd)) {
  SOMNUS_CHECK(cfg.n_embd > 0, "MLP: n_embd must be positive, got {}", cfg.n_embd);
  SOMNUS_CHECK(cfg.hidden >= 0, "MLP: hidden must be >= 0 (0 = default), got {}", cfg.hidden);
  const int64_t C = cfg.n_embd, H = hidden_;
  if (kind_ == MlpKind::gelu) {
    fc = register_module("fc", std::make_shared<Linear>(C, H, cfg.bias, gen, cfg.init_std, dtype, device));
    proj = register_module("proj", std::make_shared<Linear>(H, C, cfg.bias, gen, cfg.out_init_std, dtype, device));
  } else {
    gate = register_module("gate", std::make_shared<Linear>(C, H, cfg.bias, gen, cfg.init_std, dtype, device));
    up = register_module("up", std::make_shared<Linear>(C, H, cfg.bias, gen, cfg.init_std, dtype, device));
    down = register_module("down", std::make_shared<Linear>(H, C, cfg.bias, gen, cfg.out_init_std, dtype, device));
  }
}

Tensor MLP::forward(const Tensor& x) const {
  if (kind_ == MlpKind::gelu) {
    // fc + GELU + proj as one autograd node (autograd/fused_mlp.h) unless an unmerged LoRA
    // adapter sits in a layer: on CUDA its backward fuses gelu' and fc's bias gradient into
    // proj's input-gradient GEMM (cuBLASLt DGELU_BGRAD); on CPU it is bitwise the two layers.
    const auto plain = [](const Linear& l) { return !l.has_lora() || l.lora_merged(); };
    if (plain(*fc) && plain(*proj) && (x.dim() == 2 || x.dim() == 3) && x.size(-1) == fc->in_features()) {
      return mlp_gelu(x, transpose(fc->weight, 0, 1), fc->bias, transpose(proj->weight, 0, 1), proj->bias);
    }
    Tensor h = fc->forward(x, /*gelu=*/true);  // (..., H)
    return proj->forward(h);                   // (..., C)
  }
  Tensor h = swiglu(gate->forward(x), up->forward(x));  // (..., H), one fused kernel each way
  return down->forward(h);                             // (..., C)
}

// ---------------------------------------------------------------- MoE

MoE::MoE(const MoEConfig& cfg, Generator& gen, DType dtype, Device device)
    : n_experts_(cfg.n_experts), top_k_(cfg.top_k) {
  SOMNUS_CHECK(n_experts_ >= 1, "MoE: n_experts must be >= 1, got {}", n_experts_);
  SOMNUS_CHECK(top_k_ >= 1 && top_k_ <= n_experts_, "MoE: top_k must be in [1, n_experts = {}], got {}", n_experts_,
               top_k_);
  router = register_module("router", std::make_shared<Linear>(cfg.expert.n_embd, n_experts_, /*bias=*/false, gen,
                                                              cfg.expert.init_std, dtype, device));
  experts = register_module("experts", std::make_shared<ModuleList<MLP>>());
  for (int64_t e = 0; e < n_experts_; ++e) experts->push_back(std::make_shared<MLP>(cfg.expert, gen, dtype, device));
}

void MoE::set_random_extra_expert(bool on, Generator* gen) {
  SOMNUS_CHECK(!on || gen != nullptr, "MoE::set_random_extra_expert: a Generator is required when turning it on");
  random_extra_ = on;
  extra_gen_ = on ? gen : nullptr;
}

MoE::Output MoE::forward(const Tensor& x, bool want_aux) {
  SOMNUS_CHECK(x.defined() && x.dim() >= 1, "MoE: expected x (..., C)");
  const int64_t C = x.size(-1), E = n_experts_, K = top_k_;
  const Tensor h = reshape(x, {-1, C});  // (N, C)
  const int64_t N = h.size(0);
  Tensor logits = router->forward(h);  // (N, E)
  Tensor probs = softmax(logits, -1);  // (N, E)
  if (N == 0) {                        // an empty batch: nothing to route
    routing_ = MoERouting{0, top_k_, {}, std::vector<int64_t>(E, 0)};
    return {mul(x, 0.0), logits, want_aux ? sum(probs) : Tensor()};
  }

  // ---- routing, on the host
  const bool extra = random_extra_ && K < E;
  const int64_t P = K + (extra ? 1 : 0);  // experts per token
  const std::vector<double> p = probs.detach().to_vector();
  std::vector<double> draws;
  if (extra) draws = randint(0, E - K, {N}, *extra_gen_, DType::i64, Device::cpu()).to_vector();
  routing_ = MoERouting{N, P, std::vector<int64_t>(static_cast<size_t>(N * P)), std::vector<int64_t>(E, 0)};
  std::vector<int64_t> topk_counts(E, 0);
  std::vector<int64_t> order(E);
  std::vector<bool> picked(E);
  for (int64_t n = 0; n < N; ++n) {
    const double* pn = p.data() + n * E;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [pn](int64_t a, int64_t b) { return pn[a] > pn[b]; });
    std::fill(picked.begin(), picked.end(), false);
    for (int64_t j = 0; j < K; ++j) {
      routing_.chosen[n * P + j] = order[j];
      picked[order[j]] = true;
      ++topk_counts[order[j]];
    }
    if (extra) {  // the draws-th expert (in index order) among those not picked
      int64_t r = static_cast<int64_t>(draws[n]), e = 0;
      for (; e < E; ++e) {
        if (!picked[e] && r-- == 0) break;
      }
      routing_.chosen[n * P + K] = e;
    }
  }

  // ---- gates: the chosen probabilities, renormalised per token when there are several;
  // one expert keeps its probability as the gate (Switch): renormalised it would be 1, and
  // the router would get no gradient from the output.
  const Device dev = x.device();
  Tensor chosen = index_tensor(routing_.chosen, dev).view({N, P});
  Tensor w = gather(probs, 1, chosen);                // (N, P)
  if (P > 1) w = w / sum(w, -1, /*keepdim=*/true);  // (N, P)
  Tensor w_flat = reshape(w, {N * P});   // (N·P,)

  // ---- dispatch: each expert on its tokens, scaled by their gates, scattered back
  std::vector<std::vector<int64_t>> tokens(E), pairs(E);
  for (int64_t i = 0; i < N * P; ++i) {
    const int64_t e = routing_.chosen[i];
    tokens[e].push_back(i / P);
    pairs[e].push_back(i);
  }
  std::vector<Tensor> pieces;
  std::vector<int64_t> destination;
  for (int64_t e = 0; e < E; ++e) {
    routing_.expert_counts[e] = static_cast<int64_t>(tokens[e].size());
    if (tokens[e].empty()) continue;
    Tensor xe = index_select(h, 0, index_tensor(tokens[e], dev));                    // (n_e, C)
    Tensor ge = unsqueeze(index_select(w_flat, 0, index_tensor(pairs[e], dev)), 1);  // (n_e, 1)
    pieces.push_back((*experts)[static_cast<size_t>(e)].forward(xe) * ge);           // (n_e, C)
    destination.insert(destination.end(), tokens[e].begin(), tokens[e].end());
  }
  Tensor out = index_add_rows(N, index_tensor(destination, dev), concat(pieces, 0));  // (N, C)

  Output result{reshape(out, x.shape()), logits, Tensor()};
  if (want_aux) {
    std::vector<double> f(E);
    for (int64_t e = 0; e < E; ++e) f[e] = static_cast<double>(topk_counts[e]) / static_cast<double>(N * K);
    Tensor fraction = Tensor::from_vector(f, {E}, probs.dtype(), dev);  // (E,) constant
    result.aux_loss = sum(mean(probs, 0) * fraction) * static_cast<double>(E);
  }
  return result;
}

// ---------------------------------------------------------------- CMS level

const char* level_kind_name(LevelKind k) { return k == LevelKind::dense ? "dense" : "moe"; }

LowRankSlot::LowRankSlot(int64_t n_embd, int64_t rank, bool router_row, DType dtype, Device device) {
  A = Tensor::zeros({n_embd, rank}, dtype, device);
  B = Tensor::zeros({rank, n_embd}, dtype, device);
  register_parameter("A", A);
  register_parameter("B", B);
  if (router_row) {
    router = Tensor::zeros({n_embd}, dtype, device);
    register_parameter("router", router);
  }
}

CmsLevel::CmsLevel(const CmsLevelConfig& cfg, Generator& gen, DType dtype, Device device) : cfg_(cfg) {
  const LevelConfig& lv = cfg.level;
  SOMNUS_CHECK(lv.period >= 1, "CmsLevel: period must be >= 1, got {}", lv.period);
  SOMNUS_CHECK(lv.n_slots >= 0, "CmsLevel: n_slots must be >= 0, got {}", lv.n_slots);
  SOMNUS_CHECK(lv.n_slots == 0 || lv.slot_rank >= 1, "CmsLevel: slot_rank must be >= 1, got {}", lv.slot_rank);
  const MlpConfig mc{cfg.n_embd, lv.hidden, cfg.mlp, cfg.bias, cfg.init_std, cfg.out_init_std};
  norm = register_module("norm", make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias, dtype, device));
  if (lv.kind == LevelKind::dense) {
    mlp = register_module("mlp", std::make_shared<MLP>(mc, gen, dtype, device));
  } else {
    moe = register_module("moe", std::make_shared<MoE>(MoEConfig{mc, lv.n_experts, lv.top_k}, gen, dtype, device));
  }
  if (lv.n_slots > 0) {
    auto list = register_module("slots", std::make_shared<ModuleList<LowRankSlot>>());
    for (int64_t s = 0; s < lv.n_slots; ++s) {
      slots_.push_back(list->push_back(
          std::make_shared<LowRankSlot>(cfg.n_embd, lv.slot_rank, lv.kind == LevelKind::moe, dtype, device)));
    }
    active_.assign(static_cast<size_t>(lv.n_slots), false);
    slot_active_ = Tensor::zeros({lv.n_slots}, DType::i64, device);
    register_buffer("slot_active", slot_active_);
  }
}

Tensor CmsLevel::forward(const Tensor& x, Tensor* aux_loss) {
  auto [stream, out] = forward_residual(x, Tensor(), aux_loss);
  return stream + out;  // (B, T, C): x + level(norm(x))
}

std::pair<Tensor, Tensor> CmsLevel::forward_residual(const Tensor& x, const Tensor& pending, Tensor* aux_loss) {
  SOMNUS_CHECK(x.defined() && x.dim() == 3 && x.size(2) == cfg_.n_embd, "CmsLevel: expected x (B, T, {}), got {}",
               cfg_.n_embd, x.defined() ? shape_str(x.shape()) : "undefined");
  SOMNUS_CHECK(!pending.defined() || pending.shape() == x.shape(), "CmsLevel: pending {} must match x {}",
               pending.defined() ? shape_str(pending.shape()) : "", shape_str(x.shape()));
  const int64_t B = x.size(0), T = x.size(1);
  auto [h, stream] = norm_with_residual(*norm, x, pending);  // (B, T, C) each: norm(stream), stream = x + pending
  Tensor y;                     // (B, T, C)
  Tensor router_logits;         // (B·T, E), MoE only
  if (mlp) {
    y = mlp->forward(h);
  } else {
    MoE::Output o = moe->forward(h, aux_loss != nullptr);
    y = o.out;
    router_logits = o.router_logits;
    if (aux_loss != nullptr) *aux_loss = aux_loss->defined() ? *aux_loss + o.aux_loss : o.aux_loss;
  }

  const std::vector<int64_t> active = active_slots();
  if (!active.empty()) {
    Tensor gates;  // (B, T, S_active), MoE only
    if (moe) {
      std::vector<Tensor> rows;
      for (int64_t s : active) rows.push_back(unsqueeze(slots_[s]->router, 0));                         // (1, C)
      Tensor slot_logits = matmul(reshape(h, {B * T, cfg_.n_embd}), transpose(concat(rows, 0), 0, 1));  // (B·T, S_a)
      const int64_t E = moe->n_experts(), Sa = static_cast<int64_t>(active.size());
      Tensor joint = softmax(concat({router_logits, slot_logits}, -1), -1);  // (B·T, E + S_a)
      gates = reshape(slice(joint, -1, E, E + Sa), {B, T, Sa});
    }
    for (size_t j = 0; j < active.size(); ++j) {
      const LowRankSlot& s = *slots_[active[j]];
      Tensor delta = matmul(matmul(h, s.A), s.B);  // (B, T, r) -> (B, T, C)
      if (gates.defined()) delta = delta * slice(gates, -1, static_cast<int64_t>(j), static_cast<int64_t>(j) + 1);
      y = y + delta;
    }
  }
  return {stream, y};
}

int64_t CmsLevel::activate_slot(Generator& gen, double a_std_override) {
  int64_t s = 0;
  while (s < n_slots() && active_[s]) ++s;
  SOMNUS_CHECK(s < n_slots(),
               "CmsLevel::activate_slot: no free slot: all {} slots of this level are active (reset one with "
               "reset_slot, or configure more with n_slots)",
               n_slots());
  NoGradGuard no_grad;
  LowRankSlot& slot = *slots_[s];
  SOMNUS_CHECK(a_std_override >= 0.0, "CmsLevel::activate_slot: a_std must be >= 0, got {}", a_std_override);
  const double a_std = a_std_override > 0.0 ? a_std_override
                                            : 1.0 / std::sqrt(static_cast<double>(cfg_.n_embd));  // A ~ N(0, 1/C)
  slot.A.copy_(randn(slot.A.shape(), gen, slot.A.dtype(), slot.A.device(), 0.0, a_std));
  slot.B.fill_(0.0);
  if (slot.router.defined()) slot.router.fill_(0.0);
  slot.zero_grad();
  active_[s] = true;
  slot_active_.select(0, s).fill_(1.0);
  return s;
}

void CmsLevel::reset_slot(int64_t s) {
  SOMNUS_CHECK(s >= 0 && s < n_slots(), "CmsLevel::reset_slot: slot {} out of range [0, {})", s, n_slots());
  SOMNUS_CHECK(active_[s], "CmsLevel::reset_slot: slot {} is not active", s);
  NoGradGuard no_grad;
  slots_[s]->B.fill_(0.0);
  slots_[s]->zero_grad();
  active_[s] = false;
  slot_active_.select(0, s).fill_(0.0);
}

void CmsLevel::set_slot_mask_for_view(int64_t s, bool active) {
  SOMNUS_CHECK(s >= 0 && s < n_slots(), "CmsLevel::set_slot_mask_for_view: slot {} out of range [0, {})", s, n_slots());
  NoGradGuard no_grad;
  active_[s] = active;
  slot_active_.select(0, s).fill_(active ? 1.0 : 0.0);
}

std::vector<int64_t> CmsLevel::active_slots() const {
  std::vector<int64_t> out;
  for (int64_t s = 0; s < n_slots(); ++s) {
    if (active_[s]) out.push_back(s);
  }
  return out;
}

bool CmsLevel::slot_active(int64_t s) const {
  SOMNUS_CHECK(s >= 0 && s < n_slots(), "CmsLevel: slot {} out of range [0, {})", s, n_slots());
  return active_[s];
}

LowRankSlot& CmsLevel::slot(int64_t s) const {
  SOMNUS_CHECK(s >= 0 && s < n_slots(), "CmsLevel: slot {} out of range [0, {})", s, n_slots());
  return *slots_[s];
}

std::vector<Tensor> CmsLevel::slot_parameters(int64_t s) const {
  const LowRankSlot& sl = slot(s);
  std::vector<Tensor> out{sl.A, sl.B};
  if (sl.router.defined()) out.push_back(sl.router);
  return out;
}

void CmsLevel::on_load() {
  if (slots_.empty()) return;
  const std::vector<double> mask = slot_active_.to_vector();
  for (size_t s = 0; s < mask.size(); ++s) {
    SOMNUS_CHECK(mask[s] == 0.0 || mask[s] == 1.0, "CmsLevel: slot_active[{}] = {} (expected 0 or 1)", s, mask[s]);
    active_[s] = mask[s] != 0.0;
  }
}

// ---------------------------------------------------------------- CMS chain

void validate_level_periods(const std::vector<LevelConfig>& levels, const std::string& context) {
  SOMNUS_CHECK(!levels.empty(), "{}: at least one level is required", context);
  for (size_t i = 0; i < levels.size(); ++i) {
    SOMNUS_CHECK(levels[i].period >= 1, "{}: levels[{}].period must be >= 1, got {}", context, i, levels[i].period);
    if (i == 0) continue;
    SOMNUS_CHECK(levels[i].period % levels[i - 1].period == 0,
                 "{}: levels[{}].period = {} must be a multiple of levels[{}].period = {} (each period divides the "
                 "next, so C_1 <= ... <= C_k)",
                 context, i, levels[i].period, i - 1, levels[i - 1].period);
  }
}

CmsChain::CmsChain(const std::vector<LevelConfig>& levels, const CmsLevelConfig& common, Generator& gen, DType dtype,
                   Device device) {
  validate_level_periods(levels);
  for (size_t i = 0; i < levels.size(); ++i) {
    CmsLevelConfig cfg = common;
    cfg.level = levels[i];
    levels_.push_back(register_module(std::to_string(i), std::make_shared<CmsLevel>(cfg, gen, dtype, device)));
  }
}

Tensor CmsChain::forward(const Tensor& x, Tensor* aux_loss) {
  auto [stream, out] = forward_residual(x, Tensor(), aux_loss);
  return stream + out;  // (B, T, C)
}

std::pair<Tensor, Tensor> CmsChain::forward_residual(const Tensor& x, const Tensor& pending, Tensor* aux_loss) {
  std::pair<Tensor, Tensor> s{x, pending};
  for (auto& level : levels_) s = level->forward_residual(s.first, s.second, aux_loss);  // (B, T, C) each
  return s;
}

std::pair<Tensor, Tensor> norm_with_residual(const Norm& norm, const Tensor& x, const Tensor& pending) {
  if (const auto* ln = dynamic_cast<const LayerNorm*>(&norm)) {
    NormOutput o = layer_norm(x, pending, ln->weight, ln->bias, ln->eps);
    return {o.y, o.h};  // o.h is x itself without a residual
  }
  if (const auto* rms = dynamic_cast<const RMSNorm*>(&norm)) {
    NormOutput o = rms_norm(x, pending, rms->weight, rms->eps);
    return {o.y, o.h};
  }
  const Tensor h = pending.defined() ? x + pending : x;
  return {norm.forward(h), h};
}

}  // namespace somnus::nn
