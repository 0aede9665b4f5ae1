// Long-horizon memory tasks (PARADIGM §5.4, the paper's Fig. 4 and 6): facts hidden in long
// filler text, asked about at the end, so that a model whose attention window is shorter
// than the context must carry the facts in its memory levels.
//
//   needles     multi-key needle-in-a-haystack: K lines "The secret number of Vorla is
//               4821." at random line boundaries; questions "Q: What is the secret number
//               of Vorla?\nA:" -> " 4821".
//   fact chains bAbI-style (Weston et al. 2015, tasks 1-3): "Mary went to the kitchen.",
//               "Mary picked up the apple.", "Mary travelled to the garden.", "Mary dropped
//               the apple."; questions "Q: Where is Mary?\nA:" -> " garden" and
//               "Q: Where is the apple?\nA:" -> " garden" (a two-hop chain: the object is
//               where its holder went, or where it was dropped).
// Facts keep their order of events and each stands on its own line between filler lines.
// Filler is contiguous text from a seeded position of a corpus (tinyshakespeare by default).
// context_chars sets the total length in bytes (facts included); the token count depends on
// the tokenizer (~3.3 bytes per BPE token on tinyshakespeare at vocab 4096), so choose it
// above the attention window in tokens.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nn/data.h"

namespace somnus::sleep {

struct LongQuestion {
  std::string prompt;  // "Q: ...\nA:"
  std::string answer;  // " ..."
};

struct LongHorizonExample {
  std::string context;                 // filler with the facts
  std::vector<std::string> facts;      // the fact lines, in context order
  std::vector<int64_t> fact_offsets;   // byte offset of each fact line in context
  std::vector<LongQuestion> questions;
};

// Filler text cut at line boundaries. Throws somnus::Error when the corpus has no lines.
class FillerText {
 public:
  explicit FillerText(std::string corpus);
  // Whole lines (each with its '\n') from a random start, wrapping around, totalling at
  // most `chars` bytes (at least one line when chars > 0).
  std::vector<std::string> take_lines(uint64_t seed, int64_t chars) const;
  int64_t size() const { return static_cast<int64_t>(corpus_.size()); }

 private:
  std::string corpus_;
  std::vector<int64_t> line_starts_;  // offsets of non-empty lines
};

// tinyshakespeare/input.txt from the data directory.
std::string load_tinyshakespeare(const std::vector<std::string>& extra_data_dir_candidates = {});

struct NeedleOptions {
  uint64_t seed = 0;
  int64_t context_chars = 4000;
  int64_t num_needles = 4;
  int64_t num_questions = 2;  // distinct needles asked, <= num_needles
};
LongHorizonExample make_needle_example(const FillerText& filler, const NeedleOptions& options);

struct FactChainOptions {
  uint64_t seed = 0;
  int64_t context_chars = 4000;
  int64_t num_people = 3;    // <= 8
  int64_t num_objects = 2;   // <= 8
  int64_t num_events = 8;    // moves, pick-ups and drops after the objects' placements
  int64_t num_questions = 2; // distinct people/objects asked
};
LongHorizonExample make_fact_chain_example(const FillerText& filler, const FactChainOptions& options);

// `count` examples with seeds derived from options.seed.
std::vector<LongHorizonExample> make_needle_examples(const FillerText& filler, int64_t count, NeedleOptions options);
std::vector<LongHorizonExample> make_fact_chain_examples(const FillerText& filler, int64_t count,
                                                         FactChainOptions options);

// One prompt/answer per question: context + "\n" + question prompt.
std::vector<nn::PromptAnswer> long_horizon_prompt_answers(const LongHorizonExample& ex);

// The word lists of the fact chains (for parsers in tests and analysis).
const std::vector<std::string>& fact_chain_people();
const std::vector<std::string>& fact_chain_locations();
const std::vector<std::string>& fact_chain_objects();

}  // namespace somnus::sleep
