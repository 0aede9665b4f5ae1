// The differentiable functions of somnus: what users and nn/ call. Each wraps a kernels::
// op (kernels/ops.h) and, when grad mode is on and some input requires grad, records a
// node with its backward rule (autograd/functions.cpp). Backward rules are written with
// kernels:: ops, so they run on CPU and CUDA alike.
//
// Binary ops broadcast numpy-style; their backward sums the gradient back to each input's
// shape. Scalar overloads take a double, which becomes a 0-dim tensor of the other
// operand's dtype. Dims may be negative (counted from the end).
//
// Tensor's own member functions (x.view(...), x.transpose(...)) are raw views without
// history; use the free functions here (view(x, ...), transpose(x, ...)) inside models.
#pragma once
#include <cstdint>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "tensor/tensor.h"

namespace somnus {

// ---------------------------------------------------------------- elementwise, binary

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
// Ties split the gradient evenly between a and b (as PyTorch does).
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);

Tensor add(const Tensor& a, double b);
Tensor sub(const Tensor& a, double b);
Tensor sub(double a, const Tensor& b);
Tensor mul(const Tensor& a, double b);
Tensor div(const Tensor& a, double b);
Tensor div(double a, const Tensor& b);

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator+(double a, const Tensor& b);
Tensor operator-(double a, const Tensor& b);
Tensor operator*(double a, const Tensor& b);
Tensor operator/(double a, const Tensor& b);
Tensor operator-(const Tensor& x);

// a where cond != 0, else b; all three broadcast; cond gets no gradient.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, double b);

// ---------------------------------------------------------------- elementwise, unary

Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x);  // tanh form
Tensor silu(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor square(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);

// ---------------------------------------------------------------- reductions

Tensor sum(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor mean(const Tensor& x, int64_t dim, bool keepdim = false);
// Max values over dim; the gradient goes to the (first) argmax position.
Tensor max(const Tensor& x, int64_t dim, bool keepdim = false);
// Over all elements: 0-dim results. max's gradient is shared evenly among tied maxima.
Tensor sum(const Tensor& x);
Tensor mean(const Tensor& x);
Tensor max(const Tensor& x);

// ---------------------------------------------------------------- softmax

// Numerically stable; over `dim` (the kernels work on the last dim; another dim is
// transposed there and back).
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

// ---------------------------------------------------------------- matmul

// a @ b [+ bias] [then gelu]: a (M, K) or (Bt, M, K); b (K, N) or (Bt, K, N); bias (N,).
// With gelu, the pre-activation from the GELU epilogue is saved for the backward.
Tensor matmul(const Tensor& a, const Tensor& b, const Tensor& bias = Tensor(), bool gelu = false);

// ---------------------------------------------------------------- attention (issue 4 §1)

// Fused flash attention (kernels::attention_fwd/bwd): q (B, Hq, T, D), k, v (B, Hkv, S, D),
// Hkv | Hq -> (B, Hq, T, D). Causal: query i (absolute position q_offset + i) sees keys
// j <= q_offset + i. scale <= 0 means 1/sqrt(D). Saves q, k, v, o and the row lse (O(T) per
// head, no (T, S) matrix); the backward recomputes P. On CPU the backward is the
// deterministic one (bitwise-reproducible runs); on CUDA dQ uses atomics unless
// `deterministic` is set. Without grad, T <= 4 queries against S >= 1024 keys go through the
// split-K decode kernel (kernels::attention_decode; same result to rounding).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                    double scale = 0.0, int64_t q_offset = 0, bool deterministic = false);
// ---------------------------------------------------------------- end attention

// ---------------------------------------------------------------- indexing

// weight (V, C), ids int (...) -> (..., C).
Tensor embedding(const Tensor& weight, const Tensor& ids);
// torch.gather along dim; index (int) has x's rank.
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// Rows of x along dim picked by a 1-D int index (repeats allowed; their grads add up).
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
// Pieces of x along dim with the given sizes (summing to x.size(dim)).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
// `chunks` pieces of equal size along dim (the last may be smaller), as torch.chunk.
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim);

// ---------------------------------------------------------------- views and copies

Tensor view(const Tensor& x, const Shape& shape);
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor flatten(const Tensor& x);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor select(const Tensor& x, int64_t dim, int64_t index);
Tensor expand(const Tensor& x, const Shape& shape);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x, int64_t dim);
Tensor contiguous(const Tensor& x);  // x itself when already contiguous
// dtype conversion; the gradient is converted back. To an integer dtype: no gradient.
Tensor to(const Tensor& x, DType dtype);
Tensor to(const Tensor& x, Device device);


// ---------------------------------------------------------------- fused training-path ops

// Fused norms over the last dim with an optional residual add (kernels::rms_norm/layer_norm):
// h = x + residual (x itself when residual is undefined), y = norm(h)·weight [+ bias].
// Returns {y, h}: pass h on as the residual stream of the next block. bias may be undefined.
struct NormOutput {
  Tensor y, h;
};
NormOutput rms_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps);
NormOutput layer_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps);
// silu(gate) ∘ up, one fused kernel each way.
Tensor swiglu(const Tensor& gate, const Tensor& up);
// Rotate-half RoPE of x (B, H, T, D) with cos/sin tables (P, D/2) at int positions (T,) or
// (B, T); the tables get no gradient.
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions);

}  // namespace somnus
