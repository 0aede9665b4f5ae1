// The language model: a decoder-only transformer whose feed-forward side is a CMS chain
// (PARADIGM.md §1). With one dense level it is a plain GPT-2 (LayerNorm, GELU, learned
// positions, tied embeddings, biases) or Llama (RMSNorm, SwiGLU, RoPE, GQA, no biases),
// chosen by one config.
//
//   x = wte(ids) [+ wpe(pos)]                         (B, T, C)
//   for each layer:
//     x = x + attn(attn_norm(x))                      causal self-attention (RoPE, GQA)
//     for each level ℓ: x = x + level_ℓ(norm_ℓ(x))    dense MLP or MoE, + active slots
//   h = ln_f(x)                                       (B, T, C)  <- hidden_states()
// Each residual add "x + branch" is computed by the norm that reads the sum next (the fused
// residual-add + norm kernels), never by a separate add: the same values, one pass less.
//   logits = h @ lm_head^T                            (B, T, V)  (lm_head = wte when tied)
//
// Init (GPT-2 / nanoGPT): every weight N(0, init_std²), biases 0, norm weights 1, and the
// residual projections (attn.wo, each MLP's proj/down, each expert's) N(0, (init_std/√R)²)
// with R = n_layer·(1 + #levels) residual branches, i.e. 1/√(2·n_layer) for one level.
// Slots start masked with A = B = 0. Everything is drawn from one Generator in construction
// order, so a seed fixes the model bit for bit.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "nn/attention.h"
#include "nn/layers.h"
#include "nn/mlp.h"
#include "nn/module.h"

namespace somnus::nn {

enum class PosKind { learned, rope };
const char* pos_kind_name(PosKind k);

// A plain struct with defaults; JSON via to_json/from_json (strict: unknown keys and wrong
// types are errors). validate() throws somnus::Error naming the offending field.
struct TransformerConfig {
  int64_t vocab_size = 256;
  int64_t n_layer = 2;
  int64_t n_embd = 128;
  int64_t n_head = 4;
  int64_t n_kv_head = 0;  // 0: n_head (multi-head); fewer: GQA; 1: MQA
  int64_t block_size = 128;
  NormKind norm = NormKind::layernorm;
  double norm_eps = 1e-5;
  MlpKind mlp = MlpKind::gelu;
  PosKind pos = PosKind::learned;
  double rope_theta = 10000.0;
  bool tie_embeddings = true;
  bool bias = true;  // biases of the Linear layers and LayerNorms
  double init_std = 0.02;
  std::vector<LevelConfig> levels =
      std::vector<LevelConfig>(1);  // the CMS chain of every layer (default: one dense level)
  int64_t attention_period = 1;     // update period of attention (and its norm)
  int64_t embedding_period = 1;     // of wte, wpe, ln_f and an untied lm_head

  int64_t kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int64_t head_dim() const { return n_embd / n_head; }
  bool has_moe() const;
  void validate() const;

  // GPT-2 (Radford et al. 2019) shapes by default: LayerNorm, GELU, learned positions, tied
  // embeddings, biases.
  static TransformerConfig gpt2_style(int64_t vocab_size = 50257, int64_t n_layer = 12, int64_t n_embd = 768,
                                      int64_t n_head = 12, int64_t block_size = 1024);
  // Llama (Touvron et al. 2023): RMSNorm, SwiGLU, RoPE, GQA, no biases, untied head.
  static TransformerConfig llama_style(int64_t vocab_size = 32000, int64_t n_layer = 16, int64_t n_embd = 2048,
                                       int64_t n_head = 32, int64_t n_kv_head = 8, int64_t block_size = 2048);
  // "gpt2-style" or "llama-style" with the default shapes above.
  static TransformerConfig preset(const std::string& name);
};

void to_json(nlohmann::json& j, const LevelConfig& c);
void from_json(const nlohmann::json& j, LevelConfig& c);
void to_json(nlohmann::json& j, const TransformerConfig& c);
// A key "preset" (when present) is applied first and the other keys override it.
// Validates the result.
void from_json(const nlohmann::json& j, TransformerConfig& c);

// Mean token cross-entropy of logits (..., V) against int targets (...): −log_softmax at the
// target, averaged over the counted tokens. Targets equal to −1 are ignored; an optional
// mask (...) (any dtype, non-zero = counted) also excludes tokens. 0 when nothing counts.
// For callers that already hold logits; Transformer::loss goes through the fused chunked
// linear_cross_entropy (autograd/losses.h) instead, with the same semantics.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& mask = Tensor());

struct LMLoss {
  Tensor ce;   // 0-dim mean cross-entropy
  Tensor aux;  // 0-dim sum of the MoE load-balancing losses over all MoE levels; undefined without MoE
  // ce + aux_weight · aux (just ce without MoE).
  Tensor total(double aux_weight) const;
};

// One layer: attention then the CMS chain, each pre-norm with a residual.
class Block : public Module {
 public:
  Block(const TransformerConfig& cfg, Generator& gen, DType dtype = DType::f32, Device device = Device::cpu());
  // x (B, T, C) -> (B, T, C)
  Tensor forward(const Tensor& x, const ForwardContext& ctx, int64_t layer, Tensor* aux_loss = nullptr);
  // The same layer on the residual stream split as x + pending (pending undefined = none):
  // returns {h, out}, the layer's result being h + out. Every residual add is fused into the
  // norm that reads it (attn_norm, each level's norm; the caller's next norm for the last
  // one), so the stream is never added up by a separate kernel.
  std::pair<Tensor, Tensor> forward_residual(const Tensor& x, const Tensor& pending, const ForwardContext& ctx,
                                             int64_t layer, Tensor* aux_loss = nullptr);

  std::shared_ptr<Norm> attn_norm;
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<CmsChain> cms;
};

class Transformer : public Module {
 public:
  // Validates cfg.
  Transformer(const TransformerConfig& cfg, Generator& gen, DType dtype = DType::f32, Device device = Device::cpu());

  // ids int (B, T) -> the final hidden states ln_f(x) (B, T, C), what the lm head (or a fused
  // lm-head loss, or a value head) consumes. With aux_loss, the MoE levels add their
  // load-balancing losses into it. ctx: positions, attention bias and KV cache (generation).
  Tensor hidden_states(const Tensor& ids, const ForwardContext& ctx = {}, Tensor* aux_loss = nullptr);
  // hidden (..., C) -> logits (..., V)
  Tensor logits_from_hidden(const Tensor& hidden) const;
  // ids (B, T) -> logits (B, T, V)
  Tensor forward(const Tensor& ids, const ForwardContext& ctx = {});
  // Next-token loss: targets (B, T) int with −1 = ignore, optional mask (B, T) (any dtype,
  // non-zero = counted); the mean over counted tokens, 0 when nothing counts (as
  // cross_entropy). Computed by the fused chunked linear_cross_entropy from the hidden states,
  // so training never holds the (B, T, V) logits (the logits path only for an unmerged LoRA
  // adapter on an untied head).
  LMLoss loss(const Tensor& ids, const Tensor& targets, const Tensor& mask = Tensor(), const ForwardContext& ctx = {});

  // (V, C): wte.weight when tied, else lm_head.weight.
  Tensor lm_head_weight() const;
  CmsLevel& level(int64_t layer, int64_t index) const;
  // Turns the dreaming hook (one extra uniformly random expert per token) on every MoE level.
  void set_random_extra_expert(bool on, Generator* gen = nullptr);

  // Parameters grouped by update period (PARADIGM §1), ascending: embedding_period for
  // wte/wpe/ln_f/lm_head, attention_period for attn_norm and attn, and each level's own
  // period for everything in the level (its norm, MLP or MoE, and slots). Groups with equal
  // periods are merged. Feeds the optimiser's parameter groups.
  std::vector<std::pair<int64_t, NamedTensors>> parameters_by_period(bool trainable_only = false) const;

  const TransformerConfig& config() const { return cfg_; }

  std::shared_ptr<Embedding> wte;  // (V, C)
  std::shared_ptr<Embedding> wpe;  // (block_size, C), learned positions only
  std::shared_ptr<ModuleList<Block>> blocks;
  std::shared_ptr<Norm> ln_f;
  std::shared_ptr<Linear> lm_head;  // untied only

 private:
  TransformerConfig cfg_;
};

// The PPO value head: hidden (B, T, C) -> values (B, T), a Linear C -> 1 with bias.
class ValueHead : public Module {
 public:
  ValueHead(int64_t n_embd, Generator& gen, double init_std = 0.02, DType dtype = DType::f32,
            Device device = Device::cpu());
  Tensor forward(const Tensor& hidden) const;
  std::shared_ptr<Linear> proj;
};

}  // namespace somnus::nn
