// Fused multi-tensor AdamW (kernels::adamw_step; kernels/cpu/adamw.cpp): against a naive f64
// AdamW formula over a list of odd-sized tensors (f32, f64; weight decay, grad scale, step
// counts per tensor), the clip scale, the bf16 copy of the f32 master (nearest-even equals
// cast; stochastic rounding is unbiased over many draws, deterministic given the seed, and
// only ever picks one of the two bf16 neighbours), and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::test;
using kernels::AdamWHyper;

namespace {

struct Naive {
  std::vector<double> w, m, v;
};

Naive naive_adamw(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWHyper& h,
                  double clip) {
  Naive o{w.to_vector(), m.to_vector(), v.to_vector()};
  const std::vector<double> gv = g.to_vector();
  const double t = static_cast<double>(h.step);
  for (size_t i = 0; i < o.w.size(); ++i) {
    const double gi = gv[i] * h.grad_scale * clip;
    o.w[i] *= 1.0 - h.lr * h.weight_decay;
    o.m[i] = h.beta1 * o.m[i] + (1 - h.beta1) * gi;
    o.v[i] = h.beta2 * o.v[i] + (1 - h.beta2) * gi * gi;
    const double mhat = o.m[i] / (1 - std::pow(h.beta1, t)), vhat = o.v[i] / (1 - std::pow(h.beta2, t));
    o.w[i] -= h.lr * mhat / (std::sqrt(vhat) + h.eps);
  }
  return o;
}

struct Lists {
  std::vector<Tensor> w, g, m, v;
  std::vector<AdamWHyper> h;
};

Lists make_lists(DType dt, Generator& gen) {
  Lists l;
  const std::vector<Shape> shapes = {{1}, {7}, {33, 5}, {3, 257}, {4097}};
  for (size_t i = 0; i < shapes.size(); ++i) {
    l.w.push_back(randn(shapes[i], gen, dt));
    l.g.push_back(randn(shapes[i], gen, dt));
    l.m.push_back(randn(shapes[i], gen, dt, Device::cpu(), 0.0, 0.1));
    l.v.push_back(rand(shapes[i], gen, dt, Device::cpu(), 0.0, 0.2));
    // Betas exact in f32 (and so are 1 − β), so the f32 run differs from f64 only by rounding.
    l.h.push_back(AdamWHyper{.lr = 1e-2 * (1 + i), .weight_decay = i % 2 ? 0.1 : 0.0, .beta1 = 0.875,
                             .beta2 = 0.9375, .eps = 1e-8, .grad_scale = i == 3 ? 0.5 : 1.0,
                             .step = static_cast<int64_t>(1 + 2 * i)});
  }
  return l;
}

std::vector<Tensor> clones(const std::vector<Tensor>& xs) {
  std::vector<Tensor> out;
  for (const Tensor& x : xs) out.push_back(x.clone());
  return out;
}

}  // namespace

TEST(FusedAdamW, MatchesNaiveFormula) {
  for (DType dt : {DType::f32, DType::f64}) {
    for (bool with_clip : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (with_clip ? " clip 0.375" : ""));
      Generator gen(17);
      Lists l = make_lists(dt, gen);
      const Lists orig{clones(l.w), clones(l.g), clones(l.m), clones(l.v), l.h};
      const double clip = with_clip ? 0.375 : 1.0;
      kernels::adamw_step(l.w, l.g, l.m, l.v, l.h, with_clip ? Tensor::scalar(clip) : Tensor());
      for (size_t i = 0; i < l.w.size(); ++i) {
        const Naive ref = naive_adamw(orig.w[i], orig.g[i], orig.m[i], orig.v[i], l.h[i], clip);
        const double tol = dt == DType::f64 ? 1e-14 : 2e-6;
        EXPECT_LE(rel_or_abs_error(l.w[i].to_vector(), ref.w), tol) << "tensor " << i;
        EXPECT_LE(rel_or_abs_error(l.m[i].to_vector(), ref.m), tol) << "tensor " << i;
        EXPECT_LE(rel_or_abs_error(l.v[i].to_vector(), ref.v), tol) << "tensor " << i;
        EXPECT_NE(l.w[i].to_vector(), orig.w[i].to_vector()) << "tensor " << i << " never moved";
        EXPECT_EQ(l.g[i].to_vector(), orig.g[i].to_vector()) << "gradient modified";
      }
    }
  }
}

TEST(FusedAdamW, ClipScaleEqualsScaledGradients) {
  Generator gen(3);
  Lists a = make_lists(DType::f64, gen);
  Lists b{clones(a.w), clones(a.g), clones(a.m), clones(a.v), a.h};
  for (Tensor& g : b.g) g = kernels::binary(kernels::Binary::mul, g, Tensor::scalar(0.25, DType::f64));
  kernels::adamw_step(a.w, a.g, a.m, a.v, a.h, Tensor::scalar(0.25, DType::f64));
  kernels::adamw_step(b.w, b.g, b.m, b.v, b.h);
  for (size_t i = 0; i < a.w.size(); ++i) EXPECT_LE(rel_or_abs_error(a.w[i].to_vector(), b.w[i].to_vector()), 1e-14);
}

TEST(FusedAdamW, Bf16CopyNearestEqualsCast) {
  Generator gen(4);
  Lists l = make_lists(DType::f32, gen);
  std::vector<Tensor> out;
  for (const Tensor& w : l.w) out.push_back(Tensor::empty(w.shape(), DType::bf16));
  out[1] = Tensor();  // skipped
  kernels::adamw_step(l.w, l.g, l.m, l.v, l.h, Tensor(), out);
  for (size_t i = 0; i < l.w.size(); ++i) {
    if (!out[i].defined()) continue;
    EXPECT_EQ(out[i].to_vector(), kernels::cast(l.w[i], DType::bf16).to_vector()) << "tensor " << i;
  }
}

TEST(FusedAdamW, StochasticRoundingUnbiasedAndDeterministic) {
  // lr = 0 leaves the master weights as they are, so the bf16 copy is a pure rounding of w.
  const int64_t n = 4096;
  std::vector<double> wv(n);
  Generator gen(5);
  const std::vector<double> r = rand({n}, gen, DType::f64, Device::cpu(), 0.0, 1.0).to_vector();
  for (int64_t i = 0; i < n; ++i) wv[i] = (1.0 + r[i]) * std::pow(2.0, static_cast<double>(i % 7) - 3.0);
  const Tensor w0 = Tensor::from_vector(wv, {n}, DType::f32);
  const std::vector<double> exact = w0.to_vector();  // the f32 values being rounded
  const std::vector<double> nearest = kernels::cast(w0, DType::bf16).to_vector();
  const AdamWHyper h{.lr = 0.0};
  auto draw = [&](uint64_t seed) {
    Tensor w = w0.clone(), g = Tensor::zeros({n}), m = Tensor::zeros({n}), v = Tensor::zeros({n});
    Tensor out = Tensor::empty({n}, DType::bf16);
    kernels::adamw_step({w}, {g}, {m}, {v}, {h}, Tensor(), {out}, /*stochastic_rounding=*/true, seed);
    EXPECT_EQ(w.to_vector(), exact);
    return out.to_vector();
  };
  const int draws = 64;
  double sum_err_ulp = 0.0, sum_nearest_err_ulp = 0.0;
  for (int d = 0; d < draws; ++d) {
    const std::vector<double> o = draw(1000 + d);
    for (int64_t i = 0; i < n; ++i) {
      const double ulp = std::ldexp(1.0, std::ilogb(exact[i]) - 7);  // bf16 spacing at exact[i]
      const double lo = std::floor(exact[i] / ulp) * ulp;
      ASSERT_TRUE(o[i] == lo || o[i] == lo + ulp) << "element " << i << ": " << o[i] << " not a neighbour of "
                                                  << exact[i];
      sum_err_ulp += (o[i] - exact[i]) / ulp;
      sum_nearest_err_ulp += std::abs(nearest[i] - exact[i]) / ulp;
    }
  }
  const double samples = static_cast<double>(draws) * n;
  // Each error lies in (−1, 1) ulp; the mean of 262k draws has a standard deviation < 0.002.
  EXPECT_LT(std::abs(sum_err_ulp / samples), 0.01);
  EXPECT_GT(sum_nearest_err_ulp / samples, 0.1);  // the inputs are not bf16-exact: the test can fail
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(FusedAdamW, Errors) {
  Tensor w = Tensor::zeros({4}), g = Tensor::zeros({4}), m = Tensor::zeros({4}), v = Tensor::zeros({4});
  EXPECT_THROW(kernels::adamw_step({w}, {g}, {m}, {}, {AdamWHyper{}}), Error);
  EXPECT_THROW(kernels::adamw_step({w}, {Tensor::zeros({5})}, {m}, {v}, {AdamWHyper{}}), Error);
  EXPECT_THROW(kernels::adamw_step({w}, {g.to(DType::f64)}, {m}, {v}, {AdamWHyper{}}), Error);
  EXPECT_THROW(kernels::adamw_step({w.to(DType::bf16)}, {g.to(DType::bf16)}, {m.to(DType::bf16)},
                                   {v.to(DType::bf16)}, {AdamWHyper{}}),
               Error);
  EXPECT_THROW(kernels::adamw_step({w}, {g}, {m}, {v}, {AdamWHyper{.step = 0}}), Error);
  Tensor w2 = Tensor::zeros({4, 2}).transpose(0, 1);
  EXPECT_THROW(kernels::adamw_step({w2}, {w2.contiguous()}, {w2.contiguous()}, {w2.contiguous()}, {AdamWHyper{}}),
               Error);
  EXPECT_THROW(kernels::adamw_step({w}, {g}, {m}, {v}, {AdamWHyper{}}, Tensor::ones({2})), Error);
  EXPECT_THROW(kernels::adamw_step({w}, {g}, {m}, {v}, {AdamWHyper{}}, Tensor(), {Tensor::empty({4})}), Error);
}
