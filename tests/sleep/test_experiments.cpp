// Smoke test of the reproduction suite: every registered experiment runs end to end with a
// micro config (one seed, a few steps, a tiny model) merged over its tiny config, and its
// result has the promised structure: a row per method with per-seed metrics, every table
// metric finite and in range, aggregates, a markdown table with a line per method, and the
// "matrix" / "avg_acc_curve" arrays the CLI plots. Experiments that need ../shared/data skip
// (GTEST_SKIP) when it is not found. Per experiment it also checks what only some rows have:
// ARC's dream scores on the rows that dream (SEAL, Sleep) and on no other, knowledge's
// cpt_only rows, clinc150's ablation rows, long_horizon's two readers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <set>
#include <stdexcept>

#include "nn/transformer.h"
#include "sleep/experiment.h"
#include "sleep/tasks/arc1d.h"
#include "sleep/tasks/data_dir.h"
#include "tensor/error.h"
#include "testing.h"

using namespace somnus;
using namespace somnus::sleep;
using nlohmann::json;

namespace {

// Finds ../shared/data next to the source tree (ctest runs from the build directory) and
// points SOMNUS_DATA_DIR at it so the experiments' loaders see it. False when absent.
bool have_data() {
  std::vector<std::string> extra;
#ifdef SOMNUS_SOURCE_DIR
  extra.push_back(std::string(SOMNUS_SOURCE_DIR) + "/../shared/data");
#endif
  extra.push_back((std::filesystem::path(__FILE__).parent_path() / "../../../shared/data").lexically_normal().string());
  const auto dir = try_find_data_dir(extra);
  if (!dir) return false;
  if (std::getenv("SOMNUS_DATA_DIR") == nullptr) setenv("SOMNUS_DATA_DIR", dir->string().c_str(), 1);
  return true;
}

json micro_model(int64_t block, int64_t n_levels = 2) {
  json levels = json::array();
  for (int64_t i = 0; i < n_levels; ++i)
    levels.push_back({{"kind", "dense"}, {"period", i == 0 ? 1 : 4 * i}, {"hidden", 32}, {"n_slots", 2}, {"slot_rank", 2}});
  return {{"n_layer", 1}, {"n_embd", 16}, {"n_head", 2}, {"block_size", block}, {"levels", levels}};
}

const json kDream = {{"num_dreams", 2}, {"dream_length", 6}, {"top_k", 1}, {"keep_random", 0}, {"trial_steps", 1},
                     {"rest_iterations", 1}, {"rest_steps", 1}, {"apply_steps", 1}};
const json kConsolidation = {{"ks", {{"n_samples", 2}, {"sample_tokens", 6}, {"steps", 1}, {"batch_size", 2}}}};

json micro_config(const std::string& name) {
  if (name == "clinc150") {
    return {{"methods", {"icl", "sft", "sleep"}},
            {"seeds", {0}},
            {"num_domains", 2},
            {"train_per_intent", 2},
            {"test_per_intent", 1},
            {"vocab_size", 300},
            {"model", micro_model(64)},
            {"steps_per_domain", 2},
            {"batch_size", 4},
            {"eval_max_new_tokens", 3},
            {"method_configs", {{"sleep", {{"consolidation", kConsolidation}, {"dream", kDream}}}}},
            {"ablations", json::parse(R"J([{"label": "sleep-no-imitation", "method": "sleep",
                                            "config": {"consolidation": {"ks": {"alpha": 1.0}}}}])J")}};
  }
  if (name == "knowledge") {
    return {{"seeds", {0}},          {"num_pretrain_entities", 3}, {"num_eval_entities", 1}, {"cpt_passages", 2},
            {"vocab_size", 300},     {"model", micro_model(128)},  {"pretrain_steps", 2},    {"pretrain_batch", 4},
            {"steps", 2},            {"batch_size", 2},            {"dream", kDream},        {"consolidation", kConsolidation},
            {"eval_max_new_tokens", 3}};
  }
  if (name == "arc") {
    return {{"seeds", {0}},          {"num_pretrain_tasks", 8},   {"num_eval_tasks", 1}, {"vocab_size", 270},
            {"model", micro_model(160)}, {"pretrain_steps", 2},   {"pretrain_batch", 4}, {"steps", 2},
            {"batch_size", 2},       {"dream", kDream},           {"consolidation", kConsolidation},
            {"eval_max_new_tokens", 4}};
  }
  if (name == "long_horizon") {
    return {{"rows", json::parse(R"J([{"label": "1 level", "levels": 1, "slowest_period": 1},
                                      {"label": "4 levels", "levels": 4, "slowest_period": 8},
                                      {"label": "4 levels mf", "levels": 4, "slowest_period": 8,
                                       "reader": "multifrequency"},
                                      {"label": "2 levels rs01", "levels": 2, "ttt_levels": [0, 1]}])J")},
            {"seeds", {0}},
            {"vocab_size", 280},
            {"tokenizer_chars", 2000},
            {"model", {{"n_layer", 1}, {"n_embd", 16}, {"n_head", 2}, {"block_size", 256}}},
            {"task", "fact_chains"},
            {"num_people", 1},
            {"num_objects", 1},
            {"num_events", 1},
            {"num_questions", 1},
            {"short_chars", 100},
            {"level_hidden", 32},
            {"num_pretrain", 4},
            {"num_short_eval", 1},
            {"num_long_eval", 2},
            {"long_chars", 400},
            {"pretrain_steps", 2},
            {"pretrain_batch", 4},
            {"ttt_chunk", 32},
            {"eval_max_new_tokens", 3}};
  }
  if (name == "translation") {
    json c = {{"seeds", {0}},       {"num_train", 6}, {"num_test", 2}, {"vocab_size", 300}, {"model", micro_model(64)},
              {"steps", 2},         {"batch_size", 4}, {"consolidation", kConsolidation}, {"eval_max_new_tokens", 4}};
    c["rows"] = json::array({json{{"label", "icl"}, {"method", "icl"}},
                             json{{"label", "sft-1lv"}, {"method", "sft"}, {"model", micro_model(64, 1)}},
                             json{{"label", "sleep-3lv"}, {"method", "sleep"}, {"model", micro_model(64, 3)}}});
    return c;
  }
  return json::object();
}

bool needs_data(const std::string& name) { return name == "clinc150" || name == "long_horizon"; }

// [lo, hi] for a table metric ("seconds" >= 0, chrF in [0, 100], accuracies in [0, 1]).
std::pair<double, double> metric_range(const std::string& metric) {
  if (metric == "seconds") return {0.0, 1e9};
  if (metric.rfind("chrf", 0) == 0) return {0.0, 100.0};
  if (metric == "forgetting") return {-1.0, 1.0};
  return {0.0, 1.0};
}

// Table metrics that some rows of an experiment lack by design (shown as "—").
bool optional_metric(const std::string& name, const std::string& metric) {
  if (name == "arc") return metric == "dream_correct_frac" || metric == "trial_solve_frac";
  if (name == "knowledge") return metric == "single_passage_acc";
  return false;
}

void check_result(const ExperimentResult& r, const std::string& name, size_t n_rows) {
  EXPECT_EQ(r.experiment, name);
  EXPECT_FALSE(r.date.empty());
  EXPECT_GE(r.seconds, 0.0);
  ASSERT_FALSE(r.table_metrics.empty());
  ASSERT_EQ(r.methods.size(), n_rows);
  const std::string table = r.markdown_table();
  std::set<std::string> labels;
  for (const MethodRun& m : r.methods) {
    labels.insert(m.method);
    ASSERT_EQ(m.seeds.size(), 1u) << m.method;
    EXPECT_EQ(m.seeds[0].seed, 0u);
    const json& met = m.seeds[0].metrics;
    const json agg = m.aggregate();
    for (const std::string& key : r.table_metrics) {
      if (!met.contains(key) && optional_metric(name, key)) {
        EXPECT_FALSE(agg.contains(key)) << key;
        continue;
      }
      ASSERT_TRUE(met.contains(key) && met[key].is_number()) << name << " / " << m.method << " lacks " << key;
      const double v = met[key].get<double>();
      const auto [lo, hi] = metric_range(key);
      EXPECT_TRUE(std::isfinite(v)) << key;
      EXPECT_GE(v, lo) << name << " / " << m.method << " / " << key;
      EXPECT_LE(v, hi) << name << " / " << m.method << " / " << key;
      ASSERT_TRUE(agg.contains(key)) << key;
      EXPECT_DOUBLE_EQ(agg[key]["mean"].get<double>(), v);
      EXPECT_DOUBLE_EQ(agg[key]["std"].get<double>(), 0.0);
    }
    if (met.contains("matrix")) {
      ASSERT_TRUE(met["matrix"].is_array());
      for (const json& row : met["matrix"]) EXPECT_EQ(row.size(), met["matrix"].size());
    }
    EXPECT_NE(table.find("| " + m.method + " |"), std::string::npos) << table;
  }
  EXPECT_EQ(labels.size(), n_rows) << "row labels must be distinct";
  // header + rule + one line per method
  EXPECT_EQ(static_cast<size_t>(std::count(table.begin(), table.end(), '\n')), n_rows + 2) << table;
  const json j = r.to_json();
  EXPECT_EQ(j.at("methods").size(), n_rows);
}

size_t expected_rows(const std::string& name, const json& micro) {
  const json cfg = find_experiment(name).tiny;
  if (micro.contains("rows")) return micro["rows"].size();
  if (micro.contains("methods")) return micro["methods"].size() + micro.value("ablations", json::array()).size();
  return cfg.contains("rows") ? cfg["rows"].size() : cfg["methods"].size();
}

const MethodRun& row_named(const ExperimentResult& r, const std::string& label) {
  for (const MethodRun& m : r.methods)
    if (m.method == label) return m;
  throw std::runtime_error("no row " + label);
}

// What only some rows have (see the header comment).
void check_row_specifics(const ExperimentResult& r, const std::string& name) {
  if (name == "arc") {
    for (const MethodRun& m : r.methods) {
      const json& met = m.seeds[0].metrics;
      const bool dreams = m.method == "seal" || m.method == "sleep" || m.method == "sleep-no-selection";
      EXPECT_EQ(met.contains("dream_correct_frac"), dreams) << m.method;
      EXPECT_EQ(met.contains("trial_solve_frac"), dreams) << m.method;
      if (!dreams) continue;
      // micro config: 2 dreams per task, 1 task, 1 iteration; Sleep tries its top 1, SEAL both.
      EXPECT_EQ(met["dreams_sampled"].get<int64_t>(), 2) << m.method;
      EXPECT_EQ(met["dreams_tried"].get<int64_t>(), m.method == "sleep" ? 1 : 2) << m.method;
      EXPECT_LE(met["dream_novel_frac"].get<double>(), met["dream_correct_frac"].get<double>());
    }
  }
  if (name == "knowledge") {
    const json cpt_only = find_experiment("knowledge").tiny.at("cpt_only");
    // The base is pretrained: sleep rows anchor at the start, so the single-passage sleep
    // consolidates and every ablation row has both settings.
    EXPECT_TRUE(find_experiment("knowledge").tiny.at("sleep").at("anchor_at_start").get<bool>());
    EXPECT_TRUE(cpt_only.empty());
    for (const MethodRun& m : r.methods) {
      const bool skipped = std::find(cpt_only.begin(), cpt_only.end(), m.method) != cpt_only.end();
      EXPECT_EQ(m.seeds[0].metrics.contains("single_passage_acc"), !skipped) << m.method;
      EXPECT_TRUE(m.seeds[0].metrics.contains("cpt_acc")) << m.method;
    }
    for (const char* label : {"sleep-no-selection", "sleep-no-imitation", "sleep-no-semantic-reward",
                              "sleep-cosine-semantic-reward", "sleep-no-expansion", "sleep-no-dream"})
      EXPECT_NO_THROW((void)row_named(r, label)) << label;
    // r_sem: the answer after "\nA:" (PARADIGM §2: the task has answers); the ablation's cosine.
    EXPECT_NE(row_named(r, "sleep").seeds[0].metrics.dump().find(R"("semantic_reward":"answer_match, else hidden_cosine")"),
              std::string::npos);
    EXPECT_NE(row_named(r, "sleep-cosine-semantic-reward")
                  .seeds[0]
                  .metrics.dump()
                  .find(R"("semantic_reward":"hidden_cosine")"),
              std::string::npos);
  }
  if (name == "clinc150") {
    EXPECT_NO_THROW((void)row_named(r, "sleep-no-imitation"));
    // r_sem is the intent-label match (PARADIGM §2: the task has an answer field).
    EXPECT_NE(row_named(r, "sleep").seeds[0].metrics.dump().find(R"("semantic_reward":"answer_match, else hidden_cosine")"),
              std::string::npos);
  }
  if (name == "long_horizon") {
    EXPECT_EQ(row_named(r, "1 level").seeds[0].metrics["reader"], "multifrequency");
    EXPECT_EQ(row_named(r, "4 levels").seeds[0].metrics["reader"], "read_stream");
    EXPECT_EQ(row_named(r, "4 levels mf").seeds[0].metrics["reader"], "multifrequency");
    // Rows with the same number of levels share the pretrained model (pretrained once).
    const json& a = row_named(r, "4 levels").seeds[0].metrics;
    const json& b = row_named(r, "4 levels mf").seeds[0].metrics;
    EXPECT_DOUBLE_EQ(a["pretrain_loss"].get<double>(), b["pretrain_loss"].get<double>());
    EXPECT_DOUBLE_EQ(a["short_acc"].get<double>(), b["short_acc"].get<double>());
    EXPECT_GT(a["pretrain_seconds"].get<double>(), 0.0);
    EXPECT_EQ(b["pretrain_seconds"].get<double>(), 0.0);
    // Before reading, every row sees the pretrained model: reading never leaks into the next
    // example (each example starts from a copy of the pretrained weights).
    EXPECT_DOUBLE_EQ(a["acc_no_ttt"].get<double>(), b["acc_no_ttt"].get<double>());
  }
}

}  // namespace

TEST(Experiments, AllFiveAreRegistered) {
  const std::vector<std::string> names = experiment_names();
  for (const char* n : {"clinc150", "knowledge", "arc", "long_horizon", "translation"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  for (const std::string& n : names) {
    const ExperimentInfo& info = find_experiment(n);
    EXPECT_FALSE(info.description.empty());
    ASSERT_TRUE(info.tiny.contains("seeds")) << n;
    EXPECT_GE(info.tiny["seeds"].size(), 3u) << n << ": the tiny config needs >= 3 seeds";
    EXPECT_TRUE(info.gpu.is_object()) << n;
  }
}

TEST(Experiments, UnknownConfigKeysAndRowsAreErrors) {
  EXPECT_THROW(run_experiment("knowledge", json{{"no_such_key", 1}}), Error);
  json bad_row = micro_config("arc");
  bad_row["rows"] = json::array({json{{"label", "x"}, {"method", "no_such_method"}}});
  EXPECT_THROW(run_experiment("arc", bad_row), Error);
  json lh = micro_config("long_horizon");
  lh["rows"] = json::array({json{{"levels", 1}, {"reader", "read_stream"}}});  // read_stream needs 2 levels
  EXPECT_THROW(run_experiment("long_horizon", lh), Error);
  lh["rows"] = json::array({json{{"levels", 2}, {"reader", "sideways"}}});
  EXPECT_THROW(run_experiment("long_horizon", lh), Error);
  lh["rows"] = json::array({json{{"levels", 2}, {"ttt_levels", {2}}}});
  EXPECT_THROW(run_experiment("long_horizon", lh), Error);
  json cl = micro_config("clinc150");
  cl["ablations"] = json::array({json{{"label", "sft"}, {"method", "sft"}}});  // a label twice
  EXPECT_THROW(run_experiment("clinc150", cl), Error);
}

// The gpu configs are never run in CI; at least their models must be valid configs (the
// knowledge and arc ones have an MoE fast level for the random-expert ablation).
TEST(Experiments, GpuConfigModelsParse) {
  for (const std::string& n : experiment_names()) {
    json mj = find_experiment(n).gpu.at("model");
    mj["vocab_size"] = 512;
    EXPECT_NO_THROW((void)mj.get<nn::TransformerConfig>()) << n;
  }
  for (const char* n : {"knowledge", "arc"}) {
    const json& rows = find_experiment(n).gpu.at("rows");
    EXPECT_TRUE(std::any_of(rows.begin(), rows.end(),
                            [](const json& r) { return r.is_object() && r.value("label", "") == "sleep-no-random-expert"; }))
        << n;
  }
}

// ARC's dream_correct_frac: a dream (what follows "in:") is correct when its first pair reads
// back as " <row>\nout: <row>" ended by a newline or [eos] and the output is the rule applied
// to the input.
TEST(Experiments, ArcDreamCorrectness) {
  Arc1dOptions o;
  o.min_length = 5;
  o.max_length = 5;
  const ArcTask task = make_arc1d_task(Arc1dFamily::mirror, 3, o);
  ASSERT_TRUE(task.rule.has_value());
  const nn::Tokenizer tok = train_task_tokenizer({arc_prompt_answer(task).prompt}, 270);
  auto judge = [&](const std::string& text, bool eos, bool* novel) {
    std::vector<TokenId> d = tok.encode(text);
    if (eos) d.push_back(tok.eos_id());
    return detail::arc_dream_is_correct(tok, task, d, novel);
  };
  bool novel = true;
  EXPECT_TRUE(judge(" 1 2 0 0 3\nout: 3 0 0 2 1\nin: 4", false, &novel));
  EXPECT_TRUE(novel);
  EXPECT_TRUE(judge(" 1 2 0 0 3\nout: 3 0 0 2 1", true, &novel));        // ended by [eos]
  EXPECT_FALSE(judge(" 1 2 0 0 3\nout: 3 0 0 2 1", false, &novel));      // cut off: maybe longer
  EXPECT_FALSE(judge(" 1 2 0 0 3\nout: 3 0 0 2 2\n", false, &novel));   // wrong output
  EXPECT_FALSE(novel);
  EXPECT_FALSE(judge(" 1 2 0 0 3\n", true, &novel));                     // no output
  EXPECT_FALSE(judge(" 1 2 x\nout: x 2 1\n", false, &novel));           // not a grid
  EXPECT_FALSE(judge("", true, &novel));
  // A copy of a demonstration is correct but not novel.
  const std::string demo = grid_to_text(task.train[0].input), demo_out = grid_to_text(task.train[0].output);
  EXPECT_TRUE(judge(" " + demo + "\nout: " + demo_out + "\n", false, &novel));
  EXPECT_FALSE(novel);
  // An input the rule does not suit is wrong (a shift would push cells off the row).
  ArcTask shift = task;
  shift.rule = Arc1dRule{Arc1dFamily::shift, 2, 0};
  std::vector<TokenId> d = tok.encode(" 0 0 0 1 1\nout: 0 0 0 0 0\n");
  EXPECT_FALSE(detail::arc_dream_is_correct(tok, shift, d, &novel));
}

// The answer field Knowledge Seeding's r_sem reads (clinc150: " =>", knowledge: "\nA:").
TEST(Experiments, AnswerAfterTheSeparator) {
  const nn::Tokenizer tok = train_task_tokenizer({"set an alarm => alarm\nQ: Who?\nA: Vorla\n"}, 300);
  const auto answer_of = answer_after(tok, " =>");
  std::vector<TokenId> ids = {tok.bos_id()};
  const std::vector<TokenId> text = tok.encode("set an alarm => alarm");
  ids.insert(ids.end(), text.begin(), text.end());
  ids.push_back(tok.eos_id());
  EXPECT_EQ(answer_of(ids), std::optional<std::string>(" alarm"));  // BOS and EOS left out
  EXPECT_EQ(answer_of(tok.encode("set an alarm")), std::nullopt);  // no separator: no answer
  EXPECT_EQ(answer_of(tok.encode("x => ")), std::optional<std::string>(" "));
  // A special token ends the answer, and the last separator counts: once the query after a
  // demonstration has its own answer, that one is read.
  ids.push_back(tok.bos_id());
  const std::vector<TokenId> more = tok.encode("set an alarm => set");
  ids.insert(ids.end(), more.begin(), more.end());
  ids.push_back(tok.eos_id());
  EXPECT_EQ(answer_of(ids), std::optional<std::string>(" set"));
  EXPECT_EQ(answer_after(tok, "\nA:")(tok.encode("Q: Who?\nA: Vorla\nQ: Where?\nA: Dun")),
            std::optional<std::string>(" Dun"));  // the last answer
  somnus::testing::expect_error([&] { answer_after(tok, ""); }, {"separator is empty"});
}

class ExperimentSmoke : public ::testing::TestWithParam<std::string> {};

TEST_P(ExperimentSmoke, RunsWithAMicroConfig) {
  const std::string name = GetParam();
  if (needs_data(name) && !have_data()) GTEST_SKIP() << "../shared/data not found: " << name << " needs it";
  const json micro = micro_config(name);
  ASSERT_FALSE(micro.empty()) << "no micro config for " << name;
  int64_t last_done = 0, last_total = 0;
  const ExperimentResult r = run_experiment(name, micro, {}, [&](const std::string&, int64_t done, int64_t total) {
    EXPECT_GT(done, last_done);
    last_done = done;
    last_total = total;
  });
  EXPECT_EQ(last_done, last_total) << "progress must reach its total";
  check_result(r, name, expected_rows(name, micro));
  check_row_specifics(r, name);
}

INSTANTIATE_TEST_SUITE_P(All, ExperimentSmoke,
                         ::testing::Values("clinc150", "knowledge", "arc", "long_horizon", "translation"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });
