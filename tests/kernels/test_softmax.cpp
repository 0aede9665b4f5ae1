// softmax / log_softmax (last dim) and their backward on CPU against f64 references, over a
// table of shapes, three layouts (the transposed one has a strided last dim) and f32 / f64 /
// bf16; plus numerical stability for huge logits and a finite-difference check of the
// backward formulas.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/ops.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::kernels;
using namespace somnus::test;

namespace {

const Shape kShapes[] = {{1}, {7}, {1, 1}, {3, 5}, {4, 5, 33}, {2, 3, 4, 9}, {3, 5000}, {400, 129}};

// Reference softmax (log: log_softmax) over the last dim, in f64.
std::vector<double> ref_softmax(const std::vector<double>& x, int64_t n, bool log) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / n; ++r) {
    const double* xr = x.data() + r * n;
    double m = -INFINITY;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, xr[i]);
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += std::exp(xr[i] - m);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = log ? xr[i] - m - std::log(s) : std::exp(xr[i] - m) / s;
  }
  return y;
}

// Reference backward. Rows up to 64 go through the explicit Jacobian
//   softmax:     dx_i = Σ_j dy_j · ∂y_j/∂x_i = Σ_j dy_j y_j (δ_ij − y_i)
//   log_softmax: dx_i = Σ_j dy_j (δ_ij − p_i),  p = exp(y)
// longer rows through the same sums factored (O(n) instead of O(n²)).
std::vector<double> ref_backward(const std::vector<double>& y, const std::vector<double>& dy, int64_t n, bool log) {
  std::vector<double> dx(y.size());
  for (size_t r = 0; r < y.size() / n; ++r) {
    const double* yr = y.data() + r * n;
    const double* gr = dy.data() + r * n;
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += log ? gr[j] : gr[j] * yr[j];
    for (int64_t i = 0; i < n; ++i) {
      double acc = 0.0;
      if (n <= 64) {
        for (int64_t j = 0; j < n; ++j) {
          const double delta = i == j ? 1.0 : 0.0;
          acc += log ? gr[j] * (delta - std::exp(yr[i])) : gr[j] * yr[j] * (delta - yr[i]);
        }
      } else {
        acc = log ? gr[i] - std::exp(yr[i]) * s : yr[i] * (gr[i] - s);
      }
      dx[r * n + i] = acc;
    }
  }
  return dx;
}

}  // namespace

TEST(Softmax, ForwardMatchesReference) {
  Generator g(21);
  for (bool log : {false, true}) {
    for (const Shape& shape : kShapes) {
      for (DType dtype : kFloatTypes) {
        for (Layout layout : kLayouts) {
          SCOPED_TRACE(fmt::format("{} {}", log ? "log_softmax" : "softmax", case_name(shape, dtype, layout)));
          const Tensor x = randn_as(shape, dtype, layout, g);
          const Tensor y = log ? log_softmax(x) : softmax(x);
          ASSERT_EQ(y.shape(), shape);
          ASSERT_TRUE(y.is_contiguous());
          EXPECT_LE(rel_or_abs_error(y, ref_softmax(x.to_vector(), shape.back(), log)), tol_for(dtype));
        }
      }
    }
  }
}

TEST(Softmax, BackwardMatchesReference) {
  Generator g(22);
  for (bool log : {false, true}) {
    for (const Shape& shape : kShapes) {
      for (DType dtype : kFloatTypes) {
        for (Layout layout : kLayouts) {
          SCOPED_TRACE(fmt::format("{}_backward {}", log ? "log_softmax" : "softmax", case_name(shape, dtype, layout)));
          const Tensor x = randn_as(shape, dtype, Layout::contiguous, g);
          // y as a (possibly strided) view into a NaN-poisoned buffer: the backward must follow
          // its strides and never touch the gaps.
          const Tensor y_in = with_layout(shape, layout, [&](const Shape& s) { return Tensor::full(s, NAN, dtype); });
          y_in.copy_(log ? log_softmax(x) : softmax(x));
          const Tensor dy = randn_as(shape, dtype, layout, g);
          const Tensor dx = log ? log_softmax_backward(y_in, dy) : softmax_backward(y_in, dy);
          ASSERT_EQ(dx.shape(), shape);
          EXPECT_LE(rel_or_abs_error(dx, ref_backward(y_in.to_vector(), dy.to_vector(), shape.back(), log)), tol_for(dtype));
        }
      }
    }
  }
}

TEST(Softmax, StableForHugeLogits) {
  // exp(1000) overflows; the max-subtracted form must not.
  const Tensor x = Tensor::from_vector({1000, 1001, 1002, -1000, 0, 1000}, {2, 3});
  const std::vector<double> ref = ref_softmax(x.to_vector(), 3, false);
  EXPECT_LE(rel_or_abs_error(softmax(x), ref), 1e-6);
  const std::vector<double> lref = ref_softmax(x.to_vector(), 3, true);
  EXPECT_LE(rel_or_abs_error(log_softmax(x), lref), 1e-6);
  // Rows sum to one.
  Generator g(23);
  const Tensor p = softmax(randn({17, 301}, g, DType::f32, Device::cpu(), 0.0, 10.0));
  for (double s : reduce(Reduce::sum, p, 1).to_vector()) EXPECT_NEAR(s, 1.0, 1e-5);
}

// Finite differences of L(x) = Σ dy ∘ f(x) in f64: checks the backward formula itself.
TEST(Softmax, BackwardMatchesFiniteDifferences) {
  Generator g(24);
  const double h = 1e-6;
  for (bool log : {false, true}) {
    SCOPED_TRACE(log ? "log_softmax" : "softmax");
    const Tensor x = randn({3, 6}, g, DType::f64);
    const Tensor dy = randn({3, 6}, g, DType::f64);
    const std::vector<double> xv = x.to_vector(), gv = dy.to_vector();
    auto loss = [&](const std::vector<double>& v) {
      const Tensor y = log ? log_softmax(Tensor::from_vector(v, {3, 6}, DType::f64))
                           : softmax(Tensor::from_vector(v, {3, 6}, DType::f64));
      const std::vector<double> yv = y.to_vector();
      double l = 0.0;
      for (size_t i = 0; i < yv.size(); ++i) l += gv[i] * yv[i];
      return l;
    };
    std::vector<double> fd(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) {
      std::vector<double> up = xv, dn = xv;
      up[i] += h;
      dn[i] -= h;
      fd[i] = (loss(up) - loss(dn)) / (2 * h);
    }
    const Tensor y = log ? log_softmax(x) : softmax(x);
    const Tensor dx = log ? log_softmax_backward(y, dy) : softmax_backward(y, dy);
    EXPECT_LE(rel_or_abs_error(dx, fd), 1e-7);
  }
}
