// Elementwise ops on CUDA: unary (neg … square, pow by a scalar), their backward
// dx = dy·f'(x), binary (add, sub, mul, div, maximum, minimum) on pre-expanded inputs, and
// where(cond, a, b).
//
// Algorithm: one thread per element (or per 16-byte vector) with a grid-stride loop. The
// operands' shapes and strides are first collapsed (size-1 dims dropped, dims merged where
// every operand is contiguous across them). If the result is one contiguous run for every
// operand, the kernel reads and writes 16-byte vectors (4 f32, 8 bf16, 2 f64) when all
// pointers are 16-byte aligned, else scalars; otherwise the strided kernel maps each linear
// index to per-operand offsets through StridedLayout.
//
// Cost: ~1–20 FLOPs per element; bytes = (inputs + 1)·numel·sizeof(T) — memory bound, so the
// vector path and the dim collapsing (fewer div/mods) are what matter. The op is a uniform
// runtime switch inside the kernel rather than a template parameter: it costs a few
// instructions per element on a memory-bound loop and keeps compile time (2 archs) small.
// bf16 computes in f32, f64 in f64 — the same formulas as kernels/cpu/elementwise.cpp.
#include <cuda_runtime.h>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

// ---------------------------------------------------------------- the per-element math

template <class C>
__device__ __forceinline__ C unary_fn(Unary op, C x, C p) {
  switch (op) {
    case Unary::neg: return -x;
    case Unary::exp: return m_exp(x);
    case Unary::log: return m_log(x);
    case Unary::sqrt: return m_sqrt(x);
    case Unary::rsqrt: return m_rsqrt(x);
    case Unary::tanh: return m_tanh(x);
    case Unary::sigmoid: return m_sigmoid(x);
    case Unary::relu: return x < C(0) ? C(0) : x;  // NaN passes through
    case Unary::gelu: return m_gelu(x);
    case Unary::silu: return x * m_sigmoid(x);
    case Unary::pow: return m_pow(x, p);
    case Unary::abs: return m_abs(x);
    case Unary::square: return x * x;
  }
  return x;
}

// dx = dy · f'(x)
template <class C>
__device__ __forceinline__ C unary_grad_fn(Unary op, C x, C dy, C p) {
  switch (op) {
    case Unary::neg: return -dy;
    case Unary::exp: return dy * m_exp(x);
    case Unary::log: return dy / x;
    case Unary::sqrt: return dy * C(0.5) / m_sqrt(x);
    case Unary::rsqrt: return dy * C(-0.5) * m_rsqrt(x) / x;
    case Unary::tanh: {
      const C t = m_tanh(x);
      return dy * (C(1) - t * t);
    }
    case Unary::sigmoid: {
      const C s = m_sigmoid(x);
      return dy * s * (C(1) - s);
    }
    case Unary::relu: return x > C(0) ? dy : C(0);
    case Unary::gelu: return dy * m_gelu_grad(x);
    case Unary::silu: {
      const C s = m_sigmoid(x);
      return dy * s * (C(1) + x * (C(1) - s));
    }
    case Unary::pow: return p == C(0) ? C(0) : dy * p * m_pow(x, p - C(1));
    case Unary::abs: return x > C(0) ? dy : (x < C(0) ? -dy : C(0));
    case Unary::square: return dy * C(2) * x;
  }
  return dy;
}

template <class C>
__device__ __forceinline__ C binary_fn(Binary op, C a, C b) {
  switch (op) {
    case Binary::add: return a + b;
    case Binary::sub: return a - b;
    case Binary::mul: return a * b;
    case Binary::div: return a / b;
    case Binary::maximum: return (m_isnan(a) || a > b) ? a : b;  // NaN propagates
    case Binary::minimum: return (m_isnan(a) || a < b) ? a : b;
  }
  return a;
}

// ---------------------------------------------------------------- operand bundles
// Each op struct owns its pointers; K counts operands, the output first. apply() takes
// element offsets, apply_vec<V>() the index of a V-element vector in contiguous storage.

template <class T>
struct UnaryOp {
  static constexpr int K = 2;
  using C = compute_t<T>;
  T* out;
  const T* x;
  Unary op;
  C p;
  __device__ __forceinline__ void apply(const int64_t (&off)[K]) const {
    store_c(out + off[0], unary_fn<C>(op, load_c(x + off[1]), p));
  }
  template <int V>
  __device__ __forceinline__ void apply_vec(int64_t vi) const {
    const Vec<T, V> xv = load_vec<V>(x, vi);
    Vec<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = static_cast<T>(unary_fn<C>(op, static_cast<C>(xv.v[j]), p));
    store_vec<V>(out, vi, o);
  }
};

template <class T>
struct UnaryBackwardOp {
  static constexpr int K = 3;
  using C = compute_t<T>;
  T* out;
  const T* x;
  const T* dy;
  Unary op;
  C p;
  __device__ __forceinline__ void apply(const int64_t (&off)[K]) const {
    store_c(out + off[0], unary_grad_fn<C>(op, load_c(x + off[1]), load_c(dy + off[2]), p));
  }
  template <int V>
  __device__ __forceinline__ void apply_vec(int64_t vi) const {
    const Vec<T, V> xv = load_vec<V>(x, vi);
    const Vec<T, V> gv = load_vec<V>(dy, vi);
    Vec<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      o.v[j] = static_cast<T>(unary_grad_fn<C>(op, static_cast<C>(xv.v[j]), static_cast<C>(gv.v[j]), p));
    }
    store_vec<V>(out, vi, o);
  }
};

template <class T>
struct BinaryOp {
  static constexpr int K = 3;
  using C = compute_t<T>;
  T* out;
  const T* a;
  const T* b;
  Binary op;
  __device__ __forceinline__ void apply(const int64_t (&off)[K]) const {
    store_c(out + off[0], binary_fn<C>(op, load_c(a + off[1]), load_c(b + off[2])));
  }
  template <int V>
  __device__ __forceinline__ void apply_vec(int64_t vi) const {
    const Vec<T, V> av = load_vec<V>(a, vi);
    const Vec<T, V> bv = load_vec<V>(b, vi);
    Vec<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = static_cast<T>(binary_fn<C>(op, static_cast<C>(av.v[j]), static_cast<C>(bv.v[j])));
    store_vec<V>(out, vi, o);
  }
};

template <class T, class Cond>
struct WhereOp {
  static constexpr int K = 4;
  T* out;
  const Cond* cond;
  const T* a;
  const T* b;
  __device__ __forceinline__ static bool truthy(Cond c) { return static_cast<compute_t<Cond>>(c) != compute_t<Cond>(0); }
  __device__ __forceinline__ void apply(const int64_t (&off)[K]) const {
    out[off[0]] = truthy(cond[off[1]]) ? a[off[2]] : b[off[3]];
  }
  template <int V>
  __device__ __forceinline__ void apply_vec(int64_t vi) const {
    const Vec<Cond, V> cv = load_vec<V>(cond, vi);
    const Vec<T, V> av = load_vec<V>(a, vi);
    const Vec<T, V> bv = load_vec<V>(b, vi);
    Vec<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = truthy(cv.v[j]) ? av.v[j] : bv.v[j];
    store_vec<V>(out, vi, o);
  }
};

// ---------------------------------------------------------------- kernels

// Contiguous operands: vectors of V elements, then a scalar tail (V == 1: scalars only).
template <class Op, int V>
__global__ void elementwise_contiguous_kernel(Op op, int64_t n) {
  const int64_t nvec = V > 1 ? n / V : 0;
  if constexpr (V > 1) {
    SOMNUS_GRID_STRIDE(vi, nvec) { op.template apply_vec<V>(vi); }
  }
  SOMNUS_GRID_STRIDE(t, n - nvec * V) {
    const int64_t i = nvec * V + t;
    int64_t off[Op::K];
#pragma unroll
    for (int k = 0; k < Op::K; ++k) off[k] = i;
    op.apply(off);
  }
}

template <class Op>
__global__ void elementwise_strided_kernel(Op op, StridedLayout<Op::K> layout, int64_t n) {
  SOMNUS_GRID_STRIDE(i, n) {
    int64_t off[Op::K];
    layout.offsets(i, off);
    op.apply(off);
  }
}

constexpr int kThreads = 256;

// Launch `op` over `shape`; operands[k] is (strides, data pointer, element size) of operand k.
// V is the vector width (16 / sizeof(T) of the output type).
template <int V, class Op>
void launch_elementwise(const Op& op, const Shape& shape, const std::array<Strides, Op::K>& strides,
                        const std::array<const void*, Op::K>& ptrs, const std::array<size_t, Op::K>& elem_sizes,
                        const char* name) {
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  const Collapsed<Op::K> c = collapse<Op::K>(shape, strides);
  if (c.contiguous()) {
    bool vec_ok = V > 1 && n >= V;
    for (int k = 0; k < Op::K; ++k) vec_ok = vec_ok && aligned_to(ptrs[k], elem_sizes[k] * V);
    if (vec_ok) {
      elementwise_contiguous_kernel<Op, V><<<grid_for(n / V, kThreads), kThreads>>>(op, n);
      CUDA_CHECK_LAUNCH();
    } else {
      elementwise_contiguous_kernel<Op, 1><<<grid_for(n, kThreads), kThreads>>>(op, n);
      CUDA_CHECK_LAUNCH();
    }
    return;
  }
  elementwise_strided_kernel<Op><<<grid_for(n, kThreads), kThreads>>>(op, c.layout(name), n);
  CUDA_CHECK_LAUNCH();
}

template <class T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

}  // namespace

// ---------------------------------------------------------------- backend entry points

void unary(Unary op, const Tensor& x, const Tensor& out, double scalar) {
  set_device(out);
  visit_floating(out.dtype(), "unary", [&](auto tag) {
    using T = decltype(tag);
    UnaryOp<T> f{static_cast<T*>(out.data_ptr()), static_cast<const T*>(x.data_ptr()), op,
                 static_cast<compute_t<T>>(scalar)};
    launch_elementwise<vec_width<T>()>(f, out.shape(), {out.strides(), x.strides()}, {f.out, f.x},
                                       {sizeof(T), sizeof(T)}, "unary");
  });
}

void unary_backward(Unary op, const Tensor& x, const Tensor& dy, const Tensor& out, double scalar) {
  set_device(out);
  visit_floating(out.dtype(), "unary_backward", [&](auto tag) {
    using T = decltype(tag);
    UnaryBackwardOp<T> f{static_cast<T*>(out.data_ptr()), static_cast<const T*>(x.data_ptr()),
                         static_cast<const T*>(dy.data_ptr()), op, static_cast<compute_t<T>>(scalar)};
    launch_elementwise<vec_width<T>()>(f, out.shape(), {out.strides(), x.strides(), dy.strides()},
                                       {f.out, f.x, f.dy}, {sizeof(T), sizeof(T), sizeof(T)}, "unary_backward");
  });
}

void binary(Binary op, const Tensor& a, const Tensor& b, const Tensor& out) {
  set_device(out);
  visit_floating(out.dtype(), "binary", [&](auto tag) {
    using T = decltype(tag);
    BinaryOp<T> f{static_cast<T*>(out.data_ptr()), static_cast<const T*>(a.data_ptr()),
                  static_cast<const T*>(b.data_ptr()), op};
    launch_elementwise<vec_width<T>()>(f, out.shape(), {out.strides(), a.strides(), b.strides()}, {f.out, f.a, f.b},
                                       {sizeof(T), sizeof(T), sizeof(T)}, "binary");
  });
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  set_device(out);
  // where selects, it does not compute: any dtype works for a/b/out, any dtype for cond.
  visit_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    visit_dtype(cond.dtype(), [&](auto ctag) {
      using Cond = decltype(ctag);
      WhereOp<T, Cond> f{static_cast<T*>(out.data_ptr()), static_cast<const Cond*>(cond.data_ptr()),
                         static_cast<const T*>(a.data_ptr()), static_cast<const T*>(b.data_ptr())};
      launch_elementwise<vec_width<T>()>(f, out.shape(), {out.strides(), cond.strides(), a.strides(), b.strides()},
                                         {f.out, f.cond, f.a, f.b}, {sizeof(T), sizeof(Cond), sizeof(T), sizeof(T)},
                                         "where");
    });
  });
}

}  // namespace somnus::kernels::cuda
