// CPU SwiGLU, forward and backward (GELU is Unary::gelu in elementwise.cpp and the matmul
// GELU epilogue; its backward is unary_backward(gelu)).
//
//   y = silu(g)·u = g·σ(g)·u
//   dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))      du = dy·g·σ(g)
// One fused pass instead of silu, mul (forward) and silu', 3 muls (backward): the forward
// reads 2 and writes 1 tensor (the composition reads 3, writes 2); the backward reads 3
// and writes 2. σ uses the vectorisable exp of vec_math.h, like the CUDA twin's __expf.
// Elements are spread over OpenMP threads in static contiguous blocks.
#include <omp.h>

#include "kernels/backend.h"
#include "kernels/cpu/vec_math.h"
#include "tensor/dispatch.h"

namespace somnus::kernels::cpu {

namespace {

constexpr int64_t kParallelMin = 32768;

template <class T>
void swiglu_typed(const Tensor& gate, const Tensor& up, const Tensor& out) {
  using C = compute_t<T>;
  const int64_t n = gate.numel();
  const T* gp = gate.data<T>();
  const T* up_ = up.data<T>();
  T* yp = out.data<T>();
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const C g = static_cast<C>(gp[i]);
    yp[i] = static_cast<T>(g * sigmoid_c(g) * static_cast<C>(up_[i]));
  }
}

template <class T>
void swiglu_backward_typed(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate,
                           const Tensor& dup) {
  using C = compute_t<T>;
  const int64_t n = gate.numel();
  const T* gp = gate.data<T>();
  const T* up_ = up.data<T>();
  const T* dyp = dy.data<T>();
  T* dgp = dgate.data<T>();
  T* dup_ = dup.data<T>();
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const C g = static_cast<C>(gp[i]), u = static_cast<C>(up_[i]), d = static_cast<C>(dyp[i]);
    const C s = sigmoid_c(g);
    dgp[i] = static_cast<T>(d * u * s * (C(1) + g * (C(1) - s)));
    dup_[i] = static_cast<T>(d * g * s);
  }
}

}  // namespace

void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) {
  visit_floating(gate.dtype(), "swiglu", [&](auto tag) { swiglu_typed<decltype(tag)>(gate, up, out); });
}

void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, const Tensor& dup) {
  visit_floating(gate.dtype(), "swiglu_backward",
                 [&](auto tag) { swiglu_backward_typed<decltype(tag)>(gate, up, dy, dgate, dup); });
}

}  // namespace somnus::kernels::cpu
