// CPU RMSNorm and LayerNorm over the last dim, with a fused residual add, and their backward.
//
// Forward, one pass per row (rows spread over OpenMP threads), accumulating in the compute
// type (f32 for f32/bf16, f64 for f64):
//   h = x + residual (stored, rounded to the storage dtype; the stats use the rounded h)
//   rms:   rstd = 1/sqrt(Σh²/C + eps)                 y = h·rstd·w
//   layer: mean = Σh/C, rstd = 1/sqrt(Σ(h−mean)²/C + eps)   y = (h−mean)·rstd·w + b
// The variance is the two-pass Σ(h−mean)² over a row that is still in L1, not E[h²]−mean²,
// which cancels badly for rows with a large mean. The CUDA twin (norm.cu) runs the same
// passes with a block per row, the row held in registers.
// Backward, with x̂ = (h − mean)·rstd (mean = 0 for rms) and g = dy ∘ w:
//   rms:   dh = rstd·(g − x̂·mean(g∘x̂))
//   layer: dh = rstd·(g − mean(g) − x̂·mean(g∘x̂))
//   dh += dh_in (the gradient of the residual stream h),  dw = Σ_rows dy∘x̂,  db = Σ_rows dy.
// dw/db are summed per chunk of kNormRowsPerChunk rows into (chunks, C) partials, which
// ops.cpp sums in order: the result is independent of the thread count.
// Bytes per element: forward reads x (+residual), writes y (+h); backward reads dy, h
// (+dh_in), writes dh. ~8 FLOPs per element each way.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/backend.h"
#include "tensor/dispatch.h"

namespace somnus::kernels::cpu {

namespace {

constexpr int64_t kParallelMin = 16384;  // elements below which one thread does it all

template <class T>
void norm_forward_typed(bool layer, const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                        double eps, const Tensor& y, const Tensor& h, const Tensor& mean, const Tensor& rstd) {
  using C = compute_t<T>;
  const int64_t n = x.size(-1), rows = x.numel() / n;
  const T* xp = x.data<T>();
  const T* rp = residual.defined() ? residual.data<T>() : nullptr;
  const T* wp = weight.data<T>();
  const T* bp = bias.defined() ? bias.data<T>() : nullptr;
  T* yp = y.data<T>();
  T* hp = h.defined() ? h.data<T>() : nullptr;
  C* mp = layer ? mean.data<C>() : nullptr;
  C* sp = rstd.data<C>();
  const C inv_n = C(1) / static_cast<C>(n), ceps = static_cast<C>(eps);
#pragma omp parallel for schedule(static) if (rows * n > kParallelMin && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = xp + r * n;
    T* yr = yp + r * n;
    const T* src = xr;  // the row of h
    C s1 = 0;
    if (rp != nullptr) {
      const T* rr = rp + r * n;
      T* hr = hp + r * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) hr[i] = static_cast<T>(static_cast<C>(xr[i]) + static_cast<C>(rr[i]));
      src = hr;  // re-read from L1/L2 below
    }
    // Separate loops per kind: a `layer ? v : v·v` inside one loop left the rms sum scalar.
    if (layer) {
#pragma omp simd reduction(+ : s1)
      for (int64_t i = 0; i < n; ++i) s1 += static_cast<C>(src[i]);
    } else {
#pragma omp simd reduction(+ : s1)
      for (int64_t i = 0; i < n; ++i) {
        const C v = static_cast<C>(src[i]);
        s1 += v * v;
      }
    }
    C mu = 0, rs;
    if (layer) {
      mu = s1 * inv_n;
      C s2 = 0;
#pragma omp simd reduction(+ : s2)
      for (int64_t i = 0; i < n; ++i) {
        const C d = static_cast<C>(src[i]) - mu;
        s2 += d * d;
      }
      rs = C(1) / std::sqrt(s2 * inv_n + ceps);
      mp[r] = mu;
    } else {
      rs = C(1) / std::sqrt(s1 * inv_n + ceps);
    }
    sp[r] = rs;
    if (bp != nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        yr[i] = static_cast<T>((static_cast<C>(src[i]) - mu) * rs * static_cast<C>(wp[i]) + static_cast<C>(bp[i]));
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        yr[i] = static_cast<T>((static_cast<C>(src[i]) - mu) * rs * static_cast<C>(wp[i]));
      }
    }
  }
}

template <class T>
void norm_backward_typed(bool layer, const Tensor& dy, const Tensor& dh_in, const Tensor& h, const Tensor& weight,
                         const Tensor& mean, const Tensor& rstd, const Tensor& dh_out, const Tensor& dw_partial,
                         const Tensor& db_partial) {
  using C = compute_t<T>;
  const int64_t n = h.size(-1), rows = h.numel() / n;
  const int64_t chunks = (rows + kNormRowsPerChunk - 1) / kNormRowsPerChunk;
  const T* gp = dy.data<T>();
  const T* dip = dh_in.defined() ? dh_in.data<T>() : nullptr;
  const T* hp = h.data<T>();
  const T* wp = weight.data<T>();
  const C* mp = layer ? mean.data<C>() : nullptr;
  const C* sp = rstd.data<C>();
  T* dp = dh_out.data<T>();
  C* dwp = dw_partial.data<C>();
  C* dbp = db_partial.defined() ? db_partial.data<C>() : nullptr;
  const C inv_n = C(1) / static_cast<C>(n);
#pragma omp parallel for schedule(static) if (rows * n > kParallelMin && chunks > 1)
  for (int64_t k = 0; k < chunks; ++k) {
    C* dw = dwp + k * n;
    C* db = dbp != nullptr ? dbp + k * n : nullptr;
    for (int64_t i = 0; i < n; ++i) dw[i] = 0;
    if (db != nullptr) {
      for (int64_t i = 0; i < n; ++i) db[i] = 0;
    }
    const int64_t r_end = std::min(rows, (k + 1) * kNormRowsPerChunk);
    for (int64_t r = k * kNormRowsPerChunk; r < r_end; ++r) {
      const T* gr = gp + r * n;
      const T* hr = hp + r * n;
      T* dr = dp + r * n;
      const C mu = layer ? mp[r] : C(0), rs = sp[r];
      C sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
      for (int64_t i = 0; i < n; ++i) {
        const C g = static_cast<C>(gr[i]) * static_cast<C>(wp[i]);
        const C xh = (static_cast<C>(hr[i]) - mu) * rs;
        sg += g;
        sgx += g * xh;
      }
      const C mg = layer ? sg * inv_n : C(0), mgx = sgx * inv_n;
      const T* di = dip != nullptr ? dip + r * n : nullptr;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const C gy = static_cast<C>(gr[i]);
        const C xh = (static_cast<C>(hr[i]) - mu) * rs;
        C d = rs * (gy * static_cast<C>(wp[i]) - mg - xh * mgx);
        if (di != nullptr) d += static_cast<C>(di[i]);
        dr[i] = static_cast<T>(d);
        dw[i] += gy * xh;
      }
      if (db != nullptr) {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) db[i] += static_cast<C>(gr[i]);
      }
    }
  }
}

}  // namespace

void norm_forward(bool layer, const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                  double eps, const Tensor& y, const Tensor& h, const Tensor& mean, const Tensor& rstd) {
  visit_floating(x.dtype(), layer ? "layer_norm" : "rms_norm", [&](auto tag) {
    norm_forward_typed<decltype(tag)>(layer, x, residual, weight, bias, eps, y, h, mean, rstd);
  });
}

void norm_backward(bool layer, const Tensor& dy, const Tensor& dh_in, const Tensor& h, const Tensor& weight,
                   const Tensor& mean, const Tensor& rstd, const Tensor& dh_out, const Tensor& dw_partial,
                   const Tensor& db_partial) {
  visit_floating(h.dtype(), layer ? "layer_norm_backward" : "rms_norm_backward", [&](auto tag) {
    norm_backward_typed<decltype(tag)>(layer, dy, dh_in, h, weight, mean, rstd, dh_out, dw_partial, db_partial);
  });
}

}  // namespace somnus::kernels::cpu
