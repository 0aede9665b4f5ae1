// The transformer LM, its config (JSON + validation), the LM loss and the value head
// (see transformer.h).
#include "nn/transformer.h"

#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "autograd/functions.h"
#include "autograd/losses.h"
#include "kernels/ops.h"
#include "tensor/format.h"

namespace somnus::nn {

// ---------------------------------------------------------------- config

const char* pos_kind_name(PosKind k) { return k == PosKind::learned ? "learned" : "rope"; }

bool TransformerConfig::has_moe() const {
  for (const LevelConfig& l : levels) {
    if (l.kind == LevelKind::moe) return true;
  }
  return false;
}

void TransformerConfig::validate() const {
  const char* w = "TransformerConfig";
  SOMNUS_CHECK(vocab_size >= 1, "{}: vocab_size must be >= 1, got {}", w, vocab_size);
  SOMNUS_CHECK(n_layer >= 1, "{}: n_layer must be >= 1, got {}", w, n_layer);
  SOMNUS_CHECK(n_embd >= 1, "{}: n_embd must be >= 1, got {}", w, n_embd);
  SOMNUS_CHECK(n_head >= 1, "{}: n_head must be >= 1, got {}", w, n_head);
  SOMNUS_CHECK(n_embd % n_head == 0, "{}: n_head = {} must divide n_embd = {}", w, n_head, n_embd);
  SOMNUS_CHECK(n_kv_head >= 0, "{}: n_kv_head must be >= 0 (0 = n_head), got {}", w, n_kv_head);
  SOMNUS_CHECK(n_head % kv_heads() == 0, "{}: n_kv_head = {} must divide n_head = {}", w, n_kv_head, n_head);
  SOMNUS_CHECK(block_size >= 1, "{}: block_size must be >= 1, got {}", w, block_size);
  SOMNUS_CHECK(norm_eps > 0.0, "{}: norm_eps must be > 0, got {}", w, norm_eps);
  if (pos == PosKind::rope) {
    SOMNUS_CHECK(head_dim() % 2 == 0, "{}: pos = rope needs an even head dim, got n_embd / n_head = {}", w, head_dim());
    SOMNUS_CHECK(rope_theta > 0.0, "{}: rope_theta must be > 0, got {}", w, rope_theta);
  }
  SOMNUS_CHECK(init_std > 0.0, "{}: init_std must be > 0, got {}", w, init_std);
  SOMNUS_CHECK(attention_period >= 1, "{}: attention_period must be >= 1, got {}", w, attention_period);
  SOMNUS_CHECK(embedding_period >= 1, "{}: embedding_period must be >= 1, got {}", w, embedding_period);
  validate_level_periods(levels, w);
  for (size_t i = 0; i < levels.size(); ++i) {
    const LevelConfig& l = levels[i];
    SOMNUS_CHECK(l.hidden >= 0, "{}: levels[{}].hidden must be >= 0 (0 = default), got {}", w, i, l.hidden);
    if (l.kind == LevelKind::moe) {
      SOMNUS_CHECK(l.n_experts >= 1, "{}: levels[{}].n_experts must be >= 1 for a moe level, got {}", w, i,
                   l.n_experts);
      SOMNUS_CHECK(l.top_k >= 1 && l.top_k <= l.n_experts,
                   "{}: levels[{}].top_k must be in [1, n_experts = {}], got {}", w, i, l.n_experts, l.top_k);
    } else {
      SOMNUS_CHECK(l.n_experts == 0, "{}: levels[{}].n_experts = {} is set but levels[{}].kind is dense", w, i,
                   l.n_experts, i);
    }
    SOMNUS_CHECK(l.n_slots >= 0, "{}: levels[{}].n_slots must be >= 0, got {}", w, i, l.n_slots);
    SOMNUS_CHECK(l.n_slots == 0 || l.slot_rank >= 1, "{}: levels[{}].slot_rank must be >= 1, got {}", w, i,
                 l.slot_rank);
  }
}

TransformerConfig TransformerConfig::gpt2_style(int64_t vocab_size, int64_t n_layer, int64_t n_embd, int64_t n_head,
                                                int64_t block_size) {
  TransformerConfig c;
  c.vocab_size = vocab_size;
  c.n_layer = n_layer;
  c.n_embd = n_embd;
  c.n_head = n_head;
  c.n_kv_head = 0;
  c.block_size = block_size;
  c.norm = NormKind::layernorm;
  c.mlp = MlpKind::gelu;
  c.pos = PosKind::learned;
  c.tie_embeddings = true;
  c.bias = true;
  return c;
}

TransformerConfig TransformerConfig::llama_style(int64_t vocab_size, int64_t n_layer, int64_t n_embd, int64_t n_head,
                                                 int64_t n_kv_head, int64_t block_size) {
  TransformerConfig c;
  c.vocab_size = vocab_size;
  c.n_layer = n_layer;
  c.n_embd = n_embd;
  c.n_head = n_head;
  c.n_kv_head = n_kv_head;
  c.block_size = block_size;
  c.norm = NormKind::rmsnorm;
  c.mlp = MlpKind::swiglu;
  c.pos = PosKind::rope;
  c.rope_theta = 10000.0;
  c.tie_embeddings = false;
  c.bias = false;
  return c;
}

TransformerConfig TransformerConfig::preset(const std::string& name) {
  if (name == "gpt2-style") return gpt2_style();
  if (name == "llama-style") return llama_style();
  fail("TransformerConfig: unknown preset '{}' (expected \"gpt2-style\" or \"llama-style\")", name);
}

// ---------------------------------------------------------------- JSON

namespace {

using nlohmann::json;

void check_keys(const json& j, const std::set<std::string>& known, const std::string& where) {
  SOMNUS_CHECK(j.is_object(), "{}: expected a JSON object, got {}", where, j.type_name());
  for (const auto& [key, value] : j.items()) {
    SOMNUS_CHECK(known.count(key) != 0, "{}: unknown key '{}'", where, key);
  }
}

void read_int(const json& j, const char* key, int64_t& out, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return;
  SOMNUS_CHECK(it->is_number_integer(), "{}: '{}' must be an integer, got {}", where, key, it->dump());
  out = it->get<int64_t>();
}

void read_double(const json& j, const char* key, double& out, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return;
  SOMNUS_CHECK(it->is_number(), "{}: '{}' must be a number, got {}", where, key, it->dump());
  out = it->get<double>();
}

void read_bool(const json& j, const char* key, bool& out, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return;
  SOMNUS_CHECK(it->is_boolean(), "{}: '{}' must be true or false, got {}", where, key, it->dump());
  out = it->get<bool>();
}

// An enum read from one of its names.
template <class E>
void read_enum(const json& j, const char* key, E& out, const std::vector<std::pair<const char*, E>>& names,
               const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return;
  std::string expected;
  for (const auto& [name, value] : names) expected += (expected.empty() ? "\"" : ", \"") + std::string(name) + "\"";
  SOMNUS_CHECK(it->is_string(), "{}: '{}' must be one of {}, got {}", where, key, expected, it->dump());
  const std::string s = it->get<std::string>();
  for (const auto& [name, value] : names) {
    if (s == name) {
      out = value;
      return;
    }
  }
  fail("{}: '{}' must be one of {}, got \"{}\"", where, key, expected, s);
}

const std::vector<std::pair<const char*, NormKind>> kNormNames{{"layernorm", NormKind::layernorm},
                                                               {"rmsnorm", NormKind::rmsnorm}};
const std::vector<std::pair<const char*, MlpKind>> kMlpNames{{"gelu", MlpKind::gelu}, {"swiglu", MlpKind::swiglu}};
const std::vector<std::pair<const char*, PosKind>> kPosNames{{"learned", PosKind::learned}, {"rope", PosKind::rope}};
const std::vector<std::pair<const char*, LevelKind>> kLevelNames{{"dense", LevelKind::dense}, {"moe", LevelKind::moe}};

void level_from_json(const json& j, LevelConfig& c, const std::string& where) {
  check_keys(j, {"kind", "period", "hidden", "n_experts", "top_k", "n_slots", "slot_rank"}, where);
  read_enum(j, "kind", c.kind, kLevelNames, where);
  read_int(j, "period", c.period, where);
  read_int(j, "hidden", c.hidden, where);
  read_int(j, "n_experts", c.n_experts, where);
  read_int(j, "top_k", c.top_k, where);
  read_int(j, "n_slots", c.n_slots, where);
  read_int(j, "slot_rank", c.slot_rank, where);
}

}  // namespace

void to_json(nlohmann::json& j, const LevelConfig& c) {
  j = nlohmann::json{{"kind", level_kind_name(c.kind)}, {"period", c.period}, {"hidden", c.hidden},
                     {"n_experts", c.n_experts},        {"top_k", c.top_k},   {"n_slots", c.n_slots},
                     {"slot_rank", c.slot_rank}};
}

void from_json(const nlohmann::json& j, LevelConfig& c) { level_from_json(j, c, "LevelConfig"); }

void to_json(nlohmann::json& j, const TransformerConfig& c) {
  j = nlohmann::json{{"vocab_size", c.vocab_size},
                     {"n_layer", c.n_layer},
                     {"n_embd", c.n_embd},
                     {"n_head", c.n_head},
                     {"n_kv_head", c.n_kv_head},
                     {"block_size", c.block_size},
                     {"norm", norm_kind_name(c.norm)},
                     {"norm_eps", c.norm_eps},
                     {"mlp", mlp_kind_name(c.mlp)},
                     {"pos", pos_kind_name(c.pos)},
                     {"rope_theta", c.rope_theta},
                     {"tie_embeddings", c.tie_embeddings},
                     {"bias", c.bias},
                     {"init_std", c.init_std},
                     {"levels", c.levels},
                     {"attention_period", c.attention_period},
                     {"embedding_period", c.embedding_period}};
}

void from_json(const nlohmann::json& j, TransformerConfig& c) {
  const std::string w = "TransformerConfig";
  check_keys(
      j,
      {"preset", "vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "block_size", "norm", "norm_eps", "mlp",
       "pos", "rope_theta", "tie_embeddings", "bias", "init_std", "levels", "attention_period", "embedding_period"},
      w);
  if (auto it = j.find("preset"); it != j.end()) {
    SOMNUS_CHECK(it->is_string(), "{}: 'preset' must be a string, got {}", w, it->dump());
    c = TransformerConfig::preset(it->get<std::string>());
  }
  read_int(j, "vocab_size", c.vocab_size, w);
  read_int(j, "n_layer", c.n_layer, w);
  read_int(j, "n_embd", c.n_embd, w);
  read_int(j, "n_head", c.n_head, w);
  read_int(j, "n_kv_head", c.n_kv_head, w);
  read_int(j, "block_size", c.block_size, w);
  read_enum(j, "norm", c.norm, kNormNames, w);
  read_double(j, "norm_eps", c.norm_eps, w);
  read_enum(j, "mlp", c.mlp, kMlpNames, w);
  read_enum(j, "pos", c.pos, kPosNames, w);
  read_double(j, "rope_theta", c.rope_theta, w);
  read_bool(j, "tie_embeddings", c.tie_embeddings, w);
  read_bool(j, "bias", c.bias, w);
  read_double(j, "init_std", c.init_std, w);
  read_int(j, "attention_period", c.attention_period, w);
  read_int(j, "embedding_period", c.embedding_period, w);
  if (auto it = j.find("levels"); it != j.end()) {
    SOMNUS_CHECK(it->is_array(), "{}: 'levels' must be an array of level objects, got {}", w, it->dump());
    c.levels.clear();
    for (size_t i = 0; i < it->size(); ++i) {
      LevelConfig level;
      level_from_json((*it)[i], level, fmt::format("{}: levels[{}]", w, i));
      c.levels.push_back(level);
    }
  }
  c.validate();
}

// ---------------------------------------------------------------- loss

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& mask) {
  SOMNUS_CHECK(logits.defined() && targets.defined() && logits.dim() >= 1, "cross_entropy: undefined input");
  SOMNUS_CHECK(is_integral(targets.dtype()), "cross_entropy: targets must be an integer tensor, got {}",
               dtype_name(targets.dtype()));
  const Shape lead(logits.shape().begin(), logits.shape().end() - 1);
  SOMNUS_CHECK(targets.shape() == lead, "cross_entropy: targets {} must have logits' leading shape: logits {}",
               shape_str(targets.shape()), shape_str(logits.shape()));
  SOMNUS_CHECK(logits.size(-1) <= (int64_t{1} << 24), "cross_entropy: vocab {} above 2^24 is not supported",
               logits.size(-1));
  SOMNUS_CHECK(!mask.defined() || mask.shape() == lead, "cross_entropy: mask {} must match targets {}",
               mask.defined() ? shape_str(mask.shape()) : "", shape_str(targets.shape()));
  const DType dt = logits.dtype();
  const Device dev = logits.device();
  // On the device, without a host sync: counted = (target != −1) [· mask]; ignored targets
  // read class 0 and are weighted out.
  Tensor t = kernels::cast(targets.device() == dev ? targets : targets.to(dev), DType::f32);  // exact for ids < 2^24
  Tensor shifted = kernels::binary(kernels::Binary::add, t, Tensor::scalar(1.0, DType::f32, dev));  // 0 where −1
  Tensor safe = kernels::cast(kernels::where(shifted, t, Tensor::scalar(0.0, DType::f32, dev)), DType::i64);
  Tensor counted = kernels::where(shifted, Tensor::scalar(1.0, dt, dev), Tensor::scalar(0.0, dt, dev));  // (...)
  if (mask.defined()) {
    const Tensor m = mask.device() == dev ? mask : mask.to(dev);
    counted = kernels::where(m, counted, Tensor::scalar(0.0, dt, dev));
  }
  Tensor logp = log_softmax(logits, -1);                               // (..., V)
  Tensor picked = squeeze(gather(logp, -1, unsqueeze(safe, -1)), -1);  // (...)
  Tensor total = sum(picked * counted);
  Tensor n = kernels::reduce_all(kernels::Reduce::sum, counted);
  n = kernels::where(n, n, Tensor::scalar(1.0, dt, dev));  // 0 counted -> loss 0, not NaN
  return -total / n;
}

Tensor LMLoss::total(double aux_weight) const { return aux.defined() ? ce + aux * aux_weight : ce; }

// ---------------------------------------------------------------- model

namespace {

double residual_std(const TransformerConfig& cfg) {
  const double branches = static_cast<double>(cfg.n_layer) * static_cast<double>(1 + cfg.levels.size());
  return cfg.init_std / std::sqrt(branches);
}

}  // namespace

Block::Block(const TransformerConfig& cfg, Generator& gen, DType dtype, Device device) {
  attn_norm = register_module("attn_norm", make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias, dtype, device));
  AttentionConfig ac;
  ac.n_embd = cfg.n_embd;
  ac.n_head = cfg.n_head;
  ac.n_kv_head = cfg.kv_heads();
  ac.bias = cfg.bias;
  ac.rope = cfg.pos == PosKind::rope;
  ac.rope_theta = cfg.rope_theta;
  ac.max_positions = cfg.block_size;
  ac.init_std = cfg.init_std;
  ac.out_init_std = residual_std(cfg);
  attn = register_module("attn", std::make_shared<CausalSelfAttention>(ac, gen, dtype, device));
  CmsLevelConfig lc;
  lc.n_embd = cfg.n_embd;
  lc.mlp = cfg.mlp;
  lc.norm = cfg.norm;
  lc.norm_eps = cfg.norm_eps;
  lc.bias = cfg.bias;
  lc.init_std = cfg.init_std;
  lc.out_init_std = residual_std(cfg);
  cms = register_module("cms", std::make_shared<CmsChain>(cfg.levels, lc, gen, dtype, device));
}

Tensor Block::forward(const Tensor& x, const ForwardContext& ctx, int64_t layer, Tensor* aux_loss) {
  auto [h, out] = forward_residual(x, Tensor(), ctx, layer, aux_loss);
  return h + out;  // (B, T, C)
}

std::pair<Tensor, Tensor> Block::forward_residual(const Tensor& x, const Tensor& pending, const ForwardContext& ctx,
                                                  int64_t layer, Tensor* aux_loss) {
  auto [y, h] = norm_with_residual(*attn_norm, x, pending);  // (B, T, C) each; h = x + pending
  const Tensor a = attn->forward(y, ctx, layer);             // (B, T, C)
  return cms->forward_residual(h, a, aux_loss);              // level 0's norm adds h + a
}

Transformer::Transformer(const TransformerConfig& cfg, Generator& gen, DType dtype, Device device) : cfg_(cfg) {
  cfg_.validate();
  wte =
      register_module("wte", std::make_shared<Embedding>(cfg.vocab_size, cfg.n_embd, gen, cfg.init_std, dtype, device));
  if (cfg.pos == PosKind::learned) {
    wpe = register_module("wpe",
                          std::make_shared<Embedding>(cfg.block_size, cfg.n_embd, gen, cfg.init_std, dtype, device));
  }
  blocks = register_module("blocks", std::make_shared<ModuleList<Block>>());
  for (int64_t i = 0; i < cfg.n_layer; ++i) blocks->push_back(std::make_shared<Block>(cfg, gen, dtype, device));
  ln_f = register_module("ln_f", make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias, dtype, device));
  if (!cfg.tie_embeddings) {
    lm_head = register_module("lm_head", std::make_shared<Linear>(cfg.n_embd, cfg.vocab_size, /*bias=*/false, gen,
                                                                  cfg.init_std, dtype, device));
  }
}

Tensor Transformer::hidden_states(const Tensor& ids, const ForwardContext& ctx, Tensor* aux_loss) {
  SOMNUS_CHECK(ids.defined() && ids.dim() == 2 && is_integral(ids.dtype()),
               "Transformer: expected ids int (B, T), got {}",
               ids.defined() ? shape_str(ids.shape()) + " " + dtype_name(ids.dtype()) : "undefined");
  const int64_t T = ids.size(1);
  SOMNUS_CHECK(ctx.positions.defined() || ctx.pos_offset + T <= cfg_.block_size,
               "Transformer: positions {}..{} exceed block_size = {} (pos_offset {}, T {})", ctx.pos_offset,
               ctx.pos_offset + T - 1, cfg_.block_size, ctx.pos_offset, T);
  Tensor x = wte->forward(ids);                                            // (B, T, C)
  if (wpe) x = x + wpe->forward(ctx.resolved_positions(T, ids.device()));  // + (T, C) or (B, T, C)
  Tensor pending;  // the last branch output, added into the stream by the next norm
  for (size_t i = 0; i < blocks->size(); ++i) {
    std::tie(x, pending) = (*blocks)[i].forward_residual(x, pending, ctx, static_cast<int64_t>(i), aux_loss);
  }
  return norm_with_residual(*ln_f, x, pending).first;  // (B, T, C): ln_f(x + pending)
}

Tensor Transformer::lm_head_weight() const { return lm_head ? lm_head->weight : wte->weight; }

Tensor Transformer::logits_from_hidden(const Tensor& hidden) const {
  if (lm_head) return lm_head->forward(hidden);
  return matmul(hidden, transpose(wte->weight, 0, 1));  // (B, T, C) @ (C, V)
}

Tensor Transformer::forward(const Tensor& ids, const ForwardContext& ctx) {
  return logits_from_hidden(hidden_states(ids, ctx));  // (B, T, V)
}

LMLoss Transformer::loss(const Tensor& ids, const Tensor& targets, const Tensor& mask, const ForwardContext& ctx) {
  LMLoss out;
  Tensor hidden = hidden_states(ids, ctx, cfg_.has_moe() ? &out.aux : nullptr);  // (B, T, C)
  // An unmerged LoRA adapter on the head is part of logits_from_hidden, not of a single W:
  // take the logits path then.
  if (lm_head && lm_head->has_lora() && !lm_head->lora_merged()) {
    out.ce = cross_entropy(logits_from_hidden(hidden), targets, mask);
    return out;
  }
  SOMNUS_CHECK(targets.defined() && is_integral(targets.dtype()),
               "Transformer::loss: targets must be an integer tensor (B, T)");
  SOMNUS_CHECK(targets.shape() == Shape(hidden.shape().begin(), hidden.shape().end() - 1),
               "Transformer::loss: targets {} must match ids {}", shape_str(targets.shape()), shape_str(ids.shape()));
  SOMNUS_CHECK(!mask.defined() || mask.shape() == targets.shape(), "Transformer::loss: mask {} must match targets {}",
               mask.defined() ? shape_str(mask.shape()) : "", shape_str(targets.shape()));
  // The fused chunked lm-head cross-entropy (autograd/losses.h): one chunk of logits at a
  // time, dh and dW computed in the same pass; never the (B, T, V) logits. The mask is folded
  // into the targets as ignore_index = −1, so the mean runs over the same counted tokens as
  // cross_entropy() (0 when nothing counts).
  const Device dev = hidden.device();
  Tensor tgt = targets.device() == dev ? targets : targets.to(dev);  // (B, T)
  if (mask.defined()) {
    const Tensor m = mask.device() == dev ? mask : mask.to(dev);
    const Tensor t = kernels::cast(tgt, DType::f64);  // exact for any id < 2^53
    tgt = kernels::cast(kernels::where(m, t, Tensor::scalar(-1.0, DType::f64, dev)), DType::i64);
  }
  LinearCrossEntropyOptions opt;
  opt.ignore_index = -1;
  out.ce = linear_cross_entropy(hidden, lm_head_weight(), tgt, opt);  // f32 (f64 for f64 models)
  if (out.ce.dtype() != hidden.dtype()) out.ce = somnus::to(out.ce, hidden.dtype());  // the model's dtype, as before
  return out;
}

CmsLevel& Transformer::level(int64_t layer, int64_t index) const {
  SOMNUS_CHECK(layer >= 0 && layer < cfg_.n_layer, "Transformer::level: layer {} out of range [0, {})", layer,
               cfg_.n_layer);
  SOMNUS_CHECK(index >= 0 && index < static_cast<int64_t>(cfg_.levels.size()),
               "Transformer::level: level {} out of range [0, {})", index, cfg_.levels.size());
  return (*blocks)[static_cast<size_t>(layer)].cms->level(static_cast<size_t>(index));
}

void Transformer::set_random_extra_expert(bool on, Generator* gen) {
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    for (size_t i = 0; i < cfg_.levels.size(); ++i) {
      CmsLevel& lv = level(l, static_cast<int64_t>(i));
      if (lv.moe) lv.moe->set_random_extra_expert(on, gen);
    }
  }
}

std::vector<std::pair<int64_t, NamedTensors>> Transformer::parameters_by_period(bool trainable_only) const {
  std::map<int64_t, NamedTensors> groups;
  auto add = [&](const std::string& prefix, const Module& m, int64_t period) {
    for (auto& [name, t] : m.named_parameters(trainable_only)) groups[period].emplace_back(prefix + "." + name, t);
  };
  add("wte", *wte, cfg_.embedding_period);
  if (wpe) add("wpe", *wpe, cfg_.embedding_period);
  for (size_t i = 0; i < blocks->size(); ++i) {
    const Block& b = (*blocks)[i];
    const std::string p = "blocks." + std::to_string(i);
    add(p + ".attn_norm", *b.attn_norm, cfg_.attention_period);
    add(p + ".attn", *b.attn, cfg_.attention_period);
    for (size_t l = 0; l < b.cms->size(); ++l)
      add(p + ".cms." + std::to_string(l), b.cms->level(l), b.cms->level(l).period());
  }
  add("ln_f", *ln_f, cfg_.embedding_period);
  if (lm_head) add("lm_head", *lm_head, cfg_.embedding_period);
  return {groups.begin(), groups.end()};
}

// ---------------------------------------------------------------- value head

ValueHead::ValueHead(int64_t n_embd, Generator& gen, double init_std, DType dtype, Device device) {
  proj = register_module("proj", std::make_shared<Linear>(n_embd, 1, /*bias=*/true, gen, init_std, dtype, device));
}

Tensor ValueHead::forward(const Tensor& hidden) const {
  return squeeze(proj->forward(hidden), -1);  // (B, T, C) -> (B, T, 1) -> (B, T)
}

}  // namespace somnus::nn
