// The backward engine: topological order, gradient summing, accumulation, given gradients,
// no_grad, detach, requires_grad propagation, freeing the graph, and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "autograd/functions.h"
#include "autograd/node.h"
#include "kernels/ops.h"
#include "tensor/allocator.h"
#include "tensor/random.h"

using namespace somnus;
using autograd::TensorList;

namespace {

Tensor leaf(const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  Tensor t = randn(shape, gen, DType::f64);
  t.set_requires_grad(true);
  return t;
}

void expect_values(const Tensor& t, const std::vector<double>& expected, double tol = 1e-12) {
  ASSERT_TRUE(t.defined());
  const std::vector<double> v = t.to_vector();
  ASSERT_EQ(v.size(), expected.size());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(v[i], expected[i], tol) << "element " << i;
}

// An identity op (or a sum of its inputs) whose backward logs its name, to observe the order.
Tensor logged(const std::string& name, const TensorList& inputs, std::vector<std::string>& log) {
  Tensor out = inputs[0].detach().clone();
  for (size_t i = 1; i < inputs.size(); ++i) out = kernels::binary(kernels::Binary::add, out, inputs[i]);
  const size_t n = inputs.size();
  return autograd::record(name, inputs, out, [name, n, &log](const TensorList& g) {
    log.push_back(name);
    return TensorList(n, g[0]);
  });
}

}  // namespace

TEST(Engine, RunsEachNodeOnceInTopologicalOrder) {
  // x -> a -> b -> c, and a -> c directly: a must wait for both b and c.
  std::vector<std::string> log;
  Tensor x = leaf({3}, 1);
  Tensor a = logged("a", {x}, log);
  Tensor b = logged("b", {a}, log);
  Tensor c = logged("c", {a, b}, log);
  Tensor d = logged("d", {c, a}, log);
  backward(d, Tensor::ones({3}, DType::f64));
  EXPECT_EQ(log, (std::vector<std::string>{"d", "c", "b", "a"}));
  // a receives 1 (from d) + 1 (from c) + 1 (via b): summed before a runs.
  expect_values(x.grad(), {3, 3, 3});
}

TEST(Engine, DiamondSumsGradients) {
  Tensor x = leaf({4}, 2);
  Tensor a = mul(x, 2.0);
  Tensor b = mul(x, 3.0);
  Tensor loss = sum(mul(a, b));  // 6 x²
  backward(loss);
  const std::vector<double> xv = x.to_vector();
  std::vector<double> expected;
  for (double v : xv) expected.push_back(12.0 * v);
  expect_values(x.grad(), expected);
}

TEST(Engine, LeafUsedTwiceInOneOpGetsBothGradients) {
  Tensor x = leaf({5}, 3);
  backward(sum(mul(x, x)));
  std::vector<double> expected;
  for (double v : x.to_vector()) expected.push_back(2.0 * v);
  expect_values(x.grad(), expected);
}

TEST(Engine, AccumulatesAcrossBackwardCalls) {
  Tensor x = leaf({3}, 4);
  Tensor w = leaf({3}, 5);
  backward(sum(mul(x, w)));
  Tensor first = x.grad();
  expect_values(first, w.to_vector());
  backward(sum(mul(x, w)));  // a fresh forward: the first graph was freed
  std::vector<double> twice;
  for (double v : w.to_vector()) twice.push_back(2.0 * v);
  expect_values(x.grad(), twice);
  // `+=` is in place: a handle taken after the first call sees the sum.
  expect_values(first, twice);
  EXPECT_TRUE(first.storage() == x.grad().storage());
}

TEST(Engine, BackwardWithGivenGradient) {
  Tensor x = leaf({2, 3}, 6);
  Tensor w = leaf({3}, 7);
  Tensor y = mul(x, w);  // broadcast
  Generator gen(8);
  Tensor g = randn({2, 3}, gen, DType::f64);
  backward(y, g);
  const auto gv = g.to_vector(), wv = w.to_vector(), xv = x.to_vector();
  std::vector<double> dx(6), dw(3, 0.0);
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 3; ++j) {
      dx[i * 3 + j] = gv[i * 3 + j] * wv[j];
      dw[j] += gv[i * 3 + j] * xv[i * 3 + j];
    }
  }
  expect_values(x.grad(), dx);
  expect_values(w.grad(), dw);
  // The given gradient is not aliased by .grad (later accumulation must not write into it).
  EXPECT_FALSE(x.grad().storage() == g.storage());
}

TEST(Engine, BackwardOnALeafAccumulatesDirectly) {
  Tensor x = leaf({2}, 9);
  Tensor g = Tensor::from_vector({1.5, -2}, {2}, DType::f64);
  backward(x, g);
  expect_values(x.grad(), {1.5, -2});
}

TEST(Engine, NoGradRecordsNothing) {
  Tensor x = leaf({3}, 10);
  EXPECT_TRUE(is_grad_enabled());
  {
    NoGradGuard no_grad;
    EXPECT_FALSE(is_grad_enabled());
    Tensor y = exp(mul(x, 2.0));
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
    EXPECT_THROW(backward(sum(y)), Error);
    {
      NoGradGuard nested;
      EXPECT_FALSE(is_grad_enabled());
    }
    EXPECT_FALSE(is_grad_enabled());
    {
      EnableGradGuard enable;
      EXPECT_TRUE(exp(x).grad_fn() != nullptr);
    }
    EXPECT_FALSE(is_grad_enabled());
  }
  EXPECT_TRUE(is_grad_enabled());
  EXPECT_FALSE(x.grad().defined());
}

TEST(Engine, GradModeIsThreadLocal) {
  NoGradGuard no_grad;
  bool other_thread_enabled = false;
  std::thread t([&] { other_thread_enabled = is_grad_enabled(); });
  t.join();
  EXPECT_TRUE(other_thread_enabled);
  EXPECT_FALSE(is_grad_enabled());
}

TEST(Engine, DetachCutsTheGraph) {
  Tensor x = leaf({3}, 11);
  Tensor y = mul(x, 2.0);
  Tensor d = y.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_EQ(d.grad_fn(), nullptr);
  EXPECT_TRUE(d.storage() == y.storage());  // same data, no history
  backward(sum(mul(d, x)));                 // d/dx (2x_const · x) = 2x, not 4x
  std::vector<double> expected;
  for (double v : x.to_vector()) expected.push_back(2.0 * v);
  expect_values(x.grad(), expected);
}

TEST(Engine, RequiresGradPropagates) {
  Tensor x = leaf({3}, 12);
  Generator gen(13);
  Tensor c = randn({3}, gen, DType::f64);
  EXPECT_TRUE(x.requires_grad());
  EXPECT_EQ(x.grad_fn(), nullptr);  // a leaf
  EXPECT_FALSE(c.requires_grad());

  Tensor y = mul(x, c);
  EXPECT_TRUE(y.requires_grad());
  ASSERT_NE(y.grad_fn(), nullptr);
  EXPECT_EQ(y.grad_fn()->name(), "mul");
  Tensor z = mul(c, c);
  EXPECT_FALSE(z.requires_grad());
  EXPECT_EQ(z.grad_fn(), nullptr);
  Tensor w = add(z, tanh(y));  // through a mix of constant and tracked inputs
  EXPECT_TRUE(w.requires_grad());
  // The input x was not given a history.
  EXPECT_EQ(x.grad_fn(), nullptr);
  // A constant input gets no edge: no tape below what requires grad.
  EXPECT_TRUE(y.grad_fn()->needs_input_grad(0));
  EXPECT_FALSE(y.grad_fn()->needs_input_grad(1));
  // The integer cast of a tracked tensor carries no gradient.
  Tensor i = to(x, DType::i64);
  EXPECT_FALSE(i.requires_grad());
}

TEST(Engine, ViewOpThatReturnsItsInputDoesNotRewriteHistory) {
  Tensor x = leaf({3, 1}, 14);
  Tensor y = squeeze(x, 0);  // size 3, nothing squeezed: the raw op hands back x
  EXPECT_EQ(x.grad_fn(), nullptr);
  EXPECT_NE(y.grad_fn(), nullptr);
  Tensor c = contiguous(x);  // already contiguous: x itself, as in PyTorch
  EXPECT_TRUE(c.same(x));
  backward(sum(y));
  expect_values(x.grad(), {1, 1, 1});
}

TEST(Engine, NonScalarWithoutGradientThrows) {
  Tensor x = leaf({2, 3}, 15);
  Tensor y = mul(x, 2.0);
  try {
    backward(y);
    FAIL() << "expected somnus::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(2, 3)"), std::string::npos) << e.what();
  }
  // A wrong-shaped gradient is refused too.
  EXPECT_THROW(backward(y, Tensor::ones({3, 2}, DType::f64)), Error);
  // And a tensor without history.
  Generator gen(16);
  EXPECT_THROW(backward(sum(randn({2}, gen, DType::f64))), Error);
}

TEST(Engine, GraphIsFreedAfterBackward) {
  Tensor x = leaf({3}, 17);
  Tensor loss = sum(exp(x));
  backward(loss);
  EXPECT_THROW(backward(loss), Error);  // the saved tensors are gone

  Tensor x2 = leaf({3}, 18);
  Tensor loss2 = sum(exp(x2));
  backward(loss2, Tensor(), /*retain_graph=*/true);
  backward(loss2);
  std::vector<double> expected;
  for (double v : x2.to_vector()) expected.push_back(2.0 * std::exp(v));
  expect_values(x2.grad(), expected);
}

TEST(Engine, BackwardReleasesSavedActivations) {
  const int64_t n = 1 << 16;
  const int64_t bytes = n * 8;
  Tensor x = leaf({n}, 19);
  Tensor loss = sum(sigmoid(tanh(exp(x))));  // tanh saves exp(x), sigmoid saves tanh(...)
  const int64_t before = cpu_allocator().stats().current;
  backward(loss);
  const int64_t after = cpu_allocator().stats().current;
  // Two saved activations freed, x.grad allocated: at least one tensor's worth less.
  EXPECT_LE(after, before - bytes) << "before " << before << " after " << after;
  EXPECT_TRUE(loss.grad_fn() != nullptr);  // the handle still exists, its node is released
}

TEST(Engine, UnusedOutputsGetZeroGradient) {
  Tensor x = leaf({5}, 20);
  std::vector<Tensor> parts = split(x, {2, 3}, 0);
  backward(sum(mul(parts[1], 3.0)));
  expect_values(x.grad(), {0, 0, 3, 3, 3});
}

TEST(Engine, MultipleRoots) {
  Tensor x = leaf({2}, 21);
  Tensor a = mul(x, 2.0), b = mul(x, 5.0);
  autograd::backward(TensorList{a, b}, TensorList{Tensor::ones({2}, DType::f64), Tensor::full({2}, 0.5, DType::f64)});
  expect_values(x.grad(), {4.5, 4.5});
}

TEST(Engine, BackwardRulesRecordNoHistory) {
  Tensor x = leaf({3}, 22);
  backward(sum(mul(x, x)));
  EXPECT_EQ(x.grad().grad_fn(), nullptr);
  EXPECT_FALSE(x.grad().requires_grad());
}

TEST(Engine, DeepGraphsNeitherRecurseInBackwardNorOnDestruction) {
  Tensor x = leaf({2}, 23);
  {
    Tensor y = x;
    for (int i = 0; i < 100000; ++i) y = add(y, 1.0);
    // dropped without backward: the chain is unlinked iteratively
  }
  Tensor y = x;
  for (int i = 0; i < 100000; ++i) y = mul(y, 1.0);
  backward(sum(y));
  expect_values(x.grad(), {1, 1});
}
