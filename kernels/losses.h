// Fused, chunked lm-head losses (issue 5): cross-entropy, generalized JSD_β distillation and
// the PPO/GRPO clipped surrogate, computed straight from hidden states h and the lm-head
// weight W without ever materialising the (N, V) logits. Rows of h are processed in chunks
// (rows per chunk = clamp(2^22 / V, 1, N): one chunk of logits is ≤ 16 MB in f32); the
// gradients dh and dW are computed inside the same pass, chunk by chunk, so a backward only
// rescales them by the incoming scalar gradient (autograd/losses.h does that).
//
// Conventions shared by the three losses:
//   h (..., H) is flattened to (N, H); W is (V, H) (the nn::Linear / tied-embedding layout).
//   logits = h Wᵀ / τ.
//   A token is valid when its mask entry is nonzero (and, for hard labels, its target is not
//   ignore_index). reduction = sum adds the per-token losses of valid tokens; mean divides
//   that sum by `num_valid` when it is > 0 (the caller's global valid-token count, so that
//   gradient accumulation over micro-batches is exact), else by the local valid count.
//   dh has h's shape, dW has W's shape; both f32 (f64 for f64 inputs, used by gradcheck).
//   On CPU bf16 inputs are cast to f32 once (a full copy of h and W). On CUDA bf16 h and W go
//   to the chunk GEMMs as they are (f32 logits chunks, gradient chunks rounded to bf16; f64 is
//   cast to f32; SOMNUS_LOSS_CUDA=f32 selects the older f32-copy path; kernels/cuda/losses.cu).
//   The autograd node keeps dh + dW (not the logits) between forward and backward.
// The CPU twin (kernels/cpu/losses.cpp) and the CUDA kernels run the same chunking.
#pragma once
#include <cstdint>
#include <string>

#include "tensor/tensor.h"

// The option and result types live in namespace somnus (not kernels) so that an unqualified
// call such as linear_jsd(h_s, W_s, h_t, W_t, opt) finds only the autograd version
// (autograd/losses.h) by argument-dependent lookup; the kernels are called qualified.
namespace somnus {

enum class LossReduction : uint8_t { sum, mean };

// Chunking overrides (0 = derived from H and V). Tests use them to force many chunks and a
// vocab size that is not a multiple of the chunk.
struct LossChunking {
  int64_t rows_per_chunk = 0;
  int64_t vocab_chunk = 0;  // PPO only: vocab columns per inner chunk (online logsumexp)
};

struct LinearLossResult {
  Tensor loss;  // 0-dim, f32 (f64 for f64 inputs)
  Tensor dh;    // d loss / d h, h's shape (undefined unless compute_grad)
  Tensor dW;    // d loss / d W, W's shape (undefined unless compute_grad)
  int64_t num_valid = 0;  // local valid tokens
};

// ---------------------------------------------------------------- cross-entropy

// Per valid token t with target y:
//   loss_t = (1 − ε)·(−log p_y) + ε·mean_v(−log p_v) + z·lse²      (lse = logsumexp of the logits)
// ε = label_smoothing, z = z_loss. d loss_t / d logit_v = p_v − (1 − ε)·[v = y] − ε/V + 2z·lse·p_v.
struct LinearCrossEntropyOptions {
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  double z_loss = 0.0;
  double temperature = 1.0;
  LossReduction reduction = LossReduction::mean;
  double num_valid = 0.0;  // > 0: global valid-token count for mean
  bool compute_grad = true;
  bool compute_dW = true;  // false (a frozen lm head): dW is neither computed nor allocated
  LossChunking chunking;
};
// h (..., H), W (V, H), targets int (...) matching h's leading dims.
namespace kernels {
LinearLossResult linear_cross_entropy(const Tensor& h, const Tensor& W, const Tensor& targets,
                                      const LinearCrossEntropyOptions& opt = {});
}  // namespace kernels

// ---------------------------------------------------------------- generalized JSD_β

// Per valid token, with log p_S = log_softmax(h_s W_sᵀ / τ), log p_T = log_softmax(h_t W_tᵀ / τ):
//   β = 0:      KL(p_T ‖ p_S)                      (forward KL; exact branch)
//   β = 1:      KL(p_S ‖ p_T)                      (reverse KL; exact branch)
//   otherwise:  β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M),
//               log M = logsumexp(log p_S + log(1 − β), log p_T + log β)
// plus hard_label_weight · CE(h_s W_sᵀ (no temperature), targets) when targets is defined.
// The teacher takes no gradient. h_s (..., Hs), W_s (V, Hs), h_t (..., Ht), W_t (V, Ht):
// student and teacher may have different hidden sizes but share V and the token layout.
struct LinearJSDOptions {
  double beta = 0.5;
  double temperature = 1.0;
  Tensor mask;               // (...) any dtype, nonzero = valid; undefined = all valid
  Tensor targets;            // (...) int, optional hard labels
  double hard_label_weight = 0.0;
  int64_t ignore_index = -100;
  LossReduction reduction = LossReduction::mean;
  double num_valid = 0.0;
  bool compute_grad = true;
  bool compute_dW = true;  // false (a frozen lm head): dW is neither computed nor allocated
  LossChunking chunking;
};
namespace kernels {
LinearLossResult linear_jsd(const Tensor& h_s, const Tensor& W_s, const Tensor& h_t, const Tensor& W_t,
                            const LinearJSDOptions& opt = {});
}  // namespace kernels

// ---------------------------------------------------------------- PPO / GRPO

// Per token (b, t): logp = log softmax(h Wᵀ / τ)[action], r = exp(logp − old_logp),
//   surrogate = −min(r·A_b, clip(r, 1 − eps_low, 1 + eps_high)·A_b)
//   k3        = exp(ref − logp) − (ref − logp) − 1          (when kl_beta ≠ 0 and ref_logp given)
//   l_bt      = surrogate + kl_beta · k3
// Reduction by loss_type (m = mask):
//   grpo:    (1/B) Σ_b (Σ_t m l / Σ_t m)          per-sequence mean, then mean over sequences
//   bnpo:    Σ m l / Σ m                           local token mean
//   dr_grpo: Σ m l / (B · max_completion_length)  (T when max_completion_length is 0)
//   dapo:    Σ m l / num_valid                     global token count (local Σ m when 0)
// Selective log-prob: rows × vocab chunks with an online logsumexp; when a row chunk's logits
// over the whole vocab fit the budget there is one vocab chunk and one GEMM per row chunk,
// otherwise the logits are recomputed in a second vocab pass for the gradient.
enum class PPOLossType : uint8_t { grpo, bnpo, dr_grpo, dapo };

struct LinearPPOOptions {
  double eps_low = 0.2;
  double eps_high = 0.2;
  double kl_beta = 0.0;
  double temperature = 1.0;
  PPOLossType loss_type = PPOLossType::grpo;
  int64_t max_completion_length = 0;  // dr_grpo
  double num_valid = 0.0;             // dapo: global valid-token count
  bool compute_grad = true;
  bool compute_dW = true;  // false (a frozen lm head): dW is neither computed nor allocated
  LossChunking chunking;
};
struct LinearPPOResult {
  Tensor loss, dh, dW;
  Tensor logp;                 // (B, T) selective log-probs (f32/f64), detached
  double clip_low_fraction = 0;   // valid tokens with r < 1 − eps_low and A < 0
  double clip_high_fraction = 0;  // valid tokens with r > 1 + eps_high and A > 0
  double mean_kl = 0;             // masked mean of k3 (0 without ref_logp)
  double entropy = 0;             // masked mean of −Σ p log p
  int64_t num_valid = 0;
};
namespace kernels {
const char* ppo_loss_type_name(PPOLossType t);
PPOLossType ppo_loss_type_from_name(const std::string& name);
// h (B, T, H), W (V, H), actions int (B, T), old_logp (B, T), ref_logp (B, T) or undefined,
// advantages (B,) or (B, T), mask (B, T) or undefined.
LinearPPOResult linear_ppo_loss(const Tensor& h, const Tensor& W, const Tensor& actions, const Tensor& old_logp,
                                const Tensor& ref_logp, const Tensor& advantages, const Tensor& mask,
                                const LinearPPOOptions& opt = {});

// ---------------------------------------------------------------- RL helpers (CPU, small)

// rewards (B·G,) laid out group-major (G completions per prompt) -> advantages (B·G,):
//   A = r − mean_group(r), divided by std_group (group), std over the batch (batch) or not (none),
//   plus eps = 1e-4 in the divisor. std is the unbiased sample std (as TRL).
enum class AdvantageScaling : uint8_t { group, batch, none };
Tensor group_advantages(const Tensor& rewards, int64_t group_size, AdvantageScaling scaling = AdvantageScaling::group,
                        double eps = 1e-4);
// GAE for PPO with a value head: rewards, values, mask (B, T) (mask: 1 for real steps; the
// episode ends after the last valid step) -> {advantages (B, T), returns (B, T)}.
//   δ_t = r_t + γ V_{t+1} − V_t (V_{t+1} = 0 past the last valid step),  A_t = δ_t + γλ A_{t+1}.
struct GAEResult {
  Tensor advantages, returns;
};
GAEResult gae(const Tensor& rewards, const Tensor& values, const Tensor& mask, double gamma, double lambda);

}  // namespace kernels
}  // namespace somnus
