// `somnus eval` and `somnus generate` on a small trained checkpoint, as a user runs them:
// eval --data scores every token of the file (tiny files included), bad option values are
// refused with a readable message.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tools/cli_testing.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Result = somnus::testing::CliResult;
const auto run = somnus::testing::run_cli;

// ~12 KB of word-like text from a fixed LCG.
std::string corpus_text() { return somnus::testing::lcg_word_text(somnus::testing::cli_words(), 777, 12000, 7); }

// One tiny model (block_size 16) trained for a few steps, shared by the tests of this file.
class CliInference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = (fs::temp_directory_path() / ("somnus_cli_inference_" + std::to_string(::getpid()))).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(file("corpus.txt")) << corpus_text();
    const Result r = run("train --data " + file("corpus.txt") + " --out_dir " + file("run") +
                         " --steps 6 --batch_size 4 --vocab_size 300 --eval_every 0 --warmup_steps 1"
                         " --model.n_layer 1 --model.n_embd 32 --model.n_head 2 --model.block_size 16 --quiet");
    ASSERT_EQ(r.code, 0) << r.out;
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string file(const std::string& name) { return dir_ + "/" + name; }
  static json last_json(const Result& r) { return json::parse(r.out.substr(r.out.rfind("\n{") + 1)); }
  static std::string dir_;
};
std::string CliInference::dir_;

// eval --data: every target of the file is scored once, whatever the window length; the
// tokens after the last whole window used to be dropped (2000 bytes of tinyshakespeare at
// block_size 128: 768 of 782 tokens), and a file shorter than one window was refused.
TEST_F(CliInference, EvalDataScoresEveryToken) {
  const std::string text = corpus_text().substr(0, 700);
  std::ofstream(file("small.txt")) << text;
  const Result one = run("eval --ckpt " + file("run") + " --data " + file("small.txt") + " --seq-len 1");
  ASSERT_EQ(one.code, 0) << one.out;
  const int64_t targets = last_json(one).at("tokens").get<int64_t>();  // windows of 1: n - 1 of them
  ASSERT_GT(targets, 40);
  for (const char* seq : {"", " --seq-len 16", " --seq-len 7", " --seq-len 16 --batch 1", " --seq-len 5 --batch 3"}) {
    const Result r = run("eval --ckpt " + file("run") + " --data " + file("small.txt") + seq);
    ASSERT_EQ(r.code, 0) << seq << "\n" << r.out;
    EXPECT_EQ(last_json(r).at("tokens").get<int64_t>(), targets) << seq;
  }
  // The batch size does not change what is scored.
  const Result b8 = run("eval --ckpt " + file("run") + " --data " + file("small.txt") + " --seq-len 16 --batch 8");
  const Result b1 = run("eval --ckpt " + file("run") + " --data " + file("small.txt") + " --seq-len 16 --batch 1");
  EXPECT_NEAR(last_json(b8).at("loss").get<double>(), last_json(b1).at("loss").get<double>(), 1e-5);

  // A file of fewer tokens than block_size: one shorter window, the same as --seq-len n - 1.
  std::ofstream(file("tiny.txt")) << "the king and the queen";
  const Result tiny = run("eval --ckpt " + file("run") + " --data " + file("tiny.txt"));
  ASSERT_EQ(tiny.code, 0) << tiny.out;
  const int64_t n1 = last_json(tiny).at("tokens").get<int64_t>();
  ASSERT_GE(n1, 1);
  const Result tiny_w = run("eval --ckpt " + file("run") + " --data " + file("tiny.txt") + " --seq-len " +
                            std::to_string(n1));
  ASSERT_EQ(tiny_w.code, 0) << tiny_w.out;
  EXPECT_EQ(last_json(tiny_w).at("tokens").get<int64_t>(), n1);
  EXPECT_NEAR(last_json(tiny_w).at("loss").get<double>(), last_json(tiny).at("loss").get<double>(), 1e-6);

  // Nothing to predict, and bad option values: errors, never a NaN result.
  std::ofstream(file("empty.txt")) << "";
  const Result empty = run("eval --ckpt " + file("run") + " --data " + file("empty.txt"));
  EXPECT_NE(empty.code, 0);
  EXPECT_NE(empty.out.find("at least 2"), std::string::npos) << empty.out;
  const Result neg = run("eval --ckpt " + file("run") + " --data " + file("small.txt") + " --max-batches -1");
  EXPECT_NE(neg.code, 0);
  EXPECT_EQ(neg.out.find("null"), std::string::npos) << neg.out;
  EXPECT_NE(run("eval --ckpt " + file("run") + " --data " + file("small.txt") + " --seq-len -5").code, 0);
}

// eval --qa scores what `generate` answers: a QA file made of the model's own greedy
// continuations is answered in full. Before, the prompt got a bos token that `somnus train`
// never trains on, and the answer had to be followed by eos (a plain-text model never emits
// one), so the same file scored 0/4 on a tinyshakespeare model (2/4 with the eos rule alone).
TEST_F(CliInference, EvalQaAgreesWithGenerate) {
  std::ofstream qa(file("qa.jsonl"));
  int64_t lines = 0;
  for (const std::string prompt : {"the king", "we shall", "in a", "the queen of"}) {
    const Result g = run("generate --ckpt " + file("run") + " --prompt '" + prompt +
                         "' --max-new 4 --temperature 0 --no-stop");
    ASSERT_EQ(g.code, 0) << g.out;
    ASSERT_EQ(g.out.rfind(prompt, 0), 0u) << g.out;
    std::string answer = g.out.substr(prompt.size());
    ASSERT_FALSE(answer.empty());
    answer.pop_back();  // generate's newline
    if (answer.empty()) continue;
    qa << json{{"prompt", prompt}, {"answer", answer}}.dump() << "\n";
    ++lines;
  }
  qa << json{{"prompt", "the king"}, {"answer", "zzzz"}}.dump() << "\n";  // not what the model says
  qa.close();
  ASSERT_GE(lines, 2);
  const Result e = run("eval --ckpt " + file("run") + " --qa " + file("qa.jsonl"));
  ASSERT_EQ(e.code, 0) << e.out;
  const json j = last_json(e);
  EXPECT_EQ(j.at("qa_examples").get<int64_t>(), lines + 1);
  EXPECT_EQ(j.at("qa_correct").get<int64_t>(), lines) << e.out;
  // --bos gives the [bos] prompt format of PromptAnswerDataset; it runs, and the wrong answer stays wrong.
  const Result b = run("eval --ckpt " + file("run") + " --qa " + file("qa.jsonl") + " --bos");
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_LE(last_json(b).at("qa_correct").get<int64_t>(), lines);
}

// The README's resume: a run started with overrides (--steps, --lr) and continued with
// `train --out_dir DIR --resume` (no --config) ends byte-identical to the uninterrupted run.
// The README used to show the resume with --config and without the overrides, which silently
// (a warning) went on with the file's steps and lr: 1000 steps at 2e-3 instead of 2000 at 1e-3.
TEST_F(CliInference, ResumeWithoutConfigContinuesTheRunExactly) {
  const std::string args = "train --data " + file("corpus.txt") +
                           " --steps 6 --lr=3e-3 --batch_size 2 --vocab_size 300 --eval_every 3 --warmup_steps 1"
                           " --model.n_layer 1 --model.n_embd 32 --model.n_head 2 --model.block_size 16 --quiet";
  ASSERT_EQ(run(args + " --out_dir " + file("straight")).code, 0);
  const Result first = run(args + " --out_dir " + file("resumed") + " --stop-at 3");
  ASSERT_EQ(first.code, 0) << first.out;
  const Result second = run("train --out_dir " + file("resumed") + " --resume");
  ASSERT_EQ(second.code, 0) << second.out;
  EXPECT_NE(second.out.find("step 6 of 6"), std::string::npos) << second.out;
  auto bytes = [](const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  const std::string a = bytes(file("straight/ckpt-00000006/model.safetensors"));
  EXPECT_GT(a.size(), 1000u);
  EXPECT_EQ(a, bytes(file("resumed/ckpt-00000006/model.safetensors")));
  EXPECT_EQ(somnus::testing::read_metrics(file("straight/metrics.jsonl")),
            somnus::testing::read_metrics(file("resumed/metrics.jsonl")));
  // With --config but without the overrides: a warning that says how to continue exactly.
  const std::string cfg = file("cfg.json");
  std::ofstream(cfg) << json{{"data", file("corpus.txt")},
                             {"steps", 8},
                             {"model", {{"n_layer", 1}, {"n_embd", 32}, {"n_head", 2}, {"block_size", 16}}}}
                             .dump();
  const Result other = run("train --config " + cfg + " --out_dir " + file("resumed") + " --resume --stop-at 7");
  EXPECT_NE(other.out.find("resume without --config"), std::string::npos) << other.out;
}

// generate --max-new past the model's context: the output ends at block_size, and stderr says
// so (it used to stop there silently: --max-new 500 on a block_size 128 model gave 126 tokens).
TEST_F(CliInference, GenerateSaysWhenBlockSizeCutsItShort) {
  const std::string base = "generate --ckpt " + file("run") + " --prompt 'the king' --no-stop --temperature 0";
  const Result cut = run(base + " --max-new 100");
  ASSERT_EQ(cut.code, 0) << cut.out;
  EXPECT_NE(cut.out.find("stopped at the model's block_size 16"), std::string::npos) << cut.out;
  EXPECT_NE(cut.out.find("before --max-new 100"), std::string::npos) << cut.out;
  const Result fits = run(base + " --max-new 3");
  ASSERT_EQ(fits.code, 0) << fits.out;
  EXPECT_EQ(fits.out.find("block_size"), std::string::npos) << fits.out;
  // stdout alone is still just the text: the prompt and its continuation.
  const Result text = run(base + " --max-new 100 2>/dev/null | cat");  // run_cli's 2>&1 then applies to cat
  EXPECT_EQ(text.out.find("block_size"), std::string::npos) << text.out;
  EXPECT_EQ(text.out.rfind("the king", 0), 0u) << text.out;
}

// Out-of-range option values: a short message naming the option, the bound and the value.
// CLI11's own checks printed DBL_MAX in full ("--batch: Value 0 not in range 0.000000 to
// 17976931348623157081452742373170435679807056752584499659891747680315726078...").
TEST_F(CliInference, OutOfRangeOptionsSayTheBound) {
  const std::string gen = "generate --ckpt " + file("run") + " --prompt x ";
  const std::string eval = "eval --ckpt " + file("run") + " --data " + file("corpus.txt") + " ";
  const std::pair<std::string, std::string> cases[] = {
      {gen + "--max-new -1", "--max-new: must be >= 0, got -1"},
      {gen + "--temperature -0.5", "--temperature: must be >= 0, got -0.5"},
      {gen + "--top-k -3", "--top-k: must be >= 0, got -3"},
      {eval + "--batch 0", "--batch: must be > 0, got 0"},
      {eval + "--max-batches -2", "--max-batches: must be >= 0, got -2"},
      {eval + "--batch abc", "--batch: expected a number, got 'abc'"},
      {"train --out_dir " + file("run") + " --resume --stop-at -3", "--stop-at: must be >= 0, got -3"},
  };
  for (const auto& [args, message] : cases) {
    const Result r = run(args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.out.find(message), std::string::npos) << args << "\n" << r.out;
    EXPECT_LT(r.out.size(), 200u) << args << "\n" << r.out;
  }
}

}  // namespace
