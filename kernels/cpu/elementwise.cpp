// CPU elementwise kernels: unary maps y = f(x) and their backward dx = dy·f'(x), binary ops on
// operands already broadcast to the output shape (stride-0 views), and where(cond, a, b).
//
// Algorithm: the operands' common shape is first coalesced (size-1 dims dropped, dims that are
// contiguous in every operand merged), so a contiguous or simply-broadcast problem becomes a
// few long rows. Rows are cut into chunks of 16K elements and the chunks spread over OpenMP
// threads. The inner loop has a unit-stride version (plus the "b is a scalar along the row"
// case of broadcasting) that the compiler vectorises, and a generic strided one.
// bf16 loads convert to f32, compute, and round back to nearest-even on store. f32 exp,
// sigmoid, silu and gelu use the vectorisable exp of vec_math.h (gelu as x·σ(2u), the same
// function as the tanh form without calling tanh).
//
// Cost per element: unary 1 read + 1 write (e.g. 8 B for f32), a handful of FLOPs (gelu ~ 15
// plus one exp); binary 2 reads + 1 write (12 B for f32), 1 FLOP. These kernels are memory
// bound; the shape of the loops is chosen so that they stream.
#include <array>
#include <cmath>

#include "kernels/backend.h"
#include "kernels/cpu/vec_math.h"
#include "tensor/dispatch.h"
#include "tensor/strided.h"

namespace somnus::kernels::cpu {

namespace {

constexpr int64_t kChunk = 16384;         // elements per parallel task
constexpr int64_t kParallelMin = 32768;   // below this, stay on one thread

// Calls row(RowView<K>) over every chunk of every innermost row of `shape` for K operands
// with the given strides (operand 0 is conventionally the output).
template <size_t K, class RowFn>
void for_rows(const Shape& shape, const std::array<Strides, K>& strides, RowFn&& row) {
  // Coalesce: drop size-1 dims, then merge dim i into dim i+1 when, for every operand,
  // stride[i] == stride[i+1] * size[i+1] (the two dims walk memory as one).
  Shape s;
  std::array<Strides, K> st;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 0) return;
    if (shape[d] == 1) continue;
    s.push_back(shape[d]);
    for (size_t k = 0; k < K; ++k) st[k].push_back(strides[k][d]);
  }
  for (int64_t d = static_cast<int64_t>(s.size()) - 2; d >= 0; --d) {
    bool merge = true;
    for (size_t k = 0; k < K; ++k) merge = merge && st[k][d] == st[k][d + 1] * s[d + 1];
    if (!merge) continue;
    s[d] *= s[d + 1];
    s.erase(s.begin() + d + 1);
    for (size_t k = 0; k < K; ++k) {
      st[k][d] = st[k][d + 1];
      st[k].erase(st[k].begin() + d + 1);
    }
  }
  const int64_t nd = static_cast<int64_t>(s.size());
  if (nd == 0) {  // a single element
    RowView<K> r;
    r.offset.fill(0);
    r.stride.fill(1);
    r.n = 1;
    row(r);
    return;
  }
  const int64_t inner = s[nd - 1];
  const int64_t rows = shape_numel(s) / inner;
  const int64_t per_row = (inner + kChunk - 1) / kChunk;
  const int64_t tasks = rows * per_row;
#pragma omp parallel for schedule(static) if (rows * inner > kParallelMin && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t rix = t / per_row, start = (t % per_row) * kChunk;
    RowView<K> r;
    r.n = std::min(kChunk, inner - start);
    int64_t rem = rix;
    for (size_t k = 0; k < K; ++k) r.offset[k] = start * st[k][nd - 1];
    for (int64_t d = nd - 2; d >= 0; --d) {
      const int64_t i = rem % s[d];
      rem /= s[d];
      for (size_t k = 0; k < K; ++k) r.offset[k] += i * st[k][d];
    }
    for (size_t k = 0; k < K; ++k) r.stride[k] = st[k][nd - 1];
    row(r);
  }
}

template <class T> inline compute_t<T> load(const T* p) { return static_cast<compute_t<T>>(*p); }
template <class T> inline T store(compute_t<T> v) { return static_cast<T>(v); }
// where's condition: any nonzero value (of any dtype) selects a.
template <class M> inline bool truthy(M v) { return static_cast<compute_t<M>>(v) != compute_t<M>(0); }

// ---------------------------------------------------------------- maps

template <class T, class F>
void map1(const Tensor& x, const Tensor& out, F f) {
  const T* xp = static_cast<const T*>(x.data_ptr());
  T* yp = static_cast<T*>(out.data_ptr());
  for_rows<2>(out.shape(), {out.strides(), x.strides()}, [&](const RowView<2>& r) {
    T* y = yp + r.offset[0];
    const T* xx = xp + r.offset[1];
    if (r.stride[0] == 1 && r.stride[1] == 1) {
#pragma omp simd
      for (int64_t i = 0; i < r.n; ++i) y[i] = store<T>(f(load(xx + i)));
    } else {
      for (int64_t i = 0; i < r.n; ++i) y[i * r.stride[0]] = store<T>(f(load(xx + i * r.stride[1])));
    }
  });
}

template <class T, class F>
void map2(const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  const T* ap = static_cast<const T*>(a.data_ptr());
  const T* bp = static_cast<const T*>(b.data_ptr());
  T* yp = static_cast<T*>(out.data_ptr());
  for_rows<3>(out.shape(), {out.strides(), a.strides(), b.strides()}, [&](const RowView<3>& r) {
    T* y = yp + r.offset[0];
    const T* aa = ap + r.offset[1];
    const T* bb = bp + r.offset[2];
    const int64_t sy = r.stride[0], sa = r.stride[1], sb = r.stride[2];
    if (sy == 1 && sa == 1 && sb == 1) {
#pragma omp simd
      for (int64_t i = 0; i < r.n; ++i) y[i] = store<T>(f(load(aa + i), load(bb + i)));
    } else if (sy == 1 && sa == 1 && sb == 0) {  // b broadcast along the row
      const auto bv = load(bb);
#pragma omp simd
      for (int64_t i = 0; i < r.n; ++i) y[i] = store<T>(f(load(aa + i), bv));
    } else if (sy == 1 && sa == 0 && sb == 1) {  // a broadcast along the row
      const auto av = load(aa);
#pragma omp simd
      for (int64_t i = 0; i < r.n; ++i) y[i] = store<T>(f(av, load(bb + i)));
    } else {
      for (int64_t i = 0; i < r.n; ++i) y[i * sy] = store<T>(f(load(aa + i * sa), load(bb + i * sb)));
    }
  });
}

template <class T>
void unary_typed(Unary op, const Tensor& x, const Tensor& out, double scalar) {
  using C = compute_t<T>;
  switch (op) {
    case Unary::neg: return map1<T>(x, out, [](C v) { return -v; });
    case Unary::exp: return map1<T>(x, out, [](C v) { return exp_c(v); });
    case Unary::log: return map1<T>(x, out, [](C v) { return std::log(v); });
    case Unary::sqrt: return map1<T>(x, out, [](C v) { return std::sqrt(v); });
    case Unary::rsqrt: return map1<T>(x, out, [](C v) { return C(1) / std::sqrt(v); });
    case Unary::tanh: return map1<T>(x, out, [](C v) { return std::tanh(v); });
    case Unary::sigmoid: return map1<T>(x, out, [](C v) { return sigmoid_c(v); });
    case Unary::relu: return map1<T>(x, out, [](C v) { return v < C(0) ? C(0) : v; });  // NaN passes, as on CUDA
    case Unary::gelu: return map1<T>(x, out, [](C v) { return gelu_c(v); });
    case Unary::silu: return map1<T>(x, out, [](C v) { return v * sigmoid_c(v); });
    case Unary::pow: {
      const C p = static_cast<C>(scalar);
      if (scalar == 2.0) return map1<T>(x, out, [](C v) { return v * v; });
      if (scalar == 1.0) return map1<T>(x, out, [](C v) { return v; });
      return map1<T>(x, out, [p](C v) { return std::pow(v, p); });
    }
    case Unary::abs: return map1<T>(x, out, [](C v) { return std::abs(v); });
    case Unary::square: return map1<T>(x, out, [](C v) { return v * v; });
  }
}

// f(x, dy) = dy · f'(x)
template <class T>
void unary_backward_typed(Unary op, const Tensor& x, const Tensor& dy, const Tensor& out, double scalar) {
  using C = compute_t<T>;
  switch (op) {
    case Unary::neg: return map2<T>(x, dy, out, [](C, C g) { return -g; });
    case Unary::exp: return map2<T>(x, dy, out, [](C v, C g) { return g * exp_c(v); });
    case Unary::log: return map2<T>(x, dy, out, [](C v, C g) { return g / v; });
    case Unary::sqrt: return map2<T>(x, dy, out, [](C v, C g) { return g * C(0.5) / std::sqrt(v); });
    case Unary::rsqrt: return map2<T>(x, dy, out, [](C v, C g) { return g * C(-0.5) / (v * std::sqrt(v)); });
    case Unary::tanh:
      return map2<T>(x, dy, out, [](C v, C g) {
        const C t = std::tanh(v);
        return g * (C(1) - t * t);
      });
    case Unary::sigmoid:
      return map2<T>(x, dy, out, [](C v, C g) {
        const C s = sigmoid_c(v);
        return g * s * (C(1) - s);
      });
    case Unary::relu: return map2<T>(x, dy, out, [](C v, C g) { return v > C(0) ? g : C(0); });
    case Unary::gelu: return map2<T>(x, dy, out, [](C v, C g) { return g * gelu_grad_c(v); });
    case Unary::silu:
      return map2<T>(x, dy, out, [](C v, C g) {
        const C s = sigmoid_c(v);
        return g * s * (C(1) + v * (C(1) - s));
      });
    case Unary::pow: {
      const C p = static_cast<C>(scalar);
      if (scalar == 2.0) return map2<T>(x, dy, out, [](C v, C g) { return g * C(2) * v; });
      if (scalar == 1.0) return map2<T>(x, dy, out, [](C, C g) { return g; });
      // x^0 is constant: 0, also at x = 0 where 0 · x^−1 would be NaN (as the CUDA twin and PyTorch).
      if (scalar == 0.0) return map2<T>(x, dy, out, [](C, C) { return C(0); });
      return map2<T>(x, dy, out, [p](C v, C g) { return g * p * std::pow(v, p - C(1)); });
    }
    case Unary::abs:
      return map2<T>(x, dy, out, [](C v, C g) { return v > C(0) ? g : (v < C(0) ? -g : C(0)); });
    case Unary::square: return map2<T>(x, dy, out, [](C v, C g) { return g * C(2) * v; });
  }
}

template <class T>
void binary_typed(Binary op, const Tensor& a, const Tensor& b, const Tensor& out) {
  using C = compute_t<T>;
  switch (op) {
    case Binary::add: return map2<T>(a, b, out, [](C u, C v) { return u + v; });
    case Binary::sub: return map2<T>(a, b, out, [](C u, C v) { return u - v; });
    case Binary::mul: return map2<T>(a, b, out, [](C u, C v) { return u * v; });
    case Binary::div: return map2<T>(a, b, out, [](C u, C v) { return u / v; });
    // NaN propagates, as in torch.maximum/minimum.
    case Binary::maximum:
      return map2<T>(a, b, out, [](C u, C v) { return (u != u || u > v) ? u : v; });
    case Binary::minimum:
      return map2<T>(a, b, out, [](C u, C v) { return (u != u || u < v) ? u : v; });
  }
}

}  // namespace

void unary(Unary op, const Tensor& x, const Tensor& out, double scalar) {
  visit_floating(x.dtype(), unary_name(op), [&](auto tag) { unary_typed<decltype(tag)>(op, x, out, scalar); });
}

void unary_backward(Unary op, const Tensor& x, const Tensor& dy, const Tensor& out, double scalar) {
  visit_floating(x.dtype(), unary_name(op),
                 [&](auto tag) { unary_backward_typed<decltype(tag)>(op, x, dy, out, scalar); });
}

void binary(Binary op, const Tensor& a, const Tensor& b, const Tensor& out) {
  visit_floating(a.dtype(), binary_name(op), [&](auto tag) { binary_typed<decltype(tag)>(op, a, b, out); });
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  visit_dtype(cond.dtype(), [&](auto ctag) {
    using M = decltype(ctag);
    visit_floating(a.dtype(), "where", [&](auto tag) {
      using T = decltype(tag);
      const M* cp = static_cast<const M*>(cond.data_ptr());
      const T* ap = static_cast<const T*>(a.data_ptr());
      const T* bp = static_cast<const T*>(b.data_ptr());
      T* yp = static_cast<T*>(out.data_ptr());
      for_rows<4>(out.shape(), {out.strides(), cond.strides(), a.strides(), b.strides()},
                  [&](const RowView<4>& r) {
                    T* y = yp + r.offset[0];
                    const M* c = cp + r.offset[1];
                    const T* aa = ap + r.offset[2];
                    const T* bb = bp + r.offset[3];
                    if (r.stride[0] == 1 && r.stride[1] == 1 && r.stride[2] == 1 && r.stride[3] == 1) {
                      for (int64_t i = 0; i < r.n; ++i) y[i] = truthy(c[i]) ? aa[i] : bb[i];
                    } else {
                      for (int64_t i = 0; i < r.n; ++i) {
                        const bool pick = truthy(c[i * r.stride[1]]);
                        y[i * r.stride[0]] = pick ? aa[i * r.stride[2]] : bb[i * r.stride[3]];
                      }
                    }
                  });
    });
  });
}

}  // namespace somnus::kernels::cpu
