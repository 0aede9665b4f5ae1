// Softmax and log_softmax over the last dim on CUDA, and their backward.
//
// Algorithm (the CPU twin's, kernels/cpu/softmax.cpp): per row, m = max x; s = Σ exp(x − m);
//   softmax = exp(x − m) / s,   log_softmax = x − m − log s.
// Backward, with y the forward output:
//   softmax:      dx = y ∘ (dy − Σ dy∘y)
//   log_softmax:  dx = dy − exp(y) ∘ Σ dy
//
// Shape of the kernels:
//   n ≤ 1024   one warp per row, 4 rows per 128-thread block; each lane keeps its
//              ceil(n/32) ≤ 32 elements in registers (lane l holds columns l, l+32, …: coalesced),
//              so x is read once; max and sum are butterfly shuffles.
//   n > 1024   one 512-thread block per row, cub::BlockReduce for max and sum. When the row
//              fits in 40 KiB of shared memory (10240 f32) it is cached there on the first pass,
//              else passes 2 and 3 re-read it (mostly from L2).
// Rows may be strided views: leading dims are collapsed and mapped through StridedLayout.
// Cost: ~5 FLOPs + 1 exp per element; bytes ≈ 2·numel·sizeof(T) (fwd), 3·numel·sizeof(T)
// (bwd): memory bound. Computes in f32 for bf16/f32, f64 for f64.
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

constexpr int kWarpBlock = 128;  // 4 rows per block
constexpr int kRowBlock = 512;
constexpr int64_t kCacheBytes = 40 * 1024;

template <class C>
__device__ __forceinline__ C max_nan(C a, C b) {
  return (m_isnan(a) || a >= b) ? a : b;
}

struct MaxOp {
  template <class C>
  __device__ __forceinline__ C operator()(const C& a, const C& b) const {
    return max_nan(a, b);
  }
};
struct SumOp {
  template <class C>
  __device__ __forceinline__ C operator()(const C& a, const C& b) const {
    return a + b;
  }
};

// ---------------------------------------------------------------- forward

template <class T, int kPerLane>
__global__ void softmax_warp_kernel(const T* x, T* out, StridedLayout<2> rows_layout, int64_t sx, int64_t so,
                                    int64_t rows, int n, bool log_out) {
  using C = compute_t<T>;
  const int warps = kWarpBlock / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(warps) + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * warps) {
    int64_t off[2];
    rows_layout.offsets(row, off);
    const T* xr = x + off[0];
    T* orow = out + off[1];
    C v[kPerLane];
    C m = m_neg_inf<C>();
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int j = lane + 32 * k;
      v[k] = j < n ? load_c(xr + j * sx) : m_neg_inf<C>();
      m = max_nan(m, v[k]);
    }
    m = warp_allreduce_max(m);
    C s = C(0);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      if (lane + 32 * k < n) {
        const C e = m_exp(v[k] - m);
        s += e;
        if (!log_out) v[k] = e;
      }
    }
    s = warp_allreduce_sum(s);
    const C log_s = log_out ? m_log(s) : C(0);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int j = lane + 32 * k;
      if (j < n) store_c(orow + j * so, log_out ? v[k] - m - log_s : v[k] / s);
    }
  }
}

template <class T, bool kCache>
__global__ void softmax_block_kernel(const T* x, T* out, StridedLayout<2> rows_layout, int64_t sx, int64_t so,
                                     int64_t rows, int64_t n, bool log_out) {
  using C = compute_t<T>;
  using BlockReduce = cub::BlockReduce<C, kRowBlock>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ C row_max, row_sum;
  extern __shared__ __align__(16) unsigned char cache_bytes[];
  C* cache = reinterpret_cast<C*>(cache_bytes);  // n elements when kCache; each thread owns its columns
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    int64_t off[2];
    rows_layout.offsets(row, off);
    const T* xr = x + off[0];
    T* orow = out + off[1];

    C m = m_neg_inf<C>();
    for (int64_t j = threadIdx.x; j < n; j += kRowBlock) {
      const C v = load_c(xr + j * sx);
      if constexpr (kCache) cache[j] = v;
      m = max_nan(m, v);
    }
    m = BlockReduce(temp).Reduce(m, MaxOp{});
    if (threadIdx.x == 0) row_max = m;
    __syncthreads();
    m = row_max;

    C s = C(0);
    for (int64_t j = threadIdx.x; j < n; j += kRowBlock) {
      const C v = kCache ? cache[j] : load_c(xr + j * sx);
      const C e = m_exp(v - m);
      s += e;
      if constexpr (kCache) {
        if (!log_out) cache[j] = e;
      }
    }
    s = BlockReduce(temp).Reduce(s, SumOp{});
    if (threadIdx.x == 0) row_sum = s;
    __syncthreads();
    s = row_sum;

    const C log_s = log_out ? m_log(s) : C(0);
    for (int64_t j = threadIdx.x; j < n; j += kRowBlock) {
      C r;
      if (log_out) {
        r = (kCache ? cache[j] : load_c(xr + j * sx)) - m - log_s;
      } else {
        r = (kCache ? cache[j] : m_exp(load_c(xr + j * sx) - m)) / s;
      }
      store_c(orow + j * so, r);
    }
    __syncthreads();  // row_max, row_sum and temp are reused by the next row
  }
}

// ---------------------------------------------------------------- backward

template <class C>
__device__ __forceinline__ C softmax_grad(bool log_in, C y, C g, C s) {
  return log_in ? g - m_exp(y) * s : y * (g - s);
}

template <class T, int kPerLane>
__global__ void softmax_backward_warp_kernel(const T* y, const T* dy, T* out, StridedLayout<3> rows_layout,
                                             int64_t sy, int64_t sg, int64_t so, int64_t rows, int n, bool log_in) {
  using C = compute_t<T>;
  const int warps = kWarpBlock / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(warps) + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * warps) {
    int64_t off[3];
    rows_layout.offsets(row, off);
    const T* yr = y + off[0];
    const T* gr = dy + off[1];
    T* orow = out + off[2];
    C yv[kPerLane], gv[kPerLane];
    C s = C(0);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int j = lane + 32 * k;
      yv[k] = j < n ? load_c(yr + j * sy) : C(0);
      gv[k] = j < n ? load_c(gr + j * sg) : C(0);
      s += log_in ? gv[k] : gv[k] * yv[k];
    }
    s = warp_allreduce_sum(s);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int j = lane + 32 * k;
      if (j < n) store_c(orow + j * so, softmax_grad(log_in, yv[k], gv[k], s));
    }
  }
}

template <class T>
__global__ void softmax_backward_block_kernel(const T* y, const T* dy, T* out, StridedLayout<3> rows_layout,
                                              int64_t sy, int64_t sg, int64_t so, int64_t rows, int64_t n,
                                              bool log_in) {
  using C = compute_t<T>;
  using BlockReduce = cub::BlockReduce<C, kRowBlock>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ C row_sum;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    int64_t off[3];
    rows_layout.offsets(row, off);
    const T* yr = y + off[0];
    const T* gr = dy + off[1];
    T* orow = out + off[2];
    C s = C(0);
    for (int64_t j = threadIdx.x; j < n; j += kRowBlock) {
      const C g = load_c(gr + j * sg);
      s += log_in ? g : g * load_c(yr + j * sy);
    }
    s = BlockReduce(temp).Reduce(s, SumOp{});
    if (threadIdx.x == 0) row_sum = s;
    __syncthreads();
    s = row_sum;
    for (int64_t j = threadIdx.x; j < n; j += kRowBlock) {
      store_c(orow + j * so, softmax_grad(log_in, load_c(yr + j * sy), load_c(gr + j * sg), s));
    }
    __syncthreads();  // row_sum and temp are reused by the next row
  }
}

// ---------------------------------------------------------------- host side

// Calls f(std::integral_constant<int, P>) with the smallest P in {1, 2, 4, …, 32} with 32·P ≥ n.
template <class F>
void with_per_lane(int64_t n, F&& f) {
  if (n <= 32) return f(std::integral_constant<int, 1>{});
  if (n <= 64) return f(std::integral_constant<int, 2>{});
  if (n <= 128) return f(std::integral_constant<int, 4>{});
  if (n <= 256) return f(std::integral_constant<int, 8>{});
  if (n <= 512) return f(std::integral_constant<int, 16>{});
  return f(std::integral_constant<int, 32>{});
}

// The rows of a last-dim op: leading dims (collapsed over all K operands) and last-dim strides.
template <int K>
struct Rows {
  StridedLayout<K> layout;
  std::array<int64_t, K> last_stride{};
  int64_t rows = 0, n = 1;
};

template <int K>
Rows<K> rows_of(const std::array<const Tensor*, K>& ts, const char* name) {
  Rows<K> r;
  const Tensor& t0 = *ts[0];
  const int64_t nd = t0.dim();
  r.n = nd == 0 ? 1 : t0.size(-1);
  r.rows = r.n == 0 ? 0 : t0.numel() / r.n;
  const Shape lead(t0.shape().begin(), t0.shape().begin() + (nd == 0 ? 0 : nd - 1));
  std::array<Strides, K> st;
  for (int k = 0; k < K; ++k) {
    const Strides& s = ts[k]->strides();
    st[k].assign(s.begin(), s.begin() + (nd == 0 ? 0 : nd - 1));
    r.last_stride[k] = nd == 0 ? 0 : s[nd - 1];
  }
  r.layout = collapse<K>(lead, st).layout(name);
  return r;
}

}  // namespace

// ---------------------------------------------------------------- backend entry points

void softmax(const Tensor& x, const Tensor& out, bool log) {
  set_device(out);
  const Rows<2> r = rows_of<2>({&x, &out}, "softmax");
  if (r.rows == 0) return;
  visit_floating(x.dtype(), "softmax", [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    if (r.n <= 1024) {
      with_per_lane(r.n, [&](auto per_lane) {
        constexpr int P = decltype(per_lane)::value;
        softmax_warp_kernel<T, P><<<grid_for(r.rows, kWarpBlock / 32), kWarpBlock>>>(
            xp, op, r.layout, r.last_stride[0], r.last_stride[1], r.rows, static_cast<int>(r.n), log);
        CUDA_CHECK_LAUNCH();
      });
      return;
    }
    const unsigned grid = grid_for(r.rows, 1);
    const int64_t cache_bytes = r.n * static_cast<int64_t>(sizeof(C));
    if (cache_bytes <= kCacheBytes) {
      softmax_block_kernel<T, true><<<grid, kRowBlock, static_cast<size_t>(cache_bytes)>>>(
          xp, op, r.layout, r.last_stride[0], r.last_stride[1], r.rows, r.n, log);
      CUDA_CHECK_LAUNCH();
    } else {
      softmax_block_kernel<T, false><<<grid, kRowBlock>>>(xp, op, r.layout, r.last_stride[0], r.last_stride[1],
                                                          r.rows, r.n, log);
      CUDA_CHECK_LAUNCH();
    }
  });
}

void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& out, bool log) {
  set_device(out);
  const Rows<3> r = rows_of<3>({&y, &dy, &out}, "softmax_backward");
  if (r.rows == 0) return;
  visit_floating(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* yp = static_cast<const T*>(y.data_ptr());
    const T* gp = static_cast<const T*>(dy.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    if (r.n <= 1024) {
      with_per_lane(r.n, [&](auto per_lane) {
        constexpr int P = decltype(per_lane)::value;
        softmax_backward_warp_kernel<T, P><<<grid_for(r.rows, kWarpBlock / 32), kWarpBlock>>>(
            yp, gp, op, r.layout, r.last_stride[0], r.last_stride[1], r.last_stride[2], r.rows,
            static_cast<int>(r.n), log);
        CUDA_CHECK_LAUNCH();
      });
      return;
    }
    softmax_backward_block_kernel<T><<<grid_for(r.rows, 1), kRowBlock>>>(
        yp, gp, op, r.layout, r.last_stride[0], r.last_stride[1], r.last_stride[2], r.rows, r.n, log);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace somnus::kernels::cuda
