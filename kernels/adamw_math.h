// The per-element math of the fused AdamW (kernels/cpu/adamw.cpp, kernels/cuda/adamw.cu), shared
// so that both backends run literally the same expressions, in the same order as the reference
// loop of nn/optim.cpp (PyTorch's formulation):
//   g ← g·grad_scale [·clip];  w ← w·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//   w ← w − (m·lr/(1−β1^t)) / (√v/√(1−β2^t) + ε)
// and the bf16 rounding of the updated f32 master weight: nearest-even, or stochastic
// (add 16 uniform random bits below the bf16 mantissa, then truncate: rounds up with
// probability equal to the distance from the lower neighbour, so E[round(x)] = x). The bits
// of element e (counted across the whole tensor list) are lane e%4 of Philox4x32-10 at
// counter e/4 under the seed: deterministic given the seed, independent of threads/blocks.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "tensor/dtype.h"
#include "tensor/philox.h"

namespace somnus::kernels {

template <class T>
struct AdamWScalars {
  T grad_scale, decay_factor, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps;
  bool decay;
};

template <class T>
SOMNUS_HD T adamw_element(T w, T g, T& m, T& v, const AdamWScalars<T>& s, T clip, bool has_clip) {
  T gi = g * s.grad_scale;
  if (has_clip) gi = gi * clip;
  T wi = w;
  if (s.decay) wi = wi * s.decay_factor;
  const T mi = m * s.beta1 + gi * s.one_minus_beta1;
  const T vi = v * s.beta2 + (gi * gi) * s.one_minus_beta2;
#if defined(__CUDA_ARCH__)
  const T denom = sqrt(vi) / s.bc2_sqrt + s.eps;
#else
  const T denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
#endif
  m = mi;
  v = vi;
  return wi - (mi * s.step_size) / denom;
}

// The scalars of one tensor's update, computed on the host in f64 exactly as nn/optim.cpp does.
// (AdamWHyper is declared in kernels/ops.h; this header is included after it.)
template <class T, class Hyper>
inline AdamWScalars<T> make_adamw_scalars(const Hyper& h) {
  const double t = static_cast<double>(h.step);
  const double bc1 = 1.0 - std::pow(h.beta1, t);
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(h.beta2, t));
  return AdamWScalars<T>{T(h.grad_scale), T(1.0 - h.lr * h.weight_decay), T(h.beta1), T(1.0 - h.beta1), T(h.beta2),
                         T(1.0 - h.beta2), T(h.lr / bc1), T(bc2_sqrt), T(h.eps), h.weight_decay != 0.0};
}

// f32 -> bf16 bits, rounding up with probability (low 16 bits of f) / 2^16. NaN/inf: as is.
SOMNUS_HD uint16_t bf16_stochastic_round(float f, uint32_t random_bits) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(f);
#else
  std::memcpy(&u, &f, 4);
#endif
  if ((u & 0x7fffffffu) >= 0x7f800000u) return bf16::from_float(f);
  return static_cast<uint16_t>((u + (random_bits & 0xffffu)) >> 16);
}

SOMNUS_HD uint32_t stochastic_round_bits(uint64_t seed, uint64_t element) {
  const philox::U4 r = philox::philox4x32_10(element / 4, 0, seed);
  return philox::lane(r, static_cast<int>(element % 4));
}

}  // namespace somnus::kernels
