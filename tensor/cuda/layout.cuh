// Shapes and strides packed by value into a kernel argument (at most 8 dims), and the
// linear-index -> element-offset mapping that strided CUDA kernels share.
#pragma once
#include <cstdint>

#include "tensor/error.h"
#include "tensor/tensor.h"

namespace somnus::cuda {

constexpr int kMaxDims = 8;

template <int K>
struct StridedLayout {
  int nd = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[K][kMaxDims] = {};

  // Offsets (in elements) of linear index i for each of the K operands.
  __device__ __forceinline__ void offsets(int64_t i, int64_t (&off)[K]) const {
    for (int k = 0; k < K; ++k) off[k] = 0;
    for (int d = nd - 1; d >= 0; --d) {
      const int64_t idx = i % shape[d];
      i /= shape[d];
      for (int k = 0; k < K; ++k) off[k] += idx * stride[k][d];
    }
  }
};

template <int K>
inline StridedLayout<K> make_layout(const Shape& shape, const Strides* const (&strides)[K], const char* op) {
  if (shape.size() > static_cast<size_t>(kMaxDims)) {
    throw_error(std::string(op) + ": CUDA kernels support at most 8 dims, got " + shape_str(shape));
  }
  StridedLayout<K> l;
  l.nd = static_cast<int>(shape.size());
  for (int d = 0; d < l.nd; ++d) {
    l.shape[d] = shape[d];
    for (int k = 0; k < K; ++k) l.stride[k][d] = (*strides[k])[d];
  }
  return l;
}

}  // namespace somnus::cuda
