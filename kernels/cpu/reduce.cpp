// CPU reductions over one dim: sum, mean, max, and argmax (first occurrence of the max; NaN
// counts as the max and propagates, as in PyTorch). Every accumulation is in f64.
//
// x (any strides) is seen as "kept" dims × the reduced dim (size n, stride sd); out is
// contiguous over the kept dims. Two loop shapes, picked by memory layout:
//   rows    — the reduced dim is innermost in memory (sd == 1, e.g. a sum over the last dim),
//             or nothing better applies: each output reduces one run of n elements. The run is
//             cut into fixed blocks of 4096; block results are combined in block order. With
//             many outputs the threads split the outputs; with few outputs (reduce_all) they
//             split the blocks of each run. The fixed blocks make the result independent of
//             the thread count: same input, same bits.
//   columns — the innermost kept dim is contiguous and the reduced dim is not (e.g. a bias
//             gradient, a sum over dim 0 of (B·T, C)): each task owns 128 adjacent outputs and
//             walks the n rows, accumulating a contiguous strip into 128 f64 accumulators
//             (vectorised), so memory is streamed row by row instead of gathered column-wise.
// Cost: n·outputs reads (4 B each for f32), about 1 FLOP per element; memory bound.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/backend.h"
#include "tensor/dispatch.h"

namespace somnus::kernels::cpu {

namespace {

constexpr int64_t kBlock = 4096;         // elements per block of a run (fixed: determinism)
constexpr int64_t kCols = 128;           // outputs per task in the column layout
constexpr int64_t kParallelMin = 32768;  // elements below which one thread does it all

template <class T> inline double ld(const T* p) { return static_cast<double>(static_cast<compute_t<T>>(*p)); }

// ---------------------------------------------------------------- policies

struct SumOp {
  using Acc = double;
  static Acc init() { return 0.0; }
  template <class T> static Acc run(const T* p, int64_t s, int64_t k0, int64_t k1) {
    double acc = 0.0;
    if (s == 1) {
#pragma omp simd reduction(+ : acc)
      for (int64_t k = k0; k < k1; ++k) acc += ld(p + k);
    } else {
      for (int64_t k = k0; k < k1; ++k) acc += ld(p + k * s);
    }
    return acc;
  }
  static void merge(Acc& a, const Acc& b) { a += b; }
  template <class T> static void step_row(Acc* acc, const T* p, int64_t len, int64_t) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) acc[i] += ld(p + i);
  }
};

struct MaxOp {
  using Acc = double;
  static Acc init() { return -std::numeric_limits<double>::infinity(); }
  static void step(Acc& a, double x) {
    if (x > a || x != x) a = x;  // once a is NaN it stays NaN
  }
  template <class T> static Acc run(const T* p, int64_t s, int64_t k0, int64_t k1) {
    if (s == 1) {  // vectorised: max in the compute type (exact), NaN tracked on the side
      using C = compute_t<T>;
      C m = -std::numeric_limits<C>::infinity();
      int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
      for (int64_t k = k0; k < k1; ++k) {
        const C v = static_cast<C>(p[k]);
        m = v > m ? v : m;
        nan |= v != v;
      }
      return nan ? std::numeric_limits<double>::quiet_NaN() : static_cast<double>(m);
    }
    Acc a = init();
    for (int64_t k = k0; k < k1; ++k) step(a, ld(p + k * s));
    return a;
  }
  static void merge(Acc& a, const Acc& b) { step(a, b); }
  template <class T> static void step_row(Acc* acc, const T* p, int64_t len, int64_t) {
    for (int64_t i = 0; i < len; ++i) step(acc[i], ld(p + i));
  }
};

struct ArgmaxOp {
  struct Acc {
    double v;
    int64_t i;  // -1: nothing seen yet
  };
  static Acc init() { return {-std::numeric_limits<double>::infinity(), -1}; }
  // Strictly greater wins, so ties keep the first index; the first NaN wins and stays.
  static void step(Acc& a, double x, int64_t k) {
    if (a.i < 0 || x > a.v || (x != x && a.v == a.v)) a = {x, k};
  }
  template <class T> static Acc run(const T* p, int64_t s, int64_t k0, int64_t k1) {
    Acc a = init();
    for (int64_t k = k0; k < k1; ++k) step(a, ld(p + k * s), k);
    return a;
  }
  static void merge(Acc& a, const Acc& b) {  // b comes from a later block
    if (b.i >= 0) step(a, b.v, b.i);
  }
  template <class T> static void step_row(Acc* acc, const T* p, int64_t len, int64_t k) {
    for (int64_t i = 0; i < len; ++i) step(acc[i], ld(p + i), k);
  }
};

// ---------------------------------------------------------------- driver

// emit(o, acc) writes output o (the flat index over the kept dims).
template <class P, class T, class Emit>
void reduce_impl(const Tensor& x, int64_t dim, Emit emit) {
  using Acc = typename P::Acc;
  const T* xp = static_cast<const T*>(x.data_ptr());
  const int64_t n = x.shape()[dim], sd = x.strides()[dim];
  Shape kept;
  Strides kept_x;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (d == dim) continue;
    kept.push_back(x.shape()[d]);
    kept_x.push_back(x.strides()[d]);
  }
  const int64_t M = shape_numel(kept);
  const int64_t nk = static_cast<int64_t>(kept.size());
  auto base_of = [&](int64_t o) {  // x offset of output o's run
    int64_t off = 0;
    for (int64_t d = nk - 1; d >= 0; --d) {
      off += (o % kept[d]) * kept_x[d];
      o /= kept[d];
    }
    return off;
  };

  const bool columns = nk > 0 && sd != 1 && kept_x.back() == 1 && kept.back() > 1 && n > 1;
  if (!columns) {
    const int64_t nblocks = std::max<int64_t>(1, (n + kBlock - 1) / kBlock);
    auto block = [&](int64_t off, int64_t b) {
      const int64_t k0 = b * kBlock, k1 = std::min(n, k0 + kBlock);
      return P::run(xp + off, sd, k0, k1);
    };
    if (M >= omp_get_max_threads() || nblocks == 1) {
#pragma omp parallel for schedule(static) if (M * n > kParallelMin && M > 1)
      for (int64_t o = 0; o < M; ++o) {
        const int64_t off = base_of(o);
        Acc a = n > 0 ? block(off, 0) : P::init();
        for (int64_t b = 1; b < nblocks; ++b) P::merge(a, block(off, b));
        emit(o, a);
      }
    } else {
      std::vector<Acc> part(static_cast<size_t>(nblocks));
      for (int64_t o = 0; o < M; ++o) {
        const int64_t off = base_of(o);
#pragma omp parallel for schedule(static) if (n > kParallelMin)
        for (int64_t b = 0; b < nblocks; ++b) part[b] = block(off, b);
        Acc a = part[0];
        for (int64_t b = 1; b < nblocks; ++b) P::merge(a, part[b]);
        emit(o, a);
      }
    }
    return;
  }

  const int64_t len_row = kept.back();
  const int64_t rows = M / len_row;
  const int64_t chunks = (len_row + kCols - 1) / kCols;
  const int64_t tasks = rows * chunks;
#pragma omp parallel for schedule(static) if (M * n > kParallelMin && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t r = t / chunks, c0 = (t % chunks) * kCols;
    const int64_t len = std::min(kCols, len_row - c0);
    const int64_t off = base_of(r * len_row + c0);
    std::array<Acc, kCols> acc;
    acc.fill(P::init());
    for (int64_t k = 0; k < n; ++k) P::step_row(acc.data(), xp + off + k * sd, len, k);
    for (int64_t i = 0; i < len; ++i) emit(r * len_row + c0 + i, acc[i]);
  }
}

}  // namespace

void reduce(Reduce op, const Tensor& x, int64_t dim, const Tensor& out) {
  visit_floating(x.dtype(), reduce_name(op), [&](auto tag) {
    using T = decltype(tag);
    T* y = static_cast<T*>(out.data_ptr());
    const double n = static_cast<double>(x.shape()[dim]);
    auto put = [y](int64_t o, double v) { y[o] = static_cast<T>(static_cast<compute_t<T>>(v)); };
    switch (op) {
      case Reduce::sum: return reduce_impl<SumOp, T>(x, dim, put);
      case Reduce::mean:
        return reduce_impl<SumOp, T>(x, dim, [&](int64_t o, double s) { put(o, s / n); });
      case Reduce::max: return reduce_impl<MaxOp, T>(x, dim, put);
    }
  });
}

void argmax(const Tensor& x, int64_t dim, const Tensor& out) {
  visit_floating(x.dtype(), "argmax", [&](auto tag) {
    using T = decltype(tag);
    int64_t* y = static_cast<int64_t*>(out.data_ptr());
    reduce_impl<ArgmaxOp, T>(x, dim, [y](int64_t o, const ArgmaxOp::Acc& a) { y[o] = std::max<int64_t>(a.i, 0); });
  });
}

}  // namespace somnus::kernels::cpu
