// Elementwise ops on CPU against naive f64 references: every unary op and its backward,
// every binary op with broadcasting, and where — over a table of shapes (odd sizes, 0-dim,
// one large enough for the threaded path), three memory layouts, and f32 / f64 / bf16.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/ops.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::kernels;
using namespace somnus::test;

namespace {

struct UnaryCase {
  Unary op;
  double scalar;  // the exponent for pow
  bool positive;  // domain needs x > 0: inputs drawn from [0.5, 2]
};

const UnaryCase kUnaryCases[] = {
    {Unary::neg, 0, false},    {Unary::exp, 0, false},     {Unary::log, 0, true},     {Unary::sqrt, 0, true},
    {Unary::rsqrt, 0, true},   {Unary::tanh, 0, false},    {Unary::sigmoid, 0, false}, {Unary::relu, 0, false},
    {Unary::gelu, 0, false},   {Unary::silu, 0, false},    {Unary::pow, 3.0, false},  {Unary::pow, 2.0, false},
    {Unary::pow, 0.5, true},   {Unary::pow, -1.5, true},   {Unary::abs, 0, false},    {Unary::square, 0, false},
};

// (300, 129) has 38700 elements: above the threshold where the kernels go multi-threaded.
const Shape kShapes[] = {{}, {1}, {7}, {3, 5}, {4, 33, 17}, {2, 3, 4, 5}, {300, 129}};

double ref_unary(Unary op, double x, double p) {
  const double k = std::sqrt(2.0 / M_PI);
  switch (op) {
    case Unary::neg: return -x;
    case Unary::exp: return std::exp(x);
    case Unary::log: return std::log(x);
    case Unary::sqrt: return std::sqrt(x);
    case Unary::rsqrt: return 1.0 / std::sqrt(x);
    case Unary::tanh: return std::tanh(x);
    case Unary::sigmoid: return 1.0 / (1.0 + std::exp(-x));
    case Unary::relu: return x > 0 ? x : 0.0;
    case Unary::gelu: return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
    case Unary::silu: return x / (1.0 + std::exp(-x));
    case Unary::pow: return std::pow(x, p);
    case Unary::abs: return std::fabs(x);
    case Unary::square: return x * x;
  }
  return NAN;
}

double ref_unary_grad(Unary op, double x, double p) {
  const double k = std::sqrt(2.0 / M_PI);
  switch (op) {
    case Unary::neg: return -1.0;
    case Unary::exp: return std::exp(x);
    case Unary::log: return 1.0 / x;
    case Unary::sqrt: return 0.5 / std::sqrt(x);
    case Unary::rsqrt: return -0.5 * std::pow(x, -1.5);
    case Unary::tanh: return 1.0 - std::tanh(x) * std::tanh(x);
    case Unary::sigmoid: {
      const double s = 1.0 / (1.0 + std::exp(-x));
      return s * (1.0 - s);
    }
    case Unary::relu: return x > 0 ? 1.0 : 0.0;
    case Unary::gelu: {
      const double u = k * (x + 0.044715 * x * x * x);
      const double du = k * (1.0 + 3.0 * 0.044715 * x * x);
      const double t = std::tanh(u);
      return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
    }
    case Unary::silu: {
      const double s = 1.0 / (1.0 + std::exp(-x));
      return s + x * s * (1.0 - s);
    }
    case Unary::pow: return p * std::pow(x, p - 1.0);
    case Unary::abs: return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0);
    case Unary::square: return 2.0 * x;
  }
  return NAN;
}

Tensor unary_input(const UnaryCase& c, const Shape& shape, DType dtype, Layout layout, Generator& g) {
  return c.positive ? rand_as(shape, dtype, layout, g, 0.5, 2.0) : randn_as(shape, dtype, layout, g);
}

}  // namespace

TEST(Unary, MatchesReference) {
  Generator g(1);
  int checked = 0;
  for (const UnaryCase& c : kUnaryCases) {
    for (const Shape& shape : kShapes) {
      for (DType dtype : kFloatTypes) {
        for (Layout layout : kLayouts) {
          SCOPED_TRACE(fmt::format("{}({}) {}", unary_name(c.op), c.scalar, case_name(shape, dtype, layout)));
          const Tensor x = unary_input(c, shape, dtype, layout, g);
          const Tensor y = unary(c.op, x, c.scalar);
          ASSERT_EQ(y.shape(), shape);
          ASSERT_EQ(y.dtype(), dtype);
          ASSERT_TRUE(y.is_contiguous());
          std::vector<double> ref = x.to_vector();
          for (double& v : ref) v = ref_unary(c.op, v, c.scalar);
          EXPECT_LE(rel_or_abs_error(y, ref), tol_for(dtype));
          ++checked;
        }
      }
    }
  }
  EXPECT_EQ(checked, 16 * 7 * 3 * 3);
}

TEST(Unary, BackwardMatchesReference) {
  Generator g(2);
  for (const UnaryCase& c : kUnaryCases) {
    for (const Shape& shape : kShapes) {
      for (DType dtype : kFloatTypes) {
        for (Layout layout : kLayouts) {
          SCOPED_TRACE(fmt::format("{}({}) backward {}", unary_name(c.op), c.scalar, case_name(shape, dtype, layout)));
          const Tensor x = unary_input(c, shape, dtype, layout, g);
          const Tensor dy = randn_as(shape, dtype, layout == Layout::strided ? Layout::transposed : layout, g);
          const Tensor dx = unary_backward(c.op, x, dy, c.scalar);
          ASSERT_EQ(dx.shape(), shape);
          const std::vector<double> xv = x.to_vector(), gv = dy.to_vector();
          std::vector<double> ref(xv.size());
          for (size_t i = 0; i < xv.size(); ++i) ref[i] = gv[i] * ref_unary_grad(c.op, xv[i], c.scalar);
          EXPECT_LE(rel_or_abs_error(dx, ref), tol_for(dtype));
        }
      }
    }
  }
}

// An independent check of the backward formulas (kernel and reference alike): central
// finite differences of the forward kernel in f64.
TEST(Unary, BackwardMatchesFiniteDifferences) {
  Generator g(3);
  const double h = 1e-6;
  for (const UnaryCase& c : kUnaryCases) {
    SCOPED_TRACE(fmt::format("{}({})", unary_name(c.op), c.scalar));
    const Tensor x = unary_input(c, {5, 7}, DType::f64, Layout::contiguous, g);
    const Tensor dy = randn({5, 7}, g, DType::f64);
    const std::vector<double> xv = x.to_vector(), gv = dy.to_vector();
    const std::vector<double> up = unary(c.op, binary(Binary::add, x, Tensor::scalar(h, DType::f64)), c.scalar).to_vector();
    const std::vector<double> dn = unary(c.op, binary(Binary::sub, x, Tensor::scalar(h, DType::f64)), c.scalar).to_vector();
    std::vector<double> fd(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) fd[i] = gv[i] * (up[i] - dn[i]) / (2 * h);
    EXPECT_LE(rel_or_abs_error(unary_backward(c.op, x, dy, c.scalar), fd), 1e-6);
  }
}

// ---------------------------------------------------------------- binary

namespace {

struct BinaryShapes {
  Shape a, b;
};

const BinaryShapes kBinaryShapes[] = {
    {{4, 8}, {4, 8}},          {{3, 5, 7}, {7}},       {{3, 1, 7}, {1, 5, 1}}, {{}, {2, 3}},
    {{6, 1}, {}},              {{33, 65}, {33, 1}},    {{2, 3, 4}, {2, 3, 4}}, {{257, 300}, {300}},
    {{1, 300}, {257, 1}},      {{5}, {5}},             {{}, {}},
};

constexpr Binary kBinaryOps[] = {Binary::add, Binary::sub, Binary::mul, Binary::div, Binary::maximum, Binary::minimum};

double ref_binary(Binary op, double a, double b) {
  switch (op) {
    case Binary::add: return a + b;
    case Binary::sub: return a - b;
    case Binary::mul: return a * b;
    case Binary::div: return a / b;
    case Binary::maximum: return std::max(a, b);
    case Binary::minimum: return std::min(a, b);
  }
  return NAN;
}

}  // namespace

TEST(Binary, MatchesReferenceWithBroadcasting) {
  Generator g(4);
  for (Binary op : kBinaryOps) {
    for (const BinaryShapes& s : kBinaryShapes) {
      for (DType dtype : kFloatTypes) {
        for (Layout la : kLayouts) {
          const Layout lb = kLayouts[(static_cast<int>(la) + 1) % 3];  // a and b in different layouts
          SCOPED_TRACE(fmt::format("{} a {} ({}) b {} ({}) {}", binary_name(op), shape_str(s.a), layout_name(la),
                                   shape_str(s.b), layout_name(lb), dtype_name(dtype)));
          const Tensor a = randn_as(s.a, dtype, la, g);
          // Keep divisors away from zero.
          const Tensor b = op == Binary::div ? rand_as(s.b, dtype, lb, g, 0.5, 2.0) : randn_as(s.b, dtype, lb, g);
          const Tensor y = binary(op, a, b);
          const Shape out_shape = broadcast_ref(s.a, s.b);
          ASSERT_EQ(y.shape(), out_shape);
          const std::vector<double> av = a.to_vector(), bv = b.to_vector();
          std::vector<double> ref(shape_numel(out_shape));
          for (int64_t i = 0; i < static_cast<int64_t>(ref.size()); ++i) {
            const auto idx = unravel(i, out_shape);
            ref[i] = ref_binary(op, av[ravel_broadcast(idx, s.a)], bv[ravel_broadcast(idx, s.b)]);
          }
          EXPECT_LE(rel_or_abs_error(y, ref), tol_for(dtype));
        }
      }
    }
  }
}

TEST(Binary, ExpandedOperandsAndNanPropagation) {
  // An operand that is itself a stride-0 expanded view.
  Generator g(5);
  const Tensor row = randn({1, 9}, g);
  const Tensor a = row.expand({6, 9});
  const Tensor b = randn({6, 9}, g);
  const std::vector<double> rv = row.to_vector(), bv = b.to_vector();
  std::vector<double> ref(54);
  for (int i = 0; i < 54; ++i) ref[i] = rv[i % 9] * bv[i];
  EXPECT_LE(rel_or_abs_error(binary(Binary::mul, a, b), ref), 1e-6);

  const Tensor n = Tensor::from_vector({NAN, 1.0, 2.0}, {3});
  const Tensor m = Tensor::from_vector({0.0, NAN, 1.0}, {3});
  const std::vector<double> mx = binary(Binary::maximum, n, m).to_vector();
  EXPECT_TRUE(std::isnan(mx[0]));
  EXPECT_TRUE(std::isnan(mx[1]));
  EXPECT_EQ(mx[2], 2.0);
}

// ---------------------------------------------------------------- where

TEST(Where, MatchesReferenceWithBroadcasting) {
  struct Case {
    Shape cond, a, b;
  };
  const Case cases[] = {
      {{4, 8}, {4, 8}, {4, 8}}, {{3, 1}, {1, 5}, {3, 5}}, {{7}, {2, 7}, {}},
      {{2, 1, 6}, {4, 1}, {1}}, {{200, 170}, {200, 170}, {170}},
  };
  constexpr DType kCondTypes[] = {DType::i64, DType::i32, DType::f32, DType::bf16, DType::f64};
  Generator g(6);
  for (const Case& c : cases) {
    for (DType ct : kCondTypes) {
      for (DType dtype : kFloatTypes) {
        for (Layout layout : kLayouts) {
          SCOPED_TRACE(fmt::format("cond {} {} a {} b {} {} {}", shape_str(c.cond), dtype_name(ct), shape_str(c.a),
                                   shape_str(c.b), dtype_name(dtype), layout_name(layout)));
          // Values in {-1, 0, 1}: nonzero of either sign selects a.
          const Tensor cond =
              with_layout(c.cond, layout, [&](const Shape& s) { return randint(-1, 2, s, g).to(ct); });
          const Tensor a = randn_as(c.a, dtype, layout, g);
          const Tensor b = randn_as(c.b, dtype, Layout::contiguous, g);
          const Tensor y = where(cond, a, b);
          const Shape out_shape = broadcast_ref(broadcast_ref(c.cond, c.a), c.b);
          ASSERT_EQ(y.shape(), out_shape);
          const std::vector<double> cv = cond.to_vector(), av = a.to_vector(), bv = b.to_vector();
          std::vector<double> ref(shape_numel(out_shape));
          for (int64_t i = 0; i < static_cast<int64_t>(ref.size()); ++i) {
            const auto idx = unravel(i, out_shape);
            ref[i] = cv[ravel_broadcast(idx, c.cond)] != 0 ? av[ravel_broadcast(idx, c.a)] : bv[ravel_broadcast(idx, c.b)];
          }
          // A selection is exact in every dtype.
          EXPECT_EQ(y.to_vector(), ref);
        }
      }
    }
  }
}

// The f32 exp-based ops use a vectorised exp: check it element by element over the whole
// f32 range, including overflow, underflow and NaN, not just on randn inputs.
TEST(Unary, Float32ExpFamilyOverFullRange) {
  std::vector<double> xs;
  for (double x = -87.0; x <= 88.5; x += 0.0137) xs.push_back(x);
  const Tensor x = Tensor::from_vector(xs, {static_cast<int64_t>(xs.size())}, DType::f32);
  const std::vector<double> xv = x.to_vector();  // the f32-rounded inputs
  const std::vector<double> e = unary(Unary::exp, x).to_vector();
  double worst = 0.0;
  for (size_t i = 0; i < xv.size(); ++i) worst = std::max(worst, std::fabs(e[i] - std::exp(xv[i])) / std::exp(xv[i]));
  EXPECT_LE(worst, 3e-7);  // a few ulp, element-wise

  const Tensor edge = Tensor::from_vector({-1000, -100, 100, 1000, NAN, 0}, {6}, DType::f32);
  const std::vector<double> ee = unary(Unary::exp, edge).to_vector();
  EXPECT_EQ(ee[0], 0.0);
  EXPECT_EQ(ee[1], 0.0);
  EXPECT_TRUE(std::isinf(ee[2]) && ee[2] > 0);
  EXPECT_TRUE(std::isinf(ee[3]) && ee[3] > 0);
  EXPECT_TRUE(std::isnan(ee[4]));
  EXPECT_EQ(ee[5], 1.0);
  const std::vector<double> sg = unary(Unary::sigmoid, edge).to_vector();
  EXPECT_EQ(sg[0], 0.0);
  EXPECT_EQ(sg[3], 1.0);
  EXPECT_EQ(sg[5], 0.5);
  const std::vector<double> ge = unary(Unary::gelu, edge).to_vector();
  EXPECT_EQ(ge[0], 0.0);
  EXPECT_EQ(ge[3], 1000.0);
  EXPECT_TRUE(std::isnan(ge[4]));
  const std::vector<double> si = unary(Unary::silu, edge).to_vector();
  EXPECT_EQ(si[1], 0.0);
  EXPECT_EQ(si[2], 100.0);
}

// d(x^0)/dx is 0 everywhere, x = 0 included (the CUDA twin returns 0 for p == 0; PyTorch's
// pow backward masks exponent 0 to 0). The CPU kernel computed dy · 0 · 0^−1 = NaN at x = 0.
TEST(Unary, PowZeroBackwardIsZeroAtZero) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    const Tensor x = Tensor::from_vector({0.0, -0.0, 2.0, -3.0}, {4}, dt);
    const Tensor dy = Tensor::from_vector({1.0, 2.0, 3.0, 4.0}, {4}, dt);
    EXPECT_EQ(unary_backward(Unary::pow, x, dy, 0.0).to_vector(), (std::vector<double>{0, 0, 0, 0}))
        << dtype_name(dt);
    EXPECT_EQ(unary(Unary::pow, x, 0.0).to_vector(), (std::vector<double>{1, 1, 1, 1})) << dtype_name(dt);
  }
}
