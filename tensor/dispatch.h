// Dtype dispatch: visit_dtype(d, [&](auto tag) { using T = decltype(tag); ... }) calls the
// lambda with a value of the C++ type that stores `d` (float, double, bf16, int32_t, int64_t).
#pragma once
#include "tensor/dtype.h"
#include "tensor/error.h"

namespace somnus {

template <class F>
decltype(auto) visit_dtype(DType d, F&& f) {
  switch (d) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(bf16{});
    case DType::i32: return f(int32_t{});
    case DType::i64: return f(int64_t{});
  }
  throw_error("visit_dtype: unknown dtype");
}

// Only the floating types (f32, f64, bf16); others throw naming `op`.
template <class F>
decltype(auto) visit_floating(DType d, const char* op, F&& f) {
  switch (d) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(bf16{});
    default: throw_error(std::string(op) + ": expected a floating dtype (f32, f64, bf16), got " + dtype_name(d));
  }
}

// Arithmetic type that a storage type computes in: bf16 computes in float.
template <class T> struct compute_type { using type = T; };
template <> struct compute_type<bf16> { using type = float; };
template <class T> using compute_t = typename compute_type<T>::type;

}  // namespace somnus
