// Generation: a preallocated KV cache, the samplers, and batched autoregressive decoding.
//
//   prompts (ragged) --left-pad--> ids (B, P)          P = the longest prompt
//   prefill: hidden_states(ids, positions (B, P), pad bias (B, 1, 1, P), cache)  -> logits of the last column
//   decode:  one token per sequence per step, (B, 1), attending to the cache
//
// Padding. Prompts are left-padded so that every sequence's next token sits in the last
// column. Each row's positions restart at 0 after its pads, and the pads are hidden as keys
// by an additive bias of −1e9 (ForwardContext::attn_bias), so a padded row computes what
// the prompt alone computes (up to float summation order).
//
// Length. A sequence's prompt plus its generated tokens never exceed the model's
// block_size: the whole result can be rescored by one training forward (what the RL code
// does). Each sequence stops at the first of: a stop token (kept in its output, with its
// log-prob), max_new_tokens, block_size. Finished sequences stay in the batch (their rows
// are computed and ignored) until every sequence is done.
//
// Randomness. The sampler draws one uniform per sequence per step, by inverse CDF. In
// generate() the uniform of prompt i at step n is Philox4x32-10 with key cfg.seed and the
// 128-bit counter (lo = n, hi = 1 + cfg.stream_offset + i), two 32-bit lanes making a
// 53-bit double in (0, 1]. It depends on neither the batch size nor the other prompts: prompt i
// of a batch samples what it samples alone with stream_offset = i (same seed), and a
// rollout sharded over several calls gets distinct streams through stream_offset. The
// (lo, hi ≥ 1) counters never meet those of an ordinary Generator draw (hi = 0).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "nn/attention.h"
#include "nn/tokenizer.h"
#include "nn/transformer.h"
#include "tensor/random.h"

namespace somnus::nn {

// ---------------------------------------------------------------- KV cache

// Keys and values of every layer in buffers (B, Hkv, capacity, D) allocated once, at
// construction. update() copies the new slice in place at the current length and returns
// views of the filled prefix (B, Hkv, S, D) into the buffers: no concatenation and no
// allocation per step. The buffers are freed when the cache is destroyed (and no returned
// view is alive).
class StaticKVCache : public KVCache {
 public:
  // capacity <= 0 means cfg.block_size. dtype and device must be the model's.
  StaticKVCache(const TransformerConfig& cfg, int64_t batch, int64_t capacity = 0, DType dtype = DType::f32,
                Device device = Device::cpu());

  // k, v (B, Hkv, T, D); throws somnus::Error on a shape, dtype or device mismatch, or
  // when length + T would exceed the capacity.
  std::pair<Tensor, Tensor> update(int64_t layer, const Tensor& k, const Tensor& v) override;

  // Tokens cached in `layer` (all layers agree after a complete forward).
  int64_t length(int64_t layer = 0) const;
  int64_t capacity() const { return capacity_; }
  int64_t batch() const { return batch_; }
  int64_t n_layer() const { return static_cast<int64_t>(k_.size()); }
  // Forget the cached tokens; the buffers are kept for the next sequence.
  void reset();
  // Bytes held by the buffers: 2 · L · B · Hkv · capacity · D · sizeof(dtype).
  int64_t nbytes() const;
  // The whole buffers (B, Hkv, capacity, D), for inspection.
  const Tensor& key_buffer(int64_t layer) const { return k_.at(static_cast<size_t>(layer)); }
  const Tensor& value_buffer(int64_t layer) const { return v_.at(static_cast<size_t>(layer)); }

 private:
  int64_t batch_, capacity_, n_kv_head_, head_dim_;
  std::vector<Tensor> k_, v_;    // per layer (B, Hkv, capacity, D)
  std::vector<int64_t> length_;  // per layer
};

// ---------------------------------------------------------------- config and result

struct GenerateConfig {
  int64_t max_new_tokens = 64;
  double temperature = 1.0;  // 0: greedy (argmax); > 0: sample from softmax(logits / temperature)
  int64_t top_k = 0;         // 0: off; k: keep the k most likely tokens
  double top_p = 1.0;        // in (0, 1]; 1: off; p: keep the smallest most-likely set with mass >= p
  std::vector<TokenId> stop_tokens;
  uint64_t seed = 0;
  uint64_t stream_offset = 0;  // prompt i draws from Philox stream stream_offset + i (see the top)
  // false: recompute the whole sequence at every step instead of using a KV cache. Same
  // results (up to summation order); it is the reference of the tests and the benchmark's
  // baseline.
  bool use_cache = true;

  // Throws somnus::Error on a negative max_new_tokens, temperature or top_k, or a top_p
  // outside (0, 1].
  void validate() const;
  bool greedy() const { return temperature == 0.0 || top_k == 1; }
};

enum class FinishReason { stop_token, max_new_tokens, block_size };
const char* finish_reason_name(FinishReason r);

struct GeneratedSequence {
  std::vector<TokenId> tokens;  // the generated tokens (the stop token included), not the prompt
  // log π(token | prefix) under the model's own distribution: log_softmax(logits) at
  // temperature 1, before temperature, top-k and top-p. This is what a training forward of
  // prompt + tokens recomputes, so it is the policy log-prob that PPO/GRPO ratios need.
  std::vector<double> logprobs;
  // log q(token | prefix) under the distribution actually sampled from (after temperature,
  // top-k, top-p and renormalisation); 0 for greedy. For importance corrections when the
  // sampler is not the policy.
  std::vector<double> sampling_logprobs;
  FinishReason finish = FinishReason::max_new_tokens;
};

struct GenerateResult {
  std::vector<GeneratedSequence> sequences;  // one per prompt, in order
  int64_t forward_calls = 0;                 // model forwards run (prefill + decode steps)
};

// ---------------------------------------------------------------- sampling

struct SampleResult {
  std::vector<TokenId> tokens;           // (B)
  std::vector<double> logprobs;          // (B) under log_softmax(logits)
  std::vector<double> sampling_logprobs;  // (B) under the sampling distribution; 0 for greedy
};

// logits (B, V), floating, any device (copied to the host; the fused GPU sampler of issue 5
// replaces this). Composition, per row: greedy when cfg.greedy() or when 1/temperature
// overflows (argmax, lowest index on ties); else z = logits / temperature, keep the top_k largest z (ties by lower index), then
// of those the smallest most-likely prefix whose probability mass (renormalised over the
// kept set) is >= top_p, renormalise, and pick by inverse CDF with the row's uniform in
// (0, 1]. `uniforms` holds one per row (only read when sampling).
SampleResult sample_next(const Tensor& logits, const GenerateConfig& cfg, const std::vector<double>& uniforms);
// The same with row b's uniform taken from one Philox draw of B elements of `gen` (row b
// = element b), which advances gen.
SampleResult sample_next(const Tensor& logits, const GenerateConfig& cfg, Generator& gen);

// The uniform in (0, 1] of `stream` at `step` for `seed` (see the top of this file).
double stream_uniform(uint64_t seed, uint64_t stream, uint64_t step);

// ---------------------------------------------------------------- generation

// Batched generation under NoGradGuard. prompts: one or more non-empty token-id vectors of
// any lengths, each <= block_size and within the vocabulary. Throws somnus::Error on bad
// input (no prompts, an empty prompt, a prompt longer than block_size, an id outside
// [0, vocab), a bad cfg). The model's own state (e.g. the dreaming hook) is used as is.
GenerateResult generate(Transformer& model, const std::vector<std::vector<TokenId>>& prompts,
                        const GenerateConfig& cfg);

}  // namespace somnus::nn
