// Metrics of the reproduction suite: exact-match accuracy, the continual-learning accuracy
// matrix with average accuracy and forgetting, and chrF.
//
// Exact match compares normalised strings: ASCII lowercase, leading/trailing whitespace
// trimmed, inner whitespace runs collapsed to one space. So " Kitchen\n" matches "kitchen",
// and the leading space that task answers carry (procedural.h) never matters.
//
// AccuracyMatrix acc[i][j] = accuracy on task j after training on tasks 0..i.
//   average_accuracy(k) = mean_{j ≤ k} acc[k][j]                  (seen tasks only)
//   forgetting(k)       = mean_{j < k} ( max_{i < k} acc[i][j] − acc[k][j] )
// The forgetting is the standard definition of Chaudhry et al. 2018 ("Riemannian Walk for
// Incremental Learning", ECCV; also "Efficient Lifelong Learning with A-GEM", ICLR 2019):
// for each earlier task, the drop from its best accuracy at any earlier point to its
// accuracy now. It is 0 after the first task (no earlier tasks). The max runs over all
// i < k, as in the paper, including rows before task j was trained when they were measured
// (they may be left unset: entries with i >= j are required, those with i < j optional).
//
// chrF (Popović 2015, WMT) as sacreBLEU computes it by default (chrF2): character n-grams
// for n = 1..6 of the strings with all whitespace removed (Unicode code points of UTF-8;
// invalid bytes count as single characters), matches = clipped counts (multiset
// intersection). Per order n: P_n = matches / hyp n-grams, R_n = matches / ref n-grams,
// averaged over the "effective" orders where both sides have n-grams; then
//   chrF = 100 · (1 + β²) · P · R / (β² · P + R),  β = 2   (0 when P + R = 0).
// Corpus chrF sums the statistics of all sentences before this formula (not the mean of
// sentence scores), which is sacreBLEU's corpus_score.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace somnus::sleep {

// ------------------------------------------------------------------ exact match

// Lowercase (ASCII), trim, collapse whitespace runs. Declared again here (the same function,
// defined once in sleep/rewards.cpp for the answer-match reward), so that the experiment
// metric and the Sleep reward can never disagree on what counts as the same answer.
std::string normalize_answer(std::string_view s);
bool exact_match(std::string_view prediction, std::string_view reference);
// Fraction of exact matches in [0, 1]; throws somnus::Error when the lists differ in size
// or are empty.
double exact_match_accuracy(const std::vector<std::string>& predictions, const std::vector<std::string>& references);

// ------------------------------------------------------------------ accuracy matrix

class AccuracyMatrix {
 public:
  explicit AccuracyMatrix(int64_t num_tasks);
  int64_t num_tasks() const { return n_; }
  // Accuracy on task `on_task` after training through task `after_task`.
  void set(int64_t after_task, int64_t on_task, double accuracy);
  double at(int64_t after_task, int64_t on_task) const;  // throws when not set
  bool has(int64_t after_task, int64_t on_task) const;
  // Mean of acc[k][0..k]; needs those entries.
  double average_accuracy(int64_t after_task) const;
  // Chaudhry et al. 2018 (see above); needs acc[i][j] for j < k, j <= i <= k. 0 for k = 0.
  double forgetting(int64_t after_task) const;
  // The same at the last task.
  double final_average_accuracy() const { return average_accuracy(n_ - 1); }
  double final_forgetting() const { return forgetting(n_ - 1); }
  // Rows of the matrix, NaN where not set (for JSON results and heatmaps).
  std::vector<std::vector<double>> rows() const;

 private:
  void check_index(int64_t after_task, int64_t on_task, const char* what) const;
  int64_t n_;
  std::vector<double> acc_;  // (n, n) row-major, NaN = not set
};

// ------------------------------------------------------------------ chrF

struct ChrfConfig {
  int char_order = 6;
  double beta = 2.0;
};

// Per order n (index n-1): hypothesis n-grams, reference n-grams, matching n-grams.
struct ChrfStats {
  std::vector<int64_t> hyp, ref, match;
  explicit ChrfStats(int order = 6) : hyp(order, 0), ref(order, 0), match(order, 0) {}
  ChrfStats& operator+=(const ChrfStats& other);
};

ChrfStats chrf_statistics(std::string_view hypothesis, std::string_view reference, const ChrfConfig& cfg = {});
// The score in [0, 100] of (summed) statistics.
double chrf_from_statistics(const ChrfStats& stats, const ChrfConfig& cfg = {});
double chrf_sentence(std::string_view hypothesis, std::string_view reference, const ChrfConfig& cfg = {});
// Throws somnus::Error when the lists differ in size.
double chrf_corpus(const std::vector<std::string>& hypotheses, const std::vector<std::string>& references,
                   const ChrfConfig& cfg = {});

}  // namespace somnus::sleep
