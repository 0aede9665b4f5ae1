// CPU twin of the batched GPU sampler (kernels/sampling.h), row-parallel with OpenMP.
//
// Algorithm per row (the GPU runs the same steps, one block per row):
//   1. m = max z, lse of the raw logits (for the policy log-prob);
//   2. w_i = exp((x_i − m)/τ);
//   3. if top_k or top_p filter: sort (w desc, index asc) — CUB segmented radix sort on GPU,
//      std::sort here; with top_k < V only the k first are selected and sorted: a heap
//      (std::partial_sort) for k <= 64, else a radix-select prefilter (a histogram of the
//      logits' top 16 key bits finds the bucket of the k-th largest; only the tokens at or
//      above it are candidates) and a partial sort of the candidates;
//      inclusive scan of w over the sorted order (CUB scan on GPU);
//      n = min(k, first j whose scan ≥ top_p · scan[k−1]) + 1 candidates;
//   4. inverse CDF: the first candidate whose running mass ≥ u · total (binary search in the
//      scan on GPU, a walk here), skipping zero weights.
// Cost: O(V) per row without filtering, O(V + c log k) with top_k (c candidates, about k
// plus one histogram bucket), O(V log V) with only top_p; 1 read of the logits.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/sampling.h"
#include "tensor/format.h"
#include "tensor/philox.h"
#include "tensor/profiler.h"

namespace somnus::kernels {

namespace {

// top_k up to this: std::partial_sort (a heap of k over one pass) is the fastest selection;
// above it the radix prefilter wins (measured at V = 4096…131072: k = 20 heap 2× faster,
// k = 100 about even, k = 1000 radix 2–3× faster).
constexpr int64_t kHeapSelectMaxK = 64;

// An unsigned key with the order of the doubles (NaN excluded; −0 counted as +0, since the
// sampler's order treats them as equal).
inline uint64_t order_key(double v) {
  const uint64_t u = std::bit_cast<uint64_t>(v == 0.0 ? 0.0 : v);
  return (u >> 63) != 0 ? ~u : (u | (uint64_t{1} << 63));
}

// The top-k prefilter, a radix select on the host (the CUDA sampler's idea): a 2^16-bucket
// histogram of the keys' top 16 bits (sign, exponent, 4 mantissa bits), scanned from the top
// to the bucket that holds the k-th largest logit; every token at or above that bucket (the
// top k plus the rest of the boundary bucket) is written to `out` in index order, and their
// count (>= k) returned. Two passes over the row, no comparisons between logits.
int64_t topk_candidates(const double* x, int64_t V, int64_t k, int32_t* out) {
  thread_local std::vector<uint32_t> hist(size_t{1} << 16);
  std::fill(hist.begin(), hist.end(), 0u);
  for (int64_t i = 0; i < V; ++i) ++hist[order_key(x[i]) >> 48];
  int64_t bucket = (int64_t{1} << 16) - 1;
  for (int64_t above = 0; bucket > 0; --bucket) {
    above += hist[static_cast<size_t>(bucket)];
    if (above >= k) break;
  }
  const uint64_t lo = static_cast<uint64_t>(bucket) << 48;
  int64_t n = 0;
  for (int64_t i = 0; i < V; ++i) {
    if (order_key(x[i]) >= lo) out[n++] = static_cast<int32_t>(i);
  }
  return n;
}

}  // namespace

double sampling_uniform(uint64_t seed, uint64_t stream, uint64_t step) {
  return philox::uniform53(philox::philox4x32_10(step, stream + 1, seed));
}

SampledRow sample_row(const double* x, int64_t V, const SamplingOptions& opt, double u, std::vector<int32_t>& order,
                      std::vector<double>& w) {
  SampledRow out;
  double m = -std::numeric_limits<double>::infinity();
  int64_t arg = -1;
  for (int64_t i = 0; i < V; ++i) {
    if (std::isnan(x[i])) {
      out.token = -1;
      return out;
    }
    if (x[i] > m) {
      m = x[i];
      arg = i;
    }
  }
  if (arg < 0 || !std::isfinite(m)) {
    out.token = -1;  // reported by the caller
    return out;
  }
  double s = 0.0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(x[i] - m);
  const double lse = m + std::log(s);
  const double inv_t = opt.temperature > 0.0 ? 1.0 / opt.temperature : 0.0;
  if (opt.temperature <= 0.0 || !std::isfinite(inv_t)) {
    out.token = arg;
    out.logprob = x[arg] - lse;
    return out;
  }
  w.resize(V);
  // The weights w_i = exp((x_i − m)/τ), of every token, or (top_k < V) of the k kept ones
  // only: the filter runs on the logits, and nothing after it reads another weight.
  const auto weigh = [&](int64_t i) { w[i] = std::exp((x[i] - m) * inv_t); };
  const int64_t k_keep = opt.top_k > 0 ? std::min<int64_t>(opt.top_k, V) : V;
  if (k_keep == V) {
    for (int64_t i = 0; i < V; ++i) weigh(i);
  }
  int64_t pick = arg;
  double total = 0.0;
  auto walk = [&](int64_t n, auto cand) {
    for (int64_t j = 0; j < n; ++j) total += w[cand(j)];
    const double target = u * total;
    double acc = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = cand(j);
      acc += w[i];
      if (acc >= target && w[i] > 0.0) {
        pick = i;
        return;
      }
    }
  };
  if (opt.top_k == 0 && opt.top_p >= 1.0) {
    walk(V, [](int64_t j) { return j; });
  } else {
    order.resize(V);
    std::iota(order.begin(), order.end(), 0);
    auto before = [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
    const int64_t k = opt.top_k > 0 ? std::min<int64_t>(opt.top_k, V) : V;
    if (k < V && k <= kHeapSelectMaxK) {
      std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
    } else if (k < V) {
      // Radix-select prefilter, then a partial sort of the candidates only. `before` is a
      // strict total order, so the first k (and their order) are the same as from sorting
      // the whole row.
      const int64_t n_cand = topk_candidates(x, V, k, order.data());
      std::partial_sort(order.begin(), order.begin() + k, order.begin() + n_cand, before);
    } else {
      std::sort(order.begin(), order.end(), before);
    }
    if (k < V) {
      for (int64_t j = 0; j < k; ++j) weigh(order[j]);  // order[0] = arg, the first maximum
    }
    int64_t n = k;
    if (opt.top_p < 1.0) {
      double kept = 0.0;
      for (int64_t j = 0; j < k; ++j) kept += w[order[j]];
      const double need = opt.top_p * kept;
      double acc = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        acc += w[order[j]];
        if (acc >= need) {
          n = j + 1;
          break;
        }
      }
    }
    walk(n, [&](int64_t j) { return static_cast<int64_t>(order[j]); });
  }
  out.token = pick;
  out.logprob = x[pick] - lse;
  out.sampling_logprob = std::log(w[pick] / total);
  return out;
}

#ifdef SOMNUS_WITH_CUDA
namespace cuda {
SampledTokens sample_tokens(const Tensor& logits, const SamplingOptions& opt);  // kernels/cuda/sampling.cu
}
#endif

SampledTokens sample_tokens(const Tensor& logits, const SamplingOptions& opt) {
  const char* op = "sample_tokens";
  const profiler::OpScope profile(op, {&logits});
  SOMNUS_CHECK(logits.defined() && logits.dim() == 2 && logits.size(1) > 0 && is_floating(logits.dtype()),
               "{}: expected floating logits (B, V) with V > 0, got {}", op,
               logits.defined() ? shape_str(logits.shape()) + " " + dtype_name(logits.dtype()) : std::string("undefined"));
  SOMNUS_CHECK(opt.temperature >= 0.0, "{}: temperature must be >= 0, got {}", op, opt.temperature);
  SOMNUS_CHECK(opt.top_k >= 0, "{}: top_k must be >= 0, got {}", op, opt.top_k);
  SOMNUS_CHECK(opt.top_p > 0.0 && opt.top_p <= 1.0, "{}: top_p must be in (0, 1], got {}", op, opt.top_p);
  if (logits.device().is_cuda()) {
#ifdef SOMNUS_WITH_CUDA
    return cuda::sample_tokens(logits, opt);
#else
    fail("{}: logits on {} but somnus was built without CUDA", op, logits.device().str());
#endif
  }
  const int64_t B = logits.size(0), V = logits.size(1);
  const std::vector<double> x = logits.to_vector();
  std::vector<double> tok(B), lp(B), slp(B);
  std::vector<int64_t> bad;
#pragma omp parallel if (B > 1 && B * V > 65536)
  {
    std::vector<int32_t> order;
    std::vector<double> w;
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < B; ++b) {
      const double u = sampling_uniform(opt.seed, opt.stream_offset + b, opt.step);
      const SampledRow r = sample_row(x.data() + b * V, V, opt, u, order, w);
      tok[b] = static_cast<double>(r.token);
      lp[b] = r.logprob;
      slp[b] = r.sampling_logprob;
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    SOMNUS_CHECK(tok[b] >= 0, "{}: row {} has no finite logit (NaN or all -inf)", op, b);
  }
  return {Tensor::from_vector(tok, {B}, DType::i64), Tensor::from_vector(lp, {B}), Tensor::from_vector(slp, {B})};
}

}  // namespace somnus::kernels
