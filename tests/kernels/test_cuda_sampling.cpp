// The CUDA sampler's top-k radix-select prefilter (kernels/cuda/sampling.cu) against the full
// segmented sort on the same device (SOMNUS_SAMPLING_PREFILTER=0) and against the CPU twin.
// The prefilter sorts a superset of the top k, so with the same f32 weights the pick must be
// identical to the full sort's, token for token and bit for bit in the log-probs: ties at the
// boundary (integer logits), k = 1 and k at the prefilter's limit, top-p inside top-k, and a
// boundary bucket larger than the candidate buffer (all but 10 logits −inf: the batch falls
// back to the full sort).
//
// Without a CUDA device every test calls GTEST_SKIP() with a message (ctest label `cuda`).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/ops.h"
#include "kernels/sampling.h"
#include "tensor/random.h"
#include "tests/testing.h"

using namespace somnus;

namespace {

const char* const kNoCuda = "no CUDA device: CUDA sampling tests need a GPU (run tools/gpu_check.sh on one)";

SampledTokens sample_gpu(const Tensor& logits, const SamplingOptions& o, bool prefilter) {
  if (!prefilter) setenv("SOMNUS_SAMPLING_PREFILTER", "0", 1);
  SampledTokens s = kernels::sample_tokens(logits.to(Device::cuda(0)), o);
  unsetenv("SOMNUS_SAMPLING_PREFILTER");
  return SampledTokens{s.tokens.cpu(), s.logprobs.cpu(), s.sampling_logprobs.cpu()};
}

void expect_same(const SampledTokens& a, const SampledTokens& b, const std::string& what) {
  EXPECT_EQ(a.tokens.to_vector(), b.tokens.to_vector()) << what;
  EXPECT_EQ(a.logprobs.to_vector(), b.logprobs.to_vector()) << what;
  EXPECT_EQ(a.sampling_logprobs.to_vector(), b.sampling_logprobs.to_vector()) << what;
}

TEST(CudaSamplingPrefilter, EqualsTheFullSortAndTheCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  uint64_t seed = 1;
  // SOMNUS_TEST_QUICK=1 (compute-sanitizer runs, tools/gpu_check.sh): the smallest vocabulary.
  const char* quick = std::getenv("SOMNUS_TEST_QUICK");
  const std::vector<int64_t> vocabs =
      quick != nullptr && std::string(quick) == "1" ? std::vector<int64_t>{5000} : std::vector<int64_t>{5000, 50257, 128256};
  for (int64_t V : vocabs) {
    for (bool ties : {false, true}) {
      Generator g(seed++);
      Tensor logits = randn({16, V}, g, DType::f32, Device::cpu(), 0.0, 3.0);
      if (ties) {  // a few distinct values, many ties at every boundary
        std::vector<double> x = logits.to_vector();
        for (double& v : x) v = std::round(v);
        logits = Tensor::from_vector(x, {16, V});
      }
      for (auto [k, p] : {std::tuple{int64_t{1}, 1.0}, std::tuple{int64_t{7}, 1.0}, std::tuple{int64_t{50}, 1.0},
                          std::tuple{int64_t{50}, 0.8}, std::tuple{int64_t{1000}, 0.95},
                          std::tuple{int64_t{4096}, 1.0}}) {
        SamplingOptions o;
        o.temperature = 0.8;
        o.top_k = k;
        o.top_p = p;
        o.seed = 7;
        o.step = static_cast<uint64_t>(k);
        const std::string what = fmt::format("V {} ties {} k {} p {}", V, ties, k, p);
        const SampledTokens pre = sample_gpu(logits, o, true), full = sample_gpu(logits, o, false);
        expect_same(pre, full, what);
        // The CPU twin weighs in f64, the GPU in f32: a draw within ~1e-6 of a CDF step may
        // land on the neighbouring token, so at most one row of 16 may differ.
        const std::vector<double> a = pre.tokens.to_vector(), c = kernels::sample_tokens(logits, o).tokens.to_vector();
        int differ = 0;
        for (size_t i = 0; i < a.size(); ++i) differ += a[i] != c[i];
        EXPECT_LE(differ, 1) << what;
      }
    }
  }
}

TEST(CudaSamplingPrefilter, HugeBoundaryBucketFallsBackToTheFullSort) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  const int64_t V = 50000;
  Generator g(3);
  std::vector<double> x(static_cast<size_t>(4 * V), -INFINITY);
  const std::vector<double> finite = randn({4, 10}, g).to_vector();
  for (int64_t b = 0; b < 4; ++b) {
    for (int64_t i = 0; i < 10; ++i) x[static_cast<size_t>(b * V + 1000 * i)] = finite[static_cast<size_t>(b * 10 + i)];
  }
  const Tensor logits = Tensor::from_vector(x, {4, V});
  SamplingOptions o;
  o.top_k = 100;  // beyond the 10 finite logits: the boundary bucket is the −inf one
  o.seed = 5;
  const SampledTokens pre = sample_gpu(logits, o, true), full = sample_gpu(logits, o, false);
  expect_same(pre, full, "fallback");
  for (double t : pre.tokens.to_vector()) EXPECT_EQ(static_cast<int64_t>(t) % 1000, 0) << "a −inf token was drawn";
}

}  // namespace
