// Batched sampler (kernels/sampling.h) on CPU: against a naive f64 textbook sampler
// (softmax at temperature, top-k set, nucleus prefix, inverse CDF) with the same Philox
// uniforms, token for token and log-prob for log-prob; empirical frequencies against the
// filtered distribution; greedy; batch independence; errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/sampling.h"
#include "tensor/random.h"

namespace somnus {
namespace {

// The filtered, renormalised distribution q of one row (textbook, f64).
std::vector<double> filtered(const std::vector<double>& x, double t, int64_t k, double p) {
  const int64_t V = static_cast<int64_t>(x.size());
  std::vector<int64_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return x[a] > x[b]; });
  const double m = x[idx[0]];
  std::vector<double> q(V, 0.0);
  const int64_t kk = k > 0 ? std::min(k, V) : V;
  double z = 0.0;
  for (int64_t j = 0; j < kk; ++j) z += std::exp((x[idx[j]] - m) / t);
  double acc = 0.0, kept = 0.0;
  for (int64_t j = 0; j < kk; ++j) {
    const double pj = std::exp((x[idx[j]] - m) / t) / z;
    q[idx[j]] = pj;
    kept += pj;
    acc += pj;
    if (acc >= p) break;
  }
  for (double& v : q) v /= kept;
  return q;
}

// Inverse CDF over the kept tokens in the sampler's walk order (vocab order without a
// filter, descending logits with one).
int64_t textbook_pick(const std::vector<double>& x, const std::vector<double>& q, double u, bool sorted) {
  const int64_t V = static_cast<int64_t>(x.size());
  std::vector<int64_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  if (sorted) std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return x[a] > x[b]; });
  double acc = 0.0;
  for (int64_t i : idx) {
    acc += q[i];
    if (acc >= u && q[i] > 0) return i;
  }
  return -1;
}

struct Case {
  double t;
  int64_t k;
  double p;
};

TEST(SampleTokens, MatchesTextbookSampler) {
  Generator g(3);
  const int64_t B = 16, V = 300;
  Tensor logits = randn({B, V}, g, DType::f32, Device::cpu(), 0.0, 2.0);
  const std::vector<double> all = logits.to_vector();
  for (const Case c : {Case{1.0, 0, 1.0}, Case{0.7, 20, 1.0}, Case{1.3, 0, 0.8}, Case{0.9, 50, 0.5}}) {
    SamplingOptions o;
    o.temperature = c.t;
    o.top_k = c.k;
    o.top_p = c.p;
    o.seed = 42;
    o.step = 5;
    const SampledTokens s = kernels::sample_tokens(logits, o);
    const std::vector<double> tok = s.tokens.to_vector(), lp = s.logprobs.to_vector(), slp = s.sampling_logprobs.to_vector();
    int mismatches = 0;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> x(all.begin() + b * V, all.begin() + (b + 1) * V);
      const std::vector<double> q = filtered(x, c.t, c.k, c.p);
      const double u = kernels::sampling_uniform(42, b, 5);
      const int64_t ref = textbook_pick(x, q, u, c.k > 0 || c.p < 1.0);
      mismatches += ref != static_cast<int64_t>(tok[b]);
      const int64_t t = static_cast<int64_t>(tok[b]);
      ASSERT_GE(t, 0);
      ASSERT_GT(q[t], 0.0) << "sampled a filtered-out token";
      double m = *std::max_element(x.begin(), x.end()), z = 0;
      for (double v : x) z += std::exp(v - m);
      EXPECT_NEAR(lp[b], x[t] - m - std::log(z), 1e-5);
      EXPECT_NEAR(slp[b], std::log(q[t]), 1e-5);
    }
    // Rounding can move a draw that lands within ~1e-15 of a CDF step; none expected here.
    EXPECT_EQ(mismatches, 0) << "t " << c.t << " k " << c.k << " p " << c.p;
  }
}

TEST(SampleTokens, FrequenciesMatchFilteredDistribution) {
  const std::vector<double> x = {2.0, 1.0, 0.5, 0.0, -1.0, 1.5};
  Tensor logits = Tensor::from_vector(x, {1, 6});
  const std::vector<double> q = filtered(x, 0.8, 4, 0.9);
  std::vector<double> count(6, 0.0);
  const int n = 20000;
  SamplingOptions o;
  o.temperature = 0.8;
  o.top_k = 4;
  o.top_p = 0.9;
  o.seed = 7;
  for (int i = 0; i < n; ++i) {
    o.step = i;
    count[static_cast<size_t>(kernels::sample_tokens(logits, o).tokens.item())] += 1;
  }
  for (int i = 0; i < 6; ++i) {
    const double sd = std::sqrt(q[i] * (1 - q[i]) / n) + 1e-12;
    EXPECT_NEAR(count[i] / n, q[i], 5 * sd + 1e-9) << "token " << i;
  }
  EXPECT_EQ(count[4], 0.0);  // outside the top-4
}

TEST(SampleTokens, GreedyAndBatchIndependence) {
  Generator g(9);
  Tensor logits = randn({5, 40}, g);
  SamplingOptions o;
  o.temperature = 0.0;
  const std::vector<double> tok = kernels::sample_tokens(logits, o).tokens.to_vector();
  const std::vector<double> x = logits.to_vector();
  for (int b = 0; b < 5; ++b) {
    EXPECT_EQ(tok[b], std::max_element(x.begin() + b * 40, x.begin() + (b + 1) * 40) - (x.begin() + b * 40));
  }
  // Row 3 of the batch samples what it samples alone with stream_offset 3.
  o.temperature = 1.0;
  o.seed = 11;
  const double full = kernels::sample_tokens(logits, o).tokens.to_vector()[3];
  o.stream_offset = 3;
  EXPECT_EQ(kernels::sample_tokens(logits.slice(0, 3, 4), o).tokens.item(), full);
}

// The sampler before its top-k prefilter: every row fully sorted (logit desc, index asc),
// then the same top-k / top-p cut and inverse-CDF walk, in the same order of operations.
SampledRow full_sort_row(const double* x, int64_t V, const SamplingOptions& opt, double u) {
  SampledRow out;
  const int64_t arg = std::max_element(x, x + V) - x;  // first maximum
  const double m = x[arg];
  double s = 0.0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(x[i] - m);
  const double lse = m + std::log(s);
  const double inv_t = 1.0 / opt.temperature;
  std::vector<double> w(V);
  for (int64_t i = 0; i < V; ++i) w[i] = std::exp((x[i] - m) * inv_t);
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  const int64_t k = opt.top_k > 0 ? std::min<int64_t>(opt.top_k, V) : V;
  int64_t n = k;
  if (opt.top_p < 1.0) {
    double kept = 0.0;
    for (int64_t j = 0; j < k; ++j) kept += w[order[j]];
    double acc = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      acc += w[order[j]];
      if (acc >= opt.top_p * kept) {
        n = j + 1;
        break;
      }
    }
  }
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) total += w[order[j]];
  int64_t pick = arg;
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    acc += w[order[j]];
    if (acc >= u * total && w[order[j]] > 0.0) {
      pick = order[j];
      break;
    }
  }
  out.token = pick;
  out.logprob = x[pick] - lse;
  out.sampling_logprob = std::log(w[pick] / total);
  return out;
}

// With top_k > 0 the sampler selects the k first tokens (a heap for small k, a radix-select
// prefilter above) before sorting only those; tokens and both log-probs must equal the
// full-sort sampler's bit for bit, for k from 1 to V, with top_p, with many tied logits
// (rounded to a coarse grid, so the ties' index order matters; +0 and −0), and -inf logits.
TEST(SampleTokens, TopKPrefilterEqualsFullSort) {
  Generator g(21);
  const int64_t B = 24, V = 517;
  std::vector<double> x = randn({B, V}, g, DType::f64, Device::cpu(), 0.0, 2.0).to_vector();
  for (int64_t b = 0; b < B; b += 2) {
    for (int64_t i = 0; i < V; ++i) x[b * V + i] = std::round(x[b * V + i] * 2.0) / 2.0;  // ties
  }
  for (int64_t i = 0; i < V; i += 7) x[3 * V + i] = -INFINITY;
  for (int64_t i = 0; i < V; ++i) x[5 * V + i] = i % 2 == 0 ? 0.0 : -0.0;  // all equal: +0 and −0 ties
  for (int64_t i = 0; i < V; ++i) x[7 * V + i] = 1e-3 * std::round(x[7 * V + i]);  // few distinct values
  std::vector<int32_t> order;
  std::vector<double> w;
  int compared = 0;
  // k <= 64 takes the heap selection, larger k the radix-select prefilter.
  for (const int64_t k : {int64_t{1}, int64_t{2}, int64_t{5}, int64_t{64}, int64_t{65}, int64_t{200}, V - 1, V}) {
    for (const double p : {1.0, 0.9, 0.3}) {
      SamplingOptions o;
      o.temperature = 0.8;
      o.top_k = k;
      o.top_p = p;
      for (int64_t b = 0; b < B; ++b) {
        const double u = kernels::sampling_uniform(5, b, static_cast<uint64_t>(k));
        const SampledRow got = kernels::sample_row(x.data() + b * V, V, o, u, order, w);
        const SampledRow ref = full_sort_row(x.data() + b * V, V, o, u);
        ASSERT_EQ(got.token, ref.token) << "k " << k << " p " << p << " row " << b;
        EXPECT_EQ(got.logprob, ref.logprob) << "k " << k << " p " << p << " row " << b;
        EXPECT_EQ(got.sampling_logprob, ref.sampling_logprob) << "k " << k << " p " << p << " row " << b;
        ++compared;
      }
    }
  }
  EXPECT_EQ(compared, 8 * 3 * B);
  // The batched entry point runs the same rows.
  SamplingOptions o;
  o.temperature = 1.1;
  o.top_k = 140;
  o.seed = 9;
  const Tensor logits = Tensor::from_vector(x, {B, V}, DType::f64);
  const std::vector<double> tok = kernels::sample_tokens(logits, o).tokens.to_vector();
  for (int64_t b = 0; b < B; ++b) {
    const double u = kernels::sampling_uniform(9, b, 0);
    EXPECT_EQ(static_cast<int64_t>(tok[b]), full_sort_row(x.data() + b * V, V, o, u).token) << "row " << b;
  }
}

TEST(SampleTokens, BadInputErrors) {
  SamplingOptions o;
  EXPECT_THROW(kernels::sample_tokens(Tensor::zeros({4}), o), Error);
  o.top_p = 0.0;
  EXPECT_THROW(kernels::sample_tokens(Tensor::zeros({2, 4}), o), Error);
  o.top_p = 1.0;
  o.temperature = -1;
  EXPECT_THROW(kernels::sample_tokens(Tensor::zeros({2, 4}), o), Error);
  o.temperature = 1;
  EXPECT_THROW(kernels::sample_tokens(Tensor::from_vector({0, NAN}, {1, 2}), o), Error);
}

}  // namespace
}  // namespace somnus
