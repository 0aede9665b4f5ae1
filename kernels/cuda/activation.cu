// CUDA SwiGLU forward and backward; the twin of kernels/cpu/activation.cpp (same formulas):
//   y = g·σ(g)·u;   dg = dy·u·σ(g)·(1 + g·(1 − σ(g))),   du = dy·g·σ(g)
// Grid-stride elementwise kernels over contiguous tensors with 16-byte vector loads and
// stores (scalar tail / unaligned fallback). σ in f32 uses __expf (as the CPU's exp_f32,
// ~2 ulp). Memory-bound: forward moves 3 tensors, backward 5.
#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float fast_sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }
__device__ __forceinline__ double fast_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

template <class T, int V>
__global__ void swiglu_kernel(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, int64_t n) {
  using C = compute_t<T>;
  const int64_t nv = n / V, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t vi = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; vi < nv; vi += stride) {
    const Vec<T, V> gv = load_vec<V>(g, vi), uv = load_vec<V>(u, vi);
    Vec<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const C a = static_cast<C>(gv.v[k]);
      o.v[k] = static_cast<T>(a * fast_sigmoid(a) * static_cast<C>(uv.v[k]));
    }
    store_vec<V>(y, vi, o);
  }
  // The tail (n % V elements), one per thread of the first block.
  const int64_t i = nv * V + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (blockIdx.x == 0 && i < n) {
    const C a = static_cast<C>(g[i]);
    y[i] = static_cast<T>(a * fast_sigmoid(a) * static_cast<C>(u[i]));
  }
}

template <class T, int V>
__global__ void swiglu_backward_kernel(const T* __restrict__ g, const T* __restrict__ u, const T* __restrict__ dy,
                                       T* __restrict__ dg, T* __restrict__ du, int64_t n) {
  using C = compute_t<T>;
  const int64_t nv = n / V, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  auto one = [](C a, C b, C d, T& og, T& ou) {
    const C s = fast_sigmoid(a);
    og = static_cast<T>(d * b * s * (C(1) + a * (C(1) - s)));
    ou = static_cast<T>(d * a * s);
  };
  for (int64_t vi = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; vi < nv; vi += stride) {
    const Vec<T, V> gv = load_vec<V>(g, vi), uv = load_vec<V>(u, vi), dv = load_vec<V>(dy, vi);
    Vec<T, V> og, ou;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      one(static_cast<C>(gv.v[k]), static_cast<C>(uv.v[k]), static_cast<C>(dv.v[k]), og.v[k], ou.v[k]);
    }
    store_vec<V>(dg, vi, og);
    store_vec<V>(du, vi, ou);
  }
  const int64_t i = nv * V + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (blockIdx.x == 0 && i < n) one(static_cast<C>(g[i]), static_cast<C>(u[i]), static_cast<C>(dy[i]), dg[i], du[i]);
}

template <class T, class F>
void with_vec(std::initializer_list<const void*> ptrs, F&& f) {
  bool ok = true;
  for (const void* p : ptrs) ok = ok && aligned_to(p, 16);
  if (ok) {
    f(std::integral_constant<int, 16 / sizeof(T)>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

}  // namespace

void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) {
  set_device(out);
  const int64_t n = out.numel();
  visit_floating(out.dtype(), "swiglu", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = static_cast<const T*>(gate.data_ptr());
    const T* up_ = static_cast<const T*>(up.data_ptr());
    T* yp = static_cast<T*>(out.data_ptr());
    with_vec<T>({gp, up_, yp}, [&](auto vw) {
      constexpr int V = decltype(vw)::value;
      swiglu_kernel<T, V><<<grid_for(n / V + 1, kThreads), kThreads>>>(gp, up_, yp, n);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, const Tensor& dup) {
  set_device(dgate);
  const int64_t n = dgate.numel();
  visit_floating(dgate.dtype(), "swiglu_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = static_cast<const T*>(gate.data_ptr());
    const T* up_ = static_cast<const T*>(up.data_ptr());
    const T* dyp = static_cast<const T*>(dy.data_ptr());
    T* dgp = static_cast<T*>(dgate.data_ptr());
    T* dup_ = static_cast<T*>(dup.data_ptr());
    with_vec<T>({gp, up_, dyp, dgp, dup_}, [&](auto vw) {
      constexpr int V = decltype(vw)::value;
      swiglu_backward_kernel<T, V><<<grid_for(n / V + 1, kThreads), kThreads>>>(gp, up_, dyp, dgp, dup_, n);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace somnus::kernels::cuda
