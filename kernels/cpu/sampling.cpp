// CPU twin of the batched GPU sampler (kernels/sampling.h), row-parallel with OpenMP.
//
// Algorithm per row (the GPU runs the same steps, one block per row):
//   1. m = max z, lse of the raw logits (for the policy log-prob);
//   2. w_i = exp((x_i − m)/τ);
//   3. if top_k or top_p filter: sort (w desc, index asc) — CUB segmented radix sort on GPU,
//      std::sort here; inclusive scan of w over the sorted order (CUB scan on GPU);
//      n = min(k, first j whose scan ≥ top_p · scan[k−1]) + 1 candidates;
//   4. inverse CDF: the first candidate whose running mass ≥ u · total (binary search in the
//      scan on GPU, a walk here), skipping zero weights.
// Cost: O(V) per row without filtering, O(V log V) with; 1 read of the logits.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/sampling.h"
#include "tensor/format.h"
#include "tensor/philox.h"

namespace somnus::kernels {

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
  for (int64_t i = 0; i < V; ++i) w[i] = std::exp((x[i] - m) * inv_t);
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
    if (k < V) {
      std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
    } else {
      std::sort(order.begin(), order.end(), before);
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
