// Fused RMSNorm / LayerNorm with residual add (kernels::rms_norm, layer_norm, norm_backward;
// kernels/cpu/norm.cpp): forward and backward against naive f64 references (fresh random
// inputs, odd sizes, row counts across the 32-row dweight chunks, f32/f64/bf16), the autograd
// wrappers against the unfused composition of simple ops, and f64 gradchecks.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "kernels/ops.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::test;

#define EXPECT_GRADCHECK(...)          \
  do {                                 \
    auto r_ = (__VA_ARGS__);           \
    EXPECT_TRUE(r_.ok) << r_.message; \
  } while (0)

namespace {

struct Ref {
  std::vector<double> y, h, dh, dw, db;
};

// Naive f64 forward and backward of norm(x + r)·w + b, one row at a time.
Ref reference(bool layer, const Tensor& x, const Tensor& r, const Tensor& w, const Tensor& b, const Tensor& dy,
              const Tensor& dh_in, double eps) {
  const int64_t C = x.size(-1), rows = x.numel() / C;
  const std::vector<double> xv = x.to_vector(), wv = w.to_vector();
  const std::vector<double> rv = r.defined() ? r.to_vector() : std::vector<double>(xv.size(), 0.0);
  const std::vector<double> bv = b.defined() ? b.to_vector() : std::vector<double>(C, 0.0);
  const std::vector<double> gv = dy.to_vector();
  const std::vector<double> dv = dh_in.defined() ? dh_in.to_vector() : std::vector<double>(xv.size(), 0.0);
  Ref o;
  o.y.resize(xv.size());
  o.h.resize(xv.size());
  o.dh.resize(xv.size());
  o.dw.assign(C, 0.0);
  o.db.assign(C, 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    std::vector<double> h(C), xh(C);
    double mu = 0.0, var = 0.0;
    for (int64_t j = 0; j < C; ++j) h[j] = xv[i * C + j] + rv[i * C + j];
    if (layer) {
      for (double v : h) mu += v;
      mu /= C;
    }
    for (double v : h) var += (v - mu) * (v - mu);
    var /= C;
    const double rs = 1.0 / std::sqrt(var + eps);
    double mg = 0.0, mgx = 0.0;
    for (int64_t j = 0; j < C; ++j) {
      xh[j] = (h[j] - mu) * rs;
      o.h[i * C + j] = h[j];
      o.y[i * C + j] = xh[j] * wv[j] + bv[j];
      const double g = gv[i * C + j] * wv[j];
      mg += g / C;
      mgx += g * xh[j] / C;
      o.dw[j] += gv[i * C + j] * xh[j];
      o.db[j] += gv[i * C + j];
    }
    for (int64_t j = 0; j < C; ++j) {
      const double g = gv[i * C + j] * wv[j];
      o.dh[i * C + j] = rs * (g - (layer ? mg : 0.0) - xh[j] * mgx) + dv[i * C + j];
    }
  }
  return o;
}

struct Case {
  Shape shape;
  bool residual, bias;
};

const std::vector<Case> kCases = {
    {{1, 3}, false, true},  {{3, 5}, true, true},       {{7, 33}, false, false}, {{2, 3, 257}, true, false},
    {{69, 96}, true, true}, {{33, 1, 130}, false, true}, {{1, 1024}, true, true},
};

double tol(DType d) { return d == DType::f64 ? 1e-12 : d == DType::bf16 ? 1.5e-2 : 2e-5; }

void check_kernel(bool layer, DType dt) {
  Generator gen(layer ? 11 : 12);
  for (const Case& c : kCases) {
    const int64_t C = c.shape.back();
    SCOPED_TRACE(case_name(c.shape, dt, Layout::contiguous) + (c.residual ? " residual" : "") +
                 (c.bias ? " bias" : ""));
    // A non-zero mean per row, so layer norm's centring matters.
    Tensor x = randn(c.shape, gen, dt, Device::cpu(), 0.7, 1.3);
    Tensor r = c.residual ? randn(c.shape, gen, dt) : Tensor();
    Tensor w = randn({C}, gen, dt, Device::cpu(), 1.0, 0.5);
    Tensor b = layer && c.bias ? randn({C}, gen, dt) : Tensor();
    Tensor dy = randn(c.shape, gen, dt);
    Tensor dh_in = c.residual ? randn(c.shape, gen, dt) : Tensor();
    const double eps = 1e-5;
    kernels::NormResult f = layer ? kernels::layer_norm(x, r, w, b, eps) : kernels::rms_norm(x, r, w, eps);
    kernels::NormGrads g = kernels::norm_backward(layer, dy, dh_in, f.h, w, f.mean, f.rstd, b.defined());
    // The reference starts from the stored h (bf16 rounds x + r once; the kernel uses it too).
    Ref ref = reference(layer, f.h, Tensor(), w, b, dy, dh_in, eps);
    Ref ref_h = reference(layer, x, r, w, b, dy, dh_in, eps);
    EXPECT_LE(rel_or_abs_error(f.h.to_vector(), ref_h.h), tol(dt));
    EXPECT_LE(rel_or_abs_error(f.y.to_vector(), ref.y), tol(dt));
    EXPECT_LE(rel_or_abs_error(g.dh.to_vector(), ref.dh), tol(dt));
    EXPECT_LE(rel_or_abs_error(g.dweight.to_vector(), ref.dw), tol(dt));
    if (b.defined()) {
      ASSERT_TRUE(g.dbias.defined());
      EXPECT_LE(rel_or_abs_error(g.dbias.to_vector(), ref.db), tol(dt));
    } else {
      EXPECT_FALSE(g.dbias.defined());
    }
    EXPECT_EQ(f.rstd.numel(), x.numel() / C);
  }
}

}  // namespace

TEST(FusedNorm, RmsNormMatchesF64Reference) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) check_kernel(false, dt);
}

TEST(FusedNorm, LayerNormMatchesF64Reference) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) check_kernel(true, dt);
}

TEST(FusedNorm, LayerNormLargeMeanIsStable) {
  // E[h²] − mean² would lose every digit here; the two-pass variance must not.
  Generator gen(5);
  Tensor x = kernels::binary(kernels::Binary::add, randn({4, 512}, gen), Tensor::scalar(1000.0));
  Tensor w = Tensor::ones({512});
  kernels::NormResult f = kernels::layer_norm(x, Tensor(), w, Tensor(), 1e-5);
  Tensor dy = randn({4, 512}, gen);
  Ref ref = reference(true, x, Tensor(), w, Tensor(), dy, Tensor(), 1e-5);
  EXPECT_LE(rel_or_abs_error(f.y.to_vector(), ref.y), 1e-3);
}

TEST(FusedNorm, DweightIndependentOfThreadCount) {
  Generator gen(9);
  Tensor h = randn({200, 64}, gen), w = randn({64}, gen), dy = randn({200, 64}, gen);
  kernels::NormResult f = kernels::rms_norm(h, Tensor(), w, 1e-6);
  kernels::NormGrads a = kernels::norm_backward(false, dy, Tensor(), f.h, w, f.mean, f.rstd, false);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  kernels::NormGrads b = kernels::norm_backward(false, dy, Tensor(), f.h, w, f.mean, f.rstd, false);
  omp_set_num_threads(saved);
  EXPECT_EQ(a.dweight.to_vector(), b.dweight.to_vector());
  EXPECT_EQ(a.dh.to_vector(), b.dh.to_vector());
}

TEST(FusedNorm, Errors) {
  Tensor x = Tensor::ones({2, 4});
  EXPECT_THROW(kernels::rms_norm(x, Tensor(), Tensor::ones({3}), 1e-5), Error);
  EXPECT_THROW(kernels::rms_norm(x, Tensor::ones({2, 3}), Tensor::ones({4}), 1e-5), Error);
  EXPECT_THROW(kernels::layer_norm(x, Tensor(), Tensor::ones({4}), Tensor::ones({4}, DType::f64), 1e-5), Error);
  EXPECT_THROW(kernels::rms_norm(x, Tensor(), Tensor::ones({4}, DType::f64), 1e-5), Error);
}

// The autograd wrappers against the unfused composition (what nn/layers.cpp used before).
TEST(FusedNorm, WrappersMatchUnfusedComposition) {
  Generator gen(21);
  for (bool layer : {false, true}) {
    SCOPED_TRACE(layer ? "layer" : "rms");
    Tensor x = randn({3, 4, 37}, gen, DType::f64).set_requires_grad(true);
    Tensor r = randn({3, 4, 37}, gen, DType::f64).set_requires_grad(true);
    Tensor w = randn({37}, gen, DType::f64).set_requires_grad(true);
    Tensor b = randn({37}, gen, DType::f64).set_requires_grad(true);
    Tensor gy = randn({3, 4, 37}, gen, DType::f64), gh = randn({3, 4, 37}, gen, DType::f64);
    const double eps = 1e-5;
    NormOutput f = layer ? layer_norm(x, r, w, b, eps) : rms_norm(x, r, w, eps);
    autograd::backward({f.y, f.h}, {gy, gh});
    const Tensor gx = x.grad(), gr = r.grad(), gw = w.grad(), gb = layer ? b.grad() : Tensor();
    Tensor x2 = x.detach().set_requires_grad(true), r2 = r.detach().set_requires_grad(true);
    Tensor w2 = w.detach().set_requires_grad(true), b2 = b.detach().set_requires_grad(true);
    Tensor h = x2 + r2, y;
    if (layer) {
      Tensor centered = h - mean(h, -1, true);
      y = centered * rsqrt(mean(square(centered), -1, true) + eps) * w2 + b2;
    } else {
      y = h * rsqrt(mean(square(h), -1, true) + eps) * w2;
    }
    autograd::backward({y, h}, {gy, gh});
    EXPECT_LE(rel_or_abs_error(f.y.to_vector(), y.to_vector()), 1e-12);
    EXPECT_LE(rel_or_abs_error(f.h.to_vector(), h.to_vector()), 1e-15);
    EXPECT_LE(rel_or_abs_error(gx.to_vector(), x2.grad().to_vector()), 1e-12);
    EXPECT_LE(rel_or_abs_error(gr.to_vector(), r2.grad().to_vector()), 1e-12);
    EXPECT_LE(rel_or_abs_error(gw.to_vector(), w2.grad().to_vector()), 1e-12);
    if (layer) {
      EXPECT_LE(rel_or_abs_error(gb.to_vector(), b2.grad().to_vector()), 1e-12);
    }
  }
}

TEST(FusedNorm, Gradcheck) {
  Generator gen(31);
  Tensor x = randn({5, 7}, gen, DType::f64, Device::cpu(), 0.3, 1.0), r = randn({5, 7}, gen, DType::f64);
  Tensor w = randn({7}, gen, DType::f64, Device::cpu(), 1.0, 0.3), b = randn({7}, gen, DType::f64);
  for (Tensor* t : {&x, &r, &w, &b}) t->set_requires_grad(true);
  // Both outputs, weighted differently, so the residual-stream gradient is checked too.
  auto mix = [](const NormOutput& o) { return sum(o.y * o.y) + sum(o.h * o.y) * 0.5 + sum(o.h) * 0.25; };
  EXPECT_GRADCHECK(gradcheck([&](const std::vector<Tensor>& in) { return mix(rms_norm(in[0], in[1], in[2], 1e-5)); },
                        {x, r, w}));
  EXPECT_GRADCHECK(gradcheck(
      [&](const std::vector<Tensor>& in) { return mix(layer_norm(in[0], in[1], in[2], in[3], 1e-5)); }, {x, r, w, b}));
  // Without a residual (the nn/layers.cpp case).
  EXPECT_GRADCHECK(gradcheck(
      [&](const std::vector<Tensor>& in) { return sum(layer_norm(in[0], Tensor(), in[1], Tensor(), 1e-5).y * in[0]); },
      {x, w}));
  EXPECT_GRADCHECK(gradcheck(
      [&](const std::vector<Tensor>& in) { return sum(rms_norm(in[0], Tensor(), in[1], 1e-5).y * in[0]); }, {x, w}));
}
