// `somnus profile --config cfg.json --what train|generate|sleep --steps N [--warmup W]
//                 [--trace out.json] [--device cpu|cuda] [--key value ...]`
//
// Runs W unprofiled warm-up steps (allocator caches, BLAS buffers, cuBLASLt plans), then N
// steps under the profiler (tensor/profiler.h), prints the per-op table (op, calls, total ms,
// % of the steps' wall time, mean µs, GFLOP/s, peak MB) and writes a Chrome trace.
//
//   train     the training step of `somnus train` (tools/cmd_train.cpp) on the same config:
//             zero_grad, grad_accum × (forward + loss, backward), clipping of the groups due,
//             the LR schedule, AdamW. Scopes: train_step/{forward, backward, clip, optimizer}.
//             With "data" the tokens come from the text file (BPE as in train, or the config's
//             tokenizer); without it, uniform random ids over vocab_size.
//   generate  one nn::generate call per step (KV cache, batch_size prompts of half a block,
//             sample_tokens new tokens, sample_temperature / sample_top_k). Scope: generate.
//   sleep     one wake step then one sleep (sleep/wake.h) per profiled step (the learner's
//             anchor is taken before the warm-up, so every step consolidates): consolidation with
//             2 Knowledge Seeding steps, teacher sampling and the imitation term included; the
//             model needs >= 2 CMS levels with slots in level 1 (e.g. tools/configs/cms_tiny.json).
//             Scopes: wake_step, sleep/consolidation/{teacher_sampling, distill/{teacher_fwd,
//             student_fwd, jsd, distill_backward}, imitation_rollouts, ppo_update, eval_jsd, ...}.
//
// Nothing is written but the trace: no checkpoints, metrics or tokenizer files. The model is
// freshly initialised from the config's seed (timing does not depend on the weights).
// On CUDA each step ends with a device synchronize, so its wall time covers its kernels; ops
// are timed by CUDA events, with no synchronize between them.
#include <fmt/format.h>

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "nn/data.h"
#include "nn/file_io.h"
#include "nn/generate.h"
#include "nn/optim.h"
#include "nn/tokenizer.h"
#include "nn/train_config.h"
#include "nn/transformer.h"
#include "tensor/cuda/backend.h"
#include "tensor/format.h"
#include "tensor/profiler.h"
#include "tensor/random.h"
#include "sleep/wake.h"
#include "tools/cli_common.h"

namespace somnus::tools {

using nlohmann::json;
using namespace somnus::nn;

namespace {

struct ProfileArgs {
  std::string config_path;
  std::string what = "train";
  int64_t steps = 5;
  int64_t warmup = 2;
  std::string trace = "somnus_trace.json";
  std::string device;  // empty: the config's
  std::vector<std::string> extras;
};

// The token stream: the config's text through its tokenizer (as `somnus train` builds it),
// or random ids when the config names no data.
std::vector<TokenId> load_tokens(TrainConfig& cfg) {
  if (cfg.data.empty()) {
    cfg.model.vocab_size = cfg.vocab_size;
    Generator gen(cfg.seed + 1);
    const int64_t n = std::max<int64_t>(4 * cfg.batch_size * (cfg.effective_seq_len() + 1), 4096);
    const std::vector<double> ids = randint(0, cfg.vocab_size, {n}, gen, DType::i64).to_vector();
    std::vector<TokenId> out;
    out.reserve(ids.size());
    for (double id : ids) out.push_back(static_cast<TokenId>(id));
    return out;
  }
  const std::string text = read_file(cfg.data);
  const std::string train_text = text.substr(0, static_cast<size_t>(static_cast<double>(text.size()) *
                                                                  (1.0 - cfg.val_fraction)));
  const Tokenizer tok =
      cfg.tokenizer.empty() ? Tokenizer::train(train_text, cfg.vocab_size) : Tokenizer::load(cfg.tokenizer);
  cfg.model.vocab_size = tok.vocab_size();
  return tok.encode(train_text);
}

void sync(Device device) {
  if (device.is_cuda()) cuda::synchronize(device.index);
}

void run_profile(const ProfileArgs& args) {
  SOMNUS_CHECK(args.what == "train" || args.what == "generate" || args.what == "sleep",
               "profile: --what must be train, generate or sleep, got '{}'", args.what);
  SOMNUS_CHECK(args.steps >= 1, "profile: --steps must be >= 1, got {}", args.steps);
  SOMNUS_CHECK(args.warmup >= 0, "profile: --warmup must be >= 0, got {}", args.warmup);

  // The config, exactly as `somnus train` reads it: defaults, the file, then --key value.
  std::vector<std::pair<std::string, std::string>> overrides = parse_override_args(args.extras);
  if (!args.device.empty()) overrides.emplace_back("device", args.device);
  json cfg_json = default_train_config_json();
  if (!args.config_path.empty()) {
    const json file = json::parse(read_file(args.config_path), nullptr, false);
    SOMNUS_CHECK(!file.is_discarded() && file.is_object(), "profile config: '{}' is not a JSON object",
                 args.config_path);
    for (const auto& [k, v] : file.items()) cfg_json[k] = v;
  }
  apply_overrides(cfg_json, overrides);
  TrainConfig cfg = cfg_json.get<TrainConfig>();
  const Device device = parse_device_option(cfg.device);

  std::vector<TokenId> tokens = load_tokens(cfg);
  cfg.model.validate();
  const int64_t T = cfg.effective_seq_len();
  SOMNUS_CHECK(static_cast<int64_t>(tokens.size()) > T + 1, "profile: {} tokens, too few for seq_len {}",
               tokens.size(), T);

  Generator init_gen(cfg.seed);
  Transformer model(cfg.model, init_gen, DType::f32, device);
  manual_seed(cfg.seed + 2);

  std::function<void(int64_t)> step;
  std::optional<AdamW> opt;
  std::optional<TokenStreamBatcher> batcher;
  std::optional<LrSchedule> sched;
  std::optional<sleep::WakeLearner> learner;
  std::vector<std::vector<TokenId>> prompts;
  GenerateConfig gen_cfg;
  if (args.what == "train") {
    opt.emplace(transformer_param_groups(model, cfg.lr, cfg.weight_decay),
                AdamWOptions{.beta1 = cfg.beta1, .beta2 = cfg.beta2, .eps = cfg.eps});
    batcher.emplace(std::move(tokens), cfg.batch_size, T, cfg.seed + 1);
    sched.emplace(cfg.lr_schedule());
    model.train();
    // The loop body of tools/cmd_train.cpp (minus its logging, guard and checkpoints).
    step = [&](int64_t k) {
      SOMNUS_PROFILE_SCOPE("train_step");
      opt->zero_grad();
      const double accum_scale = 1.0 / static_cast<double>(cfg.grad_accum);
      for (int64_t micro = 0; micro < cfg.grad_accum; ++micro) {
        const Batch b = batcher->next();
        Tensor total;
        {
          SOMNUS_PROFILE_SCOPE("forward");
          const LMLoss l = model.loss(b.input.to(device), b.target.to(device), b.mask.to(device));
          total = l.total(cfg.aux_loss_weight);
          if (cfg.grad_accum > 1) total = mul(total, accum_scale);
        }
        SOMNUS_PROFILE_SCOPE("backward");
        backward(total);
      }
      {
        SOMNUS_PROFILE_SCOPE("clip");
        if (cfg.grad_clip > 0.0) clip_grad_norm(opt->due_params(), cfg.grad_clip);
      }
      SOMNUS_PROFILE_SCOPE("optimizer");
      opt->set_lr_scale(sched->lr_at(k));
      opt->step();
    };
  } else if (args.what == "sleep") {
    sleep::ConsolidationConfig cc;
    cc.on_exhausted = sleep::SlotPolicy::evict_oldest;  // one slot per profiled step
    cc.ks.steps = 2;
    cc.ks.n_samples = cfg.batch_size;
    cc.ks.batch_size = cfg.batch_size;
    cc.ks.sample_tokens = std::max<int64_t>(1, T / 2);
    sleep::WakeConfig wc;
    wc.lr = cfg.lr;
    learner.emplace(model, wc, cc);
    // The learner's first sleep only records the anchor (sleep_teacher "since_last_sleep"):
    // take it here, as `somnus sleep` does, so that every warm-up and profiled step is a whole
    // consolidation (with --warmup 0 the first profiled step used to be the 0.06 ms anchor).
    learner->sleep();
    batcher.emplace(std::move(tokens), cfg.batch_size, T, cfg.seed + 1);
    model.train();
    step = [&](int64_t) {
      SOMNUS_PROFILE_SCOPE("sleep_cycle");
      const Batch b = batcher->next();
      learner->train_step(Batch{b.input.to(device), b.target.to(device), b.mask.to(device)});
      learner->sleep();
    };
  } else {
    const int64_t prompt_len = std::max<int64_t>(1, cfg.model.block_size / 2);
    for (int64_t b = 0; b < cfg.batch_size; ++b) {
      const auto at = static_cast<std::ptrdiff_t>((b * prompt_len) % (static_cast<int64_t>(tokens.size()) - prompt_len));
      prompts.emplace_back(tokens.begin() + at, tokens.begin() + at + prompt_len);
    }
    gen_cfg.max_new_tokens = std::min(cfg.sample_tokens, cfg.model.block_size - prompt_len);
    gen_cfg.temperature = cfg.sample_temperature;
    gen_cfg.top_k = cfg.sample_top_k;
    gen_cfg.seed = cfg.seed + 3;
    gen_cfg.validate();
    model.eval();
    step = [&](int64_t k) {
      SOMNUS_PROFILE_SCOPE("generate");
      gen_cfg.seed = cfg.seed + 3 + static_cast<uint64_t>(k);
      const GenerateResult r = generate(model, prompts, gen_cfg);
      SOMNUS_CHECK(r.sequences.size() == prompts.size(), "profile: generate returned {} sequences for {} prompts",
                   r.sequences.size(), prompts.size());
    };
  }

  for (int64_t k = 0; k < args.warmup; ++k) step(k);
  sync(device);

  using Clock = std::chrono::steady_clock;
  double wall_ms = 0;
  {
    profiler::Session session;
    for (int64_t k = args.warmup; k < args.warmup + args.steps; ++k) {
      const auto t0 = Clock::now();
      step(k);
      sync(device);
      wall_ms += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    }
  }
  const std::vector<profiler::Record> recs = profiler::records();
  fmt::print("profile: {} on {}, {} parameters, {} steps after {} warm-up: {:.3f} ms/step\n", args.what,
             device.str(), model.num_parameters(), args.steps, args.warmup, wall_ms / static_cast<double>(args.steps));
  fmt::print("{}\n{}", profiler::format_table(recs, wall_ms), profiler::format_scope_table(recs, wall_ms));
  if (!args.trace.empty()) {
    profiler::write_chrome_trace(args.trace, recs);
    fmt::print("trace: {} ({} events; open in chrome://tracing or ui.perfetto.dev)\n", args.trace, recs.size());
  }
}

}  // namespace

void add_profile_command(CLI::App& app) {
  auto args = std::make_shared<ProfileArgs>();
  auto* cmd = app.add_subcommand("profile", "Profile N training or generation steps: per-op table and Chrome trace");
  cmd->add_option("--config", args->config_path, "Training config (JSON), as for `somnus train`")
      ->check(CLI::ExistingFile);
  cmd->add_option("--what", args->what, "train, generate or sleep")->capture_default_str();
  cmd->add_option("--steps", args->steps, "Profiled steps")->capture_default_str()->check(positive());
  cmd->add_option("--warmup", args->warmup, "Unprofiled warm-up steps first")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--trace", args->trace, "Chrome trace JSON to write ('' for none)")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N (overrides the config's 'device')");
  cmd->allow_extras();
  cmd->footer("Any config key can be overridden: --batch_size 4 --model.n_layer 2 (see nn/train_config.h).");
  cmd->callback([cmd, args] {
    args->extras = cmd->remaining();
    run_profile(*args);
  });
}

}  // namespace somnus::tools
