// Deterministic mode (autograd/engine.h, issue 8 §5): with DeterministicGuard on, CUDA
// backward uses no atomics, so two identical training steps give bitwise-identical
// gradients and weights; gather / index_select backward (scattered on the host) equal the
// CPU's bitwise. The guard's scoping runs everywhere; the CUDA parts skip visibly without a
// device.
#include <gtest/gtest.h>

#include <thread>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "kernels/ops.h"
#include "nn/optim.h"
#include "nn/transformer.h"
#include "tensor/random.h"
#include "tests/nn/nn_testing.h"
#include "tests/testing.h"

using namespace somnus;
using namespace somnus::nn;
using somnus::testing::raw_bytes;
using somnus::nn::testing::tiny_cms;
using somnus::nn::testing::tiny_gpt2;
using somnus::nn::testing::tiny_llama;

namespace {

constexpr const char* kNoCuda = "no CUDA device visible: the deterministic-mode CUDA test did not run";

// Two AdamW steps of a fresh model (fixed seeds) on `device`; returns every parameter and
// every gradient as raw bytes. A parameter the loss does not reach has no gradient (an MoE
// expert that no token was routed to in that step): recorded as such, so both runs must agree
// on which ones those are.
std::vector<std::string> train_twice(const TransformerConfig& cfg, Device device) {
  Generator init(11);
  Transformer model(cfg, init, DType::f32, device);
  AdamW opt({ParamGroup{.params = model.parameters(true), .lr = 1e-2, .name = "all"}});
  Generator data(5);
  const int64_t B = 3, T = cfg.block_size;
  std::vector<std::string> out;
  for (int step = 0; step < 2; ++step) {
    const Tensor ids = randint(0, cfg.vocab_size, {B, T}, data).to(device);
    const Tensor targets = randint(0, cfg.vocab_size, {B, T}, data).to(device);
    opt.zero_grad();
    backward(model.loss(ids, targets).ce);
    for (const Tensor& p : model.parameters(true)) out.push_back(p.grad().defined() ? raw_bytes(p.grad()) : "<none>");
    opt.step();
  }
  for (const Tensor& p : model.parameters(true)) out.push_back(raw_bytes(p));
  return out;
}

}  // namespace

TEST(Deterministic, GuardIsScopedAndPerThread) {
  EXPECT_FALSE(autograd::is_deterministic());
  {
    DeterministicGuard det;
    EXPECT_TRUE(autograd::is_deterministic());
    {
      DeterministicGuard off(false);
      EXPECT_FALSE(autograd::is_deterministic());
    }
    EXPECT_TRUE(autograd::is_deterministic());
    bool other = true;
    std::thread([&] { other = autograd::is_deterministic(); }).join();
    EXPECT_FALSE(other);
  }
  EXPECT_FALSE(autograd::is_deterministic());
}

TEST(Deterministic, CudaTrainingStepsAreBitwiseRepeatable) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  DeterministicGuard det;
  // tiny_cms: an MoE level (top-2), whose scatter back to the tokens adds several expert rows
  // into one token row (index_add_rows in nn/mlp.cpp: fixed-order in deterministic mode).
  for (const TransformerConfig& cfg : {tiny_gpt2(), tiny_llama(), tiny_cms()}) {
    const std::vector<std::string> a = train_twice(cfg, Device::cuda());
    const std::vector<std::string> b = train_twice(cfg, Device::cuda());
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(a[i] == b[i]) << "tensor " << i << " differs between runs";
  }
}

// The same on the CPU (runs everywhere): OpenMP kernels split work statically, so the CPU
// backend is repeatable too.
TEST(Deterministic, CpuTrainingStepsAreBitwiseRepeatable) {
  DeterministicGuard det;
  for (const TransformerConfig& cfg : {tiny_gpt2(), tiny_llama(), tiny_cms()}) {
    const std::vector<std::string> a = train_twice(cfg, Device::cpu());
    const std::vector<std::string> b = train_twice(cfg, Device::cpu());
    ASSERT_EQ(a.size(), b.size());
    int no_grad = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_TRUE(a[i] == b[i]) << "tensor " << i << " differs between runs";
      no_grad += a[i] == "<none>";
    }
    EXPECT_LT(no_grad, static_cast<int>(a.size()) / 4) << "most parameters must get a gradient";
  }
}

// The fixed-order scatter that MoE levels use on CUDA in deterministic mode computes what
// index_add computes (checked on the CPU, where both run everywhere): out[index[i]] += src[i].
TEST(Deterministic, FixedOrderScatterEqualsIndexAdd) {
  Generator gen(9);
  const Tensor src = randn({300, 7}, gen, DType::f64);
  const Tensor index = randint(0, 20, {300}, gen);  // many repeats
  const Tensor a = kernels::index_add({20, 7}, 0, index, src);
  const Tensor b = kernels::embedding_backward(src, index, 20, /*deterministic=*/true);
  EXPECT_LT(somnus::testing::rel_error(a, b), 1e-12);
}

TEST(Deterministic, CudaGatherAndIndexSelectBackwardEqualTheCpu) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  DeterministicGuard det;
  Generator gen(3);
  const Tensor x_cpu = randn({64, 48}, gen);
  const Tensor g_cpu = randn({4096, 48}, gen);
  const Tensor rows = randint(0, 64, {4096}, gen);  // many repeats: atomics would reorder the sums
  Tensor xs[2] = {x_cpu.clone(), x_cpu.to(Device::cuda())};
  std::string grads[2];
  for (int d = 0; d < 2; ++d) {
    xs[d].set_requires_grad(true);
    const Tensor y = index_select(xs[d], 0, rows.to(xs[d].device()));
    backward(y, g_cpu.to(xs[d].device()));
    grads[d] = raw_bytes(xs[d].grad());
  }
  EXPECT_TRUE(grads[0] == grads[1]) << "index_select backward on CUDA differs from the CPU's bitwise";

  const Tensor idx = randint(0, 48, {64, 200}, gen);
  const Tensor g2 = randn({64, 200}, gen);
  for (int d = 0; d < 2; ++d) {
    Tensor x = x_cpu.to(d == 0 ? Device::cpu() : Device::cuda()).detach();
    x.set_requires_grad(true);
    backward(gather(x, 1, idx.to(x.device())), g2.to(x.device()));
    grads[d] = raw_bytes(x.grad());
  }
  EXPECT_TRUE(grads[0] == grads[1]) << "gather backward on CUDA differs from the CPU's bitwise";
}
