// Split-K flash-decoding on CUDA (kernels/ops.h attention_decode): a few query rows against
// a long KV cache. The S keys are cut into n_split chunks; each chunk gives a partial
// (o_s, lse_s) in f32, then attn_combine merges them: lse = log Σ e^lse_s,
// o = Σ e^(lse_s − lse) o_s. The CPU twin is kernels/cpu/attention.cpp.
//
// Kernel attn_decode_gqa (default): one block per (b, kv head, split) runs ALL g = Hq/Hkv
// query heads × T query rows of that kv head (rows = g·T ≤ 8), so each K/V byte is read from
// HBM exactly once (the SIMT row kernel re-read it g times, one warp per query head).
// Decode is bandwidth-bound: at T = 1 each key costs 2·D·sizeof(T) bytes and ~4·g·D FLOPs.
// Layout: a lane holds V = 16/sizeof(T) elements of a key row (one 16-byte load: 8 bf16 or
// 4 f32), LPK = D/V lanes cover a row, so a warp covers KPW = 32/LPK consecutive keys
// (bf16 D=128: 16 lanes, 2 keys = 512 contiguous bytes per load instruction) and the 4 warps
// of a block cover 4·KPW consecutive keys; U such sub-steps (U = 4, or 2 at 8 rows to stay
// within registers) are loaded before any is used, so each thread has 2·U 16-byte loads in
// flight. The q rows (pre-scaled, f32) and the accumulators of this thread's V columns stay
// in registers. q·k is reduced over the LPK lanes of a key with xor shuffles (every lane
// ends with the same sum), then one online-softmax update per row per U keys
// (m, l, acc: U + 1 exps instead of 2U). Each lane group keeps its own state; at the end of
// the split the 4·KPW states go to shared memory and are merged per (row, column). A key
// beyond the row's visible(i) (causal / q_offset) or beyond the split gets s = −inf.
// Numerics as the twin: f32 accumulation, p rounded to bf16 before p·v for bf16 inputs, l
// summed from the unrounded p.
// Bytes: 2·B·Hkv·S·D·sizeof(T) (K and V once) + the partials, B·Hq·T·n_split·(D + 1)·4
// written and read back by attn_combine (bench shape B8 Hq32 Hkv8 D128 bf16, S = 4096,
// 16 splits: 134 MB of K/V vs 2.1 MB of partials, ×2). Resources (ptxas, sm_90, bf16 D=128):
// R = 4 (the bench's g = 4): 161 registers, 16.6 KB smem → 3 blocks (12 warps) per SM, up to
// 48 KB of loads in flight per SM; R = 8: 241 registers, U = 2 → 2 blocks per SM; no spills.
// Issue cost ~600 instructions per warp per 4 KB at R = 4 (≈ 6 TB/s ceiling), so HBM bounds
// it. Prediction on an H100 (3.35 TB/s HBM, memcpy 2.9 TB/s read+write): ~2.3–2.6 TB/s at
// S = 32768 (4096 blocks); lower at S = 4096 (1024 blocks, 2.6 waves; 54 µs of traffic plus
// two launches and the partials: ~1.8–2.2 TB/s) and S = 1024. Measured (H100, 2026-11-26;
// bytes of K and V over the time): 2217 GB/s at S = 32768, 1509 at S = 4096, 1245 at S = 1024
// (the SIMT row kernel: 47–52 GB/s); the device-to-device copy ran at 2826–2926 GB/s.
// Rows > 8 (long speculative / prefill-like T), misaligned pointers, or
// SOMNUS_ATTN_DECODE=simt take the SIMT row kernel (attention_common.cuh attn_rows_simt),
// grid.z = splits, with the same partials and combine.
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/attention_common.cuh"

namespace somnus::kernels::cuda {

namespace {

using namespace attn;

constexpr int kDecWarps = 4;
constexpr int kDecMaxRows = 8;

// grid (n_split, B·Hkv), blockDim 32·kDecWarps. R ≥ g·T rows (padding rows see no key).
// Writes o_part (B·Hq, n_split, T, D) normalised by its own l and lse_part (B·Hq, n_split, T)
// (o_s = 0, lse_s = −inf for a split the row cannot see), the layout of attn_rows_simt.
// (minBlocksPerSM = 1 stated explicitly: without it ptxas capped the R = 2 bf16 variant at
// 96 registers and spilled.)
template <class T, int D, int R>
__global__ void __launch_bounds__(kDecWarps * 32, 1)
    attn_decode_gqa(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    float* __restrict__ o_part, float* __restrict__ lse_part, int chunk, AttnDims d) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte load
  constexpr int LPK = D / V;                           // lanes per key row
  constexpr int KPW = 32 / LPK;                        // keys per warp per sub-step
  constexpr int NSUB = kDecWarps * KPW;                // lane groups = keys per block sub-step
  constexpr int U = R >= 8 ? 2 : 4;                    // sub-steps loaded before use
  static_assert(D % V == 0 && LPK <= 32 && 32 % LPK == 0, "head dim / vector width");
  __shared__ float sm_acc[NSUB][R][D];
  __shared__ float sm_m[NSUB][R];
  __shared__ float sm_l[NSUB][R];

  const int sp = blockIdx.x, n_split = static_cast<int>(gridDim.x);
  const int bk = blockIdx.y;  // b·Hkv + kv head
  const int b = bk / d.Hkv, hk = bk % d.Hkv;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int grp = lane / LPK, c = lane % LPK;
  const int sub = warp * KPW + grp;  // this lane group's key within a block sub-step
  const int rows = d.g * d.T;
  const int k_lo = sp * chunk, k_hi = min(d.S, k_lo + chunk);

  float qv[R][V], acc[R][V], m[R], l[R];
  int vis[R];  // keys [k_lo, vis[r]) of this split are visible from row r
  int k_end = k_lo;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const bool live = r < rows;
    const int t = live ? r % d.T : 0;
    const int h = hk * d.g + (live ? r / d.T : 0);
    vis[r] = live ? max(k_lo, min(k_hi, d.visible(t))) : k_lo;
    k_end = max(k_end, vis[r]);
    const Vec<T, V> qx = load_vec<V>(q + ((static_cast<int64_t>(b) * d.Hq + h) * d.T + t) * D + c * V, 0);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      qv[r][e] = live ? to_f(qx.v[e]) * d.scale : 0.f;
      acc[r][e] = 0.f;
    }
    m[r] = -INFINITY;
    l[r] = 0.f;
  }

  const int64_t kv_base = static_cast<int64_t>(bk) * d.S * D + c * V;
  const T* kp = k + kv_base;
  const T* vp = v + kv_base;
  // k_end is block-uniform, so every lane runs the same iterations (full-warp shuffles).
  for (int j0 = k_lo; j0 < k_end; j0 += U * NSUB) {
    Vec<T, V> kx[U], vx[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * NSUB + sub;
      if (j < k_end) {
        kx[u] = load_vec<V>(kp + static_cast<int64_t>(j) * D, 0);
        vx[u] = load_vec<V>(vp + static_cast<int64_t>(j) * D, 0);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          kx[u].v[e] = static_cast<T>(0.f);
          vx[u].v[e] = static_cast<T>(0.f);
        }
      }
    }
    float s[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * NSUB + sub;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float x = 0.f;
#pragma unroll
        for (int e = 0; e < V; ++e) x += qv[r][e] * to_f(kx[u].v[e]);
#pragma unroll
        for (int o = LPK / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
        s[u][r] = j < vis[r] ? x : -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float mx = m[r];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[u][r]);
      const float mu = mx == -INFINITY ? 0.f : mx;  // nothing seen yet: every p is e^(−inf) = 0
      const float alpha = __expf(m[r] - mu);
      l[r] *= alpha;
#pragma unroll
      for (int e = 0; e < V; ++e) acc[r][e] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float p = __expf(s[u][r] - mu);
        l[r] += p;
        const float pv = mma_round<T>(p);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[r][e] += pv * to_f(vx[u].v[e]);
      }
      m[r] = mx;
    }
  }

  // Merge the NSUB lane-group states of the block per (row, column).
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int e = 0; e < V; ++e) sm_acc[sub][r][c * V + e] = acc[r][e];
    if (c == 0) {
      sm_m[sub][r] = m[r];
      sm_l[sub][r] = l[r];
    }
  }
  __syncthreads();
  for (int idx = static_cast<int>(threadIdx.x); idx < rows * D; idx += static_cast<int>(blockDim.x)) {
    const int r = idx / D, x = idx % D;
    const int t = r % d.T, h = hk * d.g + r / d.T;
    const int64_t pidx = ((static_cast<int64_t>(b) * d.Hq + h) * n_split + sp) * d.T + t;
    float M = -INFINITY;
#pragma unroll
    for (int u = 0; u < NSUB; ++u) M = fmaxf(M, sm_m[u][r]);
    if (M == -INFINITY) {  // the row sees no key of this split: weight 0 in the combine
      o_part[pidx * D + x] = 0.f;
      if (x == 0) lse_part[pidx] = -INFINITY;
      continue;
    }
    float L = 0.f, A = 0.f;
#pragma unroll
    for (int u = 0; u < NSUB; ++u) {
      const float w = __expf(sm_m[u][r] - M);
      L += sm_l[u][r] * w;
      A += sm_acc[u][r][x] * w;
    }
    o_part[pidx * D + x] = A / L;  // L >= 1: the state holding M has p = 1 for its max key
    if (x == 0) lse_part[pidx] = M + logf(L);
  }
}

template <class T, int D>
void launch_decode_gqa(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d, int n_split, int chunk,
                       float* o_part, float* lse_part) {
  const dim3 grid(n_split, d.B * d.Hkv);
  auto go = [&](auto rows_tag) {
    constexpr int R = decltype(rows_tag)::value;
    attn_decode_gqa<T, D, R><<<grid, kDecWarps * 32>>>(q.data<T>(), k.data<T>(), v.data<T>(), o_part, lse_part,
                                                        chunk, d);
  };
  const int rows = d.g * d.T;
  if (rows <= 1) {
    go(std::integral_constant<int, 1>{});
  } else if (rows <= 2) {
    go(std::integral_constant<int, 2>{});
  } else if (rows <= 4) {
    go(std::integral_constant<int, 4>{});
  } else {
    go(std::integral_constant<int, kDecMaxRows>{});
  }
  CUDA_CHECK_LAUNCH();
}

// SOMNUS_ATTN_DECODE=simt selects the SIMT row kernel (read per call, so tests can switch).
bool decode_simt_forced() {
  const char* e = std::getenv("SOMNUS_ATTN_DECODE");
  return e != nullptr && std::strcmp(e, "simt") == 0;
}

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
  // No branch on w, so the unrolled loads of several splits are in flight at once (one
  // split at a time made this loop latency-bound: 64 splits ≈ 64 L2 round trips). An unseen
  // split has o_s = 0 and w = 0.
#pragma unroll 4
  for (int s = 0; s < n_split; ++s) {
    const int64_t idx = (bh * n_split + s) * Tq + i;
    const float ls = lse_part[idx];
    const float w = ls == -INFINITY ? 0.f : __expf(ls - lse_row);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] += w * o_part[idx * D + lane + 32 * e];
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
      const bool aligned = aligned_to(q.data<T>(), 16) && aligned_to(k.data<T>(), 16) && aligned_to(v.data<T>(), 16);
      if (static_cast<int64_t>(d.g) * d.T <= kDecMaxRows && aligned && !decode_simt_forced()) {
        launch_decode_gqa<T, D>(q, k, v, d, n_split, chunk, o_part.data<float>(), lse_part.data<float>());
      } else {
        launch_rows<T, D>(q, k, v, d, n_split, chunk, Tensor(), Tensor(), o_part.data<float>(),
                          lse_part.data<float>());
      }
      // A warp per row, no grid-stride loop: one block per 4 rows (grid_for caps the grid).
      attn_combine<T, D><<<static_cast<unsigned>((rows + 3) / 4), 128>>>(
          o_part.data<float>(), lse_part.data<float>(), o.data<T>(), lse.data<float>(), rows, d.T, n_split);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace somnus::kernels::cuda
