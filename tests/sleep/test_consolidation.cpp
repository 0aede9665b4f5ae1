// Consolidation (expansion + Knowledge Seeding), the teacher view, and the wake driver
// (sleep/consolidation.h, sleep/teacher_view.h, sleep/wake.h) on a tiny two-level model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "autograd/losses.h"
#include "nn/generate.h"
#include "nn/train_config.h"
#include "sleep/consolidation.h"
#include "sleep/dreaming.h"
#include "sleep/teacher_view.h"
#include "sleep/wake.h"
#include "nn/nn_testing.h"
#include "testing.h"

namespace somnus::sleep {
namespace {

using somnus::testing::expect_error;

nn::TransformerConfig tiny_config(int64_t slots = 2) {
  nn::TransformerConfig c;
  c.vocab_size = 24;
  c.n_layer = 2;
  c.n_embd = 16;
  c.n_head = 2;
  c.block_size = 32;
  c.levels = {nn::LevelConfig{}, nn::LevelConfig{}};
  c.levels[0].period = 1;
  c.levels[0].hidden = 32;
  c.levels[0].n_slots = slots;
  c.levels[0].slot_rank = 4;
  c.levels[1].period = 2;
  c.levels[1].hidden = 32;
  c.levels[1].n_slots = slots;
  c.levels[1].slot_rank = 4;
  return c;
}

std::shared_ptr<nn::Transformer> make_model(uint64_t seed = 7, int64_t slots = 2) {
  Generator gen(seed);
  return std::make_shared<nn::Transformer>(tiny_config(slots), gen);
}

// Moves the sender level's weights by noise: the student's "θ_new".
void perturb_sender(nn::Transformer& m, int64_t sender, uint64_t seed, double std = 0.3) {
  Generator gen(seed);
  NoGradGuard no_grad;
  for (int64_t l = 0; l < m.config().n_layer; ++l) {
    for (const auto& [name, p] : m.level(l, sender).named_parameters()) {
      if (name.find("slots.") != std::string::npos) continue;
      p.copy_(p + randn(p.shape(), gen, p.dtype(), p.device(), 0.0, std));
    }
  }
}

ConsolidationConfig ks_config(int64_t steps, double alpha = 1.0, double lambda = 0.0) {
  ConsolidationConfig c;
  c.sender = 0;
  c.ks.steps = steps;
  c.ks.alpha = alpha;
  c.ks.lambda = lambda;
  c.ks.n_samples = 8;
  c.ks.sample_tokens = 12;
  c.ks.batch_size = 8;
  c.ks.lr = 3e-2;
  c.ks.imitation.group_size = 2;
  return c;
}

const std::vector<std::vector<TokenId>> kPrompts = {{1}, {2, 3}};

// JSD_β between two models on the continuation of `rows` (fixed teacher samples).
double jsd_between(nn::Transformer& teacher, nn::Transformer& student, const Tensor& ids, const Tensor& mask) {
  NoGradGuard no_grad;
  LinearJSDOptions o;
  o.mask = mask;
  return linear_jsd(student.hidden_states(ids), student.lm_head_weight(), teacher.hidden_states(ids),
                    teacher.lm_head_weight(), o)
      .item();
}

TEST(TeacherView, SharesStorageAndSwapsOnlyTheSender) {
  auto m = make_model();
  Consolidator c(*m, ks_config(0));
  const NamedTensors old = c.snapshot_sender();
  ASSERT_FALSE(old.empty());
  for (const auto& [name, t] : old) EXPECT_NE(name.find(".cms.0."), std::string::npos) << name;
  perturb_sender(*m, 0, 3);

  std::map<std::string, const void*> student_ptr;
  for (const auto& [name, p] : m->named_parameters()) student_ptr[name] = p.storage().get();
  TeacherViewSpec spec;
  spec.sender = 0;
  spec.sender_old = old;
  TeacherView view(*m, spec);
  {
    TeacherView::Scope scope(view);
    int swapped = 0;
    for (const auto& [name, p] : m->named_parameters()) {
      if (name.find(".cms.0.") != std::string::npos && name.find(".slots.") == std::string::npos) {
        EXPECT_NE(p.storage().get(), student_ptr[name]) << name;
        ++swapped;
      } else {
        EXPECT_EQ(p.storage().get(), student_ptr[name]) << name << ": the teacher must read the student's storage";
      }
    }
    EXPECT_EQ(swapped, static_cast<int>(old.size()));
  }
  for (const auto& [name, p] : m->named_parameters()) EXPECT_EQ(p.storage().get(), student_ptr[name]) << name;

  // The view's output is the unperturbed model's.
  auto ref = make_model();
  const Tensor ids = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {1, 6}, DType::i64);
  NoGradGuard no_grad;
  EXPECT_LT(somnus::testing::rel_error(view.hidden_states(ids), ref->hidden_states(ids)), 1e-6);
  EXPECT_GT(somnus::testing::rel_error(m->hidden_states(ids), ref->hidden_states(ids)), 1e-3);
}

TEST(Consolidation, SlotInvariants) {
  auto m = make_model();
  Generator gen(5);
  // The sender has an active slot with content from an earlier sleep.
  int64_t old_slot = -1;
  for (int64_t l = 0; l < 2; ++l) {
    old_slot = m->level(l, 0).activate_slot(gen);
    nn::testing::randomize(m->level(l, 0).slot(old_slot).B, 11 + static_cast<uint64_t>(l));
  }
  auto ref = make_model();
  ref->load_state_dict(m->state_dict());

  Consolidator c(*m, ks_config(2));
  const ConsolidationReport rep = c.consolidate(c.snapshot_sender(), kPrompts);
  EXPECT_EQ(rep.sender_slots_reset, 2);  // one per layer
  for (int64_t l = 0; l < 2; ++l) {
    EXPECT_TRUE(m->level(l, 0).active_slots().empty()) << "sender slots are reset";
    EXPECT_EQ(m->level(l, 0).slot(old_slot).B.to_vector(), std::vector<double>(4 * 16, 0.0));
    ASSERT_EQ(m->level(l, 1).active_slots().size(), 1u);
    EXPECT_EQ(m->level(l, 1).active_slots()[0], rep.new_slots[static_cast<size_t>(l)]);
    // Seeding trained the new slot away from its no-op init.
    double norm = 0;
    for (double v : m->level(l, 1).slot(rep.new_slots[static_cast<size_t>(l)]).B.to_vector()) norm += v * v;
    EXPECT_GT(norm, 0.0);
  }
  // Nothing but the new slots changed.
  for (const auto& [name, p] : ref->named_parameters()) {
    if (name.find(".cms.1.slots.") != std::string::npos || name.find(".cms.0.slots.") != std::string::npos) continue;
    EXPECT_TRUE(nn::testing::bitwise_equal(p, m->parameter(name))) << name;
  }
  // Every parameter is trainable again afterwards.
  for (const auto& [name, p] : m->named_parameters()) EXPECT_TRUE(p.requires_grad()) << name;
}

TEST(Consolidation, SeedingReducesJSDOnTeacherBatch) {
  // λ = 0, α = 1: pure off-policy distillation.
  auto m = make_model();
  Consolidator c(*m, ks_config(25));
  const NamedTensors old = c.snapshot_sender();
  perturb_sender(*m, 0, 3);
  const ConsolidationReport rep = c.consolidate(old, kPrompts);
  ASSERT_EQ(rep.steps.size(), 25u);
  EXPECT_GT(rep.jsd_before, 1e-3);
  EXPECT_LT(rep.jsd_after, 0.8 * rep.jsd_before) << "before " << rep.jsd_before << " after " << rep.jsd_after;
}

TEST(Consolidation, StudentIsCloserToTeacherOnFreshTeacherSamples) {
  auto teacher = make_model();
  auto with = make_model();
  auto without = make_model();
  ConsolidationConfig cfg = ks_config(30, 1.0, 0.5);  // GKD λ-mix with on-policy rows
  Consolidator cw(*with, cfg);
  cfg.seeding = false;
  Consolidator cn(*without, cfg);
  const NamedTensors old_w = cw.snapshot_sender(), old_n = cn.snapshot_sender();
  perturb_sender(*with, 0, 3);
  perturb_sender(*without, 0, 3);
  cw.consolidate(old_w, kPrompts);
  cn.consolidate(old_n, kPrompts);

  // Fresh samples of the teacher (another seed than consolidation's).
  nn::GenerateConfig g;
  g.max_new_tokens = 16;
  g.seed = 999;
  const auto res = nn::generate(*teacher, {{1}, {2}, {3}, {4}, {5}, {6}}, g);
  std::vector<double> ids, mask;
  const int64_t T = 17;
  for (size_t i = 0; i < res.sequences.size(); ++i) {
    ids.push_back(static_cast<double>(i + 1));
    mask.push_back(1.0);
    for (int64_t t = 0; t < T - 1; ++t) {
      const auto& s = res.sequences[i].tokens;
      ids.push_back(t < static_cast<int64_t>(s.size()) ? s[static_cast<size_t>(t)] : 0);
      mask.push_back(t + 1 < static_cast<int64_t>(s.size()) ? 1.0 : 0.0);
    }
  }
  const int64_t B = static_cast<int64_t>(res.sequences.size());
  const Tensor I = Tensor::from_vector(ids, {B, T}, DType::i64), M = Tensor::from_vector(mask, {B, T});
  const double d_with = jsd_between(*teacher, *with, I, M), d_without = jsd_between(*teacher, *without, I, M);
  EXPECT_LT(d_with, 0.8 * d_without) << "with " << d_with << " without " << d_without;
}

TEST(Consolidation, ImitationTermRunsAndLogs) {
  auto m = make_model();
  Consolidator c(*m, ks_config(2, /*alpha=*/0.5, /*lambda=*/0.5));
  const NamedTensors old = c.snapshot_sender();
  perturb_sender(*m, 0, 3);
  std::vector<SeedingStepLog> logs;
  const ConsolidationReport rep = c.consolidate(old, kPrompts, [&](const SeedingStepLog& s) { logs.push_back(s); });
  ASSERT_EQ(logs.size(), 2u);
  for (const auto& s : logs) {
    EXPECT_TRUE(std::isfinite(s.loss));
    EXPECT_GE(s.mean_reward, 0.0);
    EXPECT_LE(s.mean_reward, 1.0);
    EXPECT_GE(s.clip_fraction, 0.0);
    EXPECT_GT(s.tokens_per_s, 0.0);
    EXPECT_NEAR(s.loss, 0.5 * s.jsd + 0.5 * s.ppo_loss, 1e-9);
  }
  EXPECT_EQ(rep.to_json()["steps"].size(), 2u);
}

// r_sem follows the task's answer field (PARADIGM §2 [choice]), and a config that asks for the
// answer match on a task without one is refused before anything changes.
TEST(Consolidation, SemanticRewardIsTheAnswerMatchWhenTheTaskHasAnswers) {
  auto m = make_model();
  Consolidator cos(*m, ks_config(1, /*alpha=*/0.5));
  EXPECT_EQ(cos.consolidate(cos.snapshot_sender(), kPrompts).semantic_reward, "hidden_cosine");

  int64_t calls = 0;
  auto m2 = make_model();
  Consolidator ans(*m2, ks_config(1, /*alpha=*/0.5));
  ans.set_answer_extractor([&calls](const std::vector<TokenId>& ids) -> std::optional<std::string> {
    ++calls;
    return ids.empty() ? std::nullopt : std::optional<std::string>(std::to_string(ids.back() % 3));
  });
  const ConsolidationReport rep = ans.consolidate(ans.snapshot_sender(), kPrompts);
  EXPECT_EQ(rep.semantic_reward, "answer_match, else hidden_cosine");
  EXPECT_EQ(rep.to_json().at("semantic_reward"), "answer_match, else hidden_cosine");
  EXPECT_GT(calls, 0);  // the task's answers were read
  EXPECT_GT(rep.imitation_references, 0);
  EXPECT_EQ(rep.references_with_answer, rep.imitation_references);  // every sequence has an answer here

  Consolidator only_distill(*m2, ks_config(1, /*alpha=*/1.0));  // no imitation term: no r_sem
  EXPECT_EQ(only_distill.consolidate({}, kPrompts).semantic_reward, "");

  auto m3 = make_model();
  ConsolidationConfig forced = ks_config(1, /*alpha=*/0.5);
  forced.ks.imitation.semantic_reward = "answer_match";
  Consolidator refused(*m3, forced);
  expect_error([&] { refused.consolidate({}, kPrompts); }, {"defines no answer field"});
  EXPECT_TRUE(m3->level(0, 1).active_slots().empty());  // refused before any slot was taken
  expect_error([&] { refused.check_semantic_reward(); }, {"defines no answer field"});
  forced.expansion = false;  // the ablation runs no imitation: nothing to refuse
  Consolidator no_expansion(*m3, forced);
  EXPECT_NO_THROW(no_expansion.check_semantic_reward());
}

TEST(Consolidation, NoFreeSlotErrorsOrEvictsOldest) {
  auto m = make_model(7, /*slots=*/1);
  Consolidator c(*m, ks_config(0));
  c.consolidate({}, kPrompts);  // fills the only receiver slot
  const auto before = m->state_dict();
  somnus::testing::expect_error([&] { c.consolidate({}, kPrompts); }, {"no free slot"});
  EXPECT_EQ(m->level(0, 1).active_slots().size(), 1u);

  ConsolidationConfig evict = ks_config(0);
  evict.on_exhausted = SlotPolicy::evict_oldest;
  Consolidator ce(*m, evict);
  const ConsolidationReport rep = ce.consolidate({}, kPrompts);
  EXPECT_EQ(rep.evicted_slots[0], 0);
  EXPECT_EQ(m->level(0, 1).active_slots(), std::vector<int64_t>{0});
}

TEST(Consolidation, BadConfigsAreClearErrors) {
  auto m = make_model();
  ConsolidationConfig c = ks_config(1);
  c.ks.alpha = 1.5;
  expect_error([&] { Consolidator x(*m, c); }, {"'alpha' must be in [0, 1]"});
  c = ks_config(1);
  c.ks.lambda = -0.1;
  expect_error([&] { Consolidator x(*m, c); }, {"'lambda' must be in [0, 1]"});
  c = ks_config(1);
  c.sender = 1;
  expect_error([&] { Consolidator x(*m, c); }, {"needs a receiver level 2"});
  expect_error([&] { nlohmann::json j = {{"ks", {{"alpah", 0.5}}}}; (void)j.get<ConsolidationConfig>(); }, {"unknown key 'alpah'"});
  expect_error([&] { nlohmann::json j = {{"on_exhausted", "merge"}}; (void)j.get<ConsolidationConfig>(); }, {"'on_exhausted'"});
  nn::TransformerConfig bad = tiny_config();
  bad.levels[1].period = 3;
  bad.levels[0].period = 2;
  expect_error([&] { bad.validate(); }, {"period"});
  Consolidator ok(*m, ks_config(1));
  expect_error([&] { ok.consolidate({}, {}); }, {"no prompts"});
  // JSON round trip keeps every field.
  ConsolidationConfig rt = ks_config(3, 0.25, 0.75);
  const nlohmann::json j = rt;
  EXPECT_EQ(nlohmann::json(j.get<ConsolidationConfig>()), j);
}

// ---------------------------------------------------------------- wake

nn::Batch repeat_batch(int64_t B, int64_t T, int64_t offset) {
  std::vector<double> in, tg, mk;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      in.push_back(static_cast<double>((offset + b + t) % 8 + 1));
      tg.push_back(static_cast<double>((offset + b + t + 1) % 8 + 1));
      mk.push_back(1.0);
    }
  }
  return {Tensor::from_vector(in, {B, T}, DType::i64), Tensor::from_vector(tg, {B, T}, DType::i64),
          Tensor::from_vector(mk, {B, T})};
}

TEST(Wake, MultiFrequencyScheduleAndScheduledConsolidation) {
  auto m = make_model();
  WakeConfig w;
  w.consolidate_every = 2;  // every 2nd application of the sender (period 1): steps 2 and 4
  ConsolidationConfig c = ks_config(1);
  WakeLearner learner(*m, w, c);
  std::vector<int64_t> consolidated_at;
  double first = 0, last = 0;
  for (int64_t k = 1; k <= 4; ++k) {
    const WakeStepLog log = learner.train_step(repeat_batch(4, 16, k));
    if (k == 1) first = log.loss;
    last = log.loss;
    EXPECT_EQ(log.periods_applied, (k % 2 == 0 ? std::vector<int64_t>{1, 2} : std::vector<int64_t>{1})) << k;
    if (log.consolidation) consolidated_at.push_back(k);
  }
  EXPECT_EQ(consolidated_at, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(m->level(0, 1).active_slots().size(), 2u);
  EXPECT_LT(last, first);
}

TEST(Wake, ExplicitSleepAppliesPendingSenderUpdate) {
  nn::TransformerConfig cfg = tiny_config();
  cfg.levels[0].period = 2;  // the sender accumulates over 2 steps
  cfg.levels[1].period = 4;
  Generator gen(7);
  nn::Transformer m(cfg, gen);
  WakeConfig w;
  w.sleep_teacher = "pending";
  WakeLearner learner(m, w, ks_config(1));
  learner.train_step(repeat_batch(4, 16, 0));  // step 1: the sender only accumulates
  const Tensor w_before = m.level(0, 0).mlp->fc->weight.clone();
  const ConsolidationReport rep = learner.sleep();
  EXPECT_FALSE(nn::testing::bitwise_equal(w_before, m.level(0, 0).mlp->fc->weight)) << "θ_new applied";
  EXPECT_FALSE(m.level(0, 0).mlp->fc->weight.grad().defined()) << "the accumulator is cleared";
  EXPECT_EQ(rep.new_slots.size(), 2u);
}

TEST(Wake, ReadStreamLearnsTheStreamInTheFastLevels) {
  auto m = make_model();
  WakeConfig w;
  w.ttt_chunk = 16;
  w.ttt_lr = 1e-2;
  // A frozen tied embedding of std 0.02 bounds the logits to about ±0.1 (an untrained model);
  // give it the scale of a trained one so that the fast level alone can fit the stream.
  nn::testing::randomize(m->wte->weight, 4, 1.0);
  WakeLearner learner(*m, w, ks_config(1));
  std::vector<TokenId> stream;
  for (int i = 0; i < 16 * 20 + 1; ++i) stream.push_back(static_cast<TokenId>((i * 5) % 11 + 1));  // longer than the window
  const Tensor attn_before = m->blocks->operator[](0).attn->wqkv->weight.clone();
  const Tensor slow_before = m->level(0, 1).mlp->fc->weight.clone();
  const Tensor fast_before = m->level(0, 0).mlp->fc->weight.clone();
  const StreamLog log = learner.read_stream(stream);
  ASSERT_EQ(log.chunk_loss.size(), 20u);

  EXPECT_LT(log.chunk_loss.back(), 0.6 * log.chunk_loss.front());
  EXPECT_GT(somnus::testing::rel_error(fast_before, m->level(0, 0).mlp->fc->weight), 1e-3);
  EXPECT_TRUE(nn::testing::bitwise_equal(attn_before, m->blocks->operator[](0).attn->wqkv->weight));
  EXPECT_TRUE(nn::testing::bitwise_equal(slow_before, m->level(0, 1).mlp->fc->weight));
  for (const auto& [name, p] : m->named_parameters()) EXPECT_TRUE(p.requires_grad()) << name;
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

TEST(Wake, SleepTeacherSinceLastSleepVersusPending) {
  // Period 1: nothing is pending at a task boundary. "pending" sees teacher == student (JSD 0);
  // "since_last_sleep" teaches the new slot what the fast level overwrote while awake.
  for (const char* mode : {"pending", "since_last_sleep"}) {
    auto m = make_model();
    WakeConfig w;
    w.lr = 1e-2;
    w.sleep_teacher = mode;
    WakeLearner learner(*m, w, ks_config(3));
    if (std::string(mode) == "since_last_sleep") {
      const ConsolidationReport first = learner.sleep();  // records the anchor only
      EXPECT_TRUE(first.skipped);
      EXPECT_TRUE(m->level(0, 1).active_slots().empty());
    }
    for (int64_t k = 1; k <= 6; ++k) learner.train_step(repeat_batch(4, 16, k));
    const ConsolidationReport rep = learner.sleep();
    EXPECT_FALSE(rep.skipped);
    if (std::string(mode) == "pending") {
      EXPECT_LT(rep.jsd_before, 1e-6) << mode;  // identical models: f32 rounding only
    } else {
      EXPECT_GT(rep.jsd_before, 1e-4) << mode;
      EXPECT_LT(rep.jsd_after, rep.jsd_before) << mode;
    }
  }
  WakeConfig bad;
  bad.sleep_teacher = "yesterday";
  auto m = make_model();
  somnus::testing::expect_error([&] { WakeLearner x(*m, bad, ks_config(1)); }, {"'sleep_teacher'"});
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

TEST(Consolidation, MoEReceiverTrainsTheSlotAndItsRouterRowOnly) {
  nn::TransformerConfig cfg = tiny_config();
  cfg.levels[1].kind = nn::LevelKind::moe;
  cfg.levels[1].n_experts = 3;
  cfg.levels[1].top_k = 1;
  Generator gen(7);
  nn::Transformer m(cfg, gen);
  Generator gen2(7);
  nn::Transformer ref(cfg, gen2);
  Consolidator c(m, ks_config(6));
  const NamedTensors old = c.snapshot_sender();
  perturb_sender(m, 0, 3);
  perturb_sender(ref, 0, 3);
  const ConsolidationReport rep = c.consolidate(old, kPrompts);
  EXPECT_LT(rep.jsd_after, rep.jsd_before);
  for (int64_t l = 0; l < 2; ++l) {
    const auto& slot = m.level(l, 1).slot(rep.new_slots[static_cast<size_t>(l)]);
    ASSERT_TRUE(slot.router.defined());
    double r2 = 0;
    for (double v : slot.router.to_vector()) r2 += v * v;
    EXPECT_GT(r2, 0.0) << "the slot's router row is trained on an MoE level";
  }
  for (const auto& [name, p] : ref.named_parameters()) {
    if (name.find(".cms.1.slots.") != std::string::npos) continue;
    EXPECT_TRUE(nn::testing::bitwise_equal(p, m.parameter(name))) << name << " must stay frozen";
  }
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

TEST(Consolidation, SlotInitStdIsAConfigOption) {
  for (double std : {0.0, 0.5}) {
    auto m = make_model();
    ConsolidationConfig cfg = ks_config(0);
    cfg.slot_init_std = std;
    Consolidator c(*m, cfg);
    const ConsolidationReport rep = c.consolidate({}, kPrompts);
    const std::vector<double> a = m->level(0, 1).slot(rep.new_slots[0]).A.to_vector();  // (16, 4)
    double ss = 0;
    for (double v : a) ss += v * v;
    const double measured = std::sqrt(ss / static_cast<double>(a.size()));
    const double expected = std > 0 ? std : 1.0 / std::sqrt(16.0);
    EXPECT_NEAR(measured, expected, 0.35 * expected) << std;
    for (double v : m->level(0, 1).slot(rep.new_slots[0]).B.to_vector()) EXPECT_EQ(v, 0.0);
  }
  ConsolidationConfig bad = ks_config(0);
  bad.slot_init_std = -1;
  auto m = make_model();
  expect_error([&] { Consolidator x(*m, bad); }, {"'slot_init_std' must be >= 0"});
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

// LearnerState + the optimiser's and the model's state are everything a learner needs: a
// learner rebuilt from them mid-window (the slow level's accumulator pending) continues
// bit-identically through more steps and a sleep (what `somnus sleep --resume` relies on).
TEST(Wake, LearnerStateRoundTripContinuesBitExactly) {
  WakeConfig w;
  w.lr = 1e-2;
  auto run_rest = [](WakeLearner& l) {
    for (int64_t k = 4; k <= 6; ++k) l.train_step(repeat_batch(4, 16, k));
    const ConsolidationReport rep = l.sleep();
    l.train_step(repeat_batch(4, 16, 7));
    return rep;
  };
  auto a = make_model();
  WakeLearner la(*a, w, ks_config(2));
  la.set_sleep_prompts(kPrompts);
  la.sleep();  // the anchor
  for (int64_t k = 1; k <= 3; ++k) la.train_step(repeat_batch(4, 16, k));  // step 3: level 1 mid-window
  NamedTensors weights;
  for (const auto& [name, t] : a->state_dict()) weights.emplace_back(name, t.clone());
  const OptimizerState opt = la.optimizer().state_dict();
  const LearnerState st = la.state();
  EXPECT_FALSE(st.anchor.empty());
  const ConsolidationReport ra = run_rest(la);

  auto b = make_model(/*seed=*/99);
  b->load_state_dict(weights, /*strict=*/true);
  WakeLearner lb(*b, w, ks_config(2));
  lb.optimizer().load_state_dict(opt);
  lb.load_state(st);
  const ConsolidationReport rb = run_rest(lb);
  EXPECT_EQ(ra.jsd_before, rb.jsd_before);
  EXPECT_EQ(ra.jsd_after, rb.jsd_after);
  EXPECT_EQ(ra.new_slots, rb.new_slots);
  const NamedTensors sa = a->state_dict(), sb = b->state_dict();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_TRUE(nn::testing::bitwise_equal(sa[i].second, sb[i].second)) << sa[i].first;

  // A state that does not fit is refused before anything changes.
  LearnerState bad = st;
  bad.anchor[0].second = Tensor::zeros({3});
  const LearnerState before = lb.state();
  expect_error([&] { lb.load_state(bad); }, {"anchor", "is (3,) f32"});
  bad = st;
  bad.scalars["consolidator"]["activation"] = nlohmann::json::array();
  expect_error([&] { lb.load_state(bad); }, {"Consolidator::load_state"});
  EXPECT_EQ(lb.state().scalars, before.scalars);
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

// Teacher samples stop at a stop token: with every token a stop token each sample is one
// token long (without stop tokens it is sample_tokens long). Round-trips through JSON.
TEST(Consolidation, TeacherSamplingStopsAtStopTokens) {
  for (const bool stop : {false, true}) {
    auto m = make_model();
    ConsolidationConfig c = ks_config(1, /*alpha=*/0.5);
    if (stop)
      for (TokenId t = 0; t < m->config().vocab_size; ++t) c.ks.stop_tokens.push_back(t);
    Consolidator con(*m, c);
    const NamedTensors old = con.snapshot_sender();
    perturb_sender(*m, 0, 3);
    const ConsolidationReport rep = con.consolidate(old, kPrompts);
    EXPECT_EQ(rep.teacher_tokens, stop ? c.ks.n_samples : c.ks.n_samples * c.ks.sample_tokens) << stop;
  }
  SeedingConfig s;
  s.stop_tokens = {5, 7};
  EXPECT_EQ(nlohmann::json(s).get<SeedingConfig>().stop_tokens, (std::vector<TokenId>{5, 7}));
  expect_error([] { (void)nlohmann::json{{"stop_tokens", {1, "eos"}}}.get<SeedingConfig>(); }, {"'stop_tokens'"});
  auto m = make_model();
  ConsolidationConfig c = ks_config(1);
  c.ks.stop_tokens = {static_cast<TokenId>(m->config().vocab_size)};
  expect_error([&] { Consolidator x(*m, c); }, {"stop token 24 is outside the vocabulary"});
}

// train = "sender": after train_all_steps warm-up steps only the sender level moves while awake.
TEST(Wake, TrainSenderOnlyAfterTheWarmUp) {
  auto m = make_model();
  WakeConfig w;
  w.train = "sender";
  w.train_all_steps = 2;
  WakeLearner learner(*m, w, ks_config(1));
  auto snapshot = [&] {
    NamedTensors out;
    for (const auto& [name, t] : m->state_dict()) out.emplace_back(name, t.clone());
    return out;
  };
  const NamedTensors start = snapshot();
  for (int64_t k = 1; k <= 2; ++k) learner.train_step(repeat_batch(4, 16, k));
  const NamedTensors warm = snapshot();
  EXPECT_FALSE(nn::testing::bitwise_equal(start[0].second, warm[0].second)) << "the warm-up trains " << start[0].first;
  for (int64_t k = 3; k <= 6; ++k) learner.train_step(repeat_batch(4, 16, k));  // period-2 level due at 4 and 6
  int moved = 0;
  for (size_t i = 0; i < warm.size(); ++i) {
    const bool same = nn::testing::bitwise_equal(warm[i].second, m->state_dict()[i].second);
    if (warm[i].first.find(".cms.0.") != std::string::npos) {
      moved += same ? 0 : 1;
    } else {
      EXPECT_TRUE(same) << warm[i].first << " moved while only the sender trains";
    }
  }
  EXPECT_GT(moved, 0) << "the sender level trains";
  WakeConfig bad;
  bad.train = "attention";
  somnus::testing::expect_error([&] { WakeLearner x(*m, bad, ks_config(1)); }, {"'train'"});
  WakeConfig odd;  // the switch would drop half a window of the period-2 level
  odd.train = "sender";
  odd.train_all_steps = 3;
  somnus::testing::expect_error([&] { WakeLearner x(*m, odd, ks_config(1)); }, {"'train_all_steps' (3)", "(2 is not)"});
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

// read_stream with two levels: level 1 (period 2) applies every 2nd chunk with the mean of its
// accumulated gradient, and a partial window is applied at the end of the stream.
TEST(Wake, ReadStreamAppliesEachLevelAtItsPeriod) {
  auto m = make_model();  // levels: period 1 and period 2
  WakeConfig w;
  w.ttt_chunk = 8;
  w.ttt_levels = {0, 1};
  WakeLearner learner(*m, w, ks_config(1));
  std::vector<TokenId> stream;
  for (int i = 0; i < 8 * 3 + 1; ++i) stream.push_back(static_cast<TokenId>((i * 7) % 13 + 1));  // 3 chunks
  const Tensor slow_before = m->level(0, 1).mlp->fc->weight.clone();
  const StreamLog log = learner.read_stream(stream);
  ASSERT_EQ(log.chunk_loss.size(), 3u);
  EXPECT_FALSE(nn::testing::bitwise_equal(slow_before, m->level(0, 1).mlp->fc->weight));
  // Two reads of one chunk each: the slow level (period 2) applies only at the end of each
  // stream (a partial window), the fast level after each chunk; both move.
  std::vector<TokenId> one(stream.begin(), stream.begin() + 9);
  const Tensor fast_before = m->level(0, 0).mlp->fc->weight.clone();
  const Tensor slow_mid = m->level(0, 1).mlp->fc->weight.clone();
  learner.read_stream(one);
  EXPECT_FALSE(nn::testing::bitwise_equal(fast_before, m->level(0, 0).mlp->fc->weight));
  EXPECT_FALSE(nn::testing::bitwise_equal(slow_mid, m->level(0, 1).mlp->fc->weight)) << "the partial window is applied";
  for (const auto& [name, p] : m->named_parameters()) EXPECT_FALSE(p.grad().defined()) << name << " keeps a gradient";
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

// A NaN/Inf loss or gradient norm while awake is skipped: the weights are left as they were
// and never become NaN (an exploding learning rate makes the loss non-finite after a step).
TEST(Wake, NonFiniteStepsAreSkipped) {
  auto m = make_model();
  WakeConfig w;
  w.lr = 1e30;
  w.grad_clip = 0.0;
  WakeLearner learner(*m, w, ks_config(1));
  int skipped = 0;
  for (int64_t k = 1; k <= 4; ++k) {
    NamedTensors before;
    for (const auto& [name, t] : m->state_dict()) before.emplace_back(name, t.clone());
    const WakeStepLog log = learner.train_step(repeat_batch(4, 16, k));
    if (!log.skipped_non_finite) continue;
    ++skipped;
    EXPECT_FALSE(std::isfinite(log.loss) && std::isfinite(log.grad_norm));
    const NamedTensors after = m->state_dict();
    for (size_t i = 0; i < after.size(); ++i)
      EXPECT_TRUE(nn::testing::bitwise_equal(before[i].second, after[i].second)) << after[i].first;
  }
  EXPECT_GT(skipped, 0) << "lr = 1e30 must blow the loss up";
  for (const auto& [name, t] : m->state_dict())
    for (double v : t.to(DType::f64).to_vector()) ASSERT_FALSE(std::isnan(v)) << name;
}

// With spike_zscore set, a step whose loss jumps far above the recent window is skipped like a
// non-finite one (weights untouched), and the guard's window is part of the learner's state.
TEST(Wake, LossSpikesAreSkipped) {
  auto m = make_model();
  WakeConfig w;
  w.lr = 3e-2;
  w.spike_zscore = 3.0;
  w.spike_window = 4;
  WakeLearner learner(*m, w, ks_config(1));
  // 24 steps of the +1 rule: the loss falls smoothly from 3.2 to 0.12, never a spike.
  for (int64_t k = 1; k <= 24; ++k) EXPECT_FALSE(learner.train_step(repeat_batch(4, 16, k)).skipped_spike) << k;
  // The same inputs with the opposite rule (next = previous − 1): the loss jumps.
  nn::Batch spike = repeat_batch(4, 16, 1);
  std::vector<double> in = spike.input.to_vector(), tg(in.size());
  for (size_t i = 0; i < in.size(); ++i) tg[i] = static_cast<double>((static_cast<int64_t>(in[i]) + 6) % 8 + 1);
  spike.target = Tensor::from_vector(tg, spike.target.shape(), DType::i64);
  NamedTensors before;
  for (const auto& [name, t] : m->state_dict()) before.emplace_back(name, t.clone());
  const WakeStepLog log = learner.train_step(spike);
  EXPECT_TRUE(log.skipped_spike) << "loss " << log.loss;
  EXPECT_FALSE(log.skipped_non_finite);
  const NamedTensors after = m->state_dict();
  for (size_t i = 0; i < after.size(); ++i)
    EXPECT_TRUE(nn::testing::bitwise_equal(before[i].second, after[i].second)) << after[i].first;
  const LearnerState st = learner.state();
  ASSERT_TRUE(st.scalars.contains("guard"));
  EXPECT_EQ(st.scalars.at("guard").at("skipped").get<int64_t>(), 1);
  auto m2 = make_model();
  WakeLearner other(*m2, w, ks_config(1));
  other.load_state(st);
  EXPECT_EQ(other.state().scalars.at("guard"), st.scalars.at("guard"));
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

// A sleep() refused for want of a free slot used to have already moved the "since_last_sleep"
// anchor out, applied the sender's pending update and counted a consolidation: the next
// sleep() (after freeing a slot) was then taken for a first sleep and silently skipped.
TEST(Wake, RefusedSleepChangesNothing) {
  nn::TransformerConfig cfg = tiny_config(1);
  cfg.levels[0].period = 2;  // the sender has a pending half window at the sleep below
  cfg.levels[1].period = 2;
  Generator gen(7);
  nn::Transformer m(cfg, gen);
  WakeConfig w;
  w.lr = 1e-2;
  WakeLearner learner(m, w, ks_config(1));
  learner.sleep();  // the anchor
  for (int64_t k = 1; k <= 2; ++k) learner.train_step(repeat_batch(4, 16, k));
  ASSERT_FALSE(learner.sleep().skipped);  // takes the receiver's only slot
  for (int64_t k = 3; k <= 5; ++k) learner.train_step(repeat_batch(4, 16, k));  // step 5: pending

  const LearnerState before = learner.state();
  ASSERT_FALSE(before.anchor.empty());
  std::map<std::string, std::vector<double>> weights;
  for (const auto& [name, p] : m.named_parameters()) weights[name] = p.to_vector();
  expect_error([&] { learner.sleep(); }, {"no free slot", "receiver level 1"});
  const LearnerState after = learner.state();
  EXPECT_EQ(after.scalars.dump(), before.scalars.dump()) << "the consolidation count must not move";
  ASSERT_EQ(after.anchor.size(), before.anchor.size()) << "the anchor must be kept";
  for (size_t i = 0; i < before.anchor.size(); ++i)
    EXPECT_TRUE(nn::testing::bitwise_equal(after.anchor[i].second, before.anchor[i].second)) << before.anchor[i].first;
  for (const auto& [name, p] : m.named_parameters())
    EXPECT_EQ(p.to_vector(), weights[name]) << name << ": the pending update must stay pending";

  // Freeing the slot makes the next sleep a real consolidation, not a "first sleep".
  for (int64_t l = 0; l < 2; ++l) m.level(l, 1).reset_slot(0);
  const ConsolidationReport rep = learner.sleep();
  EXPECT_FALSE(rep.skipped);
  EXPECT_GT(rep.jsd_before, 0.0);
}

TEST(Wake, RefusedScheduledConsolidationComesBeforeTheStep) {
  auto m = make_model(7, 1);
  WakeConfig w;
  w.consolidate_every = 1;
  WakeLearner learner(*m, w, ks_config(0));
  learner.train_step(repeat_batch(4, 16, 1));  // consolidates into the only slot
  std::map<std::string, std::vector<double>> weights;
  for (const auto& [name, p] : m->named_parameters()) weights[name] = p.to_vector();
  const int64_t applications = learner.sender_applications();
  expect_error([&] { learner.train_step(repeat_batch(4, 16, 2)); }, {"no free slot"});
  EXPECT_EQ(learner.sender_applications(), applications);
  for (const auto& [name, p] : m->named_parameters()) EXPECT_EQ(p.to_vector(), weights[name]) << name;
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

// A TeacherView whose spec named a slot that does not exist was accepted; entering it then
// threw half-way, after θ_old had been swapped in, and the failed Scope never swapped it
// back: the model silently computed the teacher from then on (its logits equal to the
// unperturbed model's, rel. error 0 vs 0.17 to the student's).
TEST(TeacherView, BadSlotSpecsAreRefusedAndNothingStaysSwapped) {
  auto m = make_model();
  Consolidator c(*m, ks_config(0));
  const NamedTensors old = c.snapshot_sender();
  perturb_sender(*m, 0, 3);
  const Tensor ids = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {1, 6}, DType::i64);
  NoGradGuard no_grad;
  const Tensor student = m->forward(ids);

  TeacherViewSpec bad_index;
  bad_index.sender = 0;
  bad_index.sender_old = old;
  bad_index.sender_slots.resize(2);
  bad_index.sender_slots[1].emplace_back(7, Tensor::zeros({4, 16}));
  expect_error([&] { TeacherView v(*m, bad_index); }, {"sender slot 7 of layer 1 out of range"});
  TeacherViewSpec bad_shape = bad_index;
  bad_shape.sender_slots[1] = {{0, Tensor::zeros({3, 3})}};
  expect_error([&] { TeacherView v(*m, bad_shape); }, {"old B of sender slot 0 of layer 1 is (3, 3)"});
  TeacherViewSpec bad_receiver;
  bad_receiver.sender = 0;
  bad_receiver.sender_old = old;
  bad_receiver.receiver_new_slot = {0, 5};
  expect_error([&] { TeacherView v(*m, bad_receiver); }, {"receiver_new_slot of layer 1 is 5"});
  EXPECT_TRUE(nn::testing::bitwise_equal(m->forward(ids), student));

  // Should entering fail anyway (a parameter replaced behind the view's back), nothing stays
  // swapped and the masks are as they were.
  Generator gen(1);
  m->level(0, 1).activate_slot(gen);
  TeacherViewSpec spec;
  spec.sender = 0;
  spec.sender_old = old;
  spec.receiver_new_slot = {0, -1};
  spec.sender_slots.resize(2);
  spec.sender_slots[1] = {{0, Tensor::zeros({4, 16})}};
  TeacherView view(*m, spec);
  const Tensor with_slot = m->forward(ids);
  m->level(1, 0).slot(0).B = Tensor::zeros({4, 16}, DType::f64);  // makes set_parameter refuse the f32 old B
  expect_error([&] { TeacherView::Scope s(view); }, {"set_parameter"});
  EXPECT_FALSE(view.entered());
  EXPECT_TRUE(m->level(0, 1).slot_active(0));
  EXPECT_FALSE(m->level(1, 0).slot_active(0));
  EXPECT_TRUE(nn::testing::bitwise_equal(m->forward(ids), with_slot));
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

// Once a Dreamer had enabled LoRA on the model (its "mlp" target covers the sender level),
// snapshot_sender() also copied the layers' lora_A / lora_B handles: the anchor of a
// learner saved before the model first dreamed (6 tensors here) no longer matched the
// sender's layout (10), and WakeLearner::load_state refused it.
TEST(Wake, SenderSnapshotIgnoresLoraHandles) {
  auto m = make_model();
  WakeConfig w;
  w.lr = 1e-2;
  WakeLearner learner(*m, w, ks_config(1));
  learner.sleep();  // records the anchor
  const LearnerState saved = learner.state();
  const size_t n = learner.consolidator().snapshot_sender().size();
  ASSERT_EQ(saved.anchor.size(), n);
  {
    DreamConfig dc;
    dc.lora.targets = {"attn", "mlp"};
    Dreamer dreamer(*m, dc);  // enables LoRA on the sender's MLP too
  }
  bool has_lora = false;
  for (const auto& [name, p] : m->named_parameters())
    has_lora = has_lora || (name.find(".cms.0.") != std::string::npos && name.find(".lora_") != std::string::npos);
  ASSERT_TRUE(has_lora);
  for (const auto& [name, t] : learner.consolidator().snapshot_sender())
    EXPECT_EQ(name.find(".lora_"), std::string::npos) << name;
  EXPECT_EQ(learner.consolidator().snapshot_sender().size(), n);
  learner.load_state(saved);  // the pre-dream state still fits
  for (int64_t k = 1; k <= 2; ++k) learner.train_step(repeat_batch(4, 16, k));
  EXPECT_FALSE(learner.sleep().skipped);
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

// A scheduled consolidation (consolidate_every) distils the sender's change into a receiver
// slot and resets the sender's slots, but used to leave the "since_last_sleep" anchor where
// it was: the next sleep()'s teacher was the pre-consolidation sender, so what the scheduled
// consolidation had already put into a slot was distilled a second time; and with no explicit
// sleep before it, the first sleep() was skipped as a "first" one, losing what the sender had
// learned since the scheduled consolidation. Now the anchor moves to the sender as the
// consolidation left it.
TEST(Wake, ScheduledConsolidationMovesTheSleepAnchor) {
  WakeConfig w;
  w.lr = 1e-2;
  w.consolidate_every = 2;  // sender period 1: consolidates at steps 2, 4, ...

  // No explicit sleep before: the scheduled consolidation sets the anchor, and the next sleep()
  // consolidates what the sender learned at step 3 (it is not a skipped "first" sleep).
  {
    auto m = make_model();
    WakeLearner learner(*m, w, ks_config(2));
    learner.train_step(repeat_batch(4, 16, 1));
    EXPECT_TRUE(learner.state().anchor.empty());
    ASSERT_TRUE(learner.train_step(repeat_batch(4, 16, 2)).consolidation.has_value());
    const LearnerState st = learner.state();
    const NamedTensors now = learner.consolidator().snapshot_sender();
    EXPECT_EQ(st.anchor.size(), now.size()) << "the anchor is the sender as the consolidation left it";
    for (size_t i = 0; i < std::min(now.size(), st.anchor.size()); ++i) {
      EXPECT_EQ(st.anchor[i].first, now[i].first);
      EXPECT_TRUE(nn::testing::bitwise_equal(st.anchor[i].second, now[i].second)) << now[i].first;
    }
    // The moved anchor round-trips through LearnerState.
    auto m2 = make_model();
    WakeLearner other(*m2, w, ks_config(2));
    other.load_state(st);
    const LearnerState back = other.state();
    EXPECT_EQ(back.anchor.size(), st.anchor.size());
    for (size_t i = 0; i < std::min(back.anchor.size(), st.anchor.size()); ++i)
      EXPECT_TRUE(nn::testing::bitwise_equal(back.anchor[i].second, st.anchor[i].second)) << st.anchor[i].first;

    learner.train_step(repeat_batch(4, 16, 3));  // the sender moves; no consolidation at step 3
    const ConsolidationReport rep = learner.sleep();
    EXPECT_FALSE(rep.skipped) << "a sleep after a scheduled consolidation is not a first sleep";
    EXPECT_GT(rep.jsd_before, 1e-5) << "step 3's change of the sender is what this sleep distils";
    EXPECT_EQ(m->level(0, 1).active_slots().size(), 2u);
  }

  // With an anchor from an explicit sleep: a sleep() right after a scheduled consolidation has
  // nothing left to distil (the teacher's sender is the post-consolidation one, the student's
  // too), rather than the steps before the scheduled consolidation a second time.
  {
    auto m = make_model();
    WakeLearner learner(*m, w, ks_config(2));
    ASSERT_TRUE(learner.sleep().skipped);  // the anchor: the model as it was
    for (int64_t k = 1; k <= 2; ++k) learner.train_step(repeat_batch(4, 16, k));  // consolidates at step 2
    const ConsolidationReport rep = learner.sleep();
    EXPECT_FALSE(rep.skipped);
    EXPECT_LT(rep.jsd_before, 1e-6) << "teacher and student coincide: f32 rounding only";
  }
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

// sleep() applies the sender's pending accumulation now (θ_new), and picked the optimiser
// groups to apply by period: a receiver level or attention with the sender's period had its
// pending half window applied early too, outside its schedule. Now the sender level has
// groups of its own, and only they are applied.
TEST(Wake, SleepAppliesOnlyTheSenderLevelsPendingUpdate) {
  nn::TransformerConfig cfg = tiny_config();
  cfg.levels[0].period = 2;  // the sender
  cfg.levels[1].period = 2;  // the receiver shares its period
  cfg.attention_period = 2;  // and so does attention
  for (const char* teacher : {"pending", "since_last_sleep"}) {
    Generator gen(7);
    nn::Transformer m(cfg, gen);
    WakeConfig w;
    w.lr = 1e-2;
    w.sleep_teacher = teacher;  // "since_last_sleep": the first sleep, which only applies and anchors
    WakeLearner learner(m, w, ks_config(1));
    learner.train_step(repeat_batch(4, 16, 1));  // step 1: every period-2 group only accumulates
    std::map<std::string, Tensor> before;
    for (const auto& [name, p] : m.named_parameters()) before[name] = p.clone();
    learner.sleep();
    int sender_moved = 0, pending_kept = 0;
    for (const auto& [name, p] : m.named_parameters()) {
      if (name.find(".slots.") != std::string::npos) continue;  // the new receiver slot, the sender's reset ones
      if (name.find(".cms.0.") != std::string::npos) {
        sender_moved += nn::testing::bitwise_equal(before[name], p) ? 0 : 1;
        EXPECT_FALSE(p.grad().defined()) << teacher << ": " << name << ": the sender's accumulator is applied";
        continue;
      }
      EXPECT_TRUE(nn::testing::bitwise_equal(before[name], p)) << teacher << ": " << name << " moved at sleep()";
      if (name.find(".cms.1.") != std::string::npos || name.find(".attn") != std::string::npos) {
        EXPECT_TRUE(p.grad().defined()) << teacher << ": " << name << ": its pending half window must stay pending";
        pending_kept += p.grad().defined() ? 1 : 0;
      }
    }
    EXPECT_GT(sender_moved, 0) << teacher;
    EXPECT_GT(pending_kept, 0) << teacher;
    // At its own due step the receiver level applies its whole window.
    const Tensor slow = m.level(0, 1).mlp->fc->weight.clone(), attn = m.blocks->operator[](0).attn->wqkv->weight.clone();
    const WakeStepLog log = learner.train_step(repeat_batch(4, 16, 2));
    EXPECT_EQ(log.periods_applied, (std::vector<int64_t>{1, 2})) << teacher;
    EXPECT_FALSE(nn::testing::bitwise_equal(slow, m.level(0, 1).mlp->fc->weight)) << teacher;
    EXPECT_FALSE(nn::testing::bitwise_equal(attn, m.blocks->operator[](0).attn->wqkv->weight)) << teacher;
  }

  // Splitting the sender off changes nothing while awake: the learner's steps are bitwise those
  // of a plain AdamW over transformer_param_groups (clipping off: it sums the norm in group order).
  Generator ga(7), gb(7);
  nn::Transformer a(cfg, ga), b(cfg, gb);
  WakeConfig w;
  w.lr = 1e-2;
  w.grad_clip = 0.0;
  WakeLearner learner(a, w, ks_config(1));
  EXPECT_GT(learner.optimizer().groups().size(), nn::transformer_param_groups(b, w.lr, 0.0).size()) << "split";
  AdamWOptions o;
  o.beta1 = w.beta1;
  o.beta2 = w.beta2;
  AdamW plain(nn::transformer_param_groups(b, w.lr, w.weight_decay), o);
  for (int64_t k = 1; k <= 4; ++k) {
    learner.train_step(repeat_batch(4, 16, k));
    plain.zero_grad();
    const nn::Batch batch = repeat_batch(4, 16, k);
    backward(b.loss(batch.input, batch.target, batch.mask).total(w.aux_loss_weight));
    plain.step();
  }
  for (const auto& [name, p] : b.named_parameters())
    EXPECT_TRUE(nn::testing::bitwise_equal(p, a.parameter(name))) << name;
}

}  // namespace
}  // namespace somnus::sleep

namespace somnus::sleep {
namespace {

// merge_oldest's teacher (TeacherViewSpec::receiver_evicted): the student has evicted its only
// receiver slot and re-initialised it as the new slot; the view shows the old occupant there
// (A, B and, on an MoE level, the router row) by handle, so the teacher computes what the
// model computed before the eviction, and the student's handles and masks come back after.
TEST(TeacherView, ShowsAnEvictedReceiverSlotsOldOccupant) {
  for (const bool moe : {false, true}) {
    nn::TransformerConfig cfg = tiny_config(/*slots=*/1);
    if (moe) {
      cfg.levels[1].kind = nn::LevelKind::moe;
      cfg.levels[1].n_experts = 3;
      cfg.levels[1].top_k = 1;
    }
    Generator g1(7), g2(7), gen(5);
    nn::Transformer m(cfg, g1), filled(cfg, g2);
    for (int64_t l = 0; l < 2; ++l) {
      const int64_t s = m.level(l, 1).activate_slot(gen);
      nn::testing::randomize(m.level(l, 1).slot(s).B, 21 + static_cast<uint64_t>(l), 0.3);
      if (moe) nn::testing::randomize(m.level(l, 1).slot(s).router, 31 + static_cast<uint64_t>(l), 0.3);
    }
    filled.load_state_dict(m.state_dict());  // the model before the eviction
    TeacherViewSpec spec;
    spec.sender = 0;
    spec.receiver_new_slot.assign(2, -1);
    spec.receiver_evicted.resize(2);
    {
      NoGradGuard no_grad;
      for (int64_t l = 0; l < 2; ++l) {
        nn::CmsLevel& recv = m.level(l, 1);
        const nn::LowRankSlot& old = recv.slot(0);
        spec.receiver_evicted[static_cast<size_t>(l)] =
            EvictedSlot{0, old.A.clone(), old.B.clone(), moe ? old.router.clone() : Tensor()};
        recv.reset_slot(0);
        spec.receiver_new_slot[static_cast<size_t>(l)] = recv.activate_slot(gen);  // slot 0 again, B = 0
      }
    }
    ASSERT_EQ(spec.receiver_new_slot, (std::vector<int64_t>{0, 0}));
    std::map<std::string, const void*> student_ptr;
    for (const auto& [name, p] : m.named_parameters()) student_ptr[name] = p.storage().get();

    const Tensor ids = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {1, 6}, DType::i64);
    NoGradGuard no_grad;
    const Tensor before = filled.hidden_states(ids), student = m.hidden_states(ids);
    EXPECT_GT(somnus::testing::rel_error(student, before), 1e-2) << moe << ": the evicted slot mattered";
    TeacherView merged(m, spec);
    EXPECT_LT(somnus::testing::rel_error(merged.hidden_states(ids), before), 1e-6) << moe;
    // evict_oldest's teacher (no receiver_evicted) is the model without the old occupant.
    TeacherViewSpec dropped = spec;
    dropped.receiver_evicted.clear();
    TeacherView evicted(m, dropped);
    EXPECT_TRUE(nn::testing::bitwise_equal(evicted.hidden_states(ids), student)) << moe;
    for (const auto& [name, p] : m.named_parameters())
      EXPECT_EQ(p.storage().get(), student_ptr[name]) << moe << ": " << name << " is the student's again";
    EXPECT_TRUE(m.level(0, 1).slot_active(0));
    EXPECT_TRUE(nn::testing::bitwise_equal(m.hidden_states(ids), student)) << moe;

    // Bad entries are refused up front.
    TeacherViewSpec bad = spec;
    bad.receiver_evicted[1].slot = 3;
    expect_error([&] { TeacherView v(m, bad); }, {"evicted receiver slot of layer 1 is 3"});
    bad = spec;
    bad.receiver_evicted[1].B = Tensor::zeros({3, 3});
    expect_error([&] { TeacherView v(m, bad); }, {"old B of evicted receiver slot 0 of layer 1 is (3, 3)"});
    bad = spec;
    bad.receiver_evicted[0].router = moe ? Tensor() : Tensor::zeros({16});
    expect_error([&] { TeacherView v(m, bad); }, {"old router row of evicted receiver slot 0 of layer 0"});
    bad = spec;
    bad.receiver_evicted.resize(1);
    expect_error([&] { TeacherView v(m, bad); }, {"receiver_evicted has 1 layers"});
  }
}

// on_exhausted = merge_oldest: with the receiver's only slot taken, evict_oldest drops what it
// held (its teacher is the model without it: nothing to distil), merge_oldest distils it into
// the new slot. Same model, same evicted slot; the sender is left as it was, so the evicted
// slot's behaviour is all there is to keep.
TEST(Consolidation, MergeOldestDistilsTheEvictedSlot) {
  auto filled = make_model(7, /*slots=*/1);
  {
    Consolidator c(*filled, ks_config(0));
    c.consolidate({}, kPrompts);  // takes the receiver's only slot in each layer
    for (int64_t l = 0; l < 2; ++l) nn::testing::randomize(filled->level(l, 1).slot(0).B, 41 + static_cast<uint64_t>(l), 0.3);
  }
  // Fresh samples of the filled model: the behaviour the evicted slot is part of.
  nn::GenerateConfig g;
  g.max_new_tokens = 16;
  g.seed = 999;
  const auto res = nn::generate(*filled, {{1}, {2}, {3}, {4}, {5}, {6}}, g);
  std::vector<double> ids, mask;
  const int64_t T = 17;
  for (size_t i = 0; i < res.sequences.size(); ++i) {
    ids.push_back(static_cast<double>(i + 1));
    mask.push_back(1.0);
    const auto& s = res.sequences[i].tokens;
    for (int64_t t = 0; t < T - 1; ++t) {
      ids.push_back(t < static_cast<int64_t>(s.size()) ? s[static_cast<size_t>(t)] : 0);
      mask.push_back(t + 1 < static_cast<int64_t>(s.size()) ? 1.0 : 0.0);
    }
  }
  const int64_t B = static_cast<int64_t>(res.sequences.size());
  const Tensor I = Tensor::from_vector(ids, {B, T}, DType::i64), M = Tensor::from_vector(mask, {B, T});

  std::map<SlotPolicy, ConsolidationReport> rep;
  std::map<SlotPolicy, double> jsd;
  for (SlotPolicy policy : {SlotPolicy::evict_oldest, SlotPolicy::merge_oldest}) {
    auto m = make_model(7, 1);
    m->load_state_dict(filled->state_dict());
    ConsolidationConfig cfg = ks_config(30);
    cfg.on_exhausted = policy;
    Consolidator c(*m, cfg);
    c.check_ready(kPrompts);  // a full receiver is no refusal under either policy
    rep[policy] = c.consolidate({}, kPrompts);
    EXPECT_EQ(rep[policy].evicted_slots, (std::vector<int64_t>{0, 0}));
    EXPECT_EQ(rep[policy].new_slots, (std::vector<int64_t>{0, 0}));
    EXPECT_EQ(rep[policy].evicted_merged, policy == SlotPolicy::merge_oldest);
    EXPECT_EQ(rep[policy].to_json().at("evicted_merged").get<bool>(), policy == SlotPolicy::merge_oldest);
    jsd[policy] = jsd_between(*filled, *m, I, M);
  }
  const ConsolidationReport &ev = rep[SlotPolicy::evict_oldest], &mg = rep[SlotPolicy::merge_oldest];
  // The teachers: evict_oldest's is the student (its slot reset, the new one a no-op);
  // merge_oldest's still has the evicted slot.
  EXPECT_LT(ev.jsd_before, 1e-6);
  EXPECT_GT(mg.jsd_before, 1e-4);
  EXPECT_LT(mg.jsd_after, 0.5 * mg.jsd_before) << "before " << mg.jsd_before << " after " << mg.jsd_after;
  // Against the model before the eviction, on its own fresh samples.
  EXPECT_LT(jsd[SlotPolicy::merge_oldest], 0.5 * jsd[SlotPolicy::evict_oldest])
      << "merge " << jsd[SlotPolicy::merge_oldest] << " evict " << jsd[SlotPolicy::evict_oldest];

  // The policy reads and writes as JSON; the error lists every value.
  ConsolidationConfig js = ks_config(1);
  js.on_exhausted = SlotPolicy::merge_oldest;
  const nlohmann::json j = js;
  EXPECT_EQ(j.at("on_exhausted"), "merge_oldest");
  EXPECT_EQ(j.get<ConsolidationConfig>().on_exhausted, SlotPolicy::merge_oldest);
  expect_error([] { (void)nlohmann::json{{"on_exhausted", "merge"}}.get<ConsolidationConfig>(); },
               {"\"error\", \"evict_oldest\" or \"merge_oldest\", got \"merge\""});
  // Under "error" the refusal names both ways out.
  auto full = make_model(7, 1);
  full->load_state_dict(filled->state_dict());
  Consolidator refuse(*full, ks_config(1));
  expect_error([&] { refuse.check_ready(kPrompts); }, {"no free slot", "\"evict_oldest\" or \"merge_oldest\""});
}

}  // namespace
}  // namespace somnus::sleep
