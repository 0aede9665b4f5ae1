// Autograd nodes of the fused lm-head losses: the forward kernel already produced dh and dW
// (scaled for the reduction); backward is g · dh, g · dW (g the incoming 0-dim gradient).
#include "autograd/losses.h"

#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "kernels/ops.h"

namespace somnus {

namespace {

// Records `loss` as a function of (h, W) with precomputed gradients dh, dW.
// Memory: dW is (V, H) f32 — 2.1 GB at V = 128256, H = 4096 — so the rule avoids a second
// buffer of that size where it can: when the incoming gradient is exactly 1 (the usual
// loss.backward(); one scalar read back to check) and the parameter has another dtype (bf16),
// it returns the cast of dW straight away (the engine would cast g · dW anyway) instead of
// g · dW in f32 and then the cast. Otherwise g · dW in a new buffer, as before (a tensor
// aliasing the saved one could be accumulated into itself by a retain_graph rerun).
Tensor record_fused(const char* name, const Tensor& h, const Tensor& W, Tensor loss, const Tensor& dh,
                    const Tensor& dW) {
  if (!dh.defined()) return loss;
  // dW is undefined when W needs no gradient (a frozen lm head).
  const Tensor dh_saved = dh.detach(), dW_saved = dW.defined() ? dW.detach() : Tensor();
  const DType h_dtype = h.dtype(), W_dtype = W.dtype();
  return autograd::record(name, {h, W}, std::move(loss),
                          [dh = dh_saved, dW = dW_saved, h_dtype, W_dtype](const autograd::TensorList& g) {
                            const Tensor s = g[0].dtype() == dh.dtype() ? g[0] : kernels::cast(g[0], dh.dtype());
                            const bool unit = s.item() == 1.0;
                            const auto scaled = [&](const Tensor& d, DType param_dtype) {
                              if (unit && param_dtype != d.dtype()) return kernels::cast(d, param_dtype);
                              return kernels::binary(kernels::Binary::mul, d, s);
                            };
                            return autograd::TensorList{scaled(dh, h_dtype),
                                                        dW.defined() ? scaled(dW, W_dtype) : Tensor()};
                          });
}

}  // namespace

Tensor linear_cross_entropy(const Tensor& h, const Tensor& W, const Tensor& targets,
                            const LinearCrossEntropyOptions& opt) {
  LinearCrossEntropyOptions o = opt;
  o.compute_grad = autograd::needs_grad({h, W});
  o.compute_dW = o.compute_dW && autograd::needs_grad({W});
  LinearLossResult r = kernels::linear_cross_entropy(h.detach(), W.detach(), targets, o);
  return record_fused("linear_cross_entropy", h, W, r.loss, r.dh, r.dW);
}

Tensor linear_jsd(const Tensor& h_s, const Tensor& W_s, const Tensor& h_t, const Tensor& W_t,
                  const LinearJSDOptions& opt) {
  LinearJSDOptions o = opt;
  o.compute_grad = autograd::needs_grad({h_s, W_s});
  o.compute_dW = o.compute_dW && autograd::needs_grad({W_s});
  LinearLossResult r = kernels::linear_jsd(h_s.detach(), W_s.detach(), h_t.detach(), W_t.detach(), o);
  return record_fused("linear_jsd", h_s, W_s, r.loss, r.dh, r.dW);
}

PPOLossOutput linear_ppo_loss(const Tensor& h, const Tensor& W, const Tensor& actions, const Tensor& old_logp,
                              const Tensor& ref_logp, const Tensor& advantages, const Tensor& mask,
                              const LinearPPOOptions& opt) {
  LinearPPOOptions o = opt;
  o.compute_grad = autograd::needs_grad({h, W});
  o.compute_dW = o.compute_dW && autograd::needs_grad({W});
  const auto d = [](const Tensor& t) { return t.defined() ? t.detach() : t; };
  LinearPPOResult r = kernels::linear_ppo_loss(h.detach(), W.detach(), d(actions), d(old_logp),
                                                        d(ref_logp), d(advantages), d(mask), o);
  PPOLossOutput out;
  out.loss = record_fused("linear_ppo_loss", h, W, r.loss, r.dh, r.dW);
  out.logp = r.logp;
  out.clip_low_fraction = r.clip_low_fraction;
  out.clip_high_fraction = r.clip_high_fraction;
  out.mean_kl = r.mean_kl;
  out.entropy = r.entropy;
  out.num_valid = r.num_valid;
  return out;
}

}  // namespace somnus
