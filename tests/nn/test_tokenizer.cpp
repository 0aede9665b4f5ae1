// Byte-level BPE tokenizer: exact round trips on any bytes, pre-tokenisation, training against
// a naive full-recount reference, a hand-worked example, determinism, special tokens, and
// strict loading of corrupt files.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <unistd.h>

#include "nn/tokenizer.h"
#include "tensor/error.h"
#include "testing.h"

using somnus::Error;
using somnus::nn::BpeTrainOptions;
using somnus::nn::SpecialTokens;
using somnus::nn::TokenId;
using somnus::nn::Tokenizer;
using somnus::testing::expect_error;
namespace fs = std::filesystem;

namespace {

// tinyshakespeare, found via $SOMNUS_DATA/tinyshakespeare/input.txt or relative to this source
// file (<repo>/../shared/data/...), since the test binary runs from the build directory.
// Empty when the corpus is not present.
std::string load_corpus() {
  std::vector<fs::path> candidates;
  if (const char* env = std::getenv("SOMNUS_DATA")) candidates.push_back(fs::path(env) / "tinyshakespeare/input.txt");
  const fs::path repo = fs::path(__FILE__).parent_path().parent_path().parent_path();
  candidates.push_back(repo / "../shared/data/tinyshakespeare/input.txt");
  for (const auto& p : candidates) {
    std::ifstream f(p, std::ios::binary);
    if (!f) continue;
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  return {};
}

const std::string& corpus() {
  static const std::string text = load_corpus();
  return text;
}

// A small built-in text, so that the tests that need *some* trained merges never skip.
std::string builtin_text() {
  const std::string para =
      "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
      "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
      "All:\nResolved. resolved.\n\nSecond Citizen: it's 1604, isn't it? They'll say 42 + 17 = 59!\n"
      "aaaaaaaaaaaaaaaa bbbbbbbb \t\t tabs\r\n  double  spaces   and\x01 control\x7f bytes\n"
      "caf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 \xf0\x9f\x98\x80 unicode\n";
  std::string text;
  for (int i = 0; i < 20; ++i) text += para;
  return text;
}

const Tokenizer& small_tokenizer() {
  // Asks for more than the text offers (it runs out of pairs near vocab 420).
  static const Tokenizer tok = Tokenizer::train(builtin_text(), 600);
  return tok;
}

std::string random_bytes(std::mt19937& rng, size_t n, int alphabet = 256) {
  std::uniform_int_distribution<int> d(0, alphabet - 1);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(d(rng));
  return s;
}

// Random text made of a few words, spaces and newlines: exercises merges much more than
// uniform bytes do.
std::string random_wordy_text(std::mt19937& rng, size_t words) {
  static const char* vocab[] = {"the", " the", "Citizen", "speak", ",", ".", "\n", "\n\n", " ", "aaaa",
                                "'s",  "42",   "\xc3\xa9", "  ",   "\t", "\0", "\xff", "resolved"};
  std::uniform_int_distribution<size_t> d(0, std::size(vocab) - 1);
  std::string s;
  for (size_t i = 0; i < words; ++i) {
    const char* w = vocab[d(rng)];
    s += (w[0] == '\0') ? std::string(1, '\0') : std::string(w);
  }
  return s;
}

// ----- naive reference: full pair recount per merge, same tie-breaking -----

std::vector<std::pair<TokenId, TokenId>> naive_train(const std::string& text, int64_t num_merges) {
  std::map<std::string, int64_t> chunk_counts;
  for (auto c : Tokenizer::pretokenize(text)) ++chunk_counts[std::string(c)];
  std::vector<std::vector<TokenId>> words;
  std::vector<int64_t> counts;
  for (const auto& [c, n] : chunk_counts) {
    std::vector<TokenId> w;
    for (unsigned char b : c) w.push_back(b);
    words.push_back(w);
    counts.push_back(n);
  }
  std::vector<std::pair<TokenId, TokenId>> merges;
  while (static_cast<int64_t>(merges.size()) < num_merges) {
    std::map<std::pair<TokenId, TokenId>, int64_t> pairs;  // ordered: ties go to the smaller pair
    for (size_t w = 0; w < words.size(); ++w)
      for (size_t i = 0; i + 1 < words[w].size(); ++i) pairs[{words[w][i], words[w][i + 1]}] += counts[w];
    if (pairs.empty()) break;
    auto best = pairs.begin();
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (it->second > best->second) best = it;
    const auto [a, b] = best->first;
    const TokenId x = static_cast<TokenId>(256 + merges.size());
    merges.push_back(best->first);
    for (auto& w : words) {
      std::vector<TokenId> out;
      for (size_t i = 0; i < w.size();)
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) out.push_back(x), i += 2;
        else out.push_back(w[i++]);
      w = out;
    }
  }
  return merges;
}

// Apply every merge in rank order to each chunk: the definition that encode must match.
std::vector<TokenId> naive_encode(const Tokenizer& tok, const std::string& text) {
  std::vector<TokenId> out;
  for (auto c : Tokenizer::pretokenize(text)) {
    std::vector<TokenId> w;
    for (unsigned char b : c) w.push_back(b);
    for (int64_t r = 0; r < tok.num_merges(); ++r) {
      const auto [a, b] = tok.merges()[r];
      std::vector<TokenId> o;
      for (size_t i = 0; i < w.size();)
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) o.push_back(static_cast<TokenId>(256 + r)), i += 2;
        else o.push_back(w[i++]);
      w = o;
    }
    out.insert(out.end(), w.begin(), w.end());
  }
  return out;
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "somnus_tok_" + std::to_string(::getpid()) + "_" + name;
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << content;
  ASSERT_TRUE(f.good()) << path;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

TEST(TokenizerRoundTrip, RandomByteStrings) {
  const Tokenizer& tok = small_tokenizer();
  ASSERT_GT(tok.num_merges(), 100);
  std::mt19937 rng(1234);
  std::uniform_int_distribution<size_t> len(0, 3000);
  for (int trial = 0; trial < 200; ++trial) {
    // Uniform bytes, then a narrow alphabet (long runs of letters, many merges).
    const std::string s = random_bytes(rng, len(rng), trial % 2 ? 256 : 4);
    const auto ids = tok.encode(s);
    ASSERT_EQ(tok.decode(ids), s) << "trial " << trial;
    for (TokenId id : ids) ASSERT_TRUE(id >= 0 && id < tok.first_special_id()) << "trial " << trial;
  }
}

TEST(TokenizerRoundTrip, RandomWordyTextMatchesNaiveEncoder) {
  const Tokenizer& tok = small_tokenizer();
  std::mt19937 rng(99);
  for (int trial = 0; trial < 20; ++trial) {
    // Long enough (> 4 KB) that encode's per-call chunk cache is exercised.
    const std::string s = random_wordy_text(rng, trial < 10 ? 50 : 3000);
    const auto ids = tok.encode(s);
    ASSERT_EQ(ids, naive_encode(tok, s)) << "trial " << trial;
    ASSERT_EQ(tok.decode(ids), s);
    ASSERT_LT(ids.size(), s.size()) << "trained merges should compress text made of the training words";
  }
}

TEST(TokenizerRoundTrip, EdgeCases) {
  const Tokenizer& tok = small_tokenizer();
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  const std::vector<std::string> cases = {
      "",
      std::string(1, '\0'),
      std::string("a\0b\0\0c", 6),
      "\xff\xfe\x80\x80",          // invalid UTF-8
      "\xc0\xaf",                  // overlong '/'
      "\xed\xa0\x80",              // UTF-16 surrogate encoded in UTF-8
      "\xe2\x82",                  // truncated sequence
      "'s'''t 'll ' '",            // contractions and lone apostrophes
      "   ",                       // whitespace only
      " \n",
      all_bytes,
      std::string(100000, 'a'),    // one 100 KB chunk: heap-based encode stays fast
      "<|bos|>hello<|eos|>",       // special text is plain bytes in encode()
  };
  for (const auto& s : cases) {
    const auto ids = tok.encode(s);
    EXPECT_EQ(tok.decode(ids), s) << "case of " << s.size() << " bytes";
    if (s.size() <= 1000) {
      EXPECT_EQ(ids, naive_encode(tok, s)) << "case of " << s.size() << " bytes";
    }
  }
  EXPECT_TRUE(tok.encode("").empty());
  EXPECT_EQ(tok.decode({}), "");
  EXPECT_EQ(tok.encode(std::string(1, '\0')), std::vector<TokenId>{0});
  // The 100 KB run of 'a' compresses: training saw runs of 16 'a's.
  EXPECT_LT(tok.encode(std::string(100000, 'a')).size(), 100000u / 4);
}

TEST(TokenizerRoundTrip, UntrainedTokenizerIsBytes) {
  Tokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 256 + 3);
  EXPECT_EQ(tok.num_merges(), 0);
  const std::string s("x\0\xff y", 5);
  EXPECT_EQ(tok.encode(s), (std::vector<TokenId>{'x', 0, 0xff, ' ', 'y'}));
  EXPECT_EQ(tok.decode(tok.encode(s)), s);
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenisation
// ---------------------------------------------------------------------------------------------

TEST(TokenizerPretokenize, GptStyleChunks) {
  const std::string text = "Hello world, it's 2024!\n\n  foo\tbar  ";
  const auto chunks = Tokenizer::pretokenize(text);
  const std::vector<std::string> expected = {"Hello", " world", ",", " it", "'s", " 2024", "!", "\n\n ",
                                             " foo",  "\t",     "bar", "  "};
  ASSERT_EQ(chunks.size(), expected.size());
  for (size_t i = 0; i < chunks.size(); ++i) EXPECT_EQ(std::string(chunks[i]), expected[i]) << "chunk " << i;
}

TEST(TokenizerPretokenize, ChunksConcatenateToInput) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 100; ++trial) {
    const std::string s = trial % 2 ? random_bytes(rng, 500) : random_wordy_text(rng, 100);
    std::string joined;
    for (auto c : Tokenizer::pretokenize(s)) {
      ASSERT_FALSE(c.empty());
      joined += c;
    }
    ASSERT_EQ(joined, s);
  }
}

// ---------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------

// "aaabdaaabac" (one chunk): pairs aa:4 ab:2 -> merge (a,a)=256; then "X a b d X a b a c" has
// Xa:2 and ab:2, a tie that goes to the smaller pair (a,b)=257; then (256,257)=258 (count 2).
TEST(TokenizerTrain, KnownSmallExample) {
  const Tokenizer tok = Tokenizer::train("aaabdaaabac", 256 + 3 + 3);
  ASSERT_EQ(tok.num_merges(), 3);
  EXPECT_EQ(tok.vocab_size(), 256 + 3 + 3);
  using P = std::pair<TokenId, TokenId>;
  EXPECT_EQ(tok.merges(), (std::vector<P>{{'a', 'a'}, {'a', 'b'}, {256, 257}}));
  EXPECT_EQ(tok.token_bytes(258), "aaab");
  EXPECT_EQ(tok.encode("aaabdaaabac"), (std::vector<TokenId>{258, 'd', 258, 'a', 'c'}));
  EXPECT_EQ(tok.encode("aaaa"), (std::vector<TokenId>{256, 256}));
  EXPECT_EQ(tok.encode("aaa"), (std::vector<TokenId>{256, 'a'}));
  EXPECT_EQ(tok.encode("aab"), (std::vector<TokenId>{256, 'b'}));  // (a,a) outranks (a,b)
  EXPECT_EQ(tok.bos_id(), 259);
}

TEST(TokenizerTrain, MergesNeverCrossChunksAndStopWhenPairsRunOut) {
  // Every chunk is a single byte ("x" "," "x" ...): no pair exists inside a chunk.
  std::string text;
  for (int i = 0; i < 1000; ++i) text += "x,";
  const Tokenizer tok = Tokenizer::train(text, 1000);
  EXPECT_EQ(tok.num_merges(), 0);
  EXPECT_EQ(tok.vocab_size(), 256 + 3);
  // " ab" is one chunk: only 2 merges are possible even though 10 are asked for.
  const Tokenizer tok2 = Tokenizer::train(" ab ab ab", 256 + 3 + 10);
  EXPECT_EQ(tok2.num_merges(), 2);
  EXPECT_EQ(tok2.encode(" ab"), std::vector<TokenId>{257});
}

TEST(TokenizerTrain, MinPairCountStopsEarly) {
  BpeTrainOptions opt;
  opt.min_pair_count = 3;
  const Tokenizer tok = Tokenizer::train("abab xy", 300, opt);  // ab:2, ba:1, xy:1 (and " x")
  EXPECT_EQ(tok.num_merges(), 0);
  opt.min_pair_count = 2;
  EXPECT_EQ(Tokenizer::train("abab xy", 300, opt).num_merges(), 1);
}

TEST(TokenizerTrain, IncrementalCountsMatchNaiveRecount) {
  const std::string text = corpus().empty() ? builtin_text() : corpus().substr(0, 30000);
  const int64_t merges = 400;
  const Tokenizer tok = Tokenizer::train(text, 256 + 3 + merges);
  const auto reference = naive_train(text, merges);
  ASSERT_EQ(tok.num_merges(), static_cast<int64_t>(reference.size()));
  for (size_t r = 0; r < reference.size(); ++r)
    ASSERT_EQ(tok.merges()[r], reference[r]) << "merge " << r << " differs from the full recount";
  // Encoding the training text applies the same merges as training did.
  EXPECT_EQ(tok.encode(text), naive_encode(tok, text));
}

TEST(TokenizerTrain, Deterministic) {
  const std::string text = corpus().empty() ? builtin_text() : corpus().substr(0, 100000);
  const Tokenizer a = Tokenizer::train(text, 1500);
  const Tokenizer b = Tokenizer::train(text, 1500);
  ASSERT_GT(a.num_merges(), 0);
  EXPECT_EQ(a.merges(), b.merges());
  EXPECT_EQ(a.encode(text), b.encode(text));
}

TEST(TokenizerTrain, TinyShakespeareExactVocabAndCompression) {
  if (corpus().empty())
    GTEST_SKIP() << "tinyshakespeare not found (set SOMNUS_DATA=<dir with tinyshakespeare/input.txt>, "
                    "or place it at <repo>/../shared/data/tinyshakespeare/input.txt)";
  const std::string train_text = corpus().substr(0, 200000);
  const std::string held_out = corpus().substr(200000, 100000);
  const int64_t vocab = 2048;
  const Tokenizer tok = Tokenizer::train(train_text, vocab);
  EXPECT_EQ(tok.vocab_size(), vocab);
  EXPECT_EQ(tok.num_merges(), vocab - 256 - 3);
  EXPECT_EQ(tok.pad_id(), vocab - 1);
  const auto ids = tok.encode(held_out);
  EXPECT_EQ(tok.decode(ids), held_out);
  const double bytes_per_token = static_cast<double>(held_out.size()) / static_cast<double>(ids.size());
  // Byte-level BPE at 2k merges compresses English prose ~3x; bytes alone would be 1.0.
  EXPECT_GT(bytes_per_token, 2.5) << "bytes per token " << bytes_per_token;
}

TEST(TokenizerTrain, BadArgumentsThrow) {
  expect_error([] { Tokenizer::train("abc", 258); }, {"vocab_size 258"});
  expect_error([] { Tokenizer::train("abc", int64_t{1} << 40); }, {"vocab_size"});
  BpeTrainOptions opt;
  opt.pretokenizer = "regex";
  expect_error([&] { Tokenizer::train("abc", 300, opt); }, {"unknown pretokenizer 'regex'"});
  opt = {};
  opt.specials.extra = {"<|bos|>"};
  expect_error([&] { Tokenizer::train("abc", 300, opt); }, {"duplicate special token '<|bos|>'"});
}

// ---------------------------------------------------------------------------------------------
// Special tokens
// ---------------------------------------------------------------------------------------------

TEST(TokenizerSpecial, IdsFollowMergesAndEncodeWithSpecialSplits) {
  BpeTrainOptions opt;
  opt.specials.bos = "<s>";
  opt.specials.extra = {"<|user|>", "<|assistant|>"};
  const Tokenizer tok = Tokenizer::train(builtin_text(), 400, opt);  // the text has pairs for ~420
  const TokenId first = tok.first_special_id();
  EXPECT_EQ(first, 256 + tok.num_merges());
  EXPECT_EQ(tok.vocab_size(), 400);
  EXPECT_EQ(tok.bos_id(), first);
  EXPECT_EQ(tok.eos_id(), first + 1);
  EXPECT_EQ(tok.pad_id(), first + 2);
  EXPECT_EQ(tok.special_id("<|user|>"), first + 3);
  EXPECT_EQ(tok.special_id("<|assistant|>"), first + 4);
  EXPECT_EQ(tok.special_id("<s>"), tok.bos_id());
  EXPECT_EQ(tok.special_tokens(), (std::vector<std::string>{"<s>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>"}));
  expect_error([&] { tok.special_id("<|system|>"); }, {"no special token '<|system|>'"});

  // encode() never produces special ids, even for their exact text.
  const std::string text = "<s>Speak<|user|>hi<|eos|><|eos|>x<|assistant|>";
  const auto plain = tok.encode(text);
  for (TokenId id : plain) EXPECT_FALSE(tok.is_special(id));
  EXPECT_EQ(tok.decode(plain), text);

  const auto ids = tok.encode_with_special(text);
  std::vector<TokenId> expected = {tok.bos_id()};
  for (TokenId id : tok.encode("Speak")) expected.push_back(id);
  expected.push_back(tok.special_id("<|user|>"));
  for (TokenId id : tok.encode("hi")) expected.push_back(id);
  expected.push_back(tok.eos_id());
  expected.push_back(tok.eos_id());
  expected.push_back('x');
  expected.push_back(tok.special_id("<|assistant|>"));
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(tok.decode(ids), text);  // a special id decodes to its string
  EXPECT_EQ(tok.decode(std::vector<TokenId>{tok.pad_id()}), "<|pad|>");
  EXPECT_EQ(tok.encode_with_special("no specials here"), tok.encode("no specials here"));
  EXPECT_TRUE(tok.encode_with_special("").empty());
}

TEST(TokenizerSpecial, LongestMatchWinsAndAddSpecialValidates) {
  Tokenizer tok;
  const TokenId ab = tok.add_special_token("<a>");
  const TokenId abx = tok.add_special_token("<a>x");
  EXPECT_EQ(ab, 259);
  EXPECT_EQ(abx, 260);
  EXPECT_EQ(tok.encode_with_special("<a>x<a>y"), (std::vector<TokenId>{abx, ab, 'y'}));
  expect_error([&] { tok.add_special_token("<a>"); }, {"duplicate special token '<a>'"});
  expect_error([&] { tok.add_special_token(""); }, {"empty"});
  expect_error([&] { tok.add_special_token("\xff"); }, {"UTF-8"});
  EXPECT_EQ(tok.vocab_size(), 261);
}

TEST(TokenizerDecode, UnknownIdsThrowNamingTheId) {
  const Tokenizer& tok = small_tokenizer();
  const auto v = static_cast<TokenId>(tok.vocab_size());
  expect_error([&] { tok.decode(std::vector<TokenId>{'a', v}); }, {"unknown token id " + std::to_string(v), "position 1"});
  expect_error([&] { tok.decode(std::vector<TokenId>{-1}); }, {"unknown token id -1"});
  expect_error([&] { tok.token_bytes(v + 5); }, {"unknown token id"});
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

TEST(TokenizerFile, SaveLoadGivesIdenticalTokenizer) {
  BpeTrainOptions opt;
  opt.specials.extra = {"<|user|>", "<|\xc3\xa9t\xc3\xa9|>"};
  const Tokenizer tok = Tokenizer::train(builtin_text(), 700, opt);
  const std::string path = temp_path("roundtrip.json");
  tok.save(path);
  EXPECT_FALSE(fs::exists(path + ".tmp")) << "the temporary file must be renamed away";
  const Tokenizer back = Tokenizer::load(path);
  EXPECT_EQ(back.merges(), tok.merges());
  EXPECT_EQ(back.vocab_size(), tok.vocab_size());
  EXPECT_EQ(back.special_tokens(), tok.special_tokens());
  EXPECT_EQ(back.bos_id(), tok.bos_id());
  EXPECT_EQ(back.eos_id(), tok.eos_id());
  EXPECT_EQ(back.pad_id(), tok.pad_id());
  EXPECT_EQ(back.pretokenizer(), "gpt2_bytes");
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const std::string s = trial % 2 ? random_bytes(rng, 2000) : random_wordy_text(rng, 500);
    EXPECT_EQ(back.encode(s), tok.encode(s));
  }
  const std::string with_special = "x<|user|>y<|eos|>";
  EXPECT_EQ(back.encode_with_special(with_special), tok.encode_with_special(with_special));
  // Saving over an existing file replaces it.
  Tokenizer().save(path);
  EXPECT_EQ(Tokenizer::load(path).num_merges(), 0);
  fs::remove(path);
}

class TokenizerCorruptFile : public ::testing::Test {
 protected:
  void SetUp() override {
    good_ = Tokenizer::train("aaabdaaabac aaab", 256 + 3 + 3).to_json();
    path_ = temp_path(std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + ".json");
  }
  void TearDown() override { fs::remove(path_); }
  // Replace the first occurrence of `from` in the good file, save, and expect a load error.
  void expect_load_error(const std::string& from, const std::string& to, const std::vector<std::string>& parts) {
    std::string s = good_;
    const size_t at = s.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    s.replace(at, from.size(), to);
    write_file(path_, s);
    std::vector<std::string> all = parts;
    all.push_back(path_);  // every message names the file
    expect_error([&] { Tokenizer::load(path_); }, all);
  }
  std::string good_, path_;
};

TEST_F(TokenizerCorruptFile, GoodFileLoads) {
  write_file(path_, good_);
  EXPECT_EQ(Tokenizer::load(path_).num_merges(), 3);
}

TEST_F(TokenizerCorruptFile, NonExistentFile) {
  expect_error([&] { Tokenizer::load(path_ + ".missing"); }, {path_ + ".missing", "cannot open"});
}

TEST_F(TokenizerCorruptFile, DirectoryIsNotAFile) {
  expect_error([&] { Tokenizer::load(::testing::TempDir()); }, {"not a readable regular file"});
}

TEST_F(TokenizerCorruptFile, TruncatedJson) {
  for (size_t cut : {size_t{0}, size_t{1}, good_.size() / 3, good_.size() / 2, good_.size() - 3}) {
    write_file(path_, good_.substr(0, cut));
    expect_error([&] { Tokenizer::load(path_); }, {path_, "not valid JSON"});
  }
}

TEST_F(TokenizerCorruptFile, NotJson) {
  write_file(path_, std::string("\x89PNG\r\n\x1a\n\0\0\0", 11));
  expect_error([&] { Tokenizer::load(path_); }, {path_, "not valid JSON"});
  write_file(path_, "[1, 2, 3]");
  expect_error([&] { Tokenizer::load(path_); }, {path_, "not a JSON object"});
}

TEST_F(TokenizerCorruptFile, WrongFormatOrVersion) {
  expect_load_error("\"somnus.bpe_tokenizer\"", "\"hf.tokenizers\"", {"format is 'hf.tokenizers'"});
  expect_load_error("\"version\": 1", "\"version\": 2", {"unsupported version 2"});
  expect_load_error("\"version\": 1", "\"version\": \"1\"", {"unsupported version"});
  expect_load_error("\"gpt2_bytes\"", "\"cl100k\"", {"unknown pretokenizer 'cl100k'"});
}

TEST_F(TokenizerCorruptFile, MissingFields) {
  expect_load_error("\"merges\"", "\"mergez\"", {"missing field 'merges'"});
  expect_load_error("\"bos_token\"", "\"bos\"", {"missing field 'bos_token'"});
  expect_load_error("\"version\"", "\"versio\"", {"missing field 'version'"});
}

TEST_F(TokenizerCorruptFile, MergeIdsOutOfRange) {
  // Merge 2 is [256, 257]: ids 256 and 257 exist by then (merges 0 and 1), 258 would not.
  expect_load_error("[256, 257]", "[256, 258]", {"merge 2 references id 258, out of range"});
  expect_load_error("[256, 257]", "[256, 9999999]", {"merge 2 references id 9999999"});
  expect_load_error("[97, 97]", "[97, 256]", {"merge 0 references id 256"});
  expect_load_error("[97, 97]", "[-1, 97]", {"merge 0 id must be a non-negative integer"});
  expect_load_error("[97, 97]", "[97]", {"merge 0 must be a pair"});
  expect_load_error("[97, 98]", "[97, 97]", {"merge 1 [97, 97] duplicates merge 0"});
}

TEST_F(TokenizerCorruptFile, BadSpecialTokens) {
  expect_load_error("\"text\": \"<|eos|>\"", "\"text\": \"<|bos|>\"", {"duplicate special token '<|bos|>'"});
  expect_load_error("{\"id\": 260,", "{\"id\": 261,", {"special token 1 has id 261, expected 260"});
  expect_load_error("\"pad_token\": \"<|pad|>\"", "\"pad_token\": \"<pad>\"", {"pad_token '<pad>' is not among"});
  expect_load_error("\"text\": \"<|pad|>\"", "\"text\": \"\"", {"special token 2 is the empty string"});
}

TEST_F(TokenizerCorruptFile, VocabSizeMismatchOrTooLarge) {
  expect_load_error("\"vocab_size\": 262", "\"vocab_size\": 300", {"vocab_size 300 does not match", "= 262"});
  expect_load_error("\"vocab_size\": 262", "\"vocab_size\": 1e9", {"'vocab_size' must be a non-negative integer"});
  expect_load_error("\"vocab_size\": 262", "\"vocab_size\": 99999999999", {"vocab too large"});
}
