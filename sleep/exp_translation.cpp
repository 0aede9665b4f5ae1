// Experiment 5 (PARADIGM.md §5.5, the paper's Fig. 5): continual translation into two
// procedural languages (sleep/tasks/languages.h), learned one after the other.
//
// Per seed two languages and their train/test splits. Each row starts from the same seeded
// random model (its architecture: the experiment's model config with the row's "model" patch,
// e.g. 1, 2 or 3 CMS levels) and learns language 1, then language 2; after each, chrF
// (corpus, sacreBLEU's chrF2, metrics.h) of greedy translations on both test sets fills the
// 2 × 2 "matrix" (after language i, on language j; in chrF points 0–100).
// Episodes: the language's training pairs "[bos] Translate to X: <english> => <target> [eos]"
// as supervised examples. The "icl" row learns nothing and puts the language's grammar and
// lexicon (describe_language) before each question, cut from the left to the window.
// The Sleep method needs a receiver level for consolidation, so its rows have >= 2 CMS
// levels; a 1-level row runs SFT on a 1-level model (there is nothing to consolidate into).
#include <fmt/format.h>

#include <chrono>

#include "sleep/baselines/training.h"
#include "sleep/experiment.h"
#include "sleep/sleep_method.h"
#include "sleep/tasks/languages.h"
#include "sleep/tasks/metrics.h"
#include "tensor/format.h"

namespace somnus::sleep {

using nlohmann::json;

namespace {

json tiny_config() {
  return json::parse(R"J({
    "rows": [{"label": "icl", "method": "icl"},
             {"label": "sft-1lv", "method": "sft",
              "model": {"levels": [{"kind": "dense", "period": 1, "hidden": 256}]}},
             {"label": "sft", "method": "sft"},
             {"label": "sleep-2lv", "method": "sleep"},
             {"label": "sleep-3lv", "method": "sleep",
              "model": {"levels": [{"kind": "dense", "period": 1, "hidden": 256, "n_slots": 4, "slot_rank": 8},
                                   {"kind": "dense", "period": 4, "hidden": 256, "n_slots": 4, "slot_rank": 8},
                                   {"kind": "dense", "period": 16, "hidden": 256, "n_slots": 4, "slot_rank": 8}]}}],
    "seeds": [0, 1, 2],
    "num_train": 300,
    "num_test": 40,
    "vocab_size": 512,
    "model": {"n_layer": 2, "n_embd": 96, "n_head": 4, "block_size": 64,
              "levels": [{"kind": "dense", "period": 1, "hidden": 256, "n_slots": 4, "slot_rank": 8},
                         {"kind": "dense", "period": 4, "hidden": 256, "n_slots": 4, "slot_rank": 8}]},
    "steps": 200,
    "batch_size": 32,
    "lr": 3e-3,
    "consolidation": {"ks": {"n_samples": 16, "sample_tokens": 32, "steps": 20, "batch_size": 8}},
    "eval_max_new_tokens": 24,
    "eval_batch_size": 64
  })J");
}

json gpu_config() {
  json c = tiny_config();
  c["num_train"] = 3000;
  c["num_test"] = 200;
  c["vocab_size"] = 1024;
  c["model"] = json::parse(R"J({"n_layer": 6, "n_embd": 384, "n_head": 6, "block_size": 128,
              "levels": [{"kind": "dense", "period": 1, "hidden": 1536, "n_slots": 8, "slot_rank": 16},
                         {"kind": "dense", "period": 4, "hidden": 1536, "n_slots": 8, "slot_rank": 16}]})J");
  c["rows"][1]["model"]["levels"][0]["hidden"] = 1536;
  c["rows"][4]["model"] = json::parse(R"J({"levels": [
      {"kind": "dense", "period": 1, "hidden": 1536, "n_slots": 8, "slot_rank": 16},
      {"kind": "dense", "period": 4, "hidden": 1536, "n_slots": 8, "slot_rank": 16},
      {"kind": "dense", "period": 16, "hidden": 1536, "n_slots": 8, "slot_rank": 16}]})J");
  c["steps"] = 1500;
  return c;
}

// ---------------------------------------------------------------- rows (one per table line)

using Row = ExperimentRow;


ExperimentResult run_translation(const json& cfg, const ProgressFn& progress) {
  register_sleep_method();
  const std::vector<Row> rows = parse_experiment_rows(cfg, "translation", /*allow_model_patch=*/true);
  const auto seeds = cfg.at("seeds").get<std::vector<uint64_t>>();
  SOMNUS_CHECK(!seeds.empty(), "translation: 'seeds' must not be empty");
  for (const Row& r : rows) (void)make_row_method(r, cfg, 0);
  EvalOptions eval;
  eval.max_new_tokens = cfg.at("eval_max_new_tokens").get<int64_t>();
  eval.batch_size = cfg.at("eval_batch_size").get<int64_t>();
  const int64_t n_train = cfg.at("num_train").get<int64_t>();
  const int64_t n_test = cfg.at("num_test").get<int64_t>();

  ExperimentResult result;
  result.matrix_label = "chrF";
  result.matrix_max = 100.0;
  result.table_metrics = {"chrf_avg_final", "chrf_lang1_after_lang1", "chrf_lang1_final", "chrf_lang2_final",
                          "seconds"};
  for (const Row& r : rows) result.methods.push_back(MethodRun{r.label, {}});
  const int64_t total = static_cast<int64_t>(seeds.size() * rows.size()) * 2;
  int64_t done = 0;

  for (uint64_t seed : seeds) {
    const auto [lang_a, lang_b] = make_language_pair(seed);
    const std::vector<LanguageSpec> langs = {lang_a, lang_b};
    std::vector<TranslationSplits> splits;
    for (size_t l = 0; l < 2; ++l) splits.push_back(make_translation_splits(langs[l], n_train, n_test, seed * 31 + l));

    std::vector<std::string> texts;
    for (size_t l = 0; l < 2; ++l) {
      texts.push_back(describe_language(langs[l]));
      for (const TranslationPair& p : splits[l].train) {
        const nn::PromptAnswer pa = translation_prompt_answer(langs[l], p);
        texts.push_back(pa.prompt + pa.answer);
      }
    }
    const nn::Tokenizer tok = train_task_tokenizer(texts, cfg.at("vocab_size").get<int64_t>());

    std::vector<LearningEpisode> eps(2), icl_eps(2);
    std::vector<std::vector<nn::PromptAnswer>> tests(2);
    for (size_t l = 0; l < 2; ++l) {
      std::vector<nn::PromptAnswer> train;
      for (const TranslationPair& p : splits[l].train) train.push_back(translation_prompt_answer(langs[l], p));
      for (const TranslationPair& p : splits[l].test) tests[l].push_back(translation_prompt_answer(langs[l], p));
      eps[l].name = langs[l].name;
      eps[l].examples = encode_examples(tok, train);
      eps[l].train_prefix = {tok.bos_id()};
      eps[l].stop_tokens = {tok.eos_id()};
      icl_eps[l].name = langs[l].name;
      icl_eps[l].context = tok.encode(describe_language(langs[l]) + "\n");
    }

    for (size_t ri = 0; ri < rows.size(); ++ri) {
      const Row& row = rows[ri];
      const auto t0 = std::chrono::steady_clock::now();
      json model_j = cfg.at("model");
      model_j.merge_patch(row.model);
      model_j["vocab_size"] = tok.vocab_size();
      const nn::TransformerConfig mc = model_j.get<nn::TransformerConfig>();
      Generator gen(seed);
      nn::Transformer model(mc, gen);
      auto method = make_row_method(row, cfg, seed);
      const bool icl = row.method == "icl";
      std::vector<std::vector<double>> matrix(2, std::vector<double>(2, 0.0));
      for (size_t i = 0; i < 2; ++i) {
        method->learn(model, icl ? icl_eps[i] : eps[i]);
        for (size_t j = 0; j < 2; ++j) {
          const std::vector<TokenId> prefix = method->eval_prefix(icl ? icl_eps[j] : eps[j]);
          const std::vector<std::string> hyp = generate_answers(model, tok, prefix, tests[j], eval);
          std::vector<std::string> ref;
          for (const auto& pa : tests[j]) ref.push_back(pa.answer);
          matrix[i][j] = chrf_corpus(hyp, ref);
        }
        ++done;
        if (progress)
          progress(fmt::format("{} seed {} after {} ({}): chrF {:.1f} / {:.1f}", row.label, seed, i + 1, langs[i].name,
                               matrix[i][0], matrix[i][1]),
                   done, total);
      }
      json m;
      m["chrf_lang1_after_lang1"] = matrix[0][0];
      m["chrf_lang1_final"] = matrix[1][0];
      m["chrf_lang2_final"] = matrix[1][1];
      m["chrf_avg_final"] = (matrix[1][0] + matrix[1][1]) / 2;
      m["forgetting_lang1"] = matrix[0][0] - matrix[1][0];
      m["matrix"] = matrix;
      m["languages"] = {langs[0].name + " (" + word_order_name(langs[0].order) + ")",
                        langs[1].name + " (" + word_order_name(langs[1].order) + ")"};
      m["cms_levels"] = mc.levels.size();
      m["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      result.methods[ri].seeds.push_back(SeedRun{seed, m});
    }
  }
  return result;
}

}  // namespace

void register_translation_experiment() {
  register_experiment(ExperimentInfo{"translation",
                                     "continual translation into two procedural languages, chrF (PARADIGM §5.5, paper "
                                     "Fig. 5)",
                                     run_translation, tiny_config(), gpu_config()});
}

}  // namespace somnus::sleep
