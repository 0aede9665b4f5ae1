// Reliability of `somnus train` end to end (issue 8 §4, §5), through the built binary
// (SOMNUS_CLI_PATH):
//   - determinism: two runs with the same seed and config write identical metrics.jsonl
//     (tokens_per_s aside) and byte-identical weights; another seed writes different ones;
//   - numeric guards: steps whose loss is poisoned with NaN (the hidden --debug-nan-steps
//     hook) are skipped and logged, leave the weights untouched, and the run goes on.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/file_io.h"
#include "nn/safetensors.h"
#include "tests/testing.h"
#include "tests/tools/cli_testing.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace somnus;
using namespace somnus::testing;

using Result = CliResult;
Result run(const std::string& args) { return run_cli(args); }
using TempDir = CliTempDir;

std::string write_corpus(const std::string& path) {
  std::ofstream(path) << somnus::testing::lcg_word_text({"sleep", "wake", "dream", "the", "a", "river", "stone", "night"},
                                                        777, 12000, 5);
  return path;
}

const auto metrics = somnus::testing::read_metrics;

std::string args_for(const std::string& corpus, const std::string& out_dir, bool quiet = true) {
  return "train --data " + corpus + " --out_dir " + out_dir +
         " --steps 5 --batch_size 2 --vocab_size 280 --eval_every 5 --eval_batches 1 --checkpoint_every 1"
         " --keep_checkpoints 0 --model.n_layer 1 --model.n_embd 16 --model.n_head 2 --model.block_size 8" +
         (quiet ? " --quiet" : "");
}

}  // namespace

TEST(Reliability, SameSeedSameConfigGivesIdenticalMetricsAndWeights) {
  TempDir dir;
  const std::string corpus = write_corpus(dir.file("corpus.txt"));
  for (const char* name : {"a", "b"}) {
    const Result r = run(args_for(corpus, dir.file(name)));
    ASSERT_EQ(r.code, 0) << r.out;
  }
  const Result c = run(args_for(corpus, dir.file("c")) + " --seed 99");
  ASSERT_EQ(c.code, 0) << c.out;
  const std::vector<json> ma = metrics(dir.file("a/metrics.jsonl"));
  ASSERT_EQ(ma.size(), 5u);
  EXPECT_EQ(ma, metrics(dir.file("b/metrics.jsonl")));
  EXPECT_NE(ma, metrics(dir.file("c/metrics.jsonl")));
  const std::string wa = read_file(dir.file("a/ckpt-00000005/model.safetensors"));
  EXPECT_EQ(wa, read_file(dir.file("b/ckpt-00000005/model.safetensors")));
  EXPECT_NE(wa, read_file(dir.file("c/ckpt-00000005/model.safetensors")));
}

TEST(Reliability, NanLossSkipsTheStepAndLogsIt) {
  TempDir dir;
  const std::string corpus = write_corpus(dir.file("corpus.txt"));
  const Result r = run(args_for(corpus, dir.file("run")) + " --debug-nan-steps 2,4");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<json> m = metrics(dir.file("run/metrics.jsonl"));
  ASSERT_EQ(m.size(), 5u);
  for (size_t i = 0; i < m.size(); ++i) {
    const bool poisoned = i == 1 || i == 3;
    EXPECT_EQ(m[i].contains("skipped"), poisoned) << m[i].dump();
    if (poisoned) {
      EXPECT_EQ(m[i].at("skipped"), "non_finite");
      EXPECT_TRUE(m[i].at("loss").is_null()) << "NaN is written as null";
    } else {
      EXPECT_TRUE(std::isfinite(m[i].at("loss").get<double>()));
    }
  }
  // A skipped step leaves the weights as they were; the others change them.
  auto weights = [&](int step) {
    const SafetensorsFile f = load_safetensors(dir.file(fmt::format("run/ckpt-{:08d}/model.safetensors", step)));
    std::string bytes;
    for (const auto& [name, t] : f.tensors) bytes += raw_bytes(t);
    return bytes;
  };
  EXPECT_EQ(weights(2), weights(1));
  EXPECT_EQ(weights(4), weights(3));
  EXPECT_NE(weights(3), weights(2));
  EXPECT_NE(weights(5), weights(4));
  const SafetensorsFile last = load_safetensors(dir.file("run/ckpt-00000005/model.safetensors"));
  for (const auto& [name, t] : last.tensors) {
    for (double v : t.to_vector()) ASSERT_TRUE(std::isfinite(v)) << name;
  }
  // The log line (stderr, without --quiet) names the step and the reason.
  const Result loud = run(args_for(corpus, dir.file("loud"), false) + " --debug-nan-steps 3");
  ASSERT_EQ(loud.code, 0) << loud.out;
  expect_contains(loud.out, "train: step 3 skipped (non_finite)");
}

TEST(Reliability, PersistentNanStopsTheRun) {
  TempDir dir;
  const std::string corpus = write_corpus(dir.file("corpus.txt"));
  std::string steps;
  for (int s = 1; s <= 25; ++s) steps += (s > 1 ? "," : "") + std::to_string(s);
  const Result r = run(args_for(corpus, dir.file("run")) + " --steps 25 --debug-nan-steps " + steps);
  EXPECT_NE(r.code, 0);
  expect_contains(r.out, "NaN/Inf for 20 steps in a row");
}
