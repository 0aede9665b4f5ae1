// The op list of somnus. Each op validates its inputs (throwing somnus::Error that names the
// op and the offending shapes/dtypes/devices), allocates its output, and dispatches by device
// to kernels/cpu/ or kernels/cuda/ (same algorithm on both; see kernels/backend.h), and by
// dtype inside the backend.
//
// These ops record no autograd history; autograd/functions.h wraps them with backward rules.
//
// Dtypes: elementwise, reductions, softmax and matmul take floating tensors (f32, f64, bf16;
// bf16 computes in f32). Index tensors are i32 or i64. Binary ops require equal dtypes and
// devices; they broadcast numpy-style.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace somnus::kernels {

// ---------------------------------------------------------------- elementwise

enum class Unary : uint8_t { neg, exp, log, sqrt, rsqrt, tanh, sigmoid, relu, gelu, silu, pow, abs, square };
const char* unary_name(Unary op);
// y = f(x); `scalar` is the exponent for Unary::pow. gelu is the tanh form.
Tensor unary(Unary op, const Tensor& x, double scalar = 0.0);
// dx = dy · f'(x), same shape as x (dy must have x's shape).
Tensor unary_backward(Unary op, const Tensor& x, const Tensor& dy, double scalar = 0.0);

enum class Binary : uint8_t { add, sub, mul, div, maximum, minimum };
const char* binary_name(Binary op);
Tensor binary(Binary op, const Tensor& a, const Tensor& b);  // broadcasting
// where(cond, a, b): a where cond != 0 else b; cond of any dtype; all three broadcast.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

// ---------------------------------------------------------------- reductions

enum class Reduce : uint8_t { sum, mean, max };
const char* reduce_name(Reduce op);
// Reduce over one dim (negative counts from the end). Accumulates in f64 on CPU, f32 on CUDA.
Tensor reduce(Reduce op, const Tensor& x, int64_t dim, bool keepdim = false);
// Reduce over every element, giving a 0-dim tensor.
Tensor reduce_all(Reduce op, const Tensor& x);
// i64 indices of the max along dim (first occurrence on ties).
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);
// Sum x down to `shape` (the inverse of broadcasting `shape` to x.shape()).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---------------------------------------------------------------- softmax (last dim)

Tensor softmax(const Tensor& x);
Tensor log_softmax(const Tensor& x);
// dx = y ∘ (dy − Σ dy∘y)        (y = softmax(x))
Tensor softmax_backward(const Tensor& y, const Tensor& dy);
// dx = dy − exp(y) ∘ Σ dy       (y = log_softmax(x))
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy);

// ---------------------------------------------------------------- matmul

// out = a @ b [+ bias] [then gelu].
//   a (M, K) or (Bt, M, K);  b (K, N) or (Bt, K, N) (a 2-D b is shared by every batch);
//   bias (N,) optional.  Transposed views (e.g. b.transpose(0, 1)) are passed to BLAS as
//   transpose flags, not copied. Accumulates in f32 (f64 for f64).
// CPU: OpenBLAS sgemm/dgemm. CUDA: cuBLASLt with bias/GELU epilogues, f32 and bf16 inputs.
// When gelu is set and pre_gelu is non-null, *pre_gelu receives a @ b + bias (for backward).
Tensor matmul(const Tensor& a, const Tensor& b, const Tensor& bias = Tensor(), bool gelu = false,
              Tensor* pre_gelu = nullptr);

// ---------------------------------------------------------------- indexing

// weight (V, C), ids int (...) -> (..., C). Ids out of [0, V) throw on CPU; on CUDA they
// are checked on the host copy before launch.
Tensor embedding(const Tensor& weight, const Tensor& ids);
// The scatter-add backward: dweight (V, C) with dweight[ids[i]] += dout[i].
// deterministic: a fixed summation order (CPU always is; CUDA sorts ids first).
Tensor embedding_backward(const Tensor& dout, const Tensor& ids, int64_t vocab, bool deterministic = false);
// torch.gather: out[i][j][k] = x[i][index[i][j][k]][k] for dim=1; index has x's rank.
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// The backward of gather: zeros(shape) with out[...index...] += src.
Tensor scatter_add(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& src);
// Rows of x along dim picked by a 1-D index.
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
// The backward of index_select: zeros(shape) with out.select(dim, index[i]) += src.select(dim, i).
Tensor index_add(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& src);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
// Views of x along dim with the given sizes (must sum to x.size(dim)).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
// dtype conversion (bf16 rounds to nearest-even).
Tensor cast(const Tensor& x, DType dtype);

}  // namespace somnus::kernels
