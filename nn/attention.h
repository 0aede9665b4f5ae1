// Attention: the scaled-dot-product op and the causal self-attention module.
//
// `attention()` is THE attention op of the model: every attention in nn/ goes through it.
// Without an attention bias it runs the fused flash-attention op (scaled_dot_product_attention
// in autograd/functions.h: online softmax over key tiles, O(T) memory; on CUDA for head dims
// 64 and 128). With a bias (left-padded generation) it is composed from differentiable
// functions (matmul, mask, softmax, matmul), which materialises the (T, S) score matrix per
// head. tests/nn compares attention() with an f64 loop reference, and
// tests/kernels/test_attention.cpp compares the fused path with the composed one.
//
// Generation hooks. The module takes a ForwardContext: a position offset (or explicit
// per-row positions, for left-padded batches), an additive attention bias (padding masks),
// and a KVCache. A KV cache (nn/generation, later) implements `KVCache::update`: it stores
// this step's keys/values and returns the whole cached sequence; the queries then attend
// causally with the offset S − T (the new tokens are the last T of the S keys). Nothing
// else in the module changes between training, prefill and decode.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>

#include "nn/layers.h"
#include "nn/module.h"

namespace somnus::nn {

// q (B, Hq, T, D), k and v (B, Hkv, S, D) with Hkv dividing Hq (GQA; MQA when Hkv = 1;
// query head h reads kv head h / (Hq / Hkv), as torch's repeat_interleave) -> (B, Hq, T, D).
//   causal:   query i sits at absolute position q_offset + i and sees keys j <= q_offset + i
//             (keys are at positions 0 .. S−1). q_offset = S − T is the KV-cache case;
//             q_offset = 0 with S = T is ordinary causal self-attention. Every query must
//             see at least one key (q_offset >= 0).
//   scale:    multiplies q·k; <= 0 means 1/sqrt(D).
//   attn_bias: optional, added to the scores, broadcastable to (B, Hq, T, S): 0 where
//             allowed, a large negative where not (padding). Prefer a finite value such as
//             −1e9 to −inf: a row that masks every key (a pad query that sees only pads)
//             then stays finite instead of NaN, and NaN would leak into real rows through
//             0·NaN in probs @ v.
// GQA never repeats k or v: the g = Hq/Hkv query heads of a group are stacked along the
// query axis, (B·Hkv, g·T, D), and share one (S, D) key matrix per batched matmul. (Strided
// k/v views, like the module's transposed heads, are made contiguous once, at their own size.)
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale = 0.0,
                 int64_t q_offset = 0, const Tensor& attn_bias = Tensor());

// The per-layer key/value store of incremental decoding, implemented by nn/generation.
class KVCache {
 public:
  virtual ~KVCache() = default;
  // k, v (B, Hkv, T, D) for the T new tokens of layer `layer` (RoPE already applied to k).
  // Returns every key and value of that layer so far, the new ones last: (B, Hkv, S, D).
  virtual std::pair<Tensor, Tensor> update(int64_t layer, const Tensor& k, const Tensor& v) = 0;
};

// Per-forward inputs besides the token ids; the defaults are plain training.
struct ForwardContext {
  // Absolute position of the first token of the input (for RoPE or learned positions).
  // With a cache it is the number of tokens already cached.
  int64_t pos_offset = 0;
  // Optional int positions (T,) or (B, T); overrides pos_offset (left-padded batches).
  Tensor positions;
  // Optional additive bias broadcastable to (B, Hq, T, S), see attention().
  Tensor attn_bias;
  // Optional; when set, attention attends over the cached keys plus the new ones.
  KVCache* cache = nullptr;

  // positions, or arange(pos_offset, pos_offset + T) on `device`.
  Tensor resolved_positions(int64_t T, Device device) const;
};

struct AttentionConfig {
  int64_t n_embd = 0;
  int64_t n_head = 0;
  int64_t n_kv_head = 0;  // 0 means n_head
  bool bias = false;      // biases in the qkv and output projections
  bool rope = false;
  double rope_theta = 10000.0;
  int64_t max_positions = 0;  // RoPE table size (the block size)
  double init_std = 0.02;
  double out_init_std = 0.02;  // the residual projection wo (GPT-2 scales it by 1/sqrt(#residual branches))
};

// Multi-head causal self-attention with GQA and optional RoPE, pre-norm block style
// (the norm lives in the block).
class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(const AttentionConfig& cfg, Generator& gen, DType dtype = DType::f32,
                      Device device = Device::cpu());
  // x (B, T, C) -> (B, T, C). `layer` identifies this layer to ctx.cache.
  Tensor forward(const Tensor& x, const ForwardContext& ctx = {}, int64_t layer = 0) const;

  int64_t n_head() const { return n_head_; }
  int64_t n_kv_head() const { return n_kv_head_; }
  int64_t head_dim() const { return head_dim_; }

  std::shared_ptr<Linear> wqkv;  // C -> (Hq + 2·Hkv)·D, fused: one GEMM for q, k and v
  std::shared_ptr<Linear> wo;    // Hq·D -> C
  std::shared_ptr<RoPE> rope;    // or null

 private:
  int64_t n_embd_, n_head_, n_kv_head_, head_dim_;
};

}  // namespace somnus::nn
