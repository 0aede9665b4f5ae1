// Fused chunked lm-head losses on CPU: cross-entropy, generalized JSD_β, PPO/GRPO (see
// kernels/losses.h for the formulas), plus the small RL helpers (group advantages, GAE).
// This file also holds the ops' entry points (validation, then device dispatch).
//
// Algorithm (per row chunk of R tokens; R = clamp(2^22 / V, 1, N) so one chunk of logits is
// ≤ 16 MB in f32; measured at N=2048, H=256, V=8192: 4 MB chunks re-read dW 16 times and made
// the fused pass ~10% slower than unfused, 16 MB chunks are ~10% faster at 0.14× the memory):
//   u   = h[rows] Wᵀ                       OpenBLAS sgemm, (R, H) x (H, V) -> scratch (R, V)
//   per row (OpenMP): z = u/τ; max, logsumexp, the loss, and d loss / d u written in place
//   dh[rows]  = G W                        sgemm (R, V) x (V, H)
//   dW       += Gᵀ h[rows]                 sgemm (V, R) x (R, H), accumulated in f32
// JSD runs the teacher's GEMM into a second scratch chunk. PPO runs rows × vocab chunks with
// an online logsumexp (max, Σe, Σe·z for the entropy); with a single vocab chunk the
// logits are kept for the gradient, otherwise they are recomputed in a second vocab pass.
// The gradients are scaled by the reduction (1/count) inside the pass, so the autograd
// backward is one scalar multiply.
// Cost: 3 GEMMs = 6·N·V·H FLOPs (8·N·V·H for JSD: + teacher; PPO with several vocab chunks
// 8·N·V·H), ~10 FLOPs + 2 exp per logit; memory: one or two (R, V) chunks + dh + dW, never
// (N, V) — the unfused composition holds several (N, V) tensors at once.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cpu/vec_math.h"
#include "kernels/losses.h"
#include "kernels/ops.h"
#include "tensor/format.h"
#include "tensor/profiler.h"

namespace somnus::kernels {

namespace {

using cpu::exp_c;

constexpr int64_t kChunkElems = int64_t{1} << 22;  // logits per chunk (16 MB in f32)

// C (M, N) = alpha · A (M, K) · op(B) + beta · C, row-major, contiguous operands.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  const auto ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  const auto i = [](int64_t v) { return static_cast<blasint>(v); };
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, i(M), i(N), i(K), alpha, A, i(lda), B, i(ldb), beta, C, i(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, i(M), i(N), i(K), alpha, A, i(lda), B, i(ldb), beta, C, i(ldc));
  }
}

// The compute copy of a float input: f32/f64 as is (contiguous), bf16 -> f32.
Tensor as_compute(const Tensor& t) {
  if (t.dtype() == DType::bf16) return cast(t, DType::f32).contiguous();
  return t.contiguous();
}

int64_t rows_per_chunk(int64_t N, int64_t V, int64_t forced) {
  if (forced > 0) return std::min(forced, std::max<int64_t>(N, 1));
  return std::clamp<int64_t>(kChunkElems / std::max<int64_t>(V, 1), 1, std::max<int64_t>(N, 1));
}

void check_float(const Tensor& t, const char* op, const char* name) {
  SOMNUS_CHECK(t.defined(), "{}: {} is undefined", op, name);
  SOMNUS_CHECK(is_floating(t.dtype()), "{}: {} must be floating, got {}", op, name, dtype_name(t.dtype()));
}

void check_same_device(const Tensor& t, const Tensor& ref, const char* op) {
  SOMNUS_CHECK(t.device() == ref.device(), "{}: inputs on different devices: {} vs {}", op, t.device().str(),
               ref.device().str());
}

#ifdef SOMNUS_WITH_CUDA
// CUDA inputs: contiguous, h flattened to (N, H). bf16 and f32 go as they are (bf16 GEMM
// operands, no f32 copy; kernels/cuda/losses.cu); other dtypes (f64) are converted to f32.
Tensor cuda_mat(const Tensor& t) {
  return (t.dtype() == DType::bf16 || t.dtype() == DType::f32 ? t : t.to(DType::f32)).contiguous();
}
Tensor cuda_rows(const Tensor& t) { return cuda_mat(t).view({-1, t.size(-1)}); }
Tensor i64_flat(const Tensor& t) { return t.to(DType::i64).contiguous().view({-1}); }
#endif

#ifndef SOMNUS_WITH_CUDA
[[noreturn]] void no_cuda(const char* op, const Tensor& t) {
  fail("{}: input on {} but somnus was built without CUDA", op, t.device().str());
}
#endif

// Leading shape of h (all dims but the last).
Shape lead_shape(const Tensor& h) { return Shape(h.shape().begin(), h.shape().end() - 1); }


// log(1 + t) for t in [0, 1] (the log M of JSD_β). f32: Cephes' logf polynomial on 1 + t with
// the exponent split by bit manipulation, branch-free so the loop vectorises (~1 ulp; std::log1p
// in that loop made the fused JSD slower than the unfused one). f64: std::log1p.
inline float log1p_unit(float t) {
  const float x = 1.0f + t;  // in [1, 2]: always normal
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  float e = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xffu) - 126);
  float m = std::bit_cast<float>((bits & 0x807fffffu) | 0x3f000000u);  // [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = ((((((((7.0376836292E-2f * m - 1.1514610310E-1f) * m + 1.1676998740E-1f) * m - 1.2420140846E-1f) * m +
                1.4249322787E-1f) * m - 1.6668057665E-1f) * m + 2.0000714765E-1f) * m - 2.4999993993E-1f) * m +
            3.3333331174E-1f) * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}
inline double log1p_unit(double t) { return std::log1p(t); }

template <class T>
T row_max(const T* z, int64_t V) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t v = 0; v < V; ++v) m = z[v] > m ? z[v] : m;
  return m;
}

// In place: z <- z·inv_tau; returns logsumexp(z).
template <class T>
double scale_and_lse(T* z, int64_t V, T inv_tau) {
  if (inv_tau != T(1)) {
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) z[v] *= inv_tau;
  }
  const T m = row_max(z, V);
  // Accumulated in T: the simd lanes keep partial sums (f64 accumulation of f32 terms halves
  // the vector width); each term is in (0, 1], relative error ~1e-6 for V up to 10^5.
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t v = 0; v < V; ++v) s += exp_c(z[v] - m);
  return static_cast<double>(m) + std::log(static_cast<double>(s));
}

template <class T>
void accumulate_grads(const T* h, int64_t H, const T* W, int64_t V, int64_t r0, int64_t R, const T* G, T* dh, T* dW) {
  gemm<T>(false, false, R, H, V, T(1), G, V, W, H, T(0), dh + r0 * H, H);        // dh[rows] = G W
  if (dW) gemm<T>(true, false, V, H, R, T(1), G, V, h + r0 * H, H, T(1), dW, H);  // dW += Gᵀ h[rows]
}

// ---------------------------------------------------------------- cross-entropy

template <class T>
LinearLossResult ce_cpu(const Tensor& h2, const Tensor& W, const std::vector<int64_t>& tgt,
                        const LinearCrossEntropyOptions& opt, double denom, const Shape& h_shape) {
  const int64_t N = h2.size(0), H = h2.size(1), V = W.size(0);
  const DType dt = h2.dtype();
  const T* hp = h2.data<T>();
  const T* Wp = W.data<T>();
  LinearLossResult res;
  Tensor dh, dW;
  if (opt.compute_grad) {
    dh = Tensor::empty({N, H}, dt);
    if (opt.compute_dW) dW = Tensor::zeros({V, H}, dt);
  }
  const int64_t R = rows_per_chunk(N, V, opt.chunking.rows_per_chunk);
  Tensor chunk = Tensor::empty({R, V}, dt);
  T* u = chunk.data<T>();
  const T inv_tau = static_cast<T>(1.0 / opt.temperature);
  const double eps = opt.label_smoothing, zl = opt.z_loss, scale = 1.0 / denom;
  double total = 0.0;
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    gemm<T>(false, true, rows, V, H, T(1), hp + r0 * H, H, Wp, H, T(0), u, V);
    // Each row's loss goes to its own entry and the entries are added in row order after the
    // loop: an OpenMP reduction would add the threads' partial sums in whatever order they
    // finish, and the loss would differ from run to run with 3 or more threads (DESIGN §5).
    std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
#pragma omp parallel for schedule(static) if (rows * V > 65536)
    for (int64_t i = 0; i < rows; ++i) {
      T* z = u + i * V;
      const int64_t y = tgt[r0 + i];
      if (y == opt.ignore_index) {
        std::fill(z, z + V, T(0));
        continue;
      }
      const double lse = scale_and_lse(z, V, inv_tau);
      double sum_z = 0.0;
      if (eps != 0.0) {
#pragma omp simd reduction(+ : sum_z)
        for (int64_t v = 0; v < V; ++v) sum_z += z[v];
      }
      row_loss[i] = (1.0 - eps) * (lse - static_cast<double>(z[y])) + eps * (lse - sum_z / V) + zl * lse * lse;
      if (!opt.compute_grad) continue;
      // d/du = (1/τ)·scale·(p (1 + 2 z lse) − ε/V − (1−ε)[v = y])
      const T c = static_cast<T>(scale / opt.temperature);
      const T pm = static_cast<T>(1.0 + 2.0 * zl * lse), off = static_cast<T>(eps / V), lse_t = static_cast<T>(lse);
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) z[v] = c * (exp_c(z[v] - lse_t) * pm - off);
      z[y] -= static_cast<T>(c * (1.0 - eps));
    }
    double chunk_loss = 0.0;
    for (const double l : row_loss) chunk_loss += l;
    total += chunk_loss;
    if (opt.compute_grad) accumulate_grads(hp, H, Wp, V, r0, rows, u, dh.data<T>(), dW.defined() ? dW.data<T>() : nullptr);
  }
  res.loss = Tensor::scalar(total * scale, dt);
  if (opt.compute_grad) {
    res.dh = dh.view(h_shape);
    res.dW = dW;
  }
  return res;
}

// ---------------------------------------------------------------- generalized JSD_β

template <class T>
LinearLossResult jsd_cpu(const Tensor& hs, const Tensor& Ws, const Tensor& ht, const Tensor& Wt,
                         const std::vector<double>& mask, const std::vector<int64_t>& tgt, const LinearJSDOptions& opt,
                         double denom, const Shape& h_shape) {
  const int64_t N = hs.size(0), Hs = hs.size(1), Ht = ht.size(1), V = Ws.size(0);
  const DType dt = hs.dtype();
  const T *hsp = hs.data<T>(), *Wsp = Ws.data<T>(), *htp = ht.data<T>(), *Wtp = Wt.data<T>();
  LinearLossResult res;
  Tensor dh, dW;
  if (opt.compute_grad) {
    dh = Tensor::empty({N, Hs}, dt);
    if (opt.compute_dW) dW = Tensor::zeros({V, Hs}, dt);
  }
  const int64_t R = rows_per_chunk(N, V, opt.chunking.rows_per_chunk);
  Tensor chunk_s = Tensor::empty({R, V}, dt), chunk_t = Tensor::empty({R, V}, dt);
  T *us = chunk_s.data<T>(), *ut = chunk_t.data<T>();
  const double beta = opt.beta, tau = opt.temperature, scale = 1.0 / denom;
  const bool hard = !tgt.empty() && opt.hard_label_weight != 0.0;
  const T inv_tau = static_cast<T>(1.0 / tau);
  const T log_1mb = static_cast<T>(beta < 1.0 ? std::log1p(-beta) : 0.0);
  const T log_b = static_cast<T>(beta > 0.0 ? std::log(beta) : 0.0);
  double total = 0.0;
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    gemm<T>(false, true, rows, V, Hs, T(1), hsp + r0 * Hs, Hs, Wsp, Hs, T(0), us, V);
    gemm<T>(false, true, rows, V, Ht, T(1), htp + r0 * Ht, Ht, Wtp, Ht, T(0), ut, V);
    // Per-row terms, added in row order after the loop (see ce_cpu): the hard-label term and
    // the divergence, in the order a serial loop adds them.
    std::vector<double> row_hard(static_cast<size_t>(rows), 0.0), row_div(static_cast<size_t>(rows), 0.0);
#pragma omp parallel for schedule(static) if (rows * V > 65536)
    for (int64_t i = 0; i < rows; ++i) {
      T* s = us + i * V;  // student logits -> log p_S -> gradient
      T* t = ut + i * V;  // teacher logits -> log p_T
      const int64_t n = r0 + i;
      if (!mask.empty() && mask[n] == 0.0) {
        std::fill(s, s + V, T(0));
        continue;
      }
      // Hard-label CE on the untempered student logits, taken before s is overwritten.
      const int64_t y = hard ? tgt[n] : -1;
      const bool use_hard = hard && y != opt.ignore_index;
      double lse_raw = 0.0;
      if (use_hard) {
        const T m = row_max(s, V);
        double acc = 0.0;
#pragma omp simd reduction(+ : acc)
        for (int64_t v = 0; v < V; ++v) acc += exp_c(s[v] - m);
        lse_raw = static_cast<double>(m) + std::log(acc);
        row_hard[i] = opt.hard_label_weight * (lse_raw - static_cast<double>(s[y]));
      }
      const T lse_s = static_cast<T>(scale_and_lse(s, V, inv_tau));
      const T lse_t = static_cast<T>(scale_and_lse(t, V, inv_tau));
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) {
        s[v] -= lse_s;
        t[v] -= lse_t;
      }
      double loss = 0.0, dot = 0.0;  // dot = Σ p_S·g for the softmax Jacobian
      if (beta == 0.0) {
        // KL(T‖S) = Σ p_T (lpT − lpS);  d/dz_s = p_S − p_T
#pragma omp simd reduction(+ : loss)
        for (int64_t v = 0; v < V; ++v) loss += exp_c(t[v]) * (t[v] - s[v]);
      } else if (beta == 1.0) {
        // KL(S‖T) = Σ p_S (lpS − lpT);  d/dz_s = p_S (f − KL), f = lpS − lpT
#pragma omp simd reduction(+ : loss)
        for (int64_t v = 0; v < V; ++v) loss += exp_c(s[v]) * (s[v] - t[v]);
      } else {
        // log M = logsumexp(lpS + log(1−β), lpT + log β);
        // L = β Σ p_T (lpT − lM) + (1−β) Σ p_S (lpS − lM);  d/dlpS-free: g = (1−β)(lpS − lM)
#pragma omp simd reduction(+ : loss, dot)
        for (int64_t v = 0; v < V; ++v) {
          const T a = s[v] + log_1mb, b = t[v] + log_b;
          const T hi = a > b ? a : b, lo = a > b ? b : a;
          const T lm = hi + log1p_unit(exp_c(lo - hi));
          const T ps = exp_c(s[v]), pt = exp_c(t[v]);
          const double g = (1.0 - beta) * static_cast<double>(s[v] - lm);
          loss += beta * static_cast<double>(pt * (t[v] - lm)) + (1.0 - beta) * static_cast<double>(ps * (s[v] - lm));
          dot += static_cast<double>(ps) * g;
          t[v] = static_cast<T>(g);  // the teacher row is no longer needed: keep g there
        }
      }
      row_div[i] = loss;
      if (!opt.compute_grad) continue;
      const T c = static_cast<T>(scale / tau);
      // The hard-label term adds w·scale·(p_raw − onehot), with the raw logits u = τ·(lpS + lse_s)
      // recovered from log p_S before it is overwritten.
      const T w = static_cast<T>(opt.hard_label_weight * scale), l_raw = static_cast<T>(lse_raw);
      const T tau_t = static_cast<T>(tau);
      const auto finish = [&](auto grad_of) {
        if (use_hard) {
#pragma omp simd
          for (int64_t v = 0; v < V; ++v) s[v] = grad_of(v) + w * exp_c(tau_t * (s[v] + lse_s) - l_raw);
          s[y] -= w;
        } else {
#pragma omp simd
          for (int64_t v = 0; v < V; ++v) s[v] = grad_of(v);
        }
      };
      if (beta == 0.0) {
        finish([&](int64_t v) { return c * (exp_c(s[v]) - exp_c(t[v])); });
      } else if (beta == 1.0) {
        const T kl = static_cast<T>(loss);
        finish([&](int64_t v) { return c * exp_c(s[v]) * (s[v] - t[v] - kl); });
      } else {
        const T d = static_cast<T>(dot);
        finish([&](int64_t v) { return c * exp_c(s[v]) * (t[v] - d); });
      }
    }
    double chunk_loss = 0.0;
    for (int64_t i = 0; i < rows; ++i) {
      chunk_loss += row_hard[static_cast<size_t>(i)];
      chunk_loss += row_div[static_cast<size_t>(i)];
    }
    total += chunk_loss;
    if (opt.compute_grad) accumulate_grads(hsp, Hs, Wsp, V, r0, rows, us, dh.data<T>(), dW.defined() ? dW.data<T>() : nullptr);
  }
  res.loss = Tensor::scalar(total * scale, dt);
  if (opt.compute_grad) {
    res.dh = dh.view(h_shape);
    res.dW = dW;
  }
  return res;
}

// ---------------------------------------------------------------- PPO

// Per-token weights of the PPO reduction (see kernels/losses.h).
std::vector<double> ppo_weights(int64_t B, int64_t Tn, const std::vector<double>& mask, const LinearPPOOptions& opt) {
  const int64_t N = B * Tn;
  std::vector<double> wt(N, 0.0);
  double n_valid = 0.0;
  for (int64_t n = 0; n < N; ++n) n_valid += mask[n] != 0.0 ? 1.0 : 0.0;
  for (int64_t b = 0; b < B; ++b) {
    double seq = 0.0;
    for (int64_t t = 0; t < Tn; ++t) seq += mask[b * Tn + t] != 0.0 ? 1.0 : 0.0;
    for (int64_t t = 0; t < Tn; ++t) {
      if (mask[b * Tn + t] == 0.0) continue;
      double w = 0.0;
      switch (opt.loss_type) {
        case PPOLossType::grpo: w = 1.0 / (static_cast<double>(B) * std::max(seq, 1.0)); break;
        case PPOLossType::bnpo: w = 1.0 / std::max(n_valid, 1.0); break;
        case PPOLossType::dr_grpo:
          w = 1.0 / (static_cast<double>(B) *
                     static_cast<double>(opt.max_completion_length > 0 ? opt.max_completion_length : Tn));
          break;
        case PPOLossType::dapo: w = 1.0 / (opt.num_valid > 0 ? opt.num_valid : std::max(n_valid, 1.0)); break;
      }
      wt[b * Tn + t] = w;
    }
  }
  return wt;
}

template <class T>
LinearPPOResult ppo_cpu(const Tensor& h2, const Tensor& W, int64_t B, int64_t Tn, const std::vector<int64_t>& act,
                        const std::vector<double>& old_lp, const std::vector<double>& ref_lp,
                        const std::vector<double>& adv, bool adv_per_token, const std::vector<double>& mask,
                        const LinearPPOOptions& opt, const Shape& h_shape) {
  const int64_t N = h2.size(0), H = h2.size(1), V = W.size(0);
  const DType dt = h2.dtype();
  const T* hp = h2.data<T>();
  const T* Wp = W.data<T>();
  const double tau = opt.temperature;
  const T inv_tau = static_cast<T>(1.0 / tau);
  double n_valid = 0.0;
  for (int64_t n = 0; n < N; ++n) n_valid += mask[n] != 0.0 ? 1.0 : 0.0;
  const std::vector<double> wt = ppo_weights(B, Tn, mask, opt);
  LinearPPOResult res;
  Tensor dh, dW;
  if (opt.compute_grad) {
    dh = Tensor::zeros({N, H}, dt);
    if (opt.compute_dW) dW = Tensor::zeros({V, H}, dt);
  }
  const int64_t Vc = opt.chunking.vocab_chunk > 0 ? std::min(opt.chunking.vocab_chunk, V) : V;
  const int64_t R = rows_per_chunk(N, Vc, opt.chunking.rows_per_chunk);
  const int64_t n_vchunks = (V + Vc - 1) / Vc;
  Tensor chunk = Tensor::empty({R, Vc}, dt);
  T* u = chunk.data<T>();
  std::vector<double> logp(N, 0.0);
  std::vector<double> rm(R), rs(R), rt(R), za(R), coef(R);
  double total = 0.0, clip_lo = 0.0, clip_hi = 0.0, kl_sum = 0.0, ent_sum = 0.0;
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    std::fill(rm.begin(), rm.end(), -std::numeric_limits<double>::infinity());
    std::fill(rs.begin(), rs.end(), 0.0);
    std::fill(rt.begin(), rt.end(), 0.0);
    // Pass 1: online logsumexp (m, Σe, Σe·z) over vocab chunks; pick z[action].
    for (int64_t c = 0; c < n_vchunks; ++c) {
      const int64_t v0 = c * Vc, vn = std::min(Vc, V - v0);
      gemm<T>(false, true, rows, vn, H, T(1), hp + r0 * H, H, Wp + v0 * H, H, T(0), u, vn);
#pragma omp parallel for schedule(static) if (rows * vn > 65536)
      for (int64_t i = 0; i < rows; ++i) {
        T* z = u + i * vn;
        if (inv_tau != T(1)) {
#pragma omp simd
          for (int64_t v = 0; v < vn; ++v) z[v] *= inv_tau;
        }
        const double mc = static_cast<double>(row_max(z, vn));
        const double m = std::max(rm[i], mc);
        const T mt = static_cast<T>(m);
        // Partial sums in T over one vocab chunk (8-16 simd lanes each), combined in f64.
        T s_c = 0, st_c = 0;
#pragma omp simd reduction(+ : s_c, st_c)
        for (int64_t v = 0; v < vn; ++v) {
          const T e = exp_c(z[v] - mt);
          s_c += e;
          st_c += e * z[v];
        }
        const double s = s_c, st = st_c;
        const double r = std::isinf(rm[i]) ? 0.0 : std::exp(rm[i] - m);
        rs[i] = rs[i] * r + s;
        rt[i] = rt[i] * r + st;
        rm[i] = m;
        const int64_t a = act[r0 + i];
        if (a >= v0 && a < v0 + vn) za[i] = static_cast<double>(z[a - v0]);
      }
    }
    // The per-token loss and its derivative by logp.
    double chunk_loss = 0.0;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t n = r0 + i;
      const double lse = rm[i] + std::log(rs[i]);
      const double lp = za[i] - lse;
      logp[n] = lp;
      coef[i] = 0.0;
      if (mask[n] == 0.0) continue;
      const double A = adv_per_token ? adv[n] : adv[n / Tn];
      const double ratio = std::exp(lp - old_lp[n]);
      const double clipped = std::clamp(ratio, 1.0 - opt.eps_low, 1.0 + opt.eps_high);
      const double l1 = ratio * A, l2 = clipped * A;
      double l = -std::min(l1, l2), dl = 0.0;
      if (l1 <= l2 || (ratio >= 1.0 - opt.eps_low && ratio <= 1.0 + opt.eps_high)) dl = -ratio * A;
      if (!ref_lp.empty()) {
        const double d = ref_lp[n] - lp;
        const double k3 = std::exp(d) - d - 1.0;
        kl_sum += k3;
        l += opt.kl_beta * k3;
        dl += opt.kl_beta * (1.0 - std::exp(d));
      }
      clip_lo += (ratio < 1.0 - opt.eps_low && A < 0.0) ? 1.0 : 0.0;
      clip_hi += (ratio > 1.0 + opt.eps_high && A > 0.0) ? 1.0 : 0.0;
      ent_sum += lse - rt[i] / rs[i];  // H = lse − Σ p z
      chunk_loss += wt[n] * l;
      coef[i] = wt[n] * dl;
    }
    total += chunk_loss;
    if (!opt.compute_grad) continue;
    // Pass 2: d/du_v = coef·([v = a] − p_v)/τ, per vocab chunk (recomputed unless it is the only one).
    for (int64_t c = 0; c < n_vchunks; ++c) {
      const int64_t v0 = c * Vc, vn = std::min(Vc, V - v0);
      if (n_vchunks > 1) {
        gemm<T>(false, true, rows, vn, H, T(inv_tau), hp + r0 * H, H, Wp + v0 * H, H, T(0), u, vn);
      }
#pragma omp parallel for schedule(static) if (rows * vn > 65536)
      for (int64_t i = 0; i < rows; ++i) {
        T* z = u + i * vn;
        const T lse = static_cast<T>(rm[i] + std::log(rs[i]));
        const T cf = static_cast<T>(-coef[i] / tau);
#pragma omp simd
        for (int64_t v = 0; v < vn; ++v) z[v] = cf * exp_c(z[v] - lse);
        const int64_t a = act[r0 + i];
        if (a >= v0 && a < v0 + vn) z[a - v0] += static_cast<T>(coef[i] / tau);
      }
      T* dhp = dh.data<T>();
      gemm<T>(false, false, rows, H, vn, T(1), u, vn, Wp + v0 * H, H, T(1), dhp + r0 * H, H);
      if (dW.defined()) gemm<T>(true, false, vn, H, rows, T(1), u, vn, hp + r0 * H, H, T(1), dW.data<T>() + v0 * H, H);
    }
  }
  res.loss = Tensor::scalar(total, dt);
  res.logp = Tensor::from_vector(logp, {B, Tn}, dt);
  const double nv = std::max(n_valid, 1.0);
  res.clip_low_fraction = clip_lo / nv;
  res.clip_high_fraction = clip_hi / nv;
  res.mean_kl = kl_sum / nv;
  res.entropy = ent_sum / nv;
  res.num_valid = static_cast<int64_t>(n_valid);
  if (opt.compute_grad) {
    res.dh = dh.view(h_shape);
    res.dW = dW;
  }
  return res;
}

std::vector<int64_t> host_ids(const Tensor& t, const char* op, const char* name) {
  SOMNUS_CHECK(t.dtype() == DType::i32 || t.dtype() == DType::i64, "{}: {} must be i32 or i64, got {}", op, name,
               dtype_name(t.dtype()));
  const std::vector<double> v = t.to_vector();
  return std::vector<int64_t>(v.begin(), v.end());
}

// Every id in [0, V), except `ignore` where a loss has an ignore value (CE, JSD's hard labels).
// PPO has none: a masked action is still a token, so an out-of-range one is refused too.
void check_ids(const std::vector<int64_t>& ids, int64_t V, std::optional<int64_t> ignore, const char* op,
               const char* name) {
  for (size_t i = 0; i < ids.size(); ++i) {
    SOMNUS_CHECK(ids[i] == ignore || (ids[i] >= 0 && ids[i] < V), "{}: {}[{}] = {} is outside [0, {})", op, name, i,
                 ids[i], V);
  }
}

void check_lm_head(const Tensor& h, const Tensor& W, const char* op, const char* hn, const char* wn) {
  check_float(h, op, hn);
  check_float(W, op, wn);
  SOMNUS_CHECK(h.dim() >= 2, "{}: {} must be (..., H), got {}", op, hn, shape_str(h.shape()));
  SOMNUS_CHECK(W.dim() == 2 && W.size(1) == h.size(-1), "{}: {} must be (V, H) with H = {}'s last dim: {} {} vs {} {}",
               op, wn, hn, hn, shape_str(h.shape()), wn, shape_str(W.shape()));
  SOMNUS_CHECK(h.dtype() == W.dtype(), "{}: dtypes differ: {} {} vs {} {}", op, hn, dtype_name(h.dtype()), wn,
               dtype_name(W.dtype()));
  check_same_device(W, h, op);
}

// Profiler FLOP count: 2·N·V·H per GEMM pass (the logits, then dh and dW when computed).
double lm_head_flops(const Tensor& h, const Tensor& W, bool grad, bool dW) {
  if (!h.defined() || !W.defined() || h.dim() < 1 || W.dim() != 2 || h.size(-1) == 0) return 0.0;
  const double f = 2.0 * static_cast<double>(h.numel() / h.size(-1)) * static_cast<double>(W.size(0)) *
                   static_cast<double>(W.size(1));
  return f * (1.0 + (grad ? 1.0 : 0.0) + (grad && dW ? 1.0 : 0.0));
}

}  // namespace

#ifdef SOMNUS_WITH_CUDA
namespace cuda {  // kernels/cuda/losses.cu
LinearLossResult linear_cross_entropy_cuda(const Tensor& h, const Tensor& W, const Tensor& targets,
                                           const LinearCrossEntropyOptions& opt, double denom);
LinearLossResult linear_jsd_cuda(const Tensor& hs, const Tensor& Ws, const Tensor& ht, const Tensor& Wt,
                                 const Tensor& mask, const Tensor& targets, const LinearJSDOptions& opt, double denom);
LinearPPOResult linear_ppo_loss_cuda(const Tensor& h, const Tensor& W, const Tensor& actions, const Tensor& side,
                                     bool has_ref, const LinearPPOOptions& opt);
}  // namespace cuda
#endif

// ---------------------------------------------------------------- entry points

LinearLossResult linear_cross_entropy(const Tensor& h, const Tensor& W, const Tensor& targets,
                                      const LinearCrossEntropyOptions& opt) {
  const char* op = "linear_cross_entropy";
  const profiler::OpScope profile(op, {&h, &W, &targets},
                                  [&] { return lm_head_flops(h, W, opt.compute_grad, opt.compute_dW); });
  check_lm_head(h, W, op, "h", "W");
  SOMNUS_CHECK(targets.defined() && targets.shape() == lead_shape(h), "{}: targets must have shape {} (h {}), got {}",
               op, shape_str(lead_shape(h)), shape_str(h.shape()),
               targets.defined() ? shape_str(targets.shape()) : std::string("undefined"));
  SOMNUS_CHECK(opt.temperature > 0.0, "{}: temperature must be > 0, got {}", op, opt.temperature);
  SOMNUS_CHECK(opt.label_smoothing >= 0.0 && opt.label_smoothing < 1.0, "{}: label_smoothing must be in [0, 1), got {}",
               op, opt.label_smoothing);
  SOMNUS_CHECK(opt.z_loss >= 0.0, "{}: z_loss must be >= 0, got {}", op, opt.z_loss);
  const int64_t V = W.size(0), H = W.size(1);
  const std::vector<int64_t> tgt = host_ids(targets, op, "targets");
  check_ids(tgt, V, opt.ignore_index, op, "targets");
  int64_t valid = 0;
  for (int64_t y : tgt) valid += y != opt.ignore_index;
  double denom = 1.0;
  if (opt.reduction == LossReduction::mean) denom = opt.num_valid > 0 ? opt.num_valid : std::max<double>(valid, 1.0);
  if (h.device().is_cuda()) {
#ifdef SOMNUS_WITH_CUDA
    LinearLossResult res = cuda::linear_cross_entropy_cuda(cuda_rows(h), cuda_mat(W),
                                                           i64_flat(targets).to(h.device()), opt, denom);
    if (res.dh.defined()) res.dh = res.dh.view(h.shape());
    res.num_valid = valid;
    return res;
#else
    no_cuda(op, h);
#endif
  }
  const Tensor hc = as_compute(h).view({-1, H}), Wc = as_compute(W);
  LinearLossResult res = hc.dtype() == DType::f64 ? ce_cpu<double>(hc, Wc, tgt, opt, denom, h.shape())
                                                  : ce_cpu<float>(hc, Wc, tgt, opt, denom, h.shape());
  res.num_valid = valid;
  return res;
}

LinearLossResult linear_jsd(const Tensor& h_s, const Tensor& W_s, const Tensor& h_t, const Tensor& W_t,
                            const LinearJSDOptions& opt) {
  const char* op = "linear_jsd";
  const profiler::OpScope profile(op, {&h_s, &W_s, &h_t, &W_t}, [&] {
    return lm_head_flops(h_s, W_s, opt.compute_grad, opt.compute_dW) + lm_head_flops(h_t, W_t, false, false);
  });
  check_lm_head(h_s, W_s, op, "h_s", "W_s");
  check_lm_head(h_t, W_t, op, "h_t", "W_t");
  SOMNUS_CHECK(lead_shape(h_s) == lead_shape(h_t), "{}: student and teacher tokens differ: h_s {} vs h_t {}", op,
               shape_str(h_s.shape()), shape_str(h_t.shape()));
  SOMNUS_CHECK(W_s.size(0) == W_t.size(0), "{}: vocab sizes differ: W_s {} vs W_t {}", op, shape_str(W_s.shape()),
               shape_str(W_t.shape()));
  SOMNUS_CHECK(h_s.dtype() == h_t.dtype(), "{}: student and teacher dtypes differ: {} vs {}", op,
               dtype_name(h_s.dtype()), dtype_name(h_t.dtype()));
  SOMNUS_CHECK(opt.beta >= 0.0 && opt.beta <= 1.0, "{}: beta must be in [0, 1], got {}", op, opt.beta);
  SOMNUS_CHECK(opt.temperature > 0.0, "{}: temperature must be > 0, got {}", op, opt.temperature);
  const int64_t V = W_s.size(0), N = shape_numel(lead_shape(h_s));
  std::vector<double> mask;
  if (opt.mask.defined()) {
    SOMNUS_CHECK(opt.mask.shape() == lead_shape(h_s), "{}: mask must have shape {}, got {}", op,
                 shape_str(lead_shape(h_s)), shape_str(opt.mask.shape()));
    mask = opt.mask.to_vector();
  }
  std::vector<int64_t> tgt;
  if (opt.targets.defined()) {
    SOMNUS_CHECK(opt.targets.shape() == lead_shape(h_s), "{}: targets must have shape {}, got {}", op,
                 shape_str(lead_shape(h_s)), shape_str(opt.targets.shape()));
    tgt = host_ids(opt.targets, op, "targets");
    check_ids(tgt, V, opt.ignore_index, op, "targets");
  }
  int64_t valid = 0;
  for (int64_t n = 0; n < N; ++n) valid += mask.empty() || mask[n] != 0.0;
  double denom = 1.0;
  if (opt.reduction == LossReduction::mean) denom = opt.num_valid > 0 ? opt.num_valid : std::max<double>(valid, 1.0);
  check_same_device(h_t, h_s, op);
  if (h_s.device().is_cuda()) {
#ifdef SOMNUS_WITH_CUDA
    std::vector<double> mf(mask.begin(), mask.end());
    const Tensor mk = mask.empty() ? Tensor() : Tensor::from_vector(mf, {N}, DType::f32, h_s.device());
    const Tensor tg = tgt.empty() ? Tensor() : i64_flat(opt.targets).to(h_s.device());
    LinearLossResult res = cuda::linear_jsd_cuda(cuda_rows(h_s), cuda_mat(W_s), cuda_rows(h_t),
                                                 cuda_mat(W_t), mk, tg, opt, denom);
    if (res.dh.defined()) res.dh = res.dh.view(h_s.shape());
    res.num_valid = valid;
    return res;
#else
    no_cuda(op, h_s);
#endif
  }
  const Tensor hs = as_compute(h_s).view({-1, h_s.size(-1)}), Ws = as_compute(W_s);
  const Tensor ht = as_compute(h_t).view({-1, h_t.size(-1)}), Wt = as_compute(W_t);
  LinearLossResult res = hs.dtype() == DType::f64 ? jsd_cpu<double>(hs, Ws, ht, Wt, mask, tgt, opt, denom, h_s.shape())
                                                  : jsd_cpu<float>(hs, Ws, ht, Wt, mask, tgt, opt, denom, h_s.shape());
  res.num_valid = valid;
  return res;
}

const char* ppo_loss_type_name(PPOLossType t) {
  switch (t) {
    case PPOLossType::grpo: return "grpo";
    case PPOLossType::bnpo: return "bnpo";
    case PPOLossType::dr_grpo: return "dr_grpo";
    case PPOLossType::dapo: return "dapo";
  }
  return "?";
}

PPOLossType ppo_loss_type_from_name(const std::string& name) {
  for (PPOLossType t : {PPOLossType::grpo, PPOLossType::bnpo, PPOLossType::dr_grpo, PPOLossType::dapo}) {
    if (name == ppo_loss_type_name(t)) return t;
  }
  fail("linear_ppo_loss: unknown loss_type '{}' (expected grpo, bnpo, dr_grpo or dapo)", name);
}

LinearPPOResult linear_ppo_loss(const Tensor& h, const Tensor& W, const Tensor& actions, const Tensor& old_logp,
                                const Tensor& ref_logp, const Tensor& advantages, const Tensor& mask,
                                const LinearPPOOptions& opt) {
  const char* op = "linear_ppo_loss";
  const profiler::OpScope profile(op, {&h, &W, &actions},
                                  [&] { return lm_head_flops(h, W, opt.compute_grad, opt.compute_dW); });
  check_lm_head(h, W, op, "h", "W");
  SOMNUS_CHECK(h.dim() == 3, "{}: h must be (B, T, H), got {}", op, shape_str(h.shape()));
  const int64_t B = h.size(0), Tn = h.size(1), V = W.size(0), H = W.size(1);
  const Shape bt{B, Tn};
  SOMNUS_CHECK(actions.defined() && actions.shape() == bt, "{}: actions must be {}, got {}", op, shape_str(bt),
               actions.defined() ? shape_str(actions.shape()) : std::string("undefined"));
  SOMNUS_CHECK(old_logp.defined() && old_logp.shape() == bt, "{}: old_logp must be {}, got {}", op, shape_str(bt),
               old_logp.defined() ? shape_str(old_logp.shape()) : std::string("undefined"));
  SOMNUS_CHECK(!ref_logp.defined() || ref_logp.shape() == bt, "{}: ref_logp must be {}, got {}", op, shape_str(bt),
               ref_logp.defined() ? shape_str(ref_logp.shape()) : std::string("undefined"));
  SOMNUS_CHECK(advantages.defined() && (advantages.shape() == Shape{B} || advantages.shape() == bt),
               "{}: advantages must be ({}) or {}, got {}", op, B, shape_str(bt),
               advantages.defined() ? shape_str(advantages.shape()) : std::string("undefined"));
  SOMNUS_CHECK(!mask.defined() || mask.shape() == bt, "{}: mask must be {}, got {}", op, shape_str(bt),
               mask.defined() ? shape_str(mask.shape()) : std::string("undefined"));
  SOMNUS_CHECK(opt.eps_low >= 0.0 && opt.eps_low < 1.0 && opt.eps_high >= 0.0,
               "{}: need 0 <= eps_low < 1 and eps_high >= 0, got eps_low {} eps_high {}", op, opt.eps_low,
               opt.eps_high);
  SOMNUS_CHECK(opt.temperature > 0.0, "{}: temperature must be > 0, got {}", op, opt.temperature);
  SOMNUS_CHECK(opt.kl_beta == 0.0 || ref_logp.defined(), "{}: kl_beta = {} needs ref_logp", op, opt.kl_beta);
  const std::vector<int64_t> act = host_ids(actions, op, "actions");
  check_ids(act, V, std::nullopt, op, "actions");
  std::vector<double> m = mask.defined() ? mask.to_vector() : std::vector<double>(B * Tn, 1.0);
  const std::vector<double> old_lp = old_logp.to_vector(), adv = advantages.to_vector();
  const std::vector<double> ref_lp = ref_logp.defined() ? ref_logp.to_vector() : std::vector<double>{};
  const bool per_token = advantages.dim() == 2;
  if (h.device().is_cuda()) {
#ifdef SOMNUS_WITH_CUDA
    const int64_t N = B * Tn;
    const std::vector<double> wt = ppo_weights(B, Tn, m, opt);
    std::vector<double> side(N * 5);
    for (int64_t n = 0; n < N; ++n) {
      side[n * 5 + 0] = old_lp[n];
      side[n * 5 + 1] = ref_lp.empty() ? 0.0 : ref_lp[n];
      side[n * 5 + 2] = per_token ? adv[n] : adv[n / Tn];
      side[n * 5 + 3] = wt[n];
      side[n * 5 + 4] = m[n] != 0.0 ? 1.0 : 0.0;
    }
    LinearPPOResult res = cuda::linear_ppo_loss_cuda(cuda_rows(h), cuda_mat(W),
                                                     i64_flat(actions).to(h.device()),
                                                     Tensor::from_vector(side, {N, 5}, DType::f32, h.device()),
                                                     !ref_lp.empty(), opt);
    if (res.dh.defined()) res.dh = res.dh.view(h.shape());
    res.logp = res.logp.view({B, Tn});
    int64_t nv = 0;
    for (double x : m) nv += x != 0.0;
    res.num_valid = nv;
    return res;
#else
    no_cuda(op, h);
#endif
  }
  const Tensor hc = as_compute(h).view({-1, H}), Wc = as_compute(W);
  return hc.dtype() == DType::f64
             ? ppo_cpu<double>(hc, Wc, B, Tn, act, old_lp, ref_lp, adv, per_token, m, opt, h.shape())
             : ppo_cpu<float>(hc, Wc, B, Tn, act, old_lp, ref_lp, adv, per_token, m, opt, h.shape());
}

// ---------------------------------------------------------------- RL helpers

Tensor group_advantages(const Tensor& rewards, int64_t group_size, AdvantageScaling scaling, double eps) {
  const char* op = "group_advantages";
  SOMNUS_CHECK(rewards.defined() && rewards.dim() == 1, "{}: rewards must be 1-D, got {}", op,
               rewards.defined() ? shape_str(rewards.shape()) : std::string("undefined"));
  const int64_t n = rewards.size(0);
  SOMNUS_CHECK(group_size >= 1 && n % group_size == 0, "{}: {} rewards do not split into groups of {}", op, n,
               group_size);
  const std::vector<double> r = rewards.to_vector();
  std::vector<double> a(n);
  const auto stats = [](const double* x, int64_t k) {
    double mu = 0.0;
    for (int64_t i = 0; i < k; ++i) mu += x[i];
    mu /= static_cast<double>(k);
    double var = 0.0;
    for (int64_t i = 0; i < k; ++i) var += (x[i] - mu) * (x[i] - mu);
    return std::pair<double, double>{mu, k > 1 ? std::sqrt(var / static_cast<double>(k - 1)) : 0.0};
  };
  const double batch_std = stats(r.data(), n).second;
  for (int64_t g = 0; g < n; g += group_size) {
    const auto [mu, sd] = stats(r.data() + g, group_size);
    const double div = scaling == AdvantageScaling::group ? sd + eps : scaling == AdvantageScaling::batch ? batch_std + eps : 1.0;
    for (int64_t i = g; i < g + group_size; ++i) a[i] = (r[i] - mu) / div;
  }
  return Tensor::from_vector(a, {n}, rewards.dtype() == DType::f64 ? DType::f64 : DType::f32, rewards.device());
}

GAEResult gae(const Tensor& rewards, const Tensor& values, const Tensor& mask, double gamma, double lambda) {
  const char* op = "gae";
  SOMNUS_CHECK(rewards.defined() && rewards.dim() == 2, "{}: rewards must be (B, T), got {}", op,
               rewards.defined() ? shape_str(rewards.shape()) : std::string("undefined"));
  SOMNUS_CHECK(values.defined() && values.shape() == rewards.shape(), "{}: values must be {}, got {}", op,
               shape_str(rewards.shape()), values.defined() ? shape_str(values.shape()) : std::string("undefined"));
  SOMNUS_CHECK(!mask.defined() || mask.shape() == rewards.shape(), "{}: mask must be {}, got {}", op,
               shape_str(rewards.shape()), shape_str(mask.shape()));
  const int64_t B = rewards.size(0), Tn = rewards.size(1);
  const std::vector<double> r = rewards.to_vector(), v = values.to_vector();
  const std::vector<double> m = mask.defined() ? mask.to_vector() : std::vector<double>(B * Tn, 1.0);
  std::vector<double> adv(B * Tn, 0.0), ret(B * Tn, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    double next_a = 0.0, next_v = 0.0;
    for (int64_t t = Tn - 1; t >= 0; --t) {
      const int64_t i = b * Tn + t;
      if (m[i] == 0.0) {
        next_a = 0.0;
        next_v = 0.0;
        continue;
      }
      const double delta = r[i] + gamma * next_v - v[i];
      next_a = delta + gamma * lambda * next_a;
      next_v = v[i];
      adv[i] = next_a;
      ret[i] = next_a + v[i];
    }
  }
  const DType dt = rewards.dtype() == DType::f64 ? DType::f64 : DType::f32;
  return {Tensor::from_vector(adv, rewards.shape(), dt, rewards.device()),
          Tensor::from_vector(ret, rewards.shape(), dt, rewards.device())};
}

}  // namespace somnus::kernels
