// Gradient checkpointing: the same gradients as the plain segment, fewer live bytes after
// the forward (measured with the CPU allocator's stats), random ops replayed identically.
#include <gtest/gtest.h>

#include <iostream>
#include <vector>

#include "autograd/checkpoint.h"
#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "tensor/allocator.h"
#include "tensor/random.h"

using namespace somnus;
using autograd::TensorList;

namespace {

Tensor param(const Shape& shape, uint64_t seed, DType dtype = DType::f64) {
  Generator gen(seed);
  Tensor t = mul(randn(shape, gen, dtype), 0.5);
  t.set_requires_grad(true);
  return t;
}

// A small MLP block with parameters captured by reference (as an nn module's would be).
struct Block {
  Tensor w1 = param({8, 16}, 1), b1 = param({16}, 2), w2 = param({16, 8}, 3);
  Tensor operator()(const Tensor& x) const {
    Tensor h = matmul(x, w1, b1, /*gelu=*/true);  // (N, 16)
    return add(x, tanh(matmul(h, w2)));           // (N, 8), residual
  }
  TensorList params() const { return {w1, b1, w2}; }
  void zero_grad() const {
    for (const Tensor& p : params()) p.set_grad(Tensor());
  }
};

std::vector<std::vector<double>> grads_of(const TensorList& ts) {
  std::vector<std::vector<double>> out;
  for (const Tensor& t : ts) out.push_back(t.grad().defined() ? t.grad().to_vector() : std::vector<double>{});
  return out;
}

}  // namespace

TEST(Checkpoint, SameGradientsAsThePlainSegment) {
  Block block;
  Tensor x = param({4, 8}, 10);
  // Plain.
  backward(sum(square(block(block(x)))));
  const auto plain = grads_of({x, block.w1, block.b1, block.w2});
  x.set_grad(Tensor());
  block.zero_grad();
  // Both blocks checkpointed (the second one's input comes out of the first checkpoint).
  auto seg = [&](const TensorList& in) { return TensorList{block(in[0])}; };
  Tensor h = checkpoint(seg, {x})[0];
  Tensor y = checkpoint(seg, {h})[0];
  EXPECT_NE(y.grad_fn(), nullptr);
  EXPECT_EQ(y.grad_fn()->name(), "checkpoint");
  backward(sum(square(y)));
  const auto ckpt = grads_of({x, block.w1, block.b1, block.w2});
  ASSERT_EQ(plain.size(), ckpt.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    ASSERT_EQ(plain[i].size(), ckpt[i].size()) << "tensor " << i;
    ASSERT_FALSE(plain[i].empty());
    for (size_t j = 0; j < plain[i].size(); ++j) EXPECT_NEAR(plain[i][j], ckpt[i][j], 1e-12) << i << ", " << j;
  }
}

TEST(Checkpoint, ForwardKeepsFewerLiveBytes) {
  // f32 activations of (256, 256): each saved intermediate is 256 KiB.
  const int64_t n = 256;
  Tensor w = param({n, n}, 20, DType::f32);
  Tensor x = param({n, n}, 21, DType::f32);
  auto seg = [&](const TensorList& in) {
    Tensor h = in[0];
    for (int i = 0; i < 6; ++i) h = tanh(matmul(h, w));  // each step saves its input and output
    return TensorList{h};
  };
  Allocator& alloc = cpu_allocator();

  int64_t plain_live = 0, ckpt_live = 0;
  std::vector<double> plain_grad, ckpt_grad;
  {
    const int64_t base = alloc.stats().current;
    Tensor y = seg({x})[0];
    plain_live = alloc.stats().current - base;
    backward(sum(y));
    plain_grad = w.grad().to_vector();
  }
  w.set_grad(Tensor());
  x.set_grad(Tensor());
  {
    const int64_t base = alloc.stats().current;
    alloc.reset_peak();
    Tensor y = checkpoint(seg, {x})[0];
    ckpt_live = alloc.stats().current - base;
    // The no-grad forward frees each intermediate as it goes: the peak stays near two
    // activations, far below the six the plain forward keeps.
    EXPECT_LT(alloc.stats().peak - base, 4 * n * n * 4);
    backward(sum(y));
    ckpt_grad = w.grad().to_vector();
  }
  const int64_t activation = n * n * 4;
  std::cout << "live bytes after the forward: plain " << plain_live << ", checkpointed " << ckpt_live
            << " (one activation " << activation << ")\n";
  EXPECT_GE(plain_live, 6 * activation) << "plain forward keeps the intermediates";
  EXPECT_LE(ckpt_live, activation) << "checkpointed forward keeps only its output";
  ASSERT_EQ(plain_grad.size(), ckpt_grad.size());
  for (size_t j = 0; j < plain_grad.size(); ++j) EXPECT_NEAR(plain_grad[j], ckpt_grad[j], 1e-5) << j;
}

TEST(Checkpoint, RandomOpsReplayIdentically) {
  Tensor x = param({3, 5}, 30);
  // Noise drawn from the default generator inside the segment (as dropout does).
  auto seg = [](const TensorList& in) {
    Tensor noise = randn(in[0].shape(), DType::f64);
    return TensorList{mul(exp(in[0]), noise)};
  };
  manual_seed(7);
  backward(sum(seg({x})[0]));
  const std::vector<double> plain = x.grad().to_vector();
  const uint64_t offset_after_plain = default_generator().offset;
  x.set_grad(Tensor());

  manual_seed(7);
  Tensor y = checkpoint(seg, {x})[0];
  const uint64_t offset_after_forward = default_generator().offset;
  EXPECT_EQ(offset_after_forward, offset_after_plain);
  backward(sum(y));
  // The recompute drew the same noise, and left the generator where the forward did.
  EXPECT_EQ(default_generator().offset, offset_after_forward);
  EXPECT_EQ(x.grad().to_vector(), plain);
}

TEST(Checkpoint, ParametersGetGradsWhenTheInputNeedsNone) {
  Block block;
  Generator gen(40);
  Tensor data = randn({4, 8}, gen, DType::f64);  // input data: no grad
  backward(sum(block(data)));
  const auto plain = grads_of(block.params());
  block.zero_grad();
  Tensor y = checkpoint([&](const TensorList& in) { return TensorList{block(in[0])}; }, {data})[0];
  EXPECT_TRUE(y.requires_grad());
  backward(sum(y));
  EXPECT_EQ(grads_of(block.params()), plain);
  EXPECT_FALSE(data.grad().defined());
}

TEST(Checkpoint, SeveralOutputsSomeUnused) {
  Tensor a = param({3, 4}, 50), b = param({3, 4}, 51);
  auto seg = [](const TensorList& in) { return TensorList{mul(in[0], in[1]), exp(in[0]), sum(in[1])}; };
  // Only outputs 0 and 2 are used.
  auto loss_of = [](const TensorList& outs) { return add(sum(tanh(outs[0])), mul(outs[2], 3.0)); };
  backward(loss_of(seg({a, b})));
  const auto plain = grads_of({a, b});
  a.set_grad(Tensor());
  b.set_grad(Tensor());
  backward(loss_of(checkpoint(seg, {a, b})));
  const auto ckpt = grads_of({a, b});
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_EQ(plain[i].size(), ckpt[i].size());
    for (size_t j = 0; j < plain[i].size(); ++j) EXPECT_NEAR(plain[i][j], ckpt[i][j], 1e-12);
  }
}

TEST(Checkpoint, NestedCheckpointsGiveTheSameGradients) {
  Block inner_block;
  Tensor x = param({2, 8}, 60);
  auto inner = [&](const TensorList& in) { return TensorList{inner_block(in[0])}; };
  auto outer = [&](const TensorList& in) {
    Tensor h = checkpoint(inner, {in[0]})[0];
    return TensorList{mul(checkpoint(inner, {h})[0], 2.0)};
  };
  backward(sum(square(outer({x})[0])));
  const auto plain = grads_of({x, inner_block.w1, inner_block.b1, inner_block.w2});
  x.set_grad(Tensor());
  inner_block.zero_grad();
  backward(sum(square(checkpoint(outer, {x})[0])));
  const auto nested = grads_of({x, inner_block.w1, inner_block.b1, inner_block.w2});
  for (size_t i = 0; i < plain.size(); ++i) {
    ASSERT_EQ(plain[i].size(), nested[i].size());
    for (size_t j = 0; j < plain[i].size(); ++j) EXPECT_NEAR(plain[i][j], nested[i][j], 1e-12);
  }
}

// The recompute records the segment's ops under the deterministic mode of the forward (on CUDA
// it selects the backward kernels without atomics), not under the mode at backward time.
TEST(Checkpoint, RecomputeRunsInTheForwardsDeterministicMode) {
  for (const bool mode : {true, false}) {
    Tensor x = randn({3}, default_generator()).set_requires_grad(true);
    std::vector<bool> seen;
    std::vector<Tensor> out;
    {
      DeterministicGuard forward_mode(mode);
      out = checkpoint(
          [&](const std::vector<Tensor>& in) {
            seen.push_back(autograd::is_deterministic());
            return std::vector<Tensor>{mul(in[0], 2.0)};
          },
          {x});
    }
    DeterministicGuard backward_mode(!mode);
    backward(sum(out[0]));
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[0], mode);
    EXPECT_EQ(seen[1], mode) << "the recompute";
    EXPECT_EQ(autograd::is_deterministic(), !mode) << "the mode at backward is restored";
  }
}

TEST(Checkpoint, UnderNoGradRecordsNothing) {
  Tensor x = param({2, 3}, 70);
  NoGradGuard no_grad;
  Tensor y = checkpoint([](const TensorList& in) { return TensorList{exp(in[0])}; }, {x})[0];
  EXPECT_EQ(y.grad_fn(), nullptr);
  EXPECT_FALSE(y.requires_grad());
}

TEST(Checkpoint, OutputThatIsAnInputKeepsTheInputsHistory) {
  Tensor x = param({3}, 80);
  Tensor y = checkpoint([](const TensorList& in) { return TensorList{in[0]}; }, {x})[0];
  EXPECT_EQ(x.grad_fn(), nullptr);  // x is still a leaf
  backward(sum(mul(y, 2.0)));
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{2, 2, 2}));
}

TEST(Checkpoint, Gradcheck) {
  auto seg = [](const TensorList& in) { return TensorList{tanh(matmul(in[0], in[1], in[2], true))}; };
  auto r = gradcheck([&](const TensorList& x) { return checkpoint(seg, x)[0]; },
                     {param({3, 4}, 90), param({4, 5}, 91), param({5}, 92)});
  EXPECT_TRUE(r.ok) << r.message;
}
