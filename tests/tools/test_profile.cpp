// `somnus profile` end to end (the binary's path comes from tests/CMakeLists.txt as
// SOMNUS_CLI_PATH): a tiny config on random tokens, --what train and generate print the op
// table and write a Chrome trace whose scopes and ops are there; bad --what values and
// --what sleep on a model without a receiver level exit non-zero with a message.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tools/cli_testing.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Result = somnus::testing::CliResult;
const auto run = somnus::testing::run_cli;

class ProfileCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("somnus_profile_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(file("cfg.json")) << R"({"vocab_size": 300, "batch_size": 2, "seed": 3,
      "model": {"preset": "llama-style", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_kv_head": 1,
                "block_size": 16}})";
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

std::set<std::string> event_names(const json& trace, const std::string& cat) {
  std::set<std::string> names;
  for (const json& e : trace.at("traceEvents"))
    if (e.value("cat", "") == cat) names.insert(e.at("name").get<std::string>());
  return names;
}

TEST_F(ProfileCli, TrainPrintsTheTableAndWritesTheTrace) {
  const Result r = run("profile --config " + file("cfg.json") + " --what train --steps 2 --warmup 1 --trace " +
                       file("trace.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* s : {"2 steps after 1 warm-up", "op", "calls", "total ms", "% step", "GFLOP/s", "peak MB",
                        "matmul", "adamw_step", "ops total", "wall"}) {
    EXPECT_NE(r.out.find(s), std::string::npos) << "missing '" << s << "' in:\n" << r.out;
  }
  std::ifstream in(file("trace.json"));
  const json trace = json::parse(in, nullptr, false);
  ASSERT_FALSE(trace.is_discarded()) << "the trace is not valid JSON";
  const std::set<std::string> scopes = event_names(trace, "scope"), ops = event_names(trace, "op");
  for (const char* s : {"train_step", "forward", "backward", "clip", "optimizer"}) EXPECT_TRUE(scopes.count(s)) << s;
  for (const char* s : {"matmul", "attention_fwd", "attention_bwd", "adamw_step"}) EXPECT_TRUE(ops.count(s)) << s;
  int steps = 0;
  for (const json& e : trace.at("traceEvents"))
    if (e.value("name", "") == "train_step") ++steps;
  EXPECT_EQ(steps, 2);  // the warm-up step is not profiled
}

TEST_F(ProfileCli, GenerateProfilesTheDecodeLoop) {
  const Result r = run("profile --config " + file("cfg.json") + " --what generate --steps 1 --warmup 0 " +
                       "--sample_tokens 4 --trace " + file("gen.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("attention_fwd"), std::string::npos) << r.out;
  std::ifstream in(file("gen.json"));
  const json trace = json::parse(in, nullptr, false);
  ASSERT_FALSE(trace.is_discarded());
  EXPECT_TRUE(event_names(trace, "scope").count("generate"));
}

// Every profiled sleep step is a whole consolidation, the first one too: with --warmup 0 the
// learner's first sleep() used to be profiled, which only records the anchor (0.06 ms, no
// consolidation scope at all).
TEST_F(ProfileCli, SleepProfilesAConsolidationEveryStep) {
  const Result r = run("profile --config " + file("cfg.json") + " --what sleep --steps 1 --warmup 0 " +
                       "--model.levels '[{\"period\": 1}, {\"period\": 2, \"n_slots\": 2, \"slot_rank\": 4}]' " +
                       "--trace " + file("sleep.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream in(file("sleep.json"));
  const json trace = json::parse(in, nullptr, false);
  ASSERT_FALSE(trace.is_discarded());
  int consolidations = 0;
  for (const json& e : trace.at("traceEvents"))
    if (e.value("cat", "") == "scope" && e.value("name", "") == "consolidation") ++consolidations;
  EXPECT_EQ(consolidations, 1) << r.out;
  for (const char* s : {"teacher_sampling", "distill", "wake_step"}) EXPECT_TRUE(event_names(trace, "scope").count(s)) << s;
}

TEST_F(ProfileCli, BadWhatFailsClearly) {
  Result r = run("profile --config " + file("cfg.json") + " --what nap --steps 1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--what must be train, generate or sleep"), std::string::npos) << r.out;
  // Sleep profiling needs a receiver level; cfg.json's model has one CMS level.
  r = run("profile --config " + file("cfg.json") + " --what sleep --steps 1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("needs a receiver level 1"), std::string::npos) << r.out;
}

// --steps and --warmup are checked like the other commands' counts (tools/cli_common.h): a short
// message, not CLI11's range with DBL_MAX in all its 309 digits ("Value 0 not in range
// 0.000000 to 179769313486231570814...").
TEST_F(ProfileCli, BadStepsAndWarmupGiveShortMessages) {
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"--steps 0", "--steps: must be > 0, got 0"},
           {"--steps -2", "--steps: must be > 0, got -2"},
           {"--warmup -1", "--warmup: must be >= 0, got -1"}}) {
    const Result r = run("profile --config " + file("cfg.json") + " " + args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.out.find(message), std::string::npos) << args << "\n" << r.out;
    EXPECT_EQ(r.out.find("179769313486231570814"), std::string::npos) << args << "\n" << r.out;
    EXPECT_LT(r.out.size(), 200u) << args << "\n" << r.out;
  }
}

}  // namespace
