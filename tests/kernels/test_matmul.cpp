// matmul on CPU against a naive f64 triple loop: 2-D and batched (b batched, shared 2-D, or
// 3-D with batch 1), operands row-major / transposed views / step-2 slices, optional bias,
// gelu epilogue and pre_gelu output, f32 / f64 / bf16, odd shapes including K = 1, K = 0,
// N = 1. Also checks that transposed views reach BLAS as flags, without a copy.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/ops.h"
#include "tensor/allocator.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::kernels;
using namespace somnus::test;

namespace {

struct Mnk {
  int64_t M, K, N;
};
const Mnk kSizes[] = {{1, 1, 1}, {4, 8, 3}, {17, 33, 9}, {64, 64, 64}, {5, 1, 7},
                      {3, 0, 4}, {1, 13, 1}, {37, 19, 1}, {100, 70, 50},
                      {1, 29, 31}, {1, 7, 64}};  // M = 1: the gemv path

enum class BMode { shared_2d, batched, batch_one };  // b (K, N), (Bt, K, N), (1, K, N)

double gelu_ref(double x) { return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }

struct RefOut {
  std::vector<double> out, pre;
};

// a (Bt, M, K) row-major values; b (Bb, K, N) with Bb in {1, Bt}; bias (N,) or empty.
RefOut ref_matmul(const std::vector<double>& a, const std::vector<double>& b, const std::vector<double>& bias,
                  int64_t Bt, int64_t Bb, int64_t M, int64_t K, int64_t N, bool gelu) {
  RefOut r;
  r.out.resize(Bt * M * N);
  r.pre.resize(Bt * M * N);
  for (int64_t t = 0; t < Bt; ++t) {
    const double* bt = b.data() + (Bb == 1 ? 0 : t) * K * N;
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) {
        double acc = bias.empty() ? 0.0 : bias[j];
        for (int64_t k = 0; k < K; ++k) acc += a[(t * M + i) * K + k] * bt[k * N + j];
        r.pre[(t * M + i) * N + j] = acc;
        r.out[(t * M + i) * N + j] = gelu ? gelu_ref(acc) : acc;
      }
    }
  }
  return r;
}

}  // namespace

TEST(Matmul, MatchesReference) {
  Generator g(31);
  int checked = 0;
  for (const Mnk& s : kSizes) {
    for (int64_t Bt : {int64_t{0}, int64_t{3}}) {  // 0: a is 2-D
      for (BMode bm : {BMode::shared_2d, BMode::batched, BMode::batch_one}) {
        if (Bt == 0 && bm != BMode::shared_2d) continue;
        for (DType dtype : kFloatTypes) {
          for (Layout la : kLayouts) {
            for (Layout lb : kLayouts) {
              const int epi = checked % 4;  // cycle the epilogues: none, bias, gelu, bias + gelu
              const bool with_bias = epi & 1, gelu = epi & 2;
              const Shape a_shape = Bt == 0 ? Shape{s.M, s.K} : Shape{Bt, s.M, s.K};
              const Shape b_shape = bm == BMode::shared_2d ? Shape{s.K, s.N}
                                    : bm == BMode::batched ? Shape{Bt, s.K, s.N}
                                                           : Shape{1, s.K, s.N};
              SCOPED_TRACE(fmt::format("a {} ({}) b {} ({}) {} bias {} gelu {}", shape_str(a_shape), layout_name(la),
                                       shape_str(b_shape), layout_name(lb), dtype_name(dtype), with_bias, gelu));
              const Tensor a = randn_as(a_shape, dtype, la, g);
              const Tensor b = randn_as(b_shape, dtype, lb, g);
              const Tensor bias = with_bias ? randn({s.N}, g, dtype) : Tensor();
              Tensor pre;
              const Tensor out = matmul(a, b, bias, gelu, gelu ? &pre : nullptr);
              const Shape out_shape = Bt == 0 ? Shape{s.M, s.N} : Shape{Bt, s.M, s.N};
              ASSERT_EQ(out.shape(), out_shape);
              ASSERT_EQ(out.dtype(), dtype);
              const RefOut ref = ref_matmul(a.to_vector(), b.to_vector(), with_bias ? bias.to_vector() : std::vector<double>{},
                                            std::max<int64_t>(Bt, 1), bm == BMode::batched ? Bt : 1, s.M, s.K, s.N, gelu);
              EXPECT_LE(rel_or_abs_error(out, ref.out), tol_for(dtype));
              if (gelu) {
                ASSERT_TRUE(pre.defined());
                ASSERT_EQ(pre.shape(), out_shape);
                EXPECT_LE(rel_or_abs_error(pre, ref.pre), tol_for(dtype));
              }
              ++checked;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, static_cast<int>(std::size(kSizes)) * 4 * 3 * 9);
}

TEST(Matmul, ExpandedBatchAndSharedBias) {
  // a with a stride-0 batch (one matrix seen Bt times) against a batched b.
  Generator g(32);
  const Tensor a1 = randn({1, 6, 5}, g);
  const Tensor a = a1.expand({4, 6, 5});
  const Tensor b = randn({4, 5, 3}, g);
  const Tensor bias = randn({3}, g);
  const Tensor out = matmul(a, b, bias);
  std::vector<double> av;
  for (int t = 0; t < 4; ++t) {
    for (double v : a1.to_vector()) av.push_back(v);
  }
  const RefOut ref = ref_matmul(av, b.to_vector(), bias.to_vector(), 4, 4, 6, 5, 3, false);
  EXPECT_LE(rel_or_abs_error(out, ref.out), 1e-5);
  // Without gelu, the pre-activation is the output itself.
  Tensor pre;
  const Tensor o2 = matmul(a, b, bias, false, &pre);
  EXPECT_TRUE(pre.same(o2));
}

TEST(Matmul, TransposedViewsAreNotCopied) {
  Generator g(33);
  Allocator& cpu = allocator_for(Device::cpu());
  struct Case {
    const char* name;
    Tensor a, b;
  };
  const Tensor w = randn({48, 32}, g);  // (N, K), as a Linear weight
  const std::vector<Case> cases = {
      {"a @ w^T", randn({20, 32}, g), w.transpose(0, 1)},
      {"a^T @ b", randn({32, 20}, g).transpose(0, 1), randn({32, 48}, g)},
      {"a^T @ w^T", randn({32, 20}, g).transpose(0, 1), w.transpose(0, 1)},
      {"batched a, shared w^T", randn({3, 20, 32}, g), w.transpose(0, 1)},
      {"batched a^T @ batched b^T", randn({3, 32, 20}, g).transpose(1, 2), randn({3, 48, 32}, g).transpose(1, 2)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::vector<double> ref_out = matmul(c.a.contiguous(), c.b.contiguous()).to_vector();
    const int64_t before = cpu.stats().num_allocs;
    const Tensor out = matmul(c.a, c.b);
    EXPECT_EQ(cpu.stats().num_allocs - before, 1) << "only the output may be allocated";
    EXPECT_LE(rel_or_abs_error(out, ref_out), 1e-6);
  }
}
