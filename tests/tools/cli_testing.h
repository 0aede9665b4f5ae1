// Helpers shared by the tests that run the `somnus` binary (its path comes from
// tests/CMakeLists.txt as SOMNUS_CLI_PATH): run a command line and capture its exit code and
// output, and a per-test temporary directory.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#ifndef SOMNUS_CLI_PATH
#error "SOMNUS_CLI_PATH must name the somnus binary"
#endif

namespace somnus::testing {

struct CliResult {
  int code = -1;
  std::string out;  // stdout and stderr together
};

// `somnus <args>` with one OpenMP thread (tests run in parallel), under `env <env>` when env
// is given (e.g. "-u OPENBLAS_CORETYPE").
inline CliResult run_cli_env(const std::string& env, const std::string& args) {
  const std::string cmd = (env.empty() ? std::string() : "env " + env + " ") +
                          "OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE '" + SOMNUS_CLI_PATH + "' " + args + " 2>&1";
  CliResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}
inline CliResult run_cli(const std::string& args) { return run_cli_env("", args); }

// A fresh directory named after the prefix, the process and the running test; removed at the end.
struct CliTempDir {
  std::string path;
  explicit CliTempDir(const std::string& prefix = "somnus_cli") {
    path = (std::filesystem::temp_directory_path() /
            (prefix + "_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~CliTempDir() { std::filesystem::remove_all(path); }
  CliTempDir(const CliTempDir&) = delete;
  CliTempDir& operator=(const CliTempDir&) = delete;
  std::string file(const std::string& name) const { return path + "/" + name; }
};

// The lines of a metrics.jsonl without tokens_per_s (timing, the only field that may differ
// between two runs of the same config).
inline std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::ifstream f(path);
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(f, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    j.erase("tokens_per_s");
    out.push_back(j);
  }
  return out;
}

// Word-like text of at least min_bytes from a fixed LCG (no data files needed): each word is
// words[(s >> 33) % n], followed by ".\n" when (s >> 20) % newline_every == 0, else a space.
inline std::string lcg_word_text(const std::vector<std::string>& words, uint64_t seed, size_t min_bytes,
                                 uint64_t newline_every) {
  uint64_t s = seed;
  std::string text;
  while (text.size() < min_bytes) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    text += words[(s >> 33) % words.size()];
    text += ((s >> 20) % newline_every == 0) ? ".\n" : " ";
  }
  return text;
}

// The 16 words of the CLI tests' corpora.
inline const std::vector<std::string>& cli_words() {
  static const std::vector<std::string> w = {"the", "king",   "and",   "queen", "of", "sleep", "dream", "wakes",
                                             "in",  "a",      "castle", "night", "we", "shall", "learn", "slowly"};
  return w;
}

}  // namespace somnus::testing
