// What the drivers of the grid-stride kernels (elementwise, index) share, after cuda_emu.h:
// the strided layouts of tensor/cuda/layout.cuh, the two tensor.h helpers their extracts call
// (the drivers link no engine library), the note of which kernel host code launched, and
// 64-byte aligned host buffers.
#pragma once
#include <array>
#include <memory>
#include <string>

#include "cuda_emu.h"
#include "tensor/cuda/layout.cuh"  // StridedLayout

// Not `using namespace somnus`: the extracts' throw_error is cuda_emu.h's.
using somnus::compute_t;
using somnus::Shape;
using somnus::shape_numel;
using somnus::shape_str;
using somnus::Strides;
using somnus::cuda::kMaxDims;
using somnus::cuda::StridedLayout;

namespace somnus {
int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t v : s) n *= v;
  return n;
}
std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}
}  // namespace somnus

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The kernel host code launched last (extract.py's host_launches calls this with the launch's
// kernel expression).
std::string g_launched;
void emu_note_launch(const char* kernel) { g_launched = kernel; }

// A host buffer of n elements, 64-byte aligned (a view at offset 0 takes any vector path).
template <class T>
struct Buf {
  std::unique_ptr<T[], void (*)(T*)> p{nullptr, [](T* q) { ::operator delete[](q, std::align_val_t(64)); }};
  int64_t size = 0;
  explicit Buf(int64_t n, T fill = T{}) : size(n) {
    p.reset(static_cast<T*>(::operator new[](sizeof(T) * std::max<int64_t>(n, 1), std::align_val_t(64))));
    for (int64_t i = 0; i < n; ++i) p[i] = fill;
  }
  T* data() const { return p.get(); }
  T& operator[](int64_t i) const { return p[i]; }
};

// Storage offset of logical element i (row-major over shape s) under strides st.
inline int64_t offset_of(const Shape& s, const Strides& st, int64_t i) {
  int64_t o = 0;
  for (int64_t d = static_cast<int64_t>(s.size()) - 1; d >= 0; --d) {
    o += (i % s[d]) * st[d];
    i /= s[d];
  }
  return o;
}

// Whether two stored values have the same bits (the drivers' bitwise checks, NaN included).
template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// v as stored in U (an integral U: truncated, NaN as 7).
template <class U>
U stored(double v) {
  if constexpr (std::is_integral_v<U>) {
    return std::isnan(v) ? U(7) : static_cast<U>(v);
  } else {
    return static_cast<U>(static_cast<compute_t<U>>(v));
  }
}
