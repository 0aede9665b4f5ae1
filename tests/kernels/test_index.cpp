// Indexing ops on CPU against naive references: embedding and its scatter-add backward (with
// repeated ids), gather / scatter_add along every dim, index_select / index_add, concat,
// split and cast — i32 and i64 indices, strided data, f32 / f64 / bf16 (and integer data
// where an op is a pure copy). The scatters must be bitwise deterministic across thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "kernels/ops.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::kernels;
using namespace somnus::test;

namespace {

constexpr DType kIndexTypes[] = {DType::i32, DType::i64};

std::vector<int64_t> as_ints(const Tensor& t) {
  std::vector<int64_t> r;
  for (double v : t.to_vector()) r.push_back(static_cast<int64_t>(v));
  return r;
}

// Runs fn with 1, 2 and 3 OpenMP threads and returns the three results.
template <class F>
std::vector<std::vector<double>> with_thread_counts(F fn) {
  const int saved = omp_get_max_threads();
  std::vector<std::vector<double>> runs;
  for (int t : {1, 2, 3}) {
    omp_set_num_threads(t);
    runs.push_back(fn());
  }
  omp_set_num_threads(saved);
  return runs;
}

}  // namespace

// ---------------------------------------------------------------- embedding

TEST(Embedding, ForwardMatchesReference) {
  struct Case {
    int64_t V, C;
    Shape ids;
  };
  const Case cases[] = {{10, 4, {7}}, {50, 33, {2, 5}}, {3, 1, {4, 3, 2}}, {1000, 64, {8, 128}}, {7, 5, {}}};
  Generator g(41);
  for (const Case& c : cases) {
    for (DType dtype : kFloatTypes) {
      for (DType it : kIndexTypes) {
        for (Layout layout : kLayouts) {
          SCOPED_TRACE(fmt::format("V {} C {} ids {} {} {}", c.V, c.C, shape_str(c.ids), dtype_name(it),
                                   case_name({c.V, c.C}, dtype, layout)));
          const Tensor w = randn_as({c.V, c.C}, dtype, layout, g);
          const Tensor ids = randint(0, c.V, c.ids, g, it);
          const Tensor out = embedding(w, ids);
          Shape expect = c.ids;
          expect.push_back(c.C);
          ASSERT_EQ(out.shape(), expect);
          const std::vector<double> wv = w.to_vector();
          std::vector<double> ref;
          for (int64_t id : as_ints(ids)) {
            for (int64_t j = 0; j < c.C; ++j) ref.push_back(wv[id * c.C + j]);
          }
          EXPECT_EQ(out.to_vector(), ref);  // a copy is exact
        }
      }
    }
  }
}

TEST(Embedding, BackwardMatchesReference) {
  struct Case {
    int64_t V, C;
    Shape ids;
  };
  // Small vocabularies force many repeated ids; C = 200 spans several 64-column strips.
  const Case cases[] = {{10, 4, {7}}, {5, 33, {2, 9}}, {3, 1, {4, 3, 2}}, {17, 200, {8, 64}}, {7, 5, {}}};
  Generator g(42);
  for (const Case& c : cases) {
    for (DType dtype : kFloatTypes) {
      for (DType it : kIndexTypes) {
        for (Layout layout : kLayouts) {
          Shape dshape = c.ids;
          dshape.push_back(c.C);
          SCOPED_TRACE(fmt::format("V {} ids {} {} {}", c.V, shape_str(c.ids), dtype_name(it),
                                   case_name(dshape, dtype, layout)));
          const Tensor ids = randint(0, c.V, c.ids, g, it);
          const Tensor dout = randn_as(dshape, dtype, layout, g);
          const Tensor dw = embedding_backward(dout, ids, c.V, layout == Layout::strided);
          ASSERT_EQ(dw.shape(), (Shape{c.V, c.C}));
          ASSERT_EQ(dw.dtype(), dtype);
          const std::vector<double> dv = dout.to_vector();
          std::vector<double> ref(c.V * c.C, 0.0);
          const std::vector<int64_t> iv = as_ints(ids);
          for (size_t i = 0; i < iv.size(); ++i) {
            for (int64_t j = 0; j < c.C; ++j) ref[iv[i] * c.C + j] += dv[i * c.C + j];
          }
          EXPECT_LE(rel_or_abs_error(dw, ref), tol_for(dtype));
        }
      }
    }
  }
}

TEST(Embedding, BackwardIsBitwiseDeterministic) {
  Generator g(43);
  const Tensor ids = randint(0, 9, {64, 33}, g);
  const Tensor dout = randn({64, 33, 300}, g);
  const auto runs = with_thread_counts([&] { return embedding_backward(dout, ids, 9, true).to_vector(); });
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_EQ(runs[0], runs[2]);
}

// ---------------------------------------------------------------- gather / scatter_add

TEST(Gather, MatchesReference) {
  const Shape xs = {4, 5, 6};
  Generator g(44);
  for (int64_t dim = 0; dim < 3; ++dim) {
    // Smaller than x in the other dims, larger along dim (allowed: indices repeat).
    Shape is = {3, 4, 5};
    is[dim] = 8;
    for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::i64}) {
      for (DType it : kIndexTypes) {
        for (Layout layout : kLayouts) {
          SCOPED_TRACE(fmt::format("dim {} index {} {} {}", dim, shape_str(is), dtype_name(it), case_name(xs, dtype, layout)));
          const Tensor x = dtype == DType::i64 ? with_layout(xs, layout, [&](const Shape& s) { return randint(-100, 100, s, g); })
                                               : randn_as(xs, dtype, layout, g);
          const Tensor index = with_layout(is, layout, [&](const Shape& s) { return randint(0, xs[dim], s, g, it); });
          const Tensor out = gather(x, dim - 3, index);
          ASSERT_EQ(out.shape(), is);
          const std::vector<double> xv = x.to_vector();
          const std::vector<int64_t> iv = as_ints(index);
          std::vector<double> ref(iv.size());
          for (int64_t i = 0; i < static_cast<int64_t>(iv.size()); ++i) {
            auto idx = unravel(i, is);
            idx[dim] = iv[i];
            ref[i] = xv[ravel(idx, xs)];
          }
          EXPECT_EQ(out.to_vector(), ref);
        }
      }
    }
  }
}

TEST(ScatterAdd, MatchesReference) {
  const Shape shape = {4, 5, 6};
  Generator g(45);
  for (int64_t dim = 0; dim < 3; ++dim) {
    Shape is = {3, 4, 5};
    is[dim] = 9;                                             // many hits per output fiber
    const Shape src_shape = {is[0] + 1, is[1], is[2] + 2};  // src may be larger than index
    for (DType dtype : kFloatTypes) {
      for (DType it : kIndexTypes) {
        for (Layout layout : kLayouts) {
          SCOPED_TRACE(fmt::format("dim {} index {} {} {}", dim, shape_str(is), dtype_name(it),
                                   case_name(src_shape, dtype, layout)));
          const Tensor src = randn_as(src_shape, dtype, layout, g);
          const Tensor index = with_layout(is, layout, [&](const Shape& s) { return randint(0, shape[dim], s, g, it); });
          const Tensor out = scatter_add(shape, dim, index, src);
          ASSERT_EQ(out.shape(), shape);
          const std::vector<double> sv = src.to_vector();
          const std::vector<int64_t> iv = as_ints(index);
          std::vector<double> ref(shape_numel(shape), 0.0);
          for (int64_t i = 0; i < static_cast<int64_t>(iv.size()); ++i) {
            auto idx = unravel(i, is);
            const double v = sv[ravel(idx, src_shape)];
            idx[dim] = iv[i];
            ref[ravel(idx, shape)] += v;
          }
          EXPECT_LE(rel_or_abs_error(out, ref), tol_for(dtype));
        }
      }
    }
  }
}

TEST(ScatterAdd, BitwiseDeterministic) {
  Generator g(46);
  const Tensor src = randn({40, 3000}, g);
  const Tensor index = randint(0, 7, {40, 3000}, g);
  const auto runs = with_thread_counts([&] { return scatter_add({7, 3000}, 0, index, src).to_vector(); });
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_EQ(runs[0], runs[2]);
}

// ---------------------------------------------------------------- index_select / index_add

TEST(IndexSelect, MatchesReference) {
  const Shape xs = {5, 7, 3};
  Generator g(47);
  for (int64_t dim = 0; dim < 3; ++dim) {
    for (int64_t L : {int64_t{1}, int64_t{4}, int64_t{11}}) {
      for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::i32}) {
        for (DType it : kIndexTypes) {
          for (Layout layout : kLayouts) {
            SCOPED_TRACE(fmt::format("dim {} L {} {} {}", dim, L, dtype_name(it), case_name(xs, dtype, layout)));
            const Tensor x = dtype == DType::i32
                                 ? with_layout(xs, layout, [&](const Shape& s) { return randint(-50, 50, s, g, DType::i32); })
                                 : randn_as(xs, dtype, layout, g);
            // Index as a step-2 view when the layout is not contiguous.
            const Tensor index = with_layout({L}, layout, [&](const Shape& s) { return randint(0, xs[dim], s, g, it); });
            const Tensor out = index_select(x, dim, index);
            Shape os = xs;
            os[dim] = L;
            ASSERT_EQ(out.shape(), os);
            const std::vector<double> xv = x.to_vector();
            const std::vector<int64_t> iv = as_ints(index);
            std::vector<double> ref(shape_numel(os));
            for (int64_t i = 0; i < static_cast<int64_t>(ref.size()); ++i) {
              auto idx = unravel(i, os);
              idx[dim] = iv[idx[dim]];
              ref[i] = xv[ravel(idx, xs)];
            }
            EXPECT_EQ(out.to_vector(), ref);
          }
        }
      }
    }
  }
}

TEST(IndexAdd, MatchesReference) {
  const Shape shape = {5, 7, 130};  // 130: more than two 64-element strips per row
  Generator g(48);
  for (int64_t dim = 0; dim < 3; ++dim) {
    for (int64_t L : {int64_t{1}, int64_t{9}, int64_t{20}}) {
      for (DType dtype : kFloatTypes) {
        for (DType it : kIndexTypes) {
          for (Layout layout : kLayouts) {
            Shape ss = shape;
            ss[dim] = L;
            SCOPED_TRACE(fmt::format("dim {} L {} {} {}", dim, L, dtype_name(it), case_name(ss, dtype, layout)));
            const Tensor src = randn_as(ss, dtype, layout, g);
            const Tensor index = randint(0, shape[dim], {L}, g, it);
            const Tensor out = index_add(shape, dim, index, src);
            ASSERT_EQ(out.shape(), shape);
            const std::vector<double> sv = src.to_vector();
            const std::vector<int64_t> iv = as_ints(index);
            std::vector<double> ref(shape_numel(shape), 0.0);
            for (int64_t i = 0; i < static_cast<int64_t>(sv.size()); ++i) {
              auto idx = unravel(i, ss);
              idx[dim] = iv[idx[dim]];
              ref[ravel(idx, shape)] += sv[i];
            }
            EXPECT_LE(rel_or_abs_error(out, ref), tol_for(dtype));
          }
        }
      }
    }
  }
}

TEST(IndexAdd, BitwiseDeterministic) {
  Generator g(49);
  const Tensor src = randn({500, 300}, g);
  const Tensor index = randint(0, 6, {500}, g);
  const auto runs = with_thread_counts([&] { return index_add({6, 300}, 0, index, src).to_vector(); });
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_EQ(runs[0], runs[2]);
}

// ---------------------------------------------------------------- concat / split / cast

TEST(Concat, MatchesReference) {
  Generator g(50);
  for (int64_t dim = 0; dim < 3; ++dim) {
    for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::i64}) {
      for (Layout layout : kLayouts) {
        SCOPED_TRACE(fmt::format("dim {} {} {}", dim, dtype_name(dtype), layout_name(layout)));
        const int64_t sizes[] = {2, 0, 5, 1};  // a zero-size piece included
        std::vector<Tensor> xs;
        for (int64_t n : sizes) {
          Shape s = {3, 4, 6};
          s[dim] = n;
          xs.push_back(with_layout(s, layout, [&](const Shape& p) { return randn(p, g, DType::f32).to(dtype); }));
        }
        const Tensor out = concat(xs, dim);
        Shape os = {3, 4, 6};
        os[dim] = 8;
        ASSERT_EQ(out.shape(), os);
        std::vector<double> ref(shape_numel(os));
        for (int64_t i = 0; i < static_cast<int64_t>(ref.size()); ++i) {
          auto idx = unravel(i, os);
          int64_t part = 0;
          while (idx[dim] >= sizes[part]) idx[dim] -= sizes[part++];
          ref[i] = xs[part].at(idx);
        }
        EXPECT_EQ(out.to_vector(), ref);
      }
    }
  }
}

TEST(Split, ViewsWithTheRightValues) {
  Generator g(51);
  const Tensor x = randn({4, 10, 3}, g);
  const std::vector<Tensor> parts = split(x, {3, 0, 7}, -2);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].shape(), (Shape{4, 3, 3}));
  EXPECT_EQ(parts[1].shape(), (Shape{4, 0, 3}));
  EXPECT_EQ(parts[2].shape(), (Shape{4, 7, 3}));
  for (const Tensor& p : parts) EXPECT_EQ(p.storage().get(), x.storage().get());  // views, no copies
  EXPECT_EQ(parts[2].to_vector(), x.slice(1, 3, 10).to_vector());
  EXPECT_EQ(concat(parts, 1).to_vector(), x.to_vector());
}

TEST(Cast, RoundsAndConverts) {
  // bf16 keeps 8 significant bits: 1 + 2^-8 is a tie and rounds to even (1), 1 + 3·2^-8 rounds up.
  const Tensor x = Tensor::from_vector({1.0 + 1.0 / 256, 1.0 + 3.0 / 256, -2.5, 3.0e38}, {4}, DType::f32);
  const std::vector<double> b = cast(x, DType::bf16).to_vector();
  EXPECT_EQ(b[0], 1.0);
  EXPECT_EQ(b[1], 1.0 + 4.0 / 256);
  EXPECT_EQ(b[2], -2.5);
  EXPECT_NEAR(b[3] / 3.0e38, 1.0, 1.0 / 256);  // large but finite: no overflow to inf
  Generator g(52);
  const Tensor y = randn({5, 6}, g, DType::f64).transpose(0, 1);
  const Tensor y32 = cast(y, DType::f32);
  EXPECT_EQ(y32.dtype(), DType::f32);
  EXPECT_EQ(y32.shape(), (Shape{6, 5}));
  EXPECT_LE(rel_or_abs_error(y32, y.to_vector()), 1e-7);
  EXPECT_EQ(cast(y32, DType::f64).to_vector(), y32.to_vector());  // widening is exact
  const Tensor ints = Tensor::from_vector({-3, 0, 7}, {3}, DType::i64);
  EXPECT_EQ(cast(cast(ints, DType::f32), DType::i32).to_vector(), (std::vector<double>{-3, 0, 7}));
}
