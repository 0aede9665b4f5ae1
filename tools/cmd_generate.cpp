// `somnus generate --ckpt DIR --prompt "..." [--max-new N --temperature T --top-k K --top-p P
//                  --seed S --device cpu|cuda]`
// Loads the checkpoint's model and tokenizer (DIR: a checkpoint, or a run directory whose
// `latest` is used), generates with the KV cache (nn/generate.h) and prints prompt + text.
// --temperature 0 is greedy. Several --prompt options are generated as one batch. A sequence
// ends at the model's block_size (prompt + generated tokens); stderr says when that cut it
// short of --max-new.
#include <fmt/format.h>

#include "nn/checkpoint.h"
#include "nn/generate.h"
#include "nn/tokenizer.h"
#include "tensor/format.h"
#include "tools/cli_common.h"

namespace somnus::tools {

using namespace somnus::nn;

namespace {

struct GenerateArgs {
  std::string ckpt;
  std::vector<std::string> prompts;
  int64_t max_new = 128;
  double temperature = 0.8;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  bool no_stop = false;
  std::string device = "cpu";
};

void run_generate(const GenerateArgs& a) {
  const Device device = parse_device_option(a.device);
  const std::string dir = resolve_checkpoint(a.ckpt);
  auto model = load_transformer(dir, device);
  const Tokenizer tok = Tokenizer::from_json(read_checkpoint_file(dir, "tokenizer.json"), dir + "/tokenizer.json");
  SOMNUS_CHECK(tok.vocab_size() == model->config().vocab_size,
               "generate: the tokenizer's vocabulary ({}) differs from the model's ({})", tok.vocab_size(),
               model->config().vocab_size);
  GenerateConfig g;
  g.max_new_tokens = a.max_new;
  g.temperature = a.temperature;
  g.top_k = a.top_k;
  g.top_p = a.top_p;
  g.seed = a.seed;
  if (!a.no_stop) g.stop_tokens = {tok.eos_id()};
  g.validate();
  std::vector<std::vector<TokenId>> prompts;
  for (const std::string& p : a.prompts) {
    std::vector<TokenId> ids = tok.encode_with_special(p);
    if (ids.empty()) ids.push_back(tok.bos_id());
    SOMNUS_CHECK(static_cast<int64_t>(ids.size()) < model->config().block_size,
                 "generate: the prompt has {} tokens; the model's block_size is {}", ids.size(),
                 model->config().block_size);
    prompts.push_back(std::move(ids));
  }
  model->eval();
  const GenerateResult r = generate(*model, prompts, g);
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<TokenId> out = r.sequences[i].tokens;
    if (!out.empty() && tok.is_special(out.back())) out.pop_back();
    if (prompts.size() > 1) fmt::print("=== prompt {} ===\n", i);
    fmt::print("{}{}\n", a.prompts[i], tok.decode(out));
  }
  // A sequence never outgrows the model's context: say so when that, not --max-new, ended it.
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (r.sequences[i].finish != FinishReason::block_size) continue;
    fmt::print(stderr,
               "generate: {}stopped at the model's block_size {} ({} prompt + {} generated tokens), before --max-new "
               "{}\n",
               prompts.size() > 1 ? fmt::format("prompt {} ", i) : std::string(), model->config().block_size,
               prompts[i].size(), r.sequences[i].tokens.size(), a.max_new);
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand("generate", "Generate text from a checkpoint");
  cmd->add_option("--ckpt", a->ckpt, "Checkpoint directory, or a run directory (its latest checkpoint)")->required();
  cmd->add_option("--prompt", a->prompts, "Prompt text (repeat for a batch)")->required();
  cmd->add_option("--max-new", a->max_new, "Tokens to generate at most")->capture_default_str()->check(
      non_negative());
  cmd->add_option("--temperature", a->temperature, "Sampling temperature (0: greedy)")->capture_default_str()->check(
      non_negative());
  cmd->add_option("--top-k", a->top_k, "Keep the k most likely tokens (0: off)")->capture_default_str()->check(
      non_negative());
  cmd->add_option("--top-p", a->top_p, "Nucleus mass in (0, 1] (1: off)")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Sampling seed")->capture_default_str();
  cmd->add_flag("--no-stop", a->no_stop, "Do not stop at the eos token");
  add_device_option(cmd, a->device);
  cmd->callback([a] { run_generate(*a); });
}

}  // namespace somnus::tools
