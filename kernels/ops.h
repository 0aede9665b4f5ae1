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
#include <string>
#include <utility>
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

// The OpenBLAS kernel set the CPU matmuls run on (openblas_get_corename(): "SkylakeX",
// "Haswell", "Zen", ...), chosen by OpenBLAS when it is loaded, before main().
std::string blas_core();
// When OpenBLAS did not recognise this CPU and fell back to kernels without AVX2 ("Prescott":
// SSE3 only; seen on a virtualised Sapphire Rapids Xeon whose model name it did not know, where
// CPU training ran about 4-5x slower) while the CPU has AVX2 + FMA or AVX-512: the
// OPENBLAS_CORETYPE value that makes it use them ("SkylakeX" or "Haswell"); else "". It only
// takes effect in a process started with it in the environment (tools/blas_env.sh; the somnus
// CLI re-executes itself with it, tools/somnus.cpp).
std::string blas_core_advice();

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

// Fused chunked lm-head losses (linear_cross_entropy, linear_jsd, linear_ppo_loss, GAE, group
// advantages) live in kernels/losses.h; batched GPU/CPU sampling in kernels/sampling.h (issue 5).


// ---------------------------------------------------------------- fused training-path ops
// (issue 4 §2; kernels/{cpu,cuda}/{norm,activation,rope}). Inputs are made contiguous.

// Norms over the last dim C with an optional fused residual add. x (..., C); residual
// undefined or x's shape; weight (C,); bias (C,) or undefined (layer norm only); all one dtype.
//   h = x + residual              (h is x itself when there is no residual)
//   rms:   y = h · rstd · weight,              rstd = 1 / sqrt(mean(h²) + eps)
//   layer: y = (h − mean) · rstd · weight + b, rstd = 1 / sqrt(var(h) + eps)
// mean and rstd are (rows,) in f32 (f64 for f64 inputs), saved for the backward; mean is
// undefined for rms. h is returned so the next block reuses the residual stream.
struct NormResult {
  Tensor y, h, mean, rstd;
};
NormResult rms_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps);
NormResult layer_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps);
// Backward from dy (the gradient of y) plus dh (optional: the gradient reaching h through its
// other use, the residual stream) → dh_total (= dx = dresidual), dweight, dbias (layer with
// a bias only). mean is undefined for rms.
struct NormGrads {
  Tensor dh, dweight, dbias;
};
NormGrads norm_backward(bool layer, const Tensor& dy, const Tensor& dh, const Tensor& h, const Tensor& weight,
                        const Tensor& mean, const Tensor& rstd, bool need_bias);

// SwiGLU: y = silu(gate) ∘ up (equal shapes); backward gives (dgate, dup).
Tensor swiglu(const Tensor& gate, const Tensor& up);
std::pair<Tensor, Tensor> swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy);

// RoPE, rotate-half pairing (dim i with i + D/2, as HF Llama): x (B, H, T, D);
// cos, sin (P, D/2) tables in x's dtype; positions int (T,) or (B, T) in [0, P).
//   y1 = x1·c − x2·s,  y2 = x2·c + x1·s.   inverse = true rotates by −angle: the backward.
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions, bool inverse = false);

}  // namespace somnus::kernels

// ---------------------------------------------------------------- attention (issue 4 §1)
// kernels/cpu/attention.cpp, kernels/cuda/attention.cu: FlashAttention-2 (tiled, online
// softmax, O(T) memory), the same algorithm on both backends.
namespace somnus::kernels {

struct AttentionOutput {
  Tensor o;    // (B, Hq, T, D), q's dtype
  Tensor lse;  // (B, Hq, T), log Σ_j e^(scale·q·k_j) over visible keys; f32 (f64 for f64 inputs)
};
struct AttentionGrads {
  Tensor dq, dk, dv;
};

// q (B, Hq, T, D); k, v (B, Hkv, S, D) with Hkv dividing Hq (GQA: query head h reads kv
// head h / (Hq / Hkv)). scale <= 0 means 1/sqrt(D). Causal: query i is at absolute position
// q_offset + i and sees keys j <= q_offset + i (q_offset >= 0; S − T for a KV cache);
// non-causal ignores q_offset. Inputs may be strided views (made contiguous). f32, f64, bf16
// on CPU (any D); CUDA: f32 and bf16 with D in {64, 128}.
AttentionOutput attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale = 0.0,
                              int64_t q_offset = 0);
// The FA2 backward from the forward's o and lse: Δ = rowsum(dO ∘ O), P recomputed from lse.
// deterministic: dQ summed in a fixed order instead of by atomic adds (CPU: per-key-chunk
// accumulators added in chunk order, bitwise independent of the thread count; CUDA: a
// separate dQ pass).
AttentionGrads attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                             const Tensor& dout, bool causal, double scale = 0.0, int64_t q_offset = 0,
                             bool deterministic = false);
// Split-K flash-decoding for a few queries against a long KV cache: the S keys are cut into
// num_splits chunks (<= 0: chosen from S), each gives a partial (o, lse), then a combine.
// Same result as attention_fwd (to rounding).
AttentionOutput attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, bool causal,
                                 double scale = 0.0, int64_t q_offset = 0, int64_t num_splits = 0);


// Fused multi-tensor AdamW (kernels/{cpu,cuda}/adamw; per-element math in kernels/adamw_math.h),
// updating in place, for every i: params[i] (the f32/f64 working weights: the f32 master of a
// bf16 parameter), with grads[i], exp_avg[i], exp_avg_sq[i] (all one dtype, f32 or f64, same
// shape, contiguous) and hyper[i] (per tensor: each has its own step count t and group lr).
// clip_scale: undefined, or a 1-element f32/f64 tensor on the params' device (the global-norm
// clip factor, multiplied into every gradient; read on the device, no host sync on CUDA).
// bf16_params: empty, or one per tensor (undefined to skip): a contiguous bf16 tensor that
// receives the updated weight, rounded to nearest-even, or stochastically with Philox bits
// (seed; element e counted across the whole list) when stochastic_rounding is set.
// One CUDA launch covers up to 32 tensors.
struct AdamWHyper {
  double lr = 1e-3, weight_decay = 0.0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double grad_scale = 1.0;  // e.g. 1/period for averaged accumulation
  int64_t step = 1;         // t, this tensor's update count including this update
};
void adamw_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avg,
                const std::vector<Tensor>& exp_avg_sq, const std::vector<AdamWHyper>& hyper,
                const Tensor& clip_scale = Tensor(), const std::vector<Tensor>& bf16_params = {},
                bool stochastic_rounding = false, uint64_t seed = 0);

}  // namespace somnus::kernels
// ---------------------------------------------------------------- end attention
