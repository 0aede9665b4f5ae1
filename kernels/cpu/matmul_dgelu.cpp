// kernels::matmul_dgelu_bgrad (kernels/matmul_dgelu.h): the checks, the CUDA fused-epilogue
// path, and the CPU twin, which is also the CUDA fallback. The math is in the header.
#include "kernels/matmul_dgelu.h"

#include "kernels/ops.h"
#include "tensor/format.h"
#include "tensor/profiler.h"

namespace somnus::kernels {

MatmulDgeluBgrad matmul_dgelu_bgrad(const Tensor& g, const Tensor& b, const Tensor& pre, bool want_dbias) {
  SOMNUS_CHECK(g.defined() && b.defined() && pre.defined(), "matmul_dgelu_bgrad: g, b and pre must be defined");
  SOMNUS_CHECK(g.dim() == 2 || g.dim() == 3, "matmul_dgelu_bgrad: g must be (M, K) or (Bt, M, K), got g {}",
               shape_str(g.shape()));
  SOMNUS_CHECK(b.dim() == 2 || b.dim() == 3, "matmul_dgelu_bgrad: b must be (K, N) or (Bt, K, N), got b {}",
               shape_str(b.shape()));
  Shape expect(g.shape().begin(), g.shape().end() - 1);
  expect.push_back(b.size(-1));
  SOMNUS_CHECK(pre.shape() == expect, "matmul_dgelu_bgrad: pre must be {} for g {} @ b {}, got pre {}",
               shape_str(expect), shape_str(g.shape()), shape_str(b.shape()), shape_str(pre.shape()));
  SOMNUS_CHECK(pre.dtype() == g.dtype() && pre.device() == g.device(),
               "matmul_dgelu_bgrad: pre ({}, {}) must match g ({}, {})", dtype_name(pre.dtype()),
               pre.device().str(), dtype_name(g.dtype()), g.device().str());
  const int64_t N = b.size(-1);
#ifdef SOMNUS_WITH_CUDA
  if (g.device().is_cuda() && b.device() == g.device() && b.dtype() == g.dtype()) {
    MatmulDgeluBgrad r{Tensor::empty(pre.shape(), pre.dtype(), pre.device()),
                       want_dbias ? Tensor::empty({N}, pre.dtype(), pre.device()) : Tensor()};
    const profiler::OpScope scope("matmul_dgelu_bgrad", {&g, &b, &pre}, [&] {
      return 2.0 * static_cast<double>(pre.numel()) * static_cast<double>(g.size(-1));
    });
    if (cuda::matmul_dgelu_bgrad(g, b, pre, r.dz, r.dbias)) return r;
  }
#endif
  // The twin: the unfused backward's own ops (matmul validates g and b).
  MatmulDgeluBgrad r;
  r.dz = unary_backward(Unary::gelu, pre, matmul(g, b));
  if (want_dbias) r.dbias = sum_to(r.dz, {N});
  return r;
}

}  // namespace somnus::kernels

#ifndef SOMNUS_WITH_CUDA
namespace somnus::kernels::cuda {
// Without the CUDA backend no tensor is on a GPU; the symbol exists for the CUDA tests.
bool matmul_dgelu_bgrad(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  throw_error("matmul_dgelu_bgrad: this build has no CUDA backend");
}
}  // namespace somnus::kernels::cuda
#endif
