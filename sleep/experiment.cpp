// The experiment runner and its shared helpers (see experiment.h).
#include "sleep/experiment.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <map>
#include <mutex>

#include "autograd/grad_mode.h"
#include "nn/generate.h"
#include "sleep/config_json.h"
#include "sleep/consolidation.h"
#include "sleep/imitation.h"
#include "sleep/tasks/metrics.h"
#include "tensor/format.h"

namespace somnus::sleep {

using nlohmann::json;

// ---------------------------------------------------------------- aggregation

namespace {

// Element-wise mean/std over same-shaped JSON values; non-numeric leaves are dropped (null).
json aggregate_values(const std::vector<const json*>& vs) {
  const json& first = *vs.front();
  if (first.is_number()) {
    double sum = 0;
    int64_t n = 0;
    for (const json* v : vs) {
      if (!v->is_number()) return nullptr;
      const double x = v->get<double>();
      if (!std::isfinite(x)) continue;
      sum += x;
      ++n;
    }
    if (n == 0) return nullptr;
    const double mean = sum / static_cast<double>(n);
    double ss = 0;
    for (const json* v : vs) {
      const double x = v->get<double>();
      if (std::isfinite(x)) ss += (x - mean) * (x - mean);
    }
    return json{{"mean", mean}, {"std", n > 1 ? std::sqrt(ss / static_cast<double>(n - 1)) : 0.0}};
  }
  if (first.is_array()) {
    json out = json::array();
    for (size_t i = 0; i < first.size(); ++i) {
      std::vector<const json*> col;
      for (const json* v : vs) {
        if (!v->is_array() || v->size() != first.size()) return nullptr;
        col.push_back(&(*v)[i]);
      }
      out.push_back(aggregate_values(col));
    }
    return out;
  }
  if (first.is_object()) {
    json out = json::object();
    for (auto it = first.begin(); it != first.end(); ++it) {
      std::vector<const json*> col;
      for (const json* v : vs) {
        if (!v->is_object() || !v->contains(it.key())) {
          col.clear();
          break;
        }
        col.push_back(&v->at(it.key()));
      }
      if (!col.empty()) {
        json a = aggregate_values(col);
        if (!a.is_null()) out[it.key()] = std::move(a);
      }
    }
    return out;
  }
  return nullptr;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", &tm);
  return buf;
}

}  // namespace

json MethodRun::aggregate() const {
  if (seeds.empty()) return json::object();
  std::vector<const json*> vs;
  for (const SeedRun& s : seeds) vs.push_back(&s.metrics);
  return aggregate_values(vs);
}

json ExperimentResult::to_json() const {
  json methods_j = json::array();
  for (const MethodRun& m : methods) {
    json seeds_j = json::array();
    for (const SeedRun& s : m.seeds) seeds_j.push_back({{"seed", s.seed}, {"metrics", s.metrics}});
    methods_j.push_back({{"method", m.method}, {"seeds", seeds_j}, {"aggregate", m.aggregate()}});
  }
  return {{"experiment", experiment}, {"date", date},       {"seconds", seconds},
          {"config", config},         {"methods", methods_j}, {"table_metrics", table_metrics}};
}

std::string ExperimentResult::markdown_table() const {
  std::string out = "| method |";
  std::string rule = "|---|";
  for (const std::string& m : table_metrics) {
    out += fmt::format(" {} |", m);
    rule += "---|";
  }
  out += "\n" + rule + "\n";
  for (const MethodRun& m : methods) {
    const json agg = m.aggregate();
    out += fmt::format("| {} |", m.method);
    for (const std::string& key : table_metrics) {
      if (agg.contains(key) && agg[key].is_object() && agg[key].contains("mean")) {
        out += fmt::format(" {:.3f} ± {:.3f} |", agg[key]["mean"].get<double>(), agg[key]["std"].get<double>());
      } else {
        out += " — |";
      }
    }
    out += "\n";
  }
  return out;
}

// ---------------------------------------------------------------- registry

namespace {

std::map<std::string, ExperimentInfo>& registry() {
  static std::map<std::string, ExperimentInfo> r;
  return r;
}

void register_builtins() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_clinc150_experiment();
    register_knowledge_experiment();
    register_arc_experiment();
    register_long_horizon_experiment();
    register_translation_experiment();
  });
}

}  // namespace

void register_experiment(ExperimentInfo info) {
  SOMNUS_CHECK(!info.name.empty() && info.run, "register_experiment: a name and a function are required");
  SOMNUS_CHECK(registry().count(info.name) == 0, "register_experiment: '{}' is already registered", info.name);
  registry()[info.name] = std::move(info);
}

std::vector<std::string> experiment_names() {
  register_builtins();
  std::vector<std::string> out;
  for (const auto& [name, info] : registry()) out.push_back(name);
  return out;
}

const ExperimentInfo& find_experiment(const std::string& name) {
  register_builtins();
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::string known;
    for (const auto& [n, i] : registry()) known += (known.empty() ? "" : ", ") + n;
    fail("experiment: unknown experiment '{}' (known: {})", name, known);
  }
  return it->second;
}

namespace {

// Checks one override (a --set key=value) against the schema on its own, so that a bad value
// is blamed on the --set: checked only in the merged config, it was reported as the config's
// ("experiment clinc150 config: 'seeds' must be ..." for --set seeds=[-1], naming the built-in
// tiny or gpu config). Follows the dotted key down while the schema has a section there; the
// rest (a leaf, or a key the schema lacks) is checked by check_config_keys.
void check_override(const json& schema, const std::string& key, const std::string& value, const std::string& where) {
  json one = json::object();
  set_config_key(one, key, value);
  const json* sch = &schema;
  const json* val = &one;
  // set_config_key made one object per dot: {"model": {"n_layer": ...}} for model.n_layer.
  for (size_t dot = key.find('.'); dot != std::string::npos; dot = key.find('.', dot + 1)) {
    const std::string part = val->begin().key();
    const auto d = sch->find(part);
    if (d == sch->end() || !d->is_object() || d->empty()) break;
    sch = &*d;
    val = &val->begin().value();
  }
  check_config_keys(*val, *sch, where);
}

}  // namespace

json resolve_experiment_config(const std::string& name, const json& config,
                               const std::vector<std::pair<std::string, std::string>>& overrides) {
  const ExperimentInfo& info = find_experiment(name);
  // The keys a config may have: the tiny config's, and under "model" every TransformerConfig
  // key (attention_period, pos, norm, …), not only those the tiny config spells out; except
  // vocab_size (set from the task's tokenizer) and preset (it would be overridden by the
  // explicit defaults here: spell the keys out instead).
  json schema = info.tiny;
  if (schema.contains("model") && schema.at("model").is_object()) {
    json full = json(nn::TransformerConfig{});
    if (!schema.at("model").contains("vocab_size")) full.erase("vocab_size");
    for (const auto& [k, v] : schema.at("model").items()) full[k] = v;
    schema["model"] = full;
  }
  const std::string where = "experiment " + name + " config";
  json cfg;
  if (config.is_string() && config.get<std::string>() == "tiny") {
    cfg = info.tiny;
  } else if (config.is_string() && config.get<std::string>() == "gpu") {
    cfg = info.gpu;
  } else {
    SOMNUS_CHECK(config.is_object(), "experiment {}: config must be \"tiny\", \"gpu\" or a JSON object", name);
    cfg = merge_config(config, schema, where);
  }
  for (const auto& [k, v] : overrides) {
    check_override(schema, k, v, fmt::format("experiment {}: --set {}={}", name, k, v));
    set_config_key(cfg, k, v);
  }
  return merge_config(cfg, schema, where);
}

ExperimentResult run_experiment(const std::string& name, const json& config,
                                const std::vector<std::pair<std::string, std::string>>& overrides,
                                const ProgressFn& progress) {
  const ExperimentInfo& info = find_experiment(name);
  const json cfg = resolve_experiment_config(name, config, overrides);
  const auto t0 = std::chrono::steady_clock::now();
  ExperimentResult r = info.run(cfg, progress);
  r.experiment = name;
  r.config = cfg;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.date = utc_now();
  return r;
}

// ---------------------------------------------------------------- helpers

nn::Tokenizer train_task_tokenizer(const std::vector<std::string>& texts, int64_t vocab_size) {
  std::string corpus;
  for (const std::string& t : texts) {
    corpus += t;
    corpus += '\n';
  }
  return nn::Tokenizer::train(corpus, vocab_size);
}

Example encode_example(const nn::Tokenizer& tok, const nn::PromptAnswer& pa) {
  Example ex;
  ex.prompt.push_back(tok.bos_id());
  const auto p = tok.encode(pa.prompt);
  ex.prompt.insert(ex.prompt.end(), p.begin(), p.end());
  ex.answer = tok.encode(pa.answer);
  ex.answer.push_back(tok.eos_id());
  return ex;
}

std::function<std::optional<std::string>(const std::vector<TokenId>&)> answer_after(const nn::Tokenizer& tok,
                                                                                   std::string separator) {
  SOMNUS_CHECK(!separator.empty(), "answer_after: the separator is empty");
  // A copy of the tokenizer: the function can outlive the experiment's own (the sleep method
  // keeps the last episode's).
  return [tok = std::make_shared<const nn::Tokenizer>(tok),
          separator = std::move(separator)](const std::vector<TokenId>& ids) -> std::optional<std::string> {
    // Special tokens (BOS, EOS, ...) end a line: they would decode to their text.
    std::string text;
    for (TokenId id : ids) {
      if (tok->is_special(id)) {
        text += '\n';
      } else {
        text += tok->token_bytes(id);
      }
    }
    const size_t at = text.rfind(separator);
    if (at == std::string::npos) return std::nullopt;
    const size_t from = at + separator.size();
    return text.substr(from, text.find('\n', from) - from);
  };
}

std::vector<Example> encode_examples(const nn::Tokenizer& tok, const std::vector<nn::PromptAnswer>& pas) {
  std::vector<Example> out;
  out.reserve(pas.size());
  for (const auto& pa : pas) out.push_back(encode_example(tok, pa));
  return out;
}

std::vector<std::string> generate_answers(nn::Transformer& model, const nn::Tokenizer& tok,
                                          const std::vector<TokenId>& prefix, const std::vector<nn::PromptAnswer>& pas,
                                          const EvalOptions& opt) {
  SOMNUS_CHECK(opt.batch_size >= 1 && opt.max_new_tokens >= 1, "generate_answers: batch_size and max_new_tokens must be >= 1");
  const int64_t block = model.config().block_size;
  std::vector<std::string> out;
  out.reserve(pas.size());
  nn::GenerateConfig g;
  g.temperature = 0.0;
  g.stop_tokens = {tok.eos_id()};
  for (size_t start = 0; start < pas.size(); start += static_cast<size_t>(opt.batch_size)) {
    const size_t end = std::min(pas.size(), start + static_cast<size_t>(opt.batch_size));
    std::vector<std::vector<TokenId>> prompts;
    for (size_t i = start; i < end; ++i) {
      std::vector<TokenId> p = prefix;
      const Example ex = encode_example(tok, pas[i]);
      p.insert(p.end(), ex.prompt.begin(), ex.prompt.end());
      // Keep the end (the question) when the prefix would overflow the window.
      const int64_t keep = block - opt.max_new_tokens;
      if (static_cast<int64_t>(p.size()) > keep) p.erase(p.begin(), p.end() - keep);
      prompts.push_back(std::move(p));
    }
    g.max_new_tokens = opt.max_new_tokens;
    const nn::GenerateResult res = nn::generate(model, prompts, g);
    for (const auto& s : res.sequences) {
      std::vector<TokenId> t = s.tokens;
      if (!t.empty() && t.back() == tok.eos_id()) t.pop_back();
      out.push_back(tok.decode(t));
    }
  }
  return out;
}

double answer_accuracy(nn::Transformer& model, const nn::Tokenizer& tok, const std::vector<TokenId>& prefix,
                       const std::vector<nn::PromptAnswer>& pas, const EvalOptions& opt) {
  SOMNUS_CHECK(!pas.empty(), "answer_accuracy: no examples");
  const std::vector<std::string> pred = generate_answers(model, tok, prefix, pas, opt);
  std::vector<std::string> ref;
  for (const auto& pa : pas) ref.push_back(pa.answer);
  return exact_match_accuracy(pred, ref);
}

// ---------------------------------------------------------------- rows

std::vector<ExperimentRow> parse_experiment_rows(const json& cfg, const std::string& exp, bool allow_model_patch) {
  const json& rs = cfg.at("rows");
  SOMNUS_CHECK(rs.is_array() && !rs.empty(), "{}: 'rows' must be a non-empty list", exp);
  std::vector<ExperimentRow> out;
  for (const json& r : rs) {
    ExperimentRow row;
    if (r.is_string()) {
      row.label = row.method = r.get<std::string>();
    } else {
      SOMNUS_CHECK(r.is_object() && r.contains("method"), "{}: a row is a method name or {{label, method, config{}}}",
                   exp, allow_model_patch ? ", model" : "");
      for (const auto& [k, v] : r.items())
        SOMNUS_CHECK(k == "label" || k == "method" || k == "config" || (allow_model_patch && k == "model"),
                     "{}: unknown row key '{}'", exp, k);
      row.method = r.at("method").get<std::string>();
      row.label = r.value("label", row.method);
      if (r.contains("config")) row.config = r.at("config");
      if (r.contains("model")) row.model = r.at("model");
    }
    out.push_back(std::move(row));
  }
  return out;
}

namespace {

// The base model as it is: no learning, nothing in the prompt.
class NoLearning : public Method {
 public:
  std::string name() const override { return "none"; }
  void learn(nn::Transformer&, const LearningEpisode&) override {}
};

}  // namespace

json consolidation_seeds(uint64_t seed) {
  return {{"ks", {{"seed", SeedingConfig{}.seed + seed}, {"imitation", {{"seed", ImitationConfig{}.seed + seed}}}}}};
}

std::unique_ptr<Method> make_row_method(const ExperimentRow& row, const json& cfg, uint64_t seed) {
  if (row.method == "none") return std::make_unique<NoLearning>();
  json m = json::object();
  json dream = cfg.contains("dream") ? cfg.at("dream") : json::object();
  dream["seed"] = seed;
  if (row.method == "sft" || row.method == "ewc") {
    m = {{"steps", cfg.at("steps")}, {"lr", cfg.at("lr")}, {"batch_size", cfg.at("batch_size")}, {"seed", seed}};
  } else if (row.method == "seal") {
    m = dream;
  } else if (row.method == "sleep") {
    m = {{"wake_steps", cfg.at("steps")}, {"batch_size", cfg.at("batch_size")}, {"wake", {{"lr", cfg.at("lr")}}},
         {"seed", seed},                  {"dream", dream}};
    m["consolidation"] = consolidation_seeds(seed);
    if (cfg.contains("consolidation")) m["consolidation"].merge_patch(cfg.at("consolidation"));
    if (cfg.contains("sleep")) m.merge_patch(cfg.at("sleep"));  // e.g. {"anchor_at_start": true}
  }
  m.merge_patch(row.config);
  return make_method(row.method, m);
}

std::vector<TokenId> encode_with_bos(const nn::Tokenizer& tok, const std::string& text) {
  std::vector<TokenId> t{tok.bos_id()};
  const auto e = tok.encode(text);
  t.insert(t.end(), e.begin(), e.end());
  return t;
}

}  // namespace somnus::sleep
