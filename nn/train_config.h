// The training configuration of `somnus train`: a plain struct with defaults, read from JSON
// (strict: unknown keys and wrong types are errors naming the key), with `--key value`
// command-line overrides applied to the JSON before it is read.
//
// JSON (every key optional; shown with its default):
//   {"data": "", "val_fraction": 0.1,
//    "tokenizer": "", "vocab_size": 512,      a tokenizer file, or "" to train a BPE tokenizer
//                                             of vocab_size on the training split
//    "model": {TransformerConfig, see nn/transformer.h}   (its vocab_size is set from the tokenizer)
//    "steps": 1000, "batch_size": 8, "seq_len": 0 (0: model.block_size), "grad_accum": 1,
//    "lr": 1e-3, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
//    "grad_clip": 1.0 (0: off), "aux_loss_weight": 0.01,
//    "schedule": "cosine" | "wsd" | "constant", "warmup_steps": 0, "min_lr_ratio": 0.1,
//    "decay_fraction": 0.2, "decay_shape": "linear" | "cosine" | "1-sqrt",
//    "seed": 1337, "out_dir": "runs/train", "device": "cpu",
//    "log_every": 1, "eval_every": 100, "eval_batches": 8, "checkpoint_every": 100,
//    "keep_checkpoints": 2 (0: keep all),
//    "sample_every": 0 (0: off), "sample_tokens": 64, "sample_prompt": "\n",
//    "sample_temperature": 0.8, "sample_top_k": 40,
//    "spike_window": 100, "spike_zscore": 0 (0: off)}    loss-spike guard (nn/train_guard.h)
//
// Weight decay applies to parameters with two or more dimensions (matrices, embeddings),
// not to biases and norm weights (nanoGPT's rule). The group lr is `lr`; the schedule
// scales it (LrSchedule with max_lr = 1, total_steps = steps).
//
// Overrides: `--key value` or `--key=value`; dashes in keys are read as underscores
// (`--batch-size 4`), dots reach into objects and arrays (`--model.n_layer 4`,
// `--model.levels.1.period 2`). A value is parsed as JSON (numbers, true/false, arrays)
// unless the key currently holds a string, in which case it is taken verbatim. An override of
// a key that does not exist is an error naming it.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "nn/lr_schedule.h"
#include "nn/optim.h"
#include "nn/transformer.h"

namespace somnus::nn {

struct TrainConfig {
  // data
  std::string data;
  double val_fraction = 0.1;
  std::string tokenizer;
  int64_t vocab_size = 512;
  // model
  TransformerConfig model;
  // optimisation
  int64_t steps = 1000;
  int64_t batch_size = 8;
  int64_t seq_len = 0;
  int64_t grad_accum = 1;
  double lr = 1e-3;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;
  double aux_loss_weight = 0.01;
  std::string schedule = "cosine";
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.1;
  double decay_fraction = 0.2;
  std::string decay_shape = "linear";
  // run
  uint64_t seed = 1337;
  std::string out_dir = "runs/train";
  std::string device = "cpu";
  int64_t log_every = 1;
  int64_t eval_every = 100;
  int64_t eval_batches = 8;
  int64_t checkpoint_every = 100;
  int64_t keep_checkpoints = 2;
  int64_t sample_every = 0;
  int64_t sample_tokens = 64;
  std::string sample_prompt = "\n";
  double sample_temperature = 0.8;
  int64_t sample_top_k = 40;
  // numeric guards (nn/train_guard.h): a step whose loss lies more than spike_zscore standard
  // deviations above the mean of the last spike_window losses is skipped; 0 turns it off.
  // NaN/Inf losses and gradient norms are always skipped.
  int64_t spike_window = 100;
  double spike_zscore = 0.0;

  int64_t effective_seq_len() const { return seq_len > 0 ? seq_len : model.block_size; }
  // The schedule for Optimizer::set_lr_scale (max_lr 1).
  LrSchedule lr_schedule() const;
  // Throws somnus::Error naming the offending key.
  void validate() const;
};

void to_json(nlohmann::json& j, const TrainConfig& c);
// Strict; validates. Errors read "train config: ...".
void from_json(const nlohmann::json& j, TrainConfig& c);

// The optimiser groups of a Transformer: one per update period (parameters_by_period,
// trainable only), each split into "p<C>.decay" (dim >= 2, weight decay wd) and
// "p<C>.no_decay" (biases, norm weights); empty groups are left out. Group lr = lr.
std::vector<ParamGroup> transformer_param_groups(const Transformer& model, double lr, double weight_decay);

// The defaults as the JSON base that a config file and overrides go onto. Its model carries
// "preset": "gpt2-style" in place of the style keys a preset sets (norm, mlp, pos,
// rope_theta, tie_embeddings, bias), so that `--model.preset llama-style` switches them; the
// other model keys (shapes, n_kv_head 0, levels) are explicit and stay. It reads back as
// TrainConfig{}.
nlohmann::json default_train_config_json();

// Applies `--key value` overrides (see above) to a config JSON in place. `base` should hold
// every key (to_json of the defaults merged with the file does).
void apply_overrides(nlohmann::json& config, const std::vector<std::pair<std::string, std::string>>& overrides);

// Splits ["--a", "1", "--b=x"] into {{"a", "1"}, {"b", "x"}}; throws on a dangling key or a
// value without a key.
std::vector<std::pair<std::string, std::string>> parse_override_args(const std::vector<std::string>& args);

// Reads a config file (JSON object), merges it over the defaults, applies the overrides and
// parses the result. `path` may be empty (defaults only).
TrainConfig load_train_config(const std::string& path,
                              const std::vector<std::pair<std::string, std::string>>& overrides = {});

}  // namespace somnus::nn
