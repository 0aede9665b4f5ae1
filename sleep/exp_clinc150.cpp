// Experiment 1 (PARADIGM.md §5.1): class-incremental intent learning on CLINC150.
//
// The domains are learned one after another (order: a seeded shuffle), each as text-to-intent
// generation ("[bos] query => | intent [eos]"). After each domain every seen domain is
// evaluated by greedy exact match on its test queries, which fills the accuracy matrix
// acc[i][j] (after domain i, on domain j ≤ i). Reported per method and seed: the final
// average accuracy over all domains, forgetting (Chaudhry et al. 2018), the accuracy on the
// domain just learned (plasticity), the average-accuracy curve and the matrix.
//
// Every method starts from the same seeded random model. Episodes:
//   icl      no weight change; the evaluation prompt starts with as many demonstrations of
//            every seen intent as fit the attention window (seeded choice);
//   others   the domain's training examples, plus a few of its demonstrations as a context
//            (the Sleep method dreams from it; SFT-style methods also train on it as text);
//            τ for dreaming = mean log-prob of a probe set of the domain's training answers.
//
// Ablation rows (PARADIGM §4), the key "ablations": a list of {label, method, config} whose
// config patches the method's config (method_config below). The tiny config (the README
// demo) has none, to stay within its time; the gpu config has Sleep without imitation
// (consolidation.ks.alpha = 1), without semantic reward (consolidation.ks.imitation.gamma = 0),
// with the hidden-state cosine as r_sem instead of the intent-label match PARADIGM §2 asks for
// (consolidation.ks.imitation.semantic_reward = "hidden_cosine"),
// without expansion (consolidation.expansion = false), without dreaming and without gradient
// selection (dream.selection = false); on the CPU, e.g.
//   --set 'ablations=[{"label": "sleep-no-imitation", "method": "sleep",
//                      "config": {"consolidation": {"ks": {"alpha": 1}}}}]'
// Without random expert needs an MoE level; these models are dense, so there is no such row.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "sleep/baselines/training.h"
#include "sleep/experiment.h"
#include "sleep/sleep_method.h"
#include "sleep/tasks/clinc150.h"
#include "sleep/tasks/metrics.h"
#include "tensor/format.h"
#include "tensor/random.h"

namespace somnus::sleep {

using nlohmann::json;

namespace {

json tiny_config() {
  return json::parse(R"({
    "methods": ["icl", "sft", "sleep"],
    "seeds": [0, 1, 2],
    "num_domains": 4,
    "train_per_intent": 30,
    "test_per_intent": 10,
    "vocab_size": 640,
    "model": {"n_layer": 2, "n_embd": 128, "n_head": 4, "block_size": 64,
              "levels": [{"kind": "dense", "period": 1, "hidden": 256, "n_slots": 4, "slot_rank": 8},
                         {"kind": "dense", "period": 4, "hidden": 256, "n_slots": 4, "slot_rank": 8}]},
    "steps_per_domain": 150,
    "batch_size": 32,
    "lr": 3e-3,
    "context_demos": 3,
    "probe_examples": 16,
    "method_configs": {},
    "ablations": [],
    "eval_max_new_tokens": 10,
    "eval_batch_size": 128
  })");
}

json gpu_config() {
  json c = tiny_config();
  c["num_domains"] = 10;
  c["train_per_intent"] = 100;
  c["test_per_intent"] = 30;
  c["vocab_size"] = 2048;
  c["model"] = json::parse(R"({"n_layer": 6, "n_embd": 384, "n_head": 6, "block_size": 128,
              "levels": [{"kind": "dense", "period": 1, "hidden": 1536, "n_slots": 8, "slot_rank": 16},
                         {"kind": "dense", "period": 4, "hidden": 1536, "n_slots": 8, "slot_rank": 16}]})");
  c["steps_per_domain"] = 600;
  c["methods"] = {"icl", "sft", "ewc", "sleep"};
  c["ablations"] = json::parse(R"J([
    {"label": "sleep-no-imitation", "method": "sleep", "config": {"consolidation": {"ks": {"alpha": 1.0}}}},
    {"label": "sleep-no-semantic-reward", "method": "sleep",
     "config": {"consolidation": {"ks": {"imitation": {"gamma": 0.0}}}}},
    {"label": "sleep-cosine-semantic-reward", "method": "sleep",
     "config": {"consolidation": {"ks": {"imitation": {"semantic_reward": "hidden_cosine"}}}}},
    {"label": "sleep-no-expansion", "method": "sleep", "config": {"consolidation": {"expansion": false}}},
    {"label": "sleep-no-dream", "method": "sleep", "config": {"dreaming": false}},
    {"label": "sleep-no-selection", "method": "sleep", "config": {"dream": {"selection": false}}}])J");
  return c;
}

// The per-method config: shared training budget first, the user's method_configs on top.
json method_config(const std::string& name, const json& cfg, uint64_t seed) {
  json m = json::object();
  const int64_t steps = cfg.at("steps_per_domain").get<int64_t>();
  const int64_t batch = cfg.at("batch_size").get<int64_t>();
  const double lr = cfg.at("lr").get<double>();
  if (name == "sft" || name == "ewc") {
    m = {{"steps", steps}, {"lr", lr}, {"batch_size", batch}, {"seed", seed}};
  } else if (name == "sleep") {
    m = {{"wake_steps", steps},
         {"batch_size", batch},
         {"wake", {{"lr", lr}}},
         {"seed", seed},
         {"consolidation", consolidation_seeds(seed)},
         {"dream",
          {{"num_dreams", 4},
           {"dream_length", 24},
           {"top_k", 2},
           {"keep_random", 0},
           {"trial_steps", 2},
           {"rest_iterations", 1},
           {"rest_steps", 2},
           {"apply_steps", 4},
           {"seed", seed}}}};
  }
  const json& user = cfg.at("method_configs");
  if (user.contains(name)) m.merge_patch(user.at(name));
  return m;
}

// A table row: a method under its label, with a patch over method_config (the ablations).
struct ClincRow {
  std::string label, method;
  json patch = json::object();
  json config(const json& cfg, uint64_t seed) const {
    json m = method_config(method, cfg, seed);
    m.merge_patch(patch);
    return m;
  }
};

std::vector<ClincRow> clinc_rows(const json& cfg) {
  std::vector<ClincRow> rows;
  for (const std::string& m : cfg.at("methods").get<std::vector<std::string>>()) rows.push_back(ClincRow{m, m});
  const json& ab = cfg.at("ablations");
  SOMNUS_CHECK(ab.is_array(), "clinc150: 'ablations' must be a list of {{label, method, config}}");
  for (const json& a : ab) {
    SOMNUS_CHECK(a.is_object() && a.contains("label") && a.contains("method"),
                 "clinc150: an ablation is {{label, method, config}}, got {}", a.dump());
    for (const auto& [k, v] : a.items())
      SOMNUS_CHECK(k == "label" || k == "method" || k == "config", "clinc150: ablation: unknown key '{}'", k);
    rows.push_back(ClincRow{a.at("label").get<std::string>(), a.at("method").get<std::string>(),
                            a.value("config", json::object())});
  }
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      SOMNUS_CHECK(rows[i].label != rows[j].label, "clinc150: two rows are labelled '{}'", rows[i].label);
  return rows;
}

ExperimentResult run_clinc150(const json& cfg, const ProgressFn& progress) {
  register_sleep_method();
  const std::vector<ClincRow> methods = clinc_rows(cfg);
  const auto seeds = cfg.at("seeds").get<std::vector<uint64_t>>();
  const int64_t n_domains = cfg.at("num_domains").get<int64_t>();
  SOMNUS_CHECK(!methods.empty() && !seeds.empty(), "clinc150: 'methods' and 'seeds' must not be empty");
  SOMNUS_CHECK(n_domains >= 2 && n_domains <= 10, "clinc150: 'num_domains' must be in [2, 10], got {}", n_domains);
  for (const ClincRow& r : methods) (void)make_method(r.method, r.config(cfg, 0));  // fail fast on names/configs

  const Clinc150 data = load_clinc150_default();
  EvalOptions eval;
  eval.max_new_tokens = cfg.at("eval_max_new_tokens").get<int64_t>();
  eval.batch_size = cfg.at("eval_batch_size").get<int64_t>();

  ExperimentResult result;
  result.table_metrics = {"final_avg_acc", "forgetting", "current_task_acc", "seconds"};
  for (const ClincRow& r : methods) result.methods.push_back(MethodRun{r.label, {}});
  const int64_t total = static_cast<int64_t>(methods.size() * seeds.size()) * n_domains;
  int64_t done = 0;

  for (uint64_t seed : seeds) {
    ClincTaskOptions topt;
    topt.seed = seed;
    topt.max_train_per_intent = cfg.at("train_per_intent").get<int64_t>();
    topt.max_test_per_intent = cfg.at("test_per_intent").get<int64_t>();
    std::vector<ClincTask> tasks = make_clinc150_tasks(data, topt);
    tasks.resize(static_cast<size_t>(n_domains));

    // One tokenizer per seed over the training text of the domains in play (never the test).
    std::vector<std::string> texts;
    for (const auto& t : tasks)
      for (const auto& pa : t.train) texts.push_back(pa.prompt + pa.answer);
    const nn::Tokenizer tok = train_task_tokenizer(texts, cfg.at("vocab_size").get<int64_t>());

    nn::TransformerConfig mc;
    json model_j = cfg.at("model");
    model_j["vocab_size"] = tok.vocab_size();
    mc = model_j.get<nn::TransformerConfig>();
    const int64_t block = mc.block_size;

    // Episodes (shared by the methods of this seed).
    Generator pick(seed * 7919 + 1);
    std::vector<LearningEpisode> eps(static_cast<size_t>(n_domains)), icl_eps(static_cast<size_t>(n_domains));
    std::vector<Example> seen_demos;
    for (int64_t i = 0; i < n_domains; ++i) {
      const ClincTask& t = tasks[static_cast<size_t>(i)];
      LearningEpisode& ep = eps[static_cast<size_t>(i)];
      ep.name = t.domain;
      ep.examples = encode_examples(tok, t.train);
      const int64_t n_ctx = std::min<int64_t>(cfg.at("context_demos").get<int64_t>(), static_cast<int64_t>(ep.examples.size()));
      for (int64_t k = 0; k < n_ctx; ++k) {
        const Example& ex = ep.examples[static_cast<size_t>(k)];
        if (static_cast<int64_t>(ep.context.size() + ex.prompt.size() + ex.answer.size()) > block / 2) break;
        ep.context.insert(ep.context.end(), ex.prompt.begin(), ex.prompt.end());
        ep.context.insert(ep.context.end(), ex.answer.begin(), ex.answer.end());
      }
      std::vector<TrainSequence> probe;
      const int64_t n_probe = std::min<int64_t>(cfg.at("probe_examples").get<int64_t>(), static_cast<int64_t>(ep.examples.size()));
      for (int64_t k = 0; k < n_probe; ++k) {
        const Example& ex = ep.examples[ep.examples.size() - 1 - static_cast<size_t>(k)];
        TrainSequence row{ex.prompt, static_cast<int64_t>(ex.prompt.size())};
        row.tokens.insert(row.tokens.end(), ex.answer.begin(), ex.answer.end());
        probe.push_back(std::move(row));
      }
      ep.score = [probe](nn::Transformer& m) { return mean_logprob(m, probe); };
      ep.dream_suffix = {tok.bos_id()};
      ep.train_prefix = {tok.bos_id()};
      ep.stop_tokens = {tok.eos_id()};
      ep.answer_of = answer_after(tok, topt.separator);  // the intent label: Knowledge Seeding's r_sem

      // ICL: one demonstration per intent seen so far, shuffled, as many as fit.
      for (const std::string& intent : t.intents) {
        for (const Example& ex : ep.examples) {
          if (tok.decode(std::vector<TokenId>(ex.answer.begin(), ex.answer.end() - 1)) == " " + intent) {
            seen_demos.push_back(ex);
            break;
          }
        }
      }
      LearningEpisode& icl = icl_eps[static_cast<size_t>(i)];
      icl.name = t.domain;
      std::vector<double> order = randint(0, 1 << 30, {static_cast<int64_t>(seen_demos.size())}, pick).to_vector();
      std::vector<size_t> idx(seen_demos.size());
      for (size_t k = 0; k < idx.size(); ++k) idx[k] = k;
      std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return order[a] < order[b]; });
      const int64_t budget = block - 24;  // room for the question and the answer
      for (size_t k : idx) {
        const Example& ex = seen_demos[k];
        if (static_cast<int64_t>(icl.context.size() + ex.prompt.size() + ex.answer.size()) > budget) continue;
        icl.context.insert(icl.context.end(), ex.prompt.begin(), ex.prompt.end());
        icl.context.insert(icl.context.end(), ex.answer.begin(), ex.answer.end());
      }
      if (icl.context.empty()) icl.context = {tok.bos_id()};
    }

    for (size_t mi = 0; mi < methods.size(); ++mi) {
      const std::string& name = methods[mi].method;
      const auto t0 = std::chrono::steady_clock::now();
      Generator gen(seed);
      nn::Transformer model(mc, gen);
      auto method = make_method(name, methods[mi].config(cfg, seed));
      AccuracyMatrix acc(n_domains);
      json learn_metrics = json::array();
      for (int64_t i = 0; i < n_domains; ++i) {
        const LearningEpisode& ep = name == "icl" ? icl_eps[static_cast<size_t>(i)] : eps[static_cast<size_t>(i)];
        method->learn(model, ep);
        learn_metrics.push_back(method->last_metrics());
        const std::vector<TokenId> prefix = method->eval_prefix(ep);
        for (int64_t j = 0; j <= i; ++j) acc.set(i, j, answer_accuracy(model, tok, prefix, tasks[static_cast<size_t>(j)].test, eval));
        ++done;
        if (progress)
          progress(fmt::format("{} seed {} domain {}/{} ({}) acc {:.2f}", methods[mi].label, seed, i + 1, n_domains, ep.name,
                               acc.at(i, i)),
                   done, total);
      }
      json m;
      m["final_avg_acc"] = acc.final_average_accuracy();
      m["forgetting"] = acc.final_forgetting();
      double cur = 0;
      std::vector<double> curve;
      for (int64_t i = 0; i < n_domains; ++i) {
        cur += acc.at(i, i);
        curve.push_back(acc.average_accuracy(i));
      }
      m["current_task_acc"] = cur / static_cast<double>(n_domains);
      m["avg_acc_curve"] = curve;
      m["matrix"] = acc.rows();
      m["domains"] = json::array();
      for (int64_t i = 0; i < n_domains; ++i) m["domains"].push_back(tasks[static_cast<size_t>(i)].domain);
      m["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      m["learn"] = learn_metrics;
      result.methods[mi].seeds.push_back(SeedRun{seed, m});
    }
  }
  return result;
}

}  // namespace

void register_clinc150_experiment() {
  register_experiment(ExperimentInfo{"clinc150",
                                     "class-incremental intent learning on CLINC150 (PARADIGM §5.1, paper Fig. 3)",
                                     run_clinc150, tiny_config(), gpu_config()});
}

}  // namespace somnus::sleep
