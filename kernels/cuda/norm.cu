// CUDA RMSNorm and LayerNorm over the last dim, with a fused residual add, and their backward.
// The twin of kernels/cpu/norm.cpp: the same passes and formulas (see there).
//
// Forward: one block of kThreads per row (grid-stride over rows). Pass 1 forms h = x + r
// (stored in the storage dtype; the stats use the rounded h), accumulating Σh (layer) or Σh²
// (rms); pass 2 (layer) the two-pass Σ(h − mean)²; pass 3 writes y. Passes 2–3 re-read the
// row from L1/L2, so DRAM traffic is one read of x (+r) and one write of y (+h).
// Backward: one block per chunk of kNormRowsPerChunk rows. Per row, a block reduction of
// Σg and Σg∘x̂, then dh; each thread owns a fixed set of columns, so it accumulates dw/db
// for the chunk into row `chunk` of the (chunks, C) partials without atomics (deterministic);
// ops.cpp sums the partials over chunks.
// Loads and stores are 16-byte vectors (8 bf16, 4 f32, 2 f64) when C is a multiple of the
// vector width and the pointers are aligned; otherwise scalar. Reductions: warp shuffles,
// then one shared-memory step across the block's warps.
#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

constexpr int kThreads = 256;

// Sum over the block; every thread gets the result. `smem` holds kThreads / 32 values.
template <class C>
__device__ __forceinline__ C block_allreduce_sum(C v, C* smem) {
  v = warp_allreduce_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  __syncthreads();  // smem may still be read from the previous reduction
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  C t = lane < nwarps ? smem[lane] : C(0);
  return warp_allreduce_sum(t);
}

template <class T, int V>
__global__ void __launch_bounds__(kThreads)
    norm_forward_kernel(bool layer, const T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ w,
                        const T* __restrict__ b, compute_t<T> eps, T* __restrict__ y, T* __restrict__ h,
                        compute_t<T>* __restrict__ mean, compute_t<T>* __restrict__ rstd, int64_t rows, int64_t n) {
  using C = compute_t<T>;
  __shared__ C smem[kThreads / 32];
  const int64_t nv = n / V;
  const C inv_n = C(1) / static_cast<C>(n);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    const T* src = xr;
    C s1 = 0;
    if (res != nullptr) {
      const T* rr = res + r * n;
      T* hr = h + r * n;
      for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
        const Vec<T, V> a = load_vec<V>(xr, vi), c = load_vec<V>(rr, vi);
        Vec<T, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          o.v[k] = static_cast<T>(static_cast<C>(a.v[k]) + static_cast<C>(c.v[k]));
          const C v = static_cast<C>(o.v[k]);
          s1 += layer ? v : v * v;
        }
        store_vec<V>(hr, vi, o);
      }
      src = hr;
    } else {
      for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
        const Vec<T, V> a = load_vec<V>(xr, vi);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const C v = static_cast<C>(a.v[k]);
          s1 += layer ? v : v * v;
        }
      }
    }
    s1 = block_allreduce_sum(s1, smem);
    C mu = 0, rs;
    if (layer) {
      mu = s1 * inv_n;
      C s2 = 0;
      for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
        const Vec<T, V> a = load_vec<V>(src, vi);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const C d = static_cast<C>(a.v[k]) - mu;
          s2 += d * d;
        }
      }
      s2 = block_allreduce_sum(s2, smem);
      rs = C(1) / m_sqrt(s2 * inv_n + eps);
    } else {
      rs = C(1) / m_sqrt(s1 * inv_n + eps);
    }
    if (threadIdx.x == 0) {
      rstd[r] = rs;
      if (layer) mean[r] = mu;
    }
    T* yr = y + r * n;
    for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
      const Vec<T, V> a = load_vec<V>(src, vi), wv = load_vec<V>(w, vi);
      Vec<T, V> o;
      if (b != nullptr) {
        const Vec<T, V> bv = load_vec<V>(b, vi);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          o.v[k] = static_cast<T>((static_cast<C>(a.v[k]) - mu) * rs * static_cast<C>(wv.v[k]) +
                                  static_cast<C>(bv.v[k]));
        }
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          o.v[k] = static_cast<T>((static_cast<C>(a.v[k]) - mu) * rs * static_cast<C>(wv.v[k]));
        }
      }
      store_vec<V>(yr, vi, o);
    }
  }
}

template <class T, int V>
__global__ void __launch_bounds__(kThreads)
    norm_backward_kernel(bool layer, const T* __restrict__ dy, const T* __restrict__ dh_in, const T* __restrict__ h,
                         const T* __restrict__ w, const compute_t<T>* __restrict__ mean,
                         const compute_t<T>* __restrict__ rstd, T* __restrict__ dh, compute_t<T>* __restrict__ dw_part,
                         compute_t<T>* __restrict__ db_part, int64_t rows, int64_t n, int64_t chunks) {
  using C = compute_t<T>;
  __shared__ C smem[kThreads / 32];
  const int64_t nv = n / V;
  const C inv_n = C(1) / static_cast<C>(n);
  for (int64_t k = blockIdx.x; k < chunks; k += gridDim.x) {
    C* dw = dw_part + k * n;
    C* db = db_part != nullptr ? db_part + k * n : nullptr;
    // Each thread zeroes exactly the columns it accumulates below (vector vi → V columns).
    for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        dw[vi * V + j] = 0;
        if (db != nullptr) db[vi * V + j] = 0;
      }
    }
    const int64_t r_end = min(rows, (k + 1) * kNormRowsPerChunk);
    for (int64_t r = k * kNormRowsPerChunk; r < r_end; ++r) {
      const T* gr = dy + r * n;
      const T* hr = h + r * n;
      const C mu = layer ? mean[r] : C(0), rs = rstd[r];
      C sg = 0, sgx = 0;
      for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
        const Vec<T, V> gv = load_vec<V>(gr, vi), hv = load_vec<V>(hr, vi), wv = load_vec<V>(w, vi);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const C g = static_cast<C>(gv.v[j]) * static_cast<C>(wv.v[j]);
          sg += g;
          sgx += g * (static_cast<C>(hv.v[j]) - mu) * rs;
        }
      }
      sg = block_allreduce_sum(sg, smem);
      sgx = block_allreduce_sum(sgx, smem);
      const C mg = layer ? sg * inv_n : C(0), mgx = sgx * inv_n;
      const T* di = dh_in != nullptr ? dh_in + r * n : nullptr;
      T* dr = dh + r * n;
      for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
        const Vec<T, V> gv = load_vec<V>(gr, vi), hv = load_vec<V>(hr, vi), wv = load_vec<V>(w, vi);
        Vec<T, V> dv;
        if (di != nullptr) dv = load_vec<V>(di, vi);
        Vec<T, V> o;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const C gy = static_cast<C>(gv.v[j]);
          const C xh = (static_cast<C>(hv.v[j]) - mu) * rs;
          C d = rs * (gy * static_cast<C>(wv.v[j]) - mg - xh * mgx);
          if (di != nullptr) d += static_cast<C>(dv.v[j]);
          o.v[j] = static_cast<T>(d);
          dw[vi * V + j] += gy * xh;
          if (db != nullptr) db[vi * V + j] += gy;
        }
        store_vec<V>(dr, vi, o);
      }
    }
  }
}

// 16-byte vectors when every row start is aligned, else scalar.
template <class T, class F>
void with_vec(int64_t n, std::initializer_list<const void*> ptrs, F&& f) {
  constexpr int V = 16 / sizeof(T);
  bool ok = n % V == 0;
  for (const void* p : ptrs) ok = ok && (p == nullptr || aligned_to(p, 16));
  if (ok) {
    f(std::integral_constant<int, V>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}

}  // namespace

void norm_forward(bool layer, const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                  double eps, const Tensor& y, const Tensor& h, const Tensor& mean, const Tensor& rstd) {
  set_device(y);
  const int64_t n = x.size(-1), rows = x.numel() / n;
  visit_floating(x.dtype(), layer ? "layer_norm" : "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T *xp = ptr_or_null<T>(x), *rp = ptr_or_null<T>(residual), *wp = ptr_or_null<T>(weight),
            *bp = ptr_or_null<T>(bias);
    T* yp = static_cast<T*>(y.data_ptr());
    T* hp = h.defined() ? static_cast<T*>(h.data_ptr()) : nullptr;
    C* mp = mean.defined() ? static_cast<C*>(mean.data_ptr()) : nullptr;
    C* sp = static_cast<C*>(rstd.data_ptr());
    with_vec<T>(n, {xp, rp, wp, bp, yp, hp}, [&](auto vw) {
      constexpr int V = decltype(vw)::value;
      norm_forward_kernel<T, V><<<grid_for(rows, 1), kThreads>>>(layer, xp, rp, wp, bp, static_cast<C>(eps), yp, hp,
                                                                  mp, sp, rows, n);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void norm_backward(bool layer, const Tensor& dy, const Tensor& dh_in, const Tensor& h, const Tensor& weight,
                   const Tensor& mean, const Tensor& rstd, const Tensor& dh_out, const Tensor& dw_partial,
                   const Tensor& db_partial) {
  set_device(dh_out);
  const int64_t n = h.size(-1), rows = h.numel() / n;
  const int64_t chunks = (rows + kNormRowsPerChunk - 1) / kNormRowsPerChunk;
  visit_floating(h.dtype(), layer ? "layer_norm_backward" : "rms_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T *gp = ptr_or_null<T>(dy), *dip = ptr_or_null<T>(dh_in), *hp = ptr_or_null<T>(h),
            *wp = ptr_or_null<T>(weight);
    const C* mp = mean.defined() ? static_cast<const C*>(mean.data_ptr()) : nullptr;
    const C* sp = static_cast<const C*>(rstd.data_ptr());
    T* dp = static_cast<T*>(dh_out.data_ptr());
    C* dwp = static_cast<C*>(dw_partial.data_ptr());
    C* dbp = db_partial.defined() ? static_cast<C*>(db_partial.data_ptr()) : nullptr;
    with_vec<T>(n, {gp, dip, hp, wp, dp}, [&](auto vw) {
      constexpr int V = decltype(vw)::value;
      norm_backward_kernel<T, V><<<grid_for(chunks, 1), kThreads>>>(layer, gp, dip, hp, wp, mp, sp, dp, dwp, dbp, rows,
                                                                     n, chunks);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace somnus::kernels::cuda
