// The reproduction suite's runner (PARADIGM.md §5, issue 7): every experiment runs each of
// its method rows for several seeds and reports mean ± std.
//
// An experiment is a function (config JSON, progress callback) -> ExperimentResult. Built-in
// experiments are listed by experiment_names(); each has a "tiny" config (CPU, minutes) and a
// "gpu" config (scaled up). The CLI (`somnus experiment <name> --config tiny|gpu|file.json`)
// writes the result JSON, a markdown table and the plots from what is here.
//
// Shared helpers for the language-model experiments: a BPE tokenizer trained on the task
// text, prompt/answer examples as token Examples ([bos] prompt -> answer [eos]), and
// greedy-generation exact-match evaluation in batches.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "nn/data.h"
#include "nn/tokenizer.h"
#include "nn/transformer.h"
#include "sleep/baselines/method.h"
#include "sleep/tasks/arc1d.h"

namespace somnus::sleep {

// ---------------------------------------------------------------- results

struct SeedRun {
  uint64_t seed = 0;
  nlohmann::json metrics;  // numbers, arrays and matrices, as the experiment defines them
};

struct MethodRun {
  std::string method;  // the row label (a method name, or an ablation such as "sleep-no-dream")
  std::vector<SeedRun> seeds;
  // For every numeric metric (and, element-wise, every numeric array/matrix) of the seeds:
  // {"mean": ..., "std": ...} with the sample standard deviation (0 for one seed).
  nlohmann::json aggregate() const;
};

struct ExperimentResult {
  std::string experiment;
  nlohmann::json config;
  std::vector<MethodRun> methods;
  std::vector<std::string> table_metrics;  // the scalar metrics the table shows, in order
  // What a method's "matrix" metric holds, and its full scale: the heatmap's title and colour
  // range (accuracy in [0, 1]; translation's chrF in [0, 100]).
  std::string matrix_label = "accuracy";
  double matrix_max = 1.0;
  double seconds = 0;
  std::string date;  // UTC, filled by run_experiment

  nlohmann::json to_json() const;
  // | method | metric (mean ± std) | ... |, one row per method.
  std::string markdown_table() const;
};

// ---------------------------------------------------------------- registry

// (label, done, total): e.g. ("sft seed 1 task 3/4", 7, 36).
using ProgressFn = std::function<void(const std::string& label, int64_t done, int64_t total)>;
using ExperimentFn = std::function<ExperimentResult(const nlohmann::json& config, const ProgressFn& progress)>;

struct ExperimentInfo {
  std::string name, description;
  ExperimentFn run;
  nlohmann::json tiny, gpu;  // the built-in configs
};

void register_experiment(ExperimentInfo info);
std::vector<std::string> experiment_names();
// Throws somnus::Error listing the known names.
const ExperimentInfo& find_experiment(const std::string& name);
// config: "tiny", "gpu", or a JSON object (merged over tiny: unknown keys are errors; under
// "model" every TransformerConfig key is allowed). overrides (key=value pairs of dotted keys,
// values parsed as JSON or else taken as strings) are applied last. Returns the full config.
nlohmann::json resolve_experiment_config(const std::string& name, const nlohmann::json& config,
                                         const std::vector<std::pair<std::string, std::string>>& overrides = {});
// resolve_experiment_config, then the run. Times the run and stamps the date.
ExperimentResult run_experiment(const std::string& name, const nlohmann::json& config,
                                const std::vector<std::pair<std::string, std::string>>& overrides = {},
                                const ProgressFn& progress = {});

// ---------------------------------------------------------------- helpers for experiments

// A BPE tokenizer over the given texts (joined by newlines), vocab_size >= 256 + 3 specials.
nn::Tokenizer train_task_tokenizer(const std::vector<std::string>& texts, int64_t vocab_size);
// [bos] prompt -> answer [eos] (the answer's loss counts).
Example encode_example(const nn::Tokenizer& tok, const nn::PromptAnswer& pa);
std::vector<Example> encode_examples(const nn::Tokenizer& tok, const std::vector<nn::PromptAnswer>& pas);
// The answer field of such sequences, for LearningEpisode::answer_of: the decoded text after
// the last `separator` (the prompt's last characters, e.g. "\nA:"; the last, so that
// demonstrations in a prompt do not answer for the query), up to the next newline or special
// token (BOS, EOS) or the end; nullopt when the separator is not there.
std::function<std::optional<std::string>(const std::vector<TokenId>&)> answer_after(const nn::Tokenizer& tok,
                                                                                   std::string separator);

struct EvalOptions {
  int64_t max_new_tokens = 12;
  int64_t batch_size = 64;
};
// Greedy answers of the model to [prefix ++] [bos] prompt, cut at eos, decoded.
std::vector<std::string> generate_answers(nn::Transformer& model, const nn::Tokenizer& tok,
                                          const std::vector<TokenId>& prefix, const std::vector<nn::PromptAnswer>& pas,
                                          const EvalOptions& opt = {});
// Exact-match accuracy (sleep/tasks/metrics.h normalisation) of generate_answers.
double answer_accuracy(nn::Transformer& model, const nn::Tokenizer& tok, const std::vector<TokenId>& prefix,
                       const std::vector<nn::PromptAnswer>& pas, const EvalOptions& opt = {});

// A row of an experiment table: a method by name ("none" = no learning, nothing in the
// prompt), a label, the method's config patch, and (where an experiment allows it) a patch
// over the experiment's model config (e.g. other CMS levels).
struct ExperimentRow {
  std::string label, method;
  nlohmann::json config = nlohmann::json::object();
  nlohmann::json model = nlohmann::json::object();
};
// cfg["rows"]: a non-empty list of method names or {label, method, config[, model]} objects.
std::vector<ExperimentRow> parse_experiment_rows(const nlohmann::json& cfg, const std::string& experiment,
                                                 bool allow_model_patch = false);
// The row's method with the experiment's shared budget (cfg's steps, lr, batch_size, and its
// consolidation / dream objects where present; for sleep rows, cfg's "sleep" patch over the
// sleep method config where present) under the row's own config patch.
std::unique_ptr<Method> make_row_method(const ExperimentRow& row, const nlohmann::json& cfg, uint64_t seed);
// The seeds of a Sleep method's consolidation for run seed `seed`, as a config patch:
// {"ks": {"seed": 1234 + seed, "imitation": {"seed": seed}}}. Knowledge Seeding's stream
// (teacher samples, new-slot init, batch picks) and the imitation rollouts' follow the run's
// seed, as the wake batches and the dreams do; seed 0 keeps the defaults (1234, 0). Applied
// under the experiment's and the row's own consolidation config, which may still fix them.
nlohmann::json consolidation_seeds(uint64_t seed);
// [bos] ++ tok.encode(text)
std::vector<TokenId> encode_with_bos(const nn::Tokenizer& tok, const std::string& text);

// ARC (sleep/exp_arc.cpp): whether a dream (the tokens after "in:") starts with a correct
// demonstration of the task's rule; *novel: its input is none of the demonstrations' inputs.
namespace detail {
bool arc_dream_is_correct(const nn::Tokenizer& tok, const ArcTask& task, std::vector<TokenId> dream, bool* novel);
}  // namespace detail

// Built-in experiments register themselves through these (called by experiment_names()).
void register_clinc150_experiment();
void register_knowledge_experiment();
void register_arc_experiment();
void register_long_horizon_experiment();
void register_translation_experiment();

}  // namespace somnus::sleep
