// The fused GELU-MLP backward (issue 4 §2): kernels::matmul_dgelu_bgrad against an f64
// reference of dz = (g @ b) ∘ gelu'(pre) and dbias = Σ_rows dz (the tanh-form GELU's
// derivative written out), for 2-D, 3-D and batched shapes, transposed views, f32/f64/bf16;
// the autograd node mlp_gelu by f64 gradcheck and bitwise against the unfused two-matmul
// path it replaces; nn::MLP using it (and falling back with an unmerged LoRA); bad input.
// The CUDA path (cuBLASLt DGELU_BGRAD) is tested in test_cuda_matmul_dgelu.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/fused_mlp.h"
#include "autograd/gradcheck.h"
#include "kernels/matmul_dgelu.h"
#include "nn/mlp.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::test;

namespace {

// d/dx of 0.5·x·(1 + tanh(c·(x + 0.044715·x³))), c = √(2/π), in f64.
double gelu_grad_ref(double x) {
  const double c = std::sqrt(2.0 / M_PI), u = c * (x + 0.044715 * x * x * x), t = std::tanh(u);
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
}

struct Ref {
  std::vector<double> dz, dbias;
};

// g (Bt, M, K) or (M, K), b (Bt or 1, K, N) or (K, N), pre (…, M, N): the naive triple loop.
Ref reference(const Tensor& g, const Tensor& b, const Tensor& pre) {
  const Tensor g3 = g.dim() == 2 ? g.unsqueeze(0) : g;
  const Tensor b3 = b.dim() == 2 ? b.unsqueeze(0) : b;
  const int64_t Bt = g3.size(0), M = g3.size(1), K = g3.size(2), N = b3.size(2);
  const std::vector<double> gv = g3.contiguous().to_vector(), bv = b3.contiguous().to_vector();
  const std::vector<double> pv = pre.contiguous().to_vector();
  Ref r{std::vector<double>(Bt * M * N), std::vector<double>(N, 0.0)};
  for (int64_t t = 0; t < Bt; ++t) {
    const int64_t tb = b3.size(0) == 1 ? 0 : t;
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += gv[(t * M + i) * K + k] * bv[(tb * K + k) * N + j];
        const int64_t e = (t * M + i) * N + j;
        r.dz[e] = s * gelu_grad_ref(pv[e]);
        r.dbias[j] += r.dz[e];
      }
    }
  }
  return r;
}

double tol(DType d) { return d == DType::f64 ? 1e-12 : d == DType::bf16 ? 2e-2 : 1e-5; }

struct Case {
  Shape g, b;
  bool b_transposed;  // b given as a transposed view of a (N, K) tensor
};

TEST(MatmulDgeluBgrad, MatchesF64Reference) {
  const Case cases[] = {
      {{5, 7}, {7, 12}, false},        // 2-D
      {{2, 3, 7}, {7, 16}, false},     // stacked rows, shared b (the MLP case), N % 8 == 0
      {{2, 3, 7}, {7, 16}, true},      // b = Wᵀ view, as the MLP passes it
      {{3, 4, 5}, {3, 5, 9}, false},   // per-batch b
      {{1, 1, 1}, {1, 1}, false},      // one element
  };
  Generator gen(11);
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(fmt::format("g {} b {}{} {}", shape_str(c.g), shape_str(c.b), c.b_transposed ? "ᵀ" : "",
                               dtype_name(dt)));
      const Tensor g = randn(c.g, gen, dt);
      const Tensor b = c.b_transposed ? randn({c.b[1], c.b[0]}, gen, dt).transpose(0, 1) : randn(c.b, gen, dt);
      Shape ps(c.g.begin(), c.g.end() - 1);
      ps.push_back(c.b.back());
      const Tensor pre = randn(ps, gen, dt) * 2.0;  // across GELU's curved part
      const Ref ref = reference(g, b, pre);
      for (bool want : {true, false}) {
        const kernels::MatmulDgeluBgrad r = kernels::matmul_dgelu_bgrad(g, b, pre, want);
        ASSERT_EQ(r.dz.shape(), ps);
        ASSERT_EQ(r.dz.dtype(), dt);
        EXPECT_LT(rel_or_abs_error(r.dz, ref.dz), tol(dt));
        ASSERT_EQ(r.dbias.defined(), want);
        if (want) {
          ASSERT_EQ(r.dbias.shape(), Shape({c.b.back()}));
          EXPECT_LT(rel_or_abs_error(r.dbias, ref.dbias), 2 * tol(dt));
        }
      }
    }
  }
}

TEST(MatmulDgeluBgrad, BadInputThrows) {
  Generator gen(1);
  const Tensor g = randn({4, 8}, gen), b = randn({8, 3}, gen);
  EXPECT_THROW(kernels::matmul_dgelu_bgrad(g, b, randn({4, 4}, gen), true), Error);                  // pre shape
  EXPECT_THROW(kernels::matmul_dgelu_bgrad(g, b, randn({4, 3}, gen, DType::f64), true), Error);      // pre dtype
  EXPECT_THROW(kernels::matmul_dgelu_bgrad(g, randn({7, 3}, gen), randn({4, 3}, gen), true), Error);  // inner dims
  EXPECT_THROW(kernels::matmul_dgelu_bgrad(randn({8}, gen), b, randn({3}, gen), true), Error);        // rank
  EXPECT_THROW(mlp_gelu(randn({2, 4, 8}, gen), randn({8, 6}, gen), Tensor(), randn({5, 3}, gen), Tensor()), Error);
}

TEST(MlpGelu, GradcheckF64) {
  Generator gen(5);
  for (bool biases : {true, false}) {
    for (bool batched : {true, false}) {
      SCOPED_TRACE(fmt::format("biases {} batched {}", biases, batched));
      Tensor x = randn(batched ? Shape{2, 3, 4} : Shape{3, 4}, gen, DType::f64).set_requires_grad(true);
      Tensor w1 = randn({4, 6}, gen, DType::f64).set_requires_grad(true);
      Tensor b1 = randn({6}, gen, DType::f64).set_requires_grad(true);
      Tensor w2 = randn({6, 5}, gen, DType::f64).set_requires_grad(true);
      Tensor b2 = randn({5}, gen, DType::f64).set_requires_grad(true);
      const auto r = gradcheck(
          [&](const std::vector<Tensor>& t) {
            return mlp_gelu(t[0], t[1], biases ? t[2] : Tensor(), t[3], biases ? t[4] : Tensor());
          },
          {x, w1, b1, w2, b2});
      EXPECT_TRUE(r.ok) << r.message;
    }
  }
}

// Values and every gradient bitwise those of matmul(matmul(x, w1, b1, gelu), w2, b2).
TEST(MlpGelu, BitwiseTheUnfusedPathOnCpu) {
  for (DType dt : {DType::f32, DType::bf16}) {
    Generator gen(9);
    const Tensor x0 = randn({2, 5, 8}, gen, dt), w10 = randn({24, 8}, gen, dt) * 0.3, b10 = randn({24}, gen, dt);
    const Tensor w20 = randn({8, 24}, gen, dt) * 0.3, b20 = randn({8}, gen, dt), gy = randn({2, 5, 8}, gen, dt);
    std::vector<std::vector<double>> got[2];
    for (int fused = 0; fused < 2; ++fused) {
      Tensor x = x0.clone().set_requires_grad(true), w1 = w10.clone().set_requires_grad(true);
      Tensor b1 = b10.clone().set_requires_grad(true), w2 = w20.clone().set_requires_grad(true);
      Tensor b2 = b20.clone().set_requires_grad(true);
      const Tensor y = fused ? mlp_gelu(x, transpose(w1, 0, 1), b1, transpose(w2, 0, 1), b2)
                             : matmul(matmul(x, transpose(w1, 0, 1), b1, true), transpose(w2, 0, 1), b2);
      EXPECT_EQ(y.grad_fn()->name(), fused ? "mlp_gelu" : "matmul");
      backward(y, gy);
      got[fused] = {y.to_vector(), x.grad().to_vector(), w1.grad().to_vector(), b1.grad().to_vector(),
                    w2.grad().to_vector(), b2.grad().to_vector()};
    }
    for (size_t i = 0; i < got[0].size(); ++i) EXPECT_EQ(got[0][i], got[1][i]) << dtype_name(dt) << " tensor " << i;
  }
}

TEST(MlpGelu, NnMlpUsesTheFusedNodeUnlessLoraIsUnmerged) {
  Generator gen(3);
  nn::MlpConfig cfg;
  cfg.n_embd = 8;
  cfg.hidden = 16;
  nn::MLP mlp(cfg, gen);
  const Tensor x = randn({2, 3, 8}, gen);
  const Tensor y = mlp.forward(x);
  ASSERT_TRUE(y.grad_fn());
  EXPECT_EQ(y.grad_fn()->name(), "mlp_gelu");
  // The same numbers as the layers one after the other.
  const Tensor ref = mlp.proj->forward(mlp.fc->forward(x, true));
  EXPECT_EQ(y.to_vector(), ref.to_vector());
  mlp.fc->enable_lora(2, 4.0, gen);
  EXPECT_NE(mlp.forward(x).grad_fn()->name(), "mlp_gelu");
  mlp.fc->merge_lora();
  EXPECT_EQ(mlp.forward(x).grad_fn()->name(), "mlp_gelu");
}

}  // namespace
