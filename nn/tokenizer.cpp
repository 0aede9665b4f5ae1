// Byte-level BPE: pre-tokeniser, trainer with incremental pair counts, heap-based encoder,
// special tokens and the JSON file format. The algorithm and its costs are described in
// tokenizer.h.
#include "nn/tokenizer.h"

#include <filesystem>

#include "nn/file_io.h"


#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "tensor/format.h"

namespace somnus::nn {

namespace {

using json = nlohmann::json;

constexpr const char* kGpt2Bytes = "gpt2_bytes";
// A tokenizer file is a few MB at most; refuse to slurp anything absurd.
constexpr int64_t kMaxFileBytes = int64_t{1} << 30;

// ---------------------------------------------------------------------------------------------
// Pre-tokeniser
// ---------------------------------------------------------------------------------------------

enum ByteClass : uint8_t { kLetter, kDigit, kSpace, kOther };

constexpr std::array<uint8_t, 256> make_byte_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    uint8_t k = kOther;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) k = kLetter;
    else if (c >= '0' && c <= '9') k = kDigit;
    else if (c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r') k = kSpace;
    t[c] = k;
  }
  return t;
}
constexpr std::array<uint8_t, 256> kByteClass = make_byte_classes();

inline uint8_t byte_class(char c) { return kByteClass[static_cast<unsigned char>(c)]; }

// Length of the contraction ('s 't 'm 'd 're 've 'll) starting at t[i], or 0.
inline size_t contraction_length(std::string_view t, size_t i) {
  if (t[i] != '\'' || i + 1 >= t.size()) return 0;
  char c = t[i + 1];
  if (c == 's' || c == 't' || c == 'm' || c == 'd') return 2;
  if (i + 2 < t.size()) {
    char d = t[i + 2];
    if ((c == 'r' && d == 'e') || (c == 'v' && d == 'e') || (c == 'l' && d == 'l')) return 3;
  }
  return 0;
}

// Calls fn(chunk) for each chunk of t, in order; the chunks concatenate to t.
template <class Fn>
void for_each_chunk(std::string_view t, Fn&& fn) {
  const size_t n = t.size();
  size_t i = 0;
  while (i < n) {
    const size_t start = i;
    if (size_t c = contraction_length(t, i)) {
      fn(t.substr(i, c));
      i += c;
      continue;
    }
    size_t j = i;
    if (t[j] == ' ' && j + 1 < n && byte_class(t[j + 1]) != kSpace) ++j;  // " word"
    const uint8_t cls = byte_class(t[j]);
    size_t k = j + 1;
    while (k < n && byte_class(t[k]) == cls) ++k;
    // A whitespace run followed by a word leaves its last ' ' to prefix that word.
    if (cls == kSpace && k < n && k - start >= 2 && t[k - 1] == ' ') --k;
    fn(t.substr(start, k - start));
    i = k;
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

inline uint64_t pair_key(TokenId a, TokenId b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Reject overlong forms, surrogates and code points past U+10FFFF.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
      return false;
    i += len;
  }
  return true;
}


[[noreturn]] void bad_file(const std::string& source, const std::string& what) {
  fail("tokenizer '{}': {}", source, what);
}

// Heap entry for training: more frequent first; on a tie, the smaller pair (a, b) first.
struct PairCandidate {
  int64_t count;
  uint64_t key;
};
struct PairCandidateLess {  // "a has lower priority than b", for std::push_heap/pop_heap
  bool operator()(const PairCandidate& a, const PairCandidate& b) const {
    if (a.count != b.count) return a.count < b.count;
    return a.key > b.key;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Construction and vocabulary
// ---------------------------------------------------------------------------------------------

Tokenizer::Tokenizer(const SpecialTokens& specials) : Tokenizer(Empty{}) {
  set_specials(specials);
}

Tokenizer::Tokenizer(Empty) {
  token_bytes_.reserve(kNumBytes + 3);
  for (int b = 0; b < kNumBytes; ++b) token_bytes_.emplace_back(1, static_cast<char>(b));
}

void Tokenizer::add_merge(TokenId a, TokenId b) {
  // Merges come before specials in the id space; only train/from_json call this, before specials.
  SOMNUS_CHECK(vocab_size() == first_special_id(), "tokenizer: merges cannot be added after special tokens");
  const auto rank = static_cast<int32_t>(merges_.size());
  merges_.emplace_back(a, b);
  token_bytes_.push_back(token_bytes_[a] + token_bytes_[b]);
  merge_rank_.emplace(pair_key(a, b), rank);
}

void Tokenizer::set_specials(const SpecialTokens& specials) {
  bos_id_ = add_special_token(specials.bos);
  eos_id_ = add_special_token(specials.eos);
  pad_id_ = add_special_token(specials.pad);
  for (const auto& s : specials.extra) add_special_token(s);
}

TokenId Tokenizer::add_special_token(const std::string& text) {
  SOMNUS_CHECK(!text.empty(), "tokenizer: a special token cannot be the empty string");
  SOMNUS_CHECK(is_valid_utf8(text), "tokenizer: a special token must be valid UTF-8 (got {} bytes that are not)",
              text.size());
  for (TokenId id = first_special_id(); id < vocab_size(); ++id)
    SOMNUS_CHECK(token_bytes_[id] != text, "tokenizer: duplicate special token '{}' (already id {})", text, id);
  SOMNUS_CHECK(vocab_size() < kMaxVocabSize, "tokenizer: vocab too large: cannot exceed {} entries", kMaxVocabSize);
  token_bytes_.push_back(text);
  return static_cast<TokenId>(vocab_size() - 1);
}

const std::string& Tokenizer::token_bytes(TokenId id) const {
  SOMNUS_CHECK(id >= 0 && id < vocab_size(), "tokenizer: unknown token id {} (vocab size {})", id, vocab_size());
  return token_bytes_[id];
}

TokenId Tokenizer::special_id(std::string_view text) const {
  for (TokenId id = first_special_id(); id < vocab_size(); ++id)
    if (token_bytes_[id] == text) return id;
  fail("tokenizer: no special token '{}' (specials: {})", text, fmt::join(special_tokens(), ", "));
}

std::vector<std::string> Tokenizer::special_tokens() const {
  return {token_bytes_.begin() + first_special_id(), token_bytes_.end()};
}

std::vector<std::string_view> Tokenizer::pretokenize(std::string_view text) {
  std::vector<std::string_view> chunks;
  for_each_chunk(text, [&](std::string_view c) { chunks.push_back(c); });
  return chunks;
}

int32_t Tokenizer::merge_rank(TokenId a, TokenId b) const {
  auto it = merge_rank_.find(pair_key(a, b));
  return it == merge_rank_.end() ? -1 : it->second;
}

// ---------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------

Tokenizer Tokenizer::train(std::string_view text, int64_t vocab_size, const BpeTrainOptions& options) {
  SOMNUS_CHECK(options.pretokenizer == kGpt2Bytes, "tokenizer train: unknown pretokenizer '{}' (known: {})",
               options.pretokenizer, kGpt2Bytes);
  SOMNUS_CHECK(options.min_pair_count >= 1, "tokenizer train: min_pair_count must be >= 1, got {}",
               options.min_pair_count);
  const int64_t num_specials = 3 + static_cast<int64_t>(options.specials.extra.size());
  SOMNUS_CHECK(vocab_size >= kNumBytes + num_specials && vocab_size <= kMaxVocabSize,
               "tokenizer train: vocab_size {} must be in [{}, {}] (256 bytes + {} special tokens at least)",
               vocab_size, kNumBytes + num_specials, kMaxVocabSize, num_specials);
  // Fail on bad specials before spending time on training.
  { Tokenizer check(options.specials); }

  Tokenizer tok{Empty{}};
  tok.pretokenizer_ = options.pretokenizer;
  const int64_t target_merges = vocab_size - kNumBytes - num_specials;

  // 1. Unique chunks and their frequencies. Single-byte chunks hold no pair: skip them.
  std::unordered_map<std::string_view, int64_t> chunk_counts;
  chunk_counts.reserve(text.size() / 16 + 16);
  for_each_chunk(text, [&](std::string_view c) {
    if (c.size() >= 2) ++chunk_counts[c];
  });
  std::vector<std::vector<TokenId>> words;
  std::vector<int64_t> word_counts;
  words.reserve(chunk_counts.size());
  word_counts.reserve(chunk_counts.size());
  for (const auto& [chunk, count] : chunk_counts) {
    std::vector<TokenId> w(chunk.size());
    for (size_t i = 0; i < chunk.size(); ++i) w[i] = static_cast<unsigned char>(chunk[i]);
    words.push_back(std::move(w));
    word_counts.push_back(count);
  }
  chunk_counts = {};

  // 2. Pair counts, and for each pair the words that contain it. A pair's word list is filled
  // only in the merge that creates its newer id (every new pair contains the new token), so a
  // list never holds a word twice. Words that later lose the pair stay listed; the merge step
  // skips them.
  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  for (int32_t w = 0; w < static_cast<int32_t>(words.size()); ++w) {
    const auto& s = words[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t k = pair_key(s[i], s[i + 1]);
      pair_counts[k] += word_counts[w];
      auto& list = pair_words[k];
      if (list.empty() || list.back() != w) list.push_back(w);
    }
  }
  std::vector<PairCandidate> heap;
  heap.reserve(pair_counts.size());
  for (const auto& [k, c] : pair_counts) heap.push_back({c, k});
  std::make_heap(heap.begin(), heap.end(), PairCandidateLess{});

  // 3. Merge. A pair's count only ever decreases after it is first pushed, so a popped entry
  // whose count is stale is re-pushed with its current count (lazy deletion).
  std::vector<uint64_t> new_pairs;
  while (tok.num_merges() < target_merges && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), PairCandidateLess{});
    const PairCandidate top = heap.back();
    heap.pop_back();
    const auto count_it = pair_counts.find(top.key);
    const int64_t current = count_it == pair_counts.end() ? 0 : count_it->second;
    if (current != top.count) {
      if (current > 0) {
        heap.push_back({current, top.key});
        std::push_heap(heap.begin(), heap.end(), PairCandidateLess{});
      }
      continue;
    }
    if (current < options.min_pair_count) break;

    const auto a = static_cast<TokenId>(top.key >> 32);
    const auto b = static_cast<TokenId>(top.key & 0xffffffffu);
    const auto x = static_cast<TokenId>(kNumBytes + tok.num_merges());
    tok.add_merge(a, b);

    auto list_it = pair_words.find(top.key);
    std::vector<int32_t> affected = std::move(list_it->second);
    pair_words.erase(list_it);
    new_pairs.clear();
    for (const int32_t w : affected) {
      auto& s = words[w];
      const int64_t cnt = word_counts[w];
      bool present = false;
      for (size_t i = 0; i + 1 < s.size() && !present; ++i) present = s[i] == a && s[i + 1] == b;
      if (!present) continue;
      // Remove the word's old pairs, merge left to right, add its new pairs back. Unchanged
      // pairs cancel out; chunks are short, so this costs less than tracking neighbours.
      for (size_t i = 0; i + 1 < s.size(); ++i) pair_counts[pair_key(s[i], s[i + 1])] -= cnt;
      size_t out = 0;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          s[out++] = x;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      s.resize(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t k = pair_key(s[i], s[i + 1]);
        pair_counts[k] += cnt;
        if (s[i] == x || s[i + 1] == x) {
          auto& list = pair_words[k];
          if (list.empty()) new_pairs.push_back(k);
          if (list.empty() || list.back() != w) list.push_back(w);
        }
      }
    }
    pair_counts.erase(top.key);  // every occurrence was merged: its count is now 0
    for (const uint64_t k : new_pairs) {
      heap.push_back({pair_counts[k], k});
      std::push_heap(heap.begin(), heap.end(), PairCandidateLess{});
    }
  }

  tok.set_specials(options.specials);
  return tok;
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding
// ---------------------------------------------------------------------------------------------

void Tokenizer::encode_chunk(std::string_view chunk, std::vector<TokenId>& out, std::vector<TokenId>& sym,
                             std::vector<int32_t>& next, std::vector<int32_t>& prev,
                             std::vector<std::pair<int32_t, int32_t>>& heap) const {
  SOMNUS_CHECK(chunk.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
               "tokenizer encode: a single chunk of {} bytes is too long (max 2^31 - 1)", chunk.size());
  const auto n = static_cast<int32_t>(chunk.size());
  if (n == 1 || merges_.empty()) {
    for (char c : chunk) out.push_back(static_cast<unsigned char>(c));
    return;
  }
  // Symbols form a doubly linked list over positions; the min-heap holds (rank, left position)
  // of candidate pairs. Popping by (rank, position) applies the lowest-rank merge first and its
  // occurrences left to right, which is what training did. Entries made stale by an earlier
  // merge are detected by re-checking the pair's rank.
  sym.resize(n);
  next.resize(n);
  prev.resize(n);
  heap.clear();
  for (int32_t i = 0; i < n; ++i) {
    sym[i] = static_cast<unsigned char>(chunk[i]);
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  for (int32_t i = 0; i + 1 < n; ++i)
    if (int32_t r = merge_rank(sym[i], sym[i + 1]); r >= 0) heap.emplace_back(r, i);
  const auto later = std::greater<std::pair<int32_t, int32_t>>{};
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const auto [rank, p] = heap.back();
    heap.pop_back();
    if (sym[p] < 0) continue;
    const int32_t q = next[p];
    if (q < 0 || merge_rank(sym[p], sym[q]) != rank) continue;
    sym[p] = static_cast<TokenId>(kNumBytes + rank);
    sym[q] = -1;
    next[p] = next[q];
    if (next[p] >= 0) prev[next[p]] = p;
    if (prev[p] >= 0) {
      if (int32_t r = merge_rank(sym[prev[p]], sym[p]); r >= 0) {
        heap.emplace_back(r, prev[p]);
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
    if (next[p] >= 0) {
      if (int32_t r = merge_rank(sym[p], sym[next[p]]); r >= 0) {
        heap.emplace_back(r, p);
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
  }
  for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
}

std::vector<TokenId> Tokenizer::encode(std::string_view bytes) const {
  std::vector<TokenId> out;
  out.reserve(bytes.size() / 3 + 8);
  if (merges_.empty()) {
    for (char c : bytes) out.push_back(static_cast<unsigned char>(c));
    return out;
  }
  std::vector<TokenId> sym;
  std::vector<int32_t> next, prev;
  std::vector<std::pair<int32_t, int32_t>> heap;
  // Natural text repeats its words: on large inputs, remember where each chunk's tokens were
  // first written and copy them.
  constexpr size_t kCacheMinInput = 4096, kCacheMaxChunk = 64;
  const bool use_cache = bytes.size() >= kCacheMinInput;
  std::unordered_map<std::string_view, std::pair<size_t, size_t>> cache;  // chunk -> (offset, count)
  for_each_chunk(bytes, [&](std::string_view chunk) {
    if (!use_cache || chunk.size() < 2 || chunk.size() > kCacheMaxChunk) {
      encode_chunk(chunk, out, sym, next, prev, heap);
      return;
    }
    auto [it, inserted] = cache.try_emplace(chunk, out.size(), 0);
    if (inserted) {
      encode_chunk(chunk, out, sym, next, prev, heap);
      it->second.second = out.size() - it->second.first;
    } else {
      const auto [offset, count] = it->second;
      const size_t old = out.size();
      out.resize(old + count);
      std::copy_n(out.begin() + static_cast<ptrdiff_t>(offset), count, out.begin() + static_cast<ptrdiff_t>(old));
    }
  });
  return out;
}

std::vector<TokenId> Tokenizer::encode_with_special(std::string_view text) const {
  const TokenId first = first_special_id();
  const auto num_specials = static_cast<size_t>(vocab_size() - first);
  // Next occurrence of each special at or after the cursor; each find only moves forward, so
  // the scan is O(len(text) * num_specials).
  std::vector<size_t> next_at(num_specials, 0);
  std::vector<bool> searched(num_specials, false);
  std::vector<TokenId> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string_view::npos, best_len = 0;
    TokenId best_id = -1;
    for (size_t s = 0; s < num_specials; ++s) {
      const std::string& special = token_bytes_[first + s];
      if (!searched[s] || (next_at[s] != std::string_view::npos && next_at[s] < pos)) {
        next_at[s] = text.find(special, pos);
        searched[s] = true;
      }
      const size_t f = next_at[s];
      if (f == std::string_view::npos) continue;
      if (f < best || (f == best && special.size() > best_len)) {
        best = f;
        best_len = special.size();
        best_id = first + static_cast<TokenId>(s);
      }
    }
    const size_t end = best == std::string_view::npos ? text.size() : best;
    if (end > pos) {
      std::vector<TokenId> part = encode(text.substr(pos, end - pos));
      out.insert(out.end(), part.begin(), part.end());
    }
    if (best == std::string_view::npos) break;
    out.push_back(best_id);
    pos = best + best_len;
  }
  return out;
}

std::string Tokenizer::decode(std::span<const TokenId> ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  const int64_t vocab = vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    const TokenId id = ids[i];
    SOMNUS_CHECK(id >= 0 && id < vocab, "tokenizer decode: unknown token id {} at position {} (vocab size {})", id,
                 i, vocab);
    out += token_bytes_[id];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// JSON file format
// ---------------------------------------------------------------------------------------------

std::string Tokenizer::to_json() const {
  // Hand-laid-out so that the file reads one merge and one special token per line.
  std::string s = "{\n";
  s += fmt::format("  \"format\": {},\n", json(kFormat).dump());
  s += fmt::format("  \"version\": {},\n", kVersion);
  s += fmt::format("  \"pretokenizer\": {},\n", json(pretokenizer_).dump());
  s += fmt::format("  \"vocab_size\": {},\n", vocab_size());
  s += fmt::format("  \"bos_token\": {},\n", json(token_bytes_[bos_id_]).dump());
  s += fmt::format("  \"eos_token\": {},\n", json(token_bytes_[eos_id_]).dump());
  s += fmt::format("  \"pad_token\": {},\n", json(token_bytes_[pad_id_]).dump());
  s += "  \"special_tokens\": [";
  for (TokenId id = first_special_id(); id < vocab_size(); ++id)
    s += fmt::format("{}\n    {{\"id\": {}, \"text\": {}}}", id == first_special_id() ? "" : ",", id,
                     json(token_bytes_[id]).dump());
  s += "\n  ],\n";
  s += "  \"merges\": [";
  for (size_t r = 0; r < merges_.size(); ++r)
    s += fmt::format("{}\n    [{}, {}]", r == 0 ? "" : ",", merges_[r].first, merges_[r].second);
  s += merges_.empty() ? "]\n" : "\n  ]\n";
  s += "}\n";
  return s;
}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text.begin(), json_text.end());
  } catch (const json::exception& e) {
    fail("tokenizer '{}': not valid JSON (truncated or corrupt file?): {}", source, e.what());
  }
  auto bad = [&](const std::string& what) { bad_file(source, what); };
  if (!j.is_object()) bad("the top level is not a JSON object");
  auto field = [&](const char* name) -> const json& {
    auto it = j.find(name);
    if (it == j.end()) bad(fmt::format("missing field '{}'", name));
    return *it;
  };
  auto string_field = [&](const char* name) -> std::string {
    const json& v = field(name);
    if (!v.is_string()) bad(fmt::format("field '{}' must be a string, got {}", name, v.type_name()));
    return v.get<std::string>();
  };
  auto uint_field = [&](const json& v, const std::string& what) -> uint64_t {
    if (!v.is_number_unsigned()) bad(fmt::format("{} must be a non-negative integer, got {}", what, v.dump()));
    return v.get<uint64_t>();
  };

  const std::string format = string_field("format");
  if (format != kFormat) bad(fmt::format("format is '{}', expected '{}'", format, kFormat));
  const json& version = field("version");
  if (!version.is_number_integer() || version.get<int64_t>() != kVersion)
    bad(fmt::format("unsupported version {} (this build reads version {})", version.dump(), kVersion));
  const std::string pretokenizer = string_field("pretokenizer");
  if (pretokenizer != kGpt2Bytes) bad(fmt::format("unknown pretokenizer '{}' (known: {})", pretokenizer, kGpt2Bytes));

  const json& merges = field("merges");
  const json& specials = field("special_tokens");
  if (!merges.is_array()) bad(fmt::format("field 'merges' must be an array, got {}", merges.type_name()));
  if (!specials.is_array()) bad(fmt::format("field 'special_tokens' must be an array, got {}", specials.type_name()));
  const uint64_t declared_vocab = uint_field(field("vocab_size"), "field 'vocab_size'");
  if (declared_vocab > static_cast<uint64_t>(kMaxVocabSize))
    bad(fmt::format("vocab too large: vocab_size {} (max {})", declared_vocab, kMaxVocabSize));
  const uint64_t vocab = kNumBytes + merges.size() + specials.size();
  if (vocab > static_cast<uint64_t>(kMaxVocabSize))
    bad(fmt::format("vocab too large: {} entries (max {})", vocab, kMaxVocabSize));
  if (declared_vocab != vocab)
    bad(fmt::format("vocab_size {} does not match 256 bytes + {} merges + {} special tokens = {}", declared_vocab,
                    merges.size(), specials.size(), vocab));

  // Merges: each a pair of ids that exist before it, no pair twice.
  std::vector<std::pair<TokenId, TokenId>> pairs;
  pairs.reserve(merges.size());
  std::unordered_map<uint64_t, size_t> seen_pairs;
  seen_pairs.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& m = merges[r];
    if (!m.is_array() || m.size() != 2) bad(fmt::format("merge {} must be a pair [a, b], got {}", r, m.dump()));
    const uint64_t limit = kNumBytes + r;
    TokenId ids[2];
    for (int k = 0; k < 2; ++k) {
      const uint64_t id = uint_field(m[k], fmt::format("merge {} id", r));
      if (id >= limit)
        bad(fmt::format("merge {} references id {}, out of range (merge {} may only use ids below {})", r, id, r,
                        limit));
      ids[k] = static_cast<TokenId>(id);
    }
    auto [it, inserted] = seen_pairs.emplace(pair_key(ids[0], ids[1]), r);
    if (!inserted) bad(fmt::format("merge {} [{}, {}] duplicates merge {}", r, ids[0], ids[1], it->second));
    pairs.emplace_back(ids[0], ids[1]);
  }

  // Special tokens: consecutive ids after the merges, non-empty, distinct.
  const uint64_t first_special = kNumBytes + merges.size();
  std::vector<std::string> special_texts;
  for (size_t s = 0; s < specials.size(); ++s) {
    const json& e = specials[s];
    if (!e.is_object() || !e.contains("id") || !e.contains("text") || !e["text"].is_string())
      bad(fmt::format("special token {} must be an object {{\"id\": n, \"text\": \"...\"}}, got {}", s, e.dump()));
    const uint64_t id = uint_field(e["id"], fmt::format("special token {} id", s));
    if (id != first_special + s)
      bad(fmt::format("special token {} has id {}, expected {} (special ids follow the merges consecutively)", s, id,
                      first_special + s));
    std::string text = e["text"].get<std::string>();
    if (text.empty()) bad(fmt::format("special token {} is the empty string", s));
    if (std::find(special_texts.begin(), special_texts.end(), text) != special_texts.end())
      bad(fmt::format("duplicate special token '{}'", text));
    special_texts.push_back(std::move(text));
  }
  auto role = [&](const char* name) -> size_t {
    const std::string text = string_field(name);
    auto it = std::find(special_texts.begin(), special_texts.end(), text);
    if (it == special_texts.end()) bad(fmt::format("{} '{}' is not among the special tokens", name, text));
    return static_cast<size_t>(it - special_texts.begin());
  };
  const size_t bos = role("bos_token"), eos = role("eos_token"), pad = role("pad_token");
  if (bos == eos || bos == pad || eos == pad) bad("bos_token, eos_token and pad_token must be distinct");

  // Everything checked: build.
  Tokenizer tok{Empty{}};
  tok.pretokenizer_ = pretokenizer;
  tok.token_bytes_.reserve(vocab);
  tok.merge_rank_.reserve(pairs.size());
  for (const auto& [a, b] : pairs) tok.add_merge(a, b);
  for (const auto& text : special_texts) tok.add_special_token(text);
  tok.bos_id_ = static_cast<TokenId>(first_special + bos);
  tok.eos_id_ = static_cast<TokenId>(first_special + eos);
  tok.pad_id_ = static_cast<TokenId>(first_special + pad);
  return tok;
}

void Tokenizer::save(const std::string& path) const {
  try {
    atomic_write(path, to_json());
  } catch (const Error& e) {
    fail("tokenizer save '{}': {}", path, e.what());
  }
}

Tokenizer Tokenizer::load(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  SOMNUS_CHECK(ec || size <= static_cast<uintmax_t>(kMaxFileBytes),
               "tokenizer load '{}': file is {} bytes, more than the {} a tokenizer can need", path,
               static_cast<int64_t>(size), kMaxFileBytes);
  std::string content;
  try {
    content = read_file(path);
  } catch (const Error& e) {
    fail("tokenizer load '{}': {}", path, e.what());
  }
  return from_json(content, path);
}

}  // namespace somnus::nn
