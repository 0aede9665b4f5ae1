// Every op on CUDA against its CPU twin (kernels/cpu/, itself tested against naive f64
// references): the same random inputs, made on the CPU and moved with .to(Device::cuda()),
// then viewed identically (contiguous, transposed, step-2 slices, broadcast), compared with
// ‖gpu − cpu‖ / ‖cpu‖ (f32 ~1e-5, f64 ~1e-12, bf16 ~1e-2; NaN never passes). Before each CUDA
// op the caching allocator is primed with blocks of the output's size filled with 0xFF bytes
// (NaN in every float dtype), so an element a kernel forgets to write shows up as NaN.
//
// Without a CUDA device every test calls GTEST_SKIP() with a message (ctest label `cuda`).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/ops.h"
#include "tensor/allocator.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::kernels;
using namespace somnus::test;

namespace {

const char* const kNoCuda = "no CUDA device: CUDA op tests need a GPU (run tools/gpu_check.sh on one)";

Device gpu() { return Device::cuda(0); }

// The same values on both devices, viewed the same way: the physical tensor is made on the
// CPU by `make`, copied to the GPU, and both copies get with_layout's view.
struct Pair {
  Tensor cpu, gpu;
};
Pair make_pair(const Shape& shape, Layout layout, const std::function<Tensor(const Shape&)>& make) {
  Tensor phys;
  Pair p;
  p.cpu = with_layout(shape, layout, [&](const Shape& s) {
    phys = make(s);
    return phys;
  });
  const Tensor phys_gpu = phys.to(gpu());
  p.gpu = with_layout(shape, layout, [&](const Shape&) { return phys_gpu; });
  return p;
}
Pair randn_pair(const Shape& shape, DType dtype, Layout layout, Generator& g) {
  return make_pair(shape, layout, [&](const Shape& s) { return randn(s, g, dtype); });
}
Pair rand_pair(const Shape& shape, DType dtype, Layout layout, Generator& g, double lo, double hi) {
  return make_pair(shape, layout, [&](const Shape& s) { return rand(s, g, dtype, Device::cpu(), lo, hi); });
}
Pair randint_pair(int64_t lo, int64_t hi, const Shape& shape, DType dtype, Generator& g) {
  const Tensor c = randint(lo, hi, shape, g, dtype);
  return {c, c.to(gpu())};
}
Pair both(const Tensor& cpu) { return {cpu, cpu.to(gpu())}; }
// Given logical values, the same values laid out per `layout` (written through the view).
Pair pair_with_values(const Tensor& values, Layout layout) {
  Tensor phys;
  Pair p;
  p.cpu = with_layout(values.shape(), layout, [&](const Shape& s) {
    phys = Tensor::zeros(s, values.dtype());
    return phys;
  });
  p.cpu.copy_(values);
  const Tensor phys_gpu = phys.to(gpu());
  p.gpu = with_layout(values.shape(), layout, [&](const Shape&) { return phys_gpu; });
  return p;
}

// Leaves `count` cached CUDA blocks of nbytes filled with 0xFF (NaN as f32/f64/bf16, -1 as
// integers), so that the next allocations of that size come back poisoned.
void poison_next(int64_t nbytes, int count = 3) {
  if (nbytes <= 0) return;
  cuda_allocator(0).empty_cache();
  std::vector<Tensor> blocks;
  for (int i = 0; i < count; ++i) blocks.push_back(Tensor::full({(nbytes + 3) / 4}, -1.0, DType::i32, gpu()));
}
void poison_next(const Shape& shape, DType dtype) { poison_next(shape_numel(shape) * dtype_size(dtype)); }

double tol_gpu(DType d) { return tol_for(d); }

void expect_close(const Tensor& g, const Tensor& c, double tol, const std::string& what) {
  ASSERT_TRUE(g.defined() && c.defined()) << what;
  EXPECT_TRUE(g.device().is_cuda()) << what;
  ASSERT_EQ(g.shape(), c.shape()) << what;
  ASSERT_EQ(g.dtype(), c.dtype()) << what;
  const double err = rel_or_abs_error(g.to_vector(), c.to_vector());
  EXPECT_LE(err, tol) << what << " (rel err " << err << ")";
}

void expect_equal(const Tensor& g, const Tensor& c, const std::string& what) {
  ASSERT_EQ(g.shape(), c.shape()) << what;
  ASSERT_EQ(g.dtype(), c.dtype()) << what;
  EXPECT_EQ(g.to_vector(), c.to_vector()) << what;
}

// Raw bytes, for bitwise comparisons.
std::vector<uint8_t> bytes_of(const Tensor& t) {
  const Tensor c = t.to(Device::cpu()).contiguous();
  std::vector<uint8_t> b(static_cast<size_t>(c.nbytes()));
  if (!b.empty()) std::memcpy(b.data(), c.data_ptr(), b.size());
  return b;
}

constexpr DType kIndexTypes[] = {DType::i32, DType::i64};

}  // namespace

// ---------------------------------------------------------------- harness

TEST(CudaOps, PoisonedBlocksReachTheNextAllocation) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  poison_next({1000}, DType::f32);
  const Tensor t = Tensor::empty({1000}, DType::f32, gpu());
  for (double v : t.to_vector()) ASSERT_TRUE(std::isnan(v)) << "the poisoning trick no longer reaches outputs";
}

// ---------------------------------------------------------------- elementwise

TEST(CudaOps, UnaryMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const Unary ops[] = {Unary::neg,  Unary::exp,     Unary::log,  Unary::sqrt, Unary::rsqrt, Unary::tanh,  Unary::sigmoid,
                       Unary::relu, Unary::gelu,    Unary::silu, Unary::pow,  Unary::abs,   Unary::square};
  const Shape shapes[] = {{7}, {33, 65}, {3, 5, 129}, {2, 3, 4, 5}, {1}, {4097}};
  Generator g(101);
  for (Unary op : ops) {
    const bool positive = op == Unary::log || op == Unary::sqrt || op == Unary::rsqrt || op == Unary::pow;
    const std::vector<double> scalars = op == Unary::pow ? std::vector<double>{2.0, 0.5, -1.5, 3.0}
                                                         : std::vector<double>{0.0};
    for (DType dtype : kFloatTypes) {
      for (const Shape& shape : shapes) {
        for (Layout layout : kLayouts) {
          for (double p : scalars) {
            const std::string what = std::string(unary_name(op)) + " p=" + std::to_string(p) + " " +
                                     case_name(shape, dtype, layout);
            const Pair x = positive ? rand_pair(shape, dtype, layout, g, 0.5, 2.0) : randn_pair(shape, dtype, layout, g);
            const Tensor ref = unary(op, x.cpu, p);
            poison_next(shape, dtype);
            expect_close(unary(op, x.gpu, p), ref, tol_gpu(dtype), what);
          }
        }
      }
    }
  }
}

TEST(CudaOps, UnaryBackwardMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const Unary ops[] = {Unary::neg,  Unary::exp,     Unary::log,  Unary::sqrt, Unary::rsqrt, Unary::tanh,  Unary::sigmoid,
                       Unary::relu, Unary::gelu,    Unary::silu, Unary::pow,  Unary::abs,   Unary::square};
  const Shape shapes[] = {{9}, {31, 67}, {2, 3, 130}};
  Generator g(102);
  for (Unary op : ops) {
    const bool positive = op == Unary::log || op == Unary::sqrt || op == Unary::rsqrt || op == Unary::pow;
    const double p = op == Unary::pow ? 2.5 : 0.0;
    for (DType dtype : kFloatTypes) {
      for (const Shape& shape : shapes) {
        for (Layout layout : kLayouts) {
          const std::string what = std::string(unary_name(op)) + "_backward " + case_name(shape, dtype, layout);
          const Pair x = positive ? rand_pair(shape, dtype, layout, g, 0.5, 2.0) : randn_pair(shape, dtype, layout, g);
          const Pair dy = randn_pair(shape, dtype, Layout::contiguous, g);
          const Tensor ref = unary_backward(op, x.cpu, dy.cpu, p);
          poison_next(shape, dtype);
          expect_close(unary_backward(op, x.gpu, dy.gpu, p), ref, tol_gpu(dtype), what);
        }
      }
    }
  }
}

TEST(CudaOps, BinaryBroadcastMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const Binary ops[] = {Binary::add, Binary::sub, Binary::mul, Binary::div, Binary::maximum, Binary::minimum};
  struct Case {
    Shape a, b;
  };
  const Case cases[] = {{{33, 65}, {33, 65}},   {{33, 65}, {65}},      {{4, 1, 7}, {3, 1}}, {{2, 3, 4, 5}, {1}},
                        {{1}, {5, 1, 1}},       {{1000, 17}, {1000, 1}}, {{8, 1, 6, 1}, {7, 1, 5}}, {{4099}, {4099}}};
  Generator g(103);
  for (Binary op : ops) {
    for (DType dtype : kFloatTypes) {
      for (const Case& c : cases) {
        for (Layout layout : kLayouts) {
          const std::string what = std::string(binary_name(op)) + " a " + case_name(c.a, dtype, layout) + " b " +
                                   shape_str(c.b);
          const Pair a = randn_pair(c.a, dtype, layout, g);
          // Divisors kept away from zero.
          const Pair b = op == Binary::div ? rand_pair(c.b, dtype, Layout::contiguous, g, 0.5, 2.0)
                                           : randn_pair(c.b, dtype, Layout::strided, g);
          const Tensor ref = binary(op, a.cpu, b.cpu);
          poison_next(ref.shape(), dtype);
          expect_close(binary(op, a.gpu, b.gpu), ref, tol_gpu(dtype), what);
        }
      }
    }
  }
}

TEST(CudaOps, BinaryUnalignedAndTailElements) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  // Contiguous views starting one element in (not 16-byte aligned: the scalar path) and
  // lengths that are not a multiple of the vector width (the tail loop).
  Generator g(104);
  for (DType dtype : kFloatTypes) {
    for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{15}, int64_t{17}, int64_t{1023}, int64_t{100001}}) {
      for (int64_t start : {int64_t{0}, int64_t{1}}) {
        const Pair a = randn_pair({n + 1}, dtype, Layout::contiguous, g);
        const Pair b = randn_pair({n + 1}, dtype, Layout::contiguous, g);
        const Tensor ac = a.cpu.slice(0, start, start + n), bc = b.cpu.slice(0, start, start + n);
        const Tensor ag = a.gpu.slice(0, start, start + n), bg = b.gpu.slice(0, start, start + n);
        const std::string what = "n " + std::to_string(n) + " start " + std::to_string(start) + " " + dtype_name(dtype);
        poison_next({n}, dtype);
        expect_close(binary(Binary::mul, ag, bg), binary(Binary::mul, ac, bc), tol_gpu(dtype), "mul " + what);
        poison_next({n}, dtype);
        expect_close(unary(Unary::gelu, ag), unary(Unary::gelu, ac), tol_gpu(dtype), "gelu " + what);
      }
    }
  }
}

TEST(CudaOps, BinaryPropagatesNan) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const Tensor a = Tensor::from_vector({NAN, 1.0, 2.0, NAN}, {4}, DType::f32, gpu());
  const Tensor b = Tensor::from_vector({0.0, NAN, 3.0, NAN}, {4}, DType::f32, gpu());
  for (Binary op : {Binary::maximum, Binary::minimum}) {
    const std::vector<double> v = binary(op, a, b).to_vector();
    EXPECT_TRUE(std::isnan(v[0]) && std::isnan(v[1]) && std::isnan(v[3])) << binary_name(op);
    EXPECT_EQ(v[2], op == Binary::maximum ? 3.0 : 2.0);
  }
}

TEST(CudaOps, WhereMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  struct Case {
    Shape cond, a, b;
  };
  const Case cases[] = {{{33, 65}, {33, 65}, {33, 65}}, {{33, 1}, {65}, {33, 65}}, {{5, 1, 7}, {1, 4, 7}, {1}},
                        {{4097}, {4097}, {1}}};
  const DType cond_types[] = {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64};
  Generator g(105);
  for (DType dtype : kFloatTypes) {
    for (DType ct : cond_types) {
      for (const Case& c : cases) {
        for (Layout layout : kLayouts) {
          const std::string what = std::string("cond ") + dtype_name(ct) + " " + case_name(c.a, dtype, layout);
          // cond in {0, 1}: randint then cast, so every cond dtype sees real zeros.
          const Tensor cond_cpu = randint(0, 2, c.cond, g, DType::i64).to(ct);
          const Pair cond = both(cond_cpu);
          const Pair a = randn_pair(c.a, dtype, layout, g);
          const Pair b = randn_pair(c.b, dtype, Layout::contiguous, g);
          const Tensor ref = where(cond.cpu, a.cpu, b.cpu);
          poison_next(ref.shape(), dtype);
          expect_equal(where(cond.gpu, a.gpu, b.gpu), ref, what);  // a selection is exact
        }
      }
    }
  }
}

// ---------------------------------------------------------------- reductions

// SOMNUS_REDUCE for the scope: "v1" (the previous kernels), "v2" (the new ones) or "" (the
// default: v2 for rows and whole tensors, v1 for columns with ≥ 128 blocks of 32 outputs, v2
// for fewer).
struct ReduceVersion {
  explicit ReduceVersion(const char* v) {
    if (*v != '\0') setenv("SOMNUS_REDUCE", v, 1);
  }
  ~ReduceVersion() { unsetenv("SOMNUS_REDUCE"); }
  ReduceVersion(const ReduceVersion&) = delete;
  ReduceVersion& operator=(const ReduceVersion&) = delete;
};
// The reduction versions a test runs: the default, v1 and v2; under quick_mode (the sanitizer
// runs of tools/gpu_check.sh) the default only.
std::vector<const char*> reduce_versions() {
  if (somnus::testing::quick_mode()) return {""};
  return {"", "v1", "v2"};
}
// The float types a reduce / softmax test runs; under quick_mode f32 and bf16 only: f64 has its
// own (V = 2) instances of the same kernels, which the sanitizer runs then leave out. On an
// H100 (2026-11-27) racecheck of these tests did not finish in 39 s with every type (29 s
// without f64).
std::vector<DType> float_types() {
  if (somnus::testing::quick_mode()) return {DType::f32, DType::bf16};
  return std::vector<DType>(std::begin(kFloatTypes), std::end(kFloatTypes));
}

TEST(CudaOps, ReduceMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  struct Case {
    Shape shape;
    std::vector<int64_t> dims;
  };
  // Covers: warp per row (n ≤ 512), block per row, chunked long rows (v1: rows < 128, n ≥ 65536;
  // v2: rows < 2048, n ≥ 32768; (2, 100003) with a tail of n % 8), columns (inner > 1), the
  // transposed-view column path, n = 1; v2's split columns: (512, 4096) over dim 0 (16 segments
  // of 32 rows, the norm backward's partial sums), (3, 20000, 5) over dim 1 (625 segments, inner
  // 5: scalar loads), (1000, 300) over dim 0 (32 segments of 32 rows, the last one 8).
  const Case cases[] = {{{1000}, {0}},          {{17, 513}, {0, 1, -1}}, {{3, 70000}, {1, 0}}, {{5, 7, 9}, {0, 1, 2}},
                        {{64, 2000}, {1}},      {{2, 1, 300}, {1, 2}},   {{4096, 33}, {1, 0}}, {{512, 4096}, {0}},
                        {{3, 20000, 5}, {1}},   {{1000, 300}, {0}},      {{2, 100003}, {1}}};
  // quick_mode: sum and max (mean is sum's kernel and a scale), keepdim false only.
  const std::vector<Reduce> ops = somnus::testing::quick_mode() ? std::vector<Reduce>{Reduce::sum, Reduce::max}
                                                                 : std::vector<Reduce>{Reduce::sum, Reduce::mean, Reduce::max};
  const std::vector<bool> keepdims = somnus::testing::quick_mode() ? std::vector<bool>{false} : std::vector<bool>{false, true};
  Generator g(106);
  for (const char* version : reduce_versions()) {
    const ReduceVersion scoped(version);
    for (Reduce op : ops) {
      for (DType dtype : float_types()) {
        for (const Case& c : cases) {
          for (Layout layout : kLayouts) {
            // Sums of positive values: no cancellation, so the relative bound is meaningful.
            const Pair x = op == Reduce::max ? randn_pair(c.shape, dtype, layout, g)
                                             : rand_pair(c.shape, dtype, layout, g, 0.5, 1.5);
            for (int64_t dim : c.dims) {
              for (bool keepdim : keepdims) {
                const std::string what = std::string(reduce_name(op)) + " dim " + std::to_string(dim) +
                                         (keepdim ? " keepdim " : " ") + case_name(c.shape, dtype, layout) + " " +
                                         (*version ? version : "default");
                const Tensor ref = reduce(op, x.cpu, dim, keepdim);
                poison_next(ref.shape(), dtype);
                const Tensor out = reduce(op, x.gpu, dim, keepdim);
                if (op == Reduce::max) {
                  expect_equal(out, ref, what);  // max is exact
                } else {
                  expect_close(out, ref, tol_gpu(dtype), what);
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(CudaOps, ReduceAllLongVectorsAndDeterminism) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(107);
  for (const char* version : reduce_versions()) {
    const ReduceVersion scoped(version);
    for (DType dtype : float_types()) {
      for (int64_t n : {int64_t{1}, int64_t{511}, int64_t{513}, int64_t{65536}, int64_t{300001}, int64_t{4000000}}) {
        if (n > 300001 && somnus::testing::quick_mode()) continue;
        const Pair x = rand_pair({n}, dtype, Layout::contiguous, g, 0.5, 1.5);
        for (Reduce op : {Reduce::sum, Reduce::mean, Reduce::max}) {
          const std::string what = std::string(reduce_name(op)) + " all n " + std::to_string(n) + " " +
                                   dtype_name(dtype) + " " + (*version ? version : "default");
          const Tensor ref = reduce_all(op, x.cpu);
          poison_next(ref.shape(), dtype);
          const Tensor a = reduce_all(op, x.gpu);
          expect_close(a, ref, tol_gpu(dtype), what);
          const Tensor b = reduce_all(op, x.gpu);
          EXPECT_EQ(bytes_of(a), bytes_of(b)) << what << ": two runs differ bitwise";
        }
      }
    }
  }
}

// v2's split paths (segments of columns, chunks of rows) give the same bits run to run, and the
// same bits whether x is 16-byte aligned (vector loads) or one element off (scalar loads): the
// summation order depends on the shape alone.
TEST(CudaOps, ReduceSplitPathsAreBitwiseReproducible) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  struct Case {
    Shape shape;
    int64_t dim;
  };
  // (1, 2^22 + 3): the row kernel's vector path with a tail against the scalar path (the offset
  // copy), whose rows are chunked alike; skipped under quick_mode with 2^22 itself.
  const Case cases[] = {{{512, 4096}, 0}, {{3, 20000, 5}, 1}, {{1000, 296}, 0},
                        {{2, 100003}, 1}, {{1, 1 << 22}, 1},  {{1, (1 << 22) + 3}, 1}};
  Generator g(109);
  // The default (v1's column kernel for (512, 4096) since 2026-11-27, v2's split columns for the
  // other two column cases) and v2 everywhere; quick_mode: the default only.
  std::vector<const char*> versions = {"", "v2"};
  if (somnus::testing::quick_mode()) versions.pop_back();
  for (const char* version : versions) {
    const ReduceVersion scoped(version);
    for (DType dtype : float_types()) {
      for (const Case& c : cases) {
        const int64_t numel = shape_numel(c.shape);
        if (numel >= (int64_t{1} << 22) && somnus::testing::quick_mode()) continue;
        // One element more than x: x is the view from element 1 (misaligned), `aligned` a copy.
        const Tensor buf = rand({numel + 1}, g, dtype, Device::cpu(), 0.5, 1.5).to(gpu());
        const Tensor off = buf.slice(0, 1, numel + 1).view(c.shape);
        const Tensor aligned = off.clone();
        for (Reduce op : {Reduce::sum, Reduce::mean, Reduce::max}) {
          const std::string what = std::string(reduce_name(op)) + " dim " + std::to_string(c.dim) + " " +
                                   case_name(c.shape, dtype, Layout::contiguous) + " " +
                                   (*version ? version : "default");
          const Tensor a = reduce(op, aligned, c.dim);
          expect_close(a, reduce(op, aligned.to(Device::cpu()), c.dim), tol_gpu(dtype), what);
          EXPECT_EQ(bytes_of(a), bytes_of(reduce(op, aligned, c.dim))) << what << ": two runs differ bitwise";
          EXPECT_EQ(bytes_of(a), bytes_of(reduce(op, off, c.dim))) << what << ": aligned and offset x differ bitwise";
        }
      }
    }
  }
}

TEST(CudaOps, ReduceScalarsEmptyDimsAndNan) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const Tensor s = Tensor::scalar(3.5, DType::f32, gpu());
  EXPECT_EQ(reduce(Reduce::sum, s, 0).item(), 3.5);
  EXPECT_EQ(argmax(s, 0).item(), 0.0);
  // A sum over a dim of size 0 is 0; a mean is NaN (0/0), as on the CPU.
  const Tensor e = Tensor::zeros({3, 0}, DType::f32, gpu());
  EXPECT_EQ(reduce(Reduce::sum, e, 1).to_vector(), (std::vector<double>{0, 0, 0}));
  for (double v : reduce(Reduce::mean, e, 1).to_vector()) EXPECT_TRUE(std::isnan(v));
  // NaN propagates through max and wins argmax.
  const Tensor x = Tensor::from_vector({1, NAN, 5, 2, 9, 3}, {2, 3}, DType::f32, gpu());
  const std::vector<double> m = reduce(Reduce::max, x, 1).to_vector();
  EXPECT_TRUE(std::isnan(m[0]));
  EXPECT_EQ(m[1], 9.0);
  EXPECT_EQ(argmax(x, 1).to_vector(), (std::vector<double>{1, 1}));
}

TEST(CudaOps, ArgmaxMatchesCpuAndTakesTheFirstTie) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  struct Case {
    Shape shape;
    std::vector<int64_t> dims;
  };
  const Case cases[] = {{{1000}, {0}},          {{17, 513}, {0, 1}}, {{3, 70000}, {1}},   {{5, 7, 9}, {0, 1, 2}},
                        {{300, 20}, {1, 0}},    {{512, 4096}, {0}},  {{3, 20000, 5}, {1}}, {{1000, 300}, {0}}};
  Generator g(108);
  for (const char* version : reduce_versions()) {
    const ReduceVersion scoped(version);
    for (DType dtype : kFloatTypes) {
      for (const Case& c : cases) {
        for (Layout layout : kLayouts) {
          const Pair x = randn_pair(c.shape, dtype, layout, g);
          for (int64_t dim : c.dims) {
            const std::string what = "argmax dim " + std::to_string(dim) + " " + case_name(c.shape, dtype, layout) +
                                     " " + (*version ? version : "default");
            const Tensor ref = argmax(x.cpu, dim);
            poison_next(ref.shape(), DType::i64);
            expect_equal(argmax(x.gpu, dim), ref, what);
          }
        }
      }
    }
    // Ties: values drawn from {0, 1, 2, 3} so the max repeats in every row; the first wins —
    // also across the chunks of a long row (n = 100000) and the segments of a column (n = 5000).
    for (int64_t n : {int64_t{7}, int64_t{600}, int64_t{5000}, int64_t{100000}}) {
      const Tensor ties = randint(0, 4, {3, n}, g, DType::i64).to(DType::f32);
      expect_equal(argmax(ties.to(gpu()), 1), argmax(ties, 1), "ties n " + std::to_string(n) + " " + version);
      expect_equal(argmax(ties.to(gpu()), 0), argmax(ties, 0), "ties dim 0 n " + std::to_string(n) + " " + version);
      const Tensor cols = randint(0, 4, {n, 40}, g, DType::i64).to(DType::f32);
      expect_equal(argmax(cols.to(gpu()), 0), argmax(cols, 0), "ties columns n " + std::to_string(n) + " " + version);
    }
  }
}

TEST(CudaOps, SumToMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  struct Case {
    Shape from, to;
  };
  const Case cases[] = {{{64, 33, 96}, {96}}, {{64, 33, 96}, {33, 1}}, {{4, 5, 6}, {4, 1, 6}}, {{8192, 768}, {768}}};
  Generator g(109);
  for (DType dtype : kFloatTypes) {
    for (const Case& c : cases) {
      const Pair x = rand_pair(c.from, dtype, Layout::contiguous, g, 0.5, 1.5);
      expect_close(sum_to(x.gpu, c.to), sum_to(x.cpu, c.to), tol_gpu(dtype),
                   "sum_to " + shape_str(c.from) + " -> " + shape_str(c.to) + " " + dtype_name(dtype));
    }
  }
}

// ---------------------------------------------------------------- softmax

TEST(CudaOps, SoftmaxMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  // n ≤ 1024: warp per row (each register-count variant); n > 1024: block per row, with the
  // row cached in shared memory up to 10240 f32 and re-read beyond.
  const int64_t ns[] = {1, 7, 32, 33, 100, 257, 1000, 1024, 1025, 3000, 5121, 10240, 10241, 50257};
  Generator g(110);
  for (DType dtype : float_types()) {
    for (int64_t n : ns) {
      const int64_t rows = n > 5000 ? 3 : 37;
      for (Layout layout : kLayouts) {
        for (bool log : {false, true}) {
          const Shape shape{rows, n};
          const std::string what = std::string(log ? "log_softmax " : "softmax ") + case_name(shape, dtype, layout);
          const Pair x = make_pair(shape, layout, [&](const Shape& s) { return randn(s, g, dtype, Device::cpu(), 0.0, 3.0); });
          const Tensor ref = log ? log_softmax(x.cpu) : softmax(x.cpu);
          poison_next(shape, dtype);
          expect_close(log ? log_softmax(x.gpu) : softmax(x.gpu), ref, tol_gpu(dtype), what);
        }
      }
    }
  }
  // A 3-D permuted view and huge logits (stability).
  const Pair x3 = make_pair({4, 6, 77}, Layout::contiguous, [&](const Shape& s) { return randn(s, g, DType::f32); });
  const Tensor p_cpu = x3.cpu.permute({1, 0, 2}), p_gpu = x3.gpu.permute({1, 0, 2});
  expect_close(softmax(p_gpu), softmax(p_cpu), 1e-5, "softmax permuted");
  const Tensor big = Tensor::from_vector({1000.0, 1001.0, 1002.0, -1e30}, {1, 4}, DType::f32);
  expect_close(softmax(big.to(gpu())), softmax(big), 1e-6, "softmax huge logits");
  expect_close(log_softmax(big.to(gpu())), log_softmax(big), 1e-6, "log_softmax huge logits");
}

TEST(CudaOps, SoftmaxBackwardMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const int64_t ns[] = {1, 33, 512, 1024, 1025, 4000, 50257};
  Generator g(111);
  for (DType dtype : float_types()) {
    for (int64_t n : ns) {
      const int64_t rows = n > 4000 ? 2 : 19;
      for (Layout layout : kLayouts) {
        for (bool log : {false, true}) {
          const Shape shape{rows, n};
          const std::string what =
              std::string(log ? "log_softmax_backward " : "softmax_backward ") + case_name(shape, dtype, layout);
          const Tensor x = randn(shape, g, dtype);
          const Pair y = pair_with_values(log ? log_softmax(x) : softmax(x), layout);
          const Pair dy = randn_pair(shape, dtype, layout, g);
          const Tensor ref = log ? log_softmax_backward(y.cpu, dy.cpu) : softmax_backward(y.cpu, dy.cpu);
          poison_next(shape, dtype);
          const Tensor out = log ? log_softmax_backward(y.gpu, dy.gpu) : softmax_backward(y.gpu, dy.gpu);
          expect_close(out, ref, tol_gpu(dtype), what);
        }
      }
    }
  }
}

// ---------------------------------------------------------------- matmul

namespace {

struct Mnk {
  int64_t M, K, N;
};

enum class BMode { none, shared_2d, batched, batch_one };  // none: a is 2-D

const char* bmode_name(BMode m) {
  switch (m) {
    case BMode::none: return "2-D";
    case BMode::shared_2d: return "batched a, shared 2-D b";
    case BMode::batched: return "batched a and b";
    case BMode::batch_one: return "batched a, b (1, K, N)";
  }
  return "?";
}

}  // namespace

TEST(CudaOps, MatmulMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const Mnk sizes[] = {{1, 1, 1}, {4, 8, 3}, {17, 33, 9}, {64, 64, 64}, {5, 1, 7}, {3, 0, 4}, {37, 19, 1}, {100, 70, 48}};
  const std::pair<Layout, Layout> layouts[] = {{Layout::contiguous, Layout::contiguous},
                                               {Layout::transposed, Layout::contiguous},
                                               {Layout::contiguous, Layout::transposed},
                                               {Layout::transposed, Layout::transposed},
                                               {Layout::strided, Layout::strided}};
  struct Epi {
    bool bias, gelu, pre;
  };
  const Epi epis[] = {{false, false, false}, {true, false, false}, {false, true, false}, {true, true, true}};
  const int64_t Bt = 3;
  Generator g(112);
  for (DType dtype : kFloatTypes) {
    for (const Mnk& s : sizes) {
      for (BMode bm : {BMode::none, BMode::shared_2d, BMode::batched, BMode::batch_one}) {
        const Shape as = bm == BMode::none ? Shape{s.M, s.K} : Shape{Bt, s.M, s.K};
        const Shape bs = (bm == BMode::none || bm == BMode::shared_2d) ? Shape{s.K, s.N}
                         : bm == BMode::batched                         ? Shape{Bt, s.K, s.N}
                                                                        : Shape{1, s.K, s.N};
        for (const auto& [la, lb] : layouts) {
          const Pair a = randn_pair(as, dtype, la, g);
          const Pair b = randn_pair(bs, dtype, lb, g);
          const Pair bias = randn_pair({s.N}, dtype, Layout::contiguous, g);
          for (const Epi& e : epis) {
            const std::string what = std::string(bmode_name(bm)) + " a " + case_name(as, dtype, la) + " b " +
                                     layout_name(lb) + " N " + std::to_string(s.N) + (e.bias ? " +bias" : "") +
                                     (e.gelu ? " gelu" : "") + (e.pre ? " pre_gelu" : "");
            Tensor pre_cpu, pre_gpu;
            const Tensor ref = matmul(a.cpu, b.cpu, e.bias ? bias.cpu : Tensor(), e.gelu, e.pre ? &pre_cpu : nullptr);
            poison_next(ref.shape(), dtype);
            const Tensor out = matmul(a.gpu, b.gpu, e.bias ? bias.gpu : Tensor(), e.gelu, e.pre ? &pre_gpu : nullptr);
            // cuBLASLt's fused GELU may evaluate tanh with a faster approximation than tanhf.
            const double tol = (e.gelu && dtype == DType::f32) ? 1e-3 : tol_gpu(dtype);
            expect_close(out, ref, tol, what);
            if (e.pre) expect_close(pre_gpu, pre_cpu, tol_gpu(dtype), what + " (pre_gelu)");
          }
        }
      }
    }
  }
}

TEST(CudaOps, MatmulFusedEpiloguePaths) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  // N % 8 == 0 takes cuBLASLt's GELU_AUX_BIAS (pre_gelu written by the GEMM); N % 8 != 0 the
  // BIAS epilogue into pre_gelu then a gelu kernel. Both 2-D, folded batch and strided batch.
  Generator g(113);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t N : {int64_t{64}, int64_t{72}, int64_t{70}, int64_t{129}}) {
      for (BMode bm : {BMode::none, BMode::shared_2d, BMode::batched}) {
        const int64_t M = 48, K = 96, Bt = 2;
        const Shape as = bm == BMode::none ? Shape{M, K} : Shape{Bt, M, K};
        const Shape bs = bm == BMode::batched ? Shape{Bt, K, N} : Shape{K, N};
        const Pair a = randn_pair(as, dtype, Layout::contiguous, g);
        const Pair b = randn_pair(bs, dtype, Layout::transposed, g);  // a weight used as w^T
        const Pair bias = randn_pair({N}, dtype, Layout::contiguous, g);
        for (bool with_bias : {false, true}) {
          const std::string what = std::string(bmode_name(bm)) + " N " + std::to_string(N) + " " + dtype_name(dtype) +
                                   (with_bias ? " +bias" : "");
          Tensor pre_cpu, pre_gpu;
          const Tensor ref = matmul(a.cpu, b.cpu, with_bias ? bias.cpu : Tensor(), true, &pre_cpu);
          poison_next(ref.shape(), dtype);
          const Tensor out = matmul(a.gpu, b.gpu, with_bias ? bias.gpu : Tensor(), true, &pre_gpu);
          expect_close(out, ref, dtype == DType::f32 ? 1e-3 : 2e-2, what);
          expect_close(pre_gpu, pre_cpu, tol_gpu(dtype), what + " (pre_gelu)");
        }
      }
    }
  }
}

TEST(CudaOps, MatmulF32IsFullPrecisionByDefault) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  // K = 1024: TF32 (10-bit mantissa) would give ~1e-3; full f32 stays near 1e-6.
  Generator g(114);
  const Tensor a = randn({128, 1024}, g, DType::f32), b = randn({1024, 96}, g, DType::f32);
  const std::vector<double> ref = matmul(a.to(DType::f64), b.to(DType::f64)).to_vector();
  const double err = rel_or_abs_error(matmul(a.to(gpu()), b.to(gpu())).to_vector(), ref);
  EXPECT_LE(err, 1e-5) << "f32 matmul is not full precision by default (TF32 on?)";
#ifdef SOMNUS_WITH_CUDA
  ASSERT_FALSE(somnus::kernels::cuda::allow_tf32());
  somnus::kernels::cuda::set_allow_tf32(true);
  const double err_tf32 = rel_or_abs_error(matmul(a.to(gpu()), b.to(gpu())).to_vector(), ref);
  somnus::kernels::cuda::set_allow_tf32(false);
  EXPECT_LE(err_tf32, 5e-3) << "TF32 matmul far off";
#endif
}

TEST(CudaOps, MatmulTransposedViewsAreNotCopied) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(115);
  const Tensor a = randn({64, 32}, g, DType::f32).to(gpu());   // used as a^T: (32, 64)
  const Tensor w = randn({48, 64}, g, DType::f32).to(gpu());   // used as w^T: (64, 48)
  const Tensor a3 = randn({4, 32, 16}, g, DType::f32).to(gpu());  // batched, transposed per batch
  const Tensor b3 = randn({4, 32, 8}, g, DType::f32).to(gpu());
  Allocator& alloc = cuda_allocator(0);
  const int64_t before = alloc.stats().num_allocs;
  const Tensor out = matmul(a.transpose(0, 1), w.transpose(0, 1));
  EXPECT_EQ(alloc.stats().num_allocs - before, 1) << "only the output may be allocated";
  const int64_t before3 = alloc.stats().num_allocs;
  const Tensor out3 = matmul(a3.transpose(1, 2), b3);  // (4, 16, 32) @ (4, 32, 8)
  EXPECT_EQ(alloc.stats().num_allocs - before3, 1) << "only the output may be allocated (batched)";
  expect_close(out, matmul(a.cpu().transpose(0, 1), w.cpu().transpose(0, 1)), 1e-5, "transposed 2-D");
  expect_close(out3, matmul(a3.cpu().transpose(1, 2), b3.cpu()), 1e-5, "transposed batched");
}

TEST(CudaOps, MatmulExpandedBatchAndLargerShapes) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(116);
  // An expanded (stride-0) batch of a: the per-batch loop.
  const Tensor a = randn({1, 20, 30}, g, DType::f32), b = randn({5, 30, 12}, g, DType::f32);
  const Tensor bias = randn({12}, g, DType::f32);
  expect_close(matmul(a.to(gpu()).expand({5, 20, 30}), b.to(gpu()), bias.to(gpu()), true),
               matmul(a.expand({5, 20, 30}), b, bias, true), 1e-3, "expanded a, gelu");
  // A GPT-ish MLP shape, bf16 and f32.
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Pair x = randn_pair({4, 64, 256}, dtype, Layout::contiguous, g);
    const Pair w = randn_pair({256, 1024}, dtype, Layout::transposed, g);
    const Pair bb = randn_pair({1024}, dtype, Layout::contiguous, g);
    Tensor pre_c, pre_g;
    const Tensor ref = matmul(x.cpu, w.cpu, bb.cpu, true, &pre_c);
    poison_next(ref.shape(), dtype);
    expect_close(matmul(x.gpu, w.gpu, bb.gpu, true, &pre_g), ref, dtype == DType::f32 ? 1e-3 : 2e-2,
                 std::string("mlp ") + dtype_name(dtype));
    expect_close(pre_g, pre_c, tol_gpu(dtype), std::string("mlp pre_gelu ") + dtype_name(dtype));
  }
}

// ---------------------------------------------------------------- indexing

TEST(CudaOps, EmbeddingMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  struct Case {
    int64_t V, C;
    Shape ids;
  };
  const Case cases[] = {{10, 4, {7}}, {50, 33, {2, 5}}, {1000, 64, {8, 128}}, {7, 5, {}}, {300, 129, {3, 4, 5}}};
  Generator g(117);
  for (const Case& c : cases) {
    for (DType dtype : kFloatTypes) {
      for (DType it : kIndexTypes) {
        for (Layout layout : kLayouts) {
          const std::string what = "embedding ids " + shape_str(c.ids) + " " + dtype_name(it) + " " +
                                   case_name({c.V, c.C}, dtype, layout);
          const Pair w = randn_pair({c.V, c.C}, dtype, layout, g);
          const Pair ids = randint_pair(0, c.V, c.ids, it, g);
          const Tensor ref = embedding(w.cpu, ids.cpu);
          poison_next(ref.shape(), dtype);
          expect_equal(embedding(w.gpu, ids.gpu), ref, what);
          if (c.ids.size() == 2) {  // a strided view of the ids
            const Tensor ic = ids.cpu.transpose(0, 1), ig = ids.gpu.transpose(0, 1);
            expect_equal(embedding(w.gpu, ig), embedding(w.cpu, ic), what + " (transposed ids)");
          }
        }
      }
    }
  }
}

TEST(CudaOps, EmbeddingBackwardDeterministicIsBitwiseTheCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  // The sorted segment sum adds each id's rows in token order, exactly as the CPU does, so
  // the results agree bit for bit (and two runs agree with each other).
  struct Case {
    int64_t V, C;
    Shape ids;
  };
  const Case cases[] = {{10, 4, {7}}, {5, 200, {6, 9}}, {50, 96, {4096}}, {1000, 64, {8, 128}}, {3, 1, {}}};
  Generator g(118);
  for (const Case& c : cases) {
    for (DType dtype : kFloatTypes) {
      for (DType it : kIndexTypes) {
        for (Layout layout : {Layout::contiguous, Layout::strided}) {
          Shape dshape = c.ids;
          dshape.push_back(c.C);
          const std::string what = "embedding_backward ids " + shape_str(c.ids) + " " + dtype_name(it) + " " +
                                   case_name(dshape, dtype, layout) + " V " + std::to_string(c.V);
          const Pair ids = randint_pair(0, c.V, c.ids, it, g);
          const Pair dout = randn_pair(dshape, dtype, layout, g);
          const Tensor ref = embedding_backward(dout.cpu, ids.cpu, c.V, true);
          const Tensor a = embedding_backward(dout.gpu, ids.gpu, c.V, true);
          const Tensor b = embedding_backward(dout.gpu, ids.gpu, c.V, true);
          EXPECT_EQ(bytes_of(a), bytes_of(ref)) << what << ": not bitwise equal to the CPU";
          EXPECT_EQ(bytes_of(a), bytes_of(b)) << what << ": two runs differ";
        }
      }
    }
  }
}

TEST(CudaOps, EmbeddingBackwardAtomicMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(119);
  for (DType dtype : kFloatTypes) {
    for (DType it : kIndexTypes) {
      struct Case {
        int64_t V, N, C;
      };
      for (const Case& c : {Case{10, 7, 4}, Case{5, 54, 200}, Case{50, 4096, 96}}) {
        const int64_t V = c.V, N = c.N, C = c.C;
        const std::string what = "embedding_backward atomic V " + std::to_string(V) + " N " + std::to_string(N) + " " +
                                 dtype_name(dtype) + " " + dtype_name(it);
        const Pair ids = randint_pair(0, V, {N}, it, g);
        const Pair dout = randn_pair({N, C}, dtype, Layout::contiguous, g);
        expect_close(embedding_backward(dout.gpu, ids.gpu, V, false), embedding_backward(dout.cpu, ids.cpu, V, false),
                     tol_gpu(dtype), what);
      }
    }
  }
}

TEST(CudaOps, GatherAndScatterAddMatchCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const DType dtypes[] = {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64};
  const Shape xs{4, 5, 6};
  Generator g(120);
  for (DType dtype : dtypes) {
    for (DType it : kIndexTypes) {
      for (int64_t dim : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{-1}}) {
        const int64_t d = dim < 0 ? dim + 3 : dim;
        Shape is = {3, 4, 5};  // smaller than x outside dim
        is[d] = 7;             // and longer along it (repeats)
        const std::string what = std::string(dtype_name(dtype)) + " index " + dtype_name(it) + " dim " +
                                 std::to_string(dim);
        auto make_data = [&](const Shape& s) {
          return is_floating(dtype) ? randn(s, g, dtype) : randint(-50, 50, s, g, dtype);
        };
        const Pair x = make_pair(xs, Layout::transposed, make_data);
        const Pair index = randint_pair(0, xs[d], is, it, g);
        const Tensor ref = gather(x.cpu, dim, index.cpu);
        poison_next(ref.shape(), dtype);
        expect_equal(gather(x.gpu, dim, index.gpu), ref, "gather " + what);

        // scatter_add: src larger than index in one dim (only index's extent is read).
        Shape ss = is;
        ss[(d + 1) % 3] += 1;
        const Pair src = make_pair(ss, Layout::strided, make_data);
        const Tensor sref = scatter_add(xs, dim, index.cpu, src.cpu);
        const Tensor sout = scatter_add(xs, dim, index.gpu, src.gpu);
        if (is_floating(dtype)) {
          expect_close(sout, sref, tol_gpu(dtype), "scatter_add " + what);
        } else {
          expect_equal(sout, sref, "scatter_add " + what);
        }
      }
    }
  }
}

TEST(CudaOps, IndexSelectAndIndexAddMatchCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const DType dtypes[] = {DType::f32, DType::f64, DType::bf16, DType::i64};
  const Shape xs{6, 7, 8};
  Generator g(121);
  for (DType dtype : dtypes) {
    for (DType it : kIndexTypes) {
      for (int64_t dim : {int64_t{0}, int64_t{1}, int64_t{2}}) {
        for (Layout layout : kLayouts) {
          const std::string what = case_name(xs, dtype, layout) + " index " + dtype_name(it) + " dim " +
                                   std::to_string(dim);
          auto make_data = [&](const Shape& s) {
            return is_floating(dtype) ? randn(s, g, dtype) : randint(-50, 50, s, g, dtype);
          };
          const Pair x = make_pair(xs, layout, make_data);
          // A step-2 view of a length-20 index: 10 entries with repeats, stride 2.
          const Pair idx20 = randint_pair(0, xs[dim], {20}, it, g);
          const Tensor ic = idx20.cpu.slice(0, 0, 20, 2), ig = idx20.gpu.slice(0, 0, 20, 2);
          const Tensor ref = index_select(x.cpu, dim, ic);
          poison_next(ref.shape(), dtype);
          expect_equal(index_select(x.gpu, dim, ig), ref, "index_select " + what);

          Shape ss = xs;
          ss[dim] = 10;
          const Pair src = make_pair(ss, layout, make_data);
          const Tensor aref = index_add(xs, dim, ic, src.cpu);
          const Tensor aout = index_add(xs, dim, ig, src.gpu);
          if (is_floating(dtype)) {
            expect_close(aout, aref, tol_gpu(dtype), "index_add " + what);
          } else {
            expect_equal(aout, aref, "index_add " + what);
          }
        }
      }
    }
  }
}

TEST(CudaOps, ConcatSplitCastMatchCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(122);
  for (DType dtype : kFloatTypes) {
    const Pair a = randn_pair({3, 4, 5}, dtype, Layout::transposed, g);
    const Pair b = randn_pair({3, 2, 5}, dtype, Layout::strided, g);
    const Tensor cc = concat({a.cpu, b.cpu}, 1), cg = concat({a.gpu, b.gpu}, 1);
    expect_equal(cg, cc, std::string("concat ") + dtype_name(dtype));
    const std::vector<Tensor> parts = split(cg, {1, 4, 1}, 1);
    ASSERT_EQ(parts.size(), 3u);
    expect_equal(parts[1], split(cc, {1, 4, 1}, 1)[1], std::string("split ") + dtype_name(dtype));
    for (DType to : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64}) {
      const Tensor xc = a.cpu, xg = a.gpu;
      EXPECT_EQ(bytes_of(cast(xg, to)), bytes_of(cast(xc, to)))
          << "cast " << dtype_name(dtype) << " -> " << dtype_name(to) << " differs bitwise from the CPU";
    }
  }
}

// ---------------------------------------------------------------- edges and errors

TEST(CudaOps, ZeroSizedTensors) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const Tensor e = Tensor::zeros({0, 5}, DType::f32, gpu());
  EXPECT_EQ(unary(Unary::exp, e).shape(), (Shape{0, 5}));
  EXPECT_EQ(binary(Binary::add, e, Tensor::ones({5}, DType::f32, gpu())).shape(), (Shape{0, 5}));
  EXPECT_EQ(reduce(Reduce::sum, e, 0).to_vector(), std::vector<double>(5, 0.0));
  EXPECT_EQ(softmax(e).shape(), (Shape{0, 5}));
  EXPECT_EQ(matmul(e, Tensor::ones({5, 3}, DType::f32, gpu())).shape(), (Shape{0, 3}));
  // K = 0: out = gelu(bias), as on the CPU.
  const Tensor bias = Tensor::from_vector({-1.0, 0.5, 2.0}, {3}, DType::f32);
  const Tensor k0 = matmul(Tensor::zeros({2, 0}, DType::f32, gpu()), Tensor::zeros({0, 3}, DType::f32, gpu()),
                           bias.to(gpu()), true);
  expect_close(k0, matmul(Tensor::zeros({2, 0}), Tensor::zeros({0, 3}), bias, true), 1e-6, "K = 0");
}

TEST(CudaOps, BadInputThrowsOnCuda) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  const Tensor w = Tensor::ones({10, 4}, DType::f32, gpu());
  const Tensor bad_ids = Tensor::from_vector({1, 10, 2}, {3}, DType::i64, gpu());
  try {
    embedding(w, bad_ids);
    FAIL() << "out-of-range id on CUDA did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("embedding"), std::string::npos) << e.what();
  }
  EXPECT_THROW(embedding_backward(Tensor::ones({3, 4}, DType::f32, gpu()), bad_ids, 10), Error);
  const Tensor a_cpu = Tensor::ones({2, 3});
  try {
    matmul(a_cpu, Tensor::ones({3, 4}, DType::f32, gpu()));
    FAIL() << "matmul across devices did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos) << e.what();
  }
}
