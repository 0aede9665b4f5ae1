// Metrics of the reproduction suite against hand-computed values: exact match with answer
// normalisation, the accuracy matrix (average accuracy, Chaudhry et al. forgetting) and chrF.
#include <gtest/gtest.h>

#include <cmath>

#include "sleep/tasks/metrics.h"
#include "tensor/error.h"

using namespace somnus;
using namespace somnus::sleep;

TEST(TaskMetrics, NormalizeAnswer) {
  EXPECT_EQ(normalize_answer("  The   Kitchen\n"), "the kitchen");
  EXPECT_EQ(normalize_answer("\tA\r\nB  "), "a b");
  EXPECT_EQ(normalize_answer("   "), "");
  EXPECT_EQ(normalize_answer("freeze_Account"), "freeze_account");
  EXPECT_TRUE(exact_match(" kitchen", "Kitchen"));
  EXPECT_TRUE(exact_match("0 0  3", " 0 0 3\n"));
  EXPECT_FALSE(exact_match("kitchens", "kitchen"));
  EXPECT_FALSE(exact_match("0 03", "0 0 3"));
}

TEST(TaskMetrics, ExactMatchAccuracy) {
  EXPECT_DOUBLE_EQ(exact_match_accuracy({" a", "B", "c", "d d"}, {"a", "b", "x", "d  d"}), 0.75);
  EXPECT_DOUBLE_EQ(exact_match_accuracy({"x"}, {"y"}), 0.0);
  EXPECT_THROW(exact_match_accuracy({"a"}, {"a", "b"}), Error);
  EXPECT_THROW(exact_match_accuracy({}, {}), Error);
}

// acc[i][j] (after task i, on task j):
//   0.9  0.1  0.0
//   0.6  0.8  0.2
//   0.3  0.7  0.95
// average after 0: 0.9; after 1: (0.6+0.8)/2 = 0.7; after 2: (0.3+0.7+0.95)/3 = 0.65.
// forgetting after 1: task 0: 0.9-0.6 = 0.3 -> 0.3.
// forgetting after 2: task 0: max(0.9,0.6)-0.3 = 0.6; task 1: max(0.1,0.8)-0.7 = 0.1 -> 0.35.
TEST(TaskMetrics, AccuracyMatrixHandComputed) {
  const double v[3][3] = {{0.9, 0.1, 0.0}, {0.6, 0.8, 0.2}, {0.3, 0.7, 0.95}};
  AccuracyMatrix m(3);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) m.set(i, j, v[i][j]);
  EXPECT_NEAR(m.average_accuracy(0), 0.9, 1e-12);
  EXPECT_NEAR(m.average_accuracy(1), 0.7, 1e-12);
  EXPECT_NEAR(m.final_average_accuracy(), 0.65, 1e-12);
  EXPECT_EQ(m.forgetting(0), 0.0);
  EXPECT_NEAR(m.forgetting(1), 0.3, 1e-12);
  EXPECT_NEAR(m.final_forgetting(), 0.35, 1e-12);
  EXPECT_DOUBLE_EQ(m.rows()[1][2], 0.2);

  // Only the lower triangle measured (the usual class-incremental protocol): same numbers.
  AccuracyMatrix lower(3);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j <= i; ++j) lower.set(i, j, v[i][j]);
  EXPECT_NEAR(lower.final_average_accuracy(), 0.65, 1e-12);
  EXPECT_NEAR(lower.final_forgetting(), 0.35, 1e-12);
  EXPECT_TRUE(std::isnan(lower.rows()[0][1]));
  EXPECT_FALSE(lower.has(0, 2));

  // A row whose max sits before the task was learned counts (the published definition):
  // task 1 measured 0.9 after task 0, 0.5 after task 1, 0.4 after task 2:
  // forgetting after 2 = ((0.9-0.3) + (0.9-0.4)) / 2 = 0.55.
  AccuracyMatrix early(3);
  const double w[3][3] = {{0.9, 0.9, 0.0}, {0.6, 0.5, 0.0}, {0.3, 0.4, 1.0}};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) early.set(i, j, w[i][j]);
  EXPECT_NEAR(early.final_forgetting(), 0.55, 1e-12);
}

TEST(TaskMetrics, AccuracyMatrixErrors) {
  AccuracyMatrix m(2);
  EXPECT_THROW(m.set(2, 0, 0.5), Error);
  EXPECT_THROW(m.set(0, -1, 0.5), Error);
  EXPECT_THROW(m.set(0, 0, NAN), Error);
  EXPECT_THROW(m.at(0, 0), Error);  // never set
  m.set(0, 0, 1.0);
  EXPECT_THROW(m.forgetting(1), Error);  // acc[1][0] missing
  EXPECT_THROW(AccuracyMatrix(0), Error);
}

// chrF by hand (n = 1..6, beta = 2, whitespace removed; P and R averaged over the orders
// where both sides have n-grams, then F = 5PR / (4P + R)):
//
// "abc" vs "abd": n=1 {a,b,c} vs {a,b,d}: 2 matches of 3 and 3 -> P1 = R1 = 2/3;
//   n=2 {ab,bc} vs {ab,bd}: P2 = R2 = 1/2; n=3 {abc} vs {abd}: 0; n>=4: no n-grams.
//   P = R = (2/3 + 1/2 + 0)/3 = 7/18, F = 7/18 -> 38.888...
//
// "the cat" vs "the cats" -> "thecat" (6 chars) vs "thecats" (7): every hypothesis n-gram
//   matches, so P = 1 and R = (6/7 + 5/6 + 4/5 + 3/4 + 2/3 + 1/2)/6 = 0.734524;
//   F = 5R/(4 + R) = 77.5710...
//
// Corpus of both: summed statistics (hyp, ref, match) per order
//   n=1 (9,10,8) n=2 (7,8,6) n=3 (5,6,4) n=4 (3,4,3) n=5 (2,3,2) n=6 (1,2,1)
//   P = (8/9 + 6/7 + 4/5 + 1 + 1 + 1)/6, R = (8/10 + 6/8 + 4/6 + 3/4 + 2/3 + 1/2)/6
//   F = 72.5868 (not the mean of the two sentence scores, 58.23).
//
// "café" vs "cafe" (é is one character): P = R = (3/4 + 2/3 + 1/2 + 0)/4 = 23/48 -> 47.9166...
// sacreBLEU 2.6.0's CHRF() gives the same four numbers.
TEST(TaskMetrics, ChrfHandComputed) {
  EXPECT_NEAR(chrf_sentence("abc", "abd"), 700.0 / 18.0, 1e-9);
  const double r = (6.0 / 7 + 5.0 / 6 + 4.0 / 5 + 3.0 / 4 + 2.0 / 3 + 1.0 / 2) / 6;
  EXPECT_NEAR(chrf_sentence("the cat", "the cats"), 100.0 * 5 * r / (4 + r), 1e-9);
  EXPECT_NEAR(chrf_sentence("the cat", "the cats"), 77.57103344229319, 1e-9);
  const double P = (8.0 / 9 + 6.0 / 7 + 4.0 / 5 + 3.0) / 6;
  const double R = (8.0 / 10 + 6.0 / 8 + 4.0 / 6 + 3.0 / 4 + 2.0 / 3 + 1.0 / 2) / 6;
  EXPECT_NEAR(chrf_corpus({"abc", "the cat"}, {"abd", "the cats"}), 100.0 * 5 * P * R / (4 * P + R), 1e-9);
  EXPECT_NEAR(chrf_corpus({"abc", "the cat"}, {"abd", "the cats"}), 72.5867846133226, 1e-9);
  EXPECT_NEAR(chrf_sentence("café", "cafe"), 100.0 * 23.0 / 48.0, 1e-9);
}

TEST(TaskMetrics, ChrfEdgeCases) {
  EXPECT_DOUBLE_EQ(chrf_sentence("mivo taka ru", "mivo taka ru"), 100.0);
  EXPECT_DOUBLE_EQ(chrf_sentence("a b c", "abc"), 100.0);  // whitespace removed
  EXPECT_DOUBLE_EQ(chrf_sentence("", "abc"), 0.0);
  EXPECT_DOUBLE_EQ(chrf_sentence("abc", ""), 0.0);
  EXPECT_DOUBLE_EQ(chrf_sentence("xyz", "abcdefgh"), 0.0);
  EXPECT_DOUBLE_EQ(chrf_corpus({}, {}), 0.0);
  // Recall weighs more than precision (beta = 2): dropping a character costs more than adding one.
  // (about 83.1 vs 96.2).
  EXPECT_LT(chrf_sentence("abcdefg", "abcdefgh"), chrf_sentence("abcdefghx", "abcdefgh") - 10.0);
  const ChrfStats s = chrf_statistics("ab", "abab");
  EXPECT_EQ(s.hyp[0], 2);
  EXPECT_EQ(s.ref[0], 4);
  EXPECT_EQ(s.match[0], 2);  // clipped: a and b once each
  EXPECT_EQ(s.hyp[2], 0);
  EXPECT_EQ(s.ref[2], 2);
  EXPECT_THROW(chrf_corpus({"a"}, {}), Error);
  EXPECT_THROW(chrf_sentence("a", "a", ChrfConfig{0, 2.0}), Error);
  // Invalid UTF-8 never throws.
  EXPECT_NO_THROW(chrf_sentence(std::string("\xff\xfe", 2), "abc"));
}
