// Byte-level BPE tokenizer (GPT-2 style): train, encode, decode, special tokens, JSON files.
//
// Vocabulary layout
//   ids 0..255             the 256 single bytes, so every byte string is encodable and
//                          decode(encode(s)) == s exactly (invalid UTF-8, NUL, empty included);
//   ids 256..256+M-1       the M learned merges in rank order: merge r joins the pair (a, b),
//                          both ids < 256 + r, into id 256 + r;
//   ids 256+M..            special tokens: bos, eos, pad (always present), then user-defined
//                          ones, in the order they were added.
//
// Pre-tokenisation ("gpt2_bytes"): the text is cut into chunks and merges never cross a chunk
// boundary, as GPT-2 does with its regex. Here the cut is hand-written over byte classes:
//   letter = ASCII letter or any byte >= 0x80 (so multi-byte UTF-8 stays inside a word),
//   digit  = 0-9,  space = ' ' \t \n \v \f \r,  other = everything else (punctuation, NUL, ...).
// A chunk is one of: an English contraction ('s 't 'm 'd 're 've 'll); an optional single
// leading ' ' followed by a run of one class (letters, digits or others); a run of whitespace.
// When a whitespace run is followed by a non-space and ends in ' ', that last ' ' is left to
// prefix the next word (" the", " 42"), as GPT-2's `\s+(?!\S)` does.
//
// Training, for text of n bytes with U unique chunks whose total length is S:
//   1. pre-tokenise and count chunk frequencies in a hash map:             O(n);
//   2. count adjacent pairs over the unique chunks (weighted by frequency) and remember, per
//      pair, which chunks contain it:                                         O(S);
//   3. repeat until the vocabulary is full: take the most frequent pair from a lazy max-heap
//      (stale entries are re-pushed with their current count when popped), rewrite only the
//      chunks that contain it (left to right, non-overlapping), and update the pair counts
//      incrementally from the chunk's old and new pairs. A merge costs O(sum of the lengths of
//      the chunks it touches + log heap), not a recount of the corpus.
//   Ties in count go to the smaller pair (a, b) in lexicographic order, so training is
//   deterministic whatever the hash-map iteration order.
//   On tinyshakespeare (1.1 MB, ~15k unique chunks) to vocab 4096 this takes ~0.05 s on one
//   core, pre-tokenisation included; encoding the whole corpus takes ~0.03 s (3.31 bytes/token).
//
// Encoding applies the merges of each chunk by rank, lowest first, which is exactly the order
// in which training applied them. A chunk of L bytes is a linked list of symbols with a min-heap
// of (rank, position) candidates: O(L log L), even for pathological chunks that are megabytes
// long. One encode call caches the encodings of repeated chunks. encode/decode keep no state
// between calls, so a const Tokenizer can be shared by threads.
//
// Special tokens: encode() treats special-token text as plain bytes, so user text can never
// inject a <|eos|>; encode_with_special() splits on the special strings first. Special strings
// must be non-empty valid UTF-8 (they are stored as JSON strings).
//
// File format (JSON, written atomically: path.tmp, fsync, rename):
//   {"format": "somnus.bpe_tokenizer", "version": 1, "pretokenizer": "gpt2_bytes",
//    "vocab_size": V, "merges": [[a, b], ...] (rank order),
//    "special_tokens": [{"id": i, "text": "<|bos|>"}, ...] (consecutive ids after the merges),
//    "bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
// load() checks every field before it builds anything and throws somnus::Error naming the file
// and the problem.
//
// Limitations: chunks are cut by ASCII classes only (no Unicode categories; non-ASCII
// punctuation is part of a word); training time per merge grows with the length of the chunks
// it touches, so text with megabyte-long chunks (e.g. one giant word) trains slowly.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace somnus::nn {

using TokenId = int32_t;

struct SpecialTokens {
  std::string bos = "<|bos|>";
  std::string eos = "<|eos|>";
  std::string pad = "<|pad|>";
  std::vector<std::string> extra;  // user-defined, ids follow pad in this order
};

struct BpeTrainOptions {
  std::string pretokenizer = "gpt2_bytes";
  SpecialTokens specials;
  // Stop merging early when the most frequent pair occurs fewer times than this.
  int64_t min_pair_count = 1;
};

class Tokenizer {
 public:
  static constexpr int64_t kNumBytes = 256;
  static constexpr int64_t kMaxVocabSize = int64_t{1} << 24;
  static constexpr const char* kFormat = "somnus.bpe_tokenizer";
  static constexpr int kVersion = 1;

  // Byte-level tokenizer with no merges: 256 bytes + the specials.
  explicit Tokenizer(const SpecialTokens& specials = {});

  // Learn merges on `text` until the vocabulary (bytes + merges + specials) has `vocab_size`
  // entries, or fewer when the text runs out of pairs (or of pairs with min_pair_count).
  static Tokenizer train(std::string_view text, int64_t vocab_size, const BpeTrainOptions& options = {});

  // Any byte string; special-token text is encoded as ordinary bytes.
  std::vector<TokenId> encode(std::string_view bytes) const;
  // Occurrences of special-token strings become their ids (longest match wins at a position).
  std::vector<TokenId> encode_with_special(std::string_view text) const;
  // Bytes of the tokens; a special id gives its string. Unknown ids throw.
  std::string decode(std::span<const TokenId> ids) const;

  int64_t vocab_size() const { return static_cast<int64_t>(token_bytes_.size()); }
  int64_t num_merges() const { return static_cast<int64_t>(merges_.size()); }
  const std::vector<std::pair<TokenId, TokenId>>& merges() const { return merges_; }
  const std::string& pretokenizer() const { return pretokenizer_; }
  // The bytes a token stands for (a special token's text for a special id).
  const std::string& token_bytes(TokenId id) const;

  TokenId bos_id() const { return bos_id_; }
  TokenId eos_id() const { return eos_id_; }
  TokenId pad_id() const { return pad_id_; }
  // Id of the special token with this text; throws if there is none.
  TokenId special_id(std::string_view text) const;
  bool is_special(TokenId id) const { return id >= first_special_id() && id < vocab_size(); }
  TokenId first_special_id() const { return static_cast<TokenId>(kNumBytes + num_merges()); }
  // Texts of all special tokens in id order.
  std::vector<std::string> special_tokens() const;
  // Append a user-defined special token; returns its id.
  TokenId add_special_token(const std::string& text);

  // The cut used for training and encoding; the chunks concatenate back to `text`.
  static std::vector<std::string_view> pretokenize(std::string_view text);

  std::string to_json() const;
  // `source` names the origin (a path) in error messages.
  static Tokenizer from_json(std::string_view json_text, const std::string& source = "<string>");
  void save(const std::string& path) const;
  static Tokenizer load(const std::string& path);

 private:
  struct Empty {};
  // Bytes only: no merges, no specials (an intermediate state of train/from_json).
  explicit Tokenizer(Empty);
  void add_merge(TokenId a, TokenId b);
  void set_specials(const SpecialTokens& specials);
  void encode_chunk(std::string_view chunk, std::vector<TokenId>& out, std::vector<TokenId>& sym,
                    std::vector<int32_t>& next, std::vector<int32_t>& prev,
                    std::vector<std::pair<int32_t, int32_t>>& heap) const;
  int32_t merge_rank(TokenId a, TokenId b) const;

  std::string pretokenizer_ = "gpt2_bytes";
  std::vector<std::pair<TokenId, TokenId>> merges_;
  std::vector<std::string> token_bytes_;  // indexed by id; specials hold their text
  std::unordered_map<uint64_t, int32_t> merge_rank_;  // (a << 32 | b) -> rank
  TokenId bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
};

}  // namespace somnus::nn
