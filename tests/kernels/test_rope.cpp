// Fused RoPE (kernels::rope; kernels/cpu/rope.cpp), rotate-half pairing: against a naive f64
// reference with (T,) and (B, T) positions (fresh random inputs, odd T, head dims 64 and 128
// and small odd-half ones, f32/f64/bf16); inverse ∘ forward = identity; the autograd wrapper
// against the unfused slice/mul/concat composition; an f64 gradcheck.
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

// cos/sin tables (P, D/2) for theta = 10000.
std::pair<Tensor, Tensor> tables(int64_t P, int64_t D, DType dt) {
  std::vector<double> c(P * D / 2), s(c.size());
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t i = 0; i < D / 2; ++i) {
      const double a = p * std::pow(10000.0, -2.0 * i / D);
      c[p * D / 2 + i] = std::cos(a);
      s[p * D / 2 + i] = std::sin(a);
    }
  }
  return {Tensor::from_vector(c, {P, D / 2}, dt), Tensor::from_vector(s, {P, D / 2}, dt)};
}

std::vector<double> reference(const Tensor& x, const Tensor& c, const Tensor& s, const Tensor& pos, bool inverse) {
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), half = D / 2;
  const std::vector<double> xv = x.to_vector(), cv = c.to_vector(), sv = s.to_vector(), pv = pos.to_vector();
  std::vector<double> y(xv.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t p = static_cast<int64_t>(pv[pos.dim() == 2 ? b * T + t : t]);
        const int64_t base = ((b * H + h) * T + t) * D;
        for (int64_t i = 0; i < half; ++i) {
          const double cc = cv[p * half + i], ss = (inverse ? -1 : 1) * sv[p * half + i];
          const double x1 = xv[base + i], x2 = xv[base + half + i];
          y[base + i] = x1 * cc - x2 * ss;
          y[base + half + i] = x2 * cc + x1 * ss;
        }
      }
  return y;
}

}  // namespace

TEST(FusedRope, MatchesF64Reference) {
  Generator gen(7);
  struct Case {
    int64_t B, H, T, D;
    bool per_batch;
  };
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    for (const Case& k : std::vector<Case>{{1, 1, 1, 2, false}, {2, 3, 5, 6, true}, {1, 4, 33, 64, false},
                                           {3, 2, 17, 128, true}, {2, 1, 1, 64, true}}) {
      SCOPED_TRACE(case_name({k.B, k.H, k.T, k.D}, dt, Layout::contiguous) + (k.per_batch ? " (B, T) pos" : ""));
      const int64_t P = 80;
      auto [c, s] = tables(P, k.D, dt);
      Tensor x = randn({k.B, k.H, k.T, k.D}, gen, dt);
      Tensor pos = k.per_batch ? randint(0, P, {k.B, k.T}, gen, DType::i64) : randint(0, P, {k.T}, gen, DType::i32);
      for (bool inv : {false, true}) {
        Tensor y = kernels::rope(x, c, s, pos, inv);
        EXPECT_LE(rel_or_abs_error(y.to_vector(), reference(x, c, s, pos, inv)), tol(dt));
      }
    }
  }
}

TEST(FusedRope, InverseUndoesForwardAndErrors) {
  Generator gen(8);
  auto [c, s] = tables(16, 8, DType::f64);
  Tensor x = randn({2, 2, 9, 8}, gen, DType::f64), pos = randint(0, 16, {9}, gen, DType::i64);
  Tensor back = kernels::rope(kernels::rope(x, c, s, pos), c, s, pos, true);
  EXPECT_LE(rel_or_abs_error(back.to_vector(), x.to_vector()), 1e-14);
  EXPECT_THROW(kernels::rope(x, c, s, Tensor::full({9}, 16.0, DType::i64)), Error);  // position out of range
  EXPECT_THROW(kernels::rope(x, c, s, Tensor::zeros({8}, DType::i64)), Error);        // wrong T
  EXPECT_THROW(kernels::rope(randn({2, 9, 8}, gen, DType::f64), c, s, pos), Error);  // not 4-D
  EXPECT_THROW(kernels::rope(x.to(DType::f32), c, s, pos), Error);                   // dtype mismatch
}

TEST(FusedRope, WrapperMatchesUnfusedCompositionAndGradcheck) {
  Generator gen(9);
  auto [c, s] = tables(12, 6, DType::f64);
  Tensor x = randn({2, 3, 5, 6}, gen, DType::f64).set_requires_grad(true);
  Tensor pos = randint(0, 12, {5}, gen, DType::i64), dy = randn({2, 3, 5, 6}, gen, DType::f64);
  Tensor y = rope(x, c, s, pos);
  backward(y, dy);
  Tensor x2 = x.detach().set_requires_grad(true);
  Tensor cc = index_select(c, 0, pos), ss = index_select(s, 0, pos);
  Tensor a = slice(x2, -1, 0, 3), b = slice(x2, -1, 3, 6);
  Tensor y2 = concat({a * cc - b * ss, b * cc + a * ss}, -1);
  backward(y2, dy);
  EXPECT_LE(rel_or_abs_error(y.to_vector(), y2.to_vector()), 1e-14);
  EXPECT_LE(rel_or_abs_error(x.grad().to_vector(), x2.grad().to_vector()), 1e-14);
  Tensor x3 = randn({1, 2, 4, 6}, gen, DType::f64);
  x3.set_requires_grad(true);
  Tensor p3 = randint(0, 12, {1, 4}, gen, DType::i64);
  EXPECT_GRADCHECK(gradcheck([&](const std::vector<Tensor>& in) { return sum(rope(in[0], c, s, p3) * in[0]); }, {x3}));
}
