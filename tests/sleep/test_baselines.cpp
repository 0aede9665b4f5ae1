// The baselines (sleep/baselines/): each changes the weights as it should (ICL not at all)
// and improves its own objective on a toy episode; the factory and configs fail clearly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "nn/nn_testing.h"
#include "sleep/baselines/baselines.h"
#include "sleep/baselines/method.h"

namespace somnus::sleep {
namespace {

using nlohmann::json;
using nn::Transformer;
using nn::TransformerConfig;
using nn::testing::expect_error;
using nn::testing::raw_bytes;

constexpr int64_t kVocab = 32;

TransformerConfig tiny(double init_std = 0.02) {
  TransformerConfig c = TransformerConfig::llama_style(kVocab, 1, 16, 4, 2, 32);
  c.levels[0].hidden = 24;
  c.init_std = init_std;
  return c;
}

LearningEpisode toy_episode() {
  LearningEpisode ep;
  ep.name = "toy";
  ep.context = {1, 20, 21, 22, 23, 24, 25, 2};
  ep.examples = {{{1, 10, 11}, {20, 21}}, {{1, 12, 13}, {22, 23}}, {{1, 14}, {24, 25}}};
  return ep;
}

// Mean log-prob of the examples' answers given their prompts.
double answer_logprob(Transformer& m, const LearningEpisode& ep) {
  std::vector<TrainSequence> rows;
  for (const Example& ex : ep.examples) {
    TrainSequence r{ex.prompt, static_cast<int64_t>(ex.prompt.size())};
    r.tokens.insert(r.tokens.end(), ex.answer.begin(), ex.answer.end());
    rows.push_back(r);
  }
  return mean_logprob(m, rows);
}

std::map<std::string, std::string> weights_of(const Transformer& m) {
  std::map<std::string, std::string> out;
  for (const auto& [n, p] : m.named_parameters()) out[n] = raw_bytes(p);
  return out;
}

double distance_sq(const Transformer& m, const NamedTensors& anchor) {
  double s = 0.0;
  for (const auto& [n, a] : anchor) {
    const std::vector<double> x = m.parameter(n).to_vector(), y = a.to_vector();
    for (size_t i = 0; i < x.size(); ++i) s += (x[i] - y[i]) * (x[i] - y[i]);
  }
  return s;
}

TEST(Baselines, IclChangesNoWeightAndPutsTheContextInThePrompt) {
  Generator gen(1);
  Transformer m(tiny(), gen);
  const auto before = weights_of(m);
  auto icl = make_method("icl");
  EXPECT_EQ(icl->name(), "icl");
  const LearningEpisode ep = toy_episode();
  icl->learn(m, ep);
  EXPECT_EQ(weights_of(m), before);
  std::vector<TokenId> expected = ep.context;
  for (const Example& ex : ep.examples) {
    expected.insert(expected.end(), ex.prompt.begin(), ex.prompt.end());
    expected.insert(expected.end(), ex.answer.begin(), ex.answer.end());
  }
  EXPECT_EQ(icl->eval_prefix(ep), expected);
  EXPECT_TRUE(make_method("sft")->eval_prefix(ep).empty());
}

TEST(Baselines, SftRaisesTheAnswerLogProb) {
  Generator gen(2);
  Transformer m(tiny(), gen);
  const LearningEpisode ep = toy_episode();
  const double before = answer_logprob(m, ep);
  const auto w0 = weights_of(m);
  auto sft = make_method("sft", json{{"steps", 15}, {"lr", 1e-2}});
  sft->learn(m, ep);
  EXPECT_GT(answer_logprob(m, ep), before + 0.5);
  EXPECT_NE(weights_of(m), w0);
  const std::vector<double> losses = sft->last_metrics().at("loss").get<std::vector<double>>();
  ASSERT_EQ(losses.size(), 15u);
  EXPECT_LT(losses.back(), losses.front());
  // The rows: the context as text, then each example with the loss on its answer.
  const std::vector<TrainSequence> rows = ep.sft_rows(32);
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0].tokens, ep.context);
  EXPECT_EQ(rows[1].loss_start, 3);
  EXPECT_EQ(rows[3].tokens, (std::vector<TokenId>{1, 14, 24, 25}));
}

TEST(Baselines, EwcPenaltyIsZeroAtTheAnchorAndPullsTowardIt) {
  Generator gen(3);
  Transformer m(tiny(), gen);
  EwcConfig cfg;
  cfg.sft.steps = 10;
  cfg.sft.lr = 1e-2;
  cfg.lambda = 1e4;
  EwcMethod ewc(cfg);
  EXPECT_EQ(ewc.penalty(m).item(), 0.0);  // nothing consolidated yet
  const LearningEpisode first = toy_episode();
  ewc.learn(m, first);
  ASSERT_TRUE(ewc.has_fisher());
  EXPECT_EQ(ewc.penalty(m).item(), 0.0);  // exactly at θ*
  double fisher_sum = 0.0;
  for (const auto& [n, f] : ewc.fisher())
    for (double v : f.to_vector()) {
      EXPECT_GE(v, 0.0);
      fisher_sum += v;
    }
  EXPECT_GT(fisher_sum, 0.0);

  // A move away from θ* costs; a gradient step on the penalty moves back toward θ*.
  {
    NoGradGuard no_grad;
    for (const Tensor& p : m.parameters(true)) p.copy_(p + 0.05);
  }
  const double away = ewc.penalty(m).item();
  EXPECT_GT(away, 0.0);
  const double d0 = distance_sq(m, ewc.anchor());
  m.zero_grad();
  backward(ewc.penalty(m));
  {
    NoGradGuard no_grad;
    for (const Tensor& p : m.parameters(true))
      if (p.grad().defined()) p.copy_(p - p.grad() * 1e-4);
  }
  m.zero_grad();
  EXPECT_LT(distance_sq(m, ewc.anchor()), d0);
  EXPECT_LT(ewc.penalty(m).item(), away);
}

TEST(Baselines, EwcStaysCloserToTheOldWeightsThanSft) {
  const LearningEpisode first = toy_episode();
  LearningEpisode second;
  second.name = "second";
  second.examples = {{{1, 10, 11}, {30, 31}}, {{1, 12, 13}, {28, 29}}};
  EwcConfig strong;
  strong.sft.steps = 10;
  strong.sft.lr = 1e-2;
  strong.lambda = 1e5;
  EwcConfig none = strong;
  none.lambda = 0.0;
  double dist[2];
  NamedTensors anchor;
  for (int k = 0; k < 2; ++k) {
    Generator gen(4);
    Transformer m(tiny(), gen);
    EwcMethod ewc(k == 0 ? strong : none);
    ewc.learn(m, first);
    anchor = ewc.anchor();
    ewc.learn(m, second);
    dist[k] = distance_sq(m, anchor);
    if (k == 0) {
      EXPECT_GT(ewc.last_metrics().at("penalty_after").get<double>(), 0.0);
    }
  }
  EXPECT_LT(dist[0], 0.5 * dist[1]);
}

// A trivially learnable reward: the fraction of completion tokens equal to 7.
double sevens(const Example&, const std::vector<TokenId>& y) {
  double n = 0.0;
  for (TokenId t : y) n += t == 7 ? 1.0 : 0.0;
  return y.empty() ? 0.0 : n / static_cast<double>(y.size());
}

double prob_of_token(Transformer& m, const std::vector<TokenId>& prompt, TokenId tok) {
  NoGradGuard no_grad;
  std::vector<double> v(prompt.begin(), prompt.end());
  const Tensor logits = m.forward(Tensor::from_vector(v, {1, static_cast<int64_t>(v.size())}, DType::i64));
  const std::vector<double> row = logits.to_vector();
  const size_t off = (prompt.size() - 1) * kVocab;
  double mx = -1e300, z = 0.0;
  for (int64_t i = 0; i < kVocab; ++i) mx = std::max(mx, row[off + i]);
  for (int64_t i = 0; i < kVocab; ++i) z += std::exp(row[off + i] - mx);
  return std::exp(row[off + tok] - mx) / z;
}

TEST(Baselines, GrpoRaisesTheRewardOfATriviallyLearnableTask) {
  Generator gen(5);
  Transformer m(tiny(0.1), gen);
  LearningEpisode ep = toy_episode();
  ep.reward = sevens;
  const double p0 = prob_of_token(m, ep.examples[0].prompt, 7);
  auto grpo = make_method("grpo", json{{"steps", 12}, {"lr", 2e-2}, {"group_size", 6}, {"max_new_tokens", 4}});
  grpo->learn(m, ep);
  const std::vector<double> r = grpo->last_metrics().at("mean_reward").get<std::vector<double>>();
  ASSERT_EQ(r.size(), 12u);
  EXPECT_GT(r[10] + r[11], r[0] + r[1] + 0.2);
  EXPECT_GT(prob_of_token(m, ep.examples[0].prompt, 7), 3.0 * p0);

  // The default reward is answer match; an episode without examples is refused.
  EXPECT_EQ(answer_match_reward({{1}, {4, 5}}, {4, 5, 9}), 1.0);
  EXPECT_EQ(answer_match_reward({{1}, {4, 5}}, {4}), 0.0);
  LearningEpisode text_only;
  text_only.context = {1, 2, 3};
  expect_error([&] { grpo->learn(m, text_only); }, {"GRPO", "no examples"});
}

TEST(Baselines, OpsdReducesTheReverseKlToTheContextConditionedModel) {
  Generator gen(6);
  Transformer m(tiny(0.3), gen);  // a wide init, so the context matters to the predictions
  const LearningEpisode ep = toy_episode();
  // Fixed probe completions: the reverse KL on them before and after.
  const std::vector<std::vector<TokenId>> probes = {{20, 21, 5}, {22, 23, 9}, {24, 25, 4}};
  auto probe_kl = [&] {
    NoGradGuard no_grad;
    double s = 0.0;
    for (size_t i = 0; i < probes.size(); ++i)
      s += opsd_reverse_kl(m, ep.context, ep.examples[i].prompt, probes[i]).item();
    return s / static_cast<double>(probes.size());
  };
  const double kl0 = probe_kl();
  EXPECT_GT(kl0, 1e-3);
  const auto w0 = weights_of(m);
  auto opsd = make_method("opsd", json{{"steps", 15}, {"lr", 1e-2}, {"max_new_tokens", 4}});
  opsd->learn(m, ep);
  EXPECT_NE(weights_of(m), w0);
  EXPECT_LT(probe_kl(), 0.7 * kl0);
  const std::vector<double> kls = opsd->last_metrics().at("reverse_kl").get<std::vector<double>>();
  ASSERT_EQ(kls.size(), 15u);
  EXPECT_LT(kls.back(), kls.front());

  // With the context equal to nothing the teacher is the student: KL exactly 0 ... up to
  // the same forward computed twice.
  {
    NoGradGuard no_grad;
    EXPECT_NEAR(opsd_reverse_kl(m, {}, ep.examples[0].prompt, probes[0]).item(), 0.0, 1e-6);
  }
  LearningEpisode no_context = ep;
  no_context.context.clear();
  expect_error([&] { opsd->learn(m, no_context); }, {"OPSD", "no context"});
}

// SEAL, like Sleep, builds a Dreamer per episode: each episode's from its own seed
// (episode_dream_seed), not every one from the config's seed. apply_steps = 0 keeps the model
// as it is, so only the seed can make the episodes' dreams differ.
TEST(Baselines, SealEachEpisodeDreamsFromItsOwnSeed) {
  const json cfg{{"num_dreams", 4}, {"dream_length", 8}, {"rest_iterations", 1}, {"trial_steps", 1},
                 {"apply_steps", 0}, {"seed", 3}};
  LearningEpisode ep = toy_episode();
  ep.dream_prefix = {1};
  ep.train_prefix = {1};
  ep.score = [](Transformer& mm) { return answer_logprob(mm, toy_episode()); };
  auto run = [&] {
    Generator gen(7);
    Transformer m(tiny(), gen);
    auto seal = make_method("seal", cfg);
    std::vector<std::vector<std::vector<TokenId>>> out;
    DreamObserver obs;
    obs.on_sample = [&](const DreamTask&, int64_t, const std::vector<std::vector<TokenId>>& d) { out.push_back(d); };
    const ScopedDreamObserver scope(obs);
    for (int e = 0; e < 3; ++e) seal->learn(m, ep);
    return out;
  };
  const auto a = run();
  ASSERT_EQ(a.size(), 3u);
  EXPECT_NE(a[0], a[1]) << "SEAL's episodes 0 and 1 dreamt the same dreams";
  EXPECT_NE(a[1], a[2]);
  EXPECT_EQ(run(), a);
}

// SEAL learns its self-edit policy across tasks (ReST-EM over many contexts): with
// persist_dreamer [default] the second learn call's Dreamer starts from the dreamer adapter the
// first one's ReST-EM left; off, from a fresh one (B = 0). τ rises at every call, so every
// dream is rewarded and ReST-EM always trains.
TEST(Baselines, SealCarriesItsDreamGeneratorAcrossEpisodes) {
  LearningEpisode ep = toy_episode();
  ep.dream_prefix = {1};
  ep.train_prefix = {1};
  auto calls = std::make_shared<int64_t>(0);
  ep.score = [calls](Transformer&) { return static_cast<double>(++*calls); };
  auto b_norm = [](const NamedTensors& st) {
    double s = 0.0;
    for (const auto& [k, t] : st)
      if (k.find("lora_B") != std::string::npos)
        for (double v : t.to_vector()) s += v * v;
    return s;
  };
  auto bytes = [](const NamedTensors& st) {
    std::vector<std::string> out;
    for (const auto& [k, t] : st) out.push_back(k + ":" + raw_bytes(t));
    return out;
  };
  for (const bool persist : {true, false}) {
    Generator gen(7);
    Transformer m(tiny(), gen);
    DreamConfig c = seal_default_config();
    c.num_dreams = 3;
    c.dream_length = 5;
    c.rest_iterations = 1;
    c.trial_steps = 1;
    c.apply_steps = 0;
    c.seed = 2;
    c.persist_dreamer = persist;
    SealMethod seal(c);
    std::vector<NamedTensors> at_start;
    DreamObserver obs;
    obs.on_start = [&](const DreamTask&, Dreamer& d) { at_start.push_back(d.adapters().adapter_state("dreamer")); };
    const ScopedDreamObserver scope(obs);
    seal.learn(m, ep);
    const NamedTensors after_first = seal.dreamer_state().adapter;
    seal.learn(m, ep);
    ASSERT_EQ(at_start.size(), 2u);
    EXPECT_EQ(seal.last_metrics().at("dreamer").at("carried").get<bool>(), persist);
    if (persist) {
      EXPECT_GT(b_norm(after_first), 0.0);
      EXPECT_TRUE(bytes(at_start[1]) == bytes(after_first)) << "episode 2 did not start from episode 1's dreamer";
    } else {
      EXPECT_TRUE(after_first.empty());
      EXPECT_EQ(b_norm(at_start[1]), 0.0);
    }
  }
}

TEST(Baselines, SealDreamsWithoutSelectionOrRandomExperts) {
  Generator gen(7);
  Transformer m(tiny(), gen);
  LearningEpisode ep = toy_episode();
  ep.dream_prefix = {1};
  ep.train_prefix = {1};
  ep.score = [&](Transformer& mm) { return answer_logprob(mm, toy_episode()); };
  auto seal = make_method("seal", json{{"num_dreams", 3},
                                       {"dream_length", 5},
                                       {"rest_iterations", 1},
                                       {"trial_steps", 2},
                                       {"apply_steps", 2},
                                       {"seed", 1}});
  seal->learn(m, ep);
  const json& mt = seal->last_metrics();
  ASSERT_EQ(mt.at("iterations").size(), 1u);
  EXPECT_EQ(mt.at("iterations")[0].at("kept").get<int64_t>(), 3);  // every dream tried
  EXPECT_EQ(mt.at("iterations")[0].at("sampled").get<int64_t>(), 3);
  LearningEpisode unscored = ep;
  unscored.score = nullptr;
  expect_error([&] { seal->learn(m, unscored); }, {"'score'"});
  expect_error([] { make_method("seal", json{{"selection", true}}); }, {"seal", "'selection' must be false"});
  expect_error([] { make_method("seal", json{{"random_extra_expert", true}}); }, {"'random_extra_expert'"});
}

TEST(Baselines, FactoryAndConfigsFailClearly) {
  // The six baselines (others, e.g. "sleep", may be registered beside them).
  const std::vector<std::string> names = method_names();
  for (const char* n : {"ewc", "grpo", "icl", "opsd", "seal", "sft"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
    EXPECT_EQ(make_method(n)->name(), n);
  }
  expect_error([] { make_method("dropout"); }, {"unknown method 'dropout'", "icl", "seal"});
  expect_error([] { make_method("sft", json{{"stepz", 3}}); }, {"sft", "unknown key 'stepz'"});
  expect_error([] { make_method("sft", json{{"lr", -1.0}}); }, {"'lr'"});
  expect_error([] { make_method("ewc", json{{"lambda", -1.0}}); }, {"'lambda'"});
  expect_error([] { make_method("grpo", json{{"group_size", 1}}); }, {"'group_size'"});
  expect_error([] { make_method("opsd", json{{"max_new_tokens", 0}}); }, {"'max_new_tokens'"});
  expect_error([] { make_method("icl", json{{"steps", 1}}); }, {"icl", "takes no config"});
  const EwcConfig e = json{{"lambda", 5.0}, {"steps", 3}}.get<EwcConfig>();
  EXPECT_EQ(e.lambda, 5.0);
  EXPECT_EQ(e.sft.steps, 3);
  EXPECT_EQ(json(json(e).get<EwcConfig>()), json(e));
  EXPECT_EQ(json(json(GrpoConfig{}).get<GrpoConfig>()), json(GrpoConfig{}));
  EXPECT_EQ(json(json(OpsdConfig{}).get<OpsdConfig>()), json(OpsdConfig{}));

  register_method("test-null", [](const json&) { return std::make_unique<IclMethod>(); });
  EXPECT_EQ(make_method("test-null")->name(), "icl");
  expect_error([] { register_method("sft", [](const json&) { return std::make_unique<IclMethod>(); }); },
               {"'sft' exists"});

  LearningEpisode empty;
  expect_error([&] { empty.validate(); }, {"needs a 'context' or 'examples'"});
  LearningEpisode no_answer;
  no_answer.examples = {{{1, 2}, {}}};
  expect_error([&] { no_answer.validate(); }, {"examples[0]", "'answer'"});
  Generator gen(8);
  Transformer m(tiny(), gen);
  expect_error([&] { make_method("sft")->learn(m, empty); }, {"needs a 'context'"});
}

}  // namespace
}  // namespace somnus::sleep
