// Rewards of learning-to-imitate: token Levenshtein against known cases and a full-matrix
// reference, r_abs with its threshold z0, the γ mix, GRPO group advantages (hand-computed),
// answer normalisation and AnswerMatchReward, and HiddenCosineReward with a real tiny teacher
// and with a callback whose hidden states are set by hand.
#include "sleep/rewards.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "nn/transformer.h"
#include "tensor/random.h"
#include "testing.h"

using namespace somnus;
using namespace somnus::sleep;
using somnus::testing::expect_contains;
using somnus::testing::error_of;

namespace {

std::vector<TokenId> chars(const std::string& s) { return std::vector<TokenId>(s.begin(), s.end()); }

// The textbook (|a|+1)×(|b|+1) DP, as the reference of the one-row version.
int64_t levenshtein_full(const std::vector<TokenId>& a, const std::vector<TokenId>& b) {
  std::vector<std::vector<int64_t>> d(a.size() + 1, std::vector<int64_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = static_cast<int64_t>(i);
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = static_cast<int64_t>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
  }
  return d[a.size()][b.size()];
}

TEST(Levenshtein, KnownCases) {
  EXPECT_EQ(levenshtein(chars("kitten"), chars("sitting")), 3);
  EXPECT_EQ(levenshtein(chars("sitting"), chars("kitten")), 3);
  EXPECT_EQ(levenshtein(chars("flaw"), chars("lawn")), 2);
  EXPECT_EQ(levenshtein(chars("intention"), chars("execution")), 5);
  EXPECT_EQ(levenshtein(chars("abc"), chars("abc")), 0);
  EXPECT_EQ(levenshtein(chars("abc"), chars("cba")), 2);
  EXPECT_EQ(levenshtein({}, {}), 0);
  EXPECT_EQ(levenshtein({}, chars("abcd")), 4);
  EXPECT_EQ(levenshtein(chars("abcd"), {}), 4);
  // Token ids, not characters: large ids and a repeated token.
  EXPECT_EQ(levenshtein(std::vector<TokenId>{100000, 7, 7}, std::vector<TokenId>{7, 7, 100000}), 2);
}

TEST(Levenshtein, MatchesFullMatrixAndIsSymmetric) {
  Generator gen(11);
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t na = static_cast<int64_t>(randint(0, 14, {1}, gen).item());
    const int64_t nb = static_cast<int64_t>(randint(0, 14, {1}, gen).item());
    std::vector<TokenId> a, b;
    for (double v : randint(0, 4, {na}, gen).to_vector()) a.push_back(static_cast<TokenId>(v));
    for (double v : randint(0, 4, {nb}, gen).to_vector()) b.push_back(static_cast<TokenId>(v));
    const int64_t ref = levenshtein_full(a, b);
    EXPECT_EQ(levenshtein(a, b), ref) << "trial " << trial;
    EXPECT_EQ(levenshtein(b, a), ref) << "trial " << trial;
    EXPECT_EQ(levenshtein(a, a), 0);
    EXPECT_GE(ref, std::abs(na - nb));
    EXPECT_LE(ref, std::max(na, nb));
  }
}

TEST(AbsoluteReward, NormalisedDistanceAndThreshold) {
  const auto k = chars("kitten"), s = chars("sitting");
  const double expected = 1.0 - 3.0 / 7.0;
  EXPECT_DOUBLE_EQ(absolute_reward(k, s, INFINITY), expected);
  EXPECT_DOUBLE_EQ(absolute_reward(k, s, 3.0), expected);  // lev <= z0 passes
  EXPECT_EQ(absolute_reward(k, s, 2.0), 0.0);              // lev > z0 is zeroed
  EXPECT_EQ(absolute_reward(k, k, 0.0), 1.0);
  EXPECT_EQ(absolute_reward({}, {}, 0.0), 1.0);  // both empty: identical
  EXPECT_EQ(absolute_reward({}, k, INFINITY), 0.0);
  EXPECT_EQ(absolute_reward(k, {}, INFINITY), 0.0);
  // Relative threshold: z0 = fraction · max(6, 7).
  EXPECT_DOUBLE_EQ(absolute_reward_relative(k, s, 0.5), expected);  // 3 <= 3.5
  EXPECT_EQ(absolute_reward_relative(k, s, 0.4), 0.0);               // 3 > 2.8
  EXPECT_DOUBLE_EQ(absolute_reward_relative(k, s, 1.0), expected);
  expect_contains(error_of([&] { absolute_reward(k, s, -1.0); }), "z0 must be >= 0");
}

TEST(RewardMix, GammaWeightsAndNoSemantic) {
  EXPECT_DOUBLE_EQ(mix_reward(1.0, 0.5, 0.5), 0.75);
  EXPECT_DOUBLE_EQ(mix_reward(1.0, 0.2, 0.0), 0.2);
  EXPECT_DOUBLE_EQ(mix_reward(1.0, 0.2, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(mix_reward(0.0, 0.8, 0.25), 0.6);
  const std::vector<double> r_abs{0.1, 0.9, 0.4};
  EXPECT_EQ(mix_rewards({}, r_abs, 0.7), r_abs);  // no semantic reward: r = r_abs
  const std::vector<double> mixed = mix_rewards({1.0, 0.0, 1.0}, r_abs, 0.5);
  ASSERT_EQ(mixed.size(), 3u);
  EXPECT_DOUBLE_EQ(mixed[0], 0.55);
  EXPECT_DOUBLE_EQ(mixed[1], 0.45);
  EXPECT_DOUBLE_EQ(mixed[2], 0.7);
  expect_contains(error_of([&] { mix_rewards({1.0}, r_abs, 0.5); }), "1 semantic rewards vs 3");
  expect_contains(error_of([&] { mix_reward(1.0, 1.0, 1.5); }), "gamma must be in [0, 1]");
}

TEST(GroupAdvantages, HandComputed) {
  // Group 1: {1, 0, 0, 1}: mean 0.5, unbiased std sqrt(1/3). Group 2: all equal -> 0.
  // Group 3: {0, 0.5, 1, 0.5}: mean 0.5, std sqrt(0.5/3).
  const std::vector<double> r{1, 0, 0, 1, 2, 2, 2, 2, 0, 0.5, 1, 0.5};
  const std::vector<double> a = group_advantages(r, 4);
  ASSERT_EQ(a.size(), r.size());
  const double s1 = std::sqrt(1.0 / 3.0) + 1e-4, s3 = std::sqrt(0.5 / 3.0) + 1e-4;
  const std::vector<double> want{0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1, 0, 0, 0, 0, -0.5 / s3, 0, 0.5 / s3, 0};
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], want[i], 1e-12) << i;
  // eps is configurable.
  EXPECT_NEAR(group_advantages({1, 0}, 2, 0.5)[0], 0.5 / (std::sqrt(0.5) + 0.5), 1e-12);
  expect_contains(error_of([&] { group_advantages({1, 2, 3}, 2); }), "do not split into groups of 2");
}

TEST(AnswerMatch, NormalisationRules) {
  EXPECT_EQ(normalize_answer("  Hello   World\t\n"), "hello world");
  EXPECT_EQ(normalize_answer("PARIS"), "paris");
  EXPECT_EQ(normalize_answer(" a \t b  c "), "a b c");
  EXPECT_EQ(normalize_answer("   "), "");
  EXPECT_EQ(normalize_answer(""), "");
}

TEST(AnswerMatch, MatchesNormalisedAnswers) {
  // Tokens are characters; the answer is whatever follows '=' (none without one).
  AnswerMatchReward reward([](const std::vector<TokenId>& ids) -> std::optional<std::string> {
    const std::string s(ids.begin(), ids.end());
    const size_t eq = s.find('=');
    if (eq == std::string::npos) return std::nullopt;
    return s.substr(eq + 1);
  });
  const auto prefix = chars("2+2");
  const auto reference = chars("= Four ");
  const std::vector<std::vector<TokenId>> completions{chars("=four"), chars("=  FOUR"), chars("=five"), chars("four"),
                                                      chars("="), {}};
  const std::vector<double> s = reward.score(prefix, reference, completions);
  EXPECT_EQ(s, (std::vector<double>{1, 1, 0, 0, 0, 0}));
  // The answer field may start in the prefix: it is read from prefix + continuation.
  EXPECT_EQ(reward.score(chars("x= si"), chars("x"), {chars("x"), chars("y")}), (std::vector<double>{1, 0}));
  // No answer in the reference: nothing can match.
  EXPECT_EQ(reward.score(prefix, chars("four"), {chars("four")}), (std::vector<double>{0}));
  EXPECT_EQ(reward.name(), "answer_match");
  EXPECT_EQ(reward.references(), 3);  // the three score() calls above; two had an answer
  EXPECT_EQ(reward.references_with_answer(), 2);
  expect_contains(error_of([] { AnswerMatchReward r(nullptr); }), "extractor is empty");
}

// A reference without an answer goes to the fallback (PARADIGM §2's "otherwise"); one with an
// answer never does.
TEST(AnswerMatch, ReferencesWithoutAnAnswerTakeTheFallback) {
  struct Half : SemanticReward {
    int64_t calls = 0;
    std::vector<double> score(const std::vector<TokenId>&, const std::vector<TokenId>&,
                              const std::vector<std::vector<TokenId>>& completions) override {
      ++calls;
      return std::vector<double>(completions.size(), 0.5);
    }
    std::string name() const override { return "half"; }
  };
  auto half = std::make_unique<Half>();
  Half* fallback = half.get();
  AnswerMatchReward reward(
      [](const std::vector<TokenId>& ids) -> std::optional<std::string> {
        const std::string s(ids.begin(), ids.end());
        const size_t eq = s.find('=');
        if (eq == std::string::npos) return std::nullopt;
        return s.substr(eq + 1);
      },
      std::move(half));
  EXPECT_EQ(reward.name(), "answer_match, else half");
  EXPECT_EQ(reward.score(chars("2+2"), chars("=4"), {chars("=4"), chars("=5")}), (std::vector<double>{1, 0}));
  EXPECT_EQ(fallback->calls, 0);
  EXPECT_EQ(reward.score(chars("2+2"), chars("four"), {chars("=4"), chars("x")}), (std::vector<double>{0.5, 0.5}));
  EXPECT_EQ(fallback->calls, 1);
  EXPECT_EQ(reward.references(), 2);
  EXPECT_EQ(reward.references_with_answer(), 1);
}

// hidden[b, t] = the 2-vector assigned to token ids[b, t] by hand; records the ids it saw.
struct ControlledTeacher {
  std::vector<Shape> seen;
  bool grad_was_on = false;
  Tensor operator()(const Tensor& ids) {
    seen.push_back(ids.shape());
    grad_was_on = grad_was_on || is_grad_enabled();
    const std::vector<double> v = ids.to_vector();
    std::vector<double> h;
    for (double id : v) {
      switch (static_cast<int>(id)) {
        case 1: h.insert(h.end(), {1.0, 0.0}); break;
        case 2: h.insert(h.end(), {0.0, 1.0}); break;
        case 3: h.insert(h.end(), {1.0, 1.0}); break;
        default: h.insert(h.end(), {-50.0, 30.0}); break;  // the prefix and the pads: must not be pooled
      }
    }
    return Tensor::from_vector(h, {ids.size(0), ids.size(1), 2}, DType::f32);
  }
};

TEST(HiddenCosine, ControlledHiddenStates) {
  auto teacher = std::make_shared<ControlledTeacher>();
  HiddenCosineReward reward([teacher](const Tensor& ids) { return (*teacher)(ids); }, 0.9);
  const std::vector<TokenId> prefix{7, 7, 7};
  const std::vector<TokenId> reference{1, 1};  // pooled (1, 0)
  const std::vector<std::vector<TokenId>> completions{
      {1},        // (1, 0): cos 1
      {2, 2, 2},  // (0, 1): cos 0
      {1, 3},     // (1, 0.5): cos 2/sqrt(5) = 0.894 < 0.9
      {1, 1, 1, 3},  // (1, 0.25): cos 0.970 >= 0.9
      {}};        // empty continuation against a non-empty reference: 0
  const std::vector<double> c = reward.cosines(prefix, reference, completions);
  ASSERT_EQ(c.size(), 5u);
  EXPECT_NEAR(c[0], 1.0, 1e-7);
  EXPECT_NEAR(c[1], 0.0, 1e-7);
  EXPECT_NEAR(c[2], 2.0 / std::sqrt(5.0), 1e-6);
  EXPECT_NEAR(c[3], 1.0 / std::sqrt(1.0625), 1e-6);
  EXPECT_EQ(c[4], 0.0);
  EXPECT_EQ(reward.score(prefix, reference, completions), (std::vector<double>{1, 0, 0, 1, 0}));
  // One batched forward of the reference and the completions, right-padded to prefix + longest.
  ASSERT_FALSE(teacher->seen.empty());
  EXPECT_EQ(teacher->seen.back(), (Shape{6, 3 + 4}));
  EXPECT_FALSE(teacher->grad_was_on);
  // A lower threshold lets the 0.894 completion through.
  HiddenCosineReward lenient([teacher](const Tensor& ids) { return (*teacher)(ids); }, 0.85);
  EXPECT_EQ(lenient.score(prefix, reference, completions), (std::vector<double>{1, 0, 1, 1, 0}));
  // Everything empty: identical.
  EXPECT_EQ(reward.score(prefix, {}, {{}, {}}), (std::vector<double>{1, 1}));
  expect_contains(error_of([] { HiddenCosineReward r(nullptr); }), "teacher forward is empty");
  expect_contains(error_of([&] { HiddenCosineReward r([](const Tensor& ids) { return ids; }, 1.5); }),
                  "threshold must be in [-1, 1]");
  // A teacher returning the wrong shape is caught.
  HiddenCosineReward bad([](const Tensor& ids) { return Tensor::zeros({1, 1, 2}); });
  expect_contains(error_of([&] { bad.score(prefix, reference, completions); }), "must return (6, 7, C)");
}

TEST(HiddenCosine, RealTeacherIdenticalSequencesScoreOne) {
  nn::TransformerConfig cfg = nn::TransformerConfig::gpt2_style(32, 1, 16, 2, 32);
  cfg.levels[0].hidden = 32;
  Generator gen(3);
  nn::Transformer teacher(cfg, gen);
  HiddenCosineReward reward([&](const Tensor& ids) { return teacher.hidden_states(ids); }, 0.999);
  const std::vector<TokenId> prefix{4, 8, 15};
  const std::vector<TokenId> reference{16, 23, 42 % 32, 5, 6};
  const std::vector<std::vector<TokenId>> completions{reference, {30, 29, 28, 27, 26, 25, 24, 1}, {16}};
  const std::vector<double> c = reward.cosines(prefix, reference, completions);
  EXPECT_NEAR(c[0], 1.0, 1e-6);  // identical continuation (padded in a longer batch): cosine 1
  EXPECT_LT(c[1], 0.999);
  const std::vector<double> s = reward.score(prefix, reference, completions);
  EXPECT_EQ(s[0], 1.0);
  EXPECT_EQ(s[1], 0.0);
  EXPECT_EQ(reward.name(), "hidden_cosine");
}

}  // namespace
