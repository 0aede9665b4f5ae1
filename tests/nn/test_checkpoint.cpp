// Checkpoints (nn/checkpoint.h) and the training config (nn/train_config.h): bit-exact resume
// of a CMS transformer with a period-2 level (mid-window accumulators) and an active slot,
// strict loading (names, shapes, dtypes, truncation, corruption), crash-safe saving, and
// config parsing with overrides.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "nn/checkpoint.h"
#include "nn/data.h"
#include "nn/file_io.h"
#include "nn/lr_schedule.h"
#include "nn/optim.h"
#include "nn/safetensors.h"
#include "nn/train_config.h"
#include "nn/transformer.h"
#include "tensor/format.h"
#include "tensor/random.h"
#include "testing.h"

namespace somnus::nn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct TempDir {
  std::string path;
  TempDir() {
    path = (fs::temp_directory_path() /
            ("somnus_ckpt_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

using somnus::testing::error_of;
using somnus::testing::raw_bytes;

#define EXPECT_ERROR_HAS(expr, needle)                                              \
  do {                                                                              \
    const std::string msg_ = error_of([&] { expr; });                               \
    EXPECT_NE(msg_.find(needle), std::string::npos) << "message: " << msg_;         \
  } while (0)

TransformerConfig tiny_config() {
  TransformerConfig c;
  c.vocab_size = 48;
  c.n_layer = 1;
  c.n_embd = 16;
  c.n_head = 2;
  c.block_size = 12;
  c.levels = std::vector<LevelConfig>(2);
  c.levels[1].period = 2;  // a slow level: mid-window accumulators at odd steps
  c.levels[1].n_slots = 2;
  c.levels[1].slot_rank = 2;
  return c;
}

std::vector<TokenId> token_stream(int64_t n, int64_t vocab) {
  Generator g(99);
  const Tensor t = randint(0, vocab, {n}, g);
  std::vector<TokenId> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(static_cast<TokenId>(t.data<int64_t>()[i]));
  return out;
}

// Everything a training process holds; built fresh for a resume.
struct TrainRun {
  std::shared_ptr<Transformer> model;
  std::unique_ptr<AdamW> opt;
  std::unique_ptr<TokenStreamBatcher> batcher;
  LrSchedule sched = cosine_schedule(1.0, 2, 10, 0.1);

  TrainRun(uint64_t model_seed, uint64_t data_seed, bool activate) {
    Generator gen(model_seed);
    model = std::make_shared<Transformer>(tiny_config(), gen);
    if (activate) {
      model->level(0, 1).activate_slot(gen);
      NoGradGuard ng;  // a non-zero B so the slot matters
      Tensor b = model->parameter("blocks.0.cms.1.slots.0.B");
      b.copy_(randn(b.shape(), gen, b.dtype(), b.device(), 0.0, 0.1));
    }
    opt = std::make_unique<AdamW>(transformer_param_groups(*model, 3e-3, 0.1), AdamWOptions{.beta2 = 0.95});
    batcher = std::make_unique<TokenStreamBatcher>(token_stream(600, 48), 3, 12, data_seed);
  }

  double step() {
    opt->zero_grad();
    const Batch b = batcher->next();
    // A stand-in for dropout: the default generator is part of the state to restore.
    (void)randn({1}, default_generator(), DType::f64);
    Tensor loss = model->loss(b.input, b.target, b.mask).ce;
    const double value = loss.item();
    backward(loss);
    clip_grad_norm(opt->due_params(), 0.5);
    opt->set_lr_scale(sched.lr_at(opt->step_count()));
    opt->step();
    return value;
  }

  TrainState state() const {
    return TrainState{.step = opt->step_count(), .data_rng = batcher->generator(), .default_rng = default_generator()};
  }
  CheckpointSave contents() const {
    return CheckpointSave{.model = model.get(), .model_config = json(model->config()), .optimizer = opt.get(),
                          .state = state(), .train_config = json{{"note", "test"}}, .extra_files = {}, .extra_tensors = {}};
  }
};

TEST(Checkpoint, ResumeIsBitExact) {
  TempDir dir;
  const int n = 10, half = 5;  // step 5 is in the middle of the period-2 level's window

  manual_seed(4242);
  TrainRun straight(1, 7, true);
  std::vector<double> losses_s;
  for (int k = 0; k < n; ++k) losses_s.push_back(straight.step());
  const Generator dg_straight = default_generator();

  manual_seed(4242);
  std::vector<double> losses_r;
  {
    TrainRun first(1, 7, true);
    for (int k = 0; k < half; ++k) losses_r.push_back(first.step());
    ASSERT_TRUE(first.model->parameter("blocks.0.cms.1.mlp.fc.weight").grad().defined())
        << "the save must fall inside the slow level's window";
    save_checkpoint(dir.path, first.contents());
  }
  manual_seed(1);  // a fresh process: different default generator, model, batcher seeds
  TrainRun resumed(555, 3, false);
  ASSERT_FALSE(resumed.model->level(0, 1).slot_active(0));
  const TrainState st = load_checkpoint(resolve_checkpoint(dir.path), *resumed.model, resumed.opt.get());
  resumed.batcher->generator() = st.data_rng;
  default_generator() = st.default_rng;
  EXPECT_EQ(st.step, half);
  EXPECT_EQ(resumed.opt->step_count(), half);
  EXPECT_TRUE(resumed.model->level(0, 1).slot_active(0)) << "the slot mask buffer must be restored";
  for (int k = half; k < n; ++k) losses_r.push_back(resumed.step());

  ASSERT_EQ(losses_r.size(), losses_s.size());
  for (int k = 0; k < n; ++k) {
    EXPECT_EQ(std::memcmp(&losses_r[k], &losses_s[k], sizeof(double)), 0)
        << "loss at step " << k + 1 << ": " << losses_r[k] << " vs " << losses_s[k];
  }
  const NamedTensors a = straight.model->state_dict(), b = resumed.model->state_dict();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(raw_bytes(a[i].second), raw_bytes(b[i].second)) << a[i].first;
  EXPECT_EQ(resumed.batcher->generator().offset, straight.batcher->generator().offset);
  const Generator dg_resumed = default_generator();

  // Teeth: without the optimiser state (pending slow-level sums, Adam moments) it diverges.
  manual_seed(4242);
  EXPECT_EQ(dg_resumed.seed, dg_straight.seed);
  EXPECT_EQ(dg_resumed.offset, dg_straight.offset);
  TrainRun weights_only(555, 3, false);
  load_checkpoint(resolve_checkpoint(dir.path), *weights_only.model, nullptr);
  weights_only.batcher->generator() = st.data_rng;
  default_generator() = st.default_rng;
  double diff = 0;
  for (int k = half; k < n; ++k) diff += std::abs(weights_only.step() - losses_s[k]);
  EXPECT_GT(diff, 0.0);
}

// Rewrites one file of a checkpoint and re-seals the manifest, so that a test reaches the
// check behind the checksum.
void reseal(const std::string& dir, const std::string& name, const std::string& bytes) {
  atomic_write(dir + "/" + name, bytes);
  json m = json::parse(read_file(dir + "/MANIFEST.json"));
  m["files"][name] = {{"bytes", bytes.size()}, {"xxh64", fmt::format("{:016x}", xxh64(bytes.data(), bytes.size()))}};
  atomic_write(dir + "/MANIFEST.json", m.dump());
}

void reseal_model(const std::string& dir, const NamedTensors& tensors) {
  save_safetensors(dir + "/tmp.safetensors", tensors);
  const std::string bytes = read_file(dir + "/tmp.safetensors");
  fs::remove(dir + "/tmp.safetensors");
  reseal(dir, "model.safetensors", bytes);
}

TEST(Checkpoint, StrictLoadNamesTheProblem) {
  TempDir dir;
  TrainRun run(1, 7, false);
  run.step();
  const std::string ck = save_checkpoint(dir.path, run.contents());
  const std::string model_file = ck + "/model.safetensors";
  const std::string original = read_file(model_file);
  const std::string original_manifest = read_file(ck + "/MANIFEST.json");
  auto restore = [&] {
    atomic_write(model_file, original);
    atomic_write(ck + "/MANIFEST.json", original_manifest);
  };
  TrainRun target(2, 7, false);
  EXPECT_NO_THROW(load_checkpoint(ck, *target.model, target.opt.get()));

  NamedTensors sd = load_safetensors(model_file).tensors;
  // missing key
  {
    NamedTensors less;
    for (const auto& nt : sd)
      if (nt.first != "ln_f.weight") less.push_back(nt);
    reseal_model(ck, less);
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "ln_f.weight");
    restore();
  }
  // unexpected key
  {
    NamedTensors more = sd;
    more.emplace_back("blocks.9.bogus", Tensor::zeros({2}));
    reseal_model(ck, more);
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "blocks.9.bogus");
    restore();
  }
  // wrong shape and wrong dtype
  {
    NamedTensors bad = sd;
    for (auto& nt : bad)
      if (nt.first == "wte.weight") nt.second = Tensor::zeros({48, 8});
    reseal_model(ck, bad);
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "wte.weight");
    restore();
    bad = sd;
    for (auto& nt : bad)
      if (nt.first == "ln_f.bias") nt.second = Tensor::zeros(nt.second.shape(), DType::f64);
    reseal_model(ck, bad);
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "ln_f.bias");
    restore();
  }
  // a model of another shape: the error names a tensor
  {
    TransformerConfig other = tiny_config();
    other.n_embd = 24;
    Generator g(3);
    Transformer wide(other, g);
    EXPECT_ERROR_HAS(load_checkpoint(ck, wide), "wte.weight");
  }
  // truncated model file: caught by the manifest; and, re-sealed, by the safetensors reader
  {
    atomic_write(model_file, original.substr(0, original.size() / 2));
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "truncated");
    reseal(ck, "model.safetensors", original.substr(0, original.size() / 2));
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "model.safetensors");
    reseal(ck, "model.safetensors", original.substr(0, 5));
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "model.safetensors");
    restore();
  }
  // a flipped byte inside a tensor
  {
    std::string flipped = original;
    flipped[flipped.size() - 3] ^= 0x40;
    atomic_write(model_file, flipped);
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "checksum");
    restore();
  }
  // corrupt, truncated, wrong-format and missing manifests
  {
    atomic_write(ck + "/MANIFEST.json", "{\"format\": \"somnus.checkpoint\", \"vers");
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "MANIFEST.json");
    atomic_write(ck + "/MANIFEST.json", "[1, 2]");
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "MANIFEST.json");
    json m = json::parse(original_manifest);
    m["version"] = 99;
    atomic_write(ck + "/MANIFEST.json", m.dump());
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "version");
    m = json::parse(original_manifest);
    m["files"]["model.safetensors"]["bytes"] = -4;
    atomic_write(ck + "/MANIFEST.json", m.dump());
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "model.safetensors");
    m = json::parse(original_manifest);
    m["files"]["../escape"] = {{"bytes", 1}, {"xxh64", "0000000000000000"}};
    atomic_write(ck + "/MANIFEST.json", m.dump());
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "escape");
    fs::remove(ck + "/MANIFEST.json");
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "MANIFEST.json");
    EXPECT_ERROR_HAS(resolve_checkpoint(ck), "incomplete");
    restore();
  }
  // corrupt optimiser state and train state (re-sealed, so their own readers must catch it)
  {
    const std::string opt_bytes = read_file(ck + "/optimizer.safetensors");
    reseal(ck, "optimizer.safetensors", opt_bytes.substr(0, opt_bytes.size() - 7));
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model, target.opt.get()), "optimizer.safetensors");
    reseal(ck, "optimizer.safetensors", opt_bytes);
    const std::string ts = read_file(ck + "/train_state.json");
    reseal(ck, "train_state.json", "{\"step\": 1, \"rng\": 3}");
    EXPECT_ERROR_HAS(load_checkpoint(ck, *target.model), "rng");
    reseal(ck, "train_state.json", ts);
  }
  // An optimiser of another layout (SGD vs AdamW) is refused.
  {
    SGD sgd(transformer_param_groups(*target.model, 0.1, 0.0));
    EXPECT_THROW(load_checkpoint(ck, *target.model, &sgd), Error);
  }
  // The failed loads above left the target untouched and loadable.
  EXPECT_NO_THROW(load_checkpoint(ck, *target.model, target.opt.get()));
  EXPECT_ERROR_HAS(resolve_checkpoint(dir.path + "/nope"), "does not exist");
}

TEST(Checkpoint, InterruptedSaveKeepsThePreviousCheckpoint) {
  TempDir dir;
  TrainRun run(1, 7, false);
  run.step();
  run.step();
  save_checkpoint(dir.path, run.contents());
  const std::string good_model = read_file(dir.path + "/ckpt-00000002/model.safetensors");
  run.step();
  run.step();
  const int64_t fail_points[] = {0, 1, 7, 100, 4000, 20000};
  for (const int64_t bytes : fail_points) {
    set_atomic_write_fail_after_bytes(bytes);
    EXPECT_THROW(save_checkpoint(dir.path, run.contents()), Error) << "fail after " << bytes << " bytes";
    set_atomic_write_fail_after_bytes(-1);
    EXPECT_EQ(*latest_checkpoint(dir.path), dir.path + "/ckpt-00000002");
    EXPECT_FALSE(fs::exists(dir.path + "/ckpt-00000004"));
  }
  set_atomic_write_fail_before_rename(true);
  EXPECT_THROW(save_checkpoint(dir.path, run.contents()), Error);
  set_atomic_write_fail_before_rename(false);
  // No staging directories are left behind, and the old checkpoint is intact and loads.
  for (const auto& e : fs::directory_iterator(dir.path)) {
    EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos) << e.path();
  }
  TrainRun fresh(3, 3, false);
  const TrainState st = load_checkpoint(resolve_checkpoint(dir.path), *fresh.model, fresh.opt.get());
  EXPECT_EQ(st.step, 2);
  EXPECT_EQ(read_file(dir.path + "/ckpt-00000002/model.safetensors"), good_model);

  // A torn directory (files but no manifest) is never mistaken for a checkpoint.
  fs::create_directories(dir.path + "/ckpt-00000006");
  atomic_write(dir.path + "/ckpt-00000006/model.safetensors", "garbage");
  EXPECT_EQ(resolve_checkpoint(dir.path), dir.path + "/ckpt-00000002");
  EXPECT_ERROR_HAS(load_checkpoint(dir.path + "/ckpt-00000006", *fresh.model), "incomplete");

  // A successful save moves `latest`; keep_last prunes the oldest.
  save_checkpoint(dir.path, run.contents(), /*keep_last=*/1);
  EXPECT_EQ(*latest_checkpoint(dir.path), dir.path + "/ckpt-00000004");
  EXPECT_FALSE(fs::exists(dir.path + "/ckpt-00000002"));
  // Saving the same step again replaces it.
  save_checkpoint(dir.path, run.contents(), 1);
  EXPECT_EQ(load_checkpoint(resolve_checkpoint(dir.path), *fresh.model).step, 4);
}

TEST(Checkpoint, LoadTransformerAndExtraFiles) {
  TempDir dir;
  TrainRun run(1, 7, true);
  run.step();
  CheckpointSave c = run.contents();
  c.extra_files["tokenizer.json"] = "{\"hello\": 1}";
  const std::string ck = save_checkpoint(dir.path, c);
  auto model = load_transformer(ck);
  EXPECT_TRUE(model->level(0, 1).slot_active(0));
  EXPECT_EQ(raw_bytes(model->wte->weight), raw_bytes(run.model->wte->weight));
  EXPECT_EQ(read_checkpoint_file(ck, "tokenizer.json"), "{\"hello\": 1}");
  EXPECT_EQ(read_checkpoint_json(ck, "train_config.json")["note"], "test");
  c.extra_files["MANIFEST.json"] = "x";
  EXPECT_THROW(save_checkpoint(dir.path, c), Error);
}

// A re-save of the step `latest` names swaps the directories atomically: the new content is
// there, `latest` still names it, and neither the old copy nor a moved-aside directory left by
// an earlier crash remains.
TEST(Checkpoint, ResaveOfTheSameStepReplacesItCleanly) {
  TempDir dir;
  TrainRun run(1, 7, true);
  run.step();
  const std::string ck = save_checkpoint(dir.path, run.contents());
  fs::create_directories(dir.path + "/.ckpt-00000001.old-99999");  // a crashed save's leftover
  run.step();
  CheckpointSave again = run.contents();
  again.state.step = 1;  // same step, new weights
  EXPECT_EQ(save_checkpoint(dir.path, again), ck);
  EXPECT_EQ(*latest_checkpoint(dir.path), ck);
  TrainRun target(2, 7, true);
  load_checkpoint(ck, *target.model);
  EXPECT_EQ(raw_bytes(target.model->wte->weight), raw_bytes(run.model->wte->weight));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"ckpt-00000001", "latest"}));
}

TEST(Checkpoint, ExtraTensorsRoundTripAndAreVerified) {
  TempDir dir;
  TrainRun run(1, 7, true);
  run.step();
  CheckpointSave c = run.contents();
  const Tensor t = Tensor::from_vector({1.0, -2.5, 3.25}, {3});
  c.extra_tensors["anchor.safetensors"] = {{"x", t}};
  const std::string ck = save_checkpoint(dir.path, c);
  const NamedTensors back = read_checkpoint_tensors(ck, "anchor.safetensors");
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].first, "x");
  EXPECT_EQ(raw_bytes(back[0].second), raw_bytes(t));
  EXPECT_ERROR_HAS(read_checkpoint_tensors(ck, "nosuch.safetensors"), "lists no");
  {  // a flipped byte is caught by the manifest
    std::fstream f(ck + "/anchor.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put('\x7f');
  }
  EXPECT_ERROR_HAS(read_checkpoint_tensors(ck, "anchor.safetensors"), "anchor.safetensors");
  c.extra_files["anchor.safetensors"] = "x";  // one name, two contents
  EXPECT_THROW(save_checkpoint(dir.path, c), Error);
}

// ---------------------------------------------------------------- train config

TEST(TrainConfig, DefaultsRoundTripAndOverrides) {
  const TrainConfig d;
  const TrainConfig back = json(d).get<TrainConfig>();
  EXPECT_EQ(json(back).dump(), json(d).dump());

  json cfg = d;
  apply_overrides(cfg, parse_override_args({"--steps", "7", "--batch-size=3", "--model.n_layer", "3", "--data",
                                            "123", "--model.levels.0.period", "2", "--schedule", "wsd"}));
  const TrainConfig c = cfg.get<TrainConfig>();
  EXPECT_EQ(c.steps, 7);
  EXPECT_EQ(c.batch_size, 3);
  EXPECT_EQ(c.model.n_layer, 3);
  EXPECT_EQ(c.data, "123");  // a string key keeps the value verbatim
  EXPECT_EQ(c.model.levels[0].period, 2);
  EXPECT_EQ(c.schedule, "wsd");
}

TEST(TrainConfig, BadConfigsNameTheKey) {
  // Converting a named TrainConfig, not a temporary: GCC 12 -O2 warned (-Wmaybe-uninitialized,
  // a false positive) about the temporary's levels vector in its destructor.
  const TrainConfig defaults;
  auto with = [&defaults](const std::vector<std::string>& args) {
    json cfg = defaults;
    apply_overrides(cfg, parse_override_args(args));
    return cfg.get<TrainConfig>();
  };
  EXPECT_ERROR_HAS(with({"--stepz", "3"}), "stepz");
  EXPECT_ERROR_HAS(with({"--steps", "abc"}), "steps");
  EXPECT_ERROR_HAS(with({"--steps", "1.5"}), "steps");
  EXPECT_ERROR_HAS(with({"--steps", "0"}), "steps");
  EXPECT_ERROR_HAS(with({"--lr", "-1"}), "lr");
  EXPECT_ERROR_HAS(with({"--schedule", "linear"}), "schedule");
  EXPECT_ERROR_HAS(with({"--model.n_head", "5"}), "n_head");
  EXPECT_ERROR_HAS(with({"--model.n_layr", "2"}), "n_layr");
  EXPECT_ERROR_HAS(with({"--model.levels.4.period", "2"}), "index 4");
  EXPECT_ERROR_HAS(with({"--steps"}), "needs a value");
  EXPECT_ERROR_HAS(with({"steps", "3"}), "expected --key value");
  EXPECT_ERROR_HAS(with({"--seq-len", "999"}), "seq_len");
  EXPECT_ERROR_HAS(json(json{{"model", {{"preset", "nope"}}}}).get<TrainConfig>(), "preset");
}

// `--model.preset llama-style` over the defaults switches the model's style. The defaults'
// JSON used to spell out gpt2's style keys, which the reader applies after the preset, so
// the override was silently ignored: a layernorm / gelu / learned-position model came out.
TEST(TrainConfig, PresetOverrideSwitchesTheStyle) {
  const TrainConfig d;
  EXPECT_EQ(json(default_train_config_json().get<TrainConfig>()).dump(), json(d).dump());
  const TrainConfig llama = load_train_config("", parse_override_args({"--model.preset", "llama-style"}));
  EXPECT_EQ(llama.model.norm, NormKind::rmsnorm);
  EXPECT_EQ(llama.model.mlp, MlpKind::swiglu);
  EXPECT_EQ(llama.model.pos, PosKind::rope);
  EXPECT_FALSE(llama.model.tie_embeddings);
  EXPECT_FALSE(llama.model.bias);
  // The shapes stay the defaults' (not the preset's 16 x 2048), n_kv_head 0 = n_head.
  EXPECT_EQ(llama.model.n_layer, d.model.n_layer);
  EXPECT_EQ(llama.model.n_embd, d.model.n_embd);
  EXPECT_EQ(llama.model.n_kv_head, 0);
  // Style keys given explicitly still win over the preset.
  const TrainConfig mixed = load_train_config(
      "", parse_override_args({"--model.preset", "llama-style", "--model.norm", "layernorm", "--model.bias", "true"}));
  EXPECT_EQ(mixed.model.norm, NormKind::layernorm);
  EXPECT_TRUE(mixed.model.bias);
  EXPECT_EQ(mixed.model.mlp, MlpKind::swiglu);
  EXPECT_ERROR_HAS(load_train_config("", parse_override_args({"--model.norm", "rms"})), "norm");
  EXPECT_ERROR_HAS(load_train_config("", parse_override_args({"--model.tie_embeddings", "maybe"})), "tie_embeddings");
}

}  // namespace
}  // namespace somnus::nn
