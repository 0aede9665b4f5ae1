// Vectorisable f32 transcendental helpers for the CPU kernels.
//
// glibc's expf/tanhf are scalar calls (they only get SIMD variants under -ffast-math), which
// makes exp-heavy kernels (softmax, sigmoid, silu, gelu) 5–20× slower than the memory they
// stream. exp_f32 is the Cephes expf algorithm written branch-free so that `#pragma omp simd`
// loops vectorise it: range reduction x = n·ln2 + r (|r| ≤ ln2/2, ln2 split in two for
// exactness), a degree-6 polynomial for e^r, and 2^n built in the exponent bits. Relative
// error ≲ 2 ulp over the whole range; e^x = +inf above 88.72 and 0 below −87.33 (denormal
// results flush to zero). NaN propagates. f64 keeps std::exp: it is the reference dtype.
//
// The CUDA twin uses __expf (also ~2 ulp), so both backends agree to f32 rounding.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace somnus::kernels::cpu {

inline float exp_f32(float x) {
  const float hi = 88.7228391f, lo = -87.3365447f;
  float xc = x < lo ? lo : x;  // selects, not fmin/fmax: these map to SIMD min/max
  xc = xc > hi ? hi : xc;
  // n = round(x / ln2) with the 1.5·2^23 trick (no call, vectorises); exact for |n| < 2^22.
  const float shifter = 12582912.0f;
  const float nf = (xc * 1.44269504088896341f + shifter) - shifter;
  float r = xc - nf * 0.693359375f;  // ln2 = 0.693359375 − 2.12194440e-4, the first part exact
  r = r + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t n = static_cast<int32_t>(nf);
  const int32_t bits = (n + 127) << 23;  // 2^n; n ∈ [−126, 128] here
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  float y = n == 128 ? p * 2.0f * 1.7014118346046923e38f : p * scale;  // 2^128 = 2 · 2^127
  y = x > hi ? std::numeric_limits<float>::infinity() : y;
  y = x < lo ? 0.0f : y;
  return x != x ? x : y;
}

// e^x in the compute type: the vectorisable f32 version, std::exp for f64.
inline float exp_c(float x) { return exp_f32(x); }
inline double exp_c(double x) { return std::exp(x); }

// 1 / (1 + e^−x): exact limits 0 and 1, no cancellation for large |x|.
template <class C> inline C sigmoid_c(C x) { return C(1) / (C(1) + exp_c(-x)); }

// gelu, tanh form: 0.5·x·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³).
// Evaluated as x·σ(2u), the same function (0.5·(1 + tanh u) = σ(2u)) without tanh.
template <class C> inline C gelu_c(C x) {
  const C u2 = C(2 * 0.7978845608028654) * (x + C(0.044715) * x * x * x);
  return x * sigmoid_c(u2);
}

// d gelu / dx = σ(2u) + 2·x·σ(2u)·(1 − σ(2u))·u',  u' = √(2/π)·(1 + 3·0.044715·x²).
template <class C> inline C gelu_grad_c(C x) {
  const C k = C(0.7978845608028654);
  const C x2 = x * x;
  const C s = sigmoid_c(C(2) * k * (x + C(0.044715) * x2 * x));
  return s + C(2) * x * s * (C(1) - s) * k * (C(1) + C(3 * 0.044715) * x2);
}

}  // namespace somnus::kernels::cpu
