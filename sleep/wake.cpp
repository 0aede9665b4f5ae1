// Wake: the multi-frequency trainer, test-time training, consolidation triggers (see wake.h).
#include "sleep/wake.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "nn/train_config.h"
#include "sleep/config_json.h"
#include "tensor/format.h"
#include "tensor/profiler.h"

namespace somnus::sleep {

using nlohmann::json;

void WakeConfig::validate(const nn::TransformerConfig& model) const {
  const char* w = "wake config";
  SOMNUS_CHECK(lr > 0.0, "{}: 'lr' must be > 0, got {}", w, lr);
  SOMNUS_CHECK(weight_decay >= 0.0, "{}: 'weight_decay' must be >= 0, got {}", w, weight_decay);
  SOMNUS_CHECK(beta1 >= 0.0 && beta1 < 1.0, "{}: 'beta1' must be in [0, 1), got {}", w, beta1);
  SOMNUS_CHECK(beta2 >= 0.0 && beta2 < 1.0, "{}: 'beta2' must be in [0, 1), got {}", w, beta2);
  SOMNUS_CHECK(grad_clip >= 0.0, "{}: 'grad_clip' must be >= 0, got {}", w, grad_clip);
  SOMNUS_CHECK(aux_loss_weight >= 0.0, "{}: 'aux_loss_weight' must be >= 0, got {}", w, aux_loss_weight);
  SOMNUS_CHECK(consolidate_every >= 0, "{}: 'consolidate_every' must be >= 0, got {}", w, consolidate_every);
  SOMNUS_CHECK(ttt_chunk >= 0 && ttt_chunk <= model.block_size,
               "{}: 'ttt_chunk' must be in [0, block_size = {}], got {}", w, model.block_size, ttt_chunk);
  SOMNUS_CHECK(ttt_lr > 0.0, "{}: 'ttt_lr' must be > 0, got {}", w, ttt_lr);
  SOMNUS_CHECK(!ttt_levels.empty(), "{}: 'ttt_levels' must name at least one CMS level", w);
  SOMNUS_CHECK(sleep_teacher == "since_last_sleep" || sleep_teacher == "pending",
               "{}: 'sleep_teacher' must be \"since_last_sleep\" or \"pending\", got \"{}\"", w, sleep_teacher);
  SOMNUS_CHECK(train == "all" || train == "sender", "{}: 'train' must be \"all\" or \"sender\", got \"{}\"", w, train);
  SOMNUS_CHECK(train_all_steps >= 0, "{}: 'train_all_steps' must be >= 0, got {}", w, train_all_steps);
  SOMNUS_CHECK(spike_zscore >= 0.0 && std::isfinite(spike_zscore), "{}: 'spike_zscore' must be >= 0 (0: off), got {}", w,
               spike_zscore);
  SOMNUS_CHECK(spike_window >= 2, "{}: 'spike_window' must be >= 2, got {}", w, spike_window);
  for (int64_t l : ttt_levels) {
    SOMNUS_CHECK(l >= 0 && l < static_cast<int64_t>(model.levels.size()),
                 "{}: 'ttt_levels' entry {} out of range [0, {})", w, l, model.levels.size());
  }
}

void to_json(json& j, const WakeConfig& c) {
  j = json{{"lr", c.lr},
           {"weight_decay", c.weight_decay},
           {"beta1", c.beta1},
           {"beta2", c.beta2},
           {"grad_clip", c.grad_clip},
           {"aux_loss_weight", c.aux_loss_weight},
           {"consolidate_every", c.consolidate_every},
           {"ttt_chunk", c.ttt_chunk},
           {"ttt_lr", c.ttt_lr},
           {"ttt_levels", c.ttt_levels},
           {"sleep_teacher", c.sleep_teacher},
           {"train", c.train},
           {"train_all_steps", c.train_all_steps},
           {"spike_zscore", c.spike_zscore},
           {"spike_window", c.spike_window}};
}

void from_json(const json& j, WakeConfig& c) {
  const json m = merge_config(j, json(WakeConfig{}), "wake config");
  c.lr = m.at("lr").get<double>();
  c.weight_decay = m.at("weight_decay").get<double>();
  c.beta1 = m.at("beta1").get<double>();
  c.beta2 = m.at("beta2").get<double>();
  c.grad_clip = m.at("grad_clip").get<double>();
  c.aux_loss_weight = m.at("aux_loss_weight").get<double>();
  c.consolidate_every = m.at("consolidate_every").get<int64_t>();
  c.ttt_chunk = m.at("ttt_chunk").get<int64_t>();
  c.ttt_lr = m.at("ttt_lr").get<double>();
  c.ttt_levels = m.at("ttt_levels").get<std::vector<int64_t>>();
  c.sleep_teacher = m.at("sleep_teacher").get<std::string>();
  c.train = m.at("train").get<std::string>();
  c.train_all_steps = m.at("train_all_steps").get<int64_t>();
  c.spike_zscore = m.at("spike_zscore").get<double>();
  c.spike_window = m.at("spike_window").get<int64_t>();
}

namespace {

// transformer_param_groups with the sender level's parameters split off into groups of their
// own ("<group>.sender") wherever a group also holds other parameters of the same period
// (attention, the embeddings, another CMS level), so that sleep() can apply the sender's
// pending update and nothing else. The multi-frequency rule is unchanged: a split group's
// halves keep its period, lr and weight decay, and AdamW's state is per parameter. A group
// that holds only sender parameters, or none, keeps its name and place, so the layout (and
// the optimiser state of a progress checkpoint) changes only where the sender's period is
// shared. `sender_groups` receives the indices of the groups that hold the sender level.
std::vector<ParamGroup> wake_param_groups(const nn::Transformer& model, double lr, double weight_decay, int64_t sender,
                                          std::vector<size_t>& sender_groups) {
  const std::string marker = fmt::format(".cms.{}.", sender);
  std::set<const TensorImpl*> in_sender;
  for (const auto& [name, p] : model.named_parameters()) {
    if (name.find(marker) != std::string::npos) in_sender.insert(&p.impl());
  }
  std::vector<ParamGroup> out;
  sender_groups.clear();
  for (ParamGroup& g : nn::transformer_param_groups(model, lr, weight_decay)) {
    ParamGroup own = g, rest = g;
    own.params.clear();
    rest.params.clear();
    for (const Tensor& p : g.params) (in_sender.count(&p.impl()) ? own : rest).params.push_back(p);
    if (own.params.empty()) {
      out.push_back(std::move(g));
    } else if (rest.params.empty()) {
      sender_groups.push_back(out.size());
      out.push_back(std::move(g));
    } else {
      own.name += ".sender";
      out.push_back(std::move(rest));
      sender_groups.push_back(out.size());
      out.push_back(std::move(own));
    }
  }
  return out;
}

}  // namespace

WakeLearner::WakeLearner(nn::Transformer& model, WakeConfig wake, ConsolidationConfig consolidation)
    : model_(model), cfg_(std::move(wake)), consolidator_(model, std::move(consolidation)) {
  cfg_.validate(model_.config());
  guard_ = nn::TrainStepGuard(cfg_.spike_window, cfg_.spike_zscore);
  AdamWOptions o;
  o.beta1 = cfg_.beta1;
  o.beta2 = cfg_.beta2;
  opt_ = std::make_unique<AdamW>(
      wake_param_groups(model_, cfg_.lr, cfg_.weight_decay, consolidator_.config().sender, sender_groups_), o);
  if (cfg_.train == "sender") {
    // The switch after the warm-up must fall on a window boundary of every group that stops
    // learning, or its partial accumulation would be dropped.
    const nn::TransformerConfig& mc = model_.config();
    std::vector<int64_t> periods = {mc.attention_period, mc.embedding_period};
    for (size_t i = 0; i < mc.levels.size(); ++i)
      if (static_cast<int64_t>(i) != consolidator_.config().sender) periods.push_back(mc.levels[i].period);
    for (int64_t p : periods)
      SOMNUS_CHECK(cfg_.train_all_steps % p == 0,
                   "wake config: 'train_all_steps' ({}) must be a multiple of every period outside the sender level "
                   "({} is not)",
                   cfg_.train_all_steps, p);
    const std::string marker = fmt::format(".cms.{}.", consolidator_.config().sender);
    for (const auto& [name, p] : model_.named_parameters(/*trainable_only=*/true)) {
      if (name.find(marker) == std::string::npos) outside_sender_.push_back(p);
    }
  }
}

void WakeLearner::set_sleep_prompts(std::vector<std::vector<TokenId>> prompts) {
  SOMNUS_CHECK(!prompts.empty(), "WakeLearner::set_sleep_prompts: no prompts");
  prompts_ = std::move(prompts);
}

void WakeLearner::after_consolidation(const ConsolidationReport& rep) {
  // The wake optimiser must not carry moments of a slot's previous occupant into the new
  // slot, nor of the sender's reset slots into their next use.
  std::vector<Tensor> fresh;
  for (int64_t l = 0; l < model_.config().n_layer; ++l) {
    for (int64_t lv : {rep.sender, rep.receiver}) {
      const nn::CmsLevel& level = model_.level(l, lv);
      for (int64_t s = 0; s < level.n_slots(); ++s) {
        if (lv == rep.sender || (static_cast<size_t>(l) < rep.new_slots.size() && rep.new_slots[static_cast<size_t>(l)] == s)) {
          for (const Tensor& p : level.slot_parameters(s)) fresh.push_back(p);
        }
      }
    }
  }
  opt_->reset_state(fresh);
}

WakeStepLog WakeLearner::train_step(const nn::Batch& batch) {
  SOMNUS_PROFILE_SCOPE("wake_step");
  WakeStepLog log;
  const int64_t k = opt_->step_count() + 1;
  log.step = k;
  const int64_t sender_period =
      model_.config().levels.at(static_cast<size_t>(consolidator_.config().sender)).period;
  const bool sender_due = k % sender_period == 0;
  const bool consolidate =
      sender_due && cfg_.consolidate_every > 0 && (sender_applications_ + 1) % cfg_.consolidate_every == 0;

  opt_->zero_grad();
  nn::LMLoss l = model_.loss(batch.input, batch.target, batch.mask);
  Tensor total = l.total(cfg_.aux_loss_weight);
  backward(total);
  log.loss = l.ce.item();
  if (k > cfg_.train_all_steps) {
    for (const Tensor& p : outside_sender_) p.set_grad(Tensor());  // train = "sender": they stay as they are
  }
  for (size_t g : opt_->groups_due()) log.periods_applied.push_back(opt_->groups()[g].period);
  const ScaledParams due = opt_->due_params();  // measured as what this step applies
  std::sort(log.periods_applied.begin(), log.periods_applied.end());
  log.periods_applied.erase(std::unique(log.periods_applied.begin(), log.periods_applied.end()),
                            log.periods_applied.end());
  log.grad_norm = cfg_.grad_clip > 0.0 ? clip_grad_norm(due, cfg_.grad_clip) : grad_norm(due);

  const nn::StepVerdict verdict = guard_.judge(log.loss, log.grad_norm);
  if (verdict != nn::StepVerdict::ok) {
    log.skipped_non_finite = verdict == nn::StepVerdict::non_finite;
    log.skipped_spike = verdict == nn::StepVerdict::spike;
    opt_->zero_grad_all();
    opt_->step();  // applies nothing (no gradients); keeps the schedule aligned
    if (sender_due) ++sender_applications_;
    return log;
  }
  NamedTensors sender_old;
  if (consolidate) {
    consolidator_.check_ready(prompts_);  // a refusal must come before the step, not after it
    sender_old = consolidator_.snapshot_sender();
  }
  opt_->step();  // θ_new of every due group, the sender's included
  if (sender_due) ++sender_applications_;
  if (consolidate) {
    log.consolidation = consolidator_.consolidate(sender_old, prompts_);
    after_consolidation(*log.consolidation);
    // What the sender knew up to now is in a receiver slot: the next sleep() distils only
    // what it learns from here on (and is not a "first" sleep).
    if (cfg_.sleep_teacher == "since_last_sleep") {
      sender_old.clear();
      sender_anchor_ = consolidator_.snapshot_sender();
    }
  }
  return log;
}

LearnerState WakeLearner::state() const {
  LearnerState s;
  s.scalars = {{"sender_applications", sender_applications_},
               {"prompts", prompts_},
               {"consolidator", consolidator_.state()},
               {"guard", guard_.to_json()}};
  s.anchor = sender_anchor_;
  return s;
}

void WakeLearner::load_state(const LearnerState& s) {
  const json& j = s.scalars;
  // "guard" (the loss-spike guard's window) since 2026-11-26; a state without it loads with a
  // fresh guard.
  SOMNUS_CHECK(j.is_object() && (j.size() == 3 || (j.size() == 4 && j.contains("guard"))) &&
                   j.contains("sender_applications") && j.contains("prompts") && j.contains("consolidator") &&
                   j.at("sender_applications").is_number_integer() && j.at("prompts").is_array(),
               "WakeLearner::load_state: expected {{\"sender_applications\", \"prompts\", \"consolidator\"[, "
               "\"guard\"]}}, got {}",
               j.dump());
  nn::TrainStepGuard guard(cfg_.spike_window, cfg_.spike_zscore);
  if (j.contains("guard")) guard.load_json(j.at("guard"));
  const auto applications = j.at("sender_applications").get<int64_t>();
  SOMNUS_CHECK(applications >= 0, "WakeLearner::load_state: negative sender_applications {}", applications);
  auto prompts = j.at("prompts").get<std::vector<std::vector<TokenId>>>();
  SOMNUS_CHECK(!prompts.empty(), "WakeLearner::load_state: no sleep prompts");
  // The anchor must have a snapshot's layout (a snapshot is small: the sender level alone).
  const NamedTensors like = s.anchor.empty() ? NamedTensors{} : consolidator_.snapshot_sender();
  std::map<std::string, Tensor> given(s.anchor.begin(), s.anchor.end());
  SOMNUS_CHECK(s.anchor.empty() || like.size() == s.anchor.size(),
               "WakeLearner::load_state: the anchor has {} tensors, the sender {}", s.anchor.size(), like.size());
  NamedTensors anchor;  // in the sender's order, on the model's device
  for (const auto& [name, t] : like) {
    const auto it = given.find(name);
    SOMNUS_CHECK(it != given.end(), "WakeLearner::load_state: the anchor lacks '{}'", name);
    SOMNUS_CHECK(it->second.shape() == t.shape() && it->second.dtype() == t.dtype(),
                 "WakeLearner::load_state: anchor '{}' is {} {}, the sender's {} {}", name,
                 shape_str(it->second.shape()), dtype_name(it->second.dtype()), shape_str(t.shape()),
                 dtype_name(t.dtype()));
    anchor.emplace_back(name, it->second.to(t.device()).contiguous());
  }
  consolidator_.load_state(j.at("consolidator"));  // checks its own JSON before changing anything
  guard_ = guard;
  sender_applications_ = applications;
  prompts_ = std::move(prompts);
  sender_anchor_ = std::move(anchor);
}

ConsolidationReport WakeLearner::sleep(const SeedingLogFn& log) {
  SOMNUS_PROFILE_SCOPE("sleep");
  const bool anchored = cfg_.sleep_teacher == "since_last_sleep";
  if (anchored && sender_anchor_.empty()) {  // the first sleep: nothing older to keep
    for (size_t g : sender_groups_) opt_->apply_group_now(g);
    sender_anchor_ = consolidator_.snapshot_sender();
    ConsolidationReport rep;
    rep.sender = consolidator_.config().sender;
    rep.receiver = rep.sender + 1;
    rep.skipped = true;
    return rep;
  }
  // A consolidation that would be refused (no free slot, a bad prompt) must leave the learner
  // as it was: the pending update unapplied and the anchor kept, so that the next sleep() is
  // not mistaken for a first one.
  consolidator_.check_ready(prompts_);
  NamedTensors sender_old = anchored ? sender_anchor_ : consolidator_.snapshot_sender();
  for (size_t g : sender_groups_) opt_->apply_group_now(g);  // θ_new from the pending accumulation
  ConsolidationReport rep = consolidator_.consolidate(sender_old, prompts_, log);
  sender_old.clear();
  sender_anchor_.clear();
  after_consolidation(rep);
  if (anchored) sender_anchor_ = consolidator_.snapshot_sender();
  return rep;
}

StreamLog WakeLearner::read_stream(const std::vector<TokenId>& stream) {
  SOMNUS_PROFILE_SCOPE("wake_read_stream");
  const int64_t chunk = cfg_.ttt_chunk > 0 ? cfg_.ttt_chunk : model_.config().block_size;
  SOMNUS_CHECK(static_cast<int64_t>(stream.size()) >= 2, "read_stream: a stream needs at least 2 tokens, got {}",
               stream.size());
  // One group per distinct period of the levels read with: level ℓ applies every C_ℓ chunks.
  std::vector<Tensor> fast;
  std::map<int64_t, std::vector<Tensor>> by_period;
  for (int64_t l = 0; l < model_.config().n_layer; ++l) {
    for (int64_t lv : cfg_.ttt_levels) {
      const int64_t period = model_.config().levels.at(static_cast<size_t>(lv)).period;
      for (const Tensor& p : model_.level(l, lv).parameters(/*trainable_only=*/true)) {
        fast.push_back(p);
        by_period[period].push_back(p);
      }
    }
  }
  SOMNUS_CHECK(!fast.empty(), "read_stream: the fast levels have no trainable parameters");
  if (!ttt_opt_) {
    AdamWOptions o;
    o.beta1 = cfg_.beta1;
    o.beta2 = cfg_.beta2;
    std::vector<ParamGroup> groups;
    for (auto& [period, params] : by_period)
      groups.push_back(ParamGroup{params, cfg_.ttt_lr, 0.0, period, fmt::format("ttt.period{}", period)});
    ttt_opt_ = std::make_unique<AdamW>(std::move(groups), o);
  }
  // Only the fast levels take part in the tape.
  std::vector<Tensor> all = model_.parameters();
  std::vector<bool> flags;
  for (Tensor& p : all) {
    flags.push_back(p.requires_grad());
    p.set_requires_grad(false);
  }
  for (Tensor p : fast) p.set_requires_grad(true);
  StreamLog out;
  const Device device = model_.wte->weight.device();
  try {
    for (size_t start = 0; start + 1 < stream.size(); start += static_cast<size_t>(chunk)) {
      const size_t end = std::min(stream.size(), start + static_cast<size_t>(chunk) + 1);  // + the last target
      const int64_t T = static_cast<int64_t>(end - start) - 1;
      std::vector<double> in, tg;
      for (int64_t t = 0; t < T; ++t) {
        in.push_back(static_cast<double>(stream[start + static_cast<size_t>(t)]));
        tg.push_back(static_cast<double>(stream[start + static_cast<size_t>(t) + 1]));
      }
      const Tensor ids = Tensor::from_vector(in, {1, T}, DType::i64).to(device);
      const Tensor targets = Tensor::from_vector(tg, {1, T}, DType::i64).to(device);
      ttt_opt_->zero_grad();  // clears only the groups that applied: slower levels keep accumulating
      nn::LMLoss l = model_.loss(ids, targets);
      backward(l.ce);
      out.chunk_loss.push_back(l.ce.item());
      out.tokens += T;
      ttt_opt_->step();
    }
    // The end of the stream: a slower level's partial window is applied, not dropped.
    for (size_t g = 0; g < ttt_opt_->groups().size(); ++g) {
      if (ttt_opt_->step_count() % ttt_opt_->groups()[g].period != 0) ttt_opt_->apply_group_now(g);
    }
    ttt_opt_->zero_grad_all();
  } catch (...) {
    for (size_t i = 0; i < all.size(); ++i) all[i].set_requires_grad(flags[i]);
    throw;
  }
  for (size_t i = 0; i < all.size(); ++i) all[i].set_requires_grad(flags[i]);
  return out;
}

}  // namespace somnus::sleep
