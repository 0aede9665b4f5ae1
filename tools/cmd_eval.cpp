// `somnus eval --ckpt DIR (--data text.txt | --qa file.jsonl) [--device cpu|cuda]`
//   --data: mean next-token cross-entropy and perplexity over consecutive windows of the
//           whole file (seq_len = the model's block_size unless --seq-len), every token once
//           (the tokens after the last whole window are scored in one more window that ends
//           at the file's end; a file shorter than a window is one shorter window);
//   --qa:   exact-match accuracy of greedy generation on JSONL lines {"prompt": ..., "answer": ...}:
//           the model sees the prompt (as `generate` does; [bos] prompt with --bos, the format of
//           PromptAnswerDataset) and must produce the answer then eos, or the answer and go on
//           past its length without eos (a model trained by `somnus train` on plain text has
//           never seen bos or eos); the generated text, cut at eos, must equal the answer.
// Prints one JSON object on stdout (and a readable line on stderr).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/grad_mode.h"
#include "nn/checkpoint.h"
#include "nn/data.h"
#include "nn/file_io.h"
#include "nn/generate.h"
#include "nn/tokenizer.h"
#include "tensor/format.h"
#include "tools/cli_common.h"

namespace somnus::tools {

using namespace somnus::nn;
using nlohmann::json;

namespace {

struct EvalArgs {
  std::string ckpt, data, qa;
  int64_t batch = 8;
  int64_t seq_len = 0;
  int64_t max_batches = 0;
  bool bos = false;
  std::string device = "cpu";
};

std::vector<PromptAnswer> read_qa(const std::string& path) {
  std::istringstream in(read_file(path));
  std::vector<PromptAnswer> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json j = json::parse(line, nullptr, false);
    SOMNUS_CHECK(!j.is_discarded() && j.is_object() && j.contains("prompt") && j.contains("answer") &&
                     j.at("prompt").is_string() && j.at("answer").is_string(),
                 "eval --qa: {}:{}: expected {{\"prompt\": string, \"answer\": string}}", path, n);
    out.push_back({j.at("prompt").get<std::string>(), j.at("answer").get<std::string>()});
  }
  SOMNUS_CHECK(!out.empty(), "eval --qa: '{}' has no examples", path);
  return out;
}

void run_eval(const EvalArgs& a) {
  SOMNUS_CHECK(!a.data.empty() || !a.qa.empty(), "eval: pass --data text.txt and/or --qa file.jsonl");
  const Device device = parse_device_option(a.device);
  const std::string dir = resolve_checkpoint(a.ckpt);
  auto model = load_transformer(dir, device);
  model->eval();
  const Tokenizer tok = Tokenizer::from_json(read_checkpoint_file(dir, "tokenizer.json"), dir + "/tokenizer.json");
  json result{{"checkpoint", dir}};
  if (!a.data.empty()) {
    const int64_t T = a.seq_len > 0 ? a.seq_len : model->config().block_size;
    SOMNUS_CHECK(T <= model->config().block_size, "eval: --seq-len {} exceeds the model's block_size {}", T,
                 model->config().block_size);
    const std::vector<TokenId> ids = tok.encode(read_file(a.data));
    const int64_t n = static_cast<int64_t>(ids.size());
    SOMNUS_CHECK(n >= 2, "eval: '{}' gives {} tokens; at least 2 are needed for one prediction", a.data, n);
    // Rows of consecutive windows of T targets, then, for the targets after the last whole
    // window, one row of the stream's last min(T, n - 1) targets in which only those count
    // (the others are context): every target once.
    struct Row {
      int64_t start, len, counted;
    };
    std::vector<Row> rows;
    const int64_t full = (n - 1) / T;
    for (int64_t w = 0; w < full; ++w) rows.push_back({w * T, T, T});
    if (const int64_t rest = (n - 1) - full * T; rest > 0) {
      const int64_t len = std::min(T, n - 1);
      rows.push_back({n - 1 - len, len, rest});
    }
    NoGradGuard no_grad;
    double total = 0.0;
    int64_t counted = 0, batches = 0;
    for (size_t r0 = 0; r0 < rows.size() && (a.max_batches == 0 || batches < a.max_batches); ++batches) {
      // One batch: up to a.batch rows of the same length.
      size_t r1 = r0;
      while (r1 < rows.size() && r1 - r0 < static_cast<size_t>(a.batch) && rows[r1].len == rows[r0].len) ++r1;
      const int64_t B = static_cast<int64_t>(r1 - r0), L = rows[r0].len;
      Batch b;
      b.input = Tensor::empty({B, L}, DType::i64);
      b.target = Tensor::empty({B, L}, DType::i64);
      b.mask = Tensor::zeros({B, L}, DType::f32);
      int64_t* x = b.input.data<int64_t>();
      int64_t* y = b.target.data<int64_t>();
      float* m = b.mask.data<float>();
      for (int64_t i = 0; i < B; ++i) {
        const Row& row = rows[r0 + static_cast<size_t>(i)];
        for (int64_t t = 0; t < L; ++t) {
          x[i * L + t] = ids[static_cast<size_t>(row.start + t)];
          y[i * L + t] = ids[static_cast<size_t>(row.start + t + 1)];
          if (t >= L - row.counted) m[i * L + t] = 1.0f;
        }
        b.counted_tokens += row.counted;
      }
      total += model->loss(b.input.to(device), b.target.to(device), b.mask.to(device)).ce.item() *
               static_cast<double>(b.counted_tokens);
      counted += b.counted_tokens;
      r0 = r1;
    }
    const double loss = total / static_cast<double>(counted);
    result["loss"] = loss;
    result["perplexity"] = std::exp(loss);
    result["tokens"] = counted;
    fmt::print(stderr, "eval: {} tokens  loss {:.4f}  perplexity {:.2f}\n", counted, loss, std::exp(loss));
  }
  if (!a.qa.empty()) {
    const std::vector<PromptAnswer> qa = read_qa(a.qa);
    int64_t correct = 0;
    for (const PromptAnswer& ex : qa) {
      std::vector<TokenId> prompt;
      if (a.bos) prompt.push_back(tok.bos_id());
      for (TokenId t : tok.encode_with_special(ex.prompt)) prompt.push_back(t);
      if (prompt.empty()) prompt.push_back(tok.bos_id());  // as `generate` does with an empty prompt
      const int64_t room = model->config().block_size - static_cast<int64_t>(prompt.size());
      SOMNUS_CHECK(room > 0, "eval --qa: a prompt of {} tokens does not fit block_size {}", prompt.size(),
                   model->config().block_size);
      GenerateConfig g;
      g.temperature = 0.0;
      // Every token is at least one byte: answer bytes + 1 tokens always reach the answer's
      // length (or its eos), however the model splits the answer into tokens.
      g.max_new_tokens = std::min<int64_t>(room, static_cast<int64_t>(ex.answer.size()) + 1);
      g.stop_tokens = {tok.eos_id()};
      const GenerateResult r = generate(*model, {prompt}, g);
      std::vector<TokenId> out = r.sequences[0].tokens;
      const bool stopped = !out.empty() && out.back() == tok.eos_id();
      if (stopped) out.pop_back();
      const std::string text = tok.decode(out);
      // Ended by eos: the text must be the answer. Not ended: the text must begin with the
      // answer (the model reached the answer's length; a model trained on plain text never
      // emits eos).
      const bool ok = stopped ? text == ex.answer
                              : !ex.answer.empty() && text.compare(0, ex.answer.size(), ex.answer) == 0;
      if (ok) ++correct;
    }
    const double acc = static_cast<double>(correct) / static_cast<double>(qa.size());
    result["qa_examples"] = qa.size();
    result["qa_correct"] = correct;
    result["exact_match"] = acc;
    fmt::print(stderr, "eval: exact match {}/{} = {:.4f}\n", correct, qa.size(), acc);
  }
  fmt::print("{}\n", result.dump());
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "Evaluate a checkpoint: loss/perplexity on text, exact match on prompt/answer");
  cmd->add_option("--ckpt", a->ckpt, "Checkpoint directory, or a run directory (its latest checkpoint)")->required();
  cmd->add_option("--data", a->data, "Plain-text file: loss and perplexity")->check(CLI::ExistingFile);
  cmd->add_option("--qa", a->qa, "JSONL of {\"prompt\", \"answer\"}: greedy exact-match accuracy")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--bos", a->bos,
                "--qa: start each prompt with the bos token (models trained on [bos] prompt answer [eos] examples)");
  cmd->add_option("--batch", a->batch, "Windows per batch")->capture_default_str()->check(positive());
  cmd->add_option("--seq-len", a->seq_len, "Window length (0: block_size)")->capture_default_str()->check(
      non_negative());
  cmd->add_option("--max-batches", a->max_batches, "Stop after this many batches (0: the whole file)")
      ->capture_default_str()
      ->check(non_negative());
  add_device_option(cmd, a->device);
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace somnus::tools
