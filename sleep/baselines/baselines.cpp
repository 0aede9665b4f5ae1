#include "sleep/baselines/baselines.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "autograd/losses.h"
#include "nn/generate.h"
#include "nn/optim.h"
#include "sleep/baselines/json_fields.h"
#include "sleep/lora.h"
#include "tensor/format.h"

namespace somnus::sleep {

using nlohmann::json;

namespace {

void check_positive(int64_t v, const char* where, const char* field) {
  SOMNUS_CHECK(v >= 1, "{}: '{}' must be >= 1, got {}", where, field, v);
}
void check_non_negative(int64_t v, const char* where, const char* field) {
  SOMNUS_CHECK(v >= 0, "{}: '{}' must be >= 0, got {}", where, field, v);
}
void check_positive_real(double v, const char* where, const char* field) {
  SOMNUS_CHECK(std::isfinite(v) && v > 0.0, "{}: '{}' must be > 0, got {}", where, field, v);
}
void check_non_negative_real(double v, const char* where, const char* field) {
  SOMNUS_CHECK(std::isfinite(v) && v >= 0.0, "{}: '{}' must be >= 0, got {}", where, field, v);
}

// Example indices for one step: all, or `count` drawn uniformly with replacement.
std::vector<size_t> pick_examples(size_t n, int64_t count, Generator& gen) {
  std::vector<size_t> idx;
  if (count <= 0 || static_cast<size_t>(count) >= n) {
    idx.resize(n);
    std::iota(idx.begin(), idx.end(), size_t{0});
    return idx;
  }
  for (double v : randint(0, static_cast<int64_t>(n), {count}, gen).to_vector()) idx.push_back(static_cast<size_t>(v));
  return idx;
}

void check_prompt_fits(const std::vector<TokenId>& prompt, const nn::Transformer& model, const char* where) {
  SOMNUS_CHECK(!prompt.empty(), "{}: an example has an empty prompt (generation needs at least one token)", where);
  SOMNUS_CHECK(static_cast<int64_t>(prompt.size()) < model.config().block_size,
               "{}: a prompt of {} tokens leaves no room to generate in block_size {}", where, prompt.size(),
               model.config().block_size);
}

}  // namespace

// ---------------------------------------------------------------- ICL

void IclMethod::learn(nn::Transformer& model, const LearningEpisode& ep) {
  (void)model;
  ep.validate();
  metrics_ = json{{"prefix_tokens", eval_prefix(ep).size()}};
}

std::vector<TokenId> IclMethod::eval_prefix(const LearningEpisode& ep) const {
  std::vector<TokenId> p = ep.context;
  for (const Example& ex : ep.examples) {
    p.insert(p.end(), ex.prompt.begin(), ex.prompt.end());
    p.insert(p.end(), ex.answer.begin(), ex.answer.end());
  }
  return p;
}

// ---------------------------------------------------------------- SFT

void SftConfig::validate() const {
  const char* w = "SftConfig";
  check_non_negative(steps, w, "steps");
  check_positive_real(lr, w, "lr");
  check_non_negative(batch_size, w, "batch_size");
  check_non_negative_real(weight_decay, w, "weight_decay");
  check_non_negative_real(grad_clip, w, "grad_clip");
}

void to_json(json& j, const SftConfig& c) {
  j = json{{"steps", c.steps},           {"lr", c.lr},               {"batch_size", c.batch_size},
           {"weight_decay", c.weight_decay}, {"grad_clip", c.grad_clip}, {"seed", c.seed}};
}

namespace {
const std::set<std::string> kSftKeys = {"steps", "lr", "batch_size", "weight_decay", "grad_clip", "seed"};
void read_sft(const json& j, SftConfig& c, const char* w) {
  detail::read_field(j, "steps", c.steps, w);
  detail::read_field(j, "lr", c.lr, w);
  detail::read_field(j, "batch_size", c.batch_size, w);
  detail::read_field(j, "weight_decay", c.weight_decay, w);
  detail::read_field(j, "grad_clip", c.grad_clip, w);
  detail::read_field(j, "seed", c.seed, w);
}
SftSteps sft_steps(const SftConfig& c) {
  return SftSteps{.steps = c.steps, .lr = c.lr, .weight_decay = c.weight_decay, .batch_size = c.batch_size,
                  .grad_clip = c.grad_clip};
}
}  // namespace

void from_json(const json& j, SftConfig& out) {
  detail::check_known_keys(j, kSftKeys, "SftConfig");
  SftConfig c;
  read_sft(j, c, "SftConfig");
  c.validate();
  out = c;
}

SftMethod::SftMethod(SftConfig cfg) : cfg_(cfg), gen_(cfg.seed) { cfg_.validate(); }

void SftMethod::learn(nn::Transformer& model, const LearningEpisode& ep) {
  const std::vector<TrainSequence> rows = ep.sft_rows(model.config().block_size);
  const std::vector<double> losses = train_sft(model, model.parameters(true), rows, sft_steps(cfg_), gen_);
  metrics_ = json{{"loss", losses}};
}

// ---------------------------------------------------------------- EWC

void EwcConfig::validate() const {
  sft.validate();
  check_non_negative_real(lambda, "EwcConfig", "lambda");
  check_non_negative(fisher_rows, "EwcConfig", "fisher_rows");
}

void to_json(json& j, const EwcConfig& c) {
  j = c.sft;
  j["lambda"] = c.lambda;
  j["fisher_rows"] = c.fisher_rows;
}

void from_json(const json& j, EwcConfig& out) {
  std::set<std::string> keys = kSftKeys;
  keys.insert("lambda");
  keys.insert("fisher_rows");
  detail::check_known_keys(j, keys, "EwcConfig");
  EwcConfig c;
  read_sft(j, c.sft, "EwcConfig");
  detail::read_field(j, "lambda", c.lambda, "EwcConfig");
  detail::read_field(j, "fisher_rows", c.fisher_rows, "EwcConfig");
  c.validate();
  out = c;
}

EwcMethod::EwcMethod(EwcConfig cfg) : cfg_(cfg), gen_(cfg.sft.seed) { cfg_.validate(); }

Tensor EwcMethod::penalty(nn::Transformer& model) const {
  const Tensor& w0 = model.wte->weight;
  Tensor total = Tensor::zeros({}, w0.dtype(), w0.device());
  if (fisher_.empty()) return total;
  for (size_t i = 0; i < fisher_.size(); ++i) {
    const std::string& name = fisher_[i].first;
    if (!model.has_parameter(name)) continue;
    const Tensor p = model.parameter(name);
    const Tensor d = p - anchor_[i].second;
    total = total + sum(fisher_[i].second * d * d);
  }
  return total * (0.5 * cfg_.lambda);
}

void EwcMethod::consolidate(nn::Transformer& model, const LearningEpisode& ep) {
  std::vector<TrainSequence> rows = ep.sft_rows(model.config().block_size);
  if (cfg_.fisher_rows > 0 && static_cast<int64_t>(rows.size()) > cfg_.fisher_rows) rows.resize(cfg_.fisher_rows);
  const NamedTensors params = model.named_parameters(/*trainable_only=*/true);
  std::vector<Tensor> handles;
  for (const auto& [n, p] : params) handles.push_back(p);
  // F_i = mean over rows of (d row-loss / d θ_i)², the empirical Fisher of the row likelihoods.
  std::vector<Tensor> f(params.size());
  {
    const TrainableScope scope(model, handles);
    for (const TrainSequence& row : rows) {
      for (const Tensor& p : handles) p.set_grad(Tensor());
      backward(sft_loss(model, make_batch({row}, model.config().block_size, model.config().vocab_size)));
      NoGradGuard no_grad;
      for (size_t i = 0; i < handles.size(); ++i) {
        const Tensor g = handles[i].grad();
        if (!g.defined()) continue;
        const Tensor g2 = g * g * (1.0 / static_cast<double>(rows.size()));
        f[i] = f[i].defined() ? f[i] + g2 : g2;
      }
    }
    for (const Tensor& p : handles) p.set_grad(Tensor());
  }
  NamedTensors new_fisher, new_anchor;
  NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& name = params[i].first;
    Tensor fi = f[i].defined() ? f[i] : Tensor::zeros(handles[i].shape(), handles[i].dtype(), handles[i].device());
    for (const auto& [old_name, old_f] : fisher_) {
      if (old_name == name) fi = fi + old_f;
    }
    new_fisher.emplace_back(name, fi.detach());
    new_anchor.emplace_back(name, handles[i].detach().clone());
  }
  fisher_ = std::move(new_fisher);
  anchor_ = std::move(new_anchor);
}

void EwcMethod::learn(nn::Transformer& model, const LearningEpisode& ep) {
  const std::vector<TrainSequence> rows = ep.sft_rows(model.config().block_size);
  const double before = penalty(model).item();
  std::function<Tensor()> extra;
  if (has_fisher() && cfg_.lambda > 0.0) extra = [&] { return penalty(model); };
  const std::vector<double> losses = train_sft(model, model.parameters(true), rows, sft_steps(cfg_.sft), gen_, extra);
  const double after = penalty(model).item();
  consolidate(model, ep);
  metrics_ = json{{"loss", losses}, {"penalty_before", before}, {"penalty_after", after}};
}

// ---------------------------------------------------------------- GRPO

void GrpoConfig::validate() const {
  const char* w = "GrpoConfig";
  check_non_negative(steps, w, "steps");
  check_positive_real(lr, w, "lr");
  check_positive(group_size, w, "group_size");
  SOMNUS_CHECK(group_size >= 2, "{}: 'group_size' must be >= 2 (advantages are relative to the group), got {}", w,
               group_size);
  check_non_negative(prompts_per_step, w, "prompts_per_step");
  check_positive(max_new_tokens, w, "max_new_tokens");
  check_positive_real(temperature, w, "temperature");
  check_non_negative_real(eps_low, w, "eps_low");
  check_non_negative_real(eps_high, w, "eps_high");
  check_non_negative_real(grad_clip, w, "grad_clip");
}

void to_json(json& j, const GrpoConfig& c) {
  j = json{{"steps", c.steps},
           {"lr", c.lr},
           {"group_size", c.group_size},
           {"prompts_per_step", c.prompts_per_step},
           {"max_new_tokens", c.max_new_tokens},
           {"temperature", c.temperature},
           {"eps_low", c.eps_low},
           {"eps_high", c.eps_high},
           {"grad_clip", c.grad_clip},
           {"seed", c.seed}};
}

void from_json(const json& j, GrpoConfig& out) {
  const char* w = "GrpoConfig";
  detail::check_known_keys(j,
                           {"steps", "lr", "group_size", "prompts_per_step", "max_new_tokens", "temperature",
                            "eps_low", "eps_high", "grad_clip", "seed"},
                           w);
  GrpoConfig c;
  detail::read_field(j, "steps", c.steps, w);
  detail::read_field(j, "lr", c.lr, w);
  detail::read_field(j, "group_size", c.group_size, w);
  detail::read_field(j, "prompts_per_step", c.prompts_per_step, w);
  detail::read_field(j, "max_new_tokens", c.max_new_tokens, w);
  detail::read_field(j, "temperature", c.temperature, w);
  detail::read_field(j, "eps_low", c.eps_low, w);
  detail::read_field(j, "eps_high", c.eps_high, w);
  detail::read_field(j, "grad_clip", c.grad_clip, w);
  detail::read_field(j, "seed", c.seed, w);
  c.validate();
  out = c;
}

GrpoMethod::GrpoMethod(GrpoConfig cfg) : cfg_(cfg), gen_(cfg.seed) { cfg_.validate(); }

void GrpoMethod::learn(nn::Transformer& model, const LearningEpisode& ep) {
  ep.validate();
  SOMNUS_CHECK(!ep.examples.empty(), "GRPO: episode '{}' has no examples (their prompts are the rollout prompts)",
               ep.name);
  for (const Example& ex : ep.examples) check_prompt_fits(ex.prompt, model, "GRPO");
  const std::vector<Tensor> params = model.parameters(true);
  SOMNUS_CHECK(!params.empty(), "GRPO: the model has no trainable parameters");
  AdamW optim({ParamGroup{.params = params, .lr = cfg_.lr, .weight_decay = 0.0, .period = 1, .name = "grpo"}});
  const int64_t G = cfg_.group_size;
  const Device dev = model.wte->weight.device();
  const DType dt = model.wte->weight.dtype();
  std::vector<double> mean_rewards, clip_fractions;
  for (int64_t step = 0; step < cfg_.steps; ++step) {
    const std::vector<size_t> idx = pick_examples(ep.examples.size(), cfg_.prompts_per_step, gen_);
    std::vector<std::vector<TokenId>> prompts;  // group-major: G copies of each prompt
    for (size_t i : idx) {
      for (int64_t g = 0; g < G; ++g) prompts.push_back(ep.examples[i].prompt);
    }
    nn::GenerateConfig gc;
    gc.max_new_tokens = cfg_.max_new_tokens;
    gc.temperature = cfg_.temperature;
    gc.stop_tokens = ep.stop_tokens;
    gc.seed = cfg_.seed;
    gc.stream_offset = rollouts_;
    rollouts_ += prompts.size();
    const nn::GenerateResult roll = nn::generate(model, prompts, gc);

    const auto N = static_cast<int64_t>(prompts.size());
    std::vector<double> rewards(static_cast<size_t>(N));
    int64_t T = 1;
    for (int64_t r = 0; r < N; ++r) {
      const Example& ex = ep.examples[idx[static_cast<size_t>(r / G)]];
      const std::vector<TokenId>& y = roll.sequences[static_cast<size_t>(r)].tokens;
      rewards[static_cast<size_t>(r)] = ep.reward ? ep.reward(ex, y) : answer_match_reward(ex, y);
      T = std::max<int64_t>(T, static_cast<int64_t>(prompts[static_cast<size_t>(r)].size() + y.size()) - 1);
    }
    mean_rewards.push_back(std::accumulate(rewards.begin(), rewards.end(), 0.0) / static_cast<double>(N));
    const Tensor adv = kernels::group_advantages(Tensor::from_vector(rewards, {N}, DType::f32), G);
    bool signal = false;
    for (double a : adv.to_vector()) signal = signal || a != 0.0;
    if (!signal) {  // every group is uniform: no gradient in the surrogate
      clip_fractions.push_back(0.0);
      continue;
    }
    // Rows: input = (prompt ++ y)[0..n-1), actions = [1..n), mask on the completion tokens.
    std::vector<double> in(static_cast<size_t>(N * T), 0.0), act(static_cast<size_t>(N * T), 0.0),
        old(static_cast<size_t>(N * T), 0.0), mask(static_cast<size_t>(N * T), 0.0);
    for (int64_t r = 0; r < N; ++r) {
      const std::vector<TokenId>& p = prompts[static_cast<size_t>(r)];
      const nn::GeneratedSequence& s = roll.sequences[static_cast<size_t>(r)];
      std::vector<TokenId> seq = p;
      seq.insert(seq.end(), s.tokens.begin(), s.tokens.end());
      for (size_t t = 0; t + 1 < seq.size(); ++t) {
        const auto i = static_cast<size_t>(r * T) + t;
        in[i] = seq[t];
        act[i] = seq[t + 1];
        if (t + 1 >= p.size()) {
          mask[i] = 1.0;
          old[i] = s.logprobs[t + 1 - p.size()];
        }
      }
    }
    const TrainableScope scope(model, params);
    optim.zero_grad_all();
    const Tensor h = model.hidden_states(Tensor::from_vector(in, {N, T}, DType::i64, dev));  // (N, T, C)
    LinearPPOOptions po;
    po.eps_low = cfg_.eps_low;
    po.eps_high = cfg_.eps_high;
    const PPOLossOutput out = linear_ppo_loss(h, model.lm_head_weight(), Tensor::from_vector(act, {N, T}, DType::i64, dev),
                                              Tensor::from_vector(old, {N, T}, dt, dev), Tensor(), adv.to(dev, dt),
                                              Tensor::from_vector(mask, {N, T}, dt, dev), po);
    backward(out.loss);
    if (cfg_.grad_clip > 0.0) clip_grad_norm(params, cfg_.grad_clip);
    optim.step();
    clip_fractions.push_back(out.clip_low_fraction + out.clip_high_fraction);
  }
  optim.zero_grad_all();
  metrics_ = json{{"mean_reward", mean_rewards}, {"clip_fraction", clip_fractions}};
}

// ---------------------------------------------------------------- OPSD

void OpsdConfig::validate() const {
  const char* w = "OpsdConfig";
  check_non_negative(steps, w, "steps");
  check_positive_real(lr, w, "lr");
  check_non_negative(prompts_per_step, w, "prompts_per_step");
  check_positive(max_new_tokens, w, "max_new_tokens");
  check_positive_real(temperature, w, "temperature");
  check_non_negative_real(grad_clip, w, "grad_clip");
}

void to_json(json& j, const OpsdConfig& c) {
  j = json{{"steps", c.steps},
           {"lr", c.lr},
           {"prompts_per_step", c.prompts_per_step},
           {"max_new_tokens", c.max_new_tokens},
           {"temperature", c.temperature},
           {"grad_clip", c.grad_clip},
           {"seed", c.seed}};
}

void from_json(const json& j, OpsdConfig& out) {
  const char* w = "OpsdConfig";
  detail::check_known_keys(j, {"steps", "lr", "prompts_per_step", "max_new_tokens", "temperature", "grad_clip", "seed"},
                           w);
  OpsdConfig c;
  detail::read_field(j, "steps", c.steps, w);
  detail::read_field(j, "lr", c.lr, w);
  detail::read_field(j, "prompts_per_step", c.prompts_per_step, w);
  detail::read_field(j, "max_new_tokens", c.max_new_tokens, w);
  detail::read_field(j, "temperature", c.temperature, w);
  detail::read_field(j, "grad_clip", c.grad_clip, w);
  detail::read_field(j, "seed", c.seed, w);
  c.validate();
  out = c;
}

Tensor opsd_reverse_kl(nn::Transformer& model, const std::vector<TokenId>& context, const std::vector<TokenId>& prompt,
                       const std::vector<TokenId>& completion) {
  SOMNUS_CHECK(!prompt.empty() && !completion.empty(), "opsd_reverse_kl: the prompt ({}) and completion ({}) must be "
               "non-empty", prompt.size(), completion.size());
  const int64_t block = model.config().block_size;
  const auto L = static_cast<int64_t>(completion.size());
  const auto P = static_cast<int64_t>(prompt.size());
  SOMNUS_CHECK(P + L - 1 <= block, "opsd_reverse_kl: prompt {} + completion {} tokens exceed block_size {}", P, L,
               block);
  const Device dev = model.wte->weight.device();
  auto ids = [&](const std::vector<TokenId>& seq) {
    std::vector<double> v(seq.begin(), seq.end() - 1);  // the last token is never an input
    return Tensor::from_vector(v, {1, static_cast<int64_t>(v.size())}, DType::i64, dev);
  };
  // Student: prompt ++ y; the predictions of y come from positions [P-1, P-1+L).
  std::vector<TokenId> s = prompt;
  s.insert(s.end(), completion.begin(), completion.end());
  const Tensor hs = contiguous(slice(model.hidden_states(ids(s)), 1, P - 1, P - 1 + L));  // (1, L, C)
  // Teacher: C ++ prompt ++ y, C cut from the left to fit; no history.
  const int64_t room = std::max<int64_t>(0, block + 1 - (P + L));
  const auto keep = std::min<int64_t>(room, static_cast<int64_t>(context.size()));
  std::vector<TokenId> t(context.end() - keep, context.end());
  t.insert(t.end(), s.begin(), s.end());
  Tensor ht;
  {
    NoGradGuard no_grad;
    ht = slice(model.hidden_states(ids(t)), 1, keep + P - 1, keep + P - 1 + L).contiguous();  // (1, L, C)
  }
  LinearJSDOptions jo;
  jo.beta = 1.0;  // KL(p_S ‖ p_T), the reverse KL
  const Tensor W = model.lm_head_weight();
  return linear_jsd(hs, W, ht.detach(), W.detach(), jo);
}

OpsdMethod::OpsdMethod(OpsdConfig cfg) : cfg_(cfg), gen_(cfg.seed) { cfg_.validate(); }

void OpsdMethod::learn(nn::Transformer& model, const LearningEpisode& ep) {
  ep.validate();
  SOMNUS_CHECK(!ep.context.empty(), "OPSD: episode '{}' has no context (the teacher is the model given the context)",
               ep.name);
  SOMNUS_CHECK(!ep.examples.empty(), "OPSD: episode '{}' has no examples (their prompts are the student's prompts)",
               ep.name);
  for (const Example& ex : ep.examples) check_prompt_fits(ex.prompt, model, "OPSD");
  const std::vector<Tensor> params = model.parameters(true);
  SOMNUS_CHECK(!params.empty(), "OPSD: the model has no trainable parameters");
  AdamW optim({ParamGroup{.params = params, .lr = cfg_.lr, .weight_decay = 0.0, .period = 1, .name = "opsd"}});
  std::vector<double> kls;
  for (int64_t step = 0; step < cfg_.steps; ++step) {
    const std::vector<size_t> idx = pick_examples(ep.examples.size(), cfg_.prompts_per_step, gen_);
    std::vector<std::vector<TokenId>> prompts;
    for (size_t i : idx) prompts.push_back(ep.examples[i].prompt);
    nn::GenerateConfig gc;
    gc.max_new_tokens = cfg_.max_new_tokens;
    gc.temperature = cfg_.temperature;
    gc.stop_tokens = ep.stop_tokens;
    gc.seed = cfg_.seed;
    gc.stream_offset = rollouts_;
    rollouts_ += prompts.size();
    const nn::GenerateResult roll = nn::generate(model, prompts, gc);  // the student, without the context

    const TrainableScope scope(model, params);
    optim.zero_grad_all();
    Tensor loss;
    int64_t used = 0;
    for (size_t r = 0; r < prompts.size(); ++r) {
      const std::vector<TokenId>& y = roll.sequences[r].tokens;
      if (y.empty()) continue;
      const Tensor kl = opsd_reverse_kl(model, ep.context, prompts[r], y);
      loss = loss.defined() ? loss + kl : kl;
      ++used;
    }
    if (used == 0) continue;
    loss = loss * (1.0 / static_cast<double>(used));
    kls.push_back(loss.item());
    backward(loss);
    if (cfg_.grad_clip > 0.0) clip_grad_norm(params, cfg_.grad_clip);
    optim.step();
  }
  optim.zero_grad_all();
  metrics_ = json{{"reverse_kl", kls}};
}

// ---------------------------------------------------------------- SEAL

DreamConfig seal_default_config() {
  DreamConfig c;
  c.selection = false;
  c.random_extra_expert = false;
  return c;
}

SealMethod::SealMethod() : SealMethod(seal_default_config()) {}

SealMethod::SealMethod(DreamConfig cfg) : cfg_(std::move(cfg)) {
  cfg_.validate();
  SOMNUS_CHECK(!cfg_.selection, "SEAL: 'selection' must be false (SEAL tries every dream)");
  SOMNUS_CHECK(!cfg_.random_extra_expert, "SEAL: 'random_extra_expert' must be false (SEAL samples the plain model)");
}

DreamTask dream_task_of(const LearningEpisode& ep) {
  DreamTask t;
  t.name = ep.name;
  t.context = ep.context;
  t.score = ep.score;
  t.prompt_prefix = ep.dream_prefix;
  t.prompt_suffix = ep.dream_suffix;
  t.train_prefix = ep.train_prefix;
  t.stop_tokens = ep.stop_tokens;
  if (!ep.examples.empty()) t.answer = ep.examples.front().answer;
  return t;
}

void SealMethod::learn(nn::Transformer& model, const LearningEpisode& ep) {
  const DreamTask task = dream_task_of(ep);
  task.validate();
  json dreamer;
  const DreamResult r = dream_episode(model, cfg_, episodes_++, task, dreamer_state_, dreamer);
  metrics_ = json{{"iterations", r.iterations},
                  {"rewarded", r.rewarded.size()},
                  {"tau_before", r.tau_before},
                  {"tau_after", r.tau_after},
                  {"dreamer", dreamer}};
}

}  // namespace somnus::sleep
