// `somnus tokenizer train --input text.txt --vocab N --out tok.json`: byte-level BPE
// (nn/tokenizer.h), written atomically.
#include <fmt/format.h>

#include <chrono>

#include "nn/file_io.h"
#include "nn/tokenizer.h"
#include "tensor/format.h"
#include "tools/cli_common.h"

namespace somnus::tools {

namespace {

struct TokenizerArgs {
  std::string input, out;
  int64_t vocab = 4096;
  int64_t min_pair_count = 1;
  std::string device = "cpu";
};

void run_tokenizer_train(const TokenizerArgs& a) {
  parse_device_option(a.device);  // the tokenizer runs on the host; a bad --device is still an error
  SOMNUS_CHECK(a.vocab > nn::Tokenizer::kNumBytes + 3 && a.vocab <= nn::Tokenizer::kMaxVocabSize,
               "tokenizer train: --vocab must be in ({}, {}], got {}", nn::Tokenizer::kNumBytes + 3,
               nn::Tokenizer::kMaxVocabSize, a.vocab);
  const std::string text = read_file(a.input);
  const auto t0 = std::chrono::steady_clock::now();
  nn::BpeTrainOptions opts;
  opts.min_pair_count = a.min_pair_count;
  const nn::Tokenizer tok = nn::Tokenizer::train(text, a.vocab, opts);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  tok.save(a.out);
  const size_t n = tok.encode(text).size();
  fmt::print("tokenizer: vocab {} ({} merges), {} bytes -> {} tokens ({:.2f} bytes/token), trained in {:.2f}s -> {}\n",
             tok.vocab_size(), tok.num_merges(), text.size(), n,
             n ? static_cast<double>(text.size()) / static_cast<double>(n) : 0.0, secs, a.out);
}

}  // namespace

void add_tokenizer_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenizer", "Tokenizer tools");
  cmd->require_subcommand(1);
  auto a = std::make_shared<TokenizerArgs>();
  auto* train = cmd->add_subcommand("train", "Train a byte-level BPE tokenizer on a text file");
  train->add_option("--input", a->input, "Plain-text file")->required()->check(CLI::ExistingFile);
  train->add_option("--vocab", a->vocab, "Vocabulary size (bytes + merges + 3 specials)")->capture_default_str();
  train->add_option("--out", a->out, "Output JSON")->required();
  train->add_option("--min-pair-count", a->min_pair_count, "Stop merging below this pair count")
      ->capture_default_str();
  add_device_option(train, a->device);
  train->callback([a] { run_tokenizer_train(*a); });
}

}  // namespace somnus::tools
