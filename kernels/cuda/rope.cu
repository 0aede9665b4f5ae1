// CUDA RoPE (rotate-half pairing), forward and inverse (= backward); the twin of
// kernels/cpu/rope.cpp (same formula, f32 compute, one rounding on store).
// One thread per (row, i < D/2) pair: it reads x[i] and x[i + D/2] and the (c, s) of the
// row's position, and writes both outputs. Consecutive threads take consecutive i, so the
// loads of x, y and the cos/sin rows coalesce. Memory-bound: read x, write y.
#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void rope_kernel(const T* __restrict__ x, const T* __restrict__ cs, const T* __restrict__ sn,
                            const int64_t* __restrict__ pos, bool per_batch, bool inverse, T* __restrict__ y,
                            int64_t H, int64_t T_, int64_t half, int64_t total) {
  using C = compute_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total; idx += stride) {
    const int64_t r = idx / half, i = idx - r * half;
    const int64_t t = r % T_, b = r / (H * T_);
    const int64_t p = pos[per_batch ? b * T_ + t : t];
    const C c = static_cast<C>(cs[p * half + i]);
    const C s = (inverse ? C(-1) : C(1)) * static_cast<C>(sn[p * half + i]);
    const int64_t base = r * 2 * half;
    const C a = static_cast<C>(x[base + i]), bb = static_cast<C>(x[base + half + i]);
    y[base + i] = static_cast<T>(a * c - bb * s);
    y[base + half + i] = static_cast<T>(bb * c + a * s);
  }
}

}  // namespace

void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions, bool inverse,
          const Tensor& out) {
  set_device(out);
  const int64_t H = x.size(1), T_ = x.size(2), half = x.size(3) / 2;
  const int64_t total = x.numel() / 2;
  visit_floating(x.dtype(), "rope", [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<grid_for(total, kThreads), kThreads>>>(
        static_cast<const T*>(x.data_ptr()), static_cast<const T*>(cos.data_ptr()),
        static_cast<const T*>(sin.data_ptr()), static_cast<const int64_t*>(positions.data_ptr()),
        positions.dim() == 2, inverse, static_cast<T*>(out.data_ptr()), H, T_, half, total);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace somnus::kernels::cuda
