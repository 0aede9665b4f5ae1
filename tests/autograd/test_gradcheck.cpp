// A finite-difference gradcheck (f64, CPU) for every differentiable function of
// autograd/functions.h, with broadcasting and non-contiguous inputs, and the checks that
// gradcheck itself can fail.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "autograd/node.h"
#include "kernels/ops.h"
#include "tensor/random.h"

using namespace somnus;
using autograd::TensorList;

namespace {

// Fresh uniform f64 inputs in [lo, hi) that require grad.
Tensor input(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Generator gen(seed);
  Tensor t = rand(shape, gen, DType::f64, Device::cpu(), lo, hi);
  t.set_requires_grad(true);
  return t;
}

// A non-contiguous (transposed) input of the given 2-D shape.
Tensor transposed_input(int64_t rows, int64_t cols, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Generator gen(seed);
  Tensor t = rand({cols, rows}, gen, DType::f64, Device::cpu(), lo, hi).transpose(0, 1);
  EXPECT_FALSE(t.is_contiguous());
  t.set_requires_grad(true);
  return t;
}

Tensor ids(const std::vector<double>& values, const Shape& shape, DType dtype = DType::i64) {
  return Tensor::from_vector(values, shape, dtype);
}

#define EXPECT_GRADCHECK(...)                   \
  do {                                          \
    auto result_ = gradcheck(__VA_ARGS__);      \
    EXPECT_TRUE(result_.ok) << result_.message; \
  } while (0)

using BinaryFn = std::function<Tensor(const Tensor&, const Tensor&)>;

struct BinaryCase {
  std::string name;
  BinaryFn fn;
  bool positive_b;  // keep b away from 0 (div)
};

std::vector<BinaryCase> binary_cases() {
  return {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, false},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }, false},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, false},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, true},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }, false},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }, false},
      {"operator+", [](const Tensor& a, const Tensor& b) { return a + b; }, false},
      {"operator-", [](const Tensor& a, const Tensor& b) { return a - b; }, false},
      {"operator*", [](const Tensor& a, const Tensor& b) { return a * b; }, false},
      {"operator/", [](const Tensor& a, const Tensor& b) { return a / b; }, true},
  };
}

}  // namespace

// ---------------------------------------------------------------- binary

TEST(Gradcheck, BinaryOpsWithBroadcasting) {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 4}, {3, 4}}, {{3, 4}, {4}},    {{4}, {3, 4}},    {{2, 1, 4}, {3, 1}},
      {{}, {3, 4}},     {{3, 4}, {1, 4}}, {{3, 1}, {1, 4}},
  };
  uint64_t seed = 100;
  for (const BinaryCase& c : binary_cases()) {
    for (const auto& [sa, sb] : shapes) {
      SCOPED_TRACE(c.name + " " + shape_str(sa) + " with " + shape_str(sb));
      Tensor a = input(sa, seed++);
      Tensor b = c.positive_b ? input(sb, seed++, 0.5, 2.0) : input(sb, seed++);
      EXPECT_GRADCHECK([&](const TensorList& x) { return c.fn(x[0], x[1]); }, {a, b});
    }
  }
}

TEST(Gradcheck, BinaryOpsNonContiguous) {
  uint64_t seed = 200;
  for (const BinaryCase& c : binary_cases()) {
    SCOPED_TRACE(c.name);
    Tensor a = transposed_input(3, 4, seed++);
    Tensor b = c.positive_b ? transposed_input(3, 4, seed++, 0.5, 2.0) : transposed_input(3, 4, seed++);
    EXPECT_GRADCHECK([&](const TensorList& x) { return c.fn(x[0], x[1]); }, {a, b});
    // A broadcast row, sliced with a step (non-contiguous, 1-D).
    Generator gen(seed++);
    Tensor row = rand({8}, gen, DType::f64, Device::cpu(), 0.5, 2.0).slice(0, 0, 8, 2);
    row.set_requires_grad(true);
    EXPECT_GRADCHECK([&](const TensorList& x) { return c.fn(x[0], x[1]); }, {a, row});
  }
}

TEST(Gradcheck, BinaryOpsWithOneConstantSide) {
  uint64_t seed = 300;
  for (const BinaryCase& c : binary_cases()) {
    SCOPED_TRACE(c.name);
    Tensor a = input({3, 4}, seed++);
    Generator gen(seed++);
    Tensor b = rand({4}, gen, DType::f64, Device::cpu(), 0.5, 2.0);  // no grad
    EXPECT_GRADCHECK([&](const TensorList& x) { return c.fn(x[0], x[1]); }, {a, b});
    EXPECT_GRADCHECK([&](const TensorList& x) { return c.fn(x[1], x[0]); }, {a, b});
  }
}

TEST(Gradcheck, ScalarOverloadsAndOperators) {
  Tensor x = input({3, 4}, 400, 0.5, 2.0);
  const std::vector<std::pair<std::string, std::function<Tensor(const Tensor&)>>> fns = {
      {"add(x, s)", [](const Tensor& t) { return add(t, 2.5); }},
      {"sub(x, s)", [](const Tensor& t) { return sub(t, 2.5); }},
      {"sub(s, x)", [](const Tensor& t) { return sub(2.5, t); }},
      {"mul(x, s)", [](const Tensor& t) { return mul(t, -1.5); }},
      {"div(x, s)", [](const Tensor& t) { return div(t, 4.0); }},
      {"div(s, x)", [](const Tensor& t) { return div(3.0, t); }},
      {"x + s", [](const Tensor& t) { return t + 1.0; }},
      {"s + x", [](const Tensor& t) { return 1.0 + t; }},
      {"x - s", [](const Tensor& t) { return t - 1.0; }},
      {"s - x", [](const Tensor& t) { return 1.0 - t; }},
      {"x * s", [](const Tensor& t) { return t * 3.0; }},
      {"s * x", [](const Tensor& t) { return 3.0 * t; }},
      {"x / s", [](const Tensor& t) { return t / 3.0; }},
      {"s / x", [](const Tensor& t) { return 3.0 / t; }},
      {"-x", [](const Tensor& t) { return -t; }},
  };
  for (const auto& [name, f] : fns) {
    SCOPED_TRACE(name);
    EXPECT_GRADCHECK([&](const TensorList& in) { return f(in[0]); }, {x});
  }
}

TEST(Gradcheck, MaximumAndMinimumSplitTiesEvenly) {
  // Not differentiable at a tie; like PyTorch, each side gets half.
  Tensor a = Tensor::from_vector({1, 2, 3}, {3}, DType::f64);
  Tensor b = Tensor::from_vector({1, 5, 0}, {3}, DType::f64);
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  backward(sum(maximum(a, b)));
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{0.5, 0, 1}));
  EXPECT_EQ(b.grad().to_vector(), (std::vector<double>{0.5, 1, 0}));
  a.set_grad(Tensor());
  b.set_grad(Tensor());
  backward(sum(minimum(a, b)));
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{0.5, 1, 0}));
  EXPECT_EQ(b.grad().to_vector(), (std::vector<double>{0.5, 0, 1}));
}

// ---------------------------------------------------------------- unary

TEST(Gradcheck, UnaryOps) {
  struct UnaryCase {
    std::string name;
    std::function<Tensor(const Tensor&)> fn;
    double lo, hi;
  };
  const std::vector<UnaryCase> cases = {
      {"neg", [](const Tensor& t) { return neg(t); }, -2, 2},
      {"exp", [](const Tensor& t) { return exp(t); }, -2, 2},
      {"log", [](const Tensor& t) { return log(t); }, 0.5, 2},
      {"sqrt", [](const Tensor& t) { return sqrt(t); }, 0.5, 2},
      {"rsqrt", [](const Tensor& t) { return rsqrt(t); }, 0.5, 2},
      {"tanh", [](const Tensor& t) { return tanh(t); }, -2, 2},
      {"sigmoid", [](const Tensor& t) { return sigmoid(t); }, -3, 3},
      {"relu", [](const Tensor& t) { return relu(t); }, -1, 1},
      {"gelu", [](const Tensor& t) { return gelu(t); }, -3, 3},
      {"silu", [](const Tensor& t) { return silu(t); }, -3, 3},
      {"abs", [](const Tensor& t) { return abs(t); }, -1, 1},
      {"square", [](const Tensor& t) { return square(t); }, -2, 2},
      {"pow 2", [](const Tensor& t) { return pow(t, 2.0); }, -2, 2},
      {"pow 3", [](const Tensor& t) { return pow(t, 3.0); }, -2, 2},
      {"pow 0.5", [](const Tensor& t) { return pow(t, 0.5); }, 0.5, 2},
      {"pow -1.5", [](const Tensor& t) { return pow(t, -1.5); }, 0.5, 2},
      {"pow 2.5", [](const Tensor& t) { return pow(t, 2.5); }, 0.5, 2},
  };
  uint64_t seed = 500;
  for (const UnaryCase& c : cases) {
    SCOPED_TRACE(c.name);
    auto f = [&](const TensorList& x) { return c.fn(x[0]); };
    EXPECT_GRADCHECK(f, {input({3, 5}, seed++, c.lo, c.hi)});
    EXPECT_GRADCHECK(f, {transposed_input(4, 3, seed++, c.lo, c.hi)});
    EXPECT_GRADCHECK(f, {input({}, seed++, c.lo, c.hi)});
  }
}

// ---------------------------------------------------------------- where

TEST(Gradcheck, Where) {
  const Tensor cond = Tensor::from_vector({1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1}, {3, 4}, DType::f64);
  const Tensor cond_i = cond.to(DType::i64);
  EXPECT_GRADCHECK([&](const TensorList& x) { return where(cond, x[0], x[1]); },
                   {input({3, 4}, 600), input({3, 4}, 601)});
  // Broadcasting: a (4,), b (3, 1); cond of an integer dtype.
  EXPECT_GRADCHECK([&](const TensorList& x) { return where(cond_i, x[0], x[1]); },
                   {input({4}, 602), input({3, 1}, 603)});
  // cond larger than both values.
  EXPECT_GRADCHECK([&](const TensorList& x) { return where(cond, x[0], x[1]); }, {input({1, 4}, 604), input({}, 605)});
  // A scalar fallback (masked fill), non-contiguous a.
  EXPECT_GRADCHECK([&](const TensorList& x) { return where(cond, x[0], -3.0); }, {transposed_input(3, 4, 606)});
  // cond gets no gradient, and where's output does not depend on it through autograd.
  Tensor a = input({3, 4}, 607), b = input({3, 4}, 608);
  backward(sum(where(cond, a, b)));
  EXPECT_EQ(a.grad().to_vector(), cond.to_vector());
}

// ---------------------------------------------------------------- reductions

TEST(Gradcheck, ReductionsOverADim) {
  using Reduction = std::function<Tensor(const Tensor&, int64_t, bool)>;
  const std::vector<std::pair<std::string, Reduction>> reductions = {
      {"sum", [](const Tensor& t, int64_t d, bool k) { return sum(t, d, k); }},
      {"mean", [](const Tensor& t, int64_t d, bool k) { return mean(t, d, k); }},
      {"max", [](const Tensor& t, int64_t d, bool k) { return max(t, d, k); }},
  };
  uint64_t seed = 700;
  for (const auto& [name, f] : reductions) {
    for (int64_t dim : {0, 1, 2, -1}) {
      for (bool keepdim : {false, true}) {
        SCOPED_TRACE(name + " dim " + std::to_string(dim) + (keepdim ? " keepdim" : ""));
        auto fn = [&](const TensorList& x) { return f(x[0], dim, keepdim); };
        EXPECT_GRADCHECK(fn, {input({2, 3, 4}, seed++)});
        // Non-contiguous: a permuted view.
        Generator gen(seed++);
        Tensor p = rand({4, 2, 3}, gen, DType::f64, Device::cpu(), -1, 1).permute({1, 2, 0});
        p.set_requires_grad(true);
        EXPECT_GRADCHECK(fn, {p});
      }
    }
  }
}

TEST(Gradcheck, ReductionsOverAllElements) {
  uint64_t seed = 800;
  for (const auto& [name, f] : std::vector<std::pair<std::string, std::function<Tensor(const Tensor&)>>>{
           {"sum", [](const Tensor& t) { return sum(t); }},
           {"mean", [](const Tensor& t) { return mean(t); }},
           {"max", [](const Tensor& t) { return max(t); }}}) {
    SCOPED_TRACE(name);
    auto fn = [&](const TensorList& x) { return f(x[0]); };
    EXPECT_GRADCHECK(fn, {input({3, 4}, seed++)});
    EXPECT_GRADCHECK(fn, {transposed_input(4, 5, seed++)});
  }
}

TEST(Gradcheck, MaxRoutesGradientToTheMaximum) {
  Tensor x = Tensor::from_vector({1, 7, 3, 9, 2, 4}, {2, 3}, DType::f64);
  x.set_requires_grad(true);
  backward(sum(max(x, 1)));
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{0, 1, 0, 1, 0, 0}));
  x.set_grad(Tensor());
  backward(max(x));
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{0, 0, 0, 1, 0, 0}));
  // Ties over all elements share the gradient evenly (as PyTorch's max()).
  Tensor t = Tensor::from_vector({5, 1, 5, 5}, {4}, DType::f64);
  t.set_requires_grad(true);
  backward(max(t));
  const std::vector<double> g = t.grad().to_vector();
  EXPECT_NEAR(g[0], 1.0 / 3, 1e-15);
  EXPECT_EQ(g[1], 0.0);
  EXPECT_NEAR(g[2] + g[3], 2.0 / 3, 1e-15);
}

// Infinite and NaN maxima over all elements get the gradient as in PyTorch's max(): x − y is
// NaN for x == y == ±inf, so a mask built from it alone gave NaN everywhere.
TEST(Gradcheck, MaxOverAllWithInfAndNaN) {
  const double inf = INFINITY, nan = NAN;
  struct Case {
    std::vector<double> x, grad;
  };
  for (const Case& c : std::vector<Case>{
           {{1, inf, 2}, {0, 1, 0}},            // torch.tensor([1, inf, 2]).max() -> grad [0, 1, 0]
           {{inf, 3, inf}, {0.5, 0, 0.5}},      // tied infinite maxima share it
           {{-inf, -inf}, {0.5, 0.5}},          // everything masked out: all tied at −inf
           {{-inf, 2, -inf}, {0, 1, 0}},
           {{1, nan, 3}, {0, 1, 0}},            // the NaN is the max
           {{nan, 2, nan, inf}, {0.5, 0, 0.5, 0}},
       }) {
    Tensor x = Tensor::from_vector(c.x, {static_cast<int64_t>(c.x.size())}, DType::f64);
    x.set_requires_grad(true);
    backward(max(x));
    EXPECT_EQ(x.grad().to_vector(), c.grad) << "x = " << x.str();
  }
}

// maximum / minimum at infinities and NaN. Their gradient mask came from where(y − b, …),
// and y − b is NaN when y and b are the same infinity: maximum(3, inf) gave a (3) the whole
// gradient and b (inf, the result) none, and a tie of infinities did not share it.
TEST(Gradcheck, MaximumMinimumWithInfAndNaN) {
  const double inf = INFINITY, nan = NAN;
  const std::vector<double> av = {3, inf, inf, nan, 1, -inf, nan}, bv = {inf, 2, inf, 1, 1, -inf, nan};
  // PyTorch 1.13: the same for ties and infinities; a NaN operand here takes the gradient
  // alone (torch gives it to both), as in max(x).
  const std::vector<double> max_a = {0, 1, 0.5, 1, 0.5, 0.5, 0.5}, max_b = {1, 0, 0.5, 0, 0.5, 0.5, 0.5};
  const std::vector<double> min_a = {1, 0, 0.5, 1, 0.5, 0.5, 0.5}, min_b = {0, 1, 0.5, 0, 0.5, 0.5, 0.5};
  for (bool is_max : {true, false}) {
    Tensor a = Tensor::from_vector(av, {7}, DType::f64), b = Tensor::from_vector(bv, {7}, DType::f64);
    a.set_requires_grad(true);
    b.set_requires_grad(true);
    backward(sum(is_max ? maximum(a, b) : minimum(a, b)));
    EXPECT_EQ(a.grad().to_vector(), is_max ? max_a : min_a) << (is_max ? "maximum" : "minimum");
    EXPECT_EQ(b.grad().to_vector(), is_max ? max_b : min_b) << (is_max ? "maximum" : "minimum");
  }
  // Broadcast b: its gradient sums over the broadcast dim.
  Tensor a = Tensor::from_vector({1, 5, -inf, 2}, {2, 2}, DType::f64), b = Tensor::from_vector({2, -inf}, {2}, DType::f64);
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  backward(sum(maximum(a, b)));
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{0, 1, 0, 1}));
  EXPECT_EQ(b.grad().to_vector(), (std::vector<double>{2, 0}));
}

// ---------------------------------------------------------------- softmax

TEST(Gradcheck, SoftmaxAndLogSoftmax) {
  uint64_t seed = 900;
  for (bool log : {false, true}) {
    SCOPED_TRACE(log ? "log_softmax" : "softmax");
    for (int64_t dim : {-1, 0, 1}) {
      SCOPED_TRACE("dim " + std::to_string(dim));
      auto fn = [&](const TensorList& x) { return log ? log_softmax(x[0], dim) : softmax(x[0], dim); };
      EXPECT_GRADCHECK(fn, {input({3, 5}, seed++, -3, 3)});
      EXPECT_GRADCHECK(fn, {transposed_input(4, 6, seed++, -3, 3)});
      EXPECT_GRADCHECK(fn, {input({2, 3, 4}, seed++, -3, 3)});
    }
  }
}

// ---------------------------------------------------------------- matmul

TEST(Gradcheck, Matmul) {
  struct MatmulCase {
    std::string name;
    Shape a, b;
    bool bias, gelu;
  };
  const std::vector<MatmulCase> cases = {
      {"2d", {3, 4}, {4, 5}, false, false},
      {"2d bias", {3, 4}, {4, 5}, true, false},
      {"2d gelu", {3, 4}, {4, 5}, false, true},
      {"2d bias gelu", {3, 4}, {4, 5}, true, true},
      {"batched", {2, 3, 4}, {2, 4, 5}, false, false},
      {"batched bias gelu", {2, 3, 4}, {2, 4, 5}, true, true},
      {"shared b", {2, 3, 4}, {4, 5}, false, false},
      {"shared b bias gelu", {2, 3, 4}, {4, 5}, true, true},
      // A 3-D b with a batch of one is shared too (kernels::matmul takes it); its gradient
      // must sum over a's batch back to (1, K, N), not come back as (Bt, K, N).
      {"batch-1 b", {3, 4, 5}, {1, 5, 2}, false, false},
      {"batch-1 b bias gelu", {3, 4, 5}, {1, 5, 2}, true, true},
  };
  uint64_t seed = 1000;
  for (const MatmulCase& c : cases) {
    SCOPED_TRACE(c.name);
    TensorList in = {input(c.a, seed++), input(c.b, seed++)};
    if (c.bias) in.push_back(input({c.b.back()}, seed++));
    const bool bias = c.bias, gelu_epilogue = c.gelu;
    EXPECT_GRADCHECK([&](const TensorList& x) { return matmul(x[0], x[1], bias ? x[2] : Tensor(), gelu_epilogue); },
                     in);
  }
}

TEST(Gradcheck, MatmulTransposedViewsAndPartialGrads) {
  // a and b as transposed views (BLAS transpose flags), with bias and gelu.
  Tensor a = transposed_input(3, 4, 1100), b = transposed_input(4, 5, 1101), bias = input({5}, 1102);
  EXPECT_GRADCHECK([](const TensorList& x) { return matmul(x[0], x[1], x[2], true); }, {a, b, bias});
  // Batched, with the batch's inner dims transposed.
  Generator gen(1103);
  Tensor bt = rand({2, 5, 4}, gen, DType::f64, Device::cpu(), -1, 1).transpose(1, 2);
  bt.set_requires_grad(true);
  EXPECT_GRADCHECK([](const TensorList& x) { return matmul(x[0], x[1]); }, {input({2, 3, 4}, 1104), bt});
  // Only some inputs require grad.
  Generator gen2(1105);
  Tensor const_a = rand({3, 4}, gen2, DType::f64);
  Tensor const_b = rand({4, 5}, gen2, DType::f64);
  EXPECT_GRADCHECK([](const TensorList& x) { return matmul(x[0], x[1], x[2]); }, {const_a, input({4, 5}, 1106), bias});
  EXPECT_GRADCHECK([](const TensorList& x) { return matmul(x[0], x[1], x[2], true); },
                   {input({3, 4}, 1107), const_b, bias});
  EXPECT_GRADCHECK([](const TensorList& x) { return matmul(x[0], x[1], x[2], true); },
                   {const_a, const_b, input({5}, 1108)});
}

// ---------------------------------------------------------------- indexing

TEST(Gradcheck, Embedding) {
  for (DType dt : {DType::i64, DType::i32}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor tokens = ids({0, 1, 1, 5, 3, 0, 2, 5}, {2, 4}, dt);  // repeats accumulate
    EXPECT_GRADCHECK([&](const TensorList& x) { return embedding(x[0], tokens); }, {input({6, 3}, 1200)});
  }
  // Rows never looked up get zero gradient.
  Tensor w = input({4, 2}, 1201);
  backward(sum(embedding(w, ids({1, 1}, {2}))));
  EXPECT_EQ(w.grad().to_vector(), (std::vector<double>{0, 0, 2, 2, 0, 0, 0, 0}));
}

TEST(Gradcheck, Gather) {
  const Tensor index1 = ids({0, 3, 3, 1, 2, 2, 0, 0, 1, 3, 1, 1, 2, 0, 3}, {3, 5});
  EXPECT_GRADCHECK([&](const TensorList& x) { return gather(x[0], 1, index1); }, {input({3, 4}, 1300)});
  const Tensor index0 = ids({2, 0, 1, 2, 2, 2, 0, 1}, {2, 4});
  EXPECT_GRADCHECK([&](const TensorList& x) { return gather(x[0], 0, index0); }, {input({3, 4}, 1301)});
  EXPECT_GRADCHECK([&](const TensorList& x) { return gather(x[0], -1, index1); }, {transposed_input(3, 4, 1302)});
}

TEST(Gradcheck, IndexSelect) {
  const Tensor rows = ids({3, 0, 3, 1}, {4});
  const Tensor cols = ids({2, 2, 0}, {3}, DType::i32);
  EXPECT_GRADCHECK([&](const TensorList& x) { return index_select(x[0], 0, rows); }, {input({4, 3}, 1400)});
  EXPECT_GRADCHECK([&](const TensorList& x) { return index_select(x[0], 1, cols); }, {input({4, 3}, 1401)});
  EXPECT_GRADCHECK([&](const TensorList& x) { return index_select(x[0], 0, rows); }, {transposed_input(4, 3, 1402)});
}

TEST(Gradcheck, Concat) {
  EXPECT_GRADCHECK(
      [](const TensorList& x) {
        return concat({x[0], x[1], x[2]}, 1);
      },
      {input({2, 3}, 1500), input({2, 1}, 1501), transposed_input(2, 2, 1502)});
  Generator gen(1503);
  Tensor constant = rand({1, 3}, gen, DType::f64);
  EXPECT_GRADCHECK([](const TensorList& x) { return concat({x[0], x[1]}, 0); }, {input({2, 3}, 1504), constant});
  EXPECT_GRADCHECK(
      [](const TensorList& x) {
        return concat({x[0], x[1]}, -1);
      },
      {input({2, 2, 1}, 1505), input({2, 2, 3}, 1506)});
}

TEST(Gradcheck, SplitAndChunk) {
  Tensor x = input({2, 6}, 1600);
  // Every output (the multi-output form of gradcheck projects each one).
  EXPECT_GRADCHECK(autograd::MultiFn([](const TensorList& in) { return split(in[0], {1, 3, 2}, 1); }), {x});
  // Only the middle piece used: the others contribute zero gradient.
  EXPECT_GRADCHECK([](const TensorList& in) { return exp(split(in[0], {1, 3, 2}, 1)[1]); }, {x});
  // Two of three used, non-contiguous input.
  EXPECT_GRADCHECK(autograd::MultiFn([](const TensorList& in) {
                     auto p = split(in[0], {2, 1, 1}, 0);
                     return TensorList{p[0], mul(p[2], 2.0)};
                   }),
                   {transposed_input(4, 3, 1601)});
  EXPECT_GRADCHECK(autograd::MultiFn([](const TensorList& in) { return chunk(in[0], 3, 0); }), {input({7, 2}, 1602)});
  EXPECT_EQ(chunk(input({7, 2}, 1603), 3, 0).size(), 3u);
}

// ---------------------------------------------------------------- views and copies

TEST(Gradcheck, Views) {
  struct ViewCase {
    std::string name;
    std::function<Tensor(const Tensor&)> fn;
    bool needs_contiguous;  // view() of a transposed tensor cannot be done without a copy
  };
  const std::vector<ViewCase> views = {
      {"view",
       [](const Tensor& t) {
         return view(t, {2, 6});
       },
       true},
      {"view -1",
       [](const Tensor& t) {
         return view(t, {-1, 3});
       },
       true},
      {"view split last dim",
       [](const Tensor& t) {
         return view(t, {3, 2, 2});
       },
       false},
      {"reshape",
       [](const Tensor& t) {
         return reshape(t, {6, 2});
       },
       false},
      {"flatten", [](const Tensor& t) { return flatten(t); }, false},
      {"transpose", [](const Tensor& t) { return transpose(t, 0, 1); }, false},
      {"permute",
       [](const Tensor& t) {
         return permute(unsqueeze(t, 0), {2, 0, 1});
       },
       false},
      {"slice", [](const Tensor& t) { return slice(t, 1, 1, 4, 2); }, false},
      {"slice negative", [](const Tensor& t) { return slice(t, 0, -2, 3); }, false},
      {"select", [](const Tensor& t) { return select(t, 0, 1); }, false},
      {"select negative", [](const Tensor& t) { return select(t, 1, -1); }, false},
      {"expand",
       [](const Tensor& t) {
         return expand(unsqueeze(t, 1), {3, 2, 4});
       },
       false},
      {"expand new dims",
       [](const Tensor& t) {
         return expand(select(t, 0, 2), {2, 3, 4});
       },
       false},
      {"unsqueeze", [](const Tensor& t) { return unsqueeze(t, -1); }, false},
      {"squeeze", [](const Tensor& t) { return squeeze(unsqueeze(t, 1), 1); }, false},
      {"contiguous", [](const Tensor& t) { return contiguous(transpose(t, 0, 1)); }, false},
  };
  uint64_t seed = 1700;
  for (const ViewCase& c : views) {
    SCOPED_TRACE(c.name);
    auto fn = [&](const TensorList& x) { return mul(c.fn(x[0]), 1.0); };
    EXPECT_GRADCHECK(fn, {input({3, 4}, seed++)});
    if (!c.needs_contiguous) EXPECT_GRADCHECK(fn, {transposed_input(3, 4, seed++)});
  }
}

TEST(Gradcheck, ViewOfNonContiguousThrowsButReshapeCopies) {
  Tensor t = transposed_input(3, 4, 1800);
  EXPECT_THROW(view(t, {12}), Error);
  EXPECT_GRADCHECK([](const TensorList& x) { return reshape(x[0], {12}); }, {t});
}

TEST(Gradcheck, DtypeConversion) {
  // An f32 round trip is exact only to f32 precision: a larger step keeps the finite
  // difference meaningful (its error is ~ulp_f32 / eps).
  EXPECT_GRADCHECK([](const TensorList& x) { return mul(to(to(x[0], DType::f32), DType::f64), 3.0); },
                   {input({3, 4}, 1900)}, 1e-3, 1e-4, 1e-3);
  EXPECT_GRADCHECK([](const TensorList& x) { return to(mul(to(x[0], DType::bf16), 2.0), DType::f64); },
                   {input({5}, 1901)}, 1e-1, 1e-1, 5e-2);
  Tensor x = input({3}, 1902);
  Tensor same = to(x, DType::f64);
  EXPECT_TRUE(same.same(x));
  Tensor y = to(x, DType::f32);
  EXPECT_EQ(y.dtype(), DType::f32);
  backward(sum(y));
  EXPECT_EQ(x.grad().dtype(), DType::f64);  // the gradient comes back in the input's dtype
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{1, 1, 1}));
}

// ---------------------------------------------------------------- compositions

TEST(Gradcheck, SmallLanguageModelHead) {
  // embedding -> matmul+bias+gelu -> matmul -> log_softmax -> gather(targets) -> mean: an NLL.
  const Tensor tokens = ids({1, 4, 2, 2, 0, 3}, {2, 3});
  const Tensor targets = ids({2, 0, 1, 3, 3, 4}, {2, 3, 1});
  auto model = [&](const TensorList& p) {
    Tensor h = embedding(p[0], tokens);           // (2, 3, 4)
    h = matmul(h, p[1], p[2], true);              // (2, 3, 6)
    Tensor logits = matmul(h, p[3]);              // (2, 3, 5)
    Tensor logp = log_softmax(logits);            // (2, 3, 5)
    return neg(mean(gather(logp, -1, targets)));  // ()
  };
  EXPECT_GRADCHECK(model, {input({5, 4}, 2000), input({4, 6}, 2001), input({6}, 2002), input({6, 5}, 2003)});
}

// ---------------------------------------------------------------- gradcheck itself

TEST(Gradcheck, DetectsAWrongBackward) {
  // exp whose backward is off by 1%.
  auto wrong_exp = [](const TensorList& x) {
    Tensor y = kernels::unary(kernels::Unary::exp, x[0]);
    return autograd::record("wrong_exp", {x[0]}, y, [y = y.detach()](const TensorList& g) {
      Tensor scaled = kernels::binary(kernels::Binary::mul, g[0], y);
      return TensorList{kernels::binary(kernels::Binary::mul, scaled, Tensor::scalar(1.01, DType::f64))};
    });
  };
  auto r = gradcheck(wrong_exp, {input({3, 4}, 2100)});
  EXPECT_FALSE(r.ok);
  EXPECT_FALSE(static_cast<bool>(r));
  EXPECT_EQ(r.failed, 12);
  EXPECT_EQ(r.checked, 12);
  EXPECT_EQ(r.worst_input, 0);
  EXPECT_EQ(r.worst_index.size(), 2u);
  EXPECT_NEAR(r.worst_analytic / r.worst_numeric, 1.01, 1e-6);
  EXPECT_NE(r.message.find("FAILED"), std::string::npos) << r.message;

  // mul that forgets b's gradient: analytic zero against a non-zero numeric one.
  auto forgetful_mul = [](const TensorList& x) {
    Tensor y = kernels::binary(kernels::Binary::mul, x[0], x[1]);
    return autograd::record("forgetful_mul", {x[0], x[1]}, y, [b = x[1].detach()](const TensorList& g) {
      return TensorList{kernels::binary(kernels::Binary::mul, g[0], b), Tensor()};
    });
  };
  auto r2 = gradcheck(forgetful_mul, {input({4}, 2101), input({4}, 2102)});
  EXPECT_FALSE(r2.ok) << r2.message;
  EXPECT_EQ(r2.worst_input, 1);
  EXPECT_EQ(r2.worst_analytic, 0.0);
  EXPECT_EQ(r2.failed, 4);
}

TEST(Gradcheck, PassesReportAndLeaveInputsUntouched) {
  Tensor x = transposed_input(3, 4, 2200);
  const std::vector<double> before = x.to_vector();
  auto r = gradcheck([](const TensorList& in) { return tanh(in[0]); }, {x});
  EXPECT_TRUE(r) << r.message;  // the result converts to bool for EXPECT_TRUE
  EXPECT_EQ(r.checked, 12);
  EXPECT_EQ(r.failed, 0);
  EXPECT_LT(r.max_abs_error, 1e-8);
  EXPECT_NE(r.message.find("passed"), std::string::npos);
  EXPECT_EQ(x.to_vector(), before);  // perturbations restored exactly
  EXPECT_FALSE(x.grad().defined());  // the caller's grad is not written
}

TEST(Gradcheck, RejectsBadInputs) {
  Generator gen(2300);
  Tensor f32 = randn({3}, gen, DType::f32);
  f32.set_requires_grad(true);
  EXPECT_THROW(gradcheck([](const TensorList& in) { return exp(in[0]); }, {f32}), Error);
  Tensor overlapping = input({1, 3}, 2301).expand({2, 3});
  overlapping.set_requires_grad(true);
  EXPECT_THROW(gradcheck([](const TensorList& in) { return exp(in[0]); }, {overlapping}), Error);
  // Nothing to check is a failure, not a vacuous pass.
  Tensor constant = randn({3}, gen, DType::f64);
  EXPECT_FALSE(gradcheck([](const TensorList& in) { return exp(in[0]); }, {constant}).ok);
}
