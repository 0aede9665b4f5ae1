// Shared helpers for the kernel tests: the error metric, tolerances, random inputs in
// several memory layouts, and row-major index arithmetic for the naive f64 references.
//
//   rel_or_abs_error(out, ref) = ‖out − ref‖ / ‖ref‖  (absolute ‖out − ref‖ when ref is all
//   zeros); +inf when sizes differ or anything is NaN/inf, so NaN can never pass a bound.
//   It lives in tests/testing.h and is re-exported here.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tensor/format.h"
#include "tensor/random.h"
#include "tensor/tensor.h"
#include "testing.h"

namespace somnus::test {

inline double tol_for(DType d) {
  switch (d) {
    case DType::f64: return 1e-12;
    case DType::bf16: return 1e-2;
    default: return 1e-5;
  }
}

using somnus::testing::rel_or_abs_error;

// ---------------------------------------------------------------- layouts

enum class Layout { contiguous, transposed, strided };
inline const char* layout_name(Layout l) {
  switch (l) {
    case Layout::contiguous: return "contiguous";
    case Layout::transposed: return "transposed";
    case Layout::strided: return "strided";
  }
  return "?";
}
constexpr Layout kLayouts[] = {Layout::contiguous, Layout::transposed, Layout::strided};
constexpr DType kFloatTypes[] = {DType::f32, DType::f64, DType::bf16};

// A tensor of logical shape `shape` whose values come from make(physical_shape), laid out as:
//   transposed — made with the last two dims swapped, then .transpose(-1, -2) (column-major
//                inner block; falls back to strided below 2 dims);
//   strided    — made with the last dim doubled, then .slice(-1, 0, end, 2) (inner stride 2).
inline Tensor with_layout(const Shape& shape, Layout layout, const std::function<Tensor(const Shape&)>& make) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  if (layout == Layout::transposed && nd < 2) layout = Layout::strided;
  if (layout == Layout::strided && nd < 1) layout = Layout::contiguous;
  switch (layout) {
    case Layout::contiguous: return make(shape);
    case Layout::transposed: {
      Shape s = shape;
      std::swap(s[nd - 1], s[nd - 2]);
      return make(s).transpose(-1, -2);
    }
    case Layout::strided: {
      Shape s = shape;
      s[nd - 1] *= 2;
      return make(s).slice(-1, 0, s[nd - 1], 2);
    }
  }
  return Tensor();
}

inline Tensor randn_as(const Shape& shape, DType dtype, Layout layout, Generator& g) {
  return with_layout(shape, layout, [&](const Shape& s) { return randn(s, g, dtype); });
}
inline Tensor rand_as(const Shape& shape, DType dtype, Layout layout, Generator& g, double lo, double hi) {
  return with_layout(shape, layout, [&](const Shape& s) { return rand(s, g, dtype, Device::cpu(), lo, hi); });
}

// ---------------------------------------------------------------- row-major index arithmetic

inline std::vector<int64_t> unravel(int64_t flat, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (int64_t d = static_cast<int64_t>(s.size()) - 1; d >= 0; --d) {
    idx[d] = flat % s[d];
    flat /= s[d];
  }
  return idx;
}

inline int64_t ravel(const std::vector<int64_t>& idx, const Shape& s) {
  int64_t flat = 0;
  for (size_t d = 0; d < s.size(); ++d) flat = flat * s[d] + idx[d];
  return flat;
}

// Flat index into a tensor of shape `s` broadcast to the rank of `idx` (numpy rules: leading
// dims are dropped, size-1 dims read element 0).
inline int64_t ravel_broadcast(const std::vector<int64_t>& idx, const Shape& s) {
  const size_t lead = idx.size() - s.size();
  int64_t flat = 0;
  for (size_t d = 0; d < s.size(); ++d) flat = flat * s[d] + (s[d] == 1 ? 0 : idx[lead + d]);
  return flat;
}

inline Shape broadcast_ref(const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    out[i] = da == 1 ? db : da;
  }
  return out;
}

inline std::string case_name(const Shape& s, DType d, Layout l) {
  return fmt::format("shape {} dtype {} layout {}", shape_str(s), dtype_name(d), layout_name(l));
}

}  // namespace somnus::test
