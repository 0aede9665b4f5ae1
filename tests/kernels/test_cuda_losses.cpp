// CUDA fused lm-head losses and the GPU sampler against their CPU twins (ctest label `cuda`).
// Without a device every test calls GTEST_SKIP() with a message; it never passes silently.
// Outputs are compared with ‖cuda − cpu‖ / ‖cpu‖ (f32: ≤ 1e-4, the chunk GEMMs and the
// row reductions sum in different orders); sampled tokens agree up to f32 rounding at a CDF step.
// Every loss test runs both CUDA loss paths (kernels/cuda/losses.cu): the default one (GEMM
// operands in the input dtype, f32 logits) and SOMNUS_LOSS_CUDA=f32 (the f32-copy fallback).
// bf16 inputs: the CPU twin computes in f32 from the same bf16 values; the default CUDA path
// rounds the gradient chunk d loss / d logits to bf16 before the dh and dW GEMMs (a relative
// error of at most 2^-8 per element, ~1.6e-3 RMS, so ~2e-3 in norm), so dh and dW get 5e-3
// there (a wrong index or a missing term gives ≫ 1e-2); the loss and logp come from f32 logits
// on both sides and keep the f32 tolerances.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <vector>

#include "kernels/losses.h"
#include "kernels/sampling.h"
#include "tensor/allocator.h"
#include "tensor/random.h"
#include "tests/testing.h"

namespace somnus {
namespace {

const char* const kNoCuda = "no CUDA device: CUDA loss/sampling tests need a GPU (run tools/gpu_check.sh on one)";

double rel(const Tensor& out, const Tensor& ref) {
  const std::vector<double> a = out.to_vector(), b = ref.to_vector();
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

Tensor gpu(const Tensor& t) { return t.defined() ? t.to(Device::cuda(0)) : t; }

// Runs body(f32_path) once per CUDA loss path: the default, then SOMNUS_LOSS_CUDA=f32.
template <class F>
void for_each_path(F&& body) {
  somnus::testing::for_each_env("SOMNUS_LOSS_CUDA", {nullptr, "f32"}, [&](const char* v) { body(v != nullptr); });
}

// dh / dW tolerance: bf16 gradient chunks on the default path (see the header).
double grad_tol(DType dt, bool f32_path) { return dt == DType::bf16 && !f32_path ? 5e-3 : 1e-4; }

TEST(CudaLosses, CrossEntropyMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(1);
  const int64_t N = 300, H = 64, V = 1003;
  Tensor h = randn({N, H}, g), W = randn({V, H}, g, DType::f32, Device::cpu(), 0.0, 0.2);
  std::vector<double> y(N);
  for (int64_t n = 0; n < N; ++n) y[n] = n % 11 == 0 ? -100 : (n * 37) % V;
  Tensor yt = Tensor::from_vector(y, {N}, DType::i64);
  LinearCrossEntropyOptions o;
  o.label_smoothing = 0.1;
  o.z_loss = 1e-3;
  o.temperature = 1.3;
  o.chunking.rows_per_chunk = 64;
  auto c = kernels::linear_cross_entropy(h, W, yt, o);
  for_each_path([&](bool) {
    auto d = kernels::linear_cross_entropy(gpu(h), gpu(W), gpu(yt), o);
    EXPECT_LT(rel(d.loss, c.loss), 1e-5);
    EXPECT_LT(rel(d.dh, c.dh), 1e-4);
    EXPECT_LT(rel(d.dW, c.dW), 1e-4);
  });
}

// bf16 h and W (no f32 copies on the default path), the default chunking and forced chunks.
TEST(CudaLosses, CrossEntropyBf16MatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(11);
  const int64_t N = 300, H = 64, V = 1003;
  Tensor h = randn({N, H}, g, DType::bf16), W = randn({V, H}, g, DType::bf16, Device::cpu(), 0.0, 0.2);
  std::vector<double> y(N);
  for (int64_t n = 0; n < N; ++n) y[n] = n % 11 == 0 ? -100 : (n * 37) % V;
  Tensor yt = Tensor::from_vector(y, {N}, DType::i64);
  for (int64_t rows : {int64_t{0}, int64_t{64}}) {
    LinearCrossEntropyOptions o;
    o.label_smoothing = 0.1;
    o.z_loss = 1e-3;
    o.chunking.rows_per_chunk = rows;
    auto c = kernels::linear_cross_entropy(h, W, yt, o);
    for_each_path([&](bool f32_path) {
      auto d = kernels::linear_cross_entropy(gpu(h), gpu(W), gpu(yt), o);
      EXPECT_EQ(d.dh.dtype(), DType::f32);
      EXPECT_LT(rel(d.loss, c.loss), 1e-5) << "rows " << rows;
      EXPECT_LT(rel(d.dh, c.dh), grad_tol(DType::bf16, f32_path)) << "rows " << rows;
      EXPECT_LT(rel(d.dW, c.dW), grad_tol(DType::bf16, f32_path)) << "rows " << rows;
    });
  }
}

TEST(CudaLosses, JSDMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(2);
  const int64_t N = 200, Hs = 48, Ht = 80, V = 777;
  Tensor hs = randn({N, Hs}, g), Ws = randn({V, Hs}, g, DType::f32, Device::cpu(), 0.0, 0.2);
  Tensor ht = randn({N, Ht}, g), Wt = randn({V, Ht}, g, DType::f32, Device::cpu(), 0.0, 0.2);
  std::vector<double> m(N), y(N);
  for (int64_t n = 0; n < N; ++n) {
    m[n] = n % 7 == 0 ? 0 : 1;
    y[n] = n % 5 == 0 ? -100 : (n * 13) % V;
  }
  for (double beta : {0.0, 0.5, 1.0}) {
    LinearJSDOptions o;
    o.beta = beta;
    o.temperature = 2.0;
    o.mask = Tensor::from_vector(m, {N});
    o.targets = Tensor::from_vector(y, {N}, DType::i64);
    o.hard_label_weight = 0.3;
    o.chunking.rows_per_chunk = 32;
    auto c = kernels::linear_jsd(hs, Ws, ht, Wt, o);
    o.mask = gpu(o.mask);
    o.targets = gpu(o.targets);
    for_each_path([&](bool) {
      auto d = kernels::linear_jsd(gpu(hs), gpu(Ws), gpu(ht), gpu(Wt), o);
      EXPECT_LT(rel(d.loss, c.loss), 1e-5) << "beta " << beta;
      EXPECT_LT(rel(d.dh, c.dh), 1e-4) << "beta " << beta;
      EXPECT_LT(rel(d.dW, c.dW), 1e-4) << "beta " << beta;
    });
  }
}

TEST(CudaLosses, JSDBf16MatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(12);
  const int64_t N = 200, Hs = 48, Ht = 80, V = 777;
  Tensor hs = randn({N, Hs}, g, DType::bf16), Ws = randn({V, Hs}, g, DType::bf16, Device::cpu(), 0.0, 0.2);
  Tensor ht = randn({N, Ht}, g, DType::bf16), Wt = randn({V, Ht}, g, DType::bf16, Device::cpu(), 0.0, 0.2);
  std::vector<double> m(N), y(N);
  for (int64_t n = 0; n < N; ++n) {
    m[n] = n % 7 == 0 ? 0 : 1;
    y[n] = n % 5 == 0 ? -100 : (n * 13) % V;
  }
  for (double beta : {0.0, 0.5, 1.0}) {
    for (double hard : {0.0, 0.3}) {
      LinearJSDOptions o;
      o.beta = beta;
      o.temperature = 2.0;
      o.mask = Tensor::from_vector(m, {N});
      o.targets = Tensor::from_vector(y, {N}, DType::i64);
      o.hard_label_weight = hard;
      o.chunking.rows_per_chunk = beta == 0.5 ? 0 : 32;
      auto c = kernels::linear_jsd(hs, Ws, ht, Wt, o);
      o.mask = gpu(o.mask);
      o.targets = gpu(o.targets);
      for_each_path([&](bool f32_path) {
        auto d = kernels::linear_jsd(gpu(hs), gpu(Ws), gpu(ht), gpu(Wt), o);
        EXPECT_LT(rel(d.loss, c.loss), 1e-5) << "beta " << beta << " hard " << hard;
        EXPECT_LT(rel(d.dh, c.dh), grad_tol(DType::bf16, f32_path)) << "beta " << beta << " hard " << hard;
        EXPECT_LT(rel(d.dW, c.dW), grad_tol(DType::bf16, f32_path)) << "beta " << beta << " hard " << hard;
      });
    }
  }
}

TEST(CudaLosses, PPOMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(3);
  const int64_t B = 6, T = 40, H = 32, V = 901;
  Tensor h = randn({B, T, H}, g), W = randn({V, H}, g, DType::f32, Device::cpu(), 0.0, 0.3);
  Tensor act = randint(0, V, {B, T}, g);
  Tensor old = randn({B, T}, g, DType::f32, Device::cpu(), -7.0, 0.5);
  Tensor ref = randn({B, T}, g, DType::f32, Device::cpu(), -7.0, 0.5);
  Tensor adv = randn({B}, g);
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor hd = h.to(dt), Wd = W.to(dt);
    for (PPOLossType lt : {PPOLossType::grpo, PPOLossType::dapo}) {
      LinearPPOOptions o;
      o.kl_beta = 0.05;
      o.loss_type = lt;
      auto c = kernels::linear_ppo_loss(hd, Wd, act, old, ref, adv, Tensor(), o);
      for_each_path([&](bool f32_path) {
        SCOPED_TRACE(dtype_name(dt));
        auto d = kernels::linear_ppo_loss(gpu(hd), gpu(Wd), gpu(act), gpu(old), gpu(ref), gpu(adv), Tensor(), o);
        EXPECT_LT(rel(d.loss, c.loss), 1e-5);
        EXPECT_LT(rel(d.dh, c.dh), grad_tol(dt, f32_path));
        EXPECT_LT(rel(d.dW, c.dW), grad_tol(dt, f32_path));
        EXPECT_LT(rel(d.logp, c.logp), 1e-5);
        EXPECT_NEAR(d.entropy, c.entropy, 1e-4 * c.entropy);
        EXPECT_EQ(d.clip_low_fraction, c.clip_low_fraction);
        EXPECT_EQ(d.clip_high_fraction, c.clip_high_fraction);
      });
    }
  }
}

TEST(CudaSampling, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(4);
  Tensor logits = randn({64, 5000}, g, DType::f32, Device::cpu(), 0.0, 3.0);
  for (auto [t, k, p] : {std::tuple{1.0, int64_t{0}, 1.0}, std::tuple{0.7, int64_t{50}, 1.0},
                         std::tuple{1.0, int64_t{0}, 0.9}, std::tuple{0.0, int64_t{0}, 1.0}}) {
    SamplingOptions o;
    o.temperature = t;
    o.top_k = k;
    o.top_p = p;
    o.seed = 99;
    o.step = 3;
    auto c = kernels::sample_tokens(logits, o);
    auto d = kernels::sample_tokens(gpu(logits), o);
    // The CPU twin weighs in f64, the GPU in f32 (__expf): a draw within ~1e-6 of a CDF step
    // may land on the neighbouring token, so at most one of the 64 rows may differ.
    const std::vector<double> a = d.tokens.to_vector(), b = c.tokens.to_vector();
    int differ = 0;
    for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
    EXPECT_LE(differ, 1) << "t " << t << " k " << k << " p " << p;
    EXPECT_LT(rel(d.logprobs, c.logprobs), 1e-5);
    if (differ == 0) {
      EXPECT_LT(rel(d.sampling_logprobs, c.sampling_logprobs), 1e-4);
    }
  }
}

}  // namespace
}  // namespace somnus
