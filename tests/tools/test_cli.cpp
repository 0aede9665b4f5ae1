// The `somnus` binary end to end (its path comes from tests/CMakeLists.txt as SOMNUS_CLI_PATH):
// train for a few steps, stop mid-window, --resume, and check that metrics.jsonl equals an
// uninterrupted run's (tokens_per_s aside); generate, eval and tokenizer train on the result;
// bad configs exit non-zero with a message naming the key.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "nn/checkpoint.h"
#include "nn/optim.h"
#include "nn/train_config.h"
#include "nn/transformer.h"
#include "tools/cli_testing.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Result = somnus::testing::CliResult;
using TempDir = somnus::testing::CliTempDir;
const auto run = somnus::testing::run_cli;

// ~24 KB of word-like text from a fixed LCG (no data files needed).
std::string write_corpus(const std::string& path) {
  std::ofstream(path) << somnus::testing::lcg_word_text(somnus::testing::cli_words(), 12345, 24000, 7);
  return path;
}

const auto metrics = somnus::testing::read_metrics;

std::string common_args(const std::string& corpus) {
  // Two CMS levels (period 1 and 2) and gradient accumulation; step 3 is mid-window.
  return "--data " + corpus +
         " --steps 6 --batch_size 2 --grad_accum 2 --vocab_size 300 --eval_every 3 --eval_batches 2"
         " --checkpoint_every 4 --model.n_layer 1 --model.n_embd 32 --model.n_head 2 --model.block_size 16"
         " --model.levels '[{\"period\": 1}, {\"period\": 2}]' --warmup_steps 1 --quiet";
}

// `somnus info` names the OpenBLAS kernels in use. Where OpenBLAS does not recognise the CPU and
// falls back to kernels without AVX2 (e.g. "Prescott" on a virtualised AVX-512 Xeon), the CLI
// runs itself again with OPENBLAS_CORETYPE naming the kernels the CPU can run; a value the user
// set is kept, a pre-AVX2 one included.
TEST(Cli, InfoNamesTheBlasKernelsAndAvoidsTheGenericFallback) {
  const auto info = [](const std::string& env) { return somnus::testing::run_cli_env(env, "info"); };
  const auto kernels_of = [](const std::string& out) {
    const size_t at = out.find("OpenBLAS kernels: ");
    if (at == std::string::npos) return std::string();
    const size_t from = at + std::string("OpenBLAS kernels: ").size();
    return out.substr(from, out.find_first_of(" \n", from) - from);
  };
  const Result own = info("-u OPENBLAS_CORETYPE -u SOMNUS_BLAS_REEXEC");
  ASSERT_EQ(own.code, 0) << own.out;
  const std::string chosen = kernels_of(own.out);
  ASSERT_FALSE(chosen.empty()) << own.out;
  if (own.out.find("set by somnus") != std::string::npos) {
    EXPECT_TRUE(chosen == "SkylakeX" || chosen == "Haswell") << own.out;
  } else {
    EXPECT_NE(own.out.find("(chosen by OpenBLAS)"), std::string::npos) << own.out;
    EXPECT_NE(chosen, "Prescott") << "a generic fallback was kept: " << own.out;
  }
  for (const std::string& user : {"Haswell", "Prescott"}) {
    const Result r = info("-u SOMNUS_BLAS_REEXEC OPENBLAS_CORETYPE=" + user);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(kernels_of(r.out), user) << r.out;
    EXPECT_NE(r.out.find("(OPENBLAS_CORETYPE=" + user + ")"), std::string::npos) << r.out;
  }
}

TEST(Cli, TrainResumeMatchesUninterruptedRun) {
  TempDir dir;
  const std::string corpus = write_corpus(dir.file("corpus.txt"));
  const std::string args = common_args(corpus);

  Result a = run("train " + args + " --out_dir " + dir.file("straight"));
  ASSERT_EQ(a.code, 0) << a.out;
  Result b1 = run("train " + args + " --out_dir " + dir.file("resumed") + " --stop-at 3");
  ASSERT_EQ(b1.code, 0) << b1.out;
  EXPECT_EQ(metrics(dir.file("resumed/metrics.jsonl")).size(), 3u);
  // Without --resume, a run directory with checkpoints is refused.
  Result again = run("train " + args + " --out_dir " + dir.file("resumed"));
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("--resume"), std::string::npos) << again.out;
  Result b2 = run("train " + args + " --out_dir " + dir.file("resumed") + " --resume");
  ASSERT_EQ(b2.code, 0) << b2.out;

  const std::vector<json> ma = metrics(dir.file("straight/metrics.jsonl"));
  const std::vector<json> mb = metrics(dir.file("resumed/metrics.jsonl"));
  ASSERT_EQ(ma.size(), 6u);
  ASSERT_EQ(mb.size(), ma.size());
  for (size_t i = 0; i < ma.size(); ++i) EXPECT_EQ(ma[i], mb[i]) << "metrics line " << i + 1;
  EXPECT_TRUE(ma[2].contains("eval_loss"));
  EXPECT_TRUE(ma[5].contains("eval_ppl"));
  EXPECT_TRUE(fs::exists(dir.file("straight/ckpt-00000006/MANIFEST.json")));
  EXPECT_TRUE(fs::exists(dir.file("straight/tokenizer.json")));
  // The final weights are byte-identical too.
  std::ifstream fa(dir.file("straight/ckpt-00000006/model.safetensors"), std::ios::binary);
  std::ifstream fb(dir.file("resumed/ckpt-00000006/model.safetensors"), std::ios::binary);
  std::stringstream sa, sb;
  sa << fa.rdbuf();
  sb << fb.rdbuf();
  EXPECT_GT(sa.str().size(), 1000u);
  EXPECT_EQ(sa.str(), sb.str());

  // generate / eval / tokenizer on the result.
  Result g = run("generate --ckpt " + dir.file("straight") + " --prompt 'the king' --max-new 8 --seed 1");
  EXPECT_EQ(g.code, 0) << g.out;
  EXPECT_EQ(g.out.rfind("the king", 0), 0u) << g.out;
  Result g2 = run("generate --ckpt " + dir.file("straight") + " --prompt 'the king' --max-new 8 --seed 1");
  EXPECT_EQ(g.out, g2.out) << "generation must be deterministic for a seed";
  std::ofstream(dir.file("qa.jsonl")) << "{\"prompt\": \"the king\", \"answer\": \" and\"}\n"
                                      << "{\"prompt\": \"we shall\", \"answer\": \" learn\"}\n";
  Result e = run("eval --ckpt " + dir.file("straight/ckpt-00000006") + " --data " + corpus + " --qa " +
                 dir.file("qa.jsonl") + " --max-batches 4");
  ASSERT_EQ(e.code, 0) << e.out;
  const json ej = json::parse(e.out.substr(e.out.find('{')));
  EXPECT_GT(ej.at("loss").get<double>(), 0.0);
  EXPECT_NEAR(ej.at("perplexity").get<double>(), std::exp(ej.at("loss").get<double>()), 1e-6);
  EXPECT_EQ(ej.at("qa_examples"), 2);
  Result t = run("tokenizer train --input " + corpus + " --vocab 280 --out " + dir.file("tok.json"));
  EXPECT_EQ(t.code, 0) << t.out;
  EXPECT_TRUE(fs::exists(dir.file("tok.json")));
}

TEST(Cli, BadConfigsFailNamingTheKey) {
  TempDir dir;
  const std::string corpus = write_corpus(dir.file("corpus.txt"));
  auto expect_fail = [&](const std::string& args, const std::string& needle) {
    const Result r = run(args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.out.find(needle), std::string::npos) << args << "\n" << r.out;
  };
  const std::string base = "train --data " + corpus + " --out_dir " + dir.file("run") + " ";
  expect_fail(base + "--stepz 3", "stepz");
  expect_fail(base + "--steps abc", "steps");
  expect_fail(base + "--batch_size 0", "batch_size");
  expect_fail(base + "--model.n_head 5", "n_head");
  expect_fail(base + "--model.bogus 1", "bogus");
  expect_fail(base + "--schedule zigzag", "schedule");
  expect_fail(base + "--resume", "no checkpoint");
  expect_fail(base + "--device tpu", "device");
  std::ofstream(dir.file("bad.json")) << "{\"steps\": 3, \"learning_rate\": 0.1}";
  expect_fail("train --config " + dir.file("bad.json"), "learning_rate");
  std::ofstream(dir.file("broken.json")) << "{\"steps\": 3,";
  expect_fail("train --config " + dir.file("broken.json"), "broken.json");
  expect_fail("train --config " + dir.file("missing.json"), "missing.json");
  expect_fail("train --out_dir " + dir.file("run2"), "data");
  expect_fail("generate --ckpt " + dir.file("nothing") + " --prompt x", "nothing");
  expect_fail("eval --ckpt " + dir.file("run"), "--data");
  expect_fail("tokenizer train --input " + corpus + " --vocab 10 --out " + dir.file("t.json"), "--vocab");
  EXPECT_FALSE(fs::exists(dir.file("run/latest")));
}

// `somnus sleep`: a trained two-level model reads a new document, sleeps and dreams; the
// table, metrics.json and a loadable checkpoint come out. `somnus experiment` lists and
// rejects unknown names.
// A small trained CMS model with receiver slots, a new document, and the arguments of a
// short `somnus sleep` cycle over it (without --out).
std::string sleep_fixture_args(const TempDir& dir);
std::string sleep_fixture(const TempDir& dir) {
  const std::string corpus = write_corpus(dir.file("corpus.txt"));
  const std::string train = "train --data " + corpus + " --out_dir " + dir.file("run") +
                            " --steps 4 --batch_size 2 --vocab_size 300 --eval_every 4 --eval_batches 1"
                            " --checkpoint_every 4 --model.n_layer 1 --model.n_embd 32 --model.n_head 2"
                            " --model.block_size 16 --model.levels '[{\"period\": 1}, {\"period\": 2, \"n_slots\": 2, "
                            "\"slot_rank\": 4}]' --quiet";
  const Result trained = run(train);
  EXPECT_EQ(trained.code, 0) << trained.out;
  write_corpus(dir.file("new.txt"));
  return sleep_fixture_args(dir);
}

// The `somnus sleep` arguments over sleep_fixture's model and document (without --out).
std::string sleep_fixture_args(const TempDir& dir) {
  return "sleep --ckpt " + dir.file("run") + " --data " + dir.file("new.txt") +
         " --set wake_steps=3 --set batch_size=2 --set consolidation.ks.steps=2"
         " --set consolidation.ks.n_samples=2 --set consolidation.ks.batch_size=2"
         " --set consolidation.ks.imitation.group_size=2 --set dream.num_dreams=2"
         " --set dream.top_k=1 --set dream.keep_random=0 --set dream.rest_iterations=1"
         " --set dream.trial_steps=1 --set dream.rest_steps=1 --set dream.apply_steps=1"
         " --set dream.dream_length=4";
}

TEST(Cli, SleepCycleOnANewDocument) {
  TempDir dir;
  const std::string sleep_args = sleep_fixture(dir) + " --out " + dir.file("slept");
  const Result r = run(sleep_args);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* phase : {"| before |", "| wake |", "| sleep |", "| dream |"})
    EXPECT_NE(r.out.find(phase), std::string::npos) << phase << "\n" << r.out;
  const json m = json::parse(std::ifstream(dir.file("slept/metrics.json")));
  EXPECT_EQ(m["table"].size(), 4u);
  EXPECT_FALSE(m["consolidation"]["skipped"].get<bool>());
  EXPECT_EQ(m["wake_loss"].size(), 3u);
  // wake.lr unset: the rate the checkpoint last trained at. The fixture trained 4 steps at
  // lr 1e-3, cosine to 0.1 without warmup; its last step (index 3) ran at
  // 1e-3 · (0.1 + 0.9 · ½(1 + cos(3π/4))).
  const double last_lr = 1e-3 * (0.1 + 0.45 * (1.0 + std::cos(0.75 * M_PI)));
  EXPECT_NEAR(m["config"]["wake"]["lr"].get<double>(), last_lr, 1e-12);
  EXPECT_NE(r.out.find("the rate the checkpoint last trained at"), std::string::npos) << r.out;
  const Result set_lr = run(sleep_fixture_args(dir) + " --out " + dir.file("slept_lr") + " --set wake.lr=0.002");
  ASSERT_EQ(set_lr.code, 0) << set_lr.out;
  EXPECT_EQ(set_lr.out.find("the rate the checkpoint last trained at"), std::string::npos) << set_lr.out;
  EXPECT_EQ(json::parse(std::ifstream(dir.file("slept_lr/metrics.json")))["config"]["wake"]["lr"].get<double>(), 0.002);
  EXPECT_EQ(run("generate --ckpt " + dir.file("slept") + " --prompt the --max-new 4").code, 0);
  const Result bad = run(sleep_args + " --set consolidation.ks.alpha=3");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("'alpha' must be in [0, 1]"), std::string::npos) << bad.out;
  const Result list = run("experiment --list");
  EXPECT_EQ(list.code, 0);
  EXPECT_NE(list.out.find("clinc150"), std::string::npos) << list.out;
  const Result unknown = run("experiment nosuch");
  EXPECT_NE(unknown.code, 0);
  EXPECT_NE(unknown.out.find("unknown experiment 'nosuch'"), std::string::npos) << unknown.out;
  // The experiments run on the CPU only: --device cpu is accepted, cuda refused with why.
  EXPECT_EQ(run("experiment --list --device cpu").code, 0);
  const Result cuda = run("experiment clinc150 --device cuda");
  EXPECT_EQ(cuda.code, 1);
  EXPECT_NE(cuda.out.find("the experiments run on the CPU only"), std::string::npos) << cuda.out;
  const Result typo = run("slep --ckpt x");  // a typo in a script must not pass silently
  EXPECT_EQ(typo.code, 1);
  EXPECT_NE(typo.out.find("unknown command 'slep'"), std::string::npos) << typo.out;
}

// A second `somnus sleep` on a slept checkpoint (which has no training config) wakes at the
// rate the first sleep woke at, not at WakeConfig's from-scratch default (3e-3): measured on
// tools/configs/cms_tiny.json, a second sleep at 3e-3 took the held-out NLL 3.89 -> 4.29.
TEST(Cli, SleepOnASleptCheckpointKeepsItsWakeRate) {
  TempDir dir;
  const std::string args = sleep_fixture(dir) + " --set dreaming=false";
  const Result first = run(args + " --out " + dir.file("s1") + " --set wake.lr=0.0007");
  ASSERT_EQ(first.code, 0) << first.out;
  const std::string again = "sleep --ckpt " + dir.file("s1") + " --data " + dir.file("new.txt") +
                            " --set wake_steps=2 --set batch_size=2 --set consolidation.ks.steps=1"
                            " --set consolidation.ks.n_samples=2 --set consolidation.ks.batch_size=2"
                            " --set consolidation.ks.imitation.group_size=2 --set dreaming=false --out ";
  const Result second = run(again + dir.file("s2"));
  ASSERT_EQ(second.code, 0) << second.out;
  EXPECT_NE(second.out.find("wake.lr 0.0007, the rate the checkpoint last trained at"), std::string::npos)
      << second.out;
  EXPECT_EQ(json::parse(std::ifstream(dir.file("s2/metrics.json")))["config"]["wake"]["lr"].get<double>(), 0.0007);
}

// A chain of `somnus sleep` runs is a continual run: the dream generator ReST-EM trained in one
// goes with its checkpoint (dreamer.safetensors) and the next sleep dreams from it; a sleep
// that does not dream passes it on unchanged; dream.persist_dreamer=false dreams from a fresh
// one and saves none.
TEST(Cli, SleepCarriesTheDreamGeneratorToTheNextSleep) {
  TempDir dir;
  const std::string args = sleep_fixture(dir);
  auto ckpt_file = [&](const std::string& out, const std::string& name) {
    for (const auto& e : std::filesystem::directory_iterator(dir.file(out)))
      if (e.path().filename().string().rfind("ckpt-", 0) == 0) return (e.path() / name).string();
    return std::string();
  };
  auto bytes = [](const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  auto dreamer_metrics = [&](const std::string& out) {
    return json::parse(std::ifstream(dir.file(out + "/metrics.json")))["dream"]["dreamer"];
  };
  const Result first = run(args + " --out " + dir.file("s1"));
  ASSERT_EQ(first.code, 0) << first.out;
  EXPECT_FALSE(dreamer_metrics("s1")["carried"].get<bool>());
  EXPECT_EQ(dreamer_metrics("s1")["runs"].get<int64_t>(), 1);
  const std::string carried = ckpt_file("s1", "dreamer.safetensors");
  ASSERT_TRUE(std::filesystem::exists(carried)) << carried;
  EXPECT_EQ(run("generate --ckpt " + dir.file("s1") + " --prompt the --max-new 4").code, 0);

  std::string again = args;
  const std::string from = "--ckpt " + dir.file("run");
  again.replace(again.find(from), from.size(), "--ckpt " + dir.file("s1"));
  const Result second = run(again + " --out " + dir.file("s2"));
  ASSERT_EQ(second.code, 0) << second.out;
  EXPECT_NE(second.out.find("dreaming from the checkpoint's dream generator (1 runs"), std::string::npos) << second.out;
  EXPECT_TRUE(dreamer_metrics("s2")["carried"].get<bool>());
  EXPECT_EQ(dreamer_metrics("s2")["runs"].get<int64_t>(), 2);
  EXPECT_TRUE(std::filesystem::exists(ckpt_file("s2", "dreamer.safetensors")));

  const Result no_dream = run(again + " --set dreaming=false --out " + dir.file("s3"));
  ASSERT_EQ(no_dream.code, 0) << no_dream.out;
  EXPECT_EQ(bytes(ckpt_file("s3", "dreamer.safetensors")), bytes(carried)) << "a sleep without dreaming passes it on";

  const Result fresh = run(again + " --set dream.persist_dreamer=false --out " + dir.file("s4"));
  ASSERT_EQ(fresh.code, 0) << fresh.out;
  EXPECT_EQ(fresh.out.find("dreaming from the checkpoint's dream generator"), std::string::npos) << fresh.out;
  EXPECT_FALSE(dreamer_metrics("s4")["carried"].get<bool>());
  EXPECT_EQ(dreamer_metrics("s4")["runs"].get<int64_t>(), 1);
  EXPECT_FALSE(std::filesystem::exists(ckpt_file("s4", "dreamer.safetensors")));

  // Another adapter shape (a different rank) is refused with the way out named, before the
  // wake: no step taken, no progress checkpoint written, no held-out row measured.
  const Result other = run(again + " --set dream.lora.rank=2 --out " + dir.file("s5"));
  EXPECT_NE(other.code, 0);
  EXPECT_NE(other.out.find("does not fit this run's dream.lora"), std::string::npos) << other.out;
  EXPECT_NE(other.out.find("dream.persist_dreamer=false"), std::string::npos) << other.out;
  EXPECT_EQ(other.out.find("held-out NLL"), std::string::npos) << "refused after work began: " << other.out;
  EXPECT_FALSE(std::filesystem::exists(dir.file("s5/progress")));
}

// A model whose receiver slots are all taken by earlier sleeps is refused before the wake
// phase (it used to wake for wake_steps, then fail in the sleep phase), and
// on_exhausted=evict_oldest (or merge_oldest) still sleeps it.
TEST(Cli, SleepWithEveryReceiverSlotTakenFailsBeforeWaking) {
  TempDir dir;
  sleep_fixture(dir);  // two receiver slots
  const std::string small = " --data " + dir.file("new.txt") +
                            " --set wake_steps=2 --set batch_size=2 --set consolidation.ks.steps=1"
                            " --set consolidation.ks.n_samples=2 --set consolidation.ks.batch_size=2"
                            " --set consolidation.ks.imitation.group_size=2 --set dreaming=false";
  std::string ckpt = dir.file("run");
  for (const char* out : {"s1", "s2"}) {
    const Result r = run("sleep --ckpt " + ckpt + small + " --out " + dir.file(out));
    ASSERT_EQ(r.code, 0) << r.out;
    ckpt = dir.file(out);
  }
  const Result full = run("sleep --ckpt " + ckpt + small + " --out " + dir.file("s3"));
  EXPECT_EQ(full.code, 1) << full.out;
  EXPECT_NE(full.out.find("no free slot in receiver level 1"), std::string::npos) << full.out;
  EXPECT_EQ(full.out.find("[before]"), std::string::npos) << "refused before anything ran\n" << full.out;
  EXPECT_FALSE(fs::exists(dir.file("s3/progress")));
  const Result evict =
      run("sleep --ckpt " + ckpt + small + " --out " + dir.file("s4") + " --set consolidation.on_exhausted=evict_oldest");
  EXPECT_EQ(evict.code, 0) << evict.out;
  EXPECT_NE(evict.out.find("| sleep |"), std::string::npos) << evict.out;
  // evict_oldest across runs: s4 evicted slot 0 (from s1); the next sleep evicts slot 1 (from
  // s2), not slot 0 again (which holds what s4 just consolidated): the sleep checkpoint keeps
  // the slots' activation order.
  auto evicted = [&](const char* out) {
    return json::parse(std::ifstream(dir.file(std::string(out) + "/metrics.json")))["consolidation"]["evicted_slots"];
  };
  EXPECT_EQ(evicted("s4"), json::array({0}));
  const Result next = run("sleep --ckpt " + dir.file("s4") + small + " --out " + dir.file("s5") +
                          " --set consolidation.on_exhausted=evict_oldest");
  ASSERT_EQ(next.code, 0) << next.out;
  EXPECT_EQ(evicted("s5"), json::array({1}));
  // merge_oldest passes the full-receiver check too, and takes the oldest slot the same way
  // (slot 0, from s4), distilling what it held into the new occupant.
  const Result merge = run("sleep --ckpt " + dir.file("s5") + small + " --out " + dir.file("s6") +
                           " --set consolidation.on_exhausted=merge_oldest");
  ASSERT_EQ(merge.code, 0) << merge.out;
  EXPECT_EQ(evicted("s6"), json::array({0}));
  EXPECT_EQ(json::parse(std::ifstream(dir.file("s6/metrics.json")))["config"]["consolidation"]["on_exhausted"],
            "merge_oldest");
}

// cycle.png leaves out a panel without data: with wake_steps = 0 (or no seeding steps)
// gnuplot used to stop at the empty data file, yet the run said it wrote cycle.png.
TEST(Cli, SleepPlotsWithoutWakeOrSeedingSteps) {
  if (std::system("gnuplot --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot is not installed";
  TempDir dir;
  const std::string args = sleep_fixture(dir) + " --set dreaming=false";
  for (const char* set : {"wake_steps=0", "consolidation.ks.steps=0"}) {
    const std::string out = dir.file(std::string("s_") + set);
    const Result r = run(args + " --set " + set + " --out '" + out + "'");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(r.out.find("gnuplot failed"), std::string::npos) << set << "\n" << r.out;
    EXPECT_TRUE(fs::exists(out + "/cycle.png")) << set << "\n" << r.out;
  }
  const Result none = run(args + " --set wake_steps=0 --set consolidate=false --out " + dir.file("none"));
  ASSERT_EQ(none.code, 0) << none.out;
  EXPECT_EQ(none.out.find("/cycle.png"), std::string::npos) << "no plot is claimed\n" << none.out;
  EXPECT_FALSE(fs::exists(dir.file("none/cycle.png")));
}

// `somnus sleep`'s progress lines reach a pipe as they are printed: a run killed in its wake
// phase has already shown "[before]" (stdout was block-buffered, so a piped or logged run
// showed nothing until the end, and a killed one nothing at all).
TEST(Cli, SleepProgressReachesAPipeBeforeTheRunEnds) {
  TempDir dir;
  const std::string args = sleep_fixture(dir) + " --set wake_steps=1000000 --checkpoint-every 0 --out " + dir.file("s");
  const std::string cmd = "OMP_NUM_THREADS=1 timeout -s KILL 5 '" + std::string(SOMNUS_CLI_PATH) + "' " + args + " 2>&1";
  Result r;
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
  ::pclose(p);
  EXPECT_NE(r.out.find("[before] held-out NLL"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("[wake]"), std::string::npos) << "the run was to be killed while awake\n" << r.out;
}

// metrics.json without its wall-clock fields.
json strip_timing(json j) {
  if (j.is_object()) {
    json out = json::object();
    for (auto& [k, v] : j.items())
      if (k != "seconds" && k != "tokens_per_s") out[k] = strip_timing(v);
    return out;
  }
  if (j.is_array())
    for (auto& v : j) v = strip_timing(v);
  return j;
}

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// `somnus sleep` stopped inside the wake phase and again after the sleep phase, then resumed,
// ends bit-identical to an uninterrupted cycle; a resume with other arguments is refused, and
// so is a second run into a used --out.
TEST(Cli, SleepResumesBitExactly) {
  TempDir dir;
  const std::string args = sleep_fixture(dir);
  const Result ref = run(args + " --out " + dir.file("ref"));
  ASSERT_EQ(ref.code, 0) << ref.out;
  const std::string out = " --out " + dir.file("b");
  const Result first = run(args + out + " --stop-at 2 --checkpoint-every 1");
  ASSERT_EQ(first.code, 0) << first.out;
  EXPECT_NE(first.out.find("stopped at progress step 2"), std::string::npos) << first.out;
  EXPECT_FALSE(fs::exists(dir.file("b/metrics.json")));
  const Result other = run(args + out + " --resume --set consolidation.ks.steps=3");
  EXPECT_NE(other.code, 0);
  EXPECT_NE(other.out.find("other inputs or another config"), std::string::npos) << other.out;
  const Result past = run(args + out + " --resume --stop-at 5");  // wake_steps + 1 = 4 is the last
  EXPECT_NE(past.code, 0);
  EXPECT_NE(past.out.find("past the last progress step"), std::string::npos) << past.out;
  const Result behind = run(args + out + " --resume --stop-at 1");  // the run stands at 2: it would run to the end
  EXPECT_NE(behind.code, 0);
  EXPECT_NE(behind.out.find("--stop-at 1 is not after"), std::string::npos) << behind.out;
  EXPECT_FALSE(fs::exists(dir.file("b/metrics.json")));
  const Result fresh = run(args + out);
  EXPECT_NE(fresh.code, 0);
  EXPECT_NE(fresh.out.find("pass --resume"), std::string::npos) << fresh.out;
  const Result second = run(args + out + " --resume --stop-at 4");  // wake_steps + 1: after the sleep phase
  ASSERT_EQ(second.code, 0) << second.out;
  EXPECT_NE(second.out.find("resumed from"), std::string::npos) << second.out;
  EXPECT_NE(second.out.find("[sleep]"), std::string::npos) << second.out;
  const Result last = run(args + out + " --resume");
  ASSERT_EQ(last.code, 0) << last.out;
  EXPECT_EQ(last.out.find("[sleep]"), std::string::npos) << "the sleep phase does not rerun\n" << last.out;
  EXPECT_FALSE(fs::exists(dir.file("b/progress"))) << "progress checkpoints are removed at the end";

  const json a = strip_timing(json::parse(std::ifstream(dir.file("ref/metrics.json"))));
  const json b = strip_timing(json::parse(std::ifstream(dir.file("b/metrics.json"))));
  EXPECT_EQ(a, b);
  EXPECT_EQ(file_bytes(dir.file("ref/ckpt-00000003/model.safetensors")),
            file_bytes(dir.file("b/ckpt-00000003/model.safetensors")));
  const Result done = run(args + out + " --resume");
  EXPECT_EQ(done.code, 0) << done.out;
  EXPECT_NE(done.out.find("is complete"), std::string::npos) << done.out;
}

// A progress checkpoint written before the wake optimiser gave the sender level groups of its
// own (6fc7f10: "<group>.sender" where the sender's period is shared, here with attention) has
// the old layout, transformer_param_groups; --resume cannot carry its state over and must say
// why and what to do, not only "4 parameter groups saved, this optimizer has 6".
TEST(Cli, SleepResumeOfAProgressCheckpointWithTheOldOptimiserLayoutSaysWhy) {
  TempDir dir;
  const std::string args = sleep_fixture(dir);
  const std::string out = " --out " + dir.file("b");
  const Result first = run(args + out + " --stop-at 1 --checkpoint-every 1");
  ASSERT_EQ(first.code, 0) << first.out;
  // The same checkpoint, but its optimiser state in the layout of a somnus before 6fc7f10.
  const std::string root = dir.file("b/progress");
  const std::optional<std::string> p = somnus::nn::latest_checkpoint(root);
  ASSERT_TRUE(p.has_value());
  const std::shared_ptr<somnus::nn::Transformer> model = somnus::nn::load_transformer(*p);
  const somnus::AdamW old(somnus::nn::transformer_param_groups(*model, 1e-3, 0.0));
  somnus::nn::CheckpointSave save;
  save.model = model.get();
  save.model_config = somnus::nn::read_checkpoint_json(*p, "model_config.json");
  save.optimizer = &old;
  save.state = somnus::nn::read_checkpoint_json(*p, "train_state.json").get<somnus::nn::TrainState>();
  save.extra_tensors["anchor.safetensors"] = somnus::nn::read_checkpoint_tensors(*p, "anchor.safetensors");
  save.extra_files["tokenizer.json"] = somnus::nn::read_checkpoint_file(*p, "tokenizer.json");
  fs::remove_all(root);
  somnus::nn::save_checkpoint(root, save);
  const Result resumed = run(args + out + " --resume");
  EXPECT_NE(resumed.code, 0) << resumed.out;
  EXPECT_NE(resumed.out.find("sleep --resume: " + *p), std::string::npos) << resumed.out;
  EXPECT_NE(resumed.out.find("p1.decay.sender"), std::string::npos) << resumed.out;
  EXPECT_NE(resumed.out.find("start the run again in a new --out"), std::string::npos) << resumed.out;
}

// cycle.png of a one-step wake and a one-step seeding (one point per panel: "empty x range"
// and "empty y range" warnings, two of each) and of a document whose name holds a quote (it
// ended the gnuplot title string: no plot).
TEST(Cli, SleepPlotsOnePointPanelsAndAQuotedFileName) {
  if (std::system("gnuplot --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot is not installed";
  TempDir dir;
  std::string args = sleep_fixture(dir) + " --set dreaming=false --set wake_steps=1 --set consolidation.ks.steps=1";
  const std::string quoted = dir.file("it's.txt");
  fs::copy_file(dir.file("new.txt"), quoted);
  args.replace(args.find(dir.file("new.txt")), dir.file("new.txt").size(), "\"" + quoted + "\"");
  const Result r = run(args + " --out " + dir.file("s"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find("arning:"), std::string::npos) << r.out;  // gnuplot's "Warning:"
  EXPECT_EQ(r.out.find("gnuplot failed"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(dir.file("s/cycle.png"))) << r.out;
}

// `somnus experiment`'s plots come out without a gnuplot message: the accuracy heatmap draws one
// box per measured cell (its `matrix with image` of NaN-padded rows warned "matrix contains
// missing or undefined values" twice per method, six lines in the demo), the bars of a run
// whose accuracies are all 0 no longer give "empty y range", and translation's chrF matrix
// (0-100) is coloured on its own scale, not clipped to an accuracy's [0, 1].
TEST(Cli, ExperimentPlotsWithoutGnuplotWarnings) {
  if (std::system("gnuplot --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot is not installed";
  const std::string data = std::string(SOMNUS_SOURCE_DIR) + "/../shared/data";
  if (!fs::is_directory(data + "/clinc150")) GTEST_SKIP() << "no CLINC150 data at " << data;
  ::setenv("SOMNUS_DATA_DIR", data.c_str(), 1);
  TempDir dir;
  const Result r = run("experiment clinc150 --config tiny --set 'seeds=[0]' --set steps_per_domain=1"
                       " --set num_domains=3 --set 'methods=[\"icl\",\"sft\"]' --set train_per_intent=2"
                       " --set test_per_intent=2 --out " + dir.file("clinc"));
  ::unsetenv("SOMNUS_DATA_DIR");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* bad : {"warning:", "Warning:", "gnuplot failed"})
    EXPECT_EQ(r.out.find(bad), std::string::npos) << bad << "\n" << r.out;
  for (const char* png : {"bars.png", "curves.png", "heatmap.png"})
    EXPECT_GT(fs::file_size(dir.file(std::string("clinc/") + png)), 0u) << png;
  // One line "j i accuracy" per measured cell: after task i, tasks 0..i (3 tasks: 6 cells).
  std::ifstream cells(dir.file("clinc/matrix_sft.dat"));
  std::vector<std::pair<int, int>> seen;
  for (int j, i; cells >> j >> i;) {
    double acc;
    cells >> acc;
    EXPECT_LE(j, i);
    EXPECT_TRUE(acc >= 0.0 && acc <= 1.0) << acc;
    seen.emplace_back(i, j);
  }
  EXPECT_EQ(seen.size(), 6u);

  const Result t = run("experiment translation --config tiny --set 'seeds=[0]' --set steps=2 --set num_train=20"
                       " --set num_test=2 --set consolidation.ks.steps=1 --out " + dir.file("tr"));
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_EQ(t.out.find("arning:"), std::string::npos) << t.out;
  std::stringstream gp;
  gp << std::ifstream(dir.file("tr/heatmap.gp")).rdbuf();
  EXPECT_NE(gp.str().find("set cbrange [0:100]"), std::string::npos) << gp.str();
  EXPECT_NE(gp.str().find("chrF after task i"), std::string::npos) << gp.str();
}

// `somnus experiment --out DIR` into a folder that holds a previous run's files is refused
// unless --overwrite, which removes only the files an experiment writes (it used to write over
// them and keep the rest: a run with fewer rows left the earlier run's matrix_<row>.dat, and a
// --no-plot run the earlier plots, mixed with the new result.json). Other files stay.
// A bad value in a --config file is blamed on the file by name (it used to say "experiment
// clinc150 config: ...", which a user with several config files could not place), before any
// folder is made; a bad --set on top of a good file is still blamed on the --set.
TEST(Cli, ExperimentBadConfigFileIsNamed) {
  TempDir dir;
  const std::string bad = dir.file("my_clinc.json");
  std::ofstream(bad) << R"({"seeds": [-1]})";
  const std::string out = dir.file("never");
  const Result r = run("experiment clinc150 --config " + bad + " --out " + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--config " + bad + ": "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'seeds'"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out));
  const std::string good = dir.file("ok.json");
  std::ofstream(good) << R"({"seeds": [0]})";
  const Result s = run("experiment clinc150 --config " + good + " --set 'seeds=[-1]' --out " + out);
  EXPECT_NE(s.code, 0);
  EXPECT_NE(s.out.find("--set seeds=[-1]"), std::string::npos) << s.out;
  EXPECT_EQ(s.out.find("--config " + good), std::string::npos) << s.out;
  // A method the experiment cannot build is found when the run starts, after the folder is
  // made; the folder is removed again (it was left empty), and a folder that was there stays.
  const Result m = run("experiment clinc150 --config tiny --set 'methods=[\"nosuch\"]' --out " + out);
  EXPECT_NE(m.code, 0);
  EXPECT_NE(m.out.find("nosuch"), std::string::npos) << m.out;
  EXPECT_FALSE(fs::exists(out)) << "an empty folder was left behind";
  fs::create_directories(out);
  EXPECT_NE(run("experiment clinc150 --config tiny --set 'methods=[\"nosuch\"]' --out " + out).code, 0);
  EXPECT_TRUE(fs::exists(out)) << "a folder the user made was removed";
}

TEST(Cli, ExperimentOutRefusesAPreviousRunUnlessOverwrite) {
  TempDir dir;
  const std::string out = dir.file("exp");
  fs::create_directories(out);
  std::ofstream(out + "/notes.txt") << "mine\n";  // an unrelated file: allowed, and kept
  const std::string quick =
      "experiment translation --config tiny --set 'seeds=[0]' --set steps=2 --set num_train=20 --set num_test=2"
      " --set consolidation.ks.steps=1 --out " + out;
  const Result a = run(quick + " --set 'rows=[{\"label\":\"icl\",\"method\":\"icl\"},{\"label\":\"sft\",\"method\":\"sft\"}]'");
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_TRUE(fs::exists(out + "/matrix_sft.dat"));
  ASSERT_TRUE(fs::exists(out + "/heatmap.gp"));
  std::stringstream first;
  first << std::ifstream(out + "/result.json").rdbuf();

  const std::string icl_only = " --set 'rows=[{\"label\":\"icl\",\"method\":\"icl\"}]'";
  const Result again = run(quick + icl_only + " --no-plot");
  EXPECT_NE(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("experiment: --out " + out + " holds a previous run's files (result.json"), std::string::npos)
      << again.out;
  EXPECT_NE(again.out.find("--overwrite"), std::string::npos) << again.out;
  // Every file --overwrite would remove is named, not the first four and a count.
  for (const char* name : {"matrix_icl.dat", "matrix_sft.dat", "heatmap.gp", "bars.png"})
    EXPECT_NE(again.out.find(name), std::string::npos) << name << " not named: " << again.out;
  EXPECT_EQ(again.out.find(" more)"), std::string::npos) << again.out;
  std::stringstream still;
  still << std::ifstream(out + "/result.json").rdbuf();
  EXPECT_TRUE(still.str() == first.str()) << "a refused run leaves the previous one as it was";

  const Result b = run(quick + icl_only + " --no-plot --overwrite");
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_EQ(b.out.find("and the plots"), std::string::npos) << b.out;
  EXPECT_TRUE(fs::exists(out + "/result.json"));
  EXPECT_TRUE(fs::exists(out + "/table.md"));
  for (const char* stale : {"matrix_icl.dat", "matrix_sft.dat", "heatmap.gp", "heatmap.png", "bars.dat", "bars.gp", "bars.png"})
    EXPECT_FALSE(fs::exists(out + "/" + stale)) << stale << " of the previous run is still there";
  EXPECT_TRUE(fs::exists(out + "/notes.txt")) << "--overwrite removed a file the experiment does not write";
  const json r = json::parse(std::ifstream(out + "/result.json"));
  ASSERT_EQ(r.at("methods").size(), 1u);
  EXPECT_EQ(r.at("methods")[0].at("method"), "icl");
}

}  // namespace
