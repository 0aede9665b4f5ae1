// Training data: token streams cut into random (B, T) windows, and prompt/answer examples
// whose loss mask keeps only the answer tokens.
//
// Batches are CPU i64 tensors (move them with .to(device)). Targets use -1 (kIgnoreIndex)
// wherever the loss must not count, and a float mask (1 = counted) is returned beside them.
// Every random choice comes from a somnus::Generator, so a batcher's position is its
// generator state: saving (seed, offset) and restoring it resumes the same batch sequence.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nn/tokenizer.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace somnus::nn {

constexpr int64_t kIgnoreIndex = -1;

struct Batch {
  Tensor input;   // (B, T) i64 token ids
  Tensor target;  // (B, T) i64 next-token ids, kIgnoreIndex where not counted
  Tensor mask;    // (B, T) f32, 1 where target counts, else 0
  int64_t counted_tokens = 0;
};

// A flat token stream; random windows of T+1 tokens give (input, target) pairs.
class TokenStreamBatcher {
 public:
  TokenStreamBatcher(std::vector<TokenId> tokens, int64_t batch, int64_t seq_len, uint64_t seed);
  Batch next();
  // A deterministic pass over the stream in consecutive windows (for evaluation); `index`
  // selects the window group; returns fewer rows at the end, none past it.
  Batch sequential(int64_t index) const;
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  Generator& generator() { return gen_; }

 private:
  std::vector<TokenId> tokens_;
  int64_t batch_, seq_len_;
  Generator gen_;
};

struct PromptAnswer {
  std::string prompt;
  std::string answer;
};

// Examples encoded as [bos] prompt answer [eos]; only answer tokens and eos are counted in
// the loss. Batches are right-padded with pad to the longest example in the batch (≤ max_len;
// longer examples are cut from the left of the prompt so the answer survives).
class PromptAnswerDataset {
 public:
  PromptAnswerDataset(const Tokenizer& tok, const std::vector<PromptAnswer>& examples, int64_t max_len);
  int64_t size() const { return static_cast<int64_t>(ids_.size()); }
  // Rows `indices` as one batch.
  Batch batch(std::span<const int64_t> indices) const;
  // `batch_size` random rows.
  Batch sample(int64_t batch_size, Generator& gen) const;
  // The prompt ids of example i ([bos] prompt), for generation-based evaluation.
  std::vector<TokenId> prompt_ids(int64_t i) const;
  const std::vector<TokenId>& ids(int64_t i) const { return ids_[static_cast<size_t>(i)]; }
  // Number of leading tokens of example i that are not counted (bos + prompt).
  int64_t prompt_length(int64_t i) const { return prompt_len_[static_cast<size_t>(i)]; }

 private:
  std::vector<std::vector<TokenId>> ids_;
  std::vector<int64_t> prompt_len_;
  TokenId pad_;
  int64_t max_len_;
};

}  // namespace somnus::nn
