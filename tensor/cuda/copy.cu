// Strided copy with dtype conversion, and fill. One thread per output element with a
// grid-stride loop; 2·numel·size bytes moved. Contiguous same-dtype copies use cudaMemcpy.
#include <cuda_runtime.h>

#include "tensor/cuda/backend.h"
#include "tensor/cuda/check.h"
#include "tensor/cuda/layout.cuh"
#include "tensor/dispatch.h"

namespace somnus::cuda {

template <class T>
__host__ __device__ __forceinline__ T from_double(double v) {
  return static_cast<T>(static_cast<compute_t<T>>(v));
}

template <class D, class S>
__global__ void strided_copy_kernel(D* dst, const S* src, StridedLayout<2> layout, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t off[2];
    layout.offsets(i, off);
    dst[off[0]] = static_cast<D>(static_cast<compute_t<D>>(static_cast<compute_t<S>>(src[off[1]])));
  }
}

template <class T>
__global__ void fill_kernel(T* dst, T value, StridedLayout<1> layout, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t off[1];
    layout.offsets(i, off);
    dst[off[0]] = value;
  }
}

void strided_copy(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  CUDA_CHECK(cudaSetDevice(dst.device().index));
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    CUDA_CHECK(cudaMemcpy(dst.data_ptr(), src.data_ptr(), static_cast<size_t>(dst.nbytes()), cudaMemcpyDeviceToDevice));
    return;
  }
  const Strides* strides[2] = {&dst.strides(), &src.strides()};
  auto layout = make_layout<2>(dst.shape(), strides, "copy");
  visit_dtype(dst.dtype(), [&](auto dtag) {
    using D = decltype(dtag);
    visit_dtype(src.dtype(), [&](auto stag) {
      using S = decltype(stag);
      strided_copy_kernel<D, S><<<grid_for(n, 256), 256>>>(static_cast<D*>(dst.data_ptr()),
                                                           static_cast<const S*>(src.data_ptr()), layout, n);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void fill(const Tensor& dst, double value) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  CUDA_CHECK(cudaSetDevice(dst.device().index));
  const Strides* strides[1] = {&dst.strides()};
  auto layout = make_layout<1>(dst.shape(), strides, "fill");
  visit_dtype(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<grid_for(n, 256), 256>>>(static_cast<T*>(dst.data_ptr()), from_double<T>(value), layout, n);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace somnus::cuda
