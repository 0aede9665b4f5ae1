// Experiment 3 (PARADIGM.md §5.3, the paper's Table 4): few-shot generalisation on
// procedural 1-D ARC-like tasks with held-out families (sleep/tasks/arc1d.h).
//
// Per seed the families are split (split_arc1d_families): a base model is pretrained once on
// tasks of the training families ("[bos] in: … out: …\n … in: … out: … [eos]", once with
// every token counted, once with the test answer's tokens only), and each method's model is
// a copy of it (state_dict). Then, for each
// of `num_eval_tasks` tasks of the held-out families, every method learns the task's episode
// from the base and answers its test input; the score is exact match of the test output.
// The evaluation prompt is the same for every method: the demonstrations followed by the test
// input (arc_prompt_answer), so "icl" is the base model reading the demonstrations, and the
// learning methods add what they learned from them to the weights.
// Episode: context = [bos] demonstrations; examples = the leave-one-out prompts (every
// demonstration as the test of the others, as in test-time training); τ = mean log-prob of
// those leave-one-out answers (only demonstrations, never the test pair); dreams continue the
// demonstrations after "in:" (new pairs) and are trained after them (train_prefix =
// context ++ "in:").
//
// "The fraction of dreams that give a correct answer" (PARADIGM §5.3), for the rows that dream
// (SEAL, Sleep), two ways, over every dream of every task of the row (sleep/dreaming.h's
// ScopedDreamObserver sees them inside the method's Dreamer):
//   dream_correct_frac  a dream continues the demonstrations after "in:"; it is correct when
//                       its first pair reads back as a demonstration of the task's format,
//                       " <row>\nout: <row>" ended by a newline or by [eos] (parse_grid_text,
//                       one row each), and its output equals the task's hidden rule applied to
//                       its input (apply_arc1d_rule; an input the rule does not suit is wrong).
//                       Over all sampled dreams. dream_novel_frac: the same, counting only
//                       inputs that are not one of the demonstrations' inputs (no copies);
//   trial_solve_frac    SEAL's success rate: of the dreams that were tried (each trained into
//                       an isolated LoRA trial of the model), the fraction whose trial model
//                       answers the held-out test pair exactly (greedy, the usual prompt).
//                       Sleep tries only the dreams its gradient selection keeps, SEAL all.
//
// Ablations of PARADIGM §4 that act on dreaming: sleep-no-dream (dreaming = false),
// sleep-no-selection (dream.selection = false: every dream is tried). "Without random expert"
// (dream.random_extra_expert = false) needs an MoE level: the tiny model is dense (so the row
// would equal "sleep"); the gpu config makes the fast level an MoE and has the row.
#include <fmt/format.h>

#include <chrono>

#include "sleep/baselines/training.h"
#include "sleep/dreaming.h"
#include "sleep/experiment.h"
#include "sleep/sleep_method.h"
#include "sleep/tasks/arc1d.h"
#include "tensor/format.h"

namespace somnus::sleep {

using nlohmann::json;

namespace {

json tiny_config() {
  return json::parse(R"J({
    "rows": [{"label": "icl", "method": "none"},
             {"label": "ttt (sft)", "method": "sft"},
             {"label": "seal", "method": "seal"},
             {"label": "sleep", "method": "sleep"},
             {"label": "sleep-no-dream", "method": "sleep", "config": {"dreaming": false}},
             {"label": "sleep-no-selection", "method": "sleep", "config": {"dream": {"selection": false}}}],
    "seeds": [0, 1, 2],
    "num_held_out": 3,
    "num_pretrain_tasks": 2000,
    "num_eval_tasks": 8,
    "min_length": 5,
    "max_length": 8,
    "num_demonstrations": 3,
    "vocab_size": 300,
    "model": {"n_layer": 2, "n_embd": 96, "n_head": 4, "block_size": 160,
              "levels": [{"kind": "dense", "period": 1, "hidden": 256, "n_slots": 4, "slot_rank": 8},
                         {"kind": "dense", "period": 4, "hidden": 256, "n_slots": 4, "slot_rank": 8}]},
    "pretrain_steps": 1200,
    "pretrain_batch": 32,
    "pretrain_lr": 3e-3,
    "steps": 20,
    "batch_size": 8,
    "lr": 1e-3,
    "dream": {"num_dreams": 4, "dream_length": 28, "top_k": 2, "keep_random": 0, "trial_steps": 2,
              "rest_iterations": 1, "rest_steps": 2, "apply_steps": 4},
    "consolidation": {"ks": {"n_samples": 8, "sample_tokens": 24, "steps": 8, "batch_size": 8}},
    "eval_max_new_tokens": 24
  })J");
}

json gpu_config() {
  json c = tiny_config();
  c["num_pretrain_tasks"] = 8000;
  c["num_eval_tasks"] = 40;
  c["max_length"] = 12;
  // The fast level is an MoE (so dreaming's random extra expert, and its ablation, act).
  c["model"] = json::parse(R"J({"n_layer": 6, "n_embd": 384, "n_head": 6, "block_size": 256,
              "levels": [{"kind": "moe", "period": 1, "hidden": 768, "n_experts": 4, "top_k": 2,
                          "n_slots": 8, "slot_rank": 16},
                         {"kind": "dense", "period": 4, "hidden": 1536, "n_slots": 8, "slot_rank": 16}]})J");
  c["rows"].push_back(json::parse(
      R"J({"label": "sleep-no-random-expert", "method": "sleep", "config": {"dream": {"random_extra_expert": false}}})J"));
  c["pretrain_steps"] = 4000;
  c["pretrain_batch"] = 64;
  c["steps"] = 40;
  c["eval_max_new_tokens"] = 32;
  c["dream"] = json::parse(R"J({"num_dreams": 8, "dream_length": 40, "top_k": 4, "keep_random": 1,
                               "trial_steps": 4, "rest_iterations": 2, "rest_steps": 4, "apply_steps": 8})J");
  return c;
}

// ---------------------------------------------------------------- rows (one per table line)

using Row = ExperimentRow;

}  // namespace

namespace detail {

// Declared in sleep/experiment.h; the rule is in this file's header comment.
bool arc_dream_is_correct(const nn::Tokenizer& tok, const ArcTask& task, std::vector<TokenId> dream, bool* novel) {
  *novel = false;
  if (!task.rule) return false;
  bool ended = false;
  if (!dream.empty() && dream.back() == tok.eos_id()) {
    dream.pop_back();
    ended = true;
  }
  const std::string text = tok.decode(dream);
  const size_t sep = text.find("\nout:");
  if (sep == std::string::npos) return false;
  const size_t out_start = sep + 5;
  const size_t nl = text.find('\n', out_start);
  if (nl == std::string::npos && !ended) return false;  // cut off by the dream length
  const auto in = parse_grid_text(std::string_view(text).substr(0, sep));
  const auto out = parse_grid_text(std::string_view(text).substr(out_start, nl == std::string::npos ? std::string::npos
                                                                                                      : nl - out_start));
  if (!in || !out || in->size() != 1 || out->size() != 1) return false;
  std::vector<int> want;
  try {
    want = apply_arc1d_rule(*task.rule, in->front());
  } catch (const Error&) {
    return false;  // an input the rule does not suit
  }
  if (want != out->front()) return false;
  *novel = true;
  for (const ArcPair& p : task.train)
    if (p.input == *in) *novel = false;
  return true;
}

}  // namespace detail

namespace {

// The dream counts of one row and seed (see the header comment).
struct DreamCounts {
  int64_t sampled = 0, correct = 0, novel = 0, tried = 0, solved = 0;
  nlohmann::json examples = nlohmann::json::array();  // the first dream of each task as text, with its verdict
};

// Printable ASCII of a decoded dream for the JSON result ('?' for any other byte: a sampled
// byte token may be invalid UTF-8, which JSON cannot hold); newlines kept.
std::string printable(const std::string& s) {
  std::string out = s;
  for (char& c : out)
    if (c != '\n' && (c < 0x20 || c > 0x7e)) c = '?';
  return out;
}

std::string demos_text(const ArcTask& t) {
  std::string s;
  for (const ArcPair& p : t.train) s += "in: " + grid_to_text(p.input) + "\nout: " + grid_to_text(p.output) + "\n";
  return s;
}

ExperimentResult run_arc(const json& cfg, const ProgressFn& progress) {
  register_sleep_method();
  const std::vector<Row> rows = parse_experiment_rows(cfg, "arc");
  const auto seeds = cfg.at("seeds").get<std::vector<uint64_t>>();
  const int64_t n_eval = cfg.at("num_eval_tasks").get<int64_t>();
  SOMNUS_CHECK(!seeds.empty(), "arc: 'seeds' must not be empty");
  SOMNUS_CHECK(n_eval >= 1, "arc: 'num_eval_tasks' must be >= 1");
  for (const Row& r : rows) (void)make_row_method(r, cfg, 0);
  EvalOptions eval;
  eval.max_new_tokens = cfg.at("eval_max_new_tokens").get<int64_t>();

  ExperimentResult result;
  result.table_metrics = {"test_acc", "dream_correct_frac", "trial_solve_frac", "base_heldin_acc", "seconds"};
  for (const Row& r : rows) result.methods.push_back(MethodRun{r.label, {}});
  const int64_t total = static_cast<int64_t>(seeds.size()) * (1 + static_cast<int64_t>(rows.size()) * n_eval);
  int64_t done = 0;

  for (uint64_t seed : seeds) {
    const Arc1dFamilySplit split = split_arc1d_families(cfg.at("num_held_out").get<int64_t>(), seed);
    Arc1dOptions ao;
    ao.seed = seed;
    ao.min_length = cfg.at("min_length").get<int64_t>();
    ao.max_length = cfg.at("max_length").get<int64_t>();
    ao.num_demonstrations = cfg.at("num_demonstrations").get<int64_t>();
    ao.families = split.train;
    const std::vector<ArcTask> pre_tasks = make_arc1d_tasks(cfg.at("num_pretrain_tasks").get<int64_t>(), ao);
    ao.seed = seed + 7777;
    const std::vector<ArcTask> heldin = make_arc1d_tasks(n_eval, ao);
    ao.families = split.held_out;
    ao.seed = seed + 9999;
    const std::vector<ArcTask> tasks = make_arc1d_tasks(n_eval, ao);

    std::vector<std::string> texts;
    for (const ArcTask& t : pre_tasks) {
      const nn::PromptAnswer pa = arc_prompt_answer(t);
      texts.push_back(pa.prompt + pa.answer);
    }
    const nn::Tokenizer tok = train_task_tokenizer(texts, cfg.at("vocab_size").get<int64_t>());
    json model_j = cfg.at("model");
    model_j["vocab_size"] = tok.vocab_size();
    const nn::TransformerConfig mc = model_j.get<nn::TransformerConfig>();
    const int64_t block = mc.block_size;

    // ---- the base model, once per seed (full-text loss: it learns to read and to write pairs)
    Generator gen(seed);
    nn::Transformer base(mc, gen);
    std::vector<TrainSequence> pre;
    for (const ArcTask& t : pre_tasks) {
      const Example ex = encode_example(tok, arc_prompt_answer(t));
      std::vector<TokenId> s = ex.prompt;
      s.insert(s.end(), ex.answer.begin(), ex.answer.end());
      if (static_cast<int64_t>(s.size()) > block + 1) continue;
      pre.push_back(TrainSequence{s, 1});                                           // the whole text
      pre.push_back(TrainSequence{s, static_cast<int64_t>(ex.prompt.size())});  // the answer again
    }
    SOMNUS_CHECK(!pre.empty(), "arc: no pretraining task fits block_size {}", block);
    SftSteps pre_opt;
    pre_opt.steps = cfg.at("pretrain_steps").get<int64_t>();
    pre_opt.lr = cfg.at("pretrain_lr").get<double>();
    pre_opt.batch_size = cfg.at("pretrain_batch").get<int64_t>();
    pre_opt.grad_clip = 1.0;
    const std::vector<double> pre_losses = train_sft(base, base.parameters(true), pre, pre_opt, gen);
    const NamedTensors base_state = base.state_dict();
    std::vector<nn::PromptAnswer> heldin_pas;
    for (const ArcTask& t : heldin) heldin_pas.push_back(arc_prompt_answer(t));
    const double heldin_acc = answer_accuracy(base, tok, {}, heldin_pas, eval);
    ++done;
    if (progress)
      progress(fmt::format("seed {} base pretrained: loss {:.3f}, acc on new tasks of the training families {:.2f}", seed,
                           pre_losses.empty() ? 0.0 : pre_losses.back(), heldin_acc),
               done, total);

    // ---- episodes of the held-out tasks
    std::vector<LearningEpisode> eps;
    for (const ArcTask& t : tasks) {
      LearningEpisode ep;
      ep.name = t.name;
      ep.context = encode_with_bos(tok, demos_text(t));
      for (size_t k = 0; k < t.train.size(); ++k) {
        ArcTask loo = t;
        loo.train.erase(loo.train.begin() + static_cast<std::ptrdiff_t>(k));
        loo.test = {t.train[k]};
        ep.examples.push_back(encode_example(tok, arc_prompt_answer(loo)));
      }
      std::vector<TrainSequence> probe;
      for (const Example& ex : ep.examples) {
        TrainSequence r{ex.prompt, static_cast<int64_t>(ex.prompt.size())};
        r.tokens.insert(r.tokens.end(), ex.answer.begin(), ex.answer.end());
        if (static_cast<int64_t>(r.tokens.size()) <= block + 1) probe.push_back(std::move(r));
      }
      SOMNUS_CHECK(!probe.empty(), "arc: task '{}' does not fit block_size {}", t.name, block);
      ep.score = [probe](nn::Transformer& m) { return mean_logprob(m, probe); };
      ep.dream_suffix = tok.encode("in:");  // a new pair begins
      ep.train_prefix = ep.context;
      ep.train_prefix.insert(ep.train_prefix.end(), ep.dream_suffix.begin(), ep.dream_suffix.end());
      ep.stop_tokens = {tok.eos_id()};
      eps.push_back(std::move(ep));
    }

    for (size_t ri = 0; ri < rows.size(); ++ri) {
      const Row& row = rows[ri];
      const auto t0 = std::chrono::steady_clock::now();
      double sum = 0;
      json per_task = json::array();
      DreamCounts dc;
      for (int64_t i = 0; i < n_eval; ++i) {
        nn::Transformer model(mc, gen);
        model.load_state_dict(base_state);
        auto method = make_row_method(row, cfg, seed * 1000 + static_cast<uint64_t>(i));
        const ArcTask& task = tasks[static_cast<size_t>(i)];
        const nn::PromptAnswer test_pa = arc_prompt_answer(task);
        {
          DreamObserver obs;
          obs.on_sample = [&](const DreamTask&, int64_t iteration, const std::vector<std::vector<TokenId>>& dreams) {
            for (size_t k = 0; k < dreams.size(); ++k) {
              const std::vector<TokenId>& d = dreams[k];
              bool novel = false;
              ++dc.sampled;
              const bool correct = detail::arc_dream_is_correct(tok, task, d, &novel);
              if (correct) ++dc.correct;
              if (novel) ++dc.novel;
              if (iteration == 0 && k == 0)
                dc.examples.push_back({{"task", task.name}, {"dream", printable("in:" + tok.decode(d))}, {"correct", correct}});
            }
          };
          obs.on_trial = [&](const DreamTask&, const std::vector<TokenId>&, nn::Transformer& adapted) {
            ++dc.tried;
            if (answer_accuracy(adapted, tok, {}, {test_pa}, eval) > 0.5) ++dc.solved;
          };
          const ScopedDreamObserver scope(obs);
          method->learn(model, eps[static_cast<size_t>(i)]);
        }
        const double a = answer_accuracy(model, tok, {}, {test_pa}, eval);
        sum += a;
        per_task.push_back({{"family", tasks[static_cast<size_t>(i)].name}, {"correct", a}});
        ++done;
        if (progress)
          progress(fmt::format("{} seed {} task {}/{} ({}) {}", row.label, seed, i + 1, n_eval,
                               tasks[static_cast<size_t>(i)].name, a > 0.5 ? "correct" : "wrong"),
                   done, total);
      }
      json m;
      m["test_acc"] = sum / static_cast<double>(n_eval);
      m["base_heldin_acc"] = heldin_acc;
      m["base_pretrain_loss"] = pre_losses.empty() ? 0.0 : pre_losses.back();
      m["tasks"] = per_task;
      if (dc.sampled > 0) {
        const auto frac = [](int64_t a, int64_t b) { return b > 0 ? static_cast<double>(a) / static_cast<double>(b) : 0.0; };
        m["dream_correct_frac"] = frac(dc.correct, dc.sampled);
        m["dream_novel_frac"] = frac(dc.novel, dc.sampled);
        m["trial_solve_frac"] = frac(dc.solved, dc.tried);
        m["dreams_sampled"] = dc.sampled;
        m["dreams_tried"] = dc.tried;
        m["dream_examples"] = dc.examples;
      }
      m["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      result.methods[ri].seeds.push_back(SeedRun{seed, m});
    }
  }
  return result;
}

}  // namespace

void register_arc_experiment() {
  register_experiment(ExperimentInfo{"arc", "few-shot 1-D ARC with held-out families (PARADIGM §5.3, paper Table 4)",
                                     run_arc, tiny_config(), gpu_config()});
}

}  // namespace somnus::sleep
