// Split-K flash-decoding on CUDA (kernels/ops.h attention_decode): a few query rows against
// a long KV cache. The S keys are cut into n_split chunks; each chunk gives a partial
// (o_s, lse_s) in f32, then attn_combine merges them: lse = log Σ e^lse_s,
// o = Σ e^(lse_s − lse) o_s. The CPU twin is kernels/cpu/attention.cpp.
#include "kernels/cuda/attention_common.cuh"

namespace somnus::kernels::cuda {

namespace {

using namespace attn;

// A warp per (b, h, query row): combines the n_split partials.
template <class T, int D>
__global__ void attn_combine(const float* __restrict__ o_part, const float* __restrict__ lse_part, T* __restrict__ o,
                             float* __restrict__ lse, int64_t rows, int Tq, int n_split) {
  constexpr int E = D / 32;
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t bh = row / Tq, i = row % Tq;
  float mx = -INFINITY;
  for (int s = 0; s < n_split; ++s) mx = fmaxf(mx, lse_part[(bh * n_split + s) * Tq + i]);
  float sum = 0.f;
  for (int s = 0; s < n_split; ++s) sum += __expf(lse_part[(bh * n_split + s) * Tq + i] - mx);
  const float lse_row = mx + logf(sum);
  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.f;
  for (int s = 0; s < n_split; ++s) {
    const int64_t idx = (bh * n_split + s) * Tq + i;
    const float w = __expf(lse_part[idx] - lse_row);
    if (w > 0.f) {
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] += w * o_part[idx * D + lane + 32 * e];
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) o[row * D + lane + 32 * e] = static_cast<T>(acc[e]);
  if (lane == 0) lse[row] = lse_row;
}

}  // namespace

void attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t q_offset,
                      int64_t num_splits, const Tensor& o, const Tensor& lse) {
  set_device(q);
  const AttnDims d = dims_of(q, k, causal, scale, q_offset);
  const int chunk = static_cast<int>((d.S + num_splits - 1) / num_splits);
  const int n_split = (d.S + chunk - 1) / chunk;
  if (n_split > 65535) throw_error("attention_decode (CUDA): too many splits: " + std::to_string(n_split));
  const int64_t rows = static_cast<int64_t>(d.B) * d.Hq * d.T;
  Tensor o_part = Tensor::empty({rows * n_split * q.size(3)}, DType::f32, q.device());
  Tensor lse_part = Tensor::empty({rows * n_split}, DType::f32, q.device());
  visit_attn_dtype(q.dtype(), "attention_decode", [&](auto tag) {
    using T = decltype(tag);
    visit_head_dim(q.size(3), "attention_decode", [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      launch_rows<T, D>(q, k, v, d, n_split, chunk, Tensor(), Tensor(), o_part.data<float>(), lse_part.data<float>());
      attn_combine<T, D><<<grid_for(rows, 4), 128>>>(o_part.data<float>(), lse_part.data<float>(), o.data<T>(),
                                                     lse.data<float>(), rows, d.T, n_split);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace somnus::kernels::cuda
