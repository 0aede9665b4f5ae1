#include "nn/train_config.h"

#include <set>

#include "nn/file_io.h"
#include "tensor/format.h"

namespace somnus::nn {

using nlohmann::json;

namespace {

const char* kWhere = "train config";

void read_int(const json& j, const char* key, int64_t& out) {
  auto it = j.find(key);
  if (it == j.end()) return;
  SOMNUS_CHECK(it->is_number_integer(), "{}: '{}' must be an integer, got {}", kWhere, key, it->dump());
  out = it->get<int64_t>();
}

void read_uint(const json& j, const char* key, uint64_t& out) {
  auto it = j.find(key);
  if (it == j.end()) return;
  SOMNUS_CHECK(it->is_number_unsigned() || (it->is_number_integer() && it->get<int64_t>() >= 0),
               "{}: '{}' must be a non-negative integer, got {}", kWhere, key, it->dump());
  out = it->get<uint64_t>();
}

void read_double(const json& j, const char* key, double& out) {
  auto it = j.find(key);
  if (it == j.end()) return;
  SOMNUS_CHECK(it->is_number(), "{}: '{}' must be a number, got {}", kWhere, key, it->dump());
  out = it->get<double>();
}

void read_string(const json& j, const char* key, std::string& out) {
  auto it = j.find(key);
  if (it == j.end()) return;
  SOMNUS_CHECK(it->is_string(), "{}: '{}' must be a string, got {}", kWhere, key, it->dump());
  out = it->get<std::string>();
}

LrScheduleKind schedule_kind(const std::string& s) {
  if (s == "constant") return LrScheduleKind::constant;
  if (s == "cosine") return LrScheduleKind::cosine;
  if (s == "wsd") return LrScheduleKind::wsd;
  fail("{}: 'schedule' must be one of \"constant\", \"cosine\", \"wsd\", got \"{}\"", kWhere, s);
}

LrDecayShape decay_shape_of(const std::string& s) {
  if (s == "linear") return LrDecayShape::linear;
  if (s == "cosine") return LrDecayShape::cosine;
  if (s == "1-sqrt") return LrDecayShape::one_minus_sqrt;
  fail("{}: 'decay_shape' must be one of \"linear\", \"cosine\", \"1-sqrt\", got \"{}\"", kWhere, s);
}

}  // namespace

LrSchedule TrainConfig::lr_schedule() const {
  LrSchedule s;
  s.kind = schedule_kind(schedule);
  s.max_lr = 1.0;
  s.warmup_steps = warmup_steps;
  s.total_steps = steps;
  s.min_ratio = min_lr_ratio;
  s.decay_fraction = decay_fraction;
  s.decay_shape = decay_shape_of(decay_shape);
  return s;
}

void TrainConfig::validate() const {
  auto positive = [](int64_t v, const char* key) {
    SOMNUS_CHECK(v > 0, "{}: '{}' must be positive, got {}", kWhere, key, v);
  };
  auto non_negative = [](double v, const char* key) {
    SOMNUS_CHECK(v >= 0.0, "{}: '{}' must be >= 0, got {}", kWhere, key, v);
  };
  SOMNUS_CHECK(val_fraction > 0.0 && val_fraction < 1.0, "{}: 'val_fraction' must be in (0, 1), got {}", kWhere,
               val_fraction);
  SOMNUS_CHECK(!tokenizer.empty() || (vocab_size > 256 + 3 && vocab_size <= (int64_t{1} << 24)),
               "{}: 'vocab_size' must be above 259 (256 bytes + 3 special tokens) when a tokenizer is trained, got {}",
               kWhere, vocab_size);
  positive(steps, "steps");
  positive(batch_size, "batch_size");
  SOMNUS_CHECK(seq_len >= 0, "{}: 'seq_len' must be >= 0 (0: the model's block_size), got {}", kWhere, seq_len);
  SOMNUS_CHECK(effective_seq_len() <= model.block_size, "{}: 'seq_len' {} exceeds model.block_size {}", kWhere,
               seq_len, model.block_size);
  positive(grad_accum, "grad_accum");
  SOMNUS_CHECK(lr > 0.0, "{}: 'lr' must be positive, got {}", kWhere, lr);
  non_negative(weight_decay, "weight_decay");
  SOMNUS_CHECK(beta1 >= 0.0 && beta1 < 1.0, "{}: 'beta1' must be in [0, 1), got {}", kWhere, beta1);
  SOMNUS_CHECK(beta2 >= 0.0 && beta2 < 1.0, "{}: 'beta2' must be in [0, 1), got {}", kWhere, beta2);
  SOMNUS_CHECK(eps > 0.0, "{}: 'eps' must be positive, got {}", kWhere, eps);
  non_negative(grad_clip, "grad_clip");
  non_negative(aux_loss_weight, "aux_loss_weight");
  SOMNUS_CHECK(warmup_steps >= 0 && warmup_steps <= steps, "{}: 'warmup_steps' must be in [0, steps={}], got {}",
               kWhere, steps, warmup_steps);
  try {
    lr_schedule().validate();
  } catch (const Error& e) {
    fail("{}: bad schedule settings: {}", kWhere, e.what());
  }
  SOMNUS_CHECK(!out_dir.empty(), "{}: 'out_dir' must not be empty", kWhere);
  SOMNUS_CHECK(device == "cpu" || device.rfind("cuda", 0) == 0, "{}: 'device' must be \"cpu\" or \"cuda\", got \"{}\"",
               kWhere, device);
  positive(log_every, "log_every");
  SOMNUS_CHECK(eval_every >= 0, "{}: 'eval_every' must be >= 0 (0: off), got {}", kWhere, eval_every);
  positive(eval_batches, "eval_batches");
  SOMNUS_CHECK(checkpoint_every >= 0, "{}: 'checkpoint_every' must be >= 0 (0: only at the end), got {}", kWhere,
               checkpoint_every);
  SOMNUS_CHECK(keep_checkpoints >= 0, "{}: 'keep_checkpoints' must be >= 0 (0: keep all), got {}", kWhere,
               keep_checkpoints);
  SOMNUS_CHECK(sample_every >= 0, "{}: 'sample_every' must be >= 0 (0: off), got {}", kWhere, sample_every);
  positive(sample_tokens, "sample_tokens");
  non_negative(sample_temperature, "sample_temperature");
  SOMNUS_CHECK(sample_top_k >= 0, "{}: 'sample_top_k' must be >= 0 (0: off), got {}", kWhere, sample_top_k);
  SOMNUS_CHECK(spike_window >= 2, "{}: 'spike_window' must be >= 2, got {}", kWhere, spike_window);
  non_negative(spike_zscore, "spike_zscore");
}

void to_json(json& j, const TrainConfig& c) {
  j = json{{"data", c.data},
           {"val_fraction", c.val_fraction},
           {"tokenizer", c.tokenizer},
           {"vocab_size", c.vocab_size},
           {"model", c.model},
           {"steps", c.steps},
           {"batch_size", c.batch_size},
           {"seq_len", c.seq_len},
           {"grad_accum", c.grad_accum},
           {"lr", c.lr},
           {"weight_decay", c.weight_decay},
           {"beta1", c.beta1},
           {"beta2", c.beta2},
           {"eps", c.eps},
           {"grad_clip", c.grad_clip},
           {"aux_loss_weight", c.aux_loss_weight},
           {"schedule", c.schedule},
           {"warmup_steps", c.warmup_steps},
           {"min_lr_ratio", c.min_lr_ratio},
           {"decay_fraction", c.decay_fraction},
           {"decay_shape", c.decay_shape},
           {"seed", c.seed},
           {"out_dir", c.out_dir},
           {"device", c.device},
           {"log_every", c.log_every},
           {"eval_every", c.eval_every},
           {"eval_batches", c.eval_batches},
           {"checkpoint_every", c.checkpoint_every},
           {"keep_checkpoints", c.keep_checkpoints},
           {"sample_every", c.sample_every},
           {"sample_tokens", c.sample_tokens},
           {"sample_prompt", c.sample_prompt},
           {"sample_temperature", c.sample_temperature},
           {"sample_top_k", c.sample_top_k},
           {"spike_window", c.spike_window},
           {"spike_zscore", c.spike_zscore}};
}

void from_json(const json& j, TrainConfig& out) {
  SOMNUS_CHECK(j.is_object(), "{}: expected a JSON object, got {}", kWhere, j.type_name());
  static const std::set<std::string> known = {
      "data",         "val_fraction",   "tokenizer",    "vocab_size",     "model",         "steps",
      "batch_size",   "seq_len",        "grad_accum",   "lr",             "weight_decay",  "beta1",
      "beta2",        "eps",            "grad_clip",    "aux_loss_weight", "schedule",     "warmup_steps",
      "min_lr_ratio", "decay_fraction", "decay_shape",  "seed",           "out_dir",       "device",
      "log_every",    "eval_every",     "eval_batches", "checkpoint_every", "keep_checkpoints", "sample_every",
      "sample_tokens", "sample_prompt", "sample_temperature", "sample_top_k",
      "spike_window", "spike_zscore"};
  for (const auto& [key, value] : j.items()) {
    SOMNUS_CHECK(known.count(key) != 0, "{}: unknown key '{}'", kWhere, key);
  }
  TrainConfig c;
  read_string(j, "data", c.data);
  read_double(j, "val_fraction", c.val_fraction);
  read_string(j, "tokenizer", c.tokenizer);
  read_int(j, "vocab_size", c.vocab_size);
  if (auto it = j.find("model"); it != j.end()) {
    try {
      c.model = it->get<TransformerConfig>();
    } catch (const Error& e) {
      fail("{}: 'model': {}", kWhere, e.what());
    } catch (const json::exception& e) {
      fail("{}: 'model': {}", kWhere, e.what());
    }
  }
  read_int(j, "steps", c.steps);
  read_int(j, "batch_size", c.batch_size);
  read_int(j, "seq_len", c.seq_len);
  read_int(j, "grad_accum", c.grad_accum);
  read_double(j, "lr", c.lr);
  read_double(j, "weight_decay", c.weight_decay);
  read_double(j, "beta1", c.beta1);
  read_double(j, "beta2", c.beta2);
  read_double(j, "eps", c.eps);
  read_double(j, "grad_clip", c.grad_clip);
  read_double(j, "aux_loss_weight", c.aux_loss_weight);
  read_string(j, "schedule", c.schedule);
  read_int(j, "warmup_steps", c.warmup_steps);
  read_double(j, "min_lr_ratio", c.min_lr_ratio);
  read_double(j, "decay_fraction", c.decay_fraction);
  read_string(j, "decay_shape", c.decay_shape);
  read_uint(j, "seed", c.seed);
  read_string(j, "out_dir", c.out_dir);
  read_string(j, "device", c.device);
  read_int(j, "log_every", c.log_every);
  read_int(j, "eval_every", c.eval_every);
  read_int(j, "eval_batches", c.eval_batches);
  read_int(j, "checkpoint_every", c.checkpoint_every);
  read_int(j, "keep_checkpoints", c.keep_checkpoints);
  read_int(j, "sample_every", c.sample_every);
  read_int(j, "sample_tokens", c.sample_tokens);
  read_string(j, "sample_prompt", c.sample_prompt);
  read_double(j, "sample_temperature", c.sample_temperature);
  read_int(j, "sample_top_k", c.sample_top_k);
  read_int(j, "spike_window", c.spike_window);
  read_double(j, "spike_zscore", c.spike_zscore);
  c.validate();
  out = c;
}

std::vector<ParamGroup> transformer_param_groups(const Transformer& model, double lr, double weight_decay) {
  std::vector<ParamGroup> groups;
  for (const auto& [period, named] : model.parameters_by_period(/*trainable_only=*/true)) {
    ParamGroup decay{.params = {}, .lr = lr, .weight_decay = weight_decay, .period = period, .name = fmt::format("p{}.decay", period)};
    ParamGroup plain{.params = {}, .lr = lr, .weight_decay = 0.0, .period = period, .name = fmt::format("p{}.no_decay", period)};
    for (const auto& [name, p] : named) (p.dim() >= 2 ? decay : plain).params.push_back(p);
    if (!decay.params.empty()) groups.push_back(std::move(decay));
    if (!plain.params.empty()) groups.push_back(std::move(plain));
  }
  return groups;
}

std::vector<std::pair<std::string, std::string>> parse_override_args(const std::vector<std::string>& args) {
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    SOMNUS_CHECK(a.size() > 2 && a.rfind("--", 0) == 0, "override: expected --key value, got '{}'", a);
    std::string key = a.substr(2);
    std::string value;
    if (const size_t eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else {
      SOMNUS_CHECK(i + 1 < args.size(), "override: --{} needs a value", key);
      value = args[++i];
    }
    for (char& ch : key) {
      if (ch == '-') ch = '_';
    }
    SOMNUS_CHECK(!key.empty(), "override: empty key in '{}'", a);
    out.emplace_back(key, value);
  }
  return out;
}

void apply_overrides(json& config, const std::vector<std::pair<std::string, std::string>>& overrides) {
  for (const auto& [key, value] : overrides) {
    json* node = &config;
    size_t start = 0;
    std::string path;
    while (true) {
      const size_t dot = key.find('.', start);
      const std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      SOMNUS_CHECK(!part.empty(), "override --{}: empty path component", key);
      path += (path.empty() ? "" : ".") + part;
      const bool last = dot == std::string::npos;
      json* child = nullptr;
      if (node->is_object()) {
        auto it = node->find(part);
        if (it == node->end()) {
          // Top-level keys all exist in the defaults, so a missing one is unknown; nested
          // objects (the model config given with a preset) may legitimately lack a key, which
          // the strict reader checks afterwards.
          SOMNUS_CHECK(node != &config, "{}: unknown key '{}' (from --{})", kWhere, part, key);
          SOMNUS_CHECK(last, "{}: unknown key '{}' (from --{})", kWhere, path, key);
          (*node)[part] = nullptr;
          it = node->find(part);
        }
        child = &*it;
      } else if (node->is_array()) {
        size_t idx = 0;
        try {
          size_t used = 0;
          idx = std::stoul(part, &used);
          SOMNUS_CHECK(used == part.size(), "");
        } catch (...) {
          fail("override --{}: '{}' indexes an array and must be a number", key, part);
        }
        SOMNUS_CHECK(idx < node->size(), "override --{}: index {} is past the end of an array of {}", key, idx,
                     node->size());
        child = &(*node)[idx];
      } else {
        fail("override --{}: '{}' is not an object or array", key, path.substr(0, path.size() - part.size() - 1));
      }
      if (last) {
        if (child->is_string()) {
          *child = value;
        } else {
          json parsed = json::parse(value, nullptr, /*allow_exceptions=*/false);
          // Bare words for keys that did not exist yet are strings (e.g. --model.norm rmsnorm).
          if (parsed.is_discarded()) {
            SOMNUS_CHECK(child->is_null(), "{}: bad value '{}' for '{}' (from --{}): expected {}", kWhere, value,
                         path, key, child->type_name());
            parsed = value;
          }
          *child = parsed;
        }
        break;
      }
      node = child;
      start = dot + 1;
    }
  }
}

json default_train_config_json() {
  const TrainConfig defaults;
  json config = defaults;
  json& model = config.at("model");
  for (const char* key : {"norm", "mlp", "pos", "rope_theta", "tie_embeddings", "bias"}) model.erase(key);
  model["preset"] = "gpt2-style";
  return config;
}

TrainConfig load_train_config(const std::string& path,
                              const std::vector<std::pair<std::string, std::string>>& overrides) {
  json config = default_train_config_json();
  if (!path.empty()) {
    const std::string text = read_file(path);
    json file = json::parse(text, nullptr, /*allow_exceptions=*/false);
    SOMNUS_CHECK(!file.is_discarded(), "{}: '{}' is not valid JSON", kWhere, path);
    SOMNUS_CHECK(file.is_object(), "{}: '{}' must hold a JSON object, got {}", kWhere, path, file.type_name());
    for (const auto& [key, value] : file.items()) config[key] = value;  // whole values: "model" may use a preset
  }
  apply_overrides(config, overrides);
  return config.get<TrainConfig>();
}

}  // namespace somnus::nn
