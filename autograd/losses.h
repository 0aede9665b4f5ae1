// Differentiable fused lm-head losses (kernels/losses.h). The kernels compute the loss and
// its gradients (dh, dW) in one chunked pass; the node recorded here saves those gradients
// and its backward only multiplies them by the incoming scalar gradient. So a fused loss
// holds dh + dW between forward and backward, never the (N, V) logits.
//
// The gradients are computed only when grad mode is on and h or W requires grad. Teacher
// inputs (linear_jsd's h_t, W_t) and the PPO side inputs never get a gradient.
#pragma once
#include "kernels/losses.h"
#include "tensor/tensor.h"

namespace somnus {

// 0-dim loss; grads flow to h (..., H) and W (V, H).
Tensor linear_cross_entropy(const Tensor& h, const Tensor& W, const Tensor& targets,
                            const LinearCrossEntropyOptions& opt = {});

// 0-dim loss; grads flow to h_s and W_s only.
Tensor linear_jsd(const Tensor& h_s, const Tensor& W_s, const Tensor& h_t, const Tensor& W_t,
                  const LinearJSDOptions& opt = {});

// loss (0-dim, differentiable in h and W) plus the detached log-probs and the metrics.
struct PPOLossOutput {
  Tensor loss;
  Tensor logp;  // (B, T), detached
  double clip_low_fraction = 0, clip_high_fraction = 0, mean_kl = 0, entropy = 0;
  int64_t num_valid = 0;
};
PPOLossOutput linear_ppo_loss(const Tensor& h, const Tensor& W, const Tensor& actions, const Tensor& old_logp,
                              const Tensor& ref_logp, const Tensor& advantages, const Tensor& mask,
                              const LinearPPOOptions& opt = {});

}  // namespace somnus
