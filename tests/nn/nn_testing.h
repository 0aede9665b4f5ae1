// Helpers shared by the nn tests, on top of tests/testing.h (re-exported below).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "nn/module.h"
#include "nn/transformer.h"
#include "tensor/random.h"
#include "testing.h"

namespace somnus::nn::testing {

using autograd::TensorList;

// The shared helpers (tests/testing.h), for `using namespace somnus::nn::testing`.
using somnus::testing::error_of;
using somnus::testing::expect_contains;
using somnus::testing::expect_error;
using somnus::testing::raw_bytes;
using somnus::testing::rel_error;
using somnus::testing::rel_or_abs_error;

// Fresh N(0, 1) f64 values (requires_grad when asked).
inline Tensor randn64(const Shape& shape, uint64_t seed, bool requires_grad = true, double std = 1.0) {
  Generator gen(seed);
  Tensor t = randn(shape, gen, DType::f64, Device::cpu(), 0.0, std);
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

// Overwrites a parameter in place with fresh N(0, std²) values (e.g. a B that starts at 0).
inline void randomize(const Tensor& p, uint64_t seed, double std = 0.5) {
  Generator gen(seed);
  NoGradGuard no_grad;
  p.copy_(randn(p.shape(), gen, p.dtype(), p.device(), 0.0, std));
}

inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const std::vector<double> x = a.to_vector(), y = b.to_vector();
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::memcmp(&x[i], &y[i], sizeof(double)) != 0) return false;
  }
  return true;
}

// gradcheck (autograd/gradcheck.h) over a module's parameters `names` plus `extra` inputs.
// gradcheck differentiates fresh handles on its inputs, so the module is made to compute
// with exactly those handles (set_parameter) while fn runs, and gets its own back after.
// fn receives the extra inputs.
inline GradcheckResult module_gradcheck(Module& m, const std::vector<std::string>& names,
                                        const std::vector<Tensor>& extra,
                                        const std::function<Tensor(const std::vector<Tensor>&)>& fn, double eps = 1e-6,
                                        double atol = 1e-5, double rtol = 1e-3) {
  std::vector<Tensor> originals, inputs;
  for (const std::string& n : names) originals.push_back(m.parameter(n));
  inputs = originals;
  inputs.insert(inputs.end(), extra.begin(), extra.end());
  const size_t np = names.size();
  GradcheckResult r = gradcheck(
      [&](const std::vector<Tensor>& xs) {
        for (size_t i = 0; i < np; ++i) m.set_parameter(names[i], xs[i]);
        return fn(std::vector<Tensor>(xs.begin() + static_cast<std::ptrdiff_t>(np), xs.end()));
      },
      inputs, eps, atol, rtol);
  for (size_t i = 0; i < np; ++i) m.set_parameter(names[i], originals[i]);
  return r;
}

#define EXPECT_GRADCHECK_OK(...)                \
  do {                                          \
    auto result_ = (__VA_ARGS__);               \
    EXPECT_TRUE(result_.ok) << result_.message; \
    EXPECT_GT(result_.checked, 0);              \
  } while (0)

// ---------------------------------------------------------------- tiny transformer configs
// The small models of test_transformer and test_generate: vocab 13, C = 8, block 16.

constexpr int64_t kTinyVocab = 13;

// GPT-2 style: 2 heads, MLP hidden 16.
inline TransformerConfig tiny_gpt2(int64_t n_layer = 2) {
  TransformerConfig c =
      TransformerConfig::gpt2_style(kTinyVocab, n_layer, /*n_embd=*/8, /*n_head=*/2, /*block=*/16);
  c.levels[0].hidden = 16;
  return c;
}

// Llama style: GQA (4 query heads on 2 kv heads), SwiGLU hidden 12.
inline TransformerConfig tiny_llama(int64_t n_layer = 2) {
  TransformerConfig c = TransformerConfig::llama_style(kTinyVocab, n_layer, /*n_embd=*/8, /*n_head=*/4,
                                                       /*n_kv_head=*/2, /*block=*/16);
  c.levels[0].hidden = 12;
  return c;
}

// Llama style with a two-level chain: a fast dense level and a slow MoE level (period 4),
// both with slots.
inline TransformerConfig tiny_cms(int64_t n_layer = 2) {
  TransformerConfig c = tiny_llama(n_layer);
  LevelConfig fast;
  fast.kind = LevelKind::dense;
  fast.period = 1;
  fast.hidden = 12;
  fast.n_slots = 2;
  fast.slot_rank = 2;
  LevelConfig slow;
  slow.kind = LevelKind::moe;
  slow.period = 4;
  slow.hidden = 6;
  slow.n_experts = 3;
  slow.top_k = 2;
  slow.n_slots = 2;
  slow.slot_rank = 2;
  c.levels = {fast, slow};
  return c;
}

}  // namespace somnus::nn::testing
