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
// Backward (FA2 with P recomputed from lse):
//   preprocess  Δ_i = rowsum(dO_i ∘ O_i)
//   dK/dV pass  per (b, kv head, key tile), over the g query heads of the group and every
//               query row that sees the tile:  p = e^(scale·q·k − lse);  dV += p·dO;
//               dp = dO·v;  ds = p·(dp − Δ);  dK += scale·ds·q;
//               and (atomic mode) dQ += scale·ds·k with f32/f64 atomic adds, like the GPU.
//   dQ pass     (deterministic mode) per (b, h, query tile): recomputes p, dp, ds for every
//               visible key and sums dQ in a fixed order: no atomics, bitwise repeatable.
//               With B·Hkv >= 16 (training shapes) the deterministic mode instead gives each
//               (b, kv head) to one task, which walks its key tiles in order and adds dQ
//               directly: race-free, no recompute, and enough tasks to fill the cores.
//   The autograd wrapper always uses the deterministic mode on CPU (thread timing would
//   otherwise change the summation order, and CPU runs must be bitwise reproducible).
// Decode (split-K, flash-decoding): the S keys are cut into num_splits chunks; each
//   (b, h, chunk) runs the forward's online softmax over its keys for the few query rows
//   and writes a partial (o_s, lse_s); the combine takes lse = log Σ_s e^lse_s and
//   o = Σ_s e^(lse_s − lse)·o_s. A chunk a row cannot see gives lse_s = −inf, weight 0.
//
// Layout: key tiles are also kept transposed (D × kBc), so q·Kᵀ and dO·Vᵀ for a row are
// axpys vectorised over the keys instead of horizontal dot-product sums.
// Numerics: accumulates in f32 (f64 for f64 inputs). For bf16 inputs p is rounded to bf16
// before p·v (and ds before ds·q, ds·k), as the tensor-core kernel feeds them to mma.
// FLOPs: forward 4·B·Hq·T·S·D (about half when causal); backward 2.5× that (3.5× with the
// deterministic dQ pass, which recomputes q·k and dO·v). Bytes: q, k, v, o once per tile pass.
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
constexpr int64_t kGroupTasksMin = 16;  // (b, kv head) groups for the per-group backward

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
  std::vector<C> q, kt, vt, acc, m, l, s;

  explicit OnlineSoftmax(int64_t D) : D(D), q(kBr * D), kt(kBc * D), vt(kBc * D), acc(kBr * D), m(kBr), l(kBr), s(kBc) {}

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
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t nc = std::min(cols, d.visible(i0 + r) - j0);  // masked tail of this row
        if (nc <= 0) continue;
        row_times_tile(q.data() + r * D, kt.data(), D, nc, scale, s.data());
        C mt = -std::numeric_limits<C>::infinity();
        for (int64_t j = 0; j < nc; ++j) mt = std::max(mt, s[j]);
        const C m_new = std::max(m[r], mt);
        const C alpha = exp_c(m[r] - m_new);  // e^(−inf) = 0 on the first visible tile
        C* ar = acc.data() + r * D;
        C rowsum = 0;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) ar[i] *= alpha;
#pragma omp simd reduction(+ : rowsum)
        for (int64_t j = 0; j < nc; ++j) {  // p in place of s: one vectorised exp pass
          s[j] = exp_c(s[j] - m_new);
          rowsum += s[j];
        }
        for (int64_t j = 0; j < nc; ++j) axpy(mma_round<T>(s[j]), vt.data() + j * D, ar, D);
        l[r] = l[r] * alpha + rowsum;
        m[r] = m_new;
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
      const int64_t kvh = b * d.Hkv + h / d.g;
      const int64_t i0 = qt * kBr, rows = std::min(kBr, d.T - i0);
      st.run(d, qp + bh * d.T * D, kp + kvh * d.S * D, vp + kvh * d.S * D, i0, rows, 0, d.S, static_cast<C>(scale));
      for (int64_t r = 0; r < rows; ++r) {
        const C inv = C(1) / st.l[r];  // l >= 1: every row sees a key (q_offset >= 0)
        T* orow = op + (bh * d.T + i0 + r) * D;
        for (int64_t i = 0; i < D; ++i) orow[i] = static_cast<T>(st.acc[r * D + i] * inv);
        lp[bh * d.T + i0 + r] = st.m[r] + std::log(st.l[r]);
      }
    }
  }
}

template <class T>
void bwd_typed(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
               const Tensor& dout, bool causal, double scale_d, int64_t q_offset, bool deterministic, const Tensor& dq,
               const Tensor& dk, const Tensor& dv) {
  using C = compute_t<T>;
  const Dims d = dims_of(q, k, causal, q_offset);
  const int64_t D = d.D, BH = d.B * d.Hq;
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

  // Deterministic with many (b, kv head) groups (training shapes): one task per group walks
  // its key tiles in order and adds dQ directly, race-free, with no recompute. The choice
  // depends on the shapes only, so results do not depend on the thread count.
  const bool per_group = deterministic && d.B * d.Hkv >= kGroupTasksMin;
  // Atomic mode and per-group mode accumulate dQ here (the GPU's f32 dQ accumulator).
  std::vector<C> dq_acc(deterministic && !per_group ? 0 : BH * d.T * D, C(0));

  // dK/dV pass: one task per (b, kv head, key tile), or per (b, kv head) in per-group mode.
  const int64_t n_kt = (d.S + kBc - 1) / kBc;
  const int64_t kv_tasks = per_group ? d.B * d.Hkv : d.B * d.Hkv * n_kt;
#pragma omp parallel if (parallel && kv_tasks > 1)
  {
    std::vector<C> kt(kBc * D), ktT(kBc * D), vtT(kBc * D), dkt(kBc * D), dvt(kBc * D), qr(D), gr(D), dqr(D);
    std::vector<C> ps(kBc), dps(kBc), ds(kBc);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < kv_tasks; ++task) {
    // Per-group mode: this task's key tiles are all of the group's, in order; else just one.
    for (int64_t kt_i = per_group ? 0 : task % n_kt; kt_i < (per_group ? n_kt : task % n_kt + 1); ++kt_i) {
      const int64_t bkv = per_group ? task : task / n_kt, b = bkv / d.Hkv, hkv = bkv % d.Hkv;
      const int64_t j0 = kt_i * kBc, cols = std::min(kBc, d.S - j0);
      load_rows(kp + (bkv * d.S + j0) * D, cols, D, kt.data());
      load_rows_transposed(kp + (bkv * d.S + j0) * D, cols, D, ktT.data());
      load_rows_transposed(vp + (bkv * d.S + j0) * D, cols, D, vtT.data());
      std::fill(dkt.begin(), dkt.begin() + cols * D, C(0));
      std::fill(dvt.begin(), dvt.begin() + cols * D, C(0));
      // The first query row that sees key j0: q_offset + i >= j0.
      const int64_t i_first = d.causal ? std::max<int64_t>(0, j0 - d.q_offset) : 0;
      for (int64_t hg = 0; hg < d.g; ++hg) {
        const int64_t bh = b * d.Hq + hkv * d.g + hg;
        for (int64_t i0 = i_first - i_first % kBr; i0 < d.T; i0 += kBr) {  // query tiles
          const int64_t i_end = std::min(d.T, i0 + kBr);
          for (int64_t i = std::max(i0, i_first); i < i_end; ++i) {
            const int64_t nc = std::min(cols, d.visible(i) - j0);
            if (nc <= 0) continue;
            const int64_t row = bh * d.T + i;
            load_rows(qp + row * D, 1, D, qr.data());
            load_rows(gp + row * D, 1, D, gr.data());
            const C lse_i = lp[row], delta_i = delta[row];
            row_times_tile(qr.data(), ktT.data(), D, nc, scale, ps.data());
            row_times_tile(gr.data(), vtT.data(), D, nc, C(1), dps.data());
#pragma omp simd
            for (int64_t j = 0; j < nc; ++j) {  // p in place of ps
              ps[j] = exp_c(ps[j] - lse_i);
              ds[j] = mma_round<T>(ps[j] * (dps[j] - delta_i));
            }
            for (int64_t j = 0; j < nc; ++j) {
              axpy(mma_round<T>(ps[j]), gr.data(), dvt.data() + j * D, D);
              axpy(scale * ds[j], qr.data(), dkt.data() + j * D, D);
            }
            if (per_group) {  // this task owns the group's dQ rows
              C* dst = dq_acc.data() + row * D;
              for (int64_t j = 0; j < nc; ++j) axpy(scale * ds[j], kt.data() + j * D, dst, D);
            } else if (!deterministic) {
              std::fill(dqr.begin(), dqr.end(), C(0));
              for (int64_t j = 0; j < nc; ++j) axpy(scale * ds[j], kt.data() + j * D, dqr.data(), D);
              C* dst = dq_acc.data() + row * D;
              for (int64_t x = 0; x < D; ++x) {
#pragma omp atomic
                dst[x] += dqr[x];
              }
            }
          }
        }
      }
      store_rows(dkt.data(), cols * D, dk.data<T>() + (bkv * d.S + j0) * D);
      store_rows(dvt.data(), cols * D, dv.data<T>() + (bkv * d.S + j0) * D);
    }
    }
  }

  if (!deterministic || per_group) {
    store_rows(dq_acc.data(), BH * d.T * D, dq.data<T>());
    return;
  }

  // dQ pass: one task per (b, h, query tile); a fixed key order per row.
  const int64_t n_qt = (d.T + kBr - 1) / kBr, q_tasks = BH * n_qt;
#pragma omp parallel if (parallel && q_tasks > 1)
  {
    std::vector<C> kt(kBc * D), ktT(kBc * D), vtT(kBc * D), qt(kBr * D), gt(kBr * D), dqt(kBr * D), ps(kBc), dps(kBc);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < q_tasks; ++task) {
      const int64_t qt_i = task % n_qt, bh = task / n_qt, b = bh / d.Hq, h = bh % d.Hq;
      const int64_t bkv = b * d.Hkv + h / d.g;
      const int64_t i0 = qt_i * kBr, rows = std::min(kBr, d.T - i0);
      load_rows(qp + (bh * d.T + i0) * D, rows, D, qt.data());
      load_rows(gp + (bh * d.T + i0) * D, rows, D, gt.data());
      std::fill(dqt.begin(), dqt.begin() + rows * D, C(0));
      const int64_t k_end = d.visible(i0 + rows - 1);
      for (int64_t j0 = 0; j0 < k_end; j0 += kBc) {
        const int64_t cols = std::min(kBc, k_end - j0);
        load_rows(kp + (bkv * d.S + j0) * D, cols, D, kt.data());
        load_rows_transposed(kp + (bkv * d.S + j0) * D, cols, D, ktT.data());
        load_rows_transposed(vp + (bkv * d.S + j0) * D, cols, D, vtT.data());
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t nc = std::min(cols, d.visible(i0 + r) - j0);
          const int64_t row = bh * d.T + i0 + r;
          const C* qr = qt.data() + r * D;
          const C* gr = gt.data() + r * D;
          C* dqr = dqt.data() + r * D;
          if (nc <= 0) continue;
          row_times_tile(qr, ktT.data(), D, nc, scale, ps.data());
          row_times_tile(gr, vtT.data(), D, nc, C(1), dps.data());
          const C lse_i = lp[row], delta_i = delta[row];
#pragma omp simd
          for (int64_t j = 0; j < nc; ++j) ps[j] = mma_round<T>(exp_c(ps[j] - lse_i) * (dps[j] - delta_i));  // ds
          for (int64_t j = 0; j < nc; ++j) axpy(scale * ps[j], kt.data() + j * D, dqr, D);
        }
      }
      store_rows(dqt.data(), rows * D, dq.data<T>() + (bh * d.T + i0) * D);
    }
  }
}

template <class T>
void decode_typed(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t q_offset,
                  int64_t num_splits, const Tensor& o, const Tensor& lse) {
  using C = compute_t<T>;
  const Dims d = dims_of(q, k, causal, q_offset);
  const int64_t D = d.D, BH = d.B * d.Hq, Tq = d.T;
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
      const int64_t kvh = b * d.Hkv + h / d.g;
      const int64_t k_lo = sp * chunk, k_hi = std::min(d.S, k_lo + chunk);
      for (int64_t i0 = 0; i0 < Tq; i0 += kBr) {
        const int64_t rows = std::min(kBr, Tq - i0);
        st.run(d, qp + bh * Tq * D, kp + kvh * d.S * D, vp + kvh * d.S * D, i0, rows, k_lo, k_hi,
               static_cast<C>(scale));
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
