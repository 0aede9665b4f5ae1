// Experiment 4 (PARADIGM.md §5.4, the paper's Fig. 4): long-horizon memory and the number of
// CMS levels.
//
// Multi-key needles ("The secret number of Vorla is 4821.", task "needles") or bAbI-style fact
// chains ("Mary went to the kitchen.", task "fact_chains") hidden in tinyshakespeare filler
// (sleep/tasks/long_horizon.h). Each row is an architecture: `levels` CMS levels whose update
// periods rise geometrically (powers of two) from 1 to `slowest_period` (1 level: period 1).
// Per seed and row, a model is pretrained on short examples that fit the attention window
// (the filler, the facts and the question in one window; every token's loss counts, and the
// answer's once more), so it can retrieve in context. Then long examples, `long_chars` bytes
// (several windows): the model reads the stream [bos] context with test-time training, then answers
// each question after it (the window then holds only the end of the stream, the question
// and the answer; facts further back must come from the weights).
// Reading: chunks of `ttt_chunk` tokens, one next-token-loss step after each chunk (the next
// chunk is read by the updated model), fresh optimiser moments per stream. Two readers, a
// row option ("reader"):
//   read_stream     [default with >= 2 levels] WakeLearner::read_stream (sleep/wake.h), the
//                   library's test-time training: only the levels in `ttt_levels` (default
//                   [0], the fast level) learn, each at its own period (level ℓ applies every
//                   C_ℓ chunks; a partial window at the end of the stream); the other levels,
//                   attention and embeddings stay fixed. With the default [0] (period 1) the
//                   periods play no part, so these rows vary only the number of levels.
//                   (WakeLearner needs a consolidation receiver, i.e. >= 2 levels; the levels
//                   here have no slots, so it is built with expansion off and never sleeps.)
//   multifrequency  [the only reader with 1 level] this file's loop: a step of the
//                   multi-frequency rule (nn/optim.h) on every CMS level (attention and
//                   embeddings fixed): level ℓ accumulates its gradients and applies them
//                   every C_ℓ chunks, so a slow level updates rarely and the slowest period
//                   matters. With 1 level (period 1) both readers would be the same step.
// Rows with the same number of levels share one pretrained model per seed (pretraining is
// plain SFT, independent of the periods and the reader).
// Reported per row: accuracy after reading (acc), the same without reading (acc_no_ttt, the
// window alone), and the in-window accuracy of the pretrained model (short_acc).
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <map>

#include "autograd/engine.h"
#include "nn/optim.h"
#include "sleep/baselines/training.h"
#include "sleep/experiment.h"
#include "sleep/tasks/long_horizon.h"
#include "sleep/wake.h"
#include "tensor/format.h"

namespace somnus::sleep {

using nlohmann::json;

namespace {

json tiny_config() {
  return json::parse(R"J({
    "rows": [{"label": "1 level", "levels": 1, "slowest_period": 1},
             {"label": "2 levels, read_stream", "levels": 2, "slowest_period": 8},
             {"label": "3 levels, read_stream", "levels": 3, "slowest_period": 8},
             {"label": "4 levels, read_stream", "levels": 4, "slowest_period": 8},
             {"label": "2 levels, slowest 8, multi-freq", "levels": 2, "slowest_period": 8, "reader": "multifrequency"},
             {"label": "3 levels, slowest 8, multi-freq", "levels": 3, "slowest_period": 8, "reader": "multifrequency"},
             {"label": "4 levels, slowest 8, multi-freq", "levels": 4, "slowest_period": 8, "reader": "multifrequency"},
             {"label": "3 levels, slowest 4, multi-freq", "levels": 3, "slowest_period": 4, "reader": "multifrequency"},
             {"label": "3 levels, slowest 16, multi-freq", "levels": 3, "slowest_period": 16, "reader": "multifrequency"}],
    "seeds": [0, 1, 2],
    "vocab_size": 512,
    "tokenizer_chars": 60000,
    "model": {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 96},
    "level_hidden": 128,
    "task": "fact_chains",
    "num_needles": 2,
    "num_people": 2,
    "num_objects": 1,
    "num_events": 3,
    "num_questions": 2,
    "short_chars": 120,
    "long_chars": 1200,
    "num_pretrain": 800,
    "num_short_eval": 16,
    "num_long_eval": 8,
    "pretrain_steps": 1000,
    "pretrain_batch": 24,
    "pretrain_lr": 3e-3,
    "ttt_chunk": 16,
    "ttt_lr": 1e-2,
    "eval_max_new_tokens": 6
  })J");
}

json gpu_config() {
  json c = tiny_config();
  c["vocab_size"] = 2048;
  c["tokenizer_chars"] = 400000;
  c["model"] = json::parse(R"J({"n_layer": 6, "n_embd": 384, "n_head": 6, "block_size": 256})J");
  c["level_hidden"] = 1024;
  c["task"] = "needles";
  c["num_needles"] = 4;
  c["short_chars"] = 500;
  c["long_chars"] = 8000;
  c["num_pretrain"] = 8000;
  c["num_long_eval"] = 32;
  c["pretrain_steps"] = 3000;
  c["pretrain_batch"] = 64;
  c["ttt_chunk"] = 64;
  return c;
}

struct Row {
  std::string label;
  int64_t levels = 1, slowest_period = 1;
  std::string reader;                // "read_stream" or "multifrequency"
  std::vector<int64_t> ttt_levels;   // read_stream only
};

std::vector<Row> parse_rows(const json& cfg) {
  const json& rs = cfg.at("rows");
  SOMNUS_CHECK(rs.is_array() && !rs.empty(), "long_horizon: 'rows' must be a non-empty list");
  std::vector<Row> out;
  for (const json& r : rs) {
    SOMNUS_CHECK(r.is_object(), "long_horizon: a row is {{label, levels, slowest_period[, reader, ttt_levels]}}");
    for (const auto& [k, v] : r.items())
      SOMNUS_CHECK(k == "label" || k == "levels" || k == "slowest_period" || k == "reader" || k == "ttt_levels",
                   "long_horizon: unknown row key '{}'", k);
    Row row;
    row.levels = r.at("levels").get<int64_t>();
    row.slowest_period = r.value("slowest_period", int64_t{1});
    row.label = r.value("label", fmt::format("{} levels, slowest {}", row.levels, row.slowest_period));
    SOMNUS_CHECK(row.levels >= 1 && row.levels <= 8, "long_horizon: 'levels' must be in [1, 8], got {}", row.levels);
    SOMNUS_CHECK(row.slowest_period >= 1, "long_horizon: 'slowest_period' must be >= 1, got {}", row.slowest_period);
    row.reader = r.value("reader", std::string(row.levels >= 2 ? "read_stream" : "multifrequency"));
    SOMNUS_CHECK(row.reader == "read_stream" || row.reader == "multifrequency",
                 "long_horizon: row '{}': 'reader' must be \"read_stream\" or \"multifrequency\", got \"{}\"", row.label,
                 row.reader);
    SOMNUS_CHECK(row.reader == "multifrequency" || row.levels >= 2,
                 "long_horizon: row '{}': 'reader' = \"read_stream\" needs >= 2 levels (WakeLearner's consolidation "
                 "receiver); use \"multifrequency\"",
                 row.label);
    row.ttt_levels = r.value("ttt_levels", std::vector<int64_t>{0});
    SOMNUS_CHECK(row.reader == "read_stream" || !r.contains("ttt_levels"),
                 "long_horizon: row '{}': 'ttt_levels' applies to the read_stream reader only", row.label);
    for (int64_t l : row.ttt_levels)
      SOMNUS_CHECK(l >= 0 && l < row.levels, "long_horizon: row '{}': 'ttt_levels' entry {} out of range [0, {})",
                   row.label, l, row.levels);
    out.push_back(row);
  }
  return out;
}

// Periods 1 = C_0 <= ... <= C_{n-1} = slowest: powers of two with exponents spread evenly
// (rounded), since each period must divide the next (nn/transformer.h). 1 level: period 1.
std::vector<int64_t> level_periods(int64_t n, int64_t slowest) {
  int64_t e = 0;
  while ((int64_t{1} << e) < slowest) ++e;
  SOMNUS_CHECK((int64_t{1} << e) == slowest, "long_horizon: 'slowest_period' must be a power of two, got {}", slowest);
  std::vector<int64_t> p;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = n == 1 ? 0 : std::llround(static_cast<double>(e * i) / static_cast<double>(n - 1));
    p.push_back(int64_t{1} << k);
  }
  return p;
}


// WakeLearner::read_stream with a fresh learner (fresh moments); returns the mean chunk loss.
double read_stream_wake(nn::Transformer& model, const std::vector<TokenId>& stream, int64_t chunk, double lr,
                        const std::vector<int64_t>& ttt_levels) {
  WakeConfig w;
  w.ttt_chunk = chunk;
  w.ttt_lr = lr;
  w.ttt_levels = ttt_levels;
  ConsolidationConfig c;
  c.expansion = false;  // the levels have no slots; the learner never sleeps here
  WakeLearner learner(model, w, c);
  const StreamLog log = learner.read_stream(stream);
  double sum = 0;
  for (double l : log.chunk_loss) sum += l;
  return log.chunk_loss.empty() ? 0.0 : sum / static_cast<double>(log.chunk_loss.size());
}

// The multi-frequency read of a stream (see the header comment); returns the mean chunk loss.
double read_stream_multifrequency(nn::Transformer& model, const std::vector<TokenId>& stream, int64_t chunk,
                                  double lr) {
  std::vector<ParamGroup> groups;
  const int64_t n_levels = static_cast<int64_t>(model.config().levels.size());
  for (int64_t lv = 0; lv < n_levels; ++lv) {
    ParamGroup g;
    g.lr = lr;
    g.period = model.config().levels[static_cast<size_t>(lv)].period;
    g.name = fmt::format("level{}", lv);
    for (int64_t l = 0; l < model.config().n_layer; ++l)
      for (const Tensor& p : model.level(l, lv).parameters(/*trainable_only=*/true)) g.params.push_back(p);
    if (!g.params.empty()) groups.push_back(std::move(g));
  }
  std::vector<Tensor> all = model.parameters();
  std::vector<bool> flags;
  for (Tensor& p : all) {
    flags.push_back(p.requires_grad());
    p.set_requires_grad(false);
  }
  for (ParamGroup& g : groups)
    for (Tensor& p : g.params) p.set_requires_grad(true);
  double sum = 0;
  int64_t n = 0;
  {
    AdamWOptions o;
    o.beta2 = 0.95;
    AdamW opt(groups, o);
    for (size_t start = 0; start + 1 < stream.size(); start += static_cast<size_t>(chunk)) {
      const size_t end = std::min(stream.size(), start + static_cast<size_t>(chunk) + 1);
      const int64_t T = static_cast<int64_t>(end - start) - 1;
      std::vector<double> in, tg;
      for (int64_t t = 0; t < T; ++t) {
        in.push_back(static_cast<double>(stream[start + static_cast<size_t>(t)]));
        tg.push_back(static_cast<double>(stream[start + static_cast<size_t>(t) + 1]));
      }
      opt.zero_grad();
      nn::LMLoss l = model.loss(Tensor::from_vector(in, {1, T}, DType::i64), Tensor::from_vector(tg, {1, T}, DType::i64));
      backward(l.ce);
      sum += l.ce.item();
      ++n;
      opt.step();
    }
    opt.zero_grad_all();
  }
  for (size_t i = 0; i < all.size(); ++i) all[i].set_requires_grad(flags[i]);
  return n > 0 ? sum / static_cast<double>(n) : 0.0;
}

ExperimentResult run_long_horizon(const json& cfg, const ProgressFn& progress) {
  const std::vector<Row> rows = parse_rows(cfg);
  const auto seeds = cfg.at("seeds").get<std::vector<uint64_t>>();
  SOMNUS_CHECK(!seeds.empty(), "long_horizon: 'seeds' must not be empty");
  const int64_t n_long = cfg.at("num_long_eval").get<int64_t>();
  const int64_t n_short = cfg.at("num_short_eval").get<int64_t>();
  SOMNUS_CHECK(n_long >= 1 && n_short >= 1, "long_horizon: 'num_long_eval' and 'num_short_eval' must be >= 1");
  const int64_t chunk = cfg.at("ttt_chunk").get<int64_t>();
  const double ttt_lr = cfg.at("ttt_lr").get<double>();
  EvalOptions eval;
  eval.max_new_tokens = cfg.at("eval_max_new_tokens").get<int64_t>();

  const std::string task = cfg.at("task").get<std::string>();
  SOMNUS_CHECK(task == "needles" || task == "fact_chains", "long_horizon: 'task' must be \"needles\" or \"fact_chains\", got \"{}\"", task);
  const std::string corpus = load_tinyshakespeare();
  const FillerText filler(corpus);

  ExperimentResult result;
  result.table_metrics = {"acc", "acc_no_ttt", "short_acc", "seconds"};
  for (const Row& r : rows) result.methods.push_back(MethodRun{r.label, {}});
  const int64_t total = static_cast<int64_t>(seeds.size() * rows.size());
  int64_t done = 0;

  for (uint64_t seed : seeds) {
    // `count` examples of the configured task, `chars` bytes long.
    auto make_examples = [&](int64_t count, uint64_t s, int64_t chars) {
      if (task == "needles") {
        NeedleOptions no;
        no.num_needles = cfg.at("num_needles").get<int64_t>();
        no.num_questions = cfg.at("num_questions").get<int64_t>();
        no.seed = s;
        no.context_chars = chars;
        return make_needle_examples(filler, count, no);
      }
      FactChainOptions fo;
      fo.num_people = cfg.at("num_people").get<int64_t>();
      fo.num_objects = cfg.at("num_objects").get<int64_t>();
      fo.num_events = cfg.at("num_events").get<int64_t>();
      fo.num_questions = cfg.at("num_questions").get<int64_t>();
      fo.seed = s;
      fo.context_chars = chars;
      return make_fact_chain_examples(filler, count, fo);
    };
    const int64_t short_chars = cfg.at("short_chars").get<int64_t>();
    const auto pre_ex = make_examples(cfg.at("num_pretrain").get<int64_t>(), seed, short_chars);
    const auto short_ex = make_examples(n_short, seed + 5555, short_chars);
    const auto long_ex = make_examples(n_long, seed + 7777, cfg.at("long_chars").get<int64_t>());

    const auto tchars = static_cast<size_t>(cfg.at("tokenizer_chars").get<int64_t>());
    std::vector<std::string> texts = {corpus.substr(0, std::min(corpus.size(), tchars))};
    for (const auto& ex : pre_ex)
      for (const auto& pa : long_horizon_prompt_answers(ex)) texts.push_back(pa.prompt + pa.answer);
    const nn::Tokenizer tok = train_task_tokenizer(texts, cfg.at("vocab_size").get<int64_t>());

    json model_j = cfg.at("model");
    model_j["vocab_size"] = tok.vocab_size();
    const int64_t block = model_j.at("block_size").get<int64_t>();

    std::vector<TrainSequence> pre;
    for (const auto& ex : pre_ex) {
      for (const auto& pa : long_horizon_prompt_answers(ex)) {
        const Example e = encode_example(tok, pa);
        std::vector<TokenId> s = e.prompt;
        s.insert(s.end(), e.answer.begin(), e.answer.end());
        if (static_cast<int64_t>(s.size()) > block + 1) continue;
        pre.push_back(TrainSequence{s, 1});
        pre.push_back(TrainSequence{s, static_cast<int64_t>(e.prompt.size())});
      }
    }
    SOMNUS_CHECK(!pre.empty(), "long_horizon: no short example fits block_size {} (lower 'short_chars')", block);
    std::vector<nn::PromptAnswer> short_pas;
    for (const auto& ex : short_ex)
      for (const auto& pa : long_horizon_prompt_answers(ex)) short_pas.push_back(pa);

    // Pretrained models by number of levels (see the header comment).
    struct Pretrained {
      NamedTensors state;
      double short_acc = 0, loss = 0, seconds = 0;
    };
    std::map<int64_t, Pretrained> pretrained;
    for (size_t ri = 0; ri < rows.size(); ++ri) {
      const Row& row = rows[ri];
      const auto t0 = std::chrono::steady_clock::now();
      json levels = json::array();
      const std::vector<int64_t> periods = level_periods(row.levels, row.slowest_period);
      for (int64_t p : periods) levels.push_back({{"kind", "dense"}, {"period", p}, {"hidden", cfg.at("level_hidden")}});
      json mj = model_j;
      mj["levels"] = levels;
      const nn::TransformerConfig mc = mj.get<nn::TransformerConfig>();
      Generator gen(seed);
      nn::Transformer model(mc, gen);
      const bool reuse = pretrained.count(row.levels) > 0;
      if (!reuse) {
        SftSteps pre_opt;
        pre_opt.steps = cfg.at("pretrain_steps").get<int64_t>();
        pre_opt.lr = cfg.at("pretrain_lr").get<double>();
        pre_opt.batch_size = cfg.at("pretrain_batch").get<int64_t>();
        pre_opt.grad_clip = 1.0;
        const std::vector<double> pre_losses = train_sft(model, model.parameters(true), pre, pre_opt, gen);
        Pretrained p;
        // A copy: state_dict() hands out the live tensors, which reading changes in place.
        for (const auto& [name, t] : model.state_dict()) p.state.emplace_back(name, t.clone());
        p.short_acc = answer_accuracy(model, tok, {}, short_pas, eval);
        p.loss = pre_losses.empty() ? 0.0 : pre_losses.back();
        p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        pretrained.emplace(row.levels, std::move(p));
      }
      const Pretrained& pt = pretrained.at(row.levels);
      const NamedTensors& base_state = pt.state;
      model.load_state_dict(base_state);
      const double short_acc = pt.short_acc;

      double correct = 0, correct_no_ttt = 0, read_loss = 0;
      int64_t count = 0;
      for (const auto& ex : long_ex) {
        // The question after the stream, cut from the left to the window (generate_answers).
        std::vector<nn::PromptAnswer> full;
        for (const auto& pa : long_horizon_prompt_answers(ex)) full.push_back(pa);
        const double no_ttt = answer_accuracy(model, tok, {}, full, eval);
        const std::vector<TokenId> stream = encode_with_bos(tok, ex.context);
        read_loss += row.reader == "read_stream" ? read_stream_wake(model, stream, chunk, ttt_lr, row.ttt_levels)
                                                 : read_stream_multifrequency(model, stream, chunk, ttt_lr);
        const double with_ttt = answer_accuracy(model, tok, {}, full, eval);
        model.load_state_dict(base_state);
        correct += with_ttt * static_cast<double>(full.size());
        correct_no_ttt += no_ttt * static_cast<double>(full.size());
        count += static_cast<int64_t>(full.size());
      }
      json m;
      m["acc"] = correct / static_cast<double>(count);
      m["acc_no_ttt"] = correct_no_ttt / static_cast<double>(count);
      m["short_acc"] = short_acc;
      m["periods"] = periods;
      m["pretrain_loss"] = pt.loss;
      m["pretrain_seconds"] = reuse ? 0.0 : pt.seconds;  // 0: the row reused another row's pretrained model
      m["reader"] = row.reader;
      m["read_loss"] = read_loss / static_cast<double>(long_ex.size());
      m["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ++done;
      if (progress)
        progress(fmt::format("{} seed {}: short {:.2f}, long {:.2f} (no TTT {:.2f})", row.label, seed, short_acc,
                             m["acc"].get<double>(), m["acc_no_ttt"].get<double>()),
                 done, total);
      result.methods[ri].seeds.push_back(SeedRun{seed, m});
    }
  }
  return result;
}

}  // namespace

void register_long_horizon_experiment() {
  register_experiment(ExperimentInfo{"long_horizon",
                                     "needles in tinyshakespeare beyond the window, read with multi-frequency test-time "
                                     "training, 1–4 CMS levels (PARADIGM §5.4, paper Fig. 4)",
                                     run_long_horizon, tiny_config(), gpu_config()});
}

}  // namespace somnus::sleep
