#include "nn/data.h"

#include <algorithm>

#include "tensor/format.h"

namespace somnus::nn {

// ---------------------------------------------------------------- token streams

TokenStreamBatcher::TokenStreamBatcher(std::vector<TokenId> tokens, int64_t batch, int64_t seq_len, uint64_t seed)
    : tokens_(std::move(tokens)), batch_(batch), seq_len_(seq_len), gen_(seed) {
  SOMNUS_CHECK(batch > 0 && seq_len > 0, "TokenStreamBatcher: batch ({}) and seq_len ({}) must be positive", batch,
               seq_len);
  SOMNUS_CHECK(static_cast<int64_t>(tokens_.size()) >= seq_len + 1,
               "TokenStreamBatcher: a stream of {} tokens is too short for windows of {} + 1", tokens_.size(),
               seq_len);
}

static Batch make_batch(int64_t rows, int64_t seq_len) {
  Batch b;
  b.input = Tensor::empty({rows, seq_len}, DType::i64);
  b.target = Tensor::empty({rows, seq_len}, DType::i64);
  b.mask = Tensor::empty({rows, seq_len}, DType::f32);
  return b;
}

static void fill_window(Batch& b, int64_t row, const std::vector<TokenId>& tokens, int64_t start, int64_t seq_len) {
  int64_t* x = b.input.data<int64_t>() + row * seq_len;
  int64_t* y = b.target.data<int64_t>() + row * seq_len;
  float* m = b.mask.data<float>() + row * seq_len;
  for (int64_t t = 0; t < seq_len; ++t) {
    x[t] = tokens[static_cast<size_t>(start + t)];
    y[t] = tokens[static_cast<size_t>(start + t + 1)];
    m[t] = 1.0f;
  }
}

Batch TokenStreamBatcher::next() {
  // Windows start at 0 .. N − T − 1 (the last one ends with the stream's last token as its
  // last target); randint's upper bound is exclusive.
  const Tensor starts = randint(0, num_tokens() - seq_len_, {batch_}, gen_);
  const int64_t* s = starts.data<int64_t>();
  Batch b = make_batch(batch_, seq_len_);
  for (int64_t r = 0; r < batch_; ++r) fill_window(b, r, tokens_, s[r], seq_len_);
  b.counted_tokens = batch_ * seq_len_;
  return b;
}

Batch TokenStreamBatcher::sequential(int64_t index) const {
  SOMNUS_CHECK(index >= 0, "TokenStreamBatcher::sequential: negative index {}", index);
  const int64_t windows = (num_tokens() - 1) / seq_len_;
  const int64_t first = index * batch_;
  const int64_t rows = std::clamp<int64_t>(windows - first, 0, batch_);
  Batch b = make_batch(rows, seq_len_);
  for (int64_t r = 0; r < rows; ++r) fill_window(b, r, tokens_, (first + r) * seq_len_, seq_len_);
  b.counted_tokens = rows * seq_len_;
  return b;
}

// ---------------------------------------------------------------- prompt / answer

PromptAnswerDataset::PromptAnswerDataset(const Tokenizer& tok, const std::vector<PromptAnswer>& examples,
                                         int64_t max_len)
    : pad_(tok.pad_id()), max_len_(max_len) {
  SOMNUS_CHECK(max_len >= 3, "PromptAnswerDataset: max_len {} leaves no room for bos, answer and eos", max_len);
  ids_.reserve(examples.size());
  for (size_t i = 0; i < examples.size(); ++i) {
    std::vector<TokenId> prompt = tok.encode(examples[i].prompt);
    std::vector<TokenId> answer = tok.encode(examples[i].answer);
    answer.push_back(tok.eos_id());
    SOMNUS_CHECK(static_cast<int64_t>(answer.size()) + 1 <= max_len,  // bos + answer + eos; the prompt may be cut to nothing
                 "PromptAnswerDataset: example {} has an answer of {} tokens (with eos), too long for max_len {}", i,
                 answer.size(), max_len);
    // Cut the prompt from the left so that bos + prompt + answer fits.
    const int64_t room = max_len - 1 - static_cast<int64_t>(answer.size());
    if (static_cast<int64_t>(prompt.size()) > room) prompt.erase(prompt.begin(), prompt.end() - room);
    std::vector<TokenId> ids;
    ids.reserve(1 + prompt.size() + answer.size());
    ids.push_back(tok.bos_id());
    ids.insert(ids.end(), prompt.begin(), prompt.end());
    ids.insert(ids.end(), answer.begin(), answer.end());
    prompt_len_.push_back(1 + static_cast<int64_t>(prompt.size()));
    ids_.push_back(std::move(ids));
  }
}

// Row r holds ids[0..L-1) as input and ids[1..L) as target; target position t predicts
// ids[t+1], which is counted when t+1 ≥ prompt_length.
Batch PromptAnswerDataset::batch(std::span<const int64_t> indices) const {
  SOMNUS_CHECK(!indices.empty(), "PromptAnswerDataset::batch: no indices");
  int64_t longest = 0;
  for (int64_t i : indices) {
    SOMNUS_CHECK(i >= 0 && i < size(), "PromptAnswerDataset::batch: index {} out of range [0, {})", i, size());
    longest = std::max<int64_t>(longest, static_cast<int64_t>(ids_[static_cast<size_t>(i)].size()));
  }
  const int64_t rows = static_cast<int64_t>(indices.size()), seq_len = longest - 1;
  Batch b = make_batch(rows, seq_len);
  int64_t* x = b.input.data<int64_t>();
  int64_t* y = b.target.data<int64_t>();
  float* m = b.mask.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const auto& ids = ids_[static_cast<size_t>(indices[static_cast<size_t>(r)])];
    const int64_t plen = prompt_len_[static_cast<size_t>(indices[static_cast<size_t>(r)])];
    const int64_t len = static_cast<int64_t>(ids.size());
    for (int64_t t = 0; t < seq_len; ++t) {
      const bool real = t + 1 < len;
      const bool counted = real && t + 1 >= plen;
      x[r * seq_len + t] = t < len ? ids[static_cast<size_t>(t)] : pad_;
      y[r * seq_len + t] = counted ? ids[static_cast<size_t>(t + 1)] : kIgnoreIndex;
      m[r * seq_len + t] = counted ? 1.0f : 0.0f;
      b.counted_tokens += counted ? 1 : 0;
    }
  }
  return b;
}

Batch PromptAnswerDataset::sample(int64_t batch_size, Generator& gen) const {
  SOMNUS_CHECK(size() > 0, "PromptAnswerDataset::sample: the dataset is empty");
  SOMNUS_CHECK(batch_size > 0, "PromptAnswerDataset::sample: batch_size must be positive, got {}", batch_size);
  const Tensor idx = randint(0, size(), {batch_size}, gen);
  const int64_t* p = idx.data<int64_t>();
  return batch(std::span<const int64_t>(p, static_cast<size_t>(batch_size)));
}

std::vector<TokenId> PromptAnswerDataset::prompt_ids(int64_t i) const {
  SOMNUS_CHECK(i >= 0 && i < size(), "PromptAnswerDataset::prompt_ids: index {} out of range [0, {})", i, size());
  const auto& ids = ids_[static_cast<size_t>(i)];
  return std::vector<TokenId>(ids.begin(), ids.begin() + prompt_len_[static_cast<size_t>(i)]);
}

}  // namespace somnus::nn
