// Token-stream batches and prompt/answer loss masks.
#include <gtest/gtest.h>

#include <set>

#include "nn/data.h"

using namespace somnus;
using namespace somnus::nn;

static std::vector<TokenId> iota_tokens(int n) {
  std::vector<TokenId> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

TEST(TokenStreamBatcher, WindowsAreShiftedByOne) {
  TokenStreamBatcher b(iota_tokens(1000), 4, 16, 7);
  Batch batch = b.next();
  EXPECT_EQ(batch.input.shape(), (Shape{4, 16}));
  EXPECT_EQ(batch.counted_tokens, 64);
  for (int64_t r = 0; r < 4; ++r) {
    const double start = batch.input.at({r, 0});
    for (int64_t t = 0; t < 16; ++t) {
      EXPECT_EQ(batch.input.at({r, t}), start + t);
      EXPECT_EQ(batch.target.at({r, t}), start + t + 1);
    }
    EXPECT_LE(start + 16, 999);
  }
}

TEST(TokenStreamBatcher, SeededAndResumable) {
  TokenStreamBatcher a(iota_tokens(500), 3, 8, 11), b(iota_tokens(500), 3, 8, 11);
  a.next();
  const Generator saved = a.generator();
  const auto second = a.next().input.to_vector();
  b.generator() = saved;
  EXPECT_EQ(b.next().input.to_vector(), second);
  EXPECT_NE(a.next().input.to_vector(), second);
}

TEST(TokenStreamBatcher, SequentialCoversTheStreamOnce) {
  TokenStreamBatcher b(iota_tokens(101), 3, 10, 0);  // 10 windows of 10 (+1 target)
  int64_t windows = 0;
  for (int64_t i = 0;; ++i) {
    Batch batch = b.sequential(i);
    if (batch.input.numel() == 0) break;
    for (int64_t r = 0; r < batch.input.size(0); ++r, ++windows) EXPECT_EQ(batch.input.at({r, 0}), windows * 10);
  }
  EXPECT_EQ(windows, 10);
}

// Every window start 0 .. N − T − 1 is drawn, the last one (whose last target is the stream's
// last token) included. The upper bound was one short: starts 0 .. N − T − 2, so the stream's
// last token was never a target, and a stream of exactly T + 1 tokens was refused.
TEST(TokenStreamBatcher, EveryWindowStartIsDrawn) {
  TokenStreamBatcher b(iota_tokens(20), 4, 16, 3);  // starts 0 .. 3
  std::set<int64_t> starts;
  for (int i = 0; i < 100; ++i) {
    const Batch batch = b.next();
    for (int64_t r = 0; r < 4; ++r) starts.insert(static_cast<int64_t>(batch.input.at({r, 0})));
  }
  EXPECT_EQ(starts, (std::set<int64_t>{0, 1, 2, 3}));
  TokenStreamBatcher one(iota_tokens(17), 2, 16, 0);  // exactly one window
  const Batch batch = one.next();
  EXPECT_EQ(batch.input.at({1, 0}), 0);
  EXPECT_EQ(batch.target.at({1, 15}), 16);
}

TEST(TokenStreamBatcher, BadArgumentsThrow) {
  EXPECT_THROW(TokenStreamBatcher(iota_tokens(16), 2, 16, 0), Error);
  EXPECT_THROW(TokenStreamBatcher(iota_tokens(10), 2, 16, 0), Error);
  EXPECT_THROW(TokenStreamBatcher(iota_tokens(100), 0, 16, 0), Error);
}

TEST(PromptAnswerDataset, OnlyAnswerTokensCount) {
  Tokenizer tok;  // bytes only
  PromptAnswerDataset ds(tok, {{"ab", "XY"}, {"hello ", "Z"}}, 64);
  ASSERT_EQ(ds.size(), 2);
  EXPECT_EQ(ds.prompt_length(0), 3);  // bos a b
  const std::vector<int64_t> idx = {0, 1};
  Batch b = ds.batch(idx);
  // Row 1 is the longest: bos + "hello " + "Z" + eos = 9 ids, so T = 8.
  EXPECT_EQ(b.input.shape(), (Shape{2, 8}));
  // Row 0: ids = bos a b X Y eos; inputs bos a b X Y eos pad pad.
  EXPECT_EQ(b.input.at({0, 0}), tok.bos_id());
  EXPECT_EQ(b.input.at({0, 5}), tok.eos_id());
  EXPECT_EQ(b.input.at({0, 6}), tok.pad_id());
  const std::vector<double> want_target = {-1, -1, 'X', 'Y', double(tok.eos_id()), -1, -1, -1};
  const std::vector<double> want_mask = {0, 0, 1, 1, 1, 0, 0, 0};
  for (int64_t t = 0; t < 8; ++t) {
    EXPECT_EQ(b.target.at({0, t}), want_target[t]) << t;
    EXPECT_EQ(b.mask.at({0, t}), want_mask[t]) << t;
  }
  EXPECT_EQ(b.counted_tokens, 3 + 2);  // "XY"+eos, "Z"+eos
  EXPECT_EQ(ds.prompt_ids(1).size(), 7u);
}

TEST(PromptAnswerDataset, LongPromptsAreCutFromTheLeft) {
  Tokenizer tok;
  PromptAnswerDataset ds(tok, {{"0123456789", "ab"}}, 8);
  // bos + 4 prompt bytes + "ab" + eos = 8
  EXPECT_EQ(ds.ids(0).size(), 8u);
  EXPECT_EQ(ds.ids(0)[1], '6');
  EXPECT_THROW(PromptAnswerDataset(tok, {{"p", "a very long answer"}}, 8), Error);
  // An answer that fills max_len with bos and eos fits (the prompt is cut to nothing); it was
  // refused for want of room for one prompt token.
  const PromptAnswerDataset full(tok, {{"p", "abcdef"}}, 8);
  EXPECT_EQ(full.ids(0).size(), 8u);
  EXPECT_EQ(full.ids(0)[1], 'a');
  EXPECT_EQ(PromptAnswerDataset(tok, {{"", "a"}}, 3).ids(0).size(), 3u);
  EXPECT_THROW(PromptAnswerDataset(tok, {{"", "ab"}}, 3), Error);
  EXPECT_THROW(ds.batch(std::vector<int64_t>{3}), Error);
}

TEST(PromptAnswerDataset, SampleIsSeeded) {
  Tokenizer tok;
  std::vector<PromptAnswer> ex;
  for (int i = 0; i < 20; ++i) ex.push_back({"q" + std::to_string(i), "a" + std::to_string(i)});
  PromptAnswerDataset ds(tok, ex, 32);
  Generator g1(3), g2(3);
  EXPECT_EQ(ds.sample(5, g1).input.to_vector(), ds.sample(5, g2).input.to_vector());
}
