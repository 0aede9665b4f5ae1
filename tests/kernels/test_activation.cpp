// Fused SwiGLU (kernels::swiglu, swiglu_backward; kernels/cpu/activation.cpp) against a naive
// f64 reference (fresh random inputs, odd sizes, f32/f64/bf16), the autograd wrapper against
// the unfused silu(g)·u composition, and an f64 gradcheck. GELU forward/backward are
// Unary::gelu (tests/kernels/test_elementwise.cpp) and the matmul epilogue (test_matmul.cpp).
#include <gtest/gtest.h>

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
double tol(DType d) { return d == DType::f64 ? 1e-12 : d == DType::bf16 ? 1.5e-2 : 2e-6; }
}  // namespace

TEST(FusedSwiglu, MatchesF64Reference) {
  Generator gen(3);
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    for (const Shape& s : std::vector<Shape>{{1}, {7}, {3, 33}, {2, 5, 257}, {129, 300}}) {
      SCOPED_TRACE(case_name(s, dt, Layout::contiguous));
      // Wide range, so σ saturates at both ends.
      Tensor g = randn(s, gen, dt, Device::cpu(), 0.0, 4.0), u = randn(s, gen, dt), dy = randn(s, gen, dt);
      Tensor y = kernels::swiglu(g, u);
      auto [dg, du] = kernels::swiglu_backward(g, u, dy);
      const std::vector<double> gv = g.to_vector(), uv = u.to_vector(), dv = dy.to_vector();
      std::vector<double> ry(gv.size()), rdg(gv.size()), rdu(gv.size());
      for (size_t i = 0; i < gv.size(); ++i) {
        const double sg = 1.0 / (1.0 + std::exp(-gv[i]));
        ry[i] = gv[i] * sg * uv[i];
        rdg[i] = dv[i] * uv[i] * sg * (1.0 + gv[i] * (1.0 - sg));
        rdu[i] = dv[i] * gv[i] * sg;
      }
      EXPECT_LE(rel_or_abs_error(y.to_vector(), ry), tol(dt));
      EXPECT_LE(rel_or_abs_error(dg.to_vector(), rdg), tol(dt));
      EXPECT_LE(rel_or_abs_error(du.to_vector(), rdu), tol(dt));
    }
  }
}

TEST(FusedSwiglu, StridedInputsAndErrors) {
  Generator gen(4);
  Tensor g = randn({6, 8}, gen).transpose(0, 1), u = randn({8, 6}, gen);
  Tensor ref = kernels::binary(kernels::Binary::mul, kernels::unary(kernels::Unary::silu, g), u);
  EXPECT_LE(rel_or_abs_error(kernels::swiglu(g, u).to_vector(), ref.to_vector()), 1e-6);
  EXPECT_THROW(kernels::swiglu(Tensor::ones({2, 3}), Tensor::ones({3, 2})), Error);
  EXPECT_THROW(kernels::swiglu(Tensor::ones({2}), Tensor::ones({2}, DType::f64)), Error);
  EXPECT_THROW(kernels::swiglu(Tensor::ones({2}, DType::i64), Tensor::ones({2}, DType::i64)), Error);
}

TEST(FusedSwiglu, WrapperMatchesUnfusedComposition) {
  Generator gen(5);
  Tensor g = randn({4, 19}, gen, DType::f64).set_requires_grad(true);
  Tensor u = randn({4, 19}, gen, DType::f64).set_requires_grad(true);
  Tensor dy = randn({4, 19}, gen, DType::f64);
  Tensor y = swiglu(g, u);
  backward(y, dy);
  Tensor g2 = g.detach().set_requires_grad(true), u2 = u.detach().set_requires_grad(true);
  Tensor y2 = silu(g2) * u2;
  backward(y2, dy);
  EXPECT_LE(rel_or_abs_error(y.to_vector(), y2.to_vector()), 1e-14);
  EXPECT_LE(rel_or_abs_error(g.grad().to_vector(), g2.grad().to_vector()), 1e-13);
  EXPECT_LE(rel_or_abs_error(u.grad().to_vector(), u2.grad().to_vector()), 1e-13);
}

TEST(FusedSwiglu, Gradcheck) {
  Generator gen(6);
  Tensor g = randn({3, 11}, gen, DType::f64, Device::cpu(), 0.0, 2.0), u = randn({3, 11}, gen, DType::f64);
  g.set_requires_grad(true);
  u.set_requires_grad(true);
  EXPECT_GRADCHECK(gradcheck([](const std::vector<Tensor>& in) { return sum(swiglu(in[0], in[1]) * in[0]); }, {g, u}));
}
