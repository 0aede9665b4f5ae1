// Shared helpers of the CUDA op kernels (kernels/cuda/*.cu): compute-type loads and stores,
// float/double math overloads, 16-byte vector types, warp reductions, index-dtype dispatch,
// and dimension coalescing for strided layouts.
//
// Header-only and fmt-free (nvcc cannot compile fmt): errors go through somnus::throw_error.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "tensor/cuda/check.h"
#include "tensor/cuda/layout.cuh"
#include "tensor/dispatch.h"
#include "tensor/error.h"
#include "tensor/tensor.h"

namespace somnus::kernels::cuda {

using somnus::cuda::grid_for;
using somnus::cuda::kMaxDims;
using somnus::cuda::StridedLayout;

// ---------------------------------------------------------------- element access

// Load a stored element in its compute type (bf16 -> float) and store it back (rounding to
// nearest-even for bf16). Integral types compute in themselves.
template <class T>
__device__ __forceinline__ compute_t<T> load_c(const T* p) {
  return static_cast<compute_t<T>>(*p);
}
template <class T>
__device__ __forceinline__ void store_c(T* p, compute_t<T> v) {
  *p = static_cast<T>(v);
}

// V elements of T in one aligned load/store (16 bytes for the common V = 16 / sizeof(T)).
template <class T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <int V, class T>
__device__ __forceinline__ Vec<T, V> load_vec(const T* p, int64_t vi) {
  return reinterpret_cast<const Vec<T, V>*>(p)[vi];
}
template <int V, class T>
__device__ __forceinline__ void store_vec(T* p, int64_t vi, const Vec<T, V>& v) {
  reinterpret_cast<Vec<T, V>*>(p)[vi] = v;
}

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ---------------------------------------------------------------- math in the compute type

__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return log(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float m_rsqrt(float x) { return rsqrtf(x); }
__device__ __forceinline__ double m_rsqrt(double x) { return rsqrt(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float m_pow(float x, float p) { return powf(x, p); }
__device__ __forceinline__ double m_pow(double x, double p) { return pow(x, p); }
__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return fabs(x); }
__device__ __forceinline__ bool m_isnan(float x) { return isnan(x); }
__device__ __forceinline__ bool m_isnan(double x) { return isnan(x); }

template <class C>
__device__ __forceinline__ C m_sigmoid(C x) {
  return C(1) / (C(1) + m_exp(-x));
}

// gelu, tanh form: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
template <class C>
__device__ __forceinline__ C m_gelu(C x) {
  const C k = C(0.7978845608028654), c = C(0.044715);
  return C(0.5) * x * (C(1) + m_tanh(k * (x + c * x * x * x)));
}
// d gelu / dx = 0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²),  t = tanh(...).
template <class C>
__device__ __forceinline__ C m_gelu_grad(C x) {
  const C k = C(0.7978845608028654), c = C(0.044715);
  const C t = m_tanh(k * (x + c * x * x * x));
  return C(0.5) * (C(1) + t) + C(0.5) * x * (C(1) - t * t) * k * (C(1) + C(3) * c * x * x);
}

template <class C>
__device__ __forceinline__ C m_neg_inf() {
  return -INFINITY;
}

// ---------------------------------------------------------------- warp reductions

// Butterfly reductions: every lane ends with the result (softmax needs it in all lanes).
template <class C>
__device__ __forceinline__ C warp_allreduce_sum(C v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class C>
__device__ __forceinline__ C warp_allreduce_max(C v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const C w = __shfl_xor_sync(0xffffffffu, v, o);
    v = (m_isnan(v) || v >= w) ? v : w;  // NaN propagates, like torch.max
  }
  return v;
}

// ---------------------------------------------------------------- dispatch and device

// Index tensors are i32 or i64.
template <class F>
decltype(auto) visit_index(DType d, const char* op, F&& f) {
  switch (d) {
    case DType::i32: return f(int32_t{});
    case DType::i64: return f(int64_t{});
    default: throw_error(std::string(op) + ": index tensor must be i32 or i64, got " + dtype_name(d));
  }
}

inline void set_device(const Tensor& t) { CUDA_CHECK(cudaSetDevice(t.device().index)); }

inline int64_t wrap_dim(int64_t dim, int64_t nd, const char* op) {
  const int64_t d = dim < 0 ? dim + nd : dim;
  if (d < 0 || d >= (nd == 0 ? 1 : nd)) {
    throw_error(std::string(op) + ": dim " + std::to_string(dim) + " out of range for " + std::to_string(nd) +
                " dims");
  }
  return d;
}

// ---------------------------------------------------------------- layouts

// Shape and per-operand strides with size-1 dims dropped and adjacent dims merged wherever
// every operand is contiguous across them: a contiguous tensor of any rank becomes 1-D, a
// bias broadcast over (B, T, C) becomes 2-D. Fewer dims means fewer div/mods per element.
template <int K>
struct Collapsed {
  Shape shape;
  std::array<Strides, K> strides;

  // True when every operand is a plain contiguous run (or there is at most one element).
  bool contiguous() const {
    if (shape.empty()) return true;
    if (shape.size() != 1) return false;
    for (int k = 0; k < K; ++k) {
      if (strides[k][0] != 1) return false;
    }
    return true;
  }

  StridedLayout<K> layout(const char* op) const {
    if (shape.size() > static_cast<size_t>(kMaxDims)) {
      throw_error(std::string(op) + ": CUDA kernels support at most 8 non-mergeable dims, got " + shape_str(shape));
    }
    StridedLayout<K> l;
    l.nd = static_cast<int>(shape.size());
    for (int d = 0; d < l.nd; ++d) {
      l.shape[d] = shape[d];
      for (int k = 0; k < K; ++k) l.stride[k][d] = strides[k][d];
    }
    return l;
  }
};

template <int K>
Collapsed<K> collapse(const Shape& shape, const std::array<Strides, K>& strides) {
  Collapsed<K> c;
  // Walk from the innermost dim outwards, merging dim d into the current innermost kept dim
  // when stride[d] == stride[kept] * size[kept] for every operand.
  std::vector<int64_t> sizes;
  std::array<std::vector<int64_t>, K> st;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    if (!sizes.empty()) {
      bool merge = true;
      for (int k = 0; k < K; ++k) merge = merge && strides[k][d] == st[k].back() * sizes.back();
      if (merge) {
        sizes.back() *= shape[d];
        continue;
      }
    }
    sizes.push_back(shape[d]);
    for (int k = 0; k < K; ++k) st[k].push_back(strides[k][d]);
  }
  c.shape.assign(sizes.rbegin(), sizes.rend());
  for (int k = 0; k < K; ++k) c.strides[k].assign(st[k].rbegin(), st[k].rend());
  return c;
}

// The grid-stride loop that every elementwise-style kernel uses.
#define SOMNUS_GRID_STRIDE(i, n)                                                    \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

}  // namespace somnus::kernels::cuda
