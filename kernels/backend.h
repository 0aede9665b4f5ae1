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
// The kernel the CUDA attention forward runs for these inputs on the current device, given the
// version switch SOMNUS_ATTN_FWD (kernels/cuda/attention.cu): "simt" (not bf16), "mma", "v1",
// "v2", "v3", "wgmma", "wgmma_pipe", "wgmma_ws", "wgmma_wspp" or "wgmma_persist" ("mma" where the
// one asked for does not fit: v3 needs two resident blocks per SM, the wgmma ones an sm_90 device
// and a build for sm_90a). Unset (the default): the fastest that runs — "wgmma_persist", else
// "v3", else "mma". For tests and benchmarks that must know which one they measured. Without
// CUDA it throws.
std::string attention_fwd_kernel(DType dtype, int64_t head_dim, double scale);
// The same for the backward (SOMNUS_ATTN_BWD): "simt", "mma", "v1", "v2", "v3", "v4", "wgmma",
// "wgmma_ws" (those that do not fit fall back to v3 / "mma"; the wgmma ones need an sm_90 device
// and a build for sm_90a). Unset (the default): "wgmma_ws", else "v4", else "v3", else "mma".
std::string attention_bwd_kernel(DType dtype, int64_t head_dim, double scale);
}  // namespace somnus::kernels::cuda

// Fused training-path ops (issue 4 §2). ops.cpp passes contiguous tensors only.
//   norm.{cpp,cu}: rows = numel / C. h: a fresh buffer receiving x + residual, or undefined when
//     residual is (then h is x). mean undefined for rms. The backward writes dh (= dx) and
//     per-chunk partial sums of dweight/dbias: rows are cut into chunks of kNormRowsPerChunk,
//     chunk k writes row k of dw_partial (chunks, C) in the compute type (f32, f64 for f64);
//     ops.cpp sums the chunks in order, so results do not depend on thread or block counts.
//   activation.{cpp,cu}: swiglu, elementwise over equal-shaped contiguous tensors.
//   rope.{cpp,cu}: x (B, H, T, D); positions i64 (T,) or (B, T), range-checked.
#define SOMNUS_FUSED_BACKEND_DECLS                                                                          \
  void norm_forward(bool layer, const Tensor& x, const Tensor& residual, const Tensor& weight,              \
                    const Tensor& bias, double eps, const Tensor& y, const Tensor& h, const Tensor& mean,    \
                    const Tensor& rstd);                                                                    \
  void norm_backward(bool layer, const Tensor& dy, const Tensor& dh_in, const Tensor& h, const Tensor& weight, \
                     const Tensor& mean, const Tensor& rstd, const Tensor& dh_out, const Tensor& dw_partial,  \
                     const Tensor& db_partial);                                                             \
  void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out);                                     \
  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate,         \
                       const Tensor& dup);                                                                  \
  void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions, bool inverse,    \
            const Tensor& out);                                                                             \
  /* adamw.{cpp,cu}: validated lists of equal length; bf16_params empty or one per tensor */                \
  void adamw_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,                      \
                  const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,                \
                  const std::vector<AdamWHyper>& hyper, const Tensor& clip_scale,                           \
                  const std::vector<Tensor>& bf16_params, bool stochastic_rounding, uint64_t seed);

namespace somnus::kernels {
inline constexpr int64_t kNormRowsPerChunk = 32;
}
namespace somnus::kernels::cpu {
SOMNUS_FUSED_BACKEND_DECLS
}
namespace somnus::kernels::cuda {
SOMNUS_FUSED_BACKEND_DECLS
}

// ---------------------------------------------------------------- attention (issue 4 §1)
// kernels/cpu/attention.cpp and kernels/cuda/attention.cu. ops.cpp passes contiguous tensors
// of one floating dtype: q, o, dout, dq (B, Hq, T, D); k, v, dk, dv (B, Hkv, S, D), Hkv | Hq;
// lse (B, Hq, T) in the compute dtype (f32; f64 for f64 inputs); scale > 0; causal rows see
// keys j <= q_offset + i with q_offset >= 0 (so no row is empty). The CUDA backend takes
// D in {64, 128}. dq, dk, dv are fully written (not accumulated into).
#define SOMNUS_ATTENTION_DECLS                                                                                    \
  void attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,                 \
                     int64_t q_offset, const Tensor& o, const Tensor& lse);                                         \
  void attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,         \
                     const Tensor& dout, bool causal, double scale, int64_t q_offset, bool deterministic,            \
                     const Tensor& dq, const Tensor& dk, const Tensor& dv);                                         \
  /* split-K decode: num_splits KV splits (<= 0: the backend's choice), then a combine */                          \
  void attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,              \
                        int64_t q_offset, int64_t num_splits, const Tensor& o, const Tensor& lse);

namespace somnus::kernels::cpu {
SOMNUS_ATTENTION_DECLS
}
namespace somnus::kernels::cuda {
SOMNUS_ATTENTION_DECLS
}
// ---------------------------------------------------------------- end attention
