// Memory Consolidation: expansion + Knowledge Seeding (see consolidation.h).
#include "sleep/consolidation.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <utility>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "autograd/losses.h"
#include "nn/checkpoint.h"
#include "nn/generate.h"
#include "nn/optim.h"
#include "sleep/config_json.h"
#include "sleep/rewards.h"
#include "sleep/teacher_view.h"
#include "tensor/format.h"
#include "tensor/profiler.h"

namespace somnus::sleep {

using nlohmann::json;

// ---------------------------------------------------------------- config

void SeedingConfig::validate() const {
  const char* w = "seeding config";
  SOMNUS_CHECK(n_samples >= 1, "{}: 'n_samples' must be >= 1, got {}", w, n_samples);
  SOMNUS_CHECK(sample_tokens >= 1, "{}: 'sample_tokens' must be >= 1, got {}", w, sample_tokens);
  SOMNUS_CHECK(sample_temperature >= 0.0, "{}: 'sample_temperature' must be >= 0, got {}", w, sample_temperature);
  SOMNUS_CHECK(sample_top_k >= 0, "{}: 'sample_top_k' must be >= 0, got {}", w, sample_top_k);
  SOMNUS_CHECK(steps >= 0, "{}: 'steps' must be >= 0, got {}", w, steps);
  SOMNUS_CHECK(batch_size >= 1, "{}: 'batch_size' must be >= 1, got {}", w, batch_size);
  SOMNUS_CHECK(lr > 0.0, "{}: 'lr' must be > 0, got {}", w, lr);
  SOMNUS_CHECK(weight_decay >= 0.0, "{}: 'weight_decay' must be >= 0, got {}", w, weight_decay);
  SOMNUS_CHECK(grad_clip >= 0.0, "{}: 'grad_clip' must be >= 0, got {}", w, grad_clip);
  SOMNUS_CHECK(lambda >= 0.0 && lambda <= 1.0, "{}: 'lambda' must be in [0, 1], got {}", w, lambda);
  SOMNUS_CHECK(beta >= 0.0 && beta <= 1.0, "{}: 'beta' must be in [0, 1], got {}", w, beta);
  SOMNUS_CHECK(temperature > 0.0, "{}: 'temperature' must be > 0, got {}", w, temperature);
  SOMNUS_CHECK(alpha >= 0.0 && alpha <= 1.0, "{}: 'alpha' must be in [0, 1], got {}", w, alpha);
  SOMNUS_CHECK(imitation_samples >= 1, "{}: 'imitation_samples' must be >= 1, got {}", w, imitation_samples);
  imitation.validate();
}

void to_json(json& j, const SeedingConfig& c) {
  j = json{{"n_samples", c.n_samples},
           {"sample_tokens", c.sample_tokens},
           {"sample_temperature", c.sample_temperature},
           {"sample_top_k", c.sample_top_k},
           {"stop_tokens", c.stop_tokens},
           {"steps", c.steps},
           {"batch_size", c.batch_size},
           {"lr", c.lr},
           {"weight_decay", c.weight_decay},
           {"grad_clip", c.grad_clip},
           {"lambda", c.lambda},
           {"beta", c.beta},
           {"temperature", c.temperature},
           {"alpha", c.alpha},
           {"imitation_samples", c.imitation_samples},
           {"imitation", c.imitation},
           {"seed", c.seed}};
}

void from_json(const json& j, SeedingConfig& c) {
  const json m = merge_config(j, json(SeedingConfig{}), "seeding config");
  c.n_samples = m.at("n_samples").get<int64_t>();
  c.sample_tokens = m.at("sample_tokens").get<int64_t>();
  c.sample_temperature = m.at("sample_temperature").get<double>();
  c.sample_top_k = m.at("sample_top_k").get<int64_t>();
  c.stop_tokens = token_ids_from_json(m.at("stop_tokens"), "seeding config", "stop_tokens");
  c.steps = m.at("steps").get<int64_t>();
  c.batch_size = m.at("batch_size").get<int64_t>();
  c.lr = m.at("lr").get<double>();
  c.weight_decay = m.at("weight_decay").get<double>();
  c.grad_clip = m.at("grad_clip").get<double>();
  c.lambda = m.at("lambda").get<double>();
  c.beta = m.at("beta").get<double>();
  c.temperature = m.at("temperature").get<double>();
  c.alpha = m.at("alpha").get<double>();
  c.imitation_samples = m.at("imitation_samples").get<int64_t>();
  c.imitation = m.at("imitation").get<ImitationConfig>();
  c.seed = m.at("seed").get<uint64_t>();
  c.validate();
}

namespace {

const char* policy_name(SlotPolicy p) {
  switch (p) {
    case SlotPolicy::error: return "error";
    case SlotPolicy::evict_oldest: return "evict_oldest";
    case SlotPolicy::merge_oldest: return "merge_oldest";
  }
  fail("consolidation config: unknown on_exhausted policy {}", static_cast<int>(p));
}

SlotPolicy policy_of(const std::string& s) {
  for (SlotPolicy p : {SlotPolicy::error, SlotPolicy::evict_oldest, SlotPolicy::merge_oldest})
    if (s == policy_name(p)) return p;
  fail("consolidation config: 'on_exhausted' must be \"error\", \"evict_oldest\" or \"merge_oldest\", got \"{}\"",
       s);
}

}  // namespace

void ConsolidationConfig::validate(const nn::TransformerConfig& model) const {
  const int64_t n_levels = static_cast<int64_t>(model.levels.size());
  SOMNUS_CHECK(sender >= 0 && sender + 1 < n_levels,
               "consolidation config: 'sender' = {} needs a receiver level {}: the model has {} CMS level(s)", sender,
               sender + 1, n_levels);
  if (expansion) {
    SOMNUS_CHECK(model.levels[static_cast<size_t>(sender + 1)].n_slots >= 1,
                 "consolidation config: the receiver level {} has no low-rank slots (set its n_slots >= 1, or "
                 "'expansion': false)",
                 sender + 1);
  }
  SOMNUS_CHECK(slot_init_std >= 0.0, "consolidation config: 'slot_init_std' must be >= 0 (0 = 1/sqrt(d)), got {}",
               slot_init_std);
  for (TokenId t : ks.stop_tokens)
    SOMNUS_CHECK(t >= 0 && t < model.vocab_size, "consolidation config: stop token {} is outside the vocabulary [0, {})",
                 t, model.vocab_size);
  ks.validate();
}

void to_json(json& j, const ConsolidationConfig& c) {
  j = json{{"sender", c.sender},
           {"expansion", c.expansion},
           {"seeding", c.seeding},
           {"on_exhausted", policy_name(c.on_exhausted)},
           {"slot_init_std", c.slot_init_std},
           {"ks", c.ks}};
}

void from_json(const json& j, ConsolidationConfig& c) {
  const json m = merge_config(j, json(ConsolidationConfig{}), "consolidation config");
  c.sender = m.at("sender").get<int64_t>();
  c.expansion = m.at("expansion").get<bool>();
  c.seeding = m.at("seeding").get<bool>();
  c.on_exhausted = policy_of(m.at("on_exhausted").get<std::string>());
  c.slot_init_std = m.at("slot_init_std").get<double>();
  c.ks = m.at("ks").get<SeedingConfig>();
}

json ConsolidationReport::to_json() const {
  json s = json::array();
  for (const auto& st : steps) {
    s.push_back({{"step", st.step},
                 {"loss", st.loss},
                 {"jsd", st.jsd},
                 {"ppo_loss", st.ppo_loss},
                 {"mean_reward", st.mean_reward},
                 {"clip_fraction", st.clip_fraction},
                 {"tokens_per_s", st.tokens_per_s},
                 {"seconds", st.seconds}});
  }
  return {{"sender", sender},
          {"receiver", receiver},
          {"skipped", skipped},
          {"new_slots", new_slots},
          {"evicted_slots", evicted_slots},
          {"evicted_merged", evicted_merged},
          {"sender_slots_reset", sender_slots_reset},
          {"jsd_before", jsd_before},
          {"jsd_after", jsd_after},
          {"teacher_tokens", teacher_tokens},
          {"semantic_reward", semantic_reward},
          {"imitation_references", imitation_references},
          {"references_with_answer", references_with_answer},
          {"seconds", seconds},
          {"steps", s}};
}

// ---------------------------------------------------------------- helpers

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A sequence with the length of its prompt: positions [prompt_len − 1, size − 2] predict the
// continuation, which is what distillation compares.
struct Row {
  std::vector<TokenId> ids;
  int64_t prompt_len = 0;
};

// Right-padded ids (B, T) i64 and the continuation mask (B, T) f32. Right padding never
// changes a causal model's outputs at the real positions.
std::pair<Tensor, Tensor> make_batch(const std::vector<Row>& rows, Device device) {
  int64_t T = 1;
  for (const Row& r : rows) T = std::max<int64_t>(T, static_cast<int64_t>(r.ids.size()));
  const int64_t B = static_cast<int64_t>(rows.size());
  std::vector<double> ids(static_cast<size_t>(B * T), 0.0), mask(static_cast<size_t>(B * T), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    const Row& r = rows[static_cast<size_t>(b)];
    const int64_t n = static_cast<int64_t>(r.ids.size());
    for (int64_t t = 0; t < n; ++t) ids[static_cast<size_t>(b * T + t)] = static_cast<double>(r.ids[static_cast<size_t>(t)]);
    for (int64_t t = std::max<int64_t>(r.prompt_len - 1, 0); t <= n - 2; ++t) mask[static_cast<size_t>(b * T + t)] = 1.0;
  }
  return {Tensor::from_vector(ids, {B, T}, DType::i64).to(device), Tensor::from_vector(mask, {B, T}, DType::f32).to(device)};
}

// Sets requires_grad on exactly `trainable` and puts every parameter's flag back afterwards.
class TrainableScope {
 public:
  TrainableScope(nn::Module& m, const std::vector<Tensor>& trainable) : params_(m.parameters()) {
    for (Tensor& p : params_) {
      flags_.push_back(p.requires_grad());
      p.set_requires_grad(false);
    }
    for (Tensor t : trainable) t.set_requires_grad(true);
  }
  ~TrainableScope() {
    for (size_t i = 0; i < params_.size(); ++i) params_[i].set_requires_grad(flags_[i]);
  }

 private:
  std::vector<Tensor> params_;
  std::vector<bool> flags_;
};

}  // namespace

// ---------------------------------------------------------------- Consolidator

Consolidator::Consolidator(nn::Transformer& model, ConsolidationConfig cfg)
    : model_(model), cfg_(std::move(cfg)), gen_(cfg_.ks.seed) {
  cfg_.validate(model_.config());
  const int64_t L = model_.config().n_layer;
  activation_.assign(static_cast<size_t>(L), {});
  for (int64_t l = 0; l < L; ++l) {
    const nn::CmsLevel& recv = model_.level(l, cfg_.sender + 1);
    activation_[static_cast<size_t>(l)].assign(static_cast<size_t>(recv.n_slots()), -1);
    for (int64_t s : recv.active_slots()) activation_[static_cast<size_t>(l)][static_cast<size_t>(s)] = 0;
  }
}

NamedTensors Consolidator::snapshot_sender() const {
  NamedTensors out;
  NoGradGuard no_grad;
  const std::string marker = fmt::format(".cms.{}.", cfg_.sender);
  for (const auto& [name, t] : model_.named_parameters()) {
    if (name.find(marker) == std::string::npos || name.find(".slots.") != std::string::npos) continue;
    // LoRA handles (sleep/lora.h) that a Dreamer left on the level's layers are not sender
    // weights: they are the adapters' (an "off" pair of zeros once dreaming is over), and
    // counting them would change the snapshot's layout the first time a model dreams.
    if (name.find(".lora_") != std::string::npos) continue;
    out.emplace_back(name, t.clone());
  }
  return out;
}

json Consolidator::state() const {
  return {{"consolidations", consolidations_}, {"activation", activation_}, {"gen", nn::generator_to_json(gen_)}};
}

void Consolidator::load_state(const json& j) {
  SOMNUS_CHECK(j.is_object() && j.contains("consolidations") && j.contains("activation"),
               "Consolidator::load_state: expected {{\"consolidations\", \"activation\"}}, got {}", j.dump());
  auto act = j.at("activation").get<std::vector<std::vector<int64_t>>>();
  SOMNUS_CHECK(act.size() == activation_.size(), "Consolidator::load_state: {} layers, the model has {}", act.size(),
               activation_.size());
  for (size_t l = 0; l < act.size(); ++l) {
    SOMNUS_CHECK(act[l].size() == activation_[l].size(), "Consolidator::load_state: layer {}: {} slots, expected {}", l,
                 act[l].size(), activation_[l].size());
  }
  const int64_t consolidations = j.at("consolidations").get<int64_t>();
  // "gen" is optional for states saved before it was added (the generator then stays as seeded).
  const Generator gen = j.contains("gen") ? nn::generator_from_json(j.at("gen"), "consolidator state: gen") : gen_;
  activation_ = std::move(act);
  consolidations_ = consolidations;
  gen_ = gen;
}

void Consolidator::check_ready(const std::vector<std::vector<TokenId>>& prompts) const {
  if (!cfg_.expansion) return;  // the ablation consolidates nothing and needs nothing
  const nn::TransformerConfig& mc = model_.config();
  SOMNUS_CHECK(!prompts.empty(), "consolidate: no prompts for teacher sampling (give at least a BOS prompt)");
  for (const auto& p : prompts) {
    SOMNUS_CHECK(!p.empty() && static_cast<int64_t>(p.size()) < mc.block_size,
                 "consolidate: every prompt needs 1 to block_size − 1 = {} tokens, got {}", mc.block_size - 1,
                 p.size());
  }
  const int64_t receiver = cfg_.sender + 1;
  for (int64_t l = 0; l < mc.n_layer; ++l) {
    const nn::CmsLevel& recv = model_.level(l, receiver);
    if (static_cast<int64_t>(recv.active_slots().size()) < recv.n_slots()) continue;
    SOMNUS_CHECK(cfg_.on_exhausted != SlotPolicy::error,
                 "consolidate: no free slot in receiver level {} of layer {}: all {} slots are active (raise its "
                 "n_slots, or set 'on_exhausted': \"evict_oldest\" or \"merge_oldest\")",
                 receiver, l, recv.n_slots());
  }
  check_semantic_reward();
}

void Consolidator::check_semantic_reward() const {
  const bool imitates = cfg_.expansion && cfg_.seeding && cfg_.ks.steps > 0 && cfg_.ks.alpha < 1.0;
  SOMNUS_CHECK(!imitates || answer_of_ || cfg_.ks.imitation.semantic_reward != "answer_match",
               "consolidate: 'ks.imitation.semantic_reward' is \"answer_match\" but the task defines no answer field "
               "(no answer extractor was set); use \"auto\" or \"hidden_cosine\"");
}

ConsolidationReport Consolidator::consolidate(const NamedTensors& sender_old,
                                              const std::vector<std::vector<TokenId>>& prompts,
                                              const SeedingLogFn& log) {
  SOMNUS_PROFILE_SCOPE("consolidation");
  const auto t_start = Clock::now();
  const nn::TransformerConfig& mc = model_.config();
  const int64_t L = mc.n_layer;
  const int64_t sender = cfg_.sender, receiver = sender + 1;
  const SeedingConfig& ks = cfg_.ks;
  ImitationConfig imitation = ks.imitation;  // rollouts stop where sampling stops unless told otherwise
  if (imitation.stop_tokens.empty()) imitation.stop_tokens = ks.stop_tokens;
  ConsolidationReport rep;
  rep.sender = sender;
  rep.receiver = receiver;
  check_ready(prompts);  // everything that can refuse, before anything changes (the count included)
  ++consolidations_;
  if (!cfg_.expansion) {  // the ablation: θ_new is already applied; nothing else changes
    rep.seconds = seconds_since(t_start);
    return rep;
  }

  // -- which receiver slot each layer gets (check_ready has refused a full pool under `error`)
  std::vector<int64_t> evict(static_cast<size_t>(L), -1);
  for (int64_t l = 0; l < L; ++l) {
    const nn::CmsLevel& recv = model_.level(l, receiver);
    if (static_cast<int64_t>(recv.active_slots().size()) < recv.n_slots()) continue;
    const auto& act = activation_[static_cast<size_t>(l)];
    evict[static_cast<size_t>(l)] = std::min_element(act.begin(), act.end()) - act.begin();
  }

  // -- (b) the student: sender slots reset (their B kept for the teacher), new receiver slots
  TeacherViewSpec spec;
  spec.sender = sender;
  spec.sender_old = sender_old;
  spec.sender_slots.resize(static_cast<size_t>(L));
  spec.receiver_new_slot.assign(static_cast<size_t>(L), -1);
  const bool merge = cfg_.on_exhausted == SlotPolicy::merge_oldest;
  if (merge) spec.receiver_evicted.assign(static_cast<size_t>(L), EvictedSlot{});
  std::vector<Tensor> trainable;
  {
    NoGradGuard no_grad;
    for (int64_t l = 0; l < L; ++l) {
      nn::CmsLevel& snd = model_.level(l, sender);
      for (int64_t s : snd.active_slots()) {
        spec.sender_slots[static_cast<size_t>(l)].emplace_back(s, snd.slot(s).B.clone());
        snd.reset_slot(s);
        ++rep.sender_slots_reset;
      }
      nn::CmsLevel& recv = model_.level(l, receiver);
      const int64_t e = evict[static_cast<size_t>(l)];
      if (e >= 0) {
        // merge_oldest: the teacher keeps the occupant, which reset_slot (B) and
        // activate_slot (A, the router row) are about to overwrite.
        if (merge) {
          const nn::LowRankSlot& old = recv.slot(e);
          spec.receiver_evicted[static_cast<size_t>(l)] =
              EvictedSlot{e, old.A.clone(), old.B.clone(), old.router.defined() ? old.router.clone() : Tensor()};
        }
        recv.reset_slot(e);
      }
      const int64_t s = recv.activate_slot(gen_, cfg_.slot_init_std);
      activation_[static_cast<size_t>(l)][static_cast<size_t>(s)] = consolidations_;
      spec.receiver_new_slot[static_cast<size_t>(l)] = s;
      for (const Tensor& p : recv.slot_parameters(s)) trainable.push_back(p);
    }
  }
  rep.new_slots = spec.receiver_new_slot;
  rep.evicted_slots = evict;
  if (!cfg_.seeding || ks.steps == 0) {
    rep.seconds = seconds_since(t_start);
    return rep;
  }
  // Seeding distils the teacher, which keeps the evicted occupants under merge_oldest.
  rep.evicted_merged = merge && std::any_of(evict.begin(), evict.end(), [](int64_t e) { return e >= 0; });

  TeacherView view(model_, std::move(spec));
  TrainableScope trainable_scope(model_, trainable);
  const Device device = model_.wte->weight.device();
  const Tensor W = model_.lm_head_weight();  // (V, C), frozen, shared by teacher and student

  // -- D: teacher samples, once
  std::vector<Row> D;
  {
    const auto t0 = Clock::now();
    std::vector<std::vector<TokenId>> ps;
    for (int64_t i = 0; i < ks.n_samples; ++i) ps.push_back(prompts[static_cast<size_t>(i) % prompts.size()]);
    nn::GenerateConfig g;
    g.temperature = ks.sample_temperature;
    g.top_k = ks.sample_top_k;
    g.stop_tokens = ks.stop_tokens;
    g.seed = ks.seed + static_cast<uint64_t>(consolidations_) * 1000003ULL;
    size_t longest = 0;
    for (const auto& p : ps) longest = std::max(longest, p.size());
    g.max_new_tokens = std::min<int64_t>(ks.sample_tokens, mc.block_size - static_cast<int64_t>(longest));
    nn::GenerateResult res;
    {
      SOMNUS_PROFILE_SCOPE("teacher_sampling");
      TeacherView::Scope scope(view);
      res = nn::generate(model_, ps, g);
    }
    for (size_t i = 0; i < ps.size(); ++i) {
      Row r{ps[i], static_cast<int64_t>(ps[i].size())};
      r.ids.insert(r.ids.end(), res.sequences[i].tokens.begin(), res.sequences[i].tokens.end());
      rep.teacher_tokens += static_cast<int64_t>(res.sequences[i].tokens.size());
      D.push_back(std::move(r));
    }
    (void)t0;
  }

  LinearJSDOptions jopt;
  jopt.beta = ks.beta;
  jopt.temperature = ks.temperature;
  auto jsd_on = [&](const std::vector<Row>& rows, bool with_grad) -> Tensor {
    auto [ids, mask] = make_batch(rows, device);
    Tensor h_t;
    {
      SOMNUS_PROFILE_SCOPE("teacher_fwd");
      h_t = view.hidden_states(ids);  // (B, T, C), no tape
    }
    LinearJSDOptions o = jopt;
    o.mask = mask;
    std::optional<NoGradGuard> no_grad;
    if (!with_grad) no_grad.emplace();
    Tensor h_s;
    {
      SOMNUS_PROFILE_SCOPE("student_fwd");
      h_s = model_.hidden_states(ids);
    }
    SOMNUS_PROFILE_SCOPE("jsd");
    return linear_jsd(h_s, W, h_t, W, o);
  };
  // A fixed evaluation batch: the first rows of D.
  std::vector<Row> eval_rows(D.begin(), D.begin() + std::min<int64_t>(ks.batch_size, static_cast<int64_t>(D.size())));
  {
    SOMNUS_PROFILE_SCOPE("eval_jsd");
    rep.jsd_before = jsd_on(eval_rows, false).item();
  }

  // Semantic reward of the imitation term: the task's answer match where it has an answer
  // field (answer_of_), else the hidden-state cosine against the (frozen) teacher.
  std::unique_ptr<SemanticReward> rsem;
  if (ks.alpha < 1.0) {
    rsem = make_semantic_reward(imitation, [&view](const Tensor& ids) { return view.hidden_states(ids); }, device,
                                answer_of_);
    rep.semantic_reward = rsem->name();
  }

  AdamW opt({ParamGroup{trainable, ks.lr, ks.weight_decay, 1, "seeding.slots"}}, AdamWOptions{0.9, 0.999, 1e-8});
  const int64_t n_policy = static_cast<int64_t>(std::llround(ks.lambda * static_cast<double>(ks.batch_size)));
  const int64_t n_teacher = ks.batch_size - n_policy;
  for (int64_t step = 1; step <= ks.steps; ++step) {
    const auto t0 = Clock::now();
    SeedingStepLog sl;
    sl.step = step;
    int64_t tokens = 0;
    const uint64_t step_seed = ks.seed + static_cast<uint64_t>(consolidations_) * 1000003ULL + static_cast<uint64_t>(step) * 7919ULL;

    // (1−λ)·B rows of D, λ·B rows with student continuations of D's prompts.
    const std::vector<double> pick = randint(0, static_cast<int64_t>(D.size()), {ks.batch_size}, gen_).to_vector();
    std::vector<Row> rows;
    std::vector<std::vector<TokenId>> policy_prompts;
    int64_t policy_new = 1;
    for (int64_t b = 0; b < ks.batch_size; ++b) {
      const Row& d = D[static_cast<size_t>(pick[static_cast<size_t>(b)])];
      if (b < n_teacher) {
        rows.push_back(d);
      } else {
        policy_prompts.emplace_back(d.ids.begin(), d.ids.begin() + d.prompt_len);
        policy_new = std::max<int64_t>(policy_new, static_cast<int64_t>(d.ids.size()) - d.prompt_len);
      }
    }
    if (!policy_prompts.empty()) {
      SOMNUS_PROFILE_SCOPE("student_on_policy_sampling");
      nn::GenerateConfig g;
      g.temperature = ks.sample_temperature;
      g.top_k = ks.sample_top_k;
      g.stop_tokens = ks.stop_tokens;
      g.seed = step_seed;
      size_t longest = 0;
      for (const auto& p : policy_prompts) longest = std::max(longest, p.size());
      g.max_new_tokens = std::min<int64_t>(policy_new, mc.block_size - static_cast<int64_t>(longest));
      const nn::GenerateResult res = nn::generate(model_, policy_prompts, g);  // no_grad inside; caches freed here
      for (size_t i = 0; i < policy_prompts.size(); ++i) {
        Row r{policy_prompts[i], static_cast<int64_t>(policy_prompts[i].size())};
        r.ids.insert(r.ids.end(), res.sequences[i].tokens.begin(), res.sequences[i].tokens.end());
        tokens += static_cast<int64_t>(res.sequences[i].tokens.size());
        rows.push_back(std::move(r));
      }
    }

    // Imitation rollouts first (host data only), so that no KV cache is alive during a backward.
    ImitationRollouts rollouts;
    if (ks.alpha < 1.0) {
      SOMNUS_PROFILE_SCOPE("imitation_rollouts");
      std::vector<std::vector<TokenId>> samples;
      const std::vector<double> which =
          randint(0, static_cast<int64_t>(D.size()), {ks.imitation_samples}, gen_).to_vector();
      for (double i : which) samples.push_back(D[static_cast<size_t>(i)].ids);
      rollouts = imitation_rollouts(model_, samples, imitation,
                                    static_cast<uint64_t>(consolidations_) * 1000003ULL + static_cast<uint64_t>(step),
                                    rsem.get());
      tokens += rollouts.tokens_generated;
    }

    // Distillation: backward right away, so its tape is gone before the imitation forward.
    if (ks.alpha > 0.0) {
      SOMNUS_PROFILE_SCOPE("distill");
      Tensor jsd = jsd_on(rows, true);
      sl.jsd = jsd.item();
      SOMNUS_PROFILE_SCOPE("distill_backward");
      backward(jsd * ks.alpha);
      for (const Row& r : rows) tokens += 2 * static_cast<int64_t>(r.ids.size());  // teacher + student forwards
    }
    if (ks.alpha < 1.0) {
      SOMNUS_PROFILE_SCOPE("ppo_update");
      const ImitationLoss il =
          imitation_loss(model_, rollouts, imitation, [&view](const Tensor& ids) { return view.hidden_states(ids); }, W);
      sl.ppo_loss = il.loss.item();
      sl.mean_reward = il.mean_reward;
      sl.clip_fraction = il.clip_low_fraction + il.clip_high_fraction;
      backward(il.loss * (1.0 - ks.alpha));
    }
    sl.loss = ks.alpha * sl.jsd + (1.0 - ks.alpha) * sl.ppo_loss;
    SOMNUS_PROFILE_SCOPE("slot_optimizer");
    if (ks.grad_clip > 0.0) clip_grad_norm(trainable, ks.grad_clip);
    opt.step();
    opt.zero_grad_all();
    sl.seconds = seconds_since(t0);
    sl.tokens_per_s = sl.seconds > 0.0 ? static_cast<double>(tokens) / sl.seconds : 0.0;
    rep.steps.push_back(sl);
    if (log) log(sl);
  }
  if (const auto* am = dynamic_cast<const AnswerMatchReward*>(rsem.get())) {
    rep.imitation_references = am->references();
    rep.references_with_answer = am->references_with_answer();
  }
  {
    SOMNUS_PROFILE_SCOPE("eval_jsd");
    rep.jsd_after = jsd_on(eval_rows, false).item();
  }
  rep.seconds = seconds_since(t_start);
  return rep;
}

}  // namespace somnus::sleep
