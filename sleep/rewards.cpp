#include "sleep/rewards.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <utility>

#include "autograd/grad_mode.h"
#include "kernels/losses.h"
#include "tensor/format.h"

namespace somnus::sleep {

// ---------------------------------------------------------------- r_abs

int64_t levenshtein(std::span<const TokenId> a, std::span<const TokenId> b) {
  if (a.size() < b.size()) std::swap(a, b);  // the row runs over the shorter one, b
  const size_t m = b.size();
  if (m == 0) return static_cast<int64_t>(a.size());
  // row[j] = lev(a[0, i), b[0, j)) for the current i.
  std::vector<int64_t> row(m + 1);
  for (size_t j = 0; j <= m; ++j) row[j] = static_cast<int64_t>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int64_t diag = row[0];  // lev(a[0, i−1), b[0, j−1))
    row[0] = static_cast<int64_t>(i);
    for (size_t j = 1; j <= m; ++j) {
      const int64_t up = row[j];  // lev(a[0, i−1), b[0, j))
      const int64_t sub = diag + (a[i - 1] == b[j - 1] ? 0 : 1);
      row[j] = std::min({sub, up + 1, row[j - 1] + 1});
      diag = up;
    }
  }
  return row[m];
}

double absolute_reward(std::span<const TokenId> completion, std::span<const TokenId> reference, double z0) {
  SOMNUS_CHECK(z0 >= 0.0, "absolute_reward: z0 must be >= 0, got {}", z0);
  const size_t longest = std::max(completion.size(), reference.size());
  if (longest == 0) return 1.0;
  const int64_t lev = levenshtein(completion, reference);
  if (static_cast<double>(lev) > z0) return 0.0;
  return 1.0 - static_cast<double>(lev) / static_cast<double>(longest);
}

double absolute_reward_relative(std::span<const TokenId> completion, std::span<const TokenId> reference,
                                double z0_fraction) {
  SOMNUS_CHECK(z0_fraction >= 0.0, "absolute_reward_relative: z0_fraction must be >= 0, got {}", z0_fraction);
  const double longest = static_cast<double>(std::max(completion.size(), reference.size()));
  return absolute_reward(completion, reference, z0_fraction * longest);
}

// ---------------------------------------------------------------- the mix

double mix_reward(double r_sem, double r_abs, double gamma) {
  SOMNUS_CHECK(gamma >= 0.0 && gamma <= 1.0, "mix_reward: gamma must be in [0, 1], got {}", gamma);
  return gamma * r_sem + (1.0 - gamma) * r_abs;
}

std::vector<double> mix_rewards(const std::vector<double>& r_sem, const std::vector<double>& r_abs, double gamma) {
  if (r_sem.empty()) return r_abs;
  SOMNUS_CHECK(r_sem.size() == r_abs.size(), "mix_rewards: {} semantic rewards vs {} absolute rewards", r_sem.size(),
               r_abs.size());
  std::vector<double> r(r_abs.size());
  for (size_t i = 0; i < r.size(); ++i) r[i] = mix_reward(r_sem[i], r_abs[i], gamma);
  return r;
}

// ---------------------------------------------------------------- group advantages

std::vector<double> group_advantages(const std::vector<double>& rewards, int64_t group_size, double eps) {
  SOMNUS_CHECK(!rewards.empty(), "group_advantages: no rewards");
  const int64_t n = static_cast<int64_t>(rewards.size());
  const Tensor r = Tensor::from_vector(rewards, {n}, DType::f64);
  return kernels::group_advantages(r, group_size, kernels::AdvantageScaling::group, eps).to_vector();
}

// ---------------------------------------------------------------- answer match

std::string normalize_answer(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool pending_space = false;
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (std::isspace(c)) {
      pending_space = !out.empty();  // leading whitespace is dropped
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(static_cast<char>(std::tolower(c)));
  }
  return out;  // trailing whitespace never gets written
}

AnswerMatchReward::AnswerMatchReward(Extractor extract, std::unique_ptr<SemanticReward> fallback)
    : extract_(std::move(extract)), fallback_(std::move(fallback)) {
  SOMNUS_CHECK(static_cast<bool>(extract_), "AnswerMatchReward: the answer extractor is empty");
}

std::string AnswerMatchReward::name() const {
  return fallback_ ? "answer_match, else " + fallback_->name() : "answer_match";
}

std::vector<double> AnswerMatchReward::score(const std::vector<TokenId>& prefix, const std::vector<TokenId>& reference,
                                             const std::vector<std::vector<TokenId>>& completions) {
  const auto answer_of = [&](const std::vector<TokenId>& continuation) -> std::optional<std::string> {
    std::vector<TokenId> seq(prefix);
    seq.insert(seq.end(), continuation.begin(), continuation.end());
    std::optional<std::string> a = extract_(seq);
    if (!a) return std::nullopt;
    std::string n = normalize_answer(*a);
    if (n.empty()) return std::nullopt;
    return n;
  };
  const std::optional<std::string> want = answer_of(reference);
  ++references_;
  if (!want && fallback_) return fallback_->score(prefix, reference, completions);
  std::vector<double> out(completions.size(), 0.0);
  if (!want) return out;
  ++with_answer_;
  for (size_t i = 0; i < completions.size(); ++i) {
    const std::optional<std::string> got = answer_of(completions[i]);
    out[i] = got && *got == *want ? 1.0 : 0.0;
  }
  return out;
}

// ---------------------------------------------------------------- hidden cosine

HiddenCosineReward::HiddenCosineReward(TeacherForward teacher, double threshold, Device device)
    : teacher_(std::move(teacher)), threshold_(threshold), device_(device) {
  SOMNUS_CHECK(static_cast<bool>(teacher_), "HiddenCosineReward: the teacher forward is empty");
  SOMNUS_CHECK(threshold >= -1.0 && threshold <= 1.0, "HiddenCosineReward: threshold must be in [-1, 1], got {}",
               threshold);
}

std::vector<double> HiddenCosineReward::cosines(const std::vector<TokenId>& prefix,
                                                const std::vector<TokenId>& reference,
                                                const std::vector<std::vector<TokenId>>& completions) {
  const char* op = "HiddenCosineReward";
  std::vector<const std::vector<TokenId>*> rows{&reference};  // row 0: the reference
  for (const auto& c : completions) rows.push_back(&c);
  const int64_t B = static_cast<int64_t>(rows.size());
  const int64_t P = static_cast<int64_t>(prefix.size());
  int64_t longest = 0;
  for (const auto* r : rows) longest = std::max<int64_t>(longest, static_cast<int64_t>(r->size()));
  std::vector<double> out(completions.size(), 0.0);
  if (longest == 0) {  // every continuation is empty: all equal the (empty) reference
    std::fill(out.begin(), out.end(), 1.0);
    return out;
  }
  const int64_t T = P + longest;
  std::vector<double> ids(static_cast<size_t>(B * T), 0.0);  // right-padded with token 0
  for (int64_t b = 0; b < B; ++b) {
    std::copy(prefix.begin(), prefix.end(), ids.begin() + b * T);
    std::copy(rows[static_cast<size_t>(b)]->begin(), rows[static_cast<size_t>(b)]->end(), ids.begin() + b * T + P);
  }
  Tensor hidden;  // (B, T, C)
  {
    NoGradGuard no_grad;
    hidden = teacher_(Tensor::from_vector(ids, {B, T}, DType::i64, device_));
  }
  SOMNUS_CHECK(hidden.defined() && hidden.dim() == 3 && hidden.size(0) == B && hidden.size(1) == T,
               "{}: the teacher forward must return ({}, {}, C) hidden states, got {}", op, B, T,
               hidden.defined() ? shape_str(hidden.shape()) : std::string("undefined"));
  const int64_t C = hidden.size(2);
  const std::vector<double> h = hidden.to_vector();
  // Mean over the continuation tokens of row b, positions [P, P + len).
  const auto pooled = [&](int64_t b) {
    const int64_t len = static_cast<int64_t>(rows[static_cast<size_t>(b)]->size());
    std::vector<double> m(static_cast<size_t>(C), 0.0);
    for (int64_t t = P; t < P + len; ++t) {
      const double* x = h.data() + (b * T + t) * C;
      for (int64_t c = 0; c < C; ++c) m[static_cast<size_t>(c)] += x[c];
    }
    for (double& v : m) v /= static_cast<double>(len);
    return m;
  };
  const bool ref_empty = reference.empty();
  const std::vector<double> ref = ref_empty ? std::vector<double>() : pooled(0);
  for (size_t i = 0; i < completions.size(); ++i) {
    if (ref_empty || completions[i].empty()) {
      out[i] = ref_empty && completions[i].empty() ? 1.0 : 0.0;
      continue;
    }
    const std::vector<double> x = pooled(static_cast<int64_t>(i) + 1);
    double dot = 0.0, nx = 0.0, nr = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      dot += x[static_cast<size_t>(c)] * ref[static_cast<size_t>(c)];
      nx += x[static_cast<size_t>(c)] * x[static_cast<size_t>(c)];
      nr += ref[static_cast<size_t>(c)] * ref[static_cast<size_t>(c)];
    }
    const double den = std::sqrt(nx) * std::sqrt(nr);
    out[i] = den > 0.0 && std::isfinite(den) ? std::clamp(dot / den, -1.0, 1.0) : 0.0;
  }
  return out;
}

std::vector<double> HiddenCosineReward::score(const std::vector<TokenId>& prefix, const std::vector<TokenId>& reference,
                                              const std::vector<std::vector<TokenId>>& completions) {
  std::vector<double> c = cosines(prefix, reference, completions);
  for (double& v : c) v = v >= threshold_ ? 1.0 : 0.0;
  return c;
}

}  // namespace somnus::sleep
