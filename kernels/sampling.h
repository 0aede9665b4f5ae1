// Batched sampling over the vocabulary (issue 5): temperature, top-k, top-p, one token per
// row, with the log-prob of the sampled token. The CUDA kernel (kernels/cuda/sampling.cu)
// sorts each row with CUB's segmented radix sort, scans the weights with CUB, and draws its
// uniform with Philox on the device; the CPU twin (kernels/cpu/sampling.cpp) runs the same
// steps per row. Randomness matches nn/generate.h: row b at `step` uses
//   u_b = uniform53(Philox4x32-10(counter lo = step, hi = 1 + stream_offset + b, key = seed))
// so a row samples the same token on either device and independent of the batch size.
//
// Per row: z = logits / temperature (temperature 0: argmax, lowest index on ties); keep the
// top_k largest z (ties to the lower index; 0 = all); of those the smallest prefix by
// descending z whose renormalised mass is >= top_p; renormalise; inverse CDF with u_b.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace somnus {

struct SamplingOptions {
  double temperature = 1.0;
  int64_t top_k = 0;     // 0 = no top-k
  double top_p = 1.0;    // 1 = no nucleus
  uint64_t seed = 0;
  uint64_t step = 0;
  uint64_t stream_offset = 0;
};

struct SampledTokens {
  Tensor tokens;             // (B,) i64
  Tensor logprobs;           // (B,) f32: log_softmax(logits)[token] (temperature 1, unfiltered)
  Tensor sampling_logprobs;  // (B,) f32: log q(token) under the filtered distribution; 0 when greedy
};

// One row sampled by kernels::sample_row; token is -1 when the row holds a NaN or no finite logit.
struct SampledRow {
  int64_t token = -1;
  double logprob = 0.0, sampling_logprob = 0.0;
};

namespace kernels {
// logits (B, V) floating, on CPU or CUDA; the results live on the logits' device.
SampledTokens sample_tokens(const Tensor& logits, const SamplingOptions& opt = {});
// The uniform of row b (host), as the kernels draw it.
double sampling_uniform(uint64_t seed, uint64_t stream, uint64_t step);
// One row of host logits x[0..V) (f64) with the uniform u in (0, 1]: the CPU twin's per-row
// algorithm, also nn::generate's host sampler (which keeps f64 log-probs). `order` and
// `weights` are scratch space reused across rows.
SampledRow sample_row(const double* x, int64_t V, const SamplingOptions& opt, double u, std::vector<int32_t>& order,
                      std::vector<double>& weights);
}  // namespace kernels

}  // namespace somnus
