// The GELU backward of an MLP's first layer fused into the second layer's input-gradient GEMM
// (issue 4 §2, cuBLASLt's backward epilogues):
//   dz = (g @ b) ∘ gelu'(pre),   dbias = Σ_rows dz
// In a GELU MLP y = gelu(x·W1 + b1)·W2 + b2 with upstream gradient g = dL/dy, b = W2ᵀ gives
// dz = dL/d(x·W1 + b1) and dbias = dL/db1 in one pass over the (rows, H) activations.
//
// CUDA: one cuBLASLt GEMM with CUBLASLT_EPILOGUE_DGELU_BGRAD (DGELU without dbias): aux = pre,
//   the GELU_AUX pre-activation the forward epilogue wrote; the bias pointer receives dbias
//   (the column sums of dz). Taken when cuBLASLt can: f32 or bf16, g's rows stacked (one
//   (rows, K) matrix), b 2-D, pre contiguous with N % 8 == 0 and 16-byte aligned (aux
//   constraints), and a heuristic algorithm exists. Otherwise, and for f64, the composition
//   below runs on the device.
// CPU (the twin): matmul(g, b) → unary_backward(gelu, pre, ·) → sum_to, exactly the ops of the
//   unfused backward (the second matmul node's dA, then the matmul_gelu node's gelu' and
//   bias reduction), so CPU results are bitwise those of the unfused path.
// FLOPs 2·rows·K·N (+ the elementwise gelu' and the column sum); bytes: g, b, pre in, dz out.
#pragma once
#include "tensor/tensor.h"

namespace somnus::kernels {

struct MatmulDgeluBgrad {
  Tensor dz;     // pre's shape: (M, N) or (Bt, M, N)
  Tensor dbias;  // (N,), or undefined when not asked for
};

// g (M, K) or (Bt, M, K); b (K, N) or (Bt or 1, K, N), as for matmul(g, b); pre the shape of
// matmul(g, b)'s result. Same dtype and device for all three. Throws somnus::Error otherwise.
MatmulDgeluBgrad matmul_dgelu_bgrad(const Tensor& g, const Tensor& b, const Tensor& pre, bool want_dbias);

}  // namespace somnus::kernels

namespace somnus::kernels::cuda {
// kernels/cuda/matmul.cu (CUDA builds only). dz contiguous, pre's shape; dbias (N,) or
// undefined. Returns false, having written nothing, when the fused epilogue cannot run.
bool matmul_dgelu_bgrad(const Tensor& g, const Tensor& b, const Tensor& pre, const Tensor& dz, const Tensor& dbias);
}  // namespace somnus::kernels::cuda
