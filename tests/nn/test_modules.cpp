// nn/ basics: the Module tree (names, state_dict, strict loading, conversion, freezing),
// f64 gradchecks of Linear (+LoRA), Embedding, LayerNorm, RMSNorm, RoPE, attention and the
// MLPs, attention against an explicit f64 loop reference, RoPE's rotation properties, and
// LoRA merge/unmerge.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <numbers>
#include <vector>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "nn/attention.h"
#include "nn/layers.h"
#include "nn/mlp.h"
#include "nn/module.h"
#include "nn_testing.h"
#include "tensor/random.h"

using namespace somnus;
using namespace somnus::nn;
using namespace somnus::nn::testing;

namespace {

// A small tree: own parameter and buffers, two submodules and a ModuleList.
class TinyNet : public Module {
 public:
  explicit TinyNet(uint64_t seed, DType dtype = DType::f32) {
    Generator gen(seed);
    fc = register_module("fc", std::make_shared<Linear>(4, 3, true, gen, 0.5, dtype));
    norm = register_module("norm", std::make_shared<LayerNorm>(3, 1e-5, true, dtype));
    layers = register_module("layers", std::make_shared<ModuleList<Linear>>());
    layers->push_back(std::make_shared<Linear>(3, 3, false, gen, 0.5, dtype));
    layers->push_back(std::make_shared<Linear>(3, 3, false, gen, 0.5, dtype));
    scale = randn({3}, gen, dtype);
    register_parameter("scale", scale);
    counter = Tensor::full({2}, 7.0, DType::i64);
    register_buffer("counter", counter);
    scratch = Tensor::zeros({5}, dtype);
    register_buffer("scratch", scratch, /*persistent=*/false);
  }
  Tensor forward(const Tensor& x) const {
    Tensor h = norm->forward(fc->forward(x));
    for (const auto& l : *layers) h = l->forward(h);
    return h * scale;
  }
  std::shared_ptr<Linear> fc;
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<ModuleList<Linear>> layers;
  Tensor scale, counter, scratch;
};

std::vector<std::string> names_of(const NamedTensors& ts) {
  std::vector<std::string> out;
  for (const auto& [n, t] : ts) out.push_back(n);
  return out;
}

// Attention by explicit loops in f64. bias, when given, is the full (B, Hq, T, S) values.
std::vector<double> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                                    int64_t off, const std::vector<double>& bias = {}) {
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  const int64_t g = Hq / Hkv;
  const std::vector<double> Q = q.contiguous().to_vector(), K = k.contiguous().to_vector(),
                            V = v.contiguous().to_vector();
  std::vector<double> out(static_cast<size_t>(B * Hq * T * D), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kh = h / g;
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s(static_cast<size_t>(S), -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < S; ++j) {
          if (causal && j > off + i) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d)
            dot += Q[((b * Hq + h) * T + i) * D + d] * K[((b * Hkv + kh) * S + j) * D + d];
          s[j] = dot * scale + (bias.empty() ? 0.0 : bias[((b * Hq + h) * T + i) * S + j]);
          mx = std::max(mx, s[j]);
        }
        double z = 0.0;
        for (int64_t j = 0; j < S; ++j) z += std::exp(s[j] - mx);
        for (int64_t j = 0; j < S; ++j) {
          const double p = std::exp(s[j] - mx) / z;
          for (int64_t d = 0; d < D; ++d)
            out[((b * Hq + h) * T + i) * D + d] += p * V[((b * Hkv + kh) * S + j) * D + d];
        }
      }
    }
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------- the Module tree

TEST(Module, NamesOrderAndCounts) {
  TinyNet net(1);
  EXPECT_EQ(names_of(net.named_parameters()),
            (std::vector<std::string>{"scale", "fc.weight", "fc.bias", "norm.weight", "norm.bias", "layers.0.weight",
                                      "layers.1.weight"}));
  EXPECT_EQ(net.num_parameters(), 3 + 12 + 3 + 3 + 3 + 9 + 9);
  EXPECT_EQ(names_of(net.state_dict()),
            (std::vector<std::string>{"scale", "fc.weight", "fc.bias", "norm.weight", "norm.bias", "layers.0.weight",
                                      "layers.1.weight", "counter"}));
  EXPECT_EQ(names_of(net.named_buffers()), (std::vector<std::string>{"counter", "scratch"}));
  for (const Tensor& p : net.parameters()) {
    EXPECT_TRUE(p.requires_grad());
    EXPECT_EQ(p.grad_fn(), nullptr);
  }
  // The handles are the members themselves.
  EXPECT_TRUE(net.parameter("layers.1.weight").same((*net.layers)[1].weight));
  EXPECT_TRUE(net.has_parameter("fc.bias"));
  EXPECT_FALSE(net.has_parameter("fc.nope"));
  expect_error([&] { net.parameter("fc.nope"); }, {"fc.nope"});
  std::vector<std::string> modules;
  for (auto& [n, m] : net.named_modules()) modules.push_back(n);
  EXPECT_EQ(modules, (std::vector<std::string>{"", "fc", "norm", "layers", "layers.0", "layers.1"}));
}

TEST(Module, RegistrationErrors) {
  struct Bad : Module {
    Tensor a = Tensor::zeros({2}), b = Tensor::zeros({2}), ids = Tensor::zeros({2}, DType::i64);
    void dup() {
      register_parameter("a", a);
      register_parameter("a", b);
    }
    void dotted() { register_parameter("x.y", a); }
    void integer() { register_parameter("ids", ids); }
  };
  expect_error([] { Bad().dup(); }, {"'a'", "already"});
  expect_error([] { Bad().dotted(); }, {"x.y"});
  expect_error([] { Bad().integer(); }, {"ids", "floating"});
}

TEST(Module, StateDictRoundTripKeepsHandles) {
  TinyNet a(1), b(2);
  const Tensor x = randn64({5, 4}, 3, false).to(DType::f32);
  EXPECT_FALSE(bitwise_equal(a.forward(x), b.forward(x)));
  const Tensor handle = b.fc->weight;
  b.counter.fill_(0.0);
  b.load_state_dict(a.state_dict());
  EXPECT_TRUE(bitwise_equal(a.forward(x), b.forward(x)));
  EXPECT_TRUE(handle.same(b.fc->weight));  // loaded in place: optimiser handles stay valid
  EXPECT_TRUE(bitwise_equal(a.fc->weight, handle));
  EXPECT_EQ(b.counter.to_vector(), (std::vector<double>{7.0, 7.0}));  // persistent buffers load too
  EXPECT_TRUE(b.fc->weight.requires_grad());
  // From a name -> tensor map as well.
  TinyNet c(3);
  const NamedTensors sd = a.state_dict();
  c.load_state_dict(std::map<std::string, Tensor>(sd.begin(), sd.end()));
  EXPECT_TRUE(bitwise_equal(a.forward(x), c.forward(x)));
}

TEST(Module, LoadStateDictStrictErrorsNameTheTensor) {
  TinyNet a(1), b(2);
  const Tensor before = b.fc->weight.clone();
  auto without = [&](const std::string& name) {
    NamedTensors s;
    for (auto& [n, t] : a.state_dict()) {
      if (n != name) s.emplace_back(n, t);
    }
    return s;
  };
  expect_error([&] { b.load_state_dict(without("norm.bias")); }, {"missing", "'norm.bias'"});
  NamedTensors extra = a.state_dict();
  extra.emplace_back("head.weight", Tensor::zeros({2, 2}));
  expect_error([&] { b.load_state_dict(extra); }, {"unexpected", "'head.weight'"});
  NamedTensors wrong_shape = without("fc.bias");
  wrong_shape.emplace_back("fc.bias", Tensor::zeros({4}));
  expect_error([&] { b.load_state_dict(wrong_shape); }, {"shape", "'fc.bias'", "(4,)", "(3,)"});
  NamedTensors wrong_dtype = without("scale");
  wrong_dtype.emplace_back("scale", Tensor::zeros({3}, DType::f64));
  expect_error([&] { b.load_state_dict(wrong_dtype); }, {"dtype", "'scale'", "f64", "f32"});
  NamedTensors twice = a.state_dict();
  twice.push_back(twice.front());
  expect_error([&] { b.load_state_dict(twice); }, {"twice", "'scale'"});
  // Nothing was copied by the failed loads (they validate first, and the shape error came last).
  EXPECT_TRUE(bitwise_equal(b.fc->weight, before));

  // Relaxed: missing and unexpected names are skipped, dtypes converted; shapes still checked.
  NamedTensors relaxed = without("norm.bias");
  relaxed.emplace_back("head.weight", Tensor::zeros({2, 2}));
  for (auto& [n, t] : relaxed) {
    if (n == "scale") t = t.to(DType::f64);
  }
  b.load_state_dict(relaxed, /*strict=*/false);
  EXPECT_TRUE(bitwise_equal(b.fc->weight, a.fc->weight));
  EXPECT_TRUE(bitwise_equal(b.scale, a.scale));
  expect_error([&] { b.load_state_dict(wrong_shape, false); }, {"shape", "'fc.bias'"});
}

TEST(Module, ToDtypeConvertsFloatsKeepsFlags) {
  TinyNet net(1);
  net.layers->operator[](0).weight.set_requires_grad(false);  // frozen
  net.to(DType::f64);
  for (auto& [n, p] : net.named_parameters()) EXPECT_EQ(p.dtype(), DType::f64) << n;
  EXPECT_EQ(net.counter.dtype(), DType::i64);  // integer buffers keep their dtype
  EXPECT_EQ(net.scratch.dtype(), DType::f64);  // floating buffers convert
  EXPECT_FALSE((*net.layers)[0].weight.requires_grad());
  EXPECT_TRUE((*net.layers)[1].weight.requires_grad());
  EXPECT_TRUE(net.parameter("fc.weight").same(net.fc->weight));  // registry follows the new handles
  net.to(Device::cpu());                                         // a no-op
  const Tensor x = randn64({2, 4}, 5, false);
  EXPECT_EQ(net.forward(x).dtype(), DType::f64);
  expect_error([&] { net.to(DType::i32); }, {"floating"});
}

TEST(Module, FreezeZeroGradAndSetParameter) {
  TinyNet net(1);
  net.freeze();
  EXPECT_EQ(net.num_parameters(/*trainable_only=*/true), 0);
  net.fc->weight.set_requires_grad(true);
  EXPECT_EQ(names_of(net.named_parameters(true)), (std::vector<std::string>{"fc.weight"}));
  const Tensor x = randn64({2, 4}, 5, false).to(DType::f32);
  backward(sum(net.forward(x)));
  EXPECT_TRUE(net.fc->weight.grad().defined());
  EXPECT_FALSE(net.fc->bias.grad().defined());  // frozen: the tape never reached it
  EXPECT_FALSE(net.scale.grad().defined());
  net.zero_grad();
  EXPECT_FALSE(net.fc->weight.grad().defined());
  net.unfreeze();
  EXPECT_EQ(net.num_parameters(true), net.num_parameters());

  // set_parameter swaps the handle used in forward (teacher views) and checks the layout.
  const Tensor y0 = net.forward(x);
  const Tensor zeros = Tensor::zeros({3}).set_requires_grad(true);
  const Tensor old = net.set_parameter("scale", zeros);
  EXPECT_EQ(rel_error(net.forward(x), Tensor::zeros({2, 3})), 0.0);
  net.set_parameter("scale", old);
  EXPECT_TRUE(bitwise_equal(net.forward(x), y0));
  expect_error([&] { net.set_parameter("scale", Tensor::zeros({4})); }, {"'scale'", "(3,)", "(4,)"});
  expect_error([&] { net.set_parameter("nope", Tensor::zeros({4})); }, {"'nope'"});
}

// ---------------------------------------------------------------- layer gradchecks (f64)

TEST(Gradcheck, Linear) {
  Generator gen(1);
  Linear lin(5, 3, true, gen, 0.5, DType::f64);
  randomize(lin.bias, 2);
  const Tensor x3 = randn64({2, 4, 5}, 3);
  EXPECT_GRADCHECK_OK(
      module_gradcheck(lin, {"weight", "bias"}, {x3}, [&](const auto& in) { return lin.forward(in[0]); }));
  // The fused bias+GELU epilogue, and a 4-D input (folded to 2-D).
  EXPECT_GRADCHECK_OK(
      module_gradcheck(lin, {"weight", "bias"}, {x3}, [&](const auto& in) { return lin.forward(in[0], true); }));
  const Tensor x4 = randn64({2, 2, 2, 5}, 4);
  EXPECT_GRADCHECK_OK(module_gradcheck(lin, {"weight"}, {x4}, [&](const auto& in) { return lin.forward(in[0]); }));
  EXPECT_EQ(lin.forward(x4).shape(), (Shape{2, 2, 2, 3}));
  expect_error([&] { lin.forward(randn64({2, 4}, 5)); }, {"Linear", "(..., 5)", "(2, 4)"});
}

TEST(Gradcheck, LinearWithLora) {
  Generator gen(1);
  Linear lin(5, 4, true, gen, 0.5, DType::f64);
  lin.enable_lora(2, 4.0, gen);
  EXPECT_EQ(lin.lora_scale(), 2.0);
  EXPECT_EQ(lin.lora_A.shape(), (Shape{2, 5}));
  EXPECT_EQ(lin.lora_B.shape(), (Shape{4, 2}));
  EXPECT_EQ(lin.lora_B.to_vector(), std::vector<double>(8, 0.0));
  randomize(lin.lora_B, 7);  // B = 0 would make A's gradient trivially zero
  const Tensor x = randn64({2, 3, 5}, 3);
  const std::vector<std::string> all{"weight", "bias", "lora_A", "lora_B"};
  EXPECT_GRADCHECK_OK(module_gradcheck(lin, all, {x}, [&](const auto& in) { return lin.forward(in[0]); }));
  EXPECT_GRADCHECK_OK(module_gradcheck(lin, all, {x}, [&](const auto& in) { return lin.forward(in[0], true); }));
}

TEST(Gradcheck, Embedding) {
  Generator gen(1);
  Embedding emb(7, 3, gen, 1.0, DType::f64);
  const Tensor ids = Tensor::from_vector({0, 3, 3, 6, 1, 0}, {2, 3}, DType::i64);
  EXPECT_GRADCHECK_OK(module_gradcheck(emb, {"weight"}, {}, [&](const auto&) { return emb.forward(ids); }));
}

TEST(Gradcheck, LayerNormAndRMSNorm) {
  LayerNorm ln(6, 1e-5, true, DType::f64);
  randomize(ln.weight, 1);
  randomize(ln.bias, 2);
  const Tensor x = randn64({2, 3, 6}, 3, true, 2.0);
  EXPECT_GRADCHECK_OK(module_gradcheck(ln, {"weight", "bias"}, {x}, [&](const auto& in) { return ln.forward(in[0]); }));
  RMSNorm rms(6, 1e-5, DType::f64);
  randomize(rms.weight, 4);
  EXPECT_GRADCHECK_OK(module_gradcheck(rms, {"weight"}, {x}, [&](const auto& in) { return rms.forward(in[0]); }));
  // Forward against the textbook formulas.
  const std::vector<double> xv = x.to_vector(), w = ln.weight.to_vector(), b = ln.bias.to_vector(),
                            rw = rms.weight.to_vector();
  std::vector<double> ref_ln(xv.size()), ref_rms(xv.size());
  for (size_t r = 0; r < xv.size() / 6; ++r) {
    double mu = 0, var = 0, ms = 0;
    for (size_t c = 0; c < 6; ++c) mu += xv[r * 6 + c] / 6;
    for (size_t c = 0; c < 6; ++c) var += (xv[r * 6 + c] - mu) * (xv[r * 6 + c] - mu) / 6;
    for (size_t c = 0; c < 6; ++c) ms += xv[r * 6 + c] * xv[r * 6 + c] / 6;
    for (size_t c = 0; c < 6; ++c) {
      ref_ln[r * 6 + c] = (xv[r * 6 + c] - mu) / std::sqrt(var + 1e-5) * w[c] + b[c];
      ref_rms[r * 6 + c] = xv[r * 6 + c] / std::sqrt(ms + 1e-5) * rw[c];
    }
  }
  EXPECT_LT(rel_error(ln.forward(x).to_vector(), ref_ln), 1e-12);
  EXPECT_LT(rel_error(rms.forward(x).to_vector(), ref_rms), 1e-12);
}

TEST(Gradcheck, RoPE) {
  RoPE rope(4, 16, 10000.0, DType::f64);
  const Tensor x = randn64({2, 2, 3, 4}, 1);
  const Tensor pos = Tensor::from_vector({5, 6, 7}, {3}, DType::i64);
  const Tensor pos_rows = Tensor::from_vector({0, 1, 2, 9, 3, 15}, {2, 3}, DType::i64);
  EXPECT_GRADCHECK_OK(gradcheck([&](const TensorList& in) { return rope.forward(in[0], pos); }, {x}));
  EXPECT_GRADCHECK_OK(gradcheck([&](const TensorList& in) { return rope.forward(in[0], pos_rows); }, {x}));
}

TEST(RoPE, RotationProperties) {
  const int64_t D = 8;
  RoPE rope(D, 64, 500.0, DType::f64);
  const Tensor q = randn64({1, 1, 1, D}, 1, false), k = randn64({1, 1, 1, D}, 2, false);
  auto at = [&](const Tensor& x, int64_t p) {
    return rope.forward(x, Tensor::from_vector({static_cast<double>(p)}, {1}, DType::i64)).to_vector();
  };
  auto dot = [](const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
  };
  EXPECT_LT(rel_error(at(q, 0), q.to_vector()), 1e-15);                              // position 0 is the identity
  EXPECT_NEAR(dot(at(q, 37), at(q, 37)), dot(q.to_vector(), q.to_vector()), 1e-12);  // a rotation
  // <rope(q, m), rope(k, n)> depends only on m − n.
  EXPECT_NEAR(dot(at(q, 10), at(k, 3)), dot(at(q, 27), at(k, 20)), 1e-12);
  EXPECT_GT(std::abs(dot(at(q, 10), at(k, 3)) - dot(at(q, 10), at(k, 4))), 1e-6);
  // The rotate-half pairing: dim i and i + D/2 rotate by p·θ^(−2i/D).
  const std::vector<double> e0 = [&] {
    std::vector<double> v(D, 0.0);
    v[1] = 1.0;
    return v;
  }();
  const std::vector<double> r = at(Tensor::from_vector(e0, {1, 1, 1, D}, DType::f64), 3);
  const double angle = 3.0 * std::pow(500.0, -2.0 / D);
  EXPECT_NEAR(r[1], std::cos(angle), 1e-14);
  EXPECT_NEAR(r[1 + D / 2], std::sin(angle), 1e-14);
}

// ---------------------------------------------------------------- attention

struct AttnCase {
  const char* name;
  int64_t B, Hq, Hkv, T, S, D;
  bool causal;
  int64_t offset;
};

class Attention : public ::testing::TestWithParam<AttnCase> {};

TEST_P(Attention, MatchesNaiveAndGradchecks) {
  const AttnCase c = GetParam();
  const Tensor q = randn64({c.B, c.Hq, c.T, c.D}, 1), k = randn64({c.B, c.Hkv, c.S, c.D}, 2),
               v = randn64({c.B, c.Hkv, c.S, c.D}, 3);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  const Tensor y = attention(q, k, v, c.causal, 0.0, c.offset);
  EXPECT_EQ(y.shape(), (Shape{c.B, c.Hq, c.T, c.D}));
  EXPECT_LT(rel_error(y.to_vector(), naive_attention(q, k, v, c.causal, scale, c.offset)), 1e-13);
  EXPECT_GRADCHECK_OK(gradcheck(
      [&](const TensorList& in) { return attention(in[0], in[1], in[2], c.causal, 0.0, c.offset); }, {q, k, v}));
  // f32 against the same f64 reference (DESIGN §5 bound).
  const Tensor y32 = attention(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32), c.causal, 0.0, c.offset);
  EXPECT_LT(rel_error(y32.to_vector(), naive_attention(q, k, v, c.causal, scale, c.offset)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Cases, Attention,
                         ::testing::Values(AttnCase{"causal", 2, 2, 2, 4, 4, 3, true, 0},
                                           AttnCase{"noncausal", 2, 2, 2, 3, 5, 3, false, 0},
                                           AttnCase{"gqa_causal", 1, 4, 2, 4, 4, 2, true, 0},
                                           AttnCase{"mqa_noncausal", 2, 3, 1, 2, 3, 2, false, 0},
                                           AttnCase{"gqa_offset", 2, 4, 2, 3, 5, 2, true, 2},
                                           AttnCase{"decode_step", 1, 2, 1, 1, 6, 3, true, 5}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(AttentionOp, BiasAndScaleAndErrors) {
  const int64_t B = 2, H = 2, T = 3, S = 3, D = 2;
  const Tensor q = randn64({B, H, T, D}, 1), k = randn64({B, H, S, D}, 2), v = randn64({B, H, S, D}, 3);
  // A padding bias (B, 1, 1, S): row 1 cannot see key 0. Large finite negatives keep fully
  // masked rows finite.
  const Tensor bias = Tensor::from_vector({0, 0, 0, -1e9, 0, 0}, {B, 1, 1, S}, DType::f64);
  std::vector<double> full(static_cast<size_t>(B * H * T * S));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < S; ++j) full[((b * H + h) * T + i) * S + j] = (b == 1 && j == 0) ? -1e9 : 0.0;
  const Tensor y = attention(q, k, v, true, 0.7, 0, bias);
  EXPECT_LT(rel_error(y.to_vector(), naive_attention(q, k, v, true, 0.7, 0, full)), 1e-13);
  EXPECT_GRADCHECK_OK(
      gradcheck([&](const TensorList& in) { return attention(in[0], in[1], in[2], true, 0.7, 0, bias); }, {q, k, v}));
  expect_error(
      [&] {
        attention(q, randn64({B, 3, S, D}, 4), randn64({B, 3, S, D}, 5), true);
      },
      {"divide", "(2, 3, 3, 2)"});
  expect_error([&] { attention(q, k, randn64({B, H, S + 1, D}, 6), true); }, {"attention"});
  expect_error([&] { attention(q.view({B * H, T, D}), k, v, true); }, {"attention", "(4, 3, 2)"});
  expect_error([&] { attention(q, k, v, true, 0.0, -1); }, {"q_offset"});
}

TEST(Gradcheck, CausalSelfAttentionModule) {
  for (bool rope : {false, true}) {
    Generator gen(1);
    AttentionConfig cfg;
    cfg.n_embd = 8;
    cfg.n_head = 4;
    cfg.n_kv_head = 2;
    cfg.bias = true;
    cfg.rope = rope;
    cfg.max_positions = 8;
    cfg.init_std = 0.5;
    cfg.out_init_std = 0.5;
    CausalSelfAttention attn(cfg, gen, DType::f64);
    randomize(attn.wqkv->bias, 2);
    const Tensor x = randn64({2, 3, 8}, 3);
    EXPECT_GRADCHECK_OK(module_gradcheck(attn, {"wqkv.weight", "wqkv.bias", "wo.weight"}, {x},
                                         [&](const auto& in) { return attn.forward(in[0]); }));
    // Causality: changing the last token leaves earlier outputs alone.
    Tensor x2 = x.detach().clone();
    x2.select(1, 2).fill_(3.0);
    const std::vector<double> a = attn.forward(x).to_vector(), b = attn.forward(x2).to_vector();
    for (int64_t bb = 0; bb < 2; ++bb)
      for (int64_t t = 0; t < 2; ++t)
        for (int64_t c = 0; c < 8; ++c) EXPECT_EQ(a[(bb * 3 + t) * 8 + c], b[(bb * 3 + t) * 8 + c]);
  }
  AttentionConfig bad;
  bad.n_embd = 8;
  bad.n_head = 3;
  Generator gen(1);
  expect_error([&] { CausalSelfAttention(bad, gen); }, {"n_head (3)", "n_embd (8)"});
  bad.n_head = 4;
  bad.n_kv_head = 3;
  expect_error([&] { CausalSelfAttention(bad, gen); }, {"n_kv_head (3)", "n_head (4)"});
}

// ---------------------------------------------------------------- MLPs

TEST(Gradcheck, MlpGeluAndSwiGLU) {
  const Tensor x = randn64({2, 3, 4}, 1);
  {
    Generator gen(1);
    MLP mlp(MlpConfig{4, 6, MlpKind::gelu, true, 0.5, 0.5}, gen, DType::f64);
    randomize(mlp.fc->bias, 2);
    EXPECT_GRADCHECK_OK(module_gradcheck(mlp, {"fc.weight", "fc.bias", "proj.weight", "proj.bias"}, {x},
                                         [&](const auto& in) { return mlp.forward(in[0]); }));
    // Against the explicit formula with the tanh GELU.
    const std::vector<double> xv = x.to_vector(), w1 = mlp.fc->weight.to_vector(), b1 = mlp.fc->bias.to_vector(),
                              w2 = mlp.proj->weight.to_vector(), b2 = mlp.proj->bias.to_vector();
    std::vector<double> ref(xv.size());
    for (size_t r = 0; r < 6; ++r) {
      std::vector<double> h(6);
      for (size_t j = 0; j < 6; ++j) {
        double z = b1[j];
        for (size_t c = 0; c < 4; ++c) z += xv[r * 4 + c] * w1[j * 4 + c];
        h[j] = 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (z + 0.044715 * z * z * z)));
      }
      for (size_t c = 0; c < 4; ++c) {
        double o = b2[c];
        for (size_t j = 0; j < 6; ++j) o += h[j] * w2[c * 6 + j];
        ref[r * 4 + c] = o;
      }
    }
    EXPECT_LT(rel_error(mlp.forward(x).to_vector(), ref), 1e-12);
  }
  {
    Generator gen(2);
    MLP mlp(MlpConfig{4, 0, MlpKind::swiglu, false, 0.5, 0.5}, gen, DType::f64);
    EXPECT_EQ(mlp.hidden(), 16);  // ceil(8·4/3) = 11 -> a multiple of 8
    EXPECT_FALSE(mlp.gate->bias.defined());
    EXPECT_GRADCHECK_OK(module_gradcheck(mlp, {"gate.weight", "up.weight", "down.weight"}, {x},
                                         [&](const auto& in) { return mlp.forward(in[0]); }));
  }
  EXPECT_EQ(default_mlp_hidden(MlpKind::gelu, 64), 256);
  EXPECT_EQ(default_mlp_hidden(MlpKind::swiglu, 96), 256);
}

// ---------------------------------------------------------------- LoRA merge

TEST(Lora, MergeEqualsUnmergedForwardAndUnmergeRestores) {
  for (DType dt : {DType::f64, DType::f32}) {
    const double tol = dt == DType::f64 ? 1e-13 : 1e-6;
    Generator gen(3);
    Linear lin(6, 5, true, gen, 0.3, dt);
    lin.enable_lora(3, 6.0, gen);
    const Tensor x = randn64({4, 6}, 9, false).to(dt);
    const Tensor base = lin.forward(x);
    EXPECT_TRUE(bitwise_equal(base, matmul(x, transpose(lin.weight, 0, 1), lin.bias)));  // B = 0: a no-op
    randomize(lin.lora_B, 10);
    const Tensor w0 = lin.weight.clone();
    const Tensor unmerged = lin.forward(x);
    EXPECT_GT(rel_error(unmerged, base), 1e-3);
    lin.merge_lora();
    EXPECT_TRUE(lin.lora_merged());
    EXPECT_LT(rel_error(lin.forward(x), unmerged), tol);
    EXPECT_LT(rel_error(lin.forward(x, true), gelu(unmerged)), tol);
    expect_error([&] { lin.merge_lora(); }, {"already merged"});
    lin.unmerge_lora();
    EXPECT_LT(rel_error(lin.weight, w0), tol);
    EXPECT_LT(rel_error(lin.forward(x), unmerged), tol);
    expect_error([&] { lin.unmerge_lora(); }, {"not merged"});
    expect_error([&] { lin.enable_lora(2, 1.0, gen); }, {"already enabled"});
  }
  Generator gen(1);
  Linear plain(3, 3, false, gen);
  expect_error([&] { plain.merge_lora(); }, {"not enabled"});
  expect_error([&] { plain.enable_lora(0, 1.0, gen); }, {"rank"});
}
