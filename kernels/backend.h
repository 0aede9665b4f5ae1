// The contract between kernels/ops.cpp and a backend (kernels/cpu/, kernels/cuda/).
// ops.cpp has already validated shapes, dtypes, devices and index ranges, and allocated
// `out` (contiguous, correct shape and dtype, on the right device). Inputs may be strided
// views. The same declarations exist in namespace cpu and namespace cuda.
#pragma once
#include "kernels/ops.h"

#define SOMNUS_BACKEND_DECLS                                                                              \
  /* elementwise.{cpp,cu} */                                                                             \
  void unary(Unary op, const Tensor& x, const Tensor& out, double scalar);                              \
  void unary_backward(Unary op, const Tensor& x, const Tensor& dy, const Tensor& out, double scalar);    \
  /* a and b are already expanded to out's shape (stride-0 broadcast views) */                          \
  void binary(Binary op, const Tensor& a, const Tensor& b, const Tensor& out);                           \
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out);                   \
  /* reduce.{cpp,cu}: x viewed as (outer, n, inner) by reducing dim `dim`; out holds outer*inner */     \
  void reduce(Reduce op, const Tensor& x, int64_t dim, const Tensor& out);                              \
  void argmax(const Tensor& x, int64_t dim, const Tensor& out);                                         \
  /* softmax.{cpp,cu}: over the last dim */                                                              \
  void softmax(const Tensor& x, const Tensor& out, bool log);                                           \
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& out, bool log);                \
  /* matmul.{cpp,cu}: a (Bt, M, K), b (Bt or 1, K, N) — b with batch 1 is shared — out (Bt, M, N);   \
     bias (N,) or undefined; pre_gelu (Bt, M, N) or undefined */                                         \
  void matmul(const Tensor& a, const Tensor& b, const Tensor& bias, bool gelu, const Tensor& out,        \
              const Tensor& pre_gelu);                                                                   \
  /* index.{cpp,cu}; out is zero-filled by ops.cpp for embedding_backward/scatter_add/index_add */      \
  void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out);                           \
  void embedding_backward(const Tensor& dout, const Tensor& ids, const Tensor& out, bool deterministic); \
  void gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out);                     \
  void scatter_add(int64_t dim, const Tensor& index, const Tensor& src, const Tensor& out);              \
  void index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out);               \
  void index_add(int64_t dim, const Tensor& index, const Tensor& src, const Tensor& out);

namespace somnus::kernels::cpu {
SOMNUS_BACKEND_DECLS
}
namespace somnus::kernels::cuda {
SOMNUS_BACKEND_DECLS
}

namespace somnus::kernels::cuda {
// f32 matmul on TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32): several times faster, ~1e-3
// relative error. Off by default, so that f32 results match the CPU to ~1e-5. Process-wide.
// kernels/cuda/matmul.cu; without CUDA, set_allow_tf32 throws and allow_tf32 is false.
void set_allow_tf32(bool allow);
bool allow_tf32();
}  // namespace somnus::kernels::cuda
