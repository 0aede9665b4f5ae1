// `somnus sleep`: one wake → sleep → dream cycle of a trained model on a new document.
//
//   somnus sleep --ckpt RUN --data new.txt [--config sleep.json] [--set key=value ...]
//                [--old-data old.txt] [--out DIR] [--device cpu|cuda]
//
// The model (a `somnus train` checkpoint with at least two CMS levels and slots in the
// receiver) reads the document's first 90% (the context) and is measured on the held-out
// last 10% (new knowledge) and, with --old-data, on a sample of the old text (forgetting):
//   wake    wake_steps multi-frequency steps on the context (sleep/wake.h)
//   sleep   consolidation: the sender's θ_old and slots distilled into a new receiver slot
//           by Knowledge Seeding (sleep/consolidation.h). A fresh learner has no earlier
//           sender to keep, so this command anchors the sender before waking: the teacher
//           is the model as loaded, i.e. what the fast level knew before the document.
//   dream   dreams continuing the end of the context, selected, tried and applied with
//           τ = mean log-prob of the held-out part (sleep/dreaming.h)
// One invocation is one episode. A chain of them (each on the previous one's checkpoint) is a
// continual run, so, as the wake rate and the slots' ages, the learned dream generator goes
// with the checkpoint (dream.persist_dreamer, on by default): the new checkpoint holds the
// "dreamer" adapter as ReST-EM left it (dreamer.safetensors, a few LoRA matrices, beside the
// plain model; kept even by a run that does not dream), and a sleep on a checkpoint that has
// one dreams from it. Off: every sleep dreams from a fresh generator and saves none.
// The config is a SleepMethodConfig (sleep/sleep_method.h; every key optional). Prints a
// table (phase, held-out NLL, old NLL, seconds), writes DIR/metrics.json, DIR/cycle.png
// (wake loss and seeding JSD) and the new checkpoint DIR/ckpt-*/ (with its tokenizer).
//
// Crash safety (issue 8): progress checkpoints go to DIR/progress/ (nn/checkpoint.h, atomic)
// every --checkpoint-every wake steps and at the end of the wake and sleep phases; they hold
// the model, the wake optimiser, the learner's state (sleep/wake.h LearnerState), the RNGs
// and the metrics so far. `--resume` continues from the latest one with the same arguments
// (checked: the inputs' content and the config must match) and ends bit-identical to an
// uninterrupted run (tools/kill_test.sh). A phase interrupted in the middle (the sleep
// phase's seeding steps, dreaming) reruns from its start: both are deterministic given the
// checkpoint. Once metrics.json is written the progress directory is removed.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "nn/checkpoint.h"
#include "nn/file_io.h"
#include "nn/optim.h"
#include "nn/safetensors.h"
#include "nn/tokenizer.h"
#include "nn/train_config.h"
#include "sleep/baselines/training.h"
#include "sleep/config_json.h"
#include "sleep/dreaming.h"
#include "sleep/lora.h"
#include "sleep/sleep_method.h"
#include "sleep/wake.h"
#include "tensor/format.h"
#include "tools/cli_common.h"

namespace somnus::tools {

namespace {

using nlohmann::json;
using nn::TokenId;
namespace fs = std::filesystem;

struct SleepArgs {
  std::string ckpt, data, config, old_data, out = "runs/sleep";
  std::vector<std::string> sets;
  std::string device = "cpu";
  bool resume = false;
  int64_t checkpoint_every = 10;  // wake steps between progress checkpoints (0: phase ends only)
  int64_t stop_at = 0;            // stop after this progress step (see the top of the file)
};

// Progress checkpoints: DIR/progress/ckpt-<step>, step = wake steps taken, or wake_steps + 1
// once the sleep phase is over. train_state.json's extra holds the phase and what the final
// metrics need; anchor.safetensors the learner's sender anchor.
constexpr const char* kAnchorFile = "anchor.safetensors";

// The key of a `somnus sleep` checkpoint's train_state.json extra that records its wake.lr.
constexpr const char* kWakeLrKey = "sleep_wake_lr";

// The key of a `somnus sleep` checkpoint's train_state.json extra that records the receiver
// slots' activation order (the consolidator's state without its generator), so that
// on_exhausted = evict_oldest / merge_oldest in a later sleep evicts the slot that is really
// the oldest.
constexpr const char* kSlotOrderKey = "sleep_slot_activation";

// The learned dream generator a `somnus sleep` checkpoint carries (dream.persist_dreamer): the
// "dreamer" adapter's tensors (sleep::DreamerState::adapter), and in train_state.json's extra
// the runs and ReST-EM updates it has had.
constexpr const char* kDreamerFile = "dreamer.safetensors";
constexpr const char* kDreamerKey = "sleep_dreamer";

// The learning rate a checkpoint last trained at. A `somnus train` checkpoint: its config's lr
// times its schedule's scale at the last step taken. A `somnus sleep` checkpoint (no training
// config): the wake.lr that sleep ran with, recorded in its train_state.json, so that a second
// sleep on a slept model continues at the same rate. Empty when the checkpoint records neither.
// `state`: the checkpoint's train_state.json.
std::optional<double> last_training_lr(const std::string& dir, const nlohmann::json& state) {
  if (!nn::checkpoint_has_file(dir, "train_config.json")) {
    const nlohmann::json extra = state.value("extra", nlohmann::json::object());
    if (extra.is_object() && extra.contains(kWakeLrKey) && extra.at(kWakeLrKey).is_number())
      return extra.at(kWakeLrKey).get<double>();
    return std::nullopt;
  }
  const nn::TrainConfig tc = nn::read_checkpoint_json(dir, "train_config.json").get<nn::TrainConfig>();
  const int64_t step = state.at("step").get<int64_t>();
  if (step <= 0) return std::nullopt;
  return tc.lr * tc.lr_schedule().lr_at(step - 1);
}

// The names of the parameter groups a checkpoint's optimizer.safetensors was saved with, in
// order; empty when they cannot be read (load_checkpoint then reports what is wrong).
std::vector<std::string> saved_optimizer_groups(const std::string& dir) {
  std::vector<std::string> out;
  try {
    const SafetensorsHeader h = read_safetensors_header((fs::path(dir) / "optimizer.safetensors").string());
    const auto it = h.metadata.find("somnus.optimizer");
    if (it == h.metadata.end()) return {};
    const json meta = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
    if (!meta.is_object() || !meta.contains("groups") || !meta.at("groups").is_array()) return {};
    for (const json& g : meta.at("groups")) {
      if (!g.is_object() || !g.contains("name") || !g.at("name").is_string()) return {};
      out.push_back(g.at("name").get<std::string>());
    }
  } catch (const std::exception&) {
    return {};
  }
  return out;
}

// A progress line, flushed: stdout is block-buffered into a pipe or a log file, where the
// lines would otherwise arrive in 4 kB bursts and be lost to a kill.
template <typename... T>
void say(fmt::format_string<T...> f, T&&... args) {
  fmt::print(f, std::forward<T>(args)...);
  std::fflush(stdout);
}

// A table number; JSON stores NaN (no --old-data) as null.
double num(const json& v) { return v.is_null() ? std::nan("") : v.get<double>(); }

void run_sleep(const SleepArgs& a) {
  const Device device = parse_device_option(a.device);
  const std::string dir = nn::resolve_checkpoint(a.ckpt);
  auto model = nn::load_transformer(dir, device);
  const std::string tok_json = nn::read_checkpoint_file(dir, "tokenizer.json");
  const nn::Tokenizer tok = nn::Tokenizer::from_json(tok_json, dir + "/tokenizer.json");
  SOMNUS_CHECK(tok.vocab_size() == model->config().vocab_size,
               "sleep: the tokenizer's vocabulary ({}) differs from the model's ({})", tok.vocab_size(),
               model->config().vocab_size);
  SOMNUS_CHECK(a.checkpoint_every >= 0, "sleep: --checkpoint-every must be >= 0, got {}", a.checkpoint_every);
  SOMNUS_CHECK(a.stop_at >= 0, "sleep: --stop-at must be >= 0, got {}", a.stop_at);

  json cj = json::object();
  if (!a.config.empty()) {
    cj = json::parse(read_file(a.config), nullptr, false);
    SOMNUS_CHECK(!cj.is_discarded(), "sleep: {} is not valid JSON", a.config);
  }
  for (const std::string& s : a.sets) {
    const size_t eq = s.find('=');
    SOMNUS_CHECK(eq != std::string::npos && eq > 0, "sleep: --set expects key=value, got '{}'", s);
    sleep::set_config_key(cj, s.substr(0, eq), s.substr(eq + 1));
  }
  const json ckpt_state = nn::read_checkpoint_json(dir, "train_state.json");
  // Unless set, the wake phase continues at the rate the checkpoint last trained at.
  // WakeConfig's default (3e-3) is the reproduction suite's, for models trained from scratch
  // inside the experiment; on a trained model it undoes part of the training. Measured on
  // tools/configs/cms_tiny.json trained its 300 steps (lr 2e-3, cosine to 2e-4), 50 wake steps
  // on 8 kB of new text: wake.lr 3e-3 took the held-out NLL 3.98 -> 4.91 and the old NLL
  // 4.27 -> 7.17; the default here, 2e-4, took them to 3.73 and 4.56 (README, "CLI").
  if (cj.is_object() && !(cj.contains("wake") && cj["wake"].is_object() && cj["wake"].contains("lr"))) {
    if (const std::optional<double> lr = last_training_lr(dir, ckpt_state)) {
      if (!cj.contains("wake")) cj["wake"] = json::object();
      if (cj["wake"].is_object()) {
        cj["wake"]["lr"] = *lr;
        say("sleep: wake.lr {:.3g}, the rate the checkpoint last trained at (--set wake.lr=... to change)\n", *lr);
      }
    } else {
      say("sleep: wake.lr {:.3g}, WakeConfig's default: the checkpoint records no training rate (--set "
          "wake.lr=... to change)\n",
          sleep::WakeConfig{}.lr);
    }
  }
  const sleep::SleepMethodConfig cfg = cj.get<sleep::SleepMethodConfig>();
  SOMNUS_CHECK(a.stop_at <= cfg.wake_steps + 1,
               "sleep: --stop-at {} is past the last progress step (wake_steps + 1 = {})", a.stop_at, cfg.wake_steps + 1);

  // Where this run stands: fresh, resumable (a progress checkpoint), or already complete.
  const fs::path out(a.out);
  const std::string progress_root = (out / "progress").string();
  const std::optional<std::string> progress = nn::latest_checkpoint(progress_root);
  const bool complete = fs::exists(out / "metrics.json") && nn::latest_checkpoint(a.out).has_value();
  // Progress checkpoints go once the run is complete, renamed first so that a kill mid-removal
  // never leaves a half-deleted checkpoint under its name.
  auto remove_progress = [&] {
    if (!fs::exists(progress_root)) return;
    const fs::path trash = out / ".progress.deleting";
    fs::remove_all(trash);
    fs::rename(progress_root, trash);
    fs::remove_all(trash);
  };
  if (a.resume && complete) {
    remove_progress();  // left by a life killed while cleaning up
    fmt::print("sleep --resume: {} is complete (metrics.json and its checkpoint); nothing to do\n", a.out);
    return;
  }
  SOMNUS_CHECK(!a.resume || progress.has_value(),
               "sleep --resume: no progress checkpoint in '{}' (start the run without --resume)", progress_root);
  SOMNUS_CHECK(a.resume || (!progress && !nn::latest_checkpoint(a.out)),
               "sleep: '{}' already holds a sleep run; pass --resume to continue it, or choose another --out", a.out);

  const int64_t block = model->config().block_size;
  const std::string doc_bytes = read_file(a.data);
  const std::vector<TokenId> doc = tok.encode(doc_bytes);
  SOMNUS_CHECK(static_cast<int64_t>(doc.size()) >= 4 * block,
               "sleep: {} has {} tokens; a document needs at least 4 × block_size = {}", a.data, doc.size(), 4 * block);
  const size_t cut = doc.size() * 9 / 10;
  const std::vector<TokenId> context(doc.begin(), doc.begin() + static_cast<int64_t>(cut));
  const std::vector<TokenId> held(doc.begin() + static_cast<int64_t>(cut), doc.end());
  const std::vector<sleep::TrainSequence> held_rows = sleep::text_rows(held, block);
  const std::vector<sleep::TrainSequence> ctx_rows = sleep::text_rows(context, block);
  std::vector<sleep::TrainSequence> old_rows;
  const std::string old_bytes = a.old_data.empty() ? "" : read_file(a.old_data);
  if (!a.old_data.empty()) {
    const std::vector<TokenId> old = tok.encode(old_bytes);
    old_rows = sleep::text_rows(std::vector<TokenId>(old.begin(), old.begin() + std::min<size_t>(old.size(), 16 * block)), block);
  }
  auto nll = [&](const std::vector<sleep::TrainSequence>& rows) {
    return rows.empty() ? std::nan("") : -sleep::mean_logprob(*model, rows);
  };
  // What the progress checkpoints must agree on to be continued: the inputs by content (the
  // model's weights, config and tokenizer by the checksums of the --ckpt manifest, which
  // load_transformer verified) and the config.
  auto hash_of = [](const std::string& bytes) { return fmt::format("{:016x}", xxh64(bytes.data(), bytes.size())); };
  const json identity = {{"ckpt_files", nn::read_checkpoint_json(dir, "MANIFEST.json").at("files")},
                         {"data_xxh64", hash_of(doc_bytes)},
                         {"old_data_xxh64", a.old_data.empty() ? "" : hash_of(old_bytes)},
                         {"config", json(cfg)}};

  json metrics;
  json table = json::array();
  std::vector<double> wake_loss;
  double seconds_before = 0.0;  // time spent by earlier lives of a resumed run
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  auto phase = [&](const std::string& name) {
    table.push_back({{"phase", name}, {"heldout_nll", nll(held_rows)}, {"old_nll", nll(old_rows)}, {"seconds", elapsed()}});
    say("[{}] held-out NLL {:.4f} | old NLL {:.4f} | {:.1f}s\n", name, num(table.back()["heldout_nll"]),
        num(table.back()["old_nll"]), num(table.back()["seconds"]));
  };

  sleep::WakeLearner learner(*model, cfg.wake, cfg.consolidation);
  {
    // The slot ages an earlier `somnus sleep` recorded (without them every active slot counts
    // as equally old, and evict_oldest / merge_oldest took slot 0 each time, however new it was).
    const json x = ckpt_state.value("extra", json::object());
    if (x.is_object() && x.contains(kSlotOrderKey)) learner.consolidator().load_state(x.at(kSlotOrderKey));
  }
  // The teacher's prompts. A consolidation that would be refused (no free receiver slot under
  // on_exhausted = error, a bad prompt) is said before the wake phase is spent, not after it.
  const std::vector<std::vector<TokenId>> sleep_prompts =
      cfg.sleep_prompts.empty() ? std::vector<std::vector<TokenId>>{{tok.bos_id()}} : cfg.sleep_prompts;
  auto check_consolidation_ready = [&] {
    if (cfg.consolidate) learner.consolidator().check_ready(sleep_prompts);
  };
  // The dream generator an earlier sleep learned: dreamt from (when this run dreams) and saved
  // on with the new checkpoint either way.
  sleep::DreamerState dreamer_state;
  if (cfg.dream.persist_dreamer && nn::checkpoint_has_file(dir, kDreamerFile)) {
    dreamer_state.adapter = nn::read_checkpoint_tensors(dir, kDreamerFile);
    const json x = ckpt_state.value("extra", json::object());
    if (x.is_object() && x.contains(kDreamerKey)) {
      dreamer_state.runs = x.at(kDreamerKey).value("runs", int64_t{0});
      dreamer_state.updates = x.at(kDreamerKey).value("updates", int64_t{0});
    }
    // A carried generator that does not fit this run's dream.lora is refused now, not after
    // the wake and the sleep have been spent.
    if (cfg.dreaming) {
      try {
        sleep::check_adapter_state_fits(*model, cfg.dream.lora, dreamer_state.adapter);
      } catch (const Error& e) {
        fail("sleep: the dream generator {} carries ({}) does not fit this run's dream.lora: {} (--set "
             "dream.persist_dreamer=false dreams from a fresh one)",
             dir, kDreamerFile, e.what());
      }
    }
  }
  Generator gen(cfg.seed);  // wake batches
  const int64_t W = cfg.wake_steps;
  std::string stage = "waking";  // waking → woke → slept
  if (progress) {
    // Checked before anything is loaded: the run's inputs, then the shape of its state.
    const json x = nn::read_checkpoint_json(*progress, "train_state.json").value("extra", json::object());
    SOMNUS_CHECK(x.contains("identity") && x.at("identity") == identity,
                 "sleep --resume: {} was made with other inputs or another config (the --ckpt weights, config or "
                 "tokenizer, the document, --old-data or the config differ); resume with the same arguments, or "
                 "start a new --out",
                 *progress);
    for (const char* key : {"stage", "wake_loss", "table", "learner", "seconds"})
      SOMNUS_CHECK(x.contains(key), "sleep --resume: {}: train_state.json lacks '{}'", *progress, key);
    stage = x.at("stage").get<std::string>();
    SOMNUS_CHECK(stage == "waking" || stage == "woke" || stage == "slept",
                 "sleep --resume: {}: unknown stage '{}'", *progress, stage);
    for (const json& v : x.at("wake_loss")) wake_loss.push_back(num(v));  // a NaN loss is stored as null
    const nn::TrainState st = [&] {
      try {
        return nn::load_checkpoint(*progress, *model, &learner.optimizer());
      } catch (const Error& e) {
        // Same config, other optimiser groups: the checkpoint was written by a somnus whose wake
        // optimiser grouped the parameters otherwise (before 6fc7f10 the sender level shared
        // the groups of its period; now it has "<group>.sender" groups of its own).
        const std::vector<std::string> saved = saved_optimizer_groups(*progress);
        std::vector<std::string> now;
        for (const ParamGroup& g : learner.optimizer().groups()) now.push_back(g.name);
        if (saved.empty() || saved == now) throw;
        fail("sleep --resume: {}: its wake optimiser state has the parameter groups [{}], this somnus builds [{}] "
             "for the same config (the sender level now has optimiser groups of its own, \"<group>.sender\", "
             "where its period is shared), so the state cannot be carried over; start the run again in a new --out "
             "({})",
             *progress, fmt::join(saved, ", "), fmt::join(now, ", "), e.what());
      }
    }();
    if (stage != "slept") check_consolidation_ready();
    SOMNUS_CHECK(a.stop_at == 0 || a.stop_at > st.step,
                 "sleep --resume: --stop-at {} is not after {} (progress step {}); give a later step, or none",
                 a.stop_at, *progress, st.step);
    SOMNUS_CHECK(static_cast<int64_t>(wake_loss.size()) == (stage == "waking" ? st.step : W),
                 "sleep --resume: {}: {} wake losses recorded at stage '{}', step {}", *progress, wake_loss.size(),
                 stage, st.step);
    learner.load_state({x.at("learner"), nn::read_checkpoint_tensors(*progress, kAnchorFile)});
    gen = st.data_rng;
    default_generator() = st.default_rng;
    table = x.at("table");
    if (x.contains("consolidation")) metrics["consolidation"] = x.at("consolidation");
    seconds_before = num(x.at("seconds"));
    say("sleep: resumed from {} ({}, wake step {} of {})\n", *progress, stage, wake_loss.size(), W);
  } else {
    check_consolidation_ready();
    phase("before");
    if (cfg.wake.sleep_teacher == "since_last_sleep") learner.sleep();  // anchor: the model as loaded
  }
  // A progress checkpoint at `step`; returns true when the run should stop here (--stop-at).
  auto save_progress = [&](int64_t step) {
    nn::CheckpointSave save;
    save.model = model.get();
    save.model_config = model->config();
    save.optimizer = &learner.optimizer();
    save.state.step = step;
    save.state.data_rng = gen;
    save.state.default_rng = default_generator();
    const sleep::LearnerState ls = learner.state();
    json x = {{"identity", identity}, {"stage", stage}, {"wake_loss", wake_loss}, {"table", table},
              {"learner", ls.scalars}, {"seconds", elapsed()}};
    if (metrics.contains("consolidation")) x["consolidation"] = metrics["consolidation"];
    save.state.extra = x;
    save.extra_tensors[kAnchorFile] = ls.anchor;
    save.extra_files["tokenizer.json"] = tok_json;  // a progress checkpoint loads like any other
    nn::save_checkpoint(progress_root, save, /*keep_last=*/2);
    if (a.stop_at > 0 && step == a.stop_at) {
      say("sleep: stopped at progress step {} (--stop-at); --resume continues\n", step);
      return true;
    }
    return false;
  };
  if (!progress && W > 0 && save_progress(0)) return;  // (W = 0: the end-of-wake checkpoint follows)

  // wake
  if (stage == "waking") {
    for (int64_t s = static_cast<int64_t>(wake_loss.size()); s < W; ++s) {
      std::vector<sleep::TrainSequence> pick;
      const std::vector<double> idx =
          randint(0, static_cast<int64_t>(ctx_rows.size()), {std::min<int64_t>(cfg.batch_size, static_cast<int64_t>(ctx_rows.size()))}, gen)
              .to_vector();
      for (double i : idx) pick.push_back(ctx_rows[static_cast<size_t>(i)]);
      const sleep::WakeStepLog log = learner.train_step(sleep::make_batch(pick, block, model->config().vocab_size));
      wake_loss.push_back(log.loss);
      const int64_t k = s + 1;
      if (log.skipped_non_finite) say("  wake step {}: non-finite loss or gradient norm, step skipped\n", k);
      if (log.skipped_spike) say("  wake step {}: loss spike ({:.4f}), step skipped\n", k, log.loss);
      if (k < W && ((a.checkpoint_every > 0 && k % a.checkpoint_every == 0) || (a.stop_at > 0 && k == a.stop_at)) &&
          save_progress(k))
        return;
    }
    phase("wake");
    stage = "woke";
    if (save_progress(W)) return;
  }
  metrics["wake_loss"] = wake_loss;

  // sleep
  if (stage == "woke") {
    if (cfg.consolidate) {
      learner.set_sleep_prompts(sleep_prompts);
      const sleep::ConsolidationReport rep = learner.sleep([](const sleep::SeedingStepLog& l) {
        say("  seeding step {:>3}: loss {:.4f} jsd {:.4f} reward {:.3f} clip {:.3f} | {:.0f} tok/s\n", l.step, l.loss,
            l.jsd, l.mean_reward, l.clip_fraction, l.tokens_per_s);
      });
      metrics["consolidation"] = rep.to_json();
      phase("sleep");
    }
    stage = "slept";
    if (save_progress(W + 1)) return;
  }

  // dream
  if (cfg.dreaming) {
    sleep::DreamTask task;
    task.name = fs::path(a.data).filename().string();
    const int64_t n_ctx = std::min<int64_t>(block / 2, static_cast<int64_t>(context.size()));
    task.context.assign(context.end() - n_ctx, context.end());
    task.prompt_prefix = {tok.bos_id()};
    task.score = [&held_rows](nn::Transformer& m) { return sleep::mean_logprob(m, held_rows); };
    sleep::DreamConfig dc = cfg.dream;
    dc.dream_length = std::min<int64_t>(dc.dream_length, block - n_ctx - 1);
    sleep::Dreamer dreamer(*model, dc);
    const bool carried = !dreamer_state.empty();
    if (carried) {
      dreamer.load_dreamer_state(dreamer_state);  // it fits: checked before the wake
      say("  dreaming from the checkpoint's dream generator ({} runs, {} ReST-EM updates so far)\n", dreamer_state.runs,
          dreamer_state.updates);
    }
    const sleep::DreamResult r = dreamer.run(task, [](const sleep::DreamIterationMetrics& m) {
      say("  dream iteration {}: sampled {} kept {} rewarded {} | τ base {:.4f} mean {:.4f} max {:.4f}\n", m.iteration,
          m.sampled, m.kept, m.rewarded, m.base_tau, m.mean_tau, m.max_tau);
    });
    const sleep::DreamerState after = dreamer.dreamer_state();
    if (cfg.dream.persist_dreamer) dreamer_state = after;
    metrics["dream"] = {{"iterations", r.iterations},
                        {"rewarded", r.rewarded.size()},
                        {"tau_before", r.tau_before},
                        {"tau_after", r.tau_after},
                        {"dreamer", {{"carried", carried}, {"runs", after.runs}, {"updates", after.updates}}}};
    phase("dream");
  }
  metrics["table"] = table;
  metrics["config"] = cfg;

  // Dreaming leaves (merged, switched-off) LoRA parameters on the adapted layers; the saved
  // model is the plain architecture (sleep::state_dict_without_lora), so `generate`/`eval`/
  // `sleep` load it like any other.
  Generator init(0);
  nn::Transformer plain(model->config(), init, model->wte->weight.dtype(), device);
  plain.load_state_dict(sleep::state_dict_without_lora(*model), /*strict=*/true);
  nn::CheckpointSave save;
  save.model = &plain;
  save.model_config = model->config();
  save.state.step = static_cast<int64_t>(wake_loss.size());
  json slot_order = learner.consolidator().state();
  slot_order.erase("gen");  // a later sleep samples from its own seed
  // A later `somnus sleep` on this checkpoint wakes at this rate and knows the slots' ages.
  save.state.extra = {{kWakeLrKey, cfg.wake.lr}, {kSlotOrderKey, slot_order}};
  if (cfg.dream.persist_dreamer && !dreamer_state.empty()) {
    save.extra_tensors[kDreamerFile] = dreamer_state.adapter;
    save.state.extra[kDreamerKey] = {{"runs", dreamer_state.runs}, {"updates", dreamer_state.updates}};
  }
  save.extra_files["tokenizer.json"] = tok_json;
  const std::string saved = nn::save_checkpoint(a.out, save, /*keep_last=*/1);

  // Plot: wake loss per step and the seeding JSD per step (before metrics.json, which marks
  // the run complete: a resumed run after a kill here writes them again). A panel without
  // data (wake_steps = 0; no seeding steps) is left out: gnuplot stops at an empty data file.
  bool plotted = false;
  {
    std::ofstream f(out / "wake_loss.dat");
    for (size_t i = 0; i < wake_loss.size(); ++i) f << i + 1 << " " << wake_loss[i] << "\n";
    std::ofstream g(out / "seeding.dat");
    size_t seeding_steps = 0;
    if (metrics.contains("consolidation"))
      for (const auto& s : metrics["consolidation"]["steps"]) {
        g << s["step"].get<int64_t>() << " " << num(s["jsd"]) << "\n";
        ++seeding_steps;
      }
    f.close();
    g.close();
    const int panels = (wake_loss.empty() ? 0 : 1) + (seeding_steps == 0 ? 0 : 1);
    if (panels > 0) {
      std::ofstream gp(out / "cycle.gp");
      gp << "set terminal pngcairo size " << 450 * panels << ",420 noenhanced\nset output "
         << gnuplot_quote((out / "cycle.png").string()) << "\n"
         << "set multiplot layout 1," << panels << " title "
         << gnuplot_quote("somnus sleep: " + fs::path(a.data).filename().string()) << "\n"
         << "set grid\n";
      // A panel of one point (wake_steps = 1, one KS step) gets explicit ranges and a marker:
      // autoscaling a single point is an "empty x range" and "empty y range" warning each.
      const auto single = [](size_t n) {
        return n == 1 ? "set xrange [0:2]\nset yrange [0:*]\n" : "set autoscale xy\n";
      };
      if (!wake_loss.empty())
        gp << "set title 'wake: next-token loss'\nset xlabel 'step'\n" << single(wake_loss.size()) << "plot "
           << gnuplot_quote((out / "wake_loss.dat").string()) << " with "
           << (wake_loss.size() == 1 ? "points" : "lines") << " notitle\n";
      if (seeding_steps > 0)
        gp << "set title 'sleep: seeding JSD'\nset xlabel 'KS step'\n" << single(seeding_steps) << "plot "
           << gnuplot_quote((out / "seeding.dat").string()) << " with linespoints notitle\n";
      gp << "unset multiplot\n";
      gp.close();
      const int rc = run_gnuplot(out / "cycle.gp");
      plotted = rc == 0;
      if (rc != 0) fmt::print("plot: gnuplot failed (exit {})\n", rc);
    } else {
      fmt::print("plot: no wake steps and no seeding steps, no cycle.png\n");
    }
  }

  atomic_write((out / "metrics.json").string(), metrics.dump(2) + "\n");
  remove_progress();  // the run is complete: metrics.json and the checkpoint say so

  fmt::print("\n| phase | held-out NLL (new) | old NLL | seconds |\n|---|---|---|---|\n");
  for (const auto& row : table)
    fmt::print("| {} | {:.4f} | {:.4f} | {:.1f} |\n", row["phase"].get<std::string>(), num(row["heldout_nll"]),
               num(row["old_nll"]), num(row["seconds"]));
  if (plotted) {
    fmt::print("\nwrote {}, {}/metrics.json and {}/cycle.png\n", saved, a.out, a.out);
  } else {
    fmt::print("\nwrote {} and {}/metrics.json\n", saved, a.out);
  }
}

}  // namespace

void add_sleep_command(CLI::App& app) {
  auto a = std::make_shared<SleepArgs>();
  CLI::App* cmd = app.add_subcommand("sleep", "One wake → sleep → dream cycle of a trained model on a new document");
  cmd->add_option("--ckpt", a->ckpt, "Checkpoint (or run) directory of `somnus train`")->required();
  cmd->add_option("--data", a->data, "The new document (text)")->required();
  cmd->add_option("--config", a->config, "SleepMethodConfig JSON (sleep/sleep_method.h); defaults when absent");
  cmd->add_option("--set", a->sets, "Override a config key: --set wake_steps=50 --set consolidation.ks.steps=10");
  cmd->add_option("--old-data", a->old_data, "Old text, to measure forgetting");
  cmd->add_option("--out", a->out, "Output directory (checkpoint, metrics.json, cycle.png)");
  cmd->add_flag("--resume", a->resume,
                "Continue an interrupted run in --out from its latest progress checkpoint, bit-exactly "
                "(same arguments)");
  cmd->add_option("--checkpoint-every", a->checkpoint_every,
                  "Wake steps between progress checkpoints (0: only at the end of each phase)")
      ->capture_default_str();
  cmd->add_option("--stop-at", a->stop_at,
                  "Stop after this progress step (a wake step, or wake_steps + 1 = after the sleep phase) with a "
                  "checkpoint; --resume continues");
  add_device_option(cmd, a->device);
  cmd->callback([a] { run_sleep(*a); });
}

}  // namespace somnus::tools
