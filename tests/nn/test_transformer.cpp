// The transformer LM: config JSON and validation errors, parameter names and init, the
// loss against its formula, f64 gradchecks of a 1-layer LM loss, slot activation as a
// no-op on the whole model, training on a repeated sequence, determinism, state_dict round
// trips, the generation hooks (KV-cache incremental decoding and left-padded batches equal
// full recomputation), update-period groups and the value head.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "kernels/ops.h"
#include "nn/transformer.h"
#include "nn_testing.h"
#include "tensor/device.h"
#include "tensor/random.h"

using namespace somnus;
using namespace somnus::nn;
using namespace somnus::nn::testing;
using nlohmann::json;

namespace {

Tensor random_ids(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  Generator gen(seed);
  return randint(0, V, {B, T}, gen);
}

std::set<std::string> param_names(const Module& m) {
  std::set<std::string> out;
  for (auto& [n, t] : m.named_parameters()) out.insert(n);
  return out;
}

// The simplest KV cache: per layer, the concatenation of everything it was given.
class ConcatCache : public KVCache {
 public:
  std::pair<Tensor, Tensor> update(int64_t layer, const Tensor& k, const Tensor& v) override {
    auto& [K, V] = store_[layer];
    K = K.defined() ? concat({K, k}, 2) : k;
    V = V.defined() ? concat({V, v}, 2) : v;
    return {K, V};
  }

 private:
  std::map<int64_t, std::pair<Tensor, Tensor>> store_;
};

}  // namespace

// ---------------------------------------------------------------- config

TEST(Config, JsonRoundTripAndPresets) {
  TransformerConfig c = tiny_cms();
  c.attention_period = 2;
  c.embedding_period = 8;
  c.rope_theta = 5000.0;
  const json j = c;
  const TransformerConfig back = j.get<TransformerConfig>();
  EXPECT_EQ(json(back), j);
  EXPECT_EQ(j["levels"][1]["kind"], "moe");
  EXPECT_EQ(j["norm"], "rmsnorm");
  EXPECT_EQ(j["pos"], "rope");

  for (const char* name : {"gpt2-style", "llama-style"}) TransformerConfig::preset(name).validate();
  const TransformerConfig g = TransformerConfig::preset("gpt2-style");
  EXPECT_EQ(g.norm, NormKind::layernorm);
  EXPECT_EQ(g.mlp, MlpKind::gelu);
  EXPECT_EQ(g.pos, PosKind::learned);
  EXPECT_TRUE(g.tie_embeddings && g.bias);
  const TransformerConfig l =
      json{{"preset", "llama-style"}, {"n_layer", 3}, {"n_kv_head", 4}}.get<TransformerConfig>();
  EXPECT_EQ(l.n_layer, 3);
  EXPECT_EQ(l.kv_heads(), 4);
  EXPECT_EQ(l.norm, NormKind::rmsnorm);
  EXPECT_EQ(l.mlp, MlpKind::swiglu);
  EXPECT_EQ(l.pos, PosKind::rope);
  EXPECT_FALSE(l.tie_embeddings || l.bias);
  // Missing keys keep their defaults.
  const TransformerConfig d = json::object().get<TransformerConfig>();
  EXPECT_EQ(json(d), json(TransformerConfig{}));
}

TEST(Config, BadConfigsNameTheField) {
  struct Case {
    json j;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases{
      {{{"n_embd", 10}, {"n_head", 3}}, {"n_head = 3", "n_embd = 10"}},
      {{{"n_head", 4}, {"n_kv_head", 3}}, {"n_kv_head = 3", "n_head = 4"}},
      {{{"norm", "batchnorm"}}, {"'norm'", "batchnorm", "\"layernorm\", \"rmsnorm\""}},
      {{{"mlp", "relu"}}, {"'mlp'", "relu"}},
      {{{"pos", "alibi"}}, {"'pos'", "alibi"}},
      {{{"levels", json::array({{{"period", 2}}, {{"period", 3}}})}}, {"levels[1].period = 3", "levels[0].period = 2"}},
      {{{"levels", json::array({{{"period", 4}}, {{"period", 2}}})}}, {"levels[1].period = 2", "multiple"}},
      {{{"levels", json::array({{{"kind", "moe"}, {"n_experts", 2}, {"top_k", 3}}})}}, {"levels[0].top_k"}},
      {{{"levels", json::array({{{"kind", "moe"}}})}}, {"levels[0].n_experts"}},
      {{{"levels", json::array({{{"n_experts", 2}}})}}, {"levels[0].n_experts", "dense"}},
      {{{"levels", json::array({{{"kind", "sparse"}}})}}, {"levels[0]", "'kind'", "sparse"}},
      {{{"levels", json::array({{{"perid", 2}}})}}, {"levels[0]", "unknown key 'perid'"}},
      {{{"levels", json::array()}}, {"at least one level"}},
      {{{"levels", 3}}, {"'levels'"}},
      {{{"n_layers", 2}}, {"unknown key 'n_layers'"}},
      {{{"n_layer", 2.5}}, {"'n_layer'", "integer"}},
      {{{"bias", "yes"}}, {"'bias'"}},
      {{{"pos", "rope"}, {"n_embd", 12}, {"n_head", 4}}, {"even head dim"}},
      {{{"preset", "gpt3"}}, {"unknown preset 'gpt3'"}},
      {{{"vocab_size", 0}}, {"vocab_size"}},
      {{{"attention_period", 0}}, {"attention_period"}},
      {json::array({1, 2}), {"JSON object"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.j.dump());
    expect_error([&] { c.j.get<TransformerConfig>(); }, c.parts);
  }
  // The model constructor validates too (configs built in code).
  TransformerConfig bad = tiny_gpt2();
  bad.n_head = 3;
  Generator gen(1);
  expect_error([&] { Transformer(bad, gen); }, {"n_head = 3", "n_embd = 8"});
}

// ---------------------------------------------------------------- structure and init

TEST(Transformer, ParameterNamesAndCounts) {
  Generator gen(1);
  Transformer gpt(tiny_gpt2(), gen);
  const std::set<std::string> g = param_names(gpt);
  for (const char* n :
       {"wte.weight", "wpe.weight", "blocks.0.attn_norm.weight", "blocks.0.attn_norm.bias", "blocks.0.attn.wqkv.weight",
        "blocks.0.attn.wqkv.bias", "blocks.1.attn.wo.weight", "blocks.1.cms.0.norm.bias",
        "blocks.0.cms.0.mlp.fc.weight", "blocks.1.cms.0.mlp.proj.bias", "ln_f.weight", "ln_f.bias"}) {
    EXPECT_TRUE(g.count(n)) << n;
  }
  EXPECT_FALSE(g.count("lm_head.weight"));  // tied
  EXPECT_TRUE(gpt.lm_head_weight().same(gpt.wte->weight));
  const int64_t V = 13, C = 8, H = 16, L = 2, P = 16;
  const int64_t per_layer = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * H + H) + (H * C + C);
  EXPECT_EQ(gpt.num_parameters(), V * C + P * C + L * per_layer + 2 * C);

  Generator gen2(1);
  Transformer llama(tiny_llama(), gen2);
  const std::set<std::string> l = param_names(llama);
  for (const char* n : {"wte.weight", "lm_head.weight", "blocks.0.attn.wqkv.weight", "blocks.0.cms.0.mlp.gate.weight",
                        "blocks.0.cms.0.mlp.up.weight", "blocks.1.cms.0.mlp.down.weight"}) {
    EXPECT_TRUE(l.count(n)) << n;
  }
  EXPECT_FALSE(l.count("wpe.weight"));
  for (const std::string& n : l) EXPECT_EQ(n.find(".bias"), std::string::npos) << n;             // no biases
  EXPECT_EQ(llama.parameter("blocks.0.attn.wqkv.weight").shape(), (Shape{(4 + 2 * 2) * 2, 8}));  // GQA: (Hq + 2·Hkv)·D

  Generator gen3(1);
  Transformer cms(tiny_cms(), gen3);
  const std::set<std::string> c = param_names(cms);
  for (const char* n : {"blocks.1.cms.0.slots.1.A", "blocks.1.cms.1.slots.1.router", "blocks.0.cms.1.moe.router.weight",
                        "blocks.0.cms.1.moe.experts.2.down.weight", "blocks.0.cms.1.norm.weight"}) {
    EXPECT_TRUE(c.count(n)) << n;
  }
  EXPECT_EQ(cms.level(1, 1).period(), 4);
  expect_error([&] { cms.level(2, 0); }, {"layer 2"});
}

TEST(Transformer, GPT2Init) {
  TransformerConfig cfg = TransformerConfig::gpt2_style(64, 2, 64, 4, 32);
  Generator gen(1);
  Transformer m(cfg, gen);
  auto stdev = [](const Tensor& t) {
    const std::vector<double> v = t.to_vector();
    double m2 = 0;
    for (double x : v) m2 += x * x / v.size();
    return std::sqrt(m2);
  };
  const double residual = 0.02 / std::sqrt(2.0 * 2);  // 1/sqrt(2·n_layer) with one level
  EXPECT_NEAR(stdev(m.parameter("blocks.0.attn.wqkv.weight")), 0.02, 0.02 * 0.05);
  EXPECT_NEAR(stdev(m.parameter("blocks.1.cms.0.mlp.fc.weight")), 0.02, 0.02 * 0.05);
  EXPECT_NEAR(stdev(m.parameter("blocks.0.attn.wo.weight")), residual, residual * 0.05);
  EXPECT_NEAR(stdev(m.parameter("blocks.1.cms.0.mlp.proj.weight")), residual, residual * 0.05);
  EXPECT_NEAR(stdev(m.parameter("wte.weight")), 0.02, 0.02 * 0.05);
  EXPECT_EQ(m.parameter("blocks.0.attn.wqkv.bias").to_vector(), std::vector<double>(3 * 64, 0.0));
  EXPECT_EQ(m.parameter("ln_f.weight").to_vector(), std::vector<double>(64, 1.0));
}

// ---------------------------------------------------------------- forward and loss

TEST(Transformer, ForwardShapesAndHiddenStates) {
  for (const TransformerConfig& cfg : {tiny_gpt2(), tiny_llama(), tiny_cms()}) {
    Generator gen(2);
    Transformer m(cfg, gen);
    const Tensor ids = random_ids(3, 5, 13, 3);
    const Tensor logits = m.forward(ids);
    EXPECT_EQ(logits.shape(), (Shape{3, 5, 13}));
    const Tensor hidden = m.hidden_states(ids);
    EXPECT_EQ(hidden.shape(), (Shape{3, 5, 8}));
    EXPECT_TRUE(bitwise_equal(m.logits_from_hidden(hidden), logits));
    expect_error([&] { m.forward(random_ids(1, 17, 13, 4)); }, {"block_size = 16"});
    expect_error([&] { m.forward(Tensor::zeros({1, 3})); }, {"ids int (B, T)"});
    expect_error([&] { m.forward(Tensor::full({1, 3}, 13.0, DType::i64)); }, {"embedding"});
  }
}

TEST(Transformer, LossMatchesFormulaWithIgnoreAndMask) {
  Generator gen(3);
  Transformer m(tiny_gpt2(), gen, DType::f64);
  const Tensor ids = random_ids(2, 6, 13, 4);
  std::vector<double> t = random_ids(2, 6, 13, 5).to_vector();
  t[2] = -1;
  t[7] = -1;
  const Tensor targets = Tensor::from_vector(t, {2, 6}, DType::i64);
  const std::vector<double> mask_v{1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 1};
  const Tensor mask = Tensor::from_vector(mask_v, {2, 6}, DType::f32);
  const std::vector<double> logits = m.forward(ids).to_vector();
  auto ref = [&](bool use_mask) {
    double total = 0, n = 0;
    for (int64_t i = 0; i < 12; ++i) {
      if (t[i] < 0 || (use_mask && mask_v[i] == 0)) continue;
      double mx = -INFINITY, z = 0;
      for (int64_t v = 0; v < 13; ++v) mx = std::max(mx, logits[i * 13 + v]);
      for (int64_t v = 0; v < 13; ++v) z += std::exp(logits[i * 13 + v] - mx);
      total += -(logits[i * 13 + static_cast<int64_t>(t[i])] - mx - std::log(z));
      n += 1;
    }
    return total / n;
  };
  const LMLoss plain = m.loss(ids, targets);
  EXPECT_EQ(plain.ce.dim(), 0);
  EXPECT_FALSE(plain.aux.defined());
  EXPECT_NEAR(plain.ce.item(), ref(false), 1e-13);
  EXPECT_NEAR(m.loss(ids, targets, mask).ce.item(), ref(true), 1e-13);
  EXPECT_NEAR(plain.total(0.5).item(), plain.ce.item(), 0.0);
  // Nothing counted: 0, not NaN.
  const LMLoss none = m.loss(ids, Tensor::full({2, 6}, -1.0, DType::i64));
  EXPECT_EQ(none.ce.item(), 0.0);
  expect_error([&] { m.loss(ids, Tensor::full({2, 6}, -2.0, DType::i64)); }, {"targets", "-2"});
  expect_error([&] { m.loss(ids, Tensor::zeros({2, 5}, DType::i64)); }, {"loss", "(2, 5)"});
  expect_error([&] { m.loss(ids, targets, Tensor::ones({2, 5}, DType::f32)); }, {"mask", "(2, 5)"});

  Generator gen2(3);
  Transformer moe(tiny_cms(), gen2, DType::f64);
  const LMLoss l = moe.loss(ids, targets);
  ASSERT_TRUE(l.aux.defined());
  EXPECT_GT(l.aux.item(), 0.5 * 2);  // two MoE levels (one per layer), each >= ~1
  EXPECT_NEAR(l.total(0.01).item(), l.ce.item() + 0.01 * l.aux.item(), 1e-14);
}

// Transformer::loss runs the fused chunked linear_cross_entropy on the hidden states; it must
// give the loss and every gradient of the logits composition cross_entropy(forward(ids)),
// with ignored targets and a mask, tied (gpt2) and untied (llama + MoE) heads, and with a
// (mask, −1) combination that counts nothing.
TEST(Transformer, FusedLossEqualsLogitsComposition) {
  for (const TransformerConfig& cfg : {tiny_gpt2(), tiny_cms()}) {
    SCOPED_TRACE(json(cfg).dump());
    Generator gen(41);
    Transformer m(cfg, gen, DType::f64);
    const Tensor ids = random_ids(2, 7, 13, 42);
    std::vector<double> t = random_ids(2, 7, 13, 43).to_vector();
    t[1] = t[9] = -1;
    const Tensor targets = Tensor::from_vector(t, {2, 7}, DType::i64);
    std::vector<double> mask_v(14, 1.0);
    mask_v[4] = mask_v[12] = 0;
    const Tensor mask = Tensor::from_vector(mask_v, {2, 7}, DType::i32);
    for (const bool use_mask : {false, true}) {
      const Tensor mk = use_mask ? mask : Tensor();
      m.zero_grad();
      const Tensor fused = m.loss(ids, targets, mk).ce;
      backward(fused);
      std::map<std::string, Tensor> fused_grads;  // masked slots get none either way
      for (auto& [n, p] : m.named_parameters()) fused_grads[n] = p.grad().defined() ? p.grad().clone() : Tensor();
      m.zero_grad();
      const Tensor ref = nn::cross_entropy(m.forward(ids), targets, mk);
      backward(ref);
      EXPECT_EQ(fused.dtype(), DType::f64);
      EXPECT_NEAR(fused.item(), ref.item(), 1e-12 * std::abs(ref.item()));
      for (auto& [n, p] : m.named_parameters()) {
        ASSERT_EQ(fused_grads[n].defined(), p.grad().defined()) << n;
        if (p.grad().defined()) {
          EXPECT_LT(rel_error(fused_grads[n], p.grad()), 1e-10) << n;
        }
      }
    }
    // Nothing counted (every unmasked target ignored): 0 and zero gradients, as cross_entropy.
    m.zero_grad();
    std::vector<double> none(14, -1.0);
    none[4] = 3;  // masked out
    const Tensor zero = m.loss(ids, Tensor::from_vector(none, {2, 7}, DType::i64), mask).ce;
    EXPECT_EQ(zero.item(), 0.0);
    backward(zero);
    for (double g : m.wte->weight.grad().to_vector()) ASSERT_EQ(g, 0.0);
  }
}

// The hidden states by the unfused composition, every residual add a separate op:
// x = x + attn(attn_norm(x)); x = level.forward(x) per level (whose own norm has nothing
// pending); ln_f(x).
Tensor unfused_hidden(Transformer& m, const Tensor& ids, Tensor* aux) {
  Tensor x = m.wte->forward(ids);  // (B, T, C)
  if (m.wpe) x = x + m.wpe->forward(ForwardContext{}.resolved_positions(ids.size(1), ids.device()));
  for (size_t i = 0; i < m.blocks->size(); ++i) {
    Block& b = (*m.blocks)[i];
    x = x + b.attn->forward(b.attn_norm->forward(x), ForwardContext{}, static_cast<int64_t>(i));
    for (size_t l = 0; l < b.cms->size(); ++l) x = b.cms->level(l).forward(x, aux);
  }
  return m.ln_f->forward(x);
}

// Block, CmsChain and hidden_states add each residual inside the next norm's fused kernel;
// outputs (bitwise in f32), the MoE aux loss and every gradient (f64) must equal the unfused
// composition, for LayerNorm (gpt2) and RMSNorm with two levels, MoE and active slots.
TEST(Transformer, FusedResidualNormsEqualUnfusedComposition) {
  for (const TransformerConfig& cfg : {tiny_gpt2(), tiny_cms()}) {
    SCOPED_TRACE(json(cfg).dump());
    for (const DType dt : {DType::f32, DType::f64}) {
      Generator gen(51);
      Transformer m(cfg, gen, dt);
      if (cfg.has_moe()) {
        Generator sg(52);
        for (int64_t l = 0; l < cfg.n_layer; ++l) {
          m.level(l, 0).activate_slot(sg);
          m.level(l, 1).activate_slot(sg);
          randomize(m.level(l, 0).slot(0).B, 53 + static_cast<uint64_t>(l));
          randomize(m.level(l, 1).slot(0).B, 55 + static_cast<uint64_t>(l));
        }
      }
      const Tensor ids = random_ids(2, 7, 13, 54);
      Tensor aux_fused, aux_ref;
      const Tensor fused = m.hidden_states(ids, {}, cfg.has_moe() ? &aux_fused : nullptr);
      const Tensor ref = unfused_hidden(m, ids, cfg.has_moe() ? &aux_ref : nullptr);
      EXPECT_TRUE(bitwise_equal(fused, ref));
      if (cfg.has_moe()) {
        EXPECT_TRUE(bitwise_equal(aux_fused, aux_ref));
      }
      if (dt != DType::f64) continue;
      // Gradients through a random projection of the hidden states (+ the aux loss).
      const Tensor proj = randn(fused.shape(), gen, DType::f64);
      auto grads = [&](const Tensor& hidden, const Tensor& aux) {
        m.zero_grad();
        Tensor l = sum(hidden * proj);
        if (aux.defined()) l = l + aux;
        backward(l);
        std::map<std::string, Tensor> g;
        for (auto& [n, p] : m.named_parameters()) g[n] = p.grad().defined() ? p.grad().clone() : Tensor();
        return g;
      };
      const auto gf = grads(fused, aux_fused), gr = grads(ref, aux_ref);
      for (auto& [n, g] : gr) {
        ASSERT_EQ(gf.at(n).defined(), g.defined()) << n;
        if (g.defined()) {
          EXPECT_LT(rel_error(gf.at(n), g), 1e-12) << n;
        }
      }
      EXPECT_TRUE(gf.at("blocks.0.attn_norm.weight").defined());
    }
  }
}

// CmsLevel::forward_residual(x, pending) is the level applied to x + pending, with the add in
// the norm kernel: output h + out equals level.forward(x + pending); x and pending get the
// same gradient, the one of the unfused sum.
TEST(Transformer, CmsLevelForwardResidualEqualsAddThenForward) {
  for (const TransformerConfig& cfg : {tiny_gpt2(), tiny_cms()}) {
    SCOPED_TRACE(json(cfg).dump());
    Generator gen(61);
    Transformer m(cfg, gen, DType::f64);
    CmsLevel& level = m.level(0, 0);
    Tensor x = randn({2, 5, cfg.n_embd}, gen, DType::f64), pending = randn({2, 5, cfg.n_embd}, gen, DType::f64);
    x.set_requires_grad(true);
    pending.set_requires_grad(true);
    auto [h, out] = level.forward_residual(x, pending);
    EXPECT_TRUE(bitwise_equal(h, x.detach() + pending.detach()));
    const Tensor proj = randn(x.shape(), gen, DType::f64);
    backward(sum((h + out) * proj));
    const Tensor gx = x.grad().clone(), gp = pending.grad().clone();
    EXPECT_TRUE(bitwise_equal(gx, gp));
    Tensor s = (x.detach() + pending.detach());
    s.set_requires_grad(true);
    const Tensor ref = level.forward(s);
    EXPECT_LT(rel_error(h + out, ref), 1e-15);
    backward(sum(ref * proj));
    EXPECT_LT(rel_error(gx, s.grad()), 1e-12);
    expect_error([&] { level.forward_residual(x, randn({2, 4, cfg.n_embd}, gen, DType::f64)); }, {"pending", "(2, 4"});
  }
}

TEST(Gradcheck, OneLayerLMLoss) {
  {
    TransformerConfig cfg = tiny_gpt2(1);
    cfg.n_embd = 4;
    cfg.vocab_size = 7;
    cfg.block_size = 6;
    cfg.levels[0].hidden = 8;
    cfg.init_std = 0.5;
    Generator gen(4);
    Transformer m(cfg, gen, DType::f64);
    const Tensor ids = random_ids(2, 4, 7, 5), targets = random_ids(2, 4, 7, 6);
    EXPECT_GRADCHECK_OK(module_gradcheck(
        m, {"wte.weight", "wpe.weight", "blocks.0.attn.wqkv.weight", "blocks.0.cms.0.mlp.fc.bias", "ln_f.weight"}, {},
        [&](const auto&) { return m.loss(ids, targets).ce; }));
  }
  {
    TransformerConfig cfg = tiny_cms(1);
    cfg.vocab_size = 7;
    cfg.block_size = 6;
    cfg.init_std = 0.5;
    Generator gen(7);
    Transformer m(cfg, gen, DType::f64);
    Generator sg(8);
    m.level(0, 1).activate_slot(sg);
    randomize(m.level(0, 1).slot(0).B, 9);
    const Tensor ids = random_ids(2, 4, 7, 10), targets = random_ids(2, 4, 7, 11);
    EXPECT_GRADCHECK_OK(
        module_gradcheck(m,
                         {"wte.weight", "lm_head.weight", "blocks.0.attn.wqkv.weight", "blocks.0.cms.0.mlp.up.weight",
                          "blocks.0.cms.1.moe.router.weight", "blocks.0.cms.1.slots.0.A", "blocks.0.cms.1.slots.0.B"},
                         {}, [&](const auto&) { return m.loss(ids, targets).total(0.1); }));
  }
}

// ---------------------------------------------------------------- slots on the whole model

TEST(Transformer, ActivatingSlotsIsANoOpAtInit) {
  Generator gen(5);
  Transformer m(tiny_cms(), gen);
  const Tensor ids = random_ids(2, 7, 13, 6);
  const Tensor before = m.forward(ids);
  Generator sg(7);
  for (int64_t layer = 0; layer < 2; ++layer) {
    for (int64_t lv = 0; lv < 2; ++lv) {
      m.level(layer, lv).activate_slot(sg);
      m.level(layer, lv).activate_slot(sg);
    }
  }
  EXPECT_TRUE(bitwise_equal(m.forward(ids), before));  // bitwise: logits (B, T, V)
  // And a trained slot is not a no-op.
  randomize(m.level(1, 0).slot(1).B, 8);
  EXPECT_GT(rel_error(m.forward(ids), before), 1e-6);
}

// ---------------------------------------------------------------- training and determinism

namespace {

// Plain SGD on every trainable parameter, as raw ops (no optimiser dependency).
void sgd_step(Module& m, double lr) {
  NoGradGuard no_grad;
  for (Tensor& p : m.parameters(true)) {
    if (!p.grad().defined()) continue;
    p.copy_(kernels::binary(kernels::Binary::sub, p.detach(),
                            kernels::binary(kernels::Binary::mul, p.grad(), Tensor::scalar(lr, p.dtype()))));
  }
  m.zero_grad();
}

std::vector<double> train_losses(const TransformerConfig& cfg, int steps, double lr) {
  Generator gen(9);
  Transformer m(cfg, gen);
  // One random sequence, repeated in every row: x = s[0..T), y = s[1..T].
  const int64_t B = 4, T = 12;
  const std::vector<double> seq = random_ids(1, T + 1, cfg.vocab_size, 10).to_vector();
  std::vector<double> x, y;
  for (int64_t b = 0; b < B; ++b) {
    x.insert(x.end(), seq.begin(), seq.end() - 1);
    y.insert(y.end(), seq.begin() + 1, seq.end());
  }
  const Tensor ids = Tensor::from_vector(x, {B, T}, DType::i64), targets = Tensor::from_vector(y, {B, T}, DType::i64);
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    const LMLoss l = m.loss(ids, targets);
    losses.push_back(l.ce.item());
    backward(l.total(0.01));
    sgd_step(m, lr);
  }
  return losses;
}

}  // namespace

TEST(Transformer, TinyLMTrainsOnARepeatedSequence) {
  for (const TransformerConfig& base : {tiny_gpt2(), tiny_cms()}) {
    TransformerConfig cfg = base;
    cfg.n_embd = 32;
    cfg.vocab_size = 16;
    cfg.levels[0].hidden = 64;
    const std::vector<double> losses = train_losses(cfg, 30, 0.2);
    SCOPED_TRACE(json(cfg).dump());
    EXPECT_NEAR(losses.front(), std::log(16.0), 0.3);
    EXPECT_LT(losses.back(), 0.3 * losses.front()) << "first " << losses.front() << " last " << losses.back();
    for (double l : losses) EXPECT_TRUE(std::isfinite(l));
  }
}

TEST(Transformer, SameSeedSameBits) {
  for (const TransformerConfig& cfg : {tiny_gpt2(), tiny_cms()}) {
    const Tensor ids = random_ids(2, 9, 13, 11), targets = random_ids(2, 9, 13, 12);
    Generator g1(42), g2(42), g3(43);
    Transformer a(cfg, g1), b(cfg, g2), c(cfg, g3);
    EXPECT_TRUE(bitwise_equal(a.forward(ids), b.forward(ids)));
    EXPECT_TRUE(bitwise_equal(a.loss(ids, targets).total(0.01), b.loss(ids, targets).total(0.01)));
    EXPECT_FALSE(bitwise_equal(a.forward(ids), c.forward(ids)));
    EXPECT_EQ(train_losses(cfg, 3, 0.5), train_losses(cfg, 3, 0.5));  // bitwise-identical losses
  }
}

TEST(Transformer, StateDictRoundTrip) {
  Generator g1(1), g2(2);
  Transformer a(tiny_cms(), g1), b(tiny_cms(), g2);
  Generator sg(3);
  a.level(1, 1).activate_slot(sg);
  randomize(a.level(1, 1).slot(0).B, 4);
  randomize(a.level(1, 1).slot(0).router, 5);
  const Tensor ids = random_ids(2, 5, 13, 6);
  EXPECT_FALSE(bitwise_equal(a.forward(ids), b.forward(ids)));
  b.load_state_dict(a.state_dict());
  EXPECT_EQ(b.level(1, 1).active_slots(), (std::vector<int64_t>{0}));
  EXPECT_TRUE(bitwise_equal(a.forward(ids), b.forward(ids)));
  // A gpt2 checkpoint does not load into a llama model: the first difference is named.
  Generator g3(1);
  Transformer llama(tiny_llama(), g3);
  Generator g4(1);
  Transformer gpt(tiny_gpt2(), g4);
  expect_error([&] { llama.load_state_dict(gpt.state_dict()); }, {"load_state_dict", "'"});
}

// ---------------------------------------------------------------- generation hooks

TEST(Transformer, KVCacheDecodeEqualsFullForward) {
  for (const TransformerConfig& cfg : {tiny_gpt2(), tiny_llama(), tiny_cms()}) {
    SCOPED_TRACE(json(cfg).dump());
    Generator gen(12);
    Transformer m(cfg, gen, DType::f64);
    const int64_t B = 2, T = 7, prefill = 3;
    const Tensor ids = random_ids(B, T, 13, 13);
    NoGradGuard no_grad;
    const Tensor full = m.forward(ids);  // (B, T, V)
    ConcatCache cache;
    ForwardContext ctx;
    ctx.cache = &cache;
    std::vector<Tensor> pieces{m.forward(ids.slice(1, 0, prefill), ctx)};
    for (int64_t t = prefill; t < T; ++t) {
      ctx.pos_offset = t;
      pieces.push_back(m.forward(ids.slice(1, t, t + 1), ctx));  // one token, attending to the cache
    }
    EXPECT_LT(rel_error(concat(pieces, 1), full), 1e-12);
  }
}

TEST(Transformer, LeftPaddedBatchEqualsUnpadded) {
  Generator gen(14);
  Transformer m(tiny_llama(), gen, DType::f64);
  const Tensor seq = random_ids(1, 3, 13, 15);  // the short prompt
  const Tensor other = random_ids(1, 5, 13, 16);
  // Row 1 is the short prompt, left-padded by 2 (pad id 0): positions restart at 0 after the
  // pads, and the pads are masked out as keys with a large finite negative.
  std::vector<double> ids_v = other.to_vector();
  const std::vector<double> s = seq.to_vector();
  ids_v.insert(ids_v.end(), {0, 0, s[0], s[1], s[2]});
  ForwardContext ctx;
  ctx.positions = Tensor::from_vector({0, 1, 2, 3, 4, 0, 0, 0, 1, 2}, {2, 5}, DType::i64);
  ctx.attn_bias = Tensor::from_vector({0, 0, 0, 0, 0, -1e9, -1e9, 0, 0, 0}, {2, 1, 1, 5}, DType::f64);
  NoGradGuard no_grad;
  const Tensor padded = m.forward(Tensor::from_vector(ids_v, {2, 5}, DType::i64), ctx);  // (2, 5, V)
  EXPECT_LT(rel_error(padded.select(0, 1).slice(0, 2, 5), m.forward(seq).select(0, 0)), 1e-12);
  EXPECT_LT(rel_error(padded.select(0, 0), m.forward(other).select(0, 0)), 1e-12);
}

TEST(Transformer, RandomExtraExpertHook) {
  Generator gen(17);
  Transformer m(tiny_cms(), gen);
  const Tensor ids = random_ids(2, 6, 13, 18);
  const Tensor plain = m.forward(ids);
  Generator d1(19), d2(19);
  m.set_random_extra_expert(true, &d1);
  const Tensor dream = m.forward(ids);
  EXPECT_EQ(m.level(0, 1).moe->last_routing().per_token, 3);
  m.set_random_extra_expert(true, &d2);
  EXPECT_TRUE(bitwise_equal(m.forward(ids), dream));
  EXPECT_FALSE(bitwise_equal(dream, plain));
  m.set_random_extra_expert(false);
  EXPECT_TRUE(bitwise_equal(m.forward(ids), plain));
}

// ---------------------------------------------------------------- periods and value head

TEST(Transformer, ParametersByPeriod) {
  TransformerConfig cfg = tiny_cms();
  cfg.attention_period = 2;
  cfg.embedding_period = 8;
  Generator gen(20);
  Transformer m(cfg, gen);
  const auto groups = m.parameters_by_period();
  ASSERT_EQ(groups.size(), 4u);
  std::vector<int64_t> periods;
  std::map<std::string, int64_t> period_of;
  int64_t count = 0;
  for (const auto& [p, params] : groups) {
    periods.push_back(p);
    for (const auto& [n, t] : params) {
      EXPECT_TRUE(period_of.emplace(n, p).second) << n << " in two groups";
      EXPECT_TRUE(t.same(m.parameter(n))) << n;
      count += t.numel();
    }
  }
  EXPECT_EQ(periods, (std::vector<int64_t>{1, 2, 4, 8}));
  EXPECT_EQ(count, m.num_parameters());
  EXPECT_EQ(period_of.at("wte.weight"), 8);
  EXPECT_EQ(period_of.at("lm_head.weight"), 8);
  EXPECT_EQ(period_of.at("ln_f.weight"), 8);
  EXPECT_EQ(period_of.at("blocks.1.attn.wqkv.weight"), 2);
  EXPECT_EQ(period_of.at("blocks.1.attn_norm.weight"), 2);
  EXPECT_EQ(period_of.at("blocks.0.cms.0.mlp.gate.weight"), 1);
  EXPECT_EQ(period_of.at("blocks.0.cms.0.slots.1.B"), 1);
  EXPECT_EQ(period_of.at("blocks.1.cms.1.moe.router.weight"), 4);
  EXPECT_EQ(period_of.at("blocks.1.cms.1.slots.0.router"), 4);
  // trainable_only drops frozen parameters.
  m.freeze();
  EXPECT_TRUE(m.parameters_by_period(true).empty());
}

TEST(ValueHead, ShapeAndGradcheck) {
  Generator gen(21);
  ValueHead head(4, gen, 0.5, DType::f64);
  const Tensor hidden = randn64({2, 3, 4}, 22);
  EXPECT_EQ(head.forward(hidden).shape(), (Shape{2, 3}));
  EXPECT_GRADCHECK_OK(module_gradcheck(head, {"proj.weight", "proj.bias"}, {hidden},
                                       [&](const auto& in) { return head.forward(in[0]); }));
}

// ---------------------------------------------------------------- dtypes and devices

TEST(Transformer, Bf16CloseToF32) {
  Generator g1(31), g2(31);
  Transformer f32(tiny_cms(), g1), bf16(tiny_cms(), g2);
  bf16.to(DType::bf16);
  for (auto& [n, p] : bf16.named_parameters()) EXPECT_EQ(p.dtype(), DType::bf16) << n;
  const Tensor ids = random_ids(2, 7, 13, 32);
  const Tensor a = f32.forward(ids), b = bf16.forward(ids);
  EXPECT_EQ(b.dtype(), DType::bf16);
  EXPECT_LT(rel_error(b, a), 3e-2);  // DESIGN §5: bf16 about 1e-2
  const LMLoss l = bf16.loss(ids, ids);
  backward(l.total(0.01));
  EXPECT_EQ(bf16.wte->weight.grad().dtype(), DType::bf16);
  EXPECT_NEAR(l.ce.item(), f32.loss(ids, ids).ce.item(), 5e-2);
}

// The same model on CUDA and on the CPU: logits, loss and every parameter gradient.
TEST(TransformerCuda, MatchesCpu) {
  if (!cuda_available()) {
    GTEST_SKIP()
        << "no CUDA device (or the CUDA backend is not compiled in): the CPU/CUDA model comparison needs a GPU";
  }
  for (const TransformerConfig& cfg : {tiny_gpt2(), tiny_cms()}) {
    SCOPED_TRACE(json(cfg).dump());
    Generator g1(33), g2(33);
    Transformer cpu(cfg, g1), gpu(cfg, g2);
    if (cfg.has_moe()) {
      Generator s1(34), s2(34);
      cpu.level(0, 1).activate_slot(s1);
      gpu.level(0, 1).activate_slot(s2);
      randomize(cpu.level(0, 1).slot(0).B, 35);
      randomize(gpu.level(0, 1).slot(0).B, 35);
    }
    gpu.to(Device::cuda());
    EXPECT_TRUE(gpu.wte->weight.device().is_cuda());
    const Tensor ids = random_ids(2, 9, 13, 36), targets = random_ids(2, 9, 13, 37);
    const Tensor cuda_ids = ids.to(Device::cuda()), cuda_targets = targets.to(Device::cuda());
    EXPECT_LT(rel_error(gpu.forward(cuda_ids), cpu.forward(ids)), 1e-5);
    const LMLoss lc = cpu.loss(ids, targets), lg = gpu.loss(cuda_ids, cuda_targets);
    EXPECT_NEAR(lg.ce.item(), lc.ce.item(), 1e-5 * std::abs(lc.ce.item()));
    backward(lc.total(0.01));
    backward(lg.total(0.01));
    const NamedTensors pc = cpu.named_parameters(), pg = gpu.named_parameters();
    ASSERT_EQ(pc.size(), pg.size());
    for (size_t i = 0; i < pc.size(); ++i) {
      ASSERT_EQ(pc[i].second.grad().defined(), pg[i].second.grad().defined()) << pc[i].first;
      if (!pc[i].second.grad().defined()) continue;
      const std::vector<double> gc = pc[i].second.grad().to_vector();
      double norm = 0;
      for (double v : gc) norm += v * v;
      if (norm == 0) continue;  // e.g. A of a slot with B = 0 at init
      EXPECT_LT(rel_error(pg[i].second.grad().to_vector(), gc), 1e-4) << pc[i].first;
    }
  }
}
