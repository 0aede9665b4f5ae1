// CPU twin of the fused attention kernels (kernels/cuda/attention.cu): FlashAttention-2
// forward, backward and split-K decode, with the same tiling and online softmax.
//
// Shapes: q (B, Hq, T, D); k, v (B, Hkv, S, D); query head h reads kv head h / (Hq / Hkv).
// Causal: query i sits at absolute position q_offset + i and sees keys j <= q_offset + i.
//
// Forward (per (b, h, query tile of kBr rows), OpenMP over all such tiles, dynamic schedule
// because causal tiles near the diagonal do less work):
//   for each key tile of kBc keys (only up to the last key the tile's last row can see):
//     s = scale · q kᵀ (masked columns dropped); m' = max(m, rowmax s); α = e^(m − m');
//     p = e^(s − m');  l = α·l + rowsum p;  acc = α·acc + p v;  m = m'
//   o = acc / l;  lse = m + log l     (saved for the backward)
// Never materialises the (T, S) score matrix: O(kBr·kBc) scratch per thread.
// Backward (FA2 with P recomputed from lse), one pass:
//   preprocess  Δ_i = rowsum(dO_i ∘ O_i)
//   main pass   per (b, kv head, chunk of key tiles); per key tile, over the g query heads
//               of the group and blocks of kBr query rows that see the tile:
//               p = e^(scale·q·k − lse);  dp = dO·v;  ds = p·(dp − Δ);
//               dQ_row += scale·ds·K (in registers, then added once per row and tile);
//               and once per block, dV += Pᵀ·dO and dK += scale·dSᵀ·Q (P and dS kept
//               key-major so that both are vector-times-rows summed in registers).
//   dQ          atomic mode: one tile per chunk, dQ rows added to one f32/f64 accumulator
//               with atomics, like the GPU. Deterministic mode: the key tiles of a group are
//               cut into just enough chunks (balanced by the rows that see them) that
//               B·Hkv·chunks >= 16; each chunk adds dQ to its own accumulator, and these
//               are summed in chunk order at the end. No atomics, no second pass that
//               recomputes P (the earlier dQ pass redid q·kᵀ and dO·vᵀ: 3.5× the forward's
//               FLOPs instead of 2.5×), and the bits do not depend on the thread count
//               (the chunking depends on the shapes only). Extra memory: chunks × size(q)
//               in the compute type, at most 64 MiB (fewer chunks beyond that).
//   The autograd wrapper always uses the deterministic mode on CPU (thread timing would
//   otherwise change the summation order, and CPU runs must be bitwise reproducible).
// Decode (split-K, flash-decoding): the S keys are cut into num_splits chunks; each
//   (b, h, chunk) runs the forward's online softmax over its keys for the few query rows
//   and writes a partial (o_s, lse_s); the combine takes lse = log Σ_s e^lse_s and
//   o = Σ_s e^(lse_s − lse)·o_s. A chunk a row cannot see gives lse_s = −inf, weight 0.
//
// Layout: key tiles are also kept transposed (D × kBc), so q·Kᵀ and dO·Vᵀ for a row are
// axpys vectorised over the keys instead of horizontal dot-product sums; every product
// (P·V, dS·K, Pᵀ·dO, dSᵀ·Q) sums in registers, 64 columns at a time (vec_times_rows), and
// all of them, q·Kᵀ and dO·Vᵀ included, take two query rows (or two keys) per call so that
// each tile load feeds two FMAs (one load per FMA made them load-bound). At T = 2048, H = 4,
// D = 64, causal, 2 threads (AMD EPYC, 2026-11-26) these and the single-pass backward took
// fwd+bwd from 109–132 ms (parity with the composed OpenBLAS path) to 54 ms (composed: 94–118
// ms); see bench/RESULTS.md.
// Numerics: accumulates in f32 (f64 for f64 inputs). For bf16 inputs p is rounded to bf16
// before p·v (and ds before ds·q, ds·k), as the tensor-core kernel feeds them to mma.
// FLOPs: forward 4·B·Hq·T·S·D (about half when causal); backward 2.5× that in both modes.
// Bytes: forward reads k, v once per query tile; backward reads q, dO once per key tile.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/vec_math.h"
#include "tensor/dispatch.h"

namespace somnus::kernels::cpu {

namespace {

constexpr int64_t kBr = 64;  // query rows per tile (the CUDA kernel's block of 4 warps × 16 rows)
constexpr int64_t kBc = 64;  // keys per tile
constexpr int64_t kGroupTasksMin = 16;  // backward tasks (b, kv head, key chunk) to fill the cores
constexpr int64_t kDqChunkBytes = int64_t{64} << 20;  // cap on the deterministic backward's dQ accumulators

struct Dims {
  int64_t B, Hq, Hkv, T, S, D, g;
  bool causal;
  int64_t q_offset;
  // Keys [0, visible(i)) are visible from query row i (i may be past T in tile arithmetic).
  int64_t visible(int64_t i) const { return causal ? std::min(S, std::max<int64_t>(0, q_offset + i + 1)) : S; }
};

Dims dims_of(const Tensor& q, const Tensor& k, bool causal, int64_t q_offset) {
  Dims d{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), q.size(1) / k.size(1), causal, q_offset};
  return d;
}

// Element offset of head (b, hk) of k or v (B, Hkv, S, D). The forward and decode take K/V
// whose rows are contiguous (stride(3) = 1, stride(2) = D) but whose heads may be further
// apart — a KV cache's prefix, a (B, Hkv, len, D) view of (B, Hkv, capacity, D) buffers —
// so that a generation step reads the cache in place instead of copying it (kernels/ops.cpp).
// For a contiguous tensor this is (b·Hkv + hk)·S·D.
inline int64_t kv_head_offset(const Tensor& t, int64_t b, int64_t hk) { return b * t.stride(0) + hk * t.stride(1); }

// Value as the tensor-core kernel would feed it to an mma: rounded to bf16 for bf16 inputs.
template <class T, class C>
inline C mma_round(C x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return static_cast<C>(static_cast<float>(bf16(static_cast<float>(x))));
  } else {
    return x;
  }
}

template <class C>
inline void axpy(C alpha, const C* x, C* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// rows × D elements of src (row-major, D contiguous) into dst in the compute type.
template <class T, class C>
inline void load_rows(const T* src, int64_t rows, int64_t D, C* dst) {
  const int64_t n = rows * D;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<C>(src[i]);
}

// rows × D elements of src transposed into dst (D × kBc, column j = row j of src), so that
// a query row times the tile is a run of axpys vectorised over the keys (no horizontal sums).
template <class T, class C>
inline void load_rows_transposed(const T* src, int64_t rows, int64_t D, C* dst) {
  for (int64_t j = 0; j < rows; ++j) {
    for (int64_t x = 0; x < D; ++x) dst[x * kBc + j] = static_cast<C>(src[j * D + x]);
  }
}

// s[j] = alpha · Σ_x row[x]·tileT[x][j] for j < n: one query row against a transposed tile.
// Always all kBc columns (a fixed trip count, so the kBc accumulators live in registers);
// columns past n hold stale but finite tile data and are ignored by the callers.
template <class C>
inline void row_times_tile(const C* row, const C* tileT, int64_t D, int64_t n, C alpha, C* s) {
  (void)n;
  C acc[kBc] = {};
  for (int64_t x = 0; x < D; ++x) {
    const C a = row[x];
    const C* t = tileT + x * kBc;
#pragma omp simd
    for (int64_t j = 0; j < kBc; ++j) acc[j] += a * t[j];
  }
#pragma omp simd
  for (int64_t j = 0; j < kBc; ++j) s[j] = alpha * acc[j];
}

// Column block of the paired kernels below: two rows × kW2 f32 accumulators must stay in
// registers (8 zmm of 32 with AVX-512; with AVX2's 16 ymm, 2 × 64 would spill).
#if defined(__AVX512F__)
constexpr int64_t kW2 = 64;
#else
constexpr int64_t kW2 = 32;
#endif

// row_times_tile for two query rows at once: each tile load feeds two FMAs (the single form
// is bound by loads). Same summation order as row_times_tile, so the same bits.
template <class C>
inline void row2_times_tile(const C* row0, const C* row1, const C* tileT, int64_t D, C alpha, C* s0, C* s1) {
  for (int64_t c0 = 0; c0 < kBc; c0 += kW2) {
    C acc0[kW2] = {}, acc1[kW2] = {};
    for (int64_t x = 0; x < D; ++x) {
      const C a0 = row0[x], a1 = row1[x];
      const C* t = tileT + x * kBc + c0;
#pragma omp simd
      for (int64_t j = 0; j < kW2; ++j) {
        acc0[j] += a0 * t[j];
        acc1[j] += a1 * t[j];
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < kW2; ++j) {
      s0[c0 + j] = alpha * acc0[j];
      s1[c0 + j] = alpha * acc1[j];
    }
  }
}

// out[x] += Σ_{i<n} a[i]·M[i·ld + x] for x < w: a vector times n rows of a row-major block,
// summed in registers kW columns at a time and added to out once (an axpy per i would load
// and store out n times: store-bound at half the FMA rate).
constexpr int64_t kW = 64;
template <class C>
inline void vec_times_rows(const C* a, int64_t n, const C* M, int64_t ld, int64_t w, C* out) {
  int64_t x0 = 0;
  for (; x0 + kW <= w; x0 += kW) {
    C acc[kW] = {};
    for (int64_t i = 0; i < n; ++i) {
      const C ai = a[i];
      const C* m = M + i * ld + x0;
#pragma omp simd
      for (int64_t x = 0; x < kW; ++x) acc[x] += ai * m[x];
    }
#pragma omp simd
    for (int64_t x = 0; x < kW; ++x) out[x0 + x] += acc[x];
  }
  const int64_t rem = w - x0;  // odd head dims (D = 7, 24, …)
  if (rem > 0) {
    C acc[kW] = {};
    for (int64_t i = 0; i < n; ++i) {
      const C ai = a[i];
      const C* m = M + i * ld + x0;
      for (int64_t x = 0; x < rem; ++x) acc[x] += ai * m[x];
    }
    for (int64_t x = 0; x < rem; ++x) out[x0 + x] += acc[x];
  }
}

// vec_times_rows for two vectors a0, a1 against the same rows: each row of M is loaded once
// for two FMAs (the single form is bound by loads, one per FMA).
template <class C>
inline void vec2_times_rows(const C* a0, const C* a1, int64_t n, const C* M, int64_t ld, int64_t w, C* out0,
                            C* out1) {
  int64_t x0 = 0;
  for (; x0 + kW2 <= w; x0 += kW2) {
    C acc0[kW2] = {}, acc1[kW2] = {};
    for (int64_t i = 0; i < n; ++i) {
      const C b0 = a0[i], b1 = a1[i];
      const C* m = M + i * ld + x0;
#pragma omp simd
      for (int64_t x = 0; x < kW2; ++x) {
        acc0[x] += b0 * m[x];
        acc1[x] += b1 * m[x];
      }
    }
#pragma omp simd
    for (int64_t x = 0; x < kW2; ++x) {
      out0[x0 + x] += acc0[x];
      out1[x0 + x] += acc1[x];
    }
  }
  if (x0 < w) {
    vec_times_rows(a0, n, M + x0, ld, w - x0, out0 + x0);
    vec_times_rows(a1, n, M + x0, ld, w - x0, out1 + x0);
  }
}

template <class T, class C>
inline void store_rows(const C* src, int64_t n, T* dst) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

// The online-softmax state of up to kBr query rows and the loop over key tiles [k_lo, k_hi):
// shared by the forward (one chunk = all keys) and the decode splits (one chunk each).
template <class T>
struct OnlineSoftmax {
  using C = compute_t<T>;
  int64_t D;
  std::vector<C> q, kt, vt, acc, m, l, s, s2;

  explicit OnlineSoftmax(int64_t D)
      : D(D), q(kBr * D), kt(kBc * D), vt(kBc * D), acc(kBr * D), m(kBr), l(kBr), s(kBc), s2(kBc) {}

  // Rows [i0, i0 + rows) of query head (b, h) (q_head points at its row 0) against keys
  // [k_lo, k_hi) of the kv head (k_head, v_head at its key 0). Leaves acc, m, l.
  void run(const Dims& d, const T* q_head, const T* k_head, const T* v_head, int64_t i0, int64_t rows, int64_t k_lo,
           int64_t k_hi, C scale) {
    load_rows(q_head + i0 * D, rows, D, q.data());
    std::fill(acc.begin(), acc.begin() + rows * D, C(0));
    std::fill(m.begin(), m.begin() + rows, -std::numeric_limits<C>::infinity());
    std::fill(l.begin(), l.begin() + rows, C(0));
    const int64_t k_end = std::min(k_hi, d.visible(i0 + rows - 1));  // the tile's last row sees the most
    for (int64_t j0 = k_lo; j0 < k_end; j0 += kBc) {
      const int64_t cols = std::min(kBc, k_end - j0);
      load_rows_transposed(k_head + j0 * D, cols, D, kt.data());
      load_rows(v_head + j0 * D, cols, D, vt.data());
      for (int64_t r = 0; r < rows; r += 2) {  // two rows at a time share every tile load
        const bool pair = r + 1 < rows;
        int64_t nc[2];
        for (int k = 0; k < 2; ++k) {
          nc[k] = k == 0 || pair ? std::max<int64_t>(0, std::min(cols, d.visible(i0 + r + k) - j0)) : 0;
        }
        const int64_t n = std::max(nc[0], nc[1]);  // masked tails of this row pair
        if (n == 0) continue;
        C* sr[2] = {s.data(), s2.data()};
        if (pair) {
          row2_times_tile(q.data() + r * D, q.data() + (r + 1) * D, kt.data(), D, scale, sr[0], sr[1]);
        } else {
          row_times_tile(q.data() + r * D, kt.data(), D, n, scale, sr[0]);
        }
        for (int k = 0; k < (pair ? 2 : 1); ++k) {
          C* sk = sr[k];
          const int64_t nk = nc[k];
          std::fill(sk + nk, sk + n, C(0));  // p = 0 past this row's last visible key
          if (nk == 0) continue;
          C mt = -std::numeric_limits<C>::infinity();
          for (int64_t j = 0; j < nk; ++j) mt = std::max(mt, sk[j]);
          const C m_new = std::max(m[r + k], mt);
          const C alpha = exp_c(m[r + k] - m_new);  // e^(−inf) = 0 on the first visible tile
          C* ar = acc.data() + (r + k) * D;
          C rowsum = 0;
#pragma omp simd
          for (int64_t i = 0; i < D; ++i) ar[i] *= alpha;
#pragma omp simd reduction(+ : rowsum)
          for (int64_t j = 0; j < nk; ++j) {  // p in place of s: one vectorised exp pass
            sk[j] = exp_c(sk[j] - m_new);
            rowsum += sk[j];
          }
          if constexpr (std::is_same_v<T, bf16>) {
            for (int64_t j = 0; j < nk; ++j) sk[j] = mma_round<T>(sk[j]);  // after the unrounded rowsum
          }
          l[r + k] = l[r + k] * alpha + rowsum;
          m[r + k] = m_new;
        }
        // acc_row += p_row · V_tile for both rows
        if (pair) {
          vec2_times_rows(sr[0], sr[1], n, vt.data(), D, D, acc.data() + r * D, acc.data() + (r + 1) * D);
        } else {
          vec_times_rows(sr[0], n, vt.data(), D, D, acc.data() + r * D);
        }
      }
    }
  }
};

template <class T>
void fwd_typed(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t q_offset,
               const Tensor& o, const Tensor& lse) {
  using C = compute_t<T>;
  const Dims d = dims_of(q, k, causal, q_offset);
  const int64_t D = d.D, n_qt = (d.T + kBr - 1) / kBr, tasks = d.B * d.Hq * n_qt;
  const T* qp = q.data<T>();
  const T* kp = k.data<T>();
  const T* vp = v.data<T>();
  T* op = o.data<T>();
  C* lp = lse.data<C>();
  const bool parallel = tasks > 1 && d.T * d.S * D * d.B * d.Hq > 32768;
#pragma omp parallel if (parallel)
  {
    OnlineSoftmax<T> st(D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t qt = task % n_qt, bh = task / n_qt, b = bh / d.Hq, h = bh % d.Hq;
      const int64_t i0 = qt * kBr, rows = std::min(kBr, d.T - i0);
      st.run(d, qp + bh * d.T * D, kp + kv_head_offset(k, b, h / d.g), vp + kv_head_offset(v, b, h / d.g), i0, rows,
             0, d.S, static_cast<C>(scale));
      for (int64_t r = 0; r < rows; ++r) {
        const C inv = C(1) / st.l[r];  // l >= 1: every row sees a key (q_offset >= 0)
        T* orow = op + (bh * d.T + i0 + r) * D;
        for (int64_t i = 0; i < D; ++i) orow[i] = static_cast<T>(st.acc[r * D + i] * inv);
        lp[bh * d.T + i0 + r] = st.m[r] + std::log(st.l[r]);
      }
    }
  }
}

// Key-tile boundaries of n_chunk chunks of one (b, kv head): contiguous runs of tiles cut so
// that each chunk sees about the same number of (query row, key) pairs (causal tiles near
// the end of the keys are seen by fewer rows). Depends on the shapes only.
std::vector<int64_t> chunk_bounds(const Dims& d, int64_t n_kt, int64_t n_chunk) {
  std::vector<double> work(n_kt + 1, 0.0);  // prefix sums of the rows that see each tile
  for (int64_t t = 0; t < n_kt; ++t) {
    const int64_t i_first = d.causal ? std::max<int64_t>(0, t * kBc - d.q_offset) : 0;
    work[t + 1] = work[t] + static_cast<double>(std::max<int64_t>(0, d.T - i_first)) + 1.0;
  }
  std::vector<int64_t> bounds(n_chunk + 1, n_kt);
  bounds[0] = 0;
  int64_t t = 0;
  for (int64_t c = 1; c < n_chunk; ++c) {
    const double target = work[n_kt] * static_cast<double>(c) / static_cast<double>(n_chunk);
    while (t < n_kt && work[t] < target) ++t;
    bounds[c] = std::max(t, bounds[c - 1]);
  }
  return bounds;
}

// Per-thread scratch of the backward: the key tile three ways (rows for dQ, transposed for
// q·kᵀ and dO·vᵀ), its dK/dV accumulators, a block of up to kBr query rows (q, dO), and the
// block's P and dS stored transposed (key-major) so that dV and dK are vector-times-rows.
template <class C>
struct BwdScratch {
  std::vector<C> kt, ktT, vtT, dkt, dvt, qb, gb, pT, dsT, ps, dps, dsr, dqr;
  explicit BwdScratch(int64_t D)
      : kt(kBc * D), ktT(kBc * D), vtT(kBc * D), dkt(kBc * D), dvt(kBc * D), qb(kBr * D), gb(kBr * D),
        pT(kBc * kBr), dsT(kBc * kBr), ps(2 * kBc), dps(2 * kBc), dsr(2 * kBc), dqr(2 * D) {}
};

template <class T>
void bwd_typed(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
               const Tensor& dout, bool causal, double scale_d, int64_t q_offset, bool deterministic, const Tensor& dq,
               const Tensor& dk, const Tensor& dv) {
  using C = compute_t<T>;
  const Dims d = dims_of(q, k, causal, q_offset);
  const int64_t D = d.D, BH = d.B * d.Hq, n_q = BH * d.T * D;
  const C scale = static_cast<C>(scale_d);
  const T* qp = q.data<T>();
  const T* kp = k.data<T>();
  const T* vp = v.data<T>();
  const T* op = o.data<T>();
  const T* gp = dout.data<T>();
  const C* lp = lse.data<C>();
  const bool parallel = d.T * d.S * D * BH > 32768;

  // Preprocess: Δ = rowsum(dO ∘ O), (B, Hq, T).
  std::vector<C> delta(BH * d.T);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t row = 0; row < BH * d.T; ++row) {
    C s = 0;
    const T* orow = op + row * D;
    const T* grow = gp + row * D;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < D; ++i) s += static_cast<C>(orow[i]) * static_cast<C>(grow[i]);
    delta[row] = s;
  }

  // Tasks: (b, kv head, chunk of key tiles). Atomic mode: one tile per chunk, dQ added to one
  // shared accumulator with atomics (the GPU's scheme). Deterministic mode: just enough
  // chunks that B·Hkv·chunks >= kGroupTasksMin (one chunk per group at training shapes); each
  // task adds dQ to its chunk's own accumulator, and the chunks' accumulators are summed in
  // chunk order at the end: no atomics, no recompute of P, and bitwise the same for any
  // thread count (the chunking depends on the shapes only).
  const int64_t n_kt = (d.S + kBc - 1) / kBc;
  const int64_t groups = d.B * d.Hkv;
  // Their accumulators are capped at kDqChunkBytes in all (one chunk per group beyond that:
  // B·Hkv tasks, which may leave cores idle at long T with very few kv heads).
  const int64_t max_chunks = std::max<int64_t>(1, kDqChunkBytes / std::max<int64_t>(1, n_q * int64_t(sizeof(C))));
  const int64_t n_chunk = deterministic ? std::clamp<int64_t>((kGroupTasksMin + groups - 1) / groups, 1,
                                                              std::max<int64_t>(1, std::min(n_kt, max_chunks)))
                                        : n_kt;
  const std::vector<int64_t> bounds = chunk_bounds(d, n_kt, n_chunk);
  const int64_t n_acc = deterministic ? n_chunk : 1;
  std::vector<C> dq_acc(n_acc * n_q, C(0));  // (n_acc, B, Hq, T, D)
  const int64_t tasks = groups * n_chunk;

#pragma omp parallel if (parallel && tasks > 1)
  {
    BwdScratch<C> w(D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t c = task % n_chunk, bkv = task / n_chunk, b = bkv / d.Hkv, hkv = bkv % d.Hkv;
      C* dq_chunk = dq_acc.data() + (deterministic ? c * n_q : 0);
      for (int64_t kt_i = bounds[c]; kt_i < bounds[c + 1]; ++kt_i) {
        const int64_t j0 = kt_i * kBc, cols = std::min(kBc, d.S - j0);
        load_rows(kp + (bkv * d.S + j0) * D, cols, D, w.kt.data());
        load_rows_transposed(kp + (bkv * d.S + j0) * D, cols, D, w.ktT.data());
        load_rows_transposed(vp + (bkv * d.S + j0) * D, cols, D, w.vtT.data());
        std::fill(w.dkt.begin(), w.dkt.begin() + cols * D, C(0));
        std::fill(w.dvt.begin(), w.dvt.begin() + cols * D, C(0));
        // The first query row that sees key j0: q_offset + i >= j0.
        const int64_t i_first = d.causal ? std::max<int64_t>(0, j0 - d.q_offset) : 0;
        for (int64_t hg = 0; hg < d.g; ++hg) {
          const int64_t bh = b * d.Hq + hkv * d.g + hg;
          for (int64_t lo = i_first; lo < d.T; lo += kBr) {  // blocks of query rows that see the tile
            const int64_t rows = std::min(kBr, d.T - lo);
            load_rows(qp + (bh * d.T + lo) * D, rows, D, w.qb.data());
            load_rows(gp + (bh * d.T + lo) * D, rows, D, w.gb.data());
            for (int64_t r = 0; r < rows; r += 2) {  // two rows at a time share every tile load
              const int kn = r + 1 < rows ? 2 : 1;
              int64_t nc[2] = {0, 0};
              for (int k = 0; k < kn; ++k) nc[k] = std::max<int64_t>(0, std::min(cols, d.visible(lo + r + k) - j0));
              const int64_t n = std::max(nc[0], nc[1]);
              const C* qr = w.qb.data() + r * D;
              const C* gr = w.gb.data() + r * D;
              C* ps[2] = {w.ps.data(), w.ps.data() + kBc};
              C* dps[2] = {w.dps.data(), w.dps.data() + kBc};
              C* dsr[2] = {w.dsr.data(), w.dsr.data() + kBc};
              if (kn == 2) {
                row2_times_tile(qr, qr + D, w.ktT.data(), D, scale, ps[0], ps[1]);
                row2_times_tile(gr, gr + D, w.vtT.data(), D, C(1), dps[0], dps[1]);
              } else {
                row_times_tile(qr, w.ktT.data(), D, n, scale, ps[0]);
                row_times_tile(gr, w.vtT.data(), D, n, C(1), dps[0]);
              }
              for (int k = 0; k < kn; ++k) {
                const int64_t row = bh * d.T + lo + r + k, nk = nc[k];
                const C lse_i = lp[row], delta_i = delta[row];
                C* pk = ps[k];
                C* dk_ = dps[k];
                C* sk = dsr[k];
#pragma omp simd
                for (int64_t j = 0; j < nk; ++j) {
                  const C p = exp_c(pk[j] - lse_i);
                  pk[j] = mma_round<T>(p);
                  sk[j] = scale * mma_round<T>(p * (dk_[j] - delta_i));  // scale·dS
                }
                std::fill(sk + nk, sk + n, C(0));  // masked: no dQ contribution
                for (int64_t j = 0; j < nk; ++j) {  // key-major copies for dV and dK below
                  w.pT[j * kBr + r + k] = pk[j];
                  w.dsT[j * kBr + r + k] = sk[j];
                }
                for (int64_t j = nk; j < cols; ++j) {  // masked: no contribution
                  w.pT[j * kBr + r + k] = C(0);
                  w.dsT[j * kBr + r + k] = C(0);
                }
              }
              if (n == 0) continue;
              // dQ_row += scale·dS_row · K_tile, both rows against the same K rows
              const int64_t row0 = bh * d.T + lo + r;
              if (deterministic) {
                if (kn == 2) {
                  vec2_times_rows(dsr[0], dsr[1], n, w.kt.data(), D, D, dq_chunk + row0 * D, dq_chunk + (row0 + 1) * D);
                } else {
                  vec_times_rows(dsr[0], n, w.kt.data(), D, D, dq_chunk + row0 * D);
                }
              } else {
                std::fill(w.dqr.begin(), w.dqr.end(), C(0));
                if (kn == 2) {
                  vec2_times_rows(dsr[0], dsr[1], n, w.kt.data(), D, D, w.dqr.data(), w.dqr.data() + D);
                } else {
                  vec_times_rows(dsr[0], n, w.kt.data(), D, D, w.dqr.data());
                }
                C* dst = dq_chunk + row0 * D;
                for (int64_t x = 0; x < kn * D; ++x) {
#pragma omp atomic
                  dst[x] += w.dqr[x];
                }
              }
            }
            // dV_tile += Pᵀ · dO_block;  dK_tile += (scale·dS)ᵀ · Q_block
            int64_t j = 0;
            for (; j + 1 < cols; j += 2) {
              vec2_times_rows(w.pT.data() + j * kBr, w.pT.data() + (j + 1) * kBr, rows, w.gb.data(), D, D,
                              w.dvt.data() + j * D, w.dvt.data() + (j + 1) * D);
              vec2_times_rows(w.dsT.data() + j * kBr, w.dsT.data() + (j + 1) * kBr, rows, w.qb.data(), D, D,
                              w.dkt.data() + j * D, w.dkt.data() + (j + 1) * D);
            }
            if (j < cols) {
              vec_times_rows(w.pT.data() + j * kBr, rows, w.gb.data(), D, D, w.dvt.data() + j * D);
              vec_times_rows(w.dsT.data() + j * kBr, rows, w.qb.data(), D, D, w.dkt.data() + j * D);
            }
          }
        }
        store_rows(w.dkt.data(), cols * D, dk.data<T>() + (bkv * d.S + j0) * D);
        store_rows(w.dvt.data(), cols * D, dv.data<T>() + (bkv * d.S + j0) * D);
      }
    }
  }

  // dQ: the chunk accumulators summed in chunk order (one accumulator in atomic mode).
  T* dqp = dq.data<T>();
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t row = 0; row < BH * d.T; ++row) {
    C* a0 = dq_acc.data() + row * D;
    for (int64_t c = 1; c < n_acc; ++c) {
      const C* ac = dq_acc.data() + c * n_q + row * D;
#pragma omp simd
      for (int64_t x = 0; x < D; ++x) a0[x] += ac[x];
    }
    store_rows(a0, D, dqp + row * D);
  }
}

template <class T>
void decode_typed(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t q_offset,
                  int64_t num_splits, const Tensor& o, const Tensor& lse) {
  using C = compute_t<T>;
  const Dims d = dims_of(q, k, causal, q_offset);
  const int64_t D = d.D, BH = d.B * d.Hq, Tq = d.T;
  // The backend's choice (num_splits <= 0): chunks of >= 256 keys, at most 64 of them — enough
  // tasks for the cores at a handful of (b, h) pairs.
  if (num_splits <= 0) num_splits = std::clamp<int64_t>(d.S / 256, 1, 64);
  num_splits = std::min(num_splits, std::max<int64_t>(d.S, 1));
  const int64_t chunk = (d.S + num_splits - 1) / num_splits;
  const int64_t n_split = (d.S + chunk - 1) / chunk;
  // Partials: o_part (B·Hq, n_split, Tq, D) normalised by its own l; lse_part (B·Hq, n_split, Tq).
  std::vector<C> o_part(BH * n_split * Tq * D), lse_part(BH * n_split * Tq);
  const T* qp = q.data<T>();
  const T* kp = k.data<T>();
  const T* vp = v.data<T>();
  const bool parallel = BH * n_split > 1 && d.S * D * BH * Tq > 32768;
#pragma omp parallel if (parallel)
  {
    OnlineSoftmax<T> st(D);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < BH * n_split; ++task) {
      const int64_t sp = task % n_split, bh = task / n_split, b = bh / d.Hq, h = bh % d.Hq;
      const int64_t k_lo = sp * chunk, k_hi = std::min(d.S, k_lo + chunk);
      for (int64_t i0 = 0; i0 < Tq; i0 += kBr) {
        const int64_t rows = std::min(kBr, Tq - i0);
        st.run(d, qp + bh * Tq * D, kp + kv_head_offset(k, b, h / d.g), vp + kv_head_offset(v, b, h / d.g), i0, rows,
               k_lo, k_hi, static_cast<C>(scale));
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t idx = (bh * n_split + sp) * Tq + i0 + r;
          const bool seen = st.l[r] > C(0);
          const C inv = seen ? C(1) / st.l[r] : C(0);
          for (int64_t i = 0; i < D; ++i) o_part[idx * D + i] = st.acc[r * D + i] * inv;
          lse_part[idx] = seen ? st.m[r] + std::log(st.l[r]) : -std::numeric_limits<C>::infinity();
        }
      }
    }
  }
  // Combine.
  T* op = o.data<T>();
  C* lp = lse.data<C>();
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t row = 0; row < BH * Tq; ++row) {
    const int64_t bh = row / Tq, i = row % Tq;
    C mx = -std::numeric_limits<C>::infinity();
    for (int64_t sp = 0; sp < n_split; ++sp) mx = std::max(mx, lse_part[(bh * n_split + sp) * Tq + i]);
    C sum = 0;
    for (int64_t sp = 0; sp < n_split; ++sp) sum += exp_c(lse_part[(bh * n_split + sp) * Tq + i] - mx);
    const C lse_row = mx + std::log(sum);
    std::vector<C> acc(D, C(0));
    for (int64_t sp = 0; sp < n_split; ++sp) {
      const int64_t idx = (bh * n_split + sp) * Tq + i;
      const C w = exp_c(lse_part[idx] - lse_row);
      if (w > C(0)) axpy(w, o_part.data() + idx * D, acc.data(), D);
    }
    store_rows(acc.data(), D, op + row * D);
    lp[row] = lse_row;
  }
}

}  // namespace

void attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t q_offset,
                   const Tensor& o, const Tensor& lse) {
  visit_floating(q.dtype(), "attention_fwd",
                 [&](auto tag) { fwd_typed<decltype(tag)>(q, k, v, causal, scale, q_offset, o, lse); });
}

void attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                   const Tensor& dout, bool causal, double scale, int64_t q_offset, bool deterministic, const Tensor& dq,
                   const Tensor& dk, const Tensor& dv) {
  visit_floating(q.dtype(), "attention_bwd", [&](auto tag) {
    bwd_typed<decltype(tag)>(q, k, v, o, lse, dout, causal, scale, q_offset, deterministic, dq, dk, dv);
  });
}

void attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t q_offset,
                      int64_t num_splits, const Tensor& o, const Tensor& lse) {
  visit_floating(q.dtype(), "attention_decode", [&](auto tag) {
    decode_typed<decltype(tag)>(q, k, v, causal, scale, q_offset, num_splits, o, lse);
  });
}

}  // namespace somnus::kernels::cpu
