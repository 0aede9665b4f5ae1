// The CMS side of a layer (PARADIGM §1–§3): MoE routing against a per-token reference, the
// load-balancing loss against its formula, MoE gradchecks (router gradients through the
// top-k gates), the dreaming hook, low-rank slots (pool, init, no-op activation, masked
// slots outside the graph, reset, checkpointed masks, consolidation-style freezing), CMS
// level gradchecks with active slots, and the chain's period validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <utility>
#include <vector>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "nn/mlp.h"
#include "nn_testing.h"
#include "tensor/random.h"

using namespace somnus;
using namespace somnus::nn;
using namespace somnus::nn::testing;

namespace {

MoEConfig moe_config(int64_t C, int64_t E, int64_t k, MlpKind kind = MlpKind::gelu) {
  MoEConfig cfg;
  cfg.expert = MlpConfig{C, 5, kind, true, 0.5, 0.5};
  cfg.n_experts = E;
  cfg.top_k = k;
  return cfg;
}

CmsLevelConfig level_config(LevelKind kind, int64_t C, int64_t n_slots, int64_t rank = 2) {
  CmsLevelConfig cfg;
  cfg.level.kind = kind;
  cfg.level.period = 2;
  cfg.level.hidden = 7;
  cfg.level.n_experts = kind == LevelKind::moe ? 3 : 0;
  cfg.level.top_k = kind == LevelKind::moe ? 2 : 1;
  cfg.level.n_slots = n_slots;
  cfg.level.slot_rank = rank;
  cfg.n_embd = C;
  cfg.mlp = MlpKind::gelu;
  cfg.norm = NormKind::layernorm;
  cfg.init_std = 0.5;
  cfg.out_init_std = 0.5;
  return cfg;
}

}  // namespace

// ---------------------------------------------------------------- MoE

TEST(MoE, MatchesPerTokenReference) {
  for (int64_t k : {1, 2, 3}) {
    Generator gen(11);
    MoE moe(moe_config(4, 3, k), gen, DType::f64);
    const Tensor x = randn64({2, 5, 4}, 12, false);
    const Tensor y = moe.forward(x).out;
    ASSERT_EQ(y.shape(), x.shape());

    // Reference: per token, softmax of the router logits, top-k (ties to the lower index),
    // gates renormalised over the top-k (k = 1: the probability itself, Switch-style), the
    // gated sum of the experts' outputs.
    const int64_t N = 10, C = 4, E = 3;
    const Tensor h = x.view({N, C});
    const std::vector<double> xv = h.to_vector(), wr = moe.router->weight.to_vector();
    std::vector<std::vector<double>> expert_out;
    for (int64_t e = 0; e < E; ++e) expert_out.push_back((*moe.experts)[e].forward(h).to_vector());
    std::vector<double> ref(static_cast<size_t>(N * C), 0.0);
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> p(E);
      for (int64_t e = 0; e < E; ++e) {
        p[e] = 0;
        for (int64_t c = 0; c < C; ++c) p[e] += xv[n * C + c] * wr[e * C + c];
      }
      const double mx = *std::max_element(p.begin(), p.end());
      double z = 0;
      for (double& v : p) z += (v = std::exp(v - mx));
      for (double& v : p) v /= z;
      std::vector<int64_t> order(E);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
      double norm = 0;
      for (int64_t j = 0; j < k; ++j) norm += p[order[j]];
      if (k == 1) norm = 1.0;
      for (int64_t j = 0; j < k; ++j) {
        for (int64_t c = 0; c < C; ++c) ref[n * C + c] += p[order[j]] / norm * expert_out[order[j]][n * C + c];
        EXPECT_EQ(moe.last_routing().chosen[n * k + j], order[j]);
      }
    }
    EXPECT_LT(rel_error(y.to_vector(), ref), 1e-13) << "k = " << k;
    const auto& counts = moe.last_routing().expert_counts;
    EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), int64_t{0}), N * k);
  }
}

TEST(MoE, LoadBalancingLossMatchesFormula) {
  Generator gen(21);
  MoE moe(moe_config(4, 4, 2), gen, DType::f64);
  const Tensor x = randn64({3, 4, 4}, 22, false);
  const MoE::Output o = moe.forward(x, /*want_aux=*/true);
  ASSERT_TRUE(o.aux_loss.defined());
  EXPECT_EQ(o.aux_loss.dim(), 0);
  const int64_t N = 12, E = 4, K = 2;
  const std::vector<double> probs = softmax(o.router_logits, -1).to_vector();
  std::vector<double> f(E, 0.0), P(E, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < K; ++j) f[moe.last_routing().chosen[n * K + j]] += 1.0 / (N * K);
    for (int64_t e = 0; e < E; ++e) P[e] += probs[n * E + e] / N;
  }
  double ref = 0;
  for (int64_t e = 0; e < E; ++e) ref += E * f[e] * P[e];
  EXPECT_NEAR(o.aux_loss.item(), ref, 1e-14);
  // Perfectly uniform routing gives exactly 1: a zero router makes every probability 1/E.
  moe.router->weight.fill_(0.0);
  const MoE::Output u = moe.forward(x, true);
  EXPECT_NEAR(u.aux_loss.item(), 1.0, 1e-14);
  EXPECT_FALSE(moe.forward(x, false).aux_loss.defined());
}

TEST(MoE, GradcheckThroughTopKGates) {
  for (const auto& [kind, k] : {std::pair{MlpKind::gelu, int64_t{2}}, std::pair{MlpKind::swiglu, int64_t{2}},
                                std::pair{MlpKind::gelu, int64_t{1}}}) {
    Generator gen(31);
    MoE moe(moe_config(4, 3, k, kind), gen, DType::f64);
    const Tensor x = randn64({2, 3, 4}, 32);
    const std::vector<std::string> params =
        kind == MlpKind::gelu
            ? std::vector<std::string>{"router.weight", "experts.0.fc.weight", "experts.2.proj.bias"}
            : std::vector<std::string>{"router.weight", "experts.1.gate.weight", "experts.2.down.weight"};
    // The output and the auxiliary loss, both differentiated (the router learns through the
    // renormalised top-k gates and through P of the aux loss).
    EXPECT_GRADCHECK_OK(module_gradcheck(moe, params, {x}, [&](const auto& in) {
      const MoE::Output o = moe.forward(in[0], true);
      return sum(o.out * o.out) + o.aux_loss;
    }));
    EXPECT_GRADCHECK_OK(
        module_gradcheck(moe, {"router.weight"}, {x}, [&](const auto& in) { return moe.forward(in[0]).out; }));
  }
}

// The task loss alone trains the router, with one expert per token too (top_k = 1, the default):
// its gate is the probability, not the probability over itself (exactly 1, no gradient).
TEST(MoE, RouterLearnsFromTheOutputWithTopOne) {
  for (int64_t k : {1, 2}) {
    Generator gen(41);
    MoE moe(moe_config(4, 3, k), gen, DType::f64);
    const Tensor x = randn64({2, 5, 4}, 42, false);
    const MoE::Output o = moe.forward(x);  // no auxiliary loss
    backward(sum(o.out * o.out));
    ASSERT_TRUE(moe.router->weight.grad().defined());
    const std::vector<double> g = moe.router->weight.grad().to_vector();
    double mx = 0.0;
    for (double v : g) mx = std::max(mx, std::abs(v));
    EXPECT_GT(mx, 1e-6) << "k = " << k;
  }
}

TEST(MoE, RandomExtraExpertForDreaming) {
  Generator init(41);
  MoE moe(moe_config(4, 5, 2), init, DType::f64);
  const Tensor x = randn64({2, 6, 4}, 42, false);
  const Tensor plain = moe.forward(x).out;
  const std::vector<int64_t> plain_chosen = moe.last_routing().chosen;

  Generator dream(7);
  moe.set_random_extra_expert(true, &dream);
  const Tensor y1 = moe.forward(x).out;
  const MoERouting r = moe.last_routing();
  ASSERT_EQ(r.per_token, 3);
  std::set<int64_t> extras;
  for (int64_t n = 0; n < r.tokens; ++n) {
    EXPECT_EQ(r.chosen[n * 3], plain_chosen[n * 2]);  // the top-k is unchanged
    EXPECT_EQ(r.chosen[n * 3 + 1], plain_chosen[n * 2 + 1]);
    const int64_t extra = r.chosen[n * 3 + 2];
    EXPECT_NE(extra, r.chosen[n * 3]);
    EXPECT_NE(extra, r.chosen[n * 3 + 1]);
    EXPECT_GE(extra, 0);
    EXPECT_LT(extra, 5);
    extras.insert(extra);
  }
  EXPECT_GE(extras.size(), 2u);  // 12 uniform draws over 3 candidates
  EXPECT_EQ(std::accumulate(r.expert_counts.begin(), r.expert_counts.end(), int64_t{0}), 12 * 3);
  EXPECT_GT(rel_error(y1, plain), 1e-3);

  // The same generator state replays the same draws, bit for bit.
  Generator again(7);
  moe.set_random_extra_expert(true, &again);
  EXPECT_TRUE(bitwise_equal(moe.forward(x).out, y1));
  moe.set_random_extra_expert(false);
  EXPECT_TRUE(bitwise_equal(moe.forward(x).out, plain));
  expect_error([&] { moe.set_random_extra_expert(true, nullptr); }, {"Generator"});

  // k = E: there is nothing left to add.
  Generator init2(43), dream2(8);
  MoE full(moe_config(4, 2, 2), init2, DType::f64);
  full.set_random_extra_expert(true, &dream2);
  full.forward(x);
  EXPECT_EQ(full.last_routing().per_token, 2);
}

TEST(MoE, ConfigErrors) {
  Generator gen(1);
  expect_error([&] { MoE(moe_config(4, 0, 1), gen); }, {"n_experts"});
  expect_error([&] { MoE(moe_config(4, 3, 4), gen); }, {"top_k", "n_experts = 3"});
}

// ---------------------------------------------------------------- slots

TEST(Slots, PoolActivateResetExhaust) {
  Generator gen(51);
  CmsLevel level(level_config(LevelKind::dense, 6, 3), gen, DType::f64);
  EXPECT_EQ(level.n_slots(), 3);
  EXPECT_EQ(level.period(), 2);
  EXPECT_TRUE(level.active_slots().empty());
  Generator sg(52);
  EXPECT_EQ(level.activate_slot(sg), 0);
  EXPECT_EQ(level.activate_slot(sg), 1);
  EXPECT_EQ(level.activate_slot(sg), 2);
  EXPECT_EQ(level.active_slots(), (std::vector<int64_t>{0, 1, 2}));
  expect_error([&] { level.activate_slot(sg); }, {"no free slot", "3 slots"});

  randomize(level.slot(1).B, 53);
  level.reset_slot(1);
  EXPECT_EQ(level.active_slots(), (std::vector<int64_t>{0, 2}));
  EXPECT_FALSE(level.slot_active(1));
  EXPECT_EQ(level.slot(1).B.to_vector(), std::vector<double>(12, 0.0));  // B zeroed
  EXPECT_EQ(level.activate_slot(sg), 1);                                 // back in the pool
  expect_error([&] { level.activate_slot(sg); }, {"no free slot"});
  level.reset_slot(0);
  expect_error([&] { level.reset_slot(0); }, {"slot 0", "not active"});
  expect_error([&] { level.reset_slot(3); }, {"slot 3", "out of range"});

  // Slot tensors are parameters from the start ("slots.s.A/B"), and the mask is a buffer.
  EXPECT_TRUE(level.has_parameter("slots.2.A"));
  EXPECT_TRUE(level.has_parameter("slots.2.B"));
  EXPECT_FALSE(level.has_parameter("slots.2.router"));  // dense level: no router row
  bool has_mask = false;
  for (auto& [n, t] : level.state_dict()) has_mask = has_mask || n == "slot_active";
  EXPECT_TRUE(has_mask);

  Generator gen2(54);
  expect_error([&] { CmsLevel(level_config(LevelKind::dense, 6, 0), gen2).activate_slot(sg); },
               {"no free slot", "0 slots"});
}

TEST(Slots, ActivationInit) {
  const int64_t C = 64, r = 16;
  Generator gen(61);
  CmsLevel level(level_config(LevelKind::moe, C, 2, r), gen);
  Generator sg(62);
  const int64_t s = level.activate_slot(sg);
  const std::vector<double> a = level.slot(s).A.to_vector();
  double mean = 0, var = 0;
  for (double v : a) mean += v / a.size();
  for (double v : a) var += (v - mean) * (v - mean) / a.size();
  EXPECT_NEAR(mean, 0.0, 0.02);
  EXPECT_NEAR(var, 1.0 / C, 0.15 / C);  // A ~ N(0, 1/d)
  EXPECT_EQ(level.slot(s).B.to_vector(), std::vector<double>(r * C, 0.0));
  EXPECT_EQ(level.slot(s).router.to_vector(), std::vector<double>(C, 0.0));
  EXPECT_EQ(level.slot_parameters(s).size(), 3u);  // A, B, router row
}

TEST(Slots, ActivatedSlotIsANoOpAtInit) {
  for (LevelKind kind : {LevelKind::dense, LevelKind::moe}) {
    Generator gen(71);
    CmsLevel level(level_config(kind, 6, 2), gen);  // f32, as trained
    const Tensor x = randn64({2, 4, 6}, 72, false).to(DType::f32);
    const Tensor before = level.forward(x);
    Generator sg(73);
    level.activate_slot(sg);
    level.activate_slot(sg);
    EXPECT_TRUE(bitwise_equal(level.forward(x), before)) << level_kind_name(kind);
    // Once B moves, the slot changes the output; a reset takes it out again, bit for bit.
    randomize(level.slot(0).B, 74);
    EXPECT_GT(rel_error(level.forward(x), before), 1e-4);
    level.reset_slot(0);
    EXPECT_TRUE(bitwise_equal(level.forward(x), before));
  }
}

TEST(Slots, MaskedSlotsGetNoGradient) {
  for (LevelKind kind : {LevelKind::dense, LevelKind::moe}) {
    Generator gen(81);
    CmsLevel level(level_config(kind, 6, 3), gen);
    Generator sg(82);
    level.activate_slot(sg);  // 0
    level.activate_slot(sg);  // 1
    level.reset_slot(0);      // active: {1}
    const Tensor x = randn64({2, 3, 6}, 83, false).to(DType::f32);
    Tensor aux;
    Tensor y = level.forward(x, &aux);
    backward(sum(y * randn64({2, 3, 6}, 84, false).to(DType::f32)) + (aux.defined() ? aux : Tensor::scalar(0.0)));
    for (int64_t s : {0, 2}) {
      EXPECT_FALSE(level.slot(s).A.grad().defined()) << "masked slot " << s;
      EXPECT_FALSE(level.slot(s).B.grad().defined()) << "masked slot " << s;
      if (kind == LevelKind::moe) {
        EXPECT_FALSE(level.slot(s).router.grad().defined());
      }
    }
    const LowRankSlot& active = level.slot(1);
    ASSERT_TRUE(active.A.grad().defined());
    ASSERT_TRUE(active.B.grad().defined());
    const std::vector<double> gb = active.B.grad().to_vector(), ga = active.A.grad().to_vector();
    EXPECT_GT(*std::max_element(gb.begin(), gb.end(), [](double a, double b) { return std::abs(a) < std::abs(b); }),
              0.0);  // B learns first (B = 0 gives A a zero gradient)
    EXPECT_EQ(ga, std::vector<double>(ga.size(), 0.0));
    if (kind == LevelKind::moe) {
      EXPECT_TRUE(active.router.grad().defined());
    }
    EXPECT_EQ(aux.defined(), kind == LevelKind::moe);
  }
}

TEST(Slots, ConsolidationTrainsOnlyTheSlot) {
  Generator gen(91);
  CmsLevel level(level_config(LevelKind::moe, 6, 2), gen);
  Generator sg(92);
  const int64_t s = level.activate_slot(sg);
  level.freeze();
  for (Tensor p : level.slot_parameters(s)) p.set_requires_grad(true);
  EXPECT_EQ(level.num_parameters(true), 6 * 2 + 2 * 6 + 6);
  const Tensor x = randn64({2, 3, 6}, 93, false).to(DType::f32);
  backward(sum(square(level.forward(x))));
  for (auto& [name, p] : level.named_parameters()) {
    const bool slot = name.rfind("slots.0.", 0) == 0;
    EXPECT_EQ(p.grad().defined(), slot) << name;
  }
}

TEST(Slots, MasksSurviveStateDict) {
  Generator g1(101), g2(102);
  CmsLevel a(level_config(LevelKind::moe, 6, 3), g1), b(level_config(LevelKind::moe, 6, 3), g2);
  Generator sg(103);
  a.activate_slot(sg);
  a.activate_slot(sg);
  a.reset_slot(0);
  randomize(a.slot(1).B, 104);
  randomize(a.slot(1).router, 105);
  b.activate_slot(sg);  // b has slot 0 active; the load must replace that
  b.load_state_dict(a.state_dict());
  EXPECT_EQ(b.active_slots(), (std::vector<int64_t>{1}));
  const Tensor x = randn64({2, 3, 6}, 106, false).to(DType::f32);
  EXPECT_TRUE(bitwise_equal(a.forward(x), b.forward(x)));
  NamedTensors bad = a.state_dict();
  for (auto& [n, t] : bad) {
    if (n == "slot_active") t = Tensor::from_vector({0, 2, 0}, {3}, DType::i64);
  }
  expect_error([&] { b.load_state_dict(bad); }, {"slot_active[1]"});
}

// ---------------------------------------------------------------- CMS level gradchecks

TEST(Gradcheck, CmsLevelWithActiveSlot) {
  {
    Generator gen(111);
    CmsLevel level(level_config(LevelKind::dense, 4, 2), gen, DType::f64);
    Generator sg(112);
    level.activate_slot(sg);
    randomize(level.slot(0).B, 113);
    randomize(level.norm->parameter("weight"), 114);
    const Tensor x = randn64({2, 3, 4}, 115);
    EXPECT_GRADCHECK_OK(module_gradcheck(level, {"slots.0.A", "slots.0.B", "norm.weight", "mlp.fc.weight"}, {x},
                                         [&](const auto& in) { return level.forward(in[0]); }));
  }
  {
    Generator gen(121);
    CmsLevel level(level_config(LevelKind::moe, 4, 2), gen, DType::f64);
    Generator sg(122);
    level.activate_slot(sg);
    level.activate_slot(sg);
    for (int64_t s : {0, 1}) {
      randomize(level.slot(s).B, 123 + s);
      randomize(level.slot(s).router, 125 + s);
    }
    const Tensor x = randn64({2, 3, 4}, 127);
    EXPECT_GRADCHECK_OK(module_gradcheck(
        level,
        {"slots.0.A", "slots.0.B", "slots.0.router", "slots.1.router", "moe.router.weight", "moe.experts.1.fc.weight"},
        {x}, [&](const auto& in) {
          Tensor aux;
          Tensor y = level.forward(in[0], &aux);
          return sum(y * y) + aux;
        }));
  }
}

// ---------------------------------------------------------------- chain

TEST(CmsChain, PeriodsMustDivide) {
  auto levels = [](std::vector<int64_t> periods) {
    std::vector<LevelConfig> out;
    for (int64_t p : periods) {
      LevelConfig l;
      l.period = p;
      l.hidden = 5;
      out.push_back(l);
    }
    return out;
  };
  validate_level_periods(levels({1, 1, 4, 16}));
  expect_error([&] { validate_level_periods(levels({2, 3})); }, {"levels[1].period = 3", "levels[0].period = 2"});
  expect_error([&] { validate_level_periods(levels({4, 2})); }, {"levels[1].period = 2", "multiple"});
  expect_error([&] { validate_level_periods(levels({1, 0})); }, {"levels[1].period", ">= 1"});
  expect_error([&] { validate_level_periods({}); }, {"at least one level"});

  Generator gen(131);
  CmsLevelConfig common = level_config(LevelKind::dense, 4, 1);
  expect_error([&] { CmsChain(levels({2, 5}), common, gen); }, {"levels[1].period = 5"});
  std::vector<LevelConfig> lv = levels({1, 4});
  lv[1].kind = LevelKind::moe;
  lv[1].n_experts = 2;
  lv[1].top_k = 1;
  lv[0].n_slots = 1;
  CmsChain chain(lv, common, gen, DType::f64);
  ASSERT_EQ(chain.size(), 2u);
  EXPECT_EQ(chain.level(0).period(), 1);
  EXPECT_EQ(chain.level(1).period(), 4);
  EXPECT_TRUE(chain.level(1).moe != nullptr);
  EXPECT_TRUE(chain.has_parameter("1.moe.experts.1.fc.weight"));
  EXPECT_TRUE(chain.has_parameter("0.slots.0.A"));
  const Tensor x = randn64({2, 3, 4}, 132, false);
  Tensor aux;
  const Tensor y = chain.forward(x, &aux);
  EXPECT_TRUE(aux.defined());
  EXPECT_TRUE(bitwise_equal(y, chain.level(1).forward(chain.level(0).forward(x))));
}
