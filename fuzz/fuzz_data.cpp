// libFuzzer target: the dataset loaders of nn/data.h, fed with adversarial shapes and ids.
// Input layout: byte 0 picks the loader; bytes 1-2 give batch and seq_len / max_len; the
// rest is either a token stream (2 bytes per id, may be out of vocabulary) or NUL-separated
// prompt/answer texts, encoded by a byte-level tokenizer. Batches must have the promised
// shapes, masks must count exactly counted_tokens, and targets must be the next input token
// or kIgnoreIndex.
#include "fuzz/fuzz_common.h"
#include "nn/data.h"

using namespace somnus;
using namespace somnus::nn;

namespace {

void check_batch(const Batch& b) {
  SOMNUS_FUZZ_ASSERT(b.input.shape() == b.target.shape() && b.input.shape() == b.mask.shape());
  const int64_t n = b.input.numel();
  const float* m = b.mask.data<float>();
  const int64_t* y = b.target.data<int64_t>();
  int64_t counted = 0;
  for (int64_t i = 0; i < n; ++i) {
    SOMNUS_FUZZ_ASSERT(m[i] == 0.0f || m[i] == 1.0f);
    counted += m[i] != 0.0f;
    if (m[i] == 0.0f) SOMNUS_FUZZ_ASSERT(y[i] == kIgnoreIndex);
  }
  SOMNUS_FUZZ_ASSERT(counted == b.counted_tokens);
}

void fuzz_stream(std::string_view rest, int64_t batch, int64_t seq_len) {
  std::vector<TokenId> tokens;
  for (size_t i = 0; i + 1 < rest.size(); i += 2) {
    tokens.push_back(static_cast<TokenId>(static_cast<uint8_t>(rest[i]) | (static_cast<uint8_t>(rest[i + 1]) << 8)));
  }
  std::optional<TokenStreamBatcher> s;
  try {
    s.emplace(tokens, batch, seq_len, /*seed=*/7);
  } catch (const Error&) {
    return;
  }
  for (int k = 0; k < 3; ++k) {
    const Batch b = s->next();
    SOMNUS_FUZZ_ASSERT(b.input.shape() == (Shape{batch, seq_len}));
    check_batch(b);
    const int64_t* x = b.input.data<int64_t>();
    const int64_t* y = b.target.data<int64_t>();
    for (int64_t r = 0; r < batch; ++r)
      for (int64_t t = 0; t + 1 < seq_len; ++t) SOMNUS_FUZZ_ASSERT(y[r * seq_len + t] == x[r * seq_len + t + 1]);
  }
  for (int64_t i = 0;; ++i) {
    const Batch b = s->sequential(i);
    check_batch(b);
    if (b.counted_tokens == 0 || i > 64) break;
  }
}

void fuzz_prompt_answer(std::string_view rest, int64_t batch, int64_t max_len) {
  static const Tokenizer tok;  // byte level: every byte string encodes
  std::vector<PromptAnswer> examples;
  std::vector<std::string> parts;
  while (!rest.empty() && parts.size() < 64) {
    const size_t cut = rest.find('\0');
    parts.emplace_back(rest.substr(0, cut));
    rest = cut == std::string_view::npos ? std::string_view() : rest.substr(cut + 1);
  }
  for (size_t i = 0; i + 1 < parts.size(); i += 2) examples.push_back({parts[i], parts[i + 1]});
  std::optional<PromptAnswerDataset> ds;
  try {
    ds.emplace(tok, examples, max_len);
  } catch (const Error&) {
    return;
  }
  SOMNUS_FUZZ_ASSERT(ds->size() == static_cast<int64_t>(examples.size()));
  for (int64_t i = 0; i < ds->size(); ++i) {
    SOMNUS_FUZZ_ASSERT(static_cast<int64_t>(ds->ids(i).size()) <= max_len);
    SOMNUS_FUZZ_ASSERT(ds->prompt_ids(i).size() == static_cast<size_t>(ds->prompt_length(i)));
    SOMNUS_FUZZ_ASSERT(ds->ids(i).back() == tok.eos_id());
  }
  Generator gen(3);
  try {
    check_batch(ds->sample(batch, gen));
  } catch (const Error&) {
    SOMNUS_FUZZ_ASSERT(ds->size() == 0 || batch == 0);
  }
  const int64_t bad[] = {ds->size()};
  try {
    (void)ds->batch(bad);
    SOMNUS_FUZZ_ASSERT(false);  // out of range must throw
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const int64_t batch = data[1] % 9;                // 0..8 (0 must be refused)
  const int64_t len = data[2] % 40;                 // 0..39
  const std::string_view rest = fuzz::as_view(data + 3, size - 3);
  if (data[0] % 2 == 0) {
    fuzz_stream(rest, batch, len);
  } else {
    fuzz_prompt_answer(rest, batch, len);
  }
  return 0;
}
