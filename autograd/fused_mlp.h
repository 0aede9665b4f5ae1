// The GELU MLP core y = gelu(x @ w1 + b1) @ w2 + b2 as one autograd node (issue 4 §2), so that
// its backward can use cuBLASLt's DGELU/BGRAD epilogue: the second layer's input-gradient GEMM
// (g · w2ᵀ) applies gelu'(pre) and reduces the first layer's bias gradient in the same call
// (kernels::matmul_dgelu_bgrad). Two separate matmul nodes cannot: the GEMM that produces
// dL/dh belongs to the second node, the gelu' and db1 to the first.
//
// Forward: the two matmuls, the first with its fused bias+GELU epilogue (GELU_AUX_BIAS on
// CUDA, keeping the pre-activation). Saves x, w1, w2, h = gelu(pre) and pre: what the two
// matmul nodes save. On CPU every op is the one the unfused path runs, in the same order, so
// values and gradients are bitwise those of matmul(matmul(x, w1, b1, true), w2, b2).
#pragma once
#include "tensor/tensor.h"

namespace somnus {

// x (M, K) or (Bt, M, K); w1 (K, H); w2 (H, N); b1 (H,), b2 (N,) or undefined -> (…, M, N).
// The weights are 2-D (a Linear's weightᵀ view is fine: no copy).
Tensor mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2);

}  // namespace somnus
