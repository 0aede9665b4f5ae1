#include "sleep/tasks/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>

#include "tensor/format.h"

namespace somnus::sleep {

bool exact_match(std::string_view prediction, std::string_view reference) {
  return normalize_answer(prediction) == normalize_answer(reference);
}

double exact_match_accuracy(const std::vector<std::string>& predictions, const std::vector<std::string>& references) {
  SOMNUS_CHECK(predictions.size() == references.size(),
               "exact_match_accuracy: {} predictions but {} references", predictions.size(), references.size());
  SOMNUS_CHECK(!predictions.empty(), "exact_match_accuracy: no examples");
  int64_t hits = 0;
  for (size_t i = 0; i < predictions.size(); ++i) hits += exact_match(predictions[i], references[i]) ? 1 : 0;
  return static_cast<double>(hits) / static_cast<double>(predictions.size());
}

// ------------------------------------------------------------------ accuracy matrix

AccuracyMatrix::AccuracyMatrix(int64_t num_tasks) : n_(num_tasks) {
  SOMNUS_CHECK(num_tasks > 0, "AccuracyMatrix: num_tasks must be positive, got {}", num_tasks);
  acc_.assign(static_cast<size_t>(n_ * n_), std::numeric_limits<double>::quiet_NaN());
}

void AccuracyMatrix::check_index(int64_t after_task, int64_t on_task, const char* what) const {
  SOMNUS_CHECK(after_task >= 0 && after_task < n_ && on_task >= 0 && on_task < n_,
               "AccuracyMatrix::{}: index (after task {}, on task {}) out of range for {} tasks", what, after_task,
               on_task, n_);
}

void AccuracyMatrix::set(int64_t after_task, int64_t on_task, double accuracy) {
  check_index(after_task, on_task, "set");
  SOMNUS_CHECK(std::isfinite(accuracy), "AccuracyMatrix::set: accuracy {} is not finite", accuracy);
  acc_[static_cast<size_t>(after_task * n_ + on_task)] = accuracy;
}

bool AccuracyMatrix::has(int64_t after_task, int64_t on_task) const {
  check_index(after_task, on_task, "has");
  return !std::isnan(acc_[static_cast<size_t>(after_task * n_ + on_task)]);
}

double AccuracyMatrix::at(int64_t after_task, int64_t on_task) const {
  check_index(after_task, on_task, "at");
  const double v = acc_[static_cast<size_t>(after_task * n_ + on_task)];
  SOMNUS_CHECK(!std::isnan(v), "AccuracyMatrix: accuracy after task {} on task {} was never set", after_task,
               on_task);
  return v;
}

double AccuracyMatrix::average_accuracy(int64_t after_task) const {
  check_index(after_task, 0, "average_accuracy");
  double sum = 0.0;
  for (int64_t j = 0; j <= after_task; ++j) sum += at(after_task, j);
  return sum / static_cast<double>(after_task + 1);
}

double AccuracyMatrix::forgetting(int64_t after_task) const {
  check_index(after_task, 0, "forgetting");
  const int64_t k = after_task;
  if (k == 0) return 0.0;
  double sum = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    double best = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < k; ++i)
      if (i >= j || has(i, j)) best = std::max(best, at(i, j));  // rows before task j: optional
    sum += best - at(k, j);
  }
  return sum / static_cast<double>(k);
}

std::vector<std::vector<double>> AccuracyMatrix::rows() const {
  std::vector<std::vector<double>> out(static_cast<size_t>(n_));
  for (int64_t i = 0; i < n_; ++i)
    out[static_cast<size_t>(i)].assign(acc_.begin() + i * n_, acc_.begin() + (i + 1) * n_);
  return out;
}

// ------------------------------------------------------------------ chrF

namespace {

// Code points of UTF-8 text with whitespace removed; a byte that does not start a valid
// sequence stands for itself (0x110000 + byte), so arbitrary bytes never throw.
std::vector<uint32_t> chars_without_space(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    int len = 0;
    uint32_t cp = 0;
    if (b0 < 0x80) {
      len = 1;
      cp = b0;
    } else if ((b0 & 0xE0) == 0xC0) {
      len = 2;
      cp = b0 & 0x1F;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3;
      cp = b0 & 0x0F;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4;
      cp = b0 & 0x07;
    }
    bool ok = len > 0 && i + static_cast<size_t>(len) <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const auto b = static_cast<uint8_t>(s[i + static_cast<size_t>(k)]);
      if ((b & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (!ok) {
      out.push_back(0x110000u + b0);
      ++i;
      continue;
    }
    i += static_cast<size_t>(len);
    // Python's str.split() whitespace: ASCII space/control whitespace, NEL, NBSP and the
    // Unicode spaces.
    const bool space = cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F) || cp == 0x85 ||
                       cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
                       cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
    if (!space) out.push_back(cp);
  }
  return out;
}

struct NgramHash {
  size_t operator()(const std::u32string& s) const { return std::hash<std::u32string>{}(s); }
};

std::unordered_map<std::u32string, int64_t, NgramHash> count_ngrams(const std::vector<uint32_t>& c, size_t n) {
  std::unordered_map<std::u32string, int64_t, NgramHash> counts;
  if (c.size() < n) return counts;
  for (size_t i = 0; i + n <= c.size(); ++i) {
    std::u32string g(n, U'\0');
    for (size_t k = 0; k < n; ++k) g[k] = static_cast<char32_t>(c[i + k]);
    ++counts[g];
  }
  return counts;
}

void check_config(const ChrfConfig& cfg) {
  SOMNUS_CHECK(cfg.char_order >= 1 && cfg.char_order <= 32, "chrF: char_order must be in [1, 32], got {}",
               cfg.char_order);
  SOMNUS_CHECK(cfg.beta > 0.0 && std::isfinite(cfg.beta), "chrF: beta must be positive, got {}", cfg.beta);
}

}  // namespace

ChrfStats& ChrfStats::operator+=(const ChrfStats& other) {
  SOMNUS_CHECK(other.hyp.size() == hyp.size(), "ChrfStats: adding order {} to order {}", other.hyp.size(),
               hyp.size());
  for (size_t n = 0; n < hyp.size(); ++n) {
    hyp[n] += other.hyp[n];
    ref[n] += other.ref[n];
    match[n] += other.match[n];
  }
  return *this;
}

ChrfStats chrf_statistics(std::string_view hypothesis, std::string_view reference, const ChrfConfig& cfg) {
  check_config(cfg);
  const std::vector<uint32_t> h = chars_without_space(hypothesis), r = chars_without_space(reference);
  ChrfStats st(cfg.char_order);
  for (int n = 1; n <= cfg.char_order; ++n) {
    const size_t o = static_cast<size_t>(n - 1);
    st.hyp[o] = h.size() >= static_cast<size_t>(n) ? static_cast<int64_t>(h.size()) - n + 1 : 0;
    st.ref[o] = r.size() >= static_cast<size_t>(n) ? static_cast<int64_t>(r.size()) - n + 1 : 0;
    if (st.hyp[o] == 0 || st.ref[o] == 0) continue;
    const auto hc = count_ngrams(h, static_cast<size_t>(n));
    const auto rc = count_ngrams(r, static_cast<size_t>(n));
    int64_t m = 0;
    for (const auto& [g, c] : hc) {
      auto it = rc.find(g);
      if (it != rc.end()) m += std::min(c, it->second);
    }
    st.match[o] = m;
  }
  return st;
}

double chrf_from_statistics(const ChrfStats& st, const ChrfConfig& cfg) {
  check_config(cfg);
  SOMNUS_CHECK(st.hyp.size() == static_cast<size_t>(cfg.char_order),
               "chrF: statistics of order {} scored with char_order {}", st.hyp.size(), cfg.char_order);
  double precision = 0.0, recall = 0.0;
  int effective = 0;
  for (size_t o = 0; o < st.hyp.size(); ++o) {
    if (st.hyp[o] > 0 && st.ref[o] > 0) {
      precision += static_cast<double>(st.match[o]) / static_cast<double>(st.hyp[o]);
      recall += static_cast<double>(st.match[o]) / static_cast<double>(st.ref[o]);
      ++effective;
    }
  }
  if (effective == 0) return 0.0;
  precision /= effective;
  recall /= effective;
  if (precision + recall == 0.0) return 0.0;
  const double b2 = cfg.beta * cfg.beta;
  return 100.0 * (1.0 + b2) * precision * recall / (b2 * precision + recall);
}

double chrf_sentence(std::string_view hypothesis, std::string_view reference, const ChrfConfig& cfg) {
  return chrf_from_statistics(chrf_statistics(hypothesis, reference, cfg), cfg);
}

double chrf_corpus(const std::vector<std::string>& hypotheses, const std::vector<std::string>& references,
                   const ChrfConfig& cfg) {
  SOMNUS_CHECK(hypotheses.size() == references.size(), "chrf_corpus: {} hypotheses but {} references",
               hypotheses.size(), references.size());
  ChrfStats total(cfg.char_order);
  for (size_t i = 0; i < hypotheses.size(); ++i) total += chrf_statistics(hypotheses[i], references[i], cfg);
  return chrf_from_statistics(total, cfg);
}

}  // namespace somnus::sleep
