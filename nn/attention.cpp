// Scaled-dot-product attention (the fused op, or a composition of differentiable functions
// when there is a bias), and the causal self-attention module (see attention.h).
//
// Cost of the composition per call: 4·B·Hq·T·S·D FLOPs (two batched GEMMs), and the scores
// and probabilities (B, Hq, T, S) are materialised and kept for backward: O(T·S) memory per
// head, which is what the fused flash-attention op (issue 4) removes.
#include "nn/attention.h"

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "autograd/functions.h"
#include "kernels/ops.h"
#include "tensor/format.h"

namespace somnus::nn {

namespace {

// cond (T, S), non-zero where key j is visible from query i: j <= q_offset + i. Built on the
// device from two aranges (no host-to-device copy of a T×S mask).
Tensor causal_visibility(int64_t T, int64_t S, int64_t q_offset, Device device) {
  using kernels::Binary;
  // (q_offset + i + 1) − j > 0  <=>  j <= q_offset + i (exact integers in f32 up to 2^24)
  Tensor qpos = Tensor::arange(q_offset + 1, q_offset + T + 1, 1, DType::f32, device).view({T, 1});
  Tensor kpos = Tensor::arange(0, S, 1, DType::f32, device).view({1, S});
  return kernels::unary(kernels::Unary::relu, kernels::binary(Binary::sub, qpos, kpos));  // (T, S)
}

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t q_offset,
                 const Tensor& attn_bias) {
  SOMNUS_CHECK(q.defined() && k.defined() && v.defined(), "attention: q, k and v must be defined");
  SOMNUS_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
               "attention: expected q (B, Hq, T, D), k and v (B, Hkv, S, D), got q {} k {} v {}", shape_str(q.shape()),
               shape_str(k.shape()), shape_str(v.shape()));
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2);
  SOMNUS_CHECK(k.shape() == v.shape() && k.size(0) == B && k.size(3) == D,
               "attention: k and v must be (B, Hkv, S, D) = ({}, Hkv, S, {}), got q {} k {} v {}", B, D,
               shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  SOMNUS_CHECK(Hkv > 0 && Hq % Hkv == 0, "attention: kv heads ({}) must divide query heads ({}): q {} k {}", Hkv, Hq,
               shape_str(q.shape()), shape_str(k.shape()));
  SOMNUS_CHECK(!causal || q_offset >= 0, "attention: causal q_offset must be >= 0, got {}", q_offset);
  const int64_t g = Hq / Hkv;
  if (scale <= 0.0) scale = 1.0 / std::sqrt(static_cast<double>(D));

  // The fused flash-attention op (issue 4) whenever there is no bias and the backend takes
  // the head dim; the composition below stays for attention biases (left-padded batches).
  if (!attn_bias.defined() && (q.device().is_cpu() || ((D == 64 || D == 128) && q.dtype() != DType::f64))) {
    return scaled_dot_product_attention(q, k, v, causal, scale, q_offset);  // (B, Hq, T, D)
  }

  // Stack each group's g query heads along the query axis; they share their kv head.
  Tensor qg = reshape(q * scale, {B * Hkv, g * T, D});                   // (B·Hkv, g·T, D)
  Tensor kg = reshape(k, {B * Hkv, S, D});                               // (B·Hkv, S, D)
  Tensor vg = reshape(v, {B * Hkv, S, D});                               // (B·Hkv, S, D)
  Tensor scores = view(matmul(qg, transpose(kg, 1, 2)), {B, Hq, T, S});  // (B, Hq, T, S)

  // Masking is skipped when every query sees every key (a decode step: T = 1, q_offset = S − 1).
  if (causal && q_offset + 1 < S) {
    scores = where(causal_visibility(T, S, q_offset, q.device()), scores, -std::numeric_limits<double>::infinity());
  }
  if (attn_bias.defined()) scores = scores + attn_bias;
  Tensor probs = softmax(scores, -1);                       // (B, Hq, T, S)
  Tensor y = matmul(view(probs, {B * Hkv, g * T, S}), vg);  // (B·Hkv, g·T, D)
  return view(y, {B, Hq, T, D});                            // (B, Hq, T, D)
}

Tensor ForwardContext::resolved_positions(int64_t T, Device device) const {
  if (positions.defined()) return positions.device() == device ? positions : positions.to(device);
  SOMNUS_CHECK(pos_offset >= 0, "ForwardContext: pos_offset must be >= 0, got {}", pos_offset);
  return Tensor::arange(pos_offset, pos_offset + T, 1, DType::i64, device);
}

CausalSelfAttention::CausalSelfAttention(const AttentionConfig& cfg, Generator& gen, DType dtype, Device device)
    : n_embd_(cfg.n_embd), n_head_(cfg.n_head), n_kv_head_(cfg.n_kv_head > 0 ? cfg.n_kv_head : cfg.n_head) {
  SOMNUS_CHECK(n_embd_ > 0 && n_head_ > 0, "CausalSelfAttention: n_embd ({}) and n_head ({}) must be positive", n_embd_,
               n_head_);
  SOMNUS_CHECK(n_embd_ % n_head_ == 0, "CausalSelfAttention: n_head ({}) must divide n_embd ({})", n_head_, n_embd_);
  SOMNUS_CHECK(n_head_ % n_kv_head_ == 0, "CausalSelfAttention: n_kv_head ({}) must divide n_head ({})", n_kv_head_,
               n_head_);
  head_dim_ = n_embd_ / n_head_;
  const int64_t qkv = (n_head_ + 2 * n_kv_head_) * head_dim_;
  wqkv = register_module("wqkv", std::make_shared<Linear>(n_embd_, qkv, cfg.bias, gen, cfg.init_std, dtype, device));
  wo = register_module(
      "wo", std::make_shared<Linear>(n_head_ * head_dim_, n_embd_, cfg.bias, gen, cfg.out_init_std, dtype, device));
  if (cfg.rope) {
    rope = register_module("rope", std::make_shared<RoPE>(head_dim_, cfg.max_positions, cfg.rope_theta, dtype, device));
  }
}

Tensor CausalSelfAttention::forward(const Tensor& x, const ForwardContext& ctx, int64_t layer) const {
  SOMNUS_CHECK(x.defined() && x.dim() == 3 && x.size(2) == n_embd_,
               "CausalSelfAttention: expected x (B, T, {}), got {}", n_embd_,
               x.defined() ? shape_str(x.shape()) : "undefined");
  const int64_t B = x.size(0), T = x.size(1), D = head_dim_;
  const int64_t Hq = n_head_, Hkv = n_kv_head_;
  std::vector<Tensor> qkv = split(wqkv->forward(x), {Hq * D, Hkv * D, Hkv * D}, -1);  // 3 × (B, T, H·D)
  Tensor q = transpose(view(qkv[0], {B, T, Hq, D}), 1, 2);                            // (B, Hq, T, D)
  Tensor k = transpose(view(qkv[1], {B, T, Hkv, D}), 1, 2);                           // (B, Hkv, T, D)
  Tensor v = transpose(view(qkv[2], {B, T, Hkv, D}), 1, 2);                           // (B, Hkv, T, D)
  if (rope) {
    const Tensor positions = ctx.resolved_positions(T, x.device());
    q = rope->forward(q, positions);
    k = rope->forward(k, positions);
  }
  if (ctx.cache != nullptr) std::tie(k, v) = ctx.cache->update(layer, k, v);  // (B, Hkv, S, D)
  const int64_t S = k.size(2);
  SOMNUS_CHECK(S >= T, "CausalSelfAttention: the cache returned {} keys for {} new tokens", S, T);
  // The new tokens are the last T of the S keys.
  Tensor y = attention(q, k, v, /*causal=*/true, /*scale=*/0.0, /*q_offset=*/S - T, ctx.attn_bias);  // (B, Hq, T, D)
  y = reshape(transpose(y, 1, 2), {B, T, Hq * D});                                                   // (B, T, Hq·D)
  return wo->forward(y);                                                                             // (B, T, C)
}

}  // namespace somnus::nn
