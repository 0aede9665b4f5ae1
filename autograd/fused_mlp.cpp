// mlp_gelu (autograd/fused_mlp.h): the forward and the fused backward node.
#include "autograd/fused_mlp.h"

#include "autograd/node.h"
#include "kernels/matmul_dgelu.h"
#include "kernels/ops.h"
#include "tensor/format.h"

namespace somnus {

namespace {
bool wants(const Tensor& t) { return t.defined() && (t.requires_grad() || t.grad_fn()); }

// dL/dw for y = a @ w with a 2-D w shared by every batch of a (…, M, K): the batch sums too.
Tensor shared_weight_grad(const Tensor& a, const Tensor& gz) {
  if (a.dim() == 3) {
    const int64_t k = a.size(-1), n = gz.size(-1);
    return kernels::matmul(a.reshape({-1, k}).transpose(0, 1), gz.reshape({-1, n}));  // (K, N)
  }
  return kernels::matmul(a.transpose(-2, -1), gz);  // (K, M) @ (M, N)
}
}  // namespace

Tensor mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2) {
  SOMNUS_CHECK(w1.defined() && w2.defined() && w1.dim() == 2 && w2.dim() == 2,
               "mlp_gelu: w1 (K, H) and w2 (H, N) must be 2-D, got w1 {} and w2 {}",
               w1.defined() ? shape_str(w1.shape()) : "undefined", w2.defined() ? shape_str(w2.shape()) : "undefined");
  const bool grad = autograd::needs_grad({x, w1, b1, w2, b2});
  Tensor pre;  // (…, M, H) x @ w1 + b1, before the GELU
  const Tensor h = kernels::matmul(x, w1, b1, /*gelu=*/true, grad ? &pre : nullptr);  // (…, M, H)
  Tensor y = kernels::matmul(h, w2, b2);                                               // (…, M, N)
  if (!grad) return y;
  const bool need_x = wants(x), need_w1 = wants(w1), need_b1 = wants(b1);
  const bool need_w2 = wants(w2), need_b2 = wants(b2);
  const bool need_first = need_x || need_w1 || need_b1;
  // Each tensor is saved only when a gradient that reads it is wanted (as the matmul node does).
  return autograd::record(
      "mlp_gelu", {x, w1, b1, w2, b2}, y,
      [x = need_w1 ? x.detach() : Tensor(), w1 = need_x ? w1.detach() : Tensor(), w2 = need_first ? w2.detach() : Tensor(),
       h = need_w2 ? h.detach() : Tensor(), pre = need_first ? pre.detach() : Tensor(), need_x, need_w1, need_b1,
       need_w2, need_b2, need_first](const autograd::TensorList& g) {
        const Tensor& gy = g[0];  // (…, M, N)
        Tensor gx, gw1, gb1, gw2, gb2;
        if (need_first) {
          // dz = (gy @ w2ᵀ) ∘ gelu'(pre) and db1 = Σ dz: one GEMM with the DGELU_BGRAD epilogue.
          kernels::MatmulDgeluBgrad d = kernels::matmul_dgelu_bgrad(gy, w2.transpose(0, 1), pre, need_b1);
          if (need_x) gx = kernels::matmul(d.dz, w1.transpose(0, 1));  // (…, M, H) @ (H, K)
          if (need_w1) gw1 = shared_weight_grad(x, d.dz);
          gb1 = d.dbias;
        }
        if (need_w2) gw2 = shared_weight_grad(h, gy);
        if (need_b2) gb2 = kernels::sum_to(gy, {gy.size(-1)});
        return autograd::TensorList{gx, gw1, gb1, gw2, gb2};
      });
}

}  // namespace somnus
