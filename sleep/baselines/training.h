// Small supervised-training helpers shared by dreaming and the baselines: token sequences
// with a loss start, their right-padded batches, the SFT loss, and a few AdamW steps over a
// chosen parameter subset.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "nn/data.h"
#include "nn/tokenizer.h"
#include "nn/transformer.h"
#include "tensor/random.h"

namespace somnus::sleep {

using nn::TokenId;

// tokens[0..n); the loss counts the predictions of tokens[loss_start..n) (loss_start >= 1:
// token 0 is never predicted). A prompt/answer pair is prompt ++ answer with
// loss_start = |prompt|; a plain text has loss_start = 1.
struct TrainSequence {
  std::vector<TokenId> tokens;
  int64_t loss_start = 1;
};

// Rows right-padded with token 0 to the longest row: input = tokens[0..n-1), target =
// tokens[1..n) with kIgnoreIndex outside the counted span and on the padding. Throws
// somnus::Error on an empty list, a row shorter than 2 tokens, a row longer than
// block_size + 1, a loss_start outside [1, n), or an id outside [0, vocab).
nn::Batch make_batch(const std::vector<TrainSequence>& rows, int64_t block_size, int64_t vocab_size);

// Mean next-token cross-entropy of the model on the batch (its counted tokens), with history.
Tensor sft_loss(nn::Transformer& model, const nn::Batch& batch);

struct SftSteps {
  int64_t steps = 1;
  double lr = 1e-3;
  double weight_decay = 0.0;
  int64_t batch_size = 0;  // 0: all rows every step; else a seeded random subset per step
  double grad_clip = 0.0;  // 0: off
};

// `steps` AdamW steps on `params` only (everything else frozen meanwhile, flags restored).
// extra_loss, when given, is added to each step's loss (EWC's penalty). Returns the losses
// (SFT part) per step. No-op (empty result) when rows is empty.
std::vector<double> train_sft(nn::Transformer& model, const std::vector<Tensor>& params,
                              const std::vector<TrainSequence>& rows, const SftSteps& opt, Generator& gen,
                              const std::function<Tensor()>& extra_loss = {});

// Splits a long token stream into plain-text rows of at most block_size + 1 tokens (each row
// overlaps the previous by one token so every token but the first is predicted once).
std::vector<TrainSequence> text_rows(const std::vector<TokenId>& tokens, int64_t block_size);

// Mean log-prob per counted token of the batch under the model, no history.
double mean_logprob(nn::Transformer& model, const std::vector<TrainSequence>& rows);

}  // namespace somnus::sleep
