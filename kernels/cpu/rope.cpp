// CPU RoPE (rotate-half pairing: dim i with i + D/2, as HF Llama), forward and backward.
//
//   y[i] = x[i]·c − x[i+D/2]·s,   y[i+D/2] = x[i+D/2]·c + x[i]·s,   (c, s) = table[pos][i]
// The backward is the inverse rotation (s → −s), the same kernel with inverse = true.
// One pass per (b, h, t) row of D, rows over OpenMP threads; the cos/sin row of the position
// is shared by all heads. Computes in f32 (f64 for f64) and rounds once on store, where the
// composition (slice, 4 muls, 2 adds, concat) rounds after every op and moves 7× the bytes.
// Bytes per element: read x, write y (+ the D/2-wide table rows, cached). 3 FLOPs.
#include <omp.h>

#include "kernels/backend.h"
#include "tensor/dispatch.h"

namespace somnus::kernels::cpu {

namespace {

constexpr int64_t kParallelMin = 16384;

template <class T>
void rope_typed(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions, bool inverse,
                const Tensor& out) {
  using C = compute_t<T>;
  const int64_t B = x.size(0), H = x.size(1), T_ = x.size(2), D = x.size(3), half = D / 2;
  const bool per_batch = positions.dim() == 2;
  const T* xp = x.data<T>();
  const T* cp = cos.data<T>();
  const T* sp = sin.data<T>();
  const int64_t* pp = positions.data<int64_t>();
  T* yp = out.data<T>();
  const int64_t rows = B * H * T_;
  const C sign = inverse ? C(-1) : C(1);
#pragma omp parallel for schedule(static) if (rows * D > kParallelMin && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r % T_, b = r / (H * T_);
    const int64_t pos = pp[per_batch ? b * T_ + t : t];
    const T* cr = cp + pos * half;
    const T* sr = sp + pos * half;
    const T* x1 = xp + r * D;
    const T* x2 = x1 + half;
    T* y1 = yp + r * D;
    T* y2 = y1 + half;
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const C c = static_cast<C>(cr[i]), s = sign * static_cast<C>(sr[i]);
      const C a = static_cast<C>(x1[i]), bb = static_cast<C>(x2[i]);
      y1[i] = static_cast<T>(a * c - bb * s);
      y2[i] = static_cast<T>(bb * c + a * s);
    }
  }
}

}  // namespace

void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions, bool inverse,
          const Tensor& out) {
  visit_floating(x.dtype(), "rope", [&](auto tag) { rope_typed<decltype(tag)>(x, cos, sin, positions, inverse, out); });
}

}  // namespace somnus::kernels::cpu
