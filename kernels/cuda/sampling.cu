// CUDA batched sampler (kernels/sampling.h); CPU twin: kernels/cpu/sampling.cpp.
//
// Algorithm, logits (B, V) in f32:
//   1. stats kernel, one block per row: max, argmax (lowest index on ties), logsumexp (for the
//      policy log-prob). Greedy rows stop here.
//   2. unfiltered (top_k = 0, top_p = 1): one block per row walks the vocabulary in tiles of
//      kThreads with cub::BlockScan over w = exp((x − m)/τ) and a running carry, and picks the
//      first token whose inclusive mass reaches u·Σw (two passes: Σw, then the scan). No sort.
//   3. filtered: cub::DeviceSegmentedRadixSort::SortPairsDescending of (logit, index) per row
//      (radix sort is stable, so ties keep the lower index first), then one block per row
//      scans the sorted weights (cub::BlockScan) to find the top-k mass, the nucleus cut
//      n (first prefix with mass ≥ top_p · kept), and the inverse-CDF pick inside it.
//      With 0 < top_k ≤ kPrefilterMaxK (< V) only candidates are sorted, as in the CPU twin's
//      radix-select prefilter: topk_select_kernel (one block per row) builds a 4096-bucket
//      shared-memory histogram of the top 12 bits of an order-preserving key of each logit,
//      finds the bucket that holds the k-th largest, refines it with a second 4096-bucket
//      histogram of the next 12 bits (over that bucket's logits only), and writes every logit
//      whose top 24 key bits are at or above the boundary — the top k plus the rest of the
//      boundary bucket — in index order (a block scan per tile of kThreads) to a (B, cap) buffer,
//      cap = k + kPrefilterSlack. The segmented sort then runs over the candidates only
//      (segment ends = the counts). A superset of the top k sorted by (logit desc, index asc)
//      starts with exactly the top k, so the pick is the same as after the full sort. If a row
//      has more candidates than cap (a huge tie at the boundary, e.g. k beyond the finite
//      logits), the whole batch takes the full sort (as does SOMNUS_SAMPLING_PREFILTER=0). top_p alone (no top_k) still sorts whole
//      rows.
//   u is Philox4x32-10 (counter lo = step, hi = 1 + stream_offset + b, key = seed), two lanes
//   to a 53-bit double in (0, 1], drawn on the device — the same number the CPU twin uses.
// Cost: O(V) per row unfiltered; filtered adds the radix sort (4 passes over 8 bytes per
// element) and a scan of the kept prefix; with the top-k prefilter, 3 reads of the row (two
// histograms, the compaction) and a sort of ~k candidates instead.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/ops.h"
#include "kernels/sampling.h"
#include "tensor/philox.h"

namespace somnus::kernels::cuda {

namespace {

// Threads per row block. One block per row (B is often below the SM count), so the block is
// as wide as it can be: every per-row pass is latency bound at B = 64 (H100, 2026-11-26: 256
// threads gave 417 µs for unfiltered sampling of 64 × 128256 logits). 512, not 1024: at 1024
// threads (64 registers) pick_kernel and topk_select_kernel spill 340 and 252 bytes.
constexpr int kThreads = 512;
constexpr int kUnroll = 4;  // loads in flight per thread in the whole-row passes
// The top-k prefilter: used for 0 < top_k <= kPrefilterMaxK (and top_k < V); each row keeps
// at most top_k + kPrefilterSlack candidates (else the batch falls back to the full sort).
constexpr int64_t kPrefilterMaxK = 4096;
constexpr int64_t kPrefilterSlack = 4096;
constexpr int kHistBits = 12, kHistBins = 1 << kHistBits;
using BlockReduceF = cub::BlockReduce<float, kThreads>;
using BlockScanD = cub::BlockScan<double, kThreads>;

__device__ double uniform53_device(uint64_t seed, uint64_t stream, uint64_t step) {
  return philox::uniform53(philox::philox4x32_10(step, stream + 1, seed));
}

struct ArgMax {
  float v;
  int64_t i;
};
struct ArgMaxOp {
  __device__ ArgMax operator()(const ArgMax& a, const ArgMax& b) const {
    return (a.v > b.v || (a.v == b.v && a.i < b.i)) ? a : b;
  }
};
struct SumF {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// Calls f(x, v) for each logit x = r[v] of a row of V, this thread's indices (threadIdx.x,
// + kThreads, ...) in increasing order, with kUnroll loads in flight before any is used.
template <class F>
__device__ __forceinline__ void for_each_in_row(const float* r, int64_t V, F&& f) {
  for (int64_t v0 = threadIdx.x; v0 < V; v0 += kUnroll * kThreads) {
    float xs[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) xs[u] = v0 + u * kThreads < V ? r[v0 + u * kThreads] : 0.0f;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (v0 + u * kThreads < V) f(xs[u], v0 + u * kThreads);
    }
  }
}

// Per row: max, argmax, lse; `bad` = 1 when the row has a NaN or no finite logit.
__global__ void __launch_bounds__(kThreads) row_stats_kernel(const float* x, int64_t V, float* row_max, int64_t* row_arg, float* row_lse,
                                 int* bad) {
  using BR = cub::BlockReduce<ArgMax, kThreads>;
  __shared__ typename BR::TempStorage tmp;
  __shared__ typename BlockReduceF::TempStorage tmp_f;
  __shared__ ArgMax best;
  __shared__ int has_nan;
  const int64_t b = blockIdx.x;
  const float* r = x + b * V;
  if (threadIdx.x == 0) has_nan = 0;
  __syncthreads();
  ArgMax a{-INFINITY, V};
  // Each thread visits its indices in increasing order, so the first index of a tie wins
  // within the thread (and ArgMaxOp across threads).
  for_each_in_row(r, V, [&](float xv, int64_t v) {
    if (isnan(xv)) has_nan = 1;
    if (xv > a.v) a = ArgMax{xv, v};
  });
  const ArgMax red = BR(tmp).Reduce(a, ArgMaxOp{});
  if (threadIdx.x == 0) best = red;
  __syncthreads();
  const float m = best.v;
  float s = 0.0f;
  if (isfinite(m)) {
    for_each_in_row(r, V, [&](float xv, int64_t) { s += __expf(xv - m); });
  }
  const float total = BlockReduceF(tmp_f).Reduce(s, SumF{});
  if (threadIdx.x == 0) {
    row_max[b] = m;
    row_arg[b] = best.i < V ? best.i : 0;
    row_lse[b] = m + logf(total);
    bad[b] = (has_nan || !isfinite(m)) ? 1 : 0;
  }
}

// Finds the first position j in [0, n) of `order` (nullptr = identity) whose inclusive mass of
// w(j) = exp((key(j) − m)/τ) reaches target, skipping zero weights. Block-wide; returns -1 if none.
template <class Key>
__device__ int64_t block_inverse_cdf(Key key, int64_t n, float m, float inv_t, double target) {
  __shared__ typename BlockScanD::TempStorage scan_tmp;
  __shared__ double carry;
  __shared__ unsigned long long found;
  if (threadIdx.x == 0) {
    carry = 0.0;
    found = ~0ull;
  }
  __syncthreads();
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    const double w = j < n ? static_cast<double>(__expf((key(j) - m) * inv_t)) : 0.0;
    double incl, tile_total;
    BlockScanD(scan_tmp).InclusiveSum(w, incl, tile_total);
    const double c = carry;
    if (j < n && w > 0.0 && c + incl >= target) atomicMin(&found, static_cast<unsigned long long>(j));
    __syncthreads();
    if (threadIdx.x == 0) carry = c + tile_total;
    __syncthreads();
    if (found != ~0ull) break;
  }
  const unsigned long long f = found;
  __syncthreads();  // every thread has read `found` before a next call resets it
  return f == ~0ull ? -1 : static_cast<int64_t>(f);
}

// Σ of the weights of the first n keys (block-wide, f64 accumulation per thread).
template <class Key>
__device__ double block_mass(Key key, int64_t n, float m, float inv_t) {
  using BR = cub::BlockReduce<double, kThreads>;
  __shared__ typename BR::TempStorage tmp;
  __shared__ double out;
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) s += static_cast<double>(__expf((key(j) - m) * inv_t));
  const double r = BR(tmp).Sum(s);
  if (threadIdx.x == 0) out = r;
  __syncthreads();
  const double o = out;
  __syncthreads();
  return o;
}

// An unsigned key with the order of the floats (−0 counted as +0; NaN rows are rejected
// before). The CPU twin uses the same key on doubles.
__device__ __forceinline__ uint32_t order_key_f32(float v) {
  const uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (u >> 31) != 0 ? ~u : (u | 0x80000000u);
}

// Block-wide: given hist (kHistBins counts in shared memory) and k ≥ 1 with Σ hist ≥ k,
// the bucket b holding the k-th largest (counting from the top bucket) and the count of
// elements in buckets above b. Thread t owns bins [t·16, t·16 + 16); a reversed exclusive
// scan of the per-thread sums gives each thread the count above its bins, and the one thread
// whose bins hold the boundary walks them.
__device__ void find_boundary_bucket(const uint32_t* hist, int64_t k, int* bucket, int64_t* above_out) {
  using BlockScanI = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename BlockScanI::TempStorage tmp;
  constexpr int kPer = kHistBins / kThreads;
  const int chunk = kThreads - 1 - static_cast<int>(threadIdx.x);  // thread 0 owns the top bins
  int64_t sum = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) sum += hist[chunk * kPer + i];
  int64_t above = 0;
  BlockScanI(tmp).ExclusiveSum(sum, above);
  if (above < k && above + sum >= k) {
    for (int bin = chunk * kPer + kPer - 1; bin >= chunk * kPer; --bin) {
      if (above + hist[bin] >= k) {
        *bucket = bin;
        *above_out = above;
        break;
      }
      above += hist[bin];
    }
  }
  __syncthreads();
}

// One block per row: the top-k candidates of row b (see the header), in index order, into
// cand_keys/cand_idx[b·cap ...]; count[b] = how many there are (may exceed cap: then only
// the first cap are written and the caller falls back to the full sort).
__global__ void __launch_bounds__(kThreads) topk_select_kernel(const float* x, int64_t V, int64_t k, int64_t cap,
                                                              float* cand_keys, int* cand_idx, int* count) {
  using BlockScanI = cub::BlockScan<int, kThreads>;
  __shared__ uint32_t hist[kHistBins];
  __shared__ typename BlockScanI::TempStorage scan_tmp;
  __shared__ int b1, b2;
  __shared__ int64_t above1, above2;
  __shared__ int carry;
  const int64_t b = blockIdx.x;
  const float* r = x + b * V;
  // Level 1: the top 12 key bits.
  for (int i = threadIdx.x; i < kHistBins; i += kThreads) hist[i] = 0;
  __syncthreads();
  for_each_in_row(r, V, [&](float xv, int64_t) { atomicAdd(&hist[order_key_f32(xv) >> 20], 1u); });
  __syncthreads();
  find_boundary_bucket(hist, k, &b1, &above1);
  const uint32_t top = static_cast<uint32_t>(b1);
  // Level 2: the next 12 bits, over the boundary bucket's logits.
  for (int i = threadIdx.x; i < kHistBins; i += kThreads) hist[i] = 0;
  __syncthreads();
  for_each_in_row(r, V, [&](float xv, int64_t) {
    const uint32_t key = order_key_f32(xv);
    if ((key >> 20) == top) atomicAdd(&hist[(key >> 8) & (kHistBins - 1)], 1u);
  });
  __syncthreads();
  find_boundary_bucket(hist, k - above1, &b2, &above2);
  const uint32_t prefix = (top << kHistBits) | static_cast<uint32_t>(b2);  // the boundary's top 24 bits
  // Compaction in index order.
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < V; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    const float xv = j < V ? r[j] : 0.0f;
    const int flag = j < V && (order_key_f32(xv) >> 8) >= prefix ? 1 : 0;
    int pos = 0, tile = 0;
    BlockScanI(scan_tmp).ExclusiveSum(flag, pos, tile);
    const int c = carry;
    if (flag && c + pos < cap) {
      cand_keys[b * cap + c + pos] = xv;
      cand_idx[b * cap + c + pos] = static_cast<int>(j);
    }
    __syncthreads();  // every thread has read carry (and scan_tmp is free again)
    if (threadIdx.x == 0) carry = c + tile;
    __syncthreads();
  }
  if (threadIdx.x == 0) count[b] = carry;
}

// Segment bounds for the candidate sort: [b·cap, b·cap + min(count, cap)).
__global__ void candidate_segments_kernel(const int* count, int64_t B, int64_t cap, int* begin, int* end) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  begin[b] = static_cast<int>(b * cap);
  end[b] = static_cast<int>(b * cap + min(static_cast<int64_t>(count[b]), cap));
}

// One block per row. sorted_keys/sorted_idx are undefined (nullptr) for the unfiltered path; their rows are `stride` apart (V, or the
// prefilter's cap).
__global__ void __launch_bounds__(kThreads) pick_kernel(const float* x, int64_t V, const float* sorted_keys, const int* sorted_idx, int64_t stride,
                            int64_t top_k,
                            double top_p, float inv_t, uint64_t seed, uint64_t step, uint64_t stream_offset,
                            const float* row_max, const float* row_lse, int64_t* tokens, float* logprobs,
                            float* sampling_logprobs) {
  const int64_t b = blockIdx.x;
  const float m = row_max[b];
  const double u = uniform53_device(seed, stream_offset + b, step);
  int64_t pick = -1;
  double total = 0.0;
  if (sorted_keys == nullptr) {
    const float* r = x + b * V;
    auto key = [r](int64_t j) { return r[j]; };
    total = block_mass(key, V, m, inv_t);
    pick = block_inverse_cdf(key, V, m, inv_t, u * total);
  } else {
    const float* sk = sorted_keys + b * stride;
    auto key = [sk](int64_t j) { return sk[j]; };
    const int64_t k = top_k > 0 && top_k < V ? top_k : V;
    int64_t n = k;
    if (top_p < 1.0) {
      const double kept = block_mass(key, k, m, inv_t);
      n = block_inverse_cdf(key, k, m, inv_t, top_p * kept) + 1;  // nucleus cut (≥ 1: the max has w = 1)
      if (n <= 0) n = k;
    }
    total = block_mass(key, n, m, inv_t);
    const int64_t j = block_inverse_cdf(key, n, m, inv_t, u * total);
    pick = j >= 0 ? static_cast<int64_t>(sorted_idx[b * stride + j]) : -1;
  }
  if (threadIdx.x == 0) {
    if (pick < 0) pick = 0;  // unreachable for finite rows: the max has weight 1
    const float xp = x[b * V + pick];
    tokens[b] = pick;
    logprobs[b] = xp - row_lse[b];
    sampling_logprobs[b] = static_cast<float>(log(static_cast<double>(__expf((xp - m) * inv_t)) / total));
  }
}

__global__ void greedy_kernel(const int64_t* row_arg, const float* x, int64_t V, const float* row_lse, int64_t B,
                              int64_t* tokens, float* logprobs, float* sampling_logprobs) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  tokens[b] = row_arg[b];
  logprobs[b] = x[b * V + row_arg[b]] - row_lse[b];
  sampling_logprobs[b] = 0.0f;
}

__global__ void iota_rows_kernel(int* idx, int64_t B, int64_t V) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < B * V;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    idx[k] = static_cast<int>(k % V);
  }
}

}  // namespace

SampledTokens sample_tokens(const Tensor& logits, const SamplingOptions& opt) {
  const int64_t B = logits.size(0), V = logits.size(1);
  const Device dev = logits.device();
  if (B == 0) {  // nothing to sample (a zero-block launch would be an invalid configuration)
    return SampledTokens{Tensor::empty({0}, DType::i64, dev), Tensor::empty({0}, DType::f32, dev),
                         Tensor::empty({0}, DType::f32, dev)};
  }
  const Tensor x = logits.dtype() == DType::f32 ? logits.contiguous() : cast(logits, DType::f32).contiguous();
  const float* xp = static_cast<const float*>(x.data_ptr());
  Tensor rmax = Tensor::empty({B}, DType::f32, dev), rlse = Tensor::empty({B}, DType::f32, dev);
  Tensor rarg = Tensor::empty({B}, DType::i64, dev), bad = Tensor::empty({B}, DType::i32, dev);
  row_stats_kernel<<<static_cast<unsigned>(B), kThreads>>>(xp, V, static_cast<float*>(rmax.data_ptr()),
                                                           static_cast<int64_t*>(rarg.data_ptr()),
                                                           static_cast<float*>(rlse.data_ptr()),
                                                           static_cast<int*>(bad.data_ptr()));
  CUDA_CHECK_LAUNCH();
  const std::vector<double> badv = bad.to_vector();
  for (int64_t b = 0; b < B; ++b) {
    if (badv[b] != 0.0) throw_error("sample_tokens: row " + std::to_string(b) + " has no finite logit (NaN or all -inf)");
  }
  SampledTokens out;
  out.tokens = Tensor::empty({B}, DType::i64, dev);
  out.logprobs = Tensor::empty({B}, DType::f32, dev);
  out.sampling_logprobs = Tensor::empty({B}, DType::f32, dev);
  int64_t* tp = static_cast<int64_t*>(out.tokens.data_ptr());
  float* lp = static_cast<float*>(out.logprobs.data_ptr());
  float* slp = static_cast<float*>(out.sampling_logprobs.data_ptr());
  const double inv_t = opt.temperature > 0.0 ? 1.0 / opt.temperature : 0.0;
  if (opt.temperature <= 0.0 || !std::isfinite(inv_t)) {
    greedy_kernel<<<grid_for(B, 128), 128>>>(static_cast<const int64_t*>(rarg.data_ptr()), xp, V,
                                             static_cast<const float*>(rlse.data_ptr()), B, tp, lp, slp);
    CUDA_CHECK_LAUNCH();
    return out;
  }
  const float* sk = nullptr;
  const int* si = nullptr;
  int64_t stride = V;
  Tensor keys_in, keys_out, idx_in, idx_out, begin, end, temp;
  // Sorts B segments of (keys_in, idx_in) into (keys_out, idx_out), descending, stable.
  auto segmented_sort = [&](int64_t items, const int* seg_begin, const int* seg_end, const float* kin) {
    size_t temp_bytes = 0;
    CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, temp_bytes, kin, static_cast<float*>(keys_out.data_ptr()), static_cast<const int*>(idx_in.data_ptr()),
        static_cast<int*>(idx_out.data_ptr()), static_cast<int>(items), static_cast<int>(B), seg_begin, seg_end));
    temp = Tensor::empty({static_cast<int64_t>(temp_bytes / 4 + 1)}, DType::i32, dev);
    CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        temp.data_ptr(), temp_bytes, kin, static_cast<float*>(keys_out.data_ptr()),
        static_cast<const int*>(idx_in.data_ptr()), static_cast<int*>(idx_out.data_ptr()), static_cast<int>(items),
        static_cast<int>(B), seg_begin, seg_end));
    sk = static_cast<const float*>(keys_out.data_ptr());
    si = static_cast<const int*>(idx_out.data_ptr());
  };
  // SOMNUS_SAMPLING_PREFILTER=0 forces the full sort (tests compare the two paths).
  const char* pre_env = std::getenv("SOMNUS_SAMPLING_PREFILTER");
  const bool prefilter = pre_env == nullptr || std::string(pre_env) != "0";
  if (prefilter && opt.top_k > 0 && opt.top_k < V && opt.top_k <= kPrefilterMaxK &&
      B * std::min(V, opt.top_k + kPrefilterSlack) <= std::numeric_limits<int>::max()) {
    const int64_t cap = std::min(V, opt.top_k + kPrefilterSlack);
    keys_in = Tensor::empty({B, cap}, DType::f32, dev);
    keys_out = Tensor::empty({B, cap}, DType::f32, dev);
    idx_in = Tensor::empty({B, cap}, DType::i32, dev);
    idx_out = Tensor::empty({B, cap}, DType::i32, dev);
    Tensor count = Tensor::empty({B}, DType::i32, dev);
    topk_select_kernel<<<static_cast<unsigned>(B), kThreads>>>(
        xp, V, opt.top_k, cap, static_cast<float*>(keys_in.data_ptr()), static_cast<int*>(idx_in.data_ptr()),
        static_cast<int*>(count.data_ptr()));
    CUDA_CHECK_LAUNCH();
    const std::vector<double> counts = count.to_vector();
    if (*std::max_element(counts.begin(), counts.end()) <= static_cast<double>(cap)) {
      begin = Tensor::empty({B}, DType::i32, dev);
      end = Tensor::empty({B}, DType::i32, dev);
      candidate_segments_kernel<<<grid_for(B, 128), 128>>>(static_cast<const int*>(count.data_ptr()), B, cap,
                                                           static_cast<int*>(begin.data_ptr()),
                                                           static_cast<int*>(end.data_ptr()));
      CUDA_CHECK_LAUNCH();
      segmented_sort(B * cap, static_cast<const int*>(begin.data_ptr()), static_cast<const int*>(end.data_ptr()),
                     static_cast<const float*>(keys_in.data_ptr()));
      stride = cap;
    }
  }
  if (sk == nullptr && (opt.top_k > 0 || opt.top_p < 1.0)) {  // the full sort of every row
    // CUB's segmented sort takes 32-bit item counts and offsets.
    if (B * V > std::numeric_limits<int>::max()) {
      throw_error("sample_tokens (CUDA): top-p or a large top-k over " + std::to_string(B) + " rows of " +
                  std::to_string(V) + " logits sorts more than 2^31 - 1 items; sample fewer rows at a time");
    }
    keys_out = Tensor::empty({B, V}, DType::f32, dev);
    idx_in = Tensor::empty({B, V}, DType::i32, dev);
    idx_out = Tensor::empty({B, V}, DType::i32, dev);
    iota_rows_kernel<<<grid_for(B * V, 256), 256>>>(static_cast<int*>(idx_in.data_ptr()), B, V);
    CUDA_CHECK_LAUNCH();
    std::vector<double> off(B + 1);
    for (int64_t b = 0; b <= B; ++b) off[b] = static_cast<double>(b * V);
    begin = Tensor::from_vector(off, {B + 1}, DType::i32, dev);
    const int* op = static_cast<const int*>(begin.data_ptr());
    segmented_sort(B * V, op, op + 1, xp);
    stride = V;
  }
  pick_kernel<<<static_cast<unsigned>(B), kThreads>>>(xp, V, sk, si, stride, opt.top_k, opt.top_p, static_cast<float>(inv_t),
                                                      opt.seed, opt.step, opt.stream_offset,
                                                      static_cast<const float*>(rmax.data_ptr()),
                                                      static_cast<const float*>(rlse.data_ptr()), tp, lp, slp);
  CUDA_CHECK_LAUNCH();
  return out;
}

}  // namespace somnus::kernels::cuda
