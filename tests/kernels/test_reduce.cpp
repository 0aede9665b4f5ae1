// Reductions on CPU against naive f64 references: sum, mean, max, argmax over every dim of a
// table of shapes (odd sizes; runs longer than one 4096-block; few-output and many-output
// cases, which take different parallel paths), in three layouts (the transposed one takes the
// column path), f32 / f64 / bf16; plus reduce_all, sum_to, NaN semantics and bitwise
// determinism across thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>

#include "kernels/ops.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::kernels;
using namespace somnus::test;

namespace {

const Shape kShapes[] = {{7}, {3, 5}, {4, 33, 17}, {2, 3, 4, 5}, {5, 9000}, {1, 20000}, {3000, 37}, {1, 1}};

// Reference: reduce dim d of (shape, v) with op; returns values over the kept dims (row-major).
// op: 0 sum, 1 mean, 2 max, 3 argmax (first occurrence).
std::vector<double> ref_reduce(const std::vector<double>& v, const Shape& shape, int64_t d, int op) {
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= shape[i];
  for (size_t i = d + 1; i < shape.size(); ++i) inner *= shape[i];
  const int64_t n = shape[d];
  std::vector<double> out(outer * inner);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      double acc = op == 2 ? -INFINITY : 0.0;
      int64_t best = 0;
      for (int64_t k = 0; k < n; ++k) {
        const double x = v[(o * n + k) * inner + i];
        if (op <= 1) acc += x;
        if (op >= 2 && (k == 0 || x > acc)) {
          acc = x;
          best = k;
        }
      }
      out[o * inner + i] = op == 1 ? acc / n : (op == 3 ? static_cast<double>(best) : acc);
    }
  }
  return out;
}

Shape kept_shape(const Shape& s, int64_t d, bool keepdim) {
  Shape r = s;
  if (keepdim) {
    r[d] = 1;
  } else {
    r.erase(r.begin() + d);
  }
  return r;
}

}  // namespace

TEST(Reduce, MatchesReference) {
  Generator g(11);
  const Reduce ops[] = {Reduce::sum, Reduce::mean, Reduce::max};
  int checked = 0;
  for (const Shape& shape : kShapes) {
    for (DType dtype : kFloatTypes) {
      for (Layout layout : kLayouts) {
        const Tensor x = randn_as(shape, dtype, layout, g);
        const std::vector<double> xv = x.to_vector();
        const int64_t nd = static_cast<int64_t>(shape.size());
        for (int64_t d = 0; d < nd; ++d) {
          for (int opi = 0; opi < 3; ++opi) {
            const bool keepdim = (d + opi) % 2 == 0;
            const int64_t dim = (opi == 1) ? d - nd : d;  // negative dims too
            SCOPED_TRACE(fmt::format("{} dim {} keepdim {} {}", reduce_name(ops[opi]), dim, keepdim,
                                     case_name(shape, dtype, layout)));
            const Tensor y = reduce(ops[opi], x, dim, keepdim);
            ASSERT_EQ(y.shape(), kept_shape(shape, d, keepdim));
            ASSERT_EQ(y.dtype(), dtype);
            EXPECT_LE(rel_or_abs_error(y, ref_reduce(xv, shape, d, opi)), tol_for(dtype));
            ++checked;
          }
          SCOPED_TRACE(fmt::format("argmax dim {} {}", d, case_name(shape, dtype, layout)));
          const Tensor am = argmax(x, d, d % 2 == 1);
          ASSERT_EQ(am.dtype(), DType::i64);
          ASSERT_EQ(am.shape(), kept_shape(shape, d, d % 2 == 1));
          // Exact, ties included: bf16 rows of 9000 values do tie, and the first index must win.
          EXPECT_EQ(am.to_vector(), ref_reduce(xv, shape, d, 3));
        }
      }
    }
  }
  EXPECT_GT(checked, 300);
}

TEST(Reduce, AllAndScalars) {
  Generator g(12);
  for (DType dtype : kFloatTypes) {
    for (const Shape& shape : {Shape{}, Shape{9}, Shape{300, 1001}, Shape{3, 4, 5}}) {
      for (Layout layout : kLayouts) {
        SCOPED_TRACE(case_name(shape, dtype, layout));
        const Tensor x = randn_as(shape, dtype, layout, g);
        const std::vector<double> xv = x.to_vector();
        double s = 0.0, m = -INFINITY;
        for (double v : xv) {
          s += v;
          m = std::max(m, v);
        }
        const Tensor total = reduce_all(Reduce::sum, x);
        EXPECT_EQ(total.dim(), 0);
        EXPECT_LE(rel_or_abs_error(total, {s}), tol_for(dtype));
        EXPECT_LE(rel_or_abs_error(reduce_all(Reduce::mean, x), {s / xv.size()}), tol_for(dtype));
        EXPECT_EQ(reduce_all(Reduce::max, x).item(), m);
      }
    }
  }
  const Tensor sc = Tensor::scalar(2.5);
  EXPECT_EQ(reduce(Reduce::sum, sc, 0).item(), 2.5);
  EXPECT_EQ(argmax(sc, -1).item(), 0.0);
}

TEST(Reduce, EmptyDimAndNan) {
  const Tensor e = Tensor::zeros({3, 0});
  const Tensor s = reduce(Reduce::sum, e, 1);
  EXPECT_EQ(s.shape(), (Shape{3}));
  EXPECT_EQ(s.to_vector(), (std::vector<double>{0, 0, 0}));

  // max propagates NaN; argmax points at the first NaN (PyTorch semantics).
  const Tensor x = Tensor::from_vector({1, NAN, 5, NAN, 2, 3, 9, 4}, {2, 4});
  const std::vector<double> mx = reduce(Reduce::max, x, 1).to_vector();
  EXPECT_TRUE(std::isnan(mx[0]));
  EXPECT_EQ(mx[1], 9.0);
  EXPECT_EQ(argmax(x, 1).to_vector(), (std::vector<double>{1, 2}));
  // Ties: first occurrence.
  const Tensor t = Tensor::from_vector({3, 7, 7, 1, 7}, {5});
  EXPECT_EQ(argmax(t, 0).item(), 1.0);
}

TEST(Reduce, BitwiseDeterministicAcrossThreadCounts) {
  Generator g(13);
  const Tensor big = randn({3, 70001}, g);
  const Tensor cols = randn({5001, 19}, g);
  const int saved = omp_get_max_threads();
  std::vector<std::vector<double>> runs;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    std::vector<double> r = reduce_all(Reduce::sum, big).to_vector();
    for (double v : reduce(Reduce::sum, big, 1).to_vector()) r.push_back(v);
    for (double v : reduce(Reduce::sum, cols, 0).to_vector()) r.push_back(v);
    runs.push_back(r);
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_EQ(runs[0], runs[2]);
}

TEST(SumTo, MatchesReference) {
  struct Case {
    Shape x, target;
  };
  const Case cases[] = {
      {{2, 3, 4}, {3, 1}}, {{2, 3, 4}, {4}},       {{2, 3, 4}, {1, 1, 1}}, {{2, 3, 4}, {}},
      {{2, 3, 4}, {2, 1, 4}}, {{5, 7}, {1, 7}},    {{64, 300}, {300}},     {{4, 1, 6}, {1, 6}},
  };
  Generator g(14);
  for (const Case& c : cases) {
    for (DType dtype : kFloatTypes) {
      SCOPED_TRACE(fmt::format("x {} -> {} {}", shape_str(c.x), shape_str(c.target), dtype_name(dtype)));
      const Tensor x = randn(c.x, g, dtype);
      const Tensor y = sum_to(x, c.target);
      ASSERT_EQ(y.shape(), c.target);
      const std::vector<double> xv = x.to_vector();
      std::vector<double> ref(shape_numel(c.target), 0.0);
      for (int64_t i = 0; i < x.numel(); ++i) ref[ravel_broadcast(unravel(i, c.x), c.target)] += xv[i];
      EXPECT_LE(rel_or_abs_error(y, ref), tol_for(dtype));
    }
  }
  const Tensor x = randn({2, 3}, g);
  EXPECT_EQ(sum_to(x, {2, 3}).to_vector(), x.to_vector());
}
