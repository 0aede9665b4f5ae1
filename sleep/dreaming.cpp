#include "sleep/dreaming.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <utility>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "nn/generate.h"
#include "sleep/baselines/json_fields.h"
#include "tensor/format.h"
#include "tensor/profiler.h"

namespace somnus::sleep {

using nlohmann::json;

namespace {

constexpr const char* kWhere = "DreamConfig";

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Disables whatever adapter is active when the scope ends (also on an exception).
struct AdapterOff {
  AdapterSet& set;
  ~AdapterOff() { set.disable(); }
};

thread_local const DreamObserver* t_observer = nullptr;

}  // namespace

ScopedDreamObserver::ScopedDreamObserver(DreamObserver observer)
    : observer_(std::move(observer)), previous_(t_observer) {
  t_observer = &observer_;
}

ScopedDreamObserver::~ScopedDreamObserver() { t_observer = previous_; }

// ---------------------------------------------------------------- task

void DreamTask::validate() const {
  SOMNUS_CHECK(!context.empty(), "DreamTask '{}': missing field 'context' (the new context C is empty)", name);
  SOMNUS_CHECK(static_cast<bool>(score), "DreamTask '{}': missing field 'score' (the task scorer τ is not set)", name);
  SOMNUS_CHECK(static_cast<bool>(make_prompt) || !prompt_prefix.empty() || !prompt_suffix.empty(),
               "DreamTask '{}': missing field 'prompt template' (set prompt_prefix/prompt_suffix or make_prompt)", name);
}

std::vector<TokenId> DreamTask::dream_prompt() const {
  validate();
  std::vector<TokenId> p;
  if (make_prompt) {
    p = make_prompt(context);
  } else {
    p = prompt_prefix;
    p.insert(p.end(), context.begin(), context.end());
    p.insert(p.end(), prompt_suffix.begin(), prompt_suffix.end());
  }
  SOMNUS_CHECK(!p.empty(), "DreamTask '{}': the dream prompt template produced an empty prompt", name);
  return p;
}

// ---------------------------------------------------------------- config

const char* apply_target_name(ApplyTarget t) { return t == ApplyTarget::lora ? "lora" : "slots"; }

void DreamConfig::validate() const {
  auto positive = [](int64_t v, const char* field) {
    SOMNUS_CHECK(v >= 1, "{}: '{}' must be >= 1, got {}", kWhere, field, v);
  };
  auto non_negative = [](int64_t v, const char* field) {
    SOMNUS_CHECK(v >= 0, "{}: '{}' must be >= 0, got {}", kWhere, field, v);
  };
  auto positive_real = [](double v, const char* field) {
    SOMNUS_CHECK(std::isfinite(v) && v > 0.0, "{}: '{}' must be > 0, got {}", kWhere, field, v);
  };
  positive(num_dreams, "num_dreams");
  positive(dream_length, "dream_length");
  positive_real(temperature, "temperature");
  non_negative(top_k, "top_k");
  non_negative(keep_random, "keep_random");
  SOMNUS_CHECK(!selection || top_k + keep_random >= 1,
               "{}: 'top_k' + 'keep_random' must keep at least one dream when 'selection' is on, got {} + {}", kWhere,
               top_k, keep_random);
  try {
    lora.validate();
  } catch (const Error& e) {
    fail("{}: 'lora': {}", kWhere, e.what());
  }
  positive(trial_steps, "trial_steps");
  positive_real(trial_lr, "trial_lr");
  positive(rest_iterations, "rest_iterations");
  non_negative(rest_steps, "rest_steps");
  positive_real(rest_lr, "rest_lr");
  non_negative(apply_steps, "apply_steps");
  positive_real(apply_lr, "apply_lr");
  SOMNUS_CHECK(std::isfinite(min_improvement) && min_improvement >= 0.0, "{}: 'min_improvement' must be >= 0, got {}",
               kWhere, min_improvement);
}

void to_json(json& j, const DreamConfig& c) {
  j = json{{"num_dreams", c.num_dreams},
           {"dream_length", c.dream_length},
           {"temperature", c.temperature},
           {"top_k", c.top_k},
           {"keep_random", c.keep_random},
           {"lora", c.lora},
           {"trial_steps", c.trial_steps},
           {"trial_lr", c.trial_lr},
           {"rest_iterations", c.rest_iterations},
           {"rest_steps", c.rest_steps},
           {"rest_lr", c.rest_lr},
           {"apply_steps", c.apply_steps},
           {"apply_lr", c.apply_lr},
           {"apply_target", apply_target_name(c.apply_target)},
           {"random_extra_expert", c.random_extra_expert},
           {"selection", c.selection},
           {"min_improvement", c.min_improvement},
           {"apply_guard", c.apply_guard},
           {"persist_dreamer", c.persist_dreamer},
           {"seed", c.seed}};
}

void from_json(const json& j, DreamConfig& out) {
  detail::check_known_keys(j,
                           {"num_dreams", "dream_length", "temperature", "top_k", "keep_random", "lora", "trial_steps",
                            "trial_lr", "rest_iterations", "rest_steps", "rest_lr", "apply_steps", "apply_lr",
                            "apply_target", "random_extra_expert", "selection", "min_improvement", "apply_guard",
                            "persist_dreamer", "seed"},
                           kWhere);
  DreamConfig c;
  detail::read_field(j, "num_dreams", c.num_dreams, kWhere);
  detail::read_field(j, "dream_length", c.dream_length, kWhere);
  detail::read_field(j, "temperature", c.temperature, kWhere);
  detail::read_field(j, "top_k", c.top_k, kWhere);
  detail::read_field(j, "keep_random", c.keep_random, kWhere);
  if (const auto it = j.find("lora"); it != j.end()) {
    try {
      c.lora = it->get<LoraConfig>();
    } catch (const Error& e) {
      fail("{}: 'lora': {}", kWhere, e.what());
    }
  }
  detail::read_field(j, "trial_steps", c.trial_steps, kWhere);
  detail::read_field(j, "trial_lr", c.trial_lr, kWhere);
  detail::read_field(j, "rest_iterations", c.rest_iterations, kWhere);
  detail::read_field(j, "rest_steps", c.rest_steps, kWhere);
  detail::read_field(j, "rest_lr", c.rest_lr, kWhere);
  detail::read_field(j, "apply_steps", c.apply_steps, kWhere);
  detail::read_field(j, "apply_lr", c.apply_lr, kWhere);
  std::string target = apply_target_name(c.apply_target);
  detail::read_field(j, "apply_target", target, kWhere);
  SOMNUS_CHECK(target == "lora" || target == "slots", "{}: 'apply_target' must be \"lora\" or \"slots\", got \"{}\"",
               kWhere, target);
  c.apply_target = target == "lora" ? ApplyTarget::lora : ApplyTarget::slots;
  detail::read_field(j, "random_extra_expert", c.random_extra_expert, kWhere);
  detail::read_field(j, "selection", c.selection, kWhere);
  detail::read_field(j, "min_improvement", c.min_improvement, kWhere);
  detail::read_field(j, "apply_guard", c.apply_guard, kWhere);
  detail::read_field(j, "persist_dreamer", c.persist_dreamer, kWhere);
  detail::read_field(j, "seed", c.seed, kWhere);
  c.validate();
  out = c;
}

uint64_t episode_dream_seed(uint64_t seed, int64_t episode) {
  SOMNUS_CHECK(episode >= 0, "episode_dream_seed: the episode index must be >= 0, got {}", episode);
  if (episode == 0) return seed;
  return splitmix64_mix(seed ^ (static_cast<uint64_t>(episode) * 0x9E3779B97F4A7C15ULL));
}

void to_json(json& j, const DreamIterationMetrics& m) {
  j = json{{"iteration", m.iteration}, {"sampled", m.sampled},   {"kept", m.kept},
           {"rewarded", m.rewarded},   {"base_tau", m.base_tau}, {"mean_tau", m.mean_tau},
           {"max_tau", m.max_tau},     {"tokens_per_s", m.tokens_per_s}, {"seconds", m.seconds}};
}

// ---------------------------------------------------------------- selection

std::vector<size_t> select_dreams(const std::vector<double>& importance, int64_t top_k, int64_t keep_random,
                                  Generator& gen) {
  SOMNUS_CHECK(top_k >= 0 && keep_random >= 0, "select_dreams: top_k ({}) and keep_random ({}) must be >= 0", top_k,
               keep_random);
  const size_t n = importance.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  if (static_cast<size_t>(top_k + keep_random) >= n) return order;
  // NaN scores sort last.
  auto key = [&](size_t i) { return std::isnan(importance[i]) ? -INFINITY : importance[i]; };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key(a) > key(b); });
  std::vector<size_t> kept(order.begin(), order.begin() + top_k);
  std::vector<size_t> pool(order.begin() + top_k, order.end());
  std::sort(pool.begin(), pool.end());
  for (int64_t r = 0; r < keep_random && !pool.empty(); ++r) {
    const auto pick = static_cast<size_t>(randint(0, static_cast<int64_t>(pool.size()), {1}, gen).item());
    kept.push_back(pool[pick]);
    pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(pick));
  }
  std::sort(kept.begin(), kept.end());
  return kept;
}

std::vector<std::vector<TokenId>> rest_training_set(const std::vector<std::vector<TokenId>>& dreams,
                                                    const std::vector<int>& rewards) {
  SOMNUS_CHECK(dreams.size() == rewards.size(), "rest_training_set: {} dreams but {} rewards", dreams.size(),
               rewards.size());
  std::vector<std::vector<TokenId>> out;
  for (size_t i = 0; i < dreams.size(); ++i) {
    if (rewards[i] == 1) out.push_back(dreams[i]);
  }
  return out;
}

// ---------------------------------------------------------------- Dreamer

Dreamer::Dreamer(nn::Transformer& model, DreamConfig cfg) : model_(model), cfg_(std::move(cfg)), gen_(cfg_.seed) {
  cfg_.validate();
  adapters_ = std::make_unique<AdapterSet>(model_, cfg_.lora, gen_);
  for (const char* name : {"trial", "dreamer", "apply"}) adapters_->add(name, gen_);
}

TrainSequence Dreamer::dream_row(const DreamTask& task, const std::vector<TokenId>& dream) const {
  TrainSequence row;
  row.tokens = task.train_prefix;
  row.tokens.insert(row.tokens.end(), dream.begin(), dream.end());
  row.loss_start = std::max<int64_t>(1, static_cast<int64_t>(task.train_prefix.size()));
  return row;
}

double Dreamer::score(const DreamTask& task) {
  SOMNUS_PROFILE_SCOPE("scoring");
  task.validate();
  adapters_->disable();
  NoGradGuard no_grad;
  return task.score(model_);
}

std::vector<std::vector<TokenId>> Dreamer::sample(const DreamTask& task) {
  SOMNUS_PROFILE_SCOPE("dream_sampling");
  const std::vector<TokenId> prompt = task.dream_prompt();
  const int64_t block = model_.config().block_size;
  SOMNUS_CHECK(static_cast<int64_t>(prompt.size()) < block,
               "Dreamer::sample: task '{}': the dream prompt has {} tokens, the model's block_size is {}", task.name,
               prompt.size(), block);
  // The dreaming hook on the MoE levels that do not have it on already; switched off again
  // on the way out, whatever happens.
  std::vector<nn::MoE*> switched;
  if (cfg_.random_extra_expert) {
    for (int64_t l = 0; l < model_.config().n_layer; ++l) {
      for (size_t i = 0; i < model_.config().levels.size(); ++i) {
        nn::CmsLevel& lv = model_.level(l, static_cast<int64_t>(i));
        if (lv.moe && !lv.moe->random_extra_expert()) {
          lv.moe->set_random_extra_expert(true, &gen_);
          switched.push_back(lv.moe.get());
        }
      }
    }
  }
  struct Restore {
    std::vector<nn::MoE*>& levels;
    ~Restore() {
      for (nn::MoE* m : levels) m->set_random_extra_expert(false);
    }
  } restore{switched};
  adapters_->enable("dreamer");
  const AdapterOff off{*adapters_};

  nn::GenerateConfig g;
  g.max_new_tokens = cfg_.dream_length;
  g.temperature = cfg_.temperature;
  g.stop_tokens = task.stop_tokens;
  g.seed = cfg_.seed;
  g.stream_offset = sample_calls_ * static_cast<uint64_t>(cfg_.num_dreams);
  ++sample_calls_;
  const std::vector<std::vector<TokenId>> prompts(static_cast<size_t>(cfg_.num_dreams), prompt);
  const nn::GenerateResult res = nn::generate(model_, prompts, g);
  std::vector<std::vector<TokenId>> dreams;
  for (const nn::GeneratedSequence& s : res.sequences) dreams.push_back(s.tokens);
  return dreams;
}

std::vector<double> Dreamer::importance(const DreamTask& task, const std::vector<std::vector<TokenId>>& dreams) {
  SOMNUS_PROFILE_SCOPE("dream_selection");
  adapters_->reset("trial", gen_);
  adapters_->enable("trial");
  const AdapterOff off{*adapters_};
  const std::vector<Tensor> params = adapters_->parameters("trial");
  const TrainableScope scope(model_, params);
  std::vector<double> scores;
  for (const std::vector<TokenId>& d : dreams) {
    const TrainSequence row = dream_row(task, d);
    if (row.tokens.size() < 2) {  // nothing to learn from
      scores.push_back(0.0);
      continue;
    }
    for (const Tensor& p : params) p.set_grad(Tensor());
    backward(sft_loss(model_, make_batch({row}, model_.config().block_size, model_.config().vocab_size)));
    double sq = 0.0;
    for (const Tensor& p : params) {
      if (!p.grad().defined()) continue;
      for (double v : p.grad().to_vector()) sq += v * v;
    }
    scores.push_back(std::sqrt(sq));
  }
  for (const Tensor& p : params) p.set_grad(Tensor());
  return scores;
}

std::vector<int> Dreamer::try_dreams(const DreamTask& task, const std::vector<std::vector<TokenId>>& dreams,
                                     double base_tau, std::vector<double>* taus) {
  SOMNUS_PROFILE_SCOPE("lora_trials");
  task.validate();
  std::vector<int> rewards;
  if (taus) taus->clear();
  const AdapterOff off{*adapters_};
  for (const std::vector<TokenId>& d : dreams) {
    const TrainSequence row = dream_row(task, d);
    if (row.tokens.size() < 2) {
      rewards.push_back(0);
      if (taus) taus->push_back(base_tau);
      continue;
    }
    adapters_->reset("trial", gen_);  // every dream starts from the unmodified model
    adapters_->enable("trial");
    const SftSteps steps{.steps = cfg_.trial_steps, .lr = cfg_.trial_lr};
    train_sft(model_, adapters_->parameters("trial"), {row}, steps, gen_);
    double tau = 0.0;
    {
      NoGradGuard no_grad;
      tau = task.score(model_);
      if (t_observer && t_observer->on_trial) t_observer->on_trial(task, d, model_);
    }
    adapters_->disable();
    rewards.push_back(tau > base_tau + cfg_.min_improvement ? 1 : 0);
    if (taus) taus->push_back(tau);
  }
  return rewards;
}

std::vector<double> Dreamer::learn_to_dream(const DreamTask& task, const std::vector<std::vector<TokenId>>& dreams,
                                            const std::vector<int>& rewards) {
  SOMNUS_PROFILE_SCOPE("rest_em");
  const std::vector<std::vector<TokenId>> keep = rest_training_set(dreams, rewards);
  if (keep.empty() || cfg_.rest_steps == 0) return {};
  const std::vector<TokenId> prompt = task.dream_prompt();
  std::vector<TrainSequence> rows;
  for (const std::vector<TokenId>& d : keep) {
    if (d.empty()) continue;
    TrainSequence row{prompt, static_cast<int64_t>(prompt.size())};
    row.tokens.insert(row.tokens.end(), d.begin(), d.end());
    rows.push_back(std::move(row));
  }
  if (rows.empty()) return {};
  adapters_->enable("dreamer");
  const AdapterOff off{*adapters_};
  const SftSteps steps{.steps = cfg_.rest_steps, .lr = cfg_.rest_lr};
  std::vector<double> losses = train_sft(model_, adapters_->parameters("dreamer"), rows, steps, gen_);
  if (!losses.empty()) ++updates_;
  return losses;
}

DreamerState Dreamer::dreamer_state() const {
  return DreamerState{adapters_->adapter_state("dreamer"), runs_, updates_};
}

DreamResult dream_episode(nn::Transformer& model, const DreamConfig& cfg, int64_t episode, const DreamTask& task,
                          DreamerState& carried, json& dreamer_metrics) {
  DreamConfig dc = cfg;
  dc.seed = episode_dream_seed(cfg.seed, episode);
  Dreamer dreamer(model, dc);
  const bool from_carried = cfg.persist_dreamer && !carried.empty();
  if (from_carried) dreamer.load_dreamer_state(carried);
  DreamResult r = dreamer.run(task);
  const DreamerState state = dreamer.dreamer_state();
  dreamer_metrics = {{"carried", from_carried}, {"runs", state.runs}, {"updates", state.updates}};
  if (cfg.persist_dreamer) carried = state;
  return r;
}

void Dreamer::load_dreamer_state(const DreamerState& state) {
  if (state.empty()) return;
  adapters_->load_adapter_state("dreamer", state.adapter);
  runs_ = state.runs;
  updates_ = state.updates;
}

int64_t Dreamer::apply(const DreamTask& task, const std::vector<std::vector<TokenId>>& dreams) {
  SOMNUS_PROFILE_SCOPE("dream_apply");
  std::vector<TrainSequence> rows;
  for (const std::vector<TokenId>& d : dreams) {
    TrainSequence row = dream_row(task, d);
    if (row.tokens.size() >= 2) rows.push_back(std::move(row));
  }
  if (rows.empty() || cfg_.apply_steps == 0) return 0;
  const double tau_before = cfg_.apply_guard ? score(task) : 0.0;
  const SftSteps steps{.steps = cfg_.apply_steps, .lr = cfg_.apply_lr};
  if (cfg_.apply_target == ApplyTarget::lora) {
    adapters_->reset("apply", gen_);
    adapters_->enable("apply");
    {
      const AdapterOff off{*adapters_};
      train_sft(model_, adapters_->parameters("apply"), rows, steps, gen_);
    }
    if (cfg_.apply_guard) {
      adapters_->enable("apply");
      double tau_applied = 0.0;
      {
        const AdapterOff off{*adapters_};
        NoGradGuard no_grad;
        tau_applied = task.score(model_);
      }
      if (!(tau_applied > tau_before)) {  // rejected: the base weights were never touched
        adapters_->reset("apply", gen_);
        return 0;
      }
    }
    adapters_->merge("apply", gen_);
  } else {
    // A new slot in the slowest level of every layer.
    const auto last = static_cast<int64_t>(model_.config().levels.size()) - 1;
    SOMNUS_CHECK(model_.config().levels.back().n_slots > 0,
                 "Dreamer::apply: apply_target = slots, but the slowest CMS level (levels[{}]) has no slots", last);
    // Every layer needs a free slot: check them all before activating any, or a full layer
    // would throw after the earlier layers' slots were taken (and left active, untrained).
    for (int64_t l = 0; l < model_.config().n_layer; ++l) {
      const nn::CmsLevel& lv = model_.level(l, last);
      SOMNUS_CHECK(static_cast<int64_t>(lv.active_slots().size()) < lv.n_slots(),
                   "Dreamer::apply: apply_target = slots, but the slowest CMS level (levels[{}]) of layer {} has no "
                   "free slot: all {} are active (raise its n_slots, or apply into 'lora')",
                   last, l, lv.n_slots());
    }
    std::vector<Tensor> params;
    std::vector<int64_t> new_slots;
    for (int64_t l = 0; l < model_.config().n_layer; ++l) {
      nn::CmsLevel& lv = model_.level(l, last);
      const int64_t s = lv.activate_slot(gen_);
      new_slots.push_back(s);
      for (const Tensor& p : lv.slot_parameters(s)) params.push_back(p);
    }
    adapters_->disable();
    train_sft(model_, params, rows, steps, gen_);
    if (cfg_.apply_guard && !(score(task) > tau_before)) {  // rejected: free the new slots again
      for (int64_t l = 0; l < model_.config().n_layer; ++l) model_.level(l, last).reset_slot(new_slots[static_cast<size_t>(l)]);
      return 0;
    }
  }
  return cfg_.apply_steps;
}

DreamResult Dreamer::run(const DreamTask& task, const std::function<void(const DreamIterationMetrics&)>& on_iteration) {
  SOMNUS_PROFILE_SCOPE("dreaming");
  task.validate();
  ++runs_;
  if (t_observer && t_observer->on_start) t_observer->on_start(task, *this);
  DreamResult result;
  const double base_tau = score(task);
  result.tau_before = base_tau;
  for (int64_t it = 0; it < cfg_.rest_iterations; ++it) {
    const auto t0 = std::chrono::steady_clock::now();
    DreamIterationMetrics m;
    m.iteration = it;
    m.base_tau = base_tau;
    const std::vector<std::vector<TokenId>> dreams = sample(task);
    const double sample_s = seconds_since(t0);
    int64_t tokens = 0;
    for (const auto& d : dreams) tokens += static_cast<int64_t>(d.size());
    m.sampled = static_cast<int64_t>(dreams.size());
    if (t_observer && t_observer->on_sample) t_observer->on_sample(task, it, dreams);
    const size_t first_record = result.dreams.size();
    for (const auto& d : dreams) result.dreams.push_back(SampledDream{it, d, false, 0, 0.0});
    m.tokens_per_s = sample_s > 0.0 ? static_cast<double>(tokens) / sample_s : 0.0;

    std::vector<size_t> kept_idx(dreams.size());
    std::iota(kept_idx.begin(), kept_idx.end(), size_t{0});
    if (cfg_.selection) kept_idx = select_dreams(importance(task, dreams), cfg_.top_k, cfg_.keep_random, gen_);
    std::vector<std::vector<TokenId>> kept;
    for (size_t i : kept_idx) kept.push_back(dreams[i]);
    m.kept = static_cast<int64_t>(kept.size());

    std::vector<double> taus;
    const std::vector<int> rewards = try_dreams(task, kept, base_tau, &taus);
    for (size_t k = 0; k < kept_idx.size(); ++k) {
      SampledDream& rec = result.dreams[first_record + kept_idx[k]];
      rec.kept = true;
      rec.reward = rewards[k];
      rec.tau = taus[k];
    }
    m.rewarded = std::count(rewards.begin(), rewards.end(), 1);
    m.mean_tau = taus.empty() ? base_tau : std::accumulate(taus.begin(), taus.end(), 0.0) / static_cast<double>(taus.size());
    m.max_tau = taus.empty() ? base_tau : *std::max_element(taus.begin(), taus.end());
    for (const auto& d : rest_training_set(kept, rewards)) result.rewarded.push_back(d);

    learn_to_dream(task, kept, rewards);
    m.seconds = seconds_since(t0);
    result.iterations.push_back(m);
    if (on_iteration) on_iteration(m);
  }
  result.applied_steps = apply(task, result.rewarded);
  result.tau_after = score(task);
  return result;
}

}  // namespace somnus::sleep
