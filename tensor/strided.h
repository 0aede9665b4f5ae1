// CPU iteration over strided layouts. for_each_row walks every innermost row of `shape`
// for K operands at once, in parallel over rows (OpenMP), giving each row's starting offset
// and innermost stride per operand. Elementwise kernels vectorise the inner loop when the
// inner strides are 1.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace somnus {

template <size_t K>
struct RowView {
  std::array<int64_t, K> offset;  // element offset of the row start, per operand
  std::array<int64_t, K> stride;  // innermost stride, per operand
  int64_t n;                      // row length
};

// strides[k] must have shape.size() entries (use broadcast strides with 0 for expanded dims).
template <size_t K, class RowFn>
void for_each_row(const Shape& shape, const std::array<Strides, K>& strides, RowFn&& row) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  if (shape_numel(shape) == 0) return;
  if (nd == 0) {
    RowView<K> r;
    r.offset.fill(0);
    r.stride.fill(0);
    r.n = 1;
    row(r);
    return;
  }
  const int64_t inner = shape[nd - 1];
  const int64_t rows = shape_numel(shape) / inner;
#pragma omp parallel for schedule(static) if (rows * inner > 32768 && rows > 1)
  for (int64_t rix = 0; rix < rows; ++rix) {
    RowView<K> r;
    r.n = inner;
    r.offset.fill(0);
    int64_t rem = rix;
    for (int64_t d = nd - 2; d >= 0; --d) {
      const int64_t i = rem % shape[d];
      rem /= shape[d];
      for (size_t k = 0; k < K; ++k) r.offset[k] += i * strides[k][d];
    }
    for (size_t k = 0; k < K; ++k) r.stride[k] = strides[k][nd - 1];
    row(r);
  }
}

// Strides of `t` viewed with the broadcast shape `out` (stride 0 where t is broadcast).
Strides broadcast_strides(const Tensor& t, const Shape& out);

}  // namespace somnus
