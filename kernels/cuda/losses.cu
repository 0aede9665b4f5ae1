// CUDA fused chunked lm-head losses (kernels/losses.h): the CPU twin's chunking
// (kernels/cpu/losses.cpp) with GEMM operands in the input dtype.
//
// Two paths, chosen per call:
//   default ("lp"): h and W go to cuBLASLt as they are (bf16, or f32), f32 accumulation and an
//     f32 logits chunk (matmul_f32_out in kernels/cuda/matmul.cu: CUDA_R_16BF A/B, CUDA_R_32F
//     C/D, CUBLAS_COMPUTE_32F); no f32 copy of h or W is made.
//   SOMNUS_LOSS_CUDA=f32: the previous path, kept as the verified fallback: bf16 h and W are
//     first copied to f32 (2 GB for W at V = 128256, H = 4096), chunks of 2^22 / V rows, dW
//     accumulated through ≤ 16 MB scratch pieces plus an add kernel.
//
// The default path, per row chunk of R tokens:
//   u = h[rows] Wᵀ                  (R, V) f32, cuBLASLt, bf16 operands
//   one block of 256 threads per row: an online max / Σ e^(z − max) in one read of the row, the
//   row's loss into row_loss[n], and d loss / d u into the gradient chunk G, in the input
//   dtype: for bf16 inputs G is a separate (R, V) bf16 buffer (the gradient is ROUNDED TO
//   BF16 before the dh and dW GEMMs, as a bf16 autograd graph would round d logits: ≤ 2^-8
//   relative per element, ~1.6e-3 RMS, so ~2e-3 in ‖dh‖ and ‖dW‖); for f32 inputs G
//   overwrites u in place
//   dh[rows]  = G W                 cuBLASLt, f32 out (PPO vocab chunks: += through beta = 1)
//   dW       += Gᵀ h[rows]          cuBLASLt straight into the f32 dW, beta = 1 (the first row
//                                   chunk writes with beta = 0, so dW needs no zero fill)
// R: opt.chunking.rows_per_chunk when forced; else the most rows whose f32 (R, V) logits fit
// 512 MB (SOMNUS_LOSS_CUDA_CHUNK_MB overrides), rounded down to a multiple of 128 (a GEMM tile),
// at least 128 rows, at most N: R = 1024 at V = 128256. (512 MB rather than the first 256 MB:
// measured on an H100, 2026-11-26, fused KL at the shape below took 84.3 ms at 256 MB and
// 71.2 ms at 512 MB — half as many passes of the memory-bound dW GEMM — for a peak of 3.39
// instead of 3.20 GB; the unfused composition took 115.4 ms.) PPO chunks the vocab (Vc = opt.chunking
// .vocab_chunk, default V) and takes R from Vc the same way. Chunk rows are padded to a
// multiple of 8 elements so every row of u and G starts 16-byte aligned whatever V is.
// JSD's rows kernel does the β = 0 loss and gradient in one more read of the rows (β ≠ 0: two,
// the gradient needs the row's loss or Σ p·(…) first).
//
// Cost of the default path (N tokens, H hidden, V vocab; KL = JSD with β = 0, no hard labels):
//   FLOPs: 2·N·V·H per GEMM: CE / PPO 6·N·V·H (logits, dh, dW); KL 8·N·V·H (+ the teacher's
//     logits); PPO with several vocab chunks 8·N·V·H (logits recomputed for the gradient).
//   bytes: each row chunk writes u (4·R·V per logits GEMM), the rows kernel reads u (KL: u and
//     the teacher's, twice each) and writes G (2·R·V), the dh GEMM reads G and W (2·V·H), the
//     dW GEMM reads G and h[rows] and reads + writes the f32 dW (8·V·H): per chunk
//     ≈ 8·V·H + (4·#logits + 4·#reads + 2·3)·R·V bytes.
//   KL at N = 8192, H = 4096, V = 128256 (bf16, R = 512, 16 chunks: the first default),
//   predicted on an H100 before it ran:
//     GEMMs 8·N·V·H = 34.4 TFLOP at ~600 TFLOP/s (our cuBLASLt bf16 path: 635 at 8192³)
//       ≈ 57 ms, except that each dW GEMM (K = R = 512) is memory bound: 8·V·H = 4.2 GB at
//       ~2.9 TB/s ≈ 1.45 ms instead of 0.9 ms of FLOPs → +9 ms over 16 chunks;
//     rows kernels: 4 reads of 263 MB + 1 write of 131 MB per chunk ≈ 19 GB ≈ 6.5 ms;
//     logits writes 2 × 263 MB per chunk ≈ 8.4 GB ≈ 3 ms;
//     total ≈ 75 ms fwd + bwd (the unfused autograd composition: 114 ms, the old path: 2.13 s).
//     Measured (H100, 2026-11-26): 84.3 ms — the 16 dW passes cost more than predicted; with
//     R = 1024 (8 passes, the default now) 71.2 ms.
//   Memory of the pass (KL): dW f32 V·H·4 = 2.0 GiB, dh f32 N·H·4 = 128 MiB, u and the
//     teacher's (R, V) f32 = 2 × 250 MiB, G bf16 125 MiB: ≈ 2.7 GiB at R = 512 (+0.6 GiB at
//     R = 1024); SOMNUS_LOSS_CUDA_CHUNK_MB=128 (R = 256) gives ≈ 2.4 GiB for more time (32
//     memory-bound dW GEMMs instead of 8). The autograd node's backward (autograd/losses.cpp)
//     hands out the cast of dW to W's bf16 (1 GiB) while the f32 dW still lives: measured peak
//     of forward + backward 3.20 GB (R = 512) / 3.39 GB (R = 1024) — above the issue's 2.5 GB,
//     which an f32 dW (2.1 GB) plus its bf16 cast cannot meet.
// The loss is the sum of row_loss (N,) reduced on the device; PPO's metrics come back in one
// small (N, 4) copy. Verified on an H100 (tests/kernels/test_cuda_losses.cpp, 2026-11-26).
#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"
#include "kernels/losses.h"

namespace somnus::kernels::cuda {

// kernels/cuda/matmul.cu: out (M, N) f32 [+]= a (M, K) @ b (K, N), a and b bf16 or f32.
void matmul_f32_out(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate);

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunkElems = int64_t{1} << 22;
using BlockReduce = cub::BlockReduce<float, kThreads>;

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

// Reduce v over the block and broadcast the result to every thread.
// log m of the JSD mixture m = (1 − β)·p_s + β·p_t from the log-probabilities, stable:
// log(e^(lps + l1b) + e^(lpt + lb)) with l1b = log(1 − β), lb = log β.
__device__ __forceinline__ float mixture_log(float lps, float lpt, float l1b, float lb) {
  const float a = lps + l1b, b = lpt + lb, hi = fmaxf(a, b), lo = fminf(a, b);
  return hi + log1pf(__expf(lo - hi));
}

template <class Op>
__device__ float block_all(float v, Op op) {
  __shared__ typename BlockReduce::TempStorage tmp;
  __shared__ float result;
  const float r = BlockReduce(tmp).Reduce(v, op);
  if (threadIdx.x == 0) result = r;
  __syncthreads();
  const float out = result;
  __syncthreads();
  return out;
}

// ---------------------------------------------------------------- row kernels

__global__ void ce_rows_kernel(float* u, int64_t V, const int64_t* tgt, int64_t ignore, float inv_tau, float eps,
                               float zl, float c, bool grad, float* row_loss) {
  const int64_t i = blockIdx.x;
  float* z = u + i * V;
  const int64_t y = tgt[i];
  if (y == ignore) {
    for (int64_t v = threadIdx.x; v < V; v += kThreads) z[v] = 0.0f;
    if (threadIdx.x == 0) row_loss[i] = 0.0f;
    return;
  }
  const float zy = z[y] * inv_tau;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) m = fmaxf(m, z[v] * inv_tau);
  m = block_all(m, MaxOp{});
  float s = 0.0f, sz = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const float zz = z[v] * inv_tau;
    s += __expf(zz - m);
    sz += zz;
  }
  s = block_all(s, SumOp{});
  if (eps != 0.0f) sz = block_all(sz, SumOp{});
  const float lse = m + logf(s);
  if (threadIdx.x == 0) {
    row_loss[i] = (1.0f - eps) * (lse - zy) + eps * (lse - sz / static_cast<float>(V)) + zl * lse * lse;
  }
  if (!grad) return;
  const float pm = 1.0f + 2.0f * zl * lse, off = eps / static_cast<float>(V);
  for (int64_t v = threadIdx.x; v < V; v += kThreads) z[v] = c * (__expf(z[v] * inv_tau - lse) * pm - off);
  __syncthreads();
  if (threadIdx.x == 0) z[y] -= c * (1.0f - eps);
}

// Generalized JSD_β per row; s = student chunk (becomes the gradient), t = teacher chunk.
__global__ void jsd_rows_kernel(float* us, float* ut, int64_t V, const float* mask, const int64_t* tgt, int64_t ignore,
                                float beta, float tau, float hard_w, float scale, bool grad, float* row_loss) {
  const int64_t i = blockIdx.x;
  float* s = us + i * V;
  const float* t = ut + i * V;
  if (mask != nullptr && mask[i] == 0.0f) {
    for (int64_t v = threadIdx.x; v < V; v += kThreads) s[v] = 0.0f;
    if (threadIdx.x == 0) row_loss[i] = 0.0f;
    return;
  }
  const float inv_tau = 1.0f / tau;
  const int64_t y = tgt != nullptr ? tgt[i] : ignore;
  const bool hard = hard_w != 0.0f && y != ignore;
  const float uy = hard ? s[y] : 0.0f;
  float ms = -INFINITY, mt = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    ms = fmaxf(ms, s[v]);
    mt = fmaxf(mt, t[v]);
  }
  ms = block_all(ms, MaxOp{});  // of the raw logits; the tempered max is ms/τ
  mt = block_all(mt, MaxOp{});
  float ss = 0.0f, st = 0.0f, sr = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    ss += __expf((s[v] - ms) * inv_tau);
    st += __expf((t[v] - mt) * inv_tau);
    if (hard) sr += __expf(s[v] - ms);
  }
  ss = block_all(ss, SumOp{});
  st = block_all(st, SumOp{});
  if (hard) sr = block_all(sr, SumOp{});
  const float lse_s = ms * inv_tau + logf(ss), lse_t = mt * inv_tau + logf(st), lse_raw = ms + logf(sr);
  const float l1b = beta < 1.0f ? log1pf(-beta) : 0.0f, lb = beta > 0.0f ? logf(beta) : 0.0f;
  float loss = 0.0f, dot = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const float lps = s[v] * inv_tau - lse_s, lpt = t[v] * inv_tau - lse_t;
    if (beta == 0.0f) {
      loss += __expf(lpt) * (lpt - lps);
    } else if (beta == 1.0f) {
      loss += __expf(lps) * (lps - lpt);
    } else {
      const float lm = mixture_log(lps, lpt, l1b, lb);
      const float ps = __expf(lps);
      loss += beta * __expf(lpt) * (lpt - lm) + (1.0f - beta) * ps * (lps - lm);
      dot += ps * (1.0f - beta) * (lps - lm);
    }
  }
  loss = block_all(loss, SumOp{});
  if (beta != 0.0f && beta != 1.0f) dot = block_all(dot, SumOp{});
  if (threadIdx.x == 0) row_loss[i] = loss + (hard ? hard_w * (lse_raw - uy) : 0.0f);
  if (!grad) return;
  const float c = scale * inv_tau, w = hard_w * scale;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const float lps = s[v] * inv_tau - lse_s, lpt = t[v] * inv_tau - lse_t, ps = __expf(lps);
    float g;
    if (beta == 0.0f) {
      g = c * (ps - __expf(lpt));
    } else if (beta == 1.0f) {
      g = c * ps * (lps - lpt - loss);
    } else {
      const float lm = mixture_log(lps, lpt, l1b, lb);
      g = c * ps * ((1.0f - beta) * (lps - lm) - dot);
    }
    if (hard) g += w * __expf(s[v] - lse_raw);
    s[v] = g;
  }
  __syncthreads();
  if (hard && threadIdx.x == 0) s[y] -= w;
}

// PPO pass 1: folds one vocab chunk u (rows, vn), columns [v0, v0 + vn), into each row's
// online state st (N, 4): m = max z, s = Σ e^(z − m), t = Σ e^(z − m)·z, z[action]; z = u/τ.
// u is only read (with a single vocab chunk, pass 2 reuses it).
// Rows of u are ld floats apart (the f32 path: ld = vn).
__global__ void ppo_stats_kernel(const float* u, int64_t ld, int64_t vn, int64_t v0, const int64_t* act, float inv_tau,
                                 bool first, float* st) {
  const int64_t i = blockIdx.x;
  const float* z = u + i * ld;
  float* r = st + i * 4;
  float mc = -INFINITY;
  for (int64_t v = threadIdx.x; v < vn; v += kThreads) mc = fmaxf(mc, z[v] * inv_tau);
  mc = block_all(mc, MaxOp{});
  const float m_old = first ? -INFINITY : r[0];
  const float m = fmaxf(m_old, mc);
  float s = 0.0f, t = 0.0f;
  for (int64_t v = threadIdx.x; v < vn; v += kThreads) {
    const float zz = z[v] * inv_tau, e = __expf(zz - m);
    s += e;
    t += e * zz;
  }
  s = block_all(s, SumOp{});
  t = block_all(t, SumOp{});
  if (threadIdx.x == 0) {
    const float k = first || m_old == -INFINITY ? 0.0f : expf(m_old - m);  // rescale the earlier chunks
    r[1] = first ? s : r[1] * k + s;
    r[2] = first ? t : r[2] * k + t;
    r[0] = m;
    const int64_t a = act[i];
    if (a >= v0 && a < v0 + vn) r[3] = z[a - v0] * inv_tau;
  }
}

// PPO per token, after pass 1: a thread per row. side (N, 5): old_logp, ref_logp, advantage,
// weight, mask. metrics (N, 4): clipped low, clipped high, k3, entropy (0 for masked tokens).
// cl (N, 2): coef = weight · d l / d logp, and lse, for pass 2.
__global__ void ppo_token_kernel(const float* st, int64_t rows, const float* side, float eps_low, float eps_high,
                                 float kl_beta, bool has_ref, float* row_loss, float* logp, float* metrics, float* cl) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows) return;
  const float* r = st + i * 4;
  const float lse = r[0] + logf(r[1]), lp = r[3] - lse;
  const float* sd = side + i * 5;
  float coef = 0.0f;
  if (sd[4] != 0.0f) {
    const float A = sd[2], ratio = expf(lp - sd[0]);
    const float clipped = fminf(fmaxf(ratio, 1.0f - eps_low), 1.0f + eps_high);
    const float l1 = ratio * A, l2 = clipped * A;
    float l = -fminf(l1, l2), dl = 0.0f, k3 = 0.0f;
    if (l1 <= l2 || (ratio >= 1.0f - eps_low && ratio <= 1.0f + eps_high)) dl = -ratio * A;
    if (has_ref) {
      const float d = sd[1] - lp;
      k3 = expf(d) - d - 1.0f;
      l += kl_beta * k3;
      dl += kl_beta * (1.0f - expf(d));
    }
    coef = sd[3] * dl;
    row_loss[i] = sd[3] * l;
    metrics[i * 4 + 0] = (ratio < 1.0f - eps_low && A < 0.0f) ? 1.0f : 0.0f;
    metrics[i * 4 + 1] = (ratio > 1.0f + eps_high && A > 0.0f) ? 1.0f : 0.0f;
    metrics[i * 4 + 2] = k3;
    metrics[i * 4 + 3] = lse - r[2] / r[1];  // H = lse − Σ p z
  } else {
    row_loss[i] = 0.0f;
    for (int k = 0; k < 4; ++k) metrics[i * 4 + k] = 0.0f;
  }
  logp[i] = lp;
  cl[i * 2 + 0] = coef;
  cl[i * 2 + 1] = lse;
}

// PPO pass 2 on one vocab chunk u (rows, vn) of raw logits: d loss / d u_v =
// coef·([v = a] − p_v)/τ, written in place.
__global__ void ppo_grad_kernel(float* u, int64_t vn, int64_t v0, const int64_t* act, const float* cl, float inv_tau) {
  const int64_t i = blockIdx.x;
  float* z = u + i * vn;
  const float cf = cl[i * 2] * inv_tau, lse = cl[i * 2 + 1];
  for (int64_t v = threadIdx.x; v < vn; v += kThreads) z[v] = -cf * __expf(z[v] * inv_tau - lse);
  __syncthreads();
  const int64_t a = act[i];
  if (threadIdx.x == 0 && a >= v0 && a < v0 + vn) z[a - v0] += cf;
}

__global__ void add_inplace_kernel(float* dst, const float* src, int64_t n) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[k] += src[k];
  }
}

// ---------------------------------------------------------------- chunk driver

int64_t rows_per_chunk(int64_t N, int64_t V, int64_t forced) {
  if (forced > 0) return std::min(forced, std::max<int64_t>(N, 1));
  return std::clamp<int64_t>(kChunkElems / std::max<int64_t>(V, 1), 1, std::max<int64_t>(N, 1));
}

// out (rows, V) chunk = h[r0:r0+rows] Wᵀ through the backend matmul (cuBLASLt).
void logits_chunk(const Tensor& h, const Tensor& W, int64_t r0, int64_t rows, const Tensor& out) {
  const Tensor a = h.slice(0, r0, r0 + rows).unsqueeze(0);
  const Tensor b = W.transpose(0, 1).unsqueeze(0);
  matmul(a, b, Tensor(), false, out.slice(0, 0, rows).unsqueeze(0), Tensor());
}

// out (rows, vn) contiguous = h[r0:r0+rows] W[v0:v0+vn]ᵀ: one vocab chunk of the logits.
void logits_vocab_chunk(const Tensor& h, const Tensor& W, int64_t r0, int64_t rows, int64_t v0, int64_t vn,
                        const Tensor& out) {
  const Tensor a = h.slice(0, r0, r0 + rows).unsqueeze(0);
  const Tensor b = W.slice(0, v0, v0 + vn).transpose(0, 1).unsqueeze(0);
  matmul(a, b, Tensor(), false, out.unsqueeze(0), Tensor());
}

// Vocab rows of the dW scratch: (V_piece, H) ≤ kChunkElems floats.
int64_t dw_piece_rows(int64_t V, int64_t H) { return std::clamp<int64_t>(kChunkElems / std::max<int64_t>(H, 1), 1, V); }

void add_inplace(float* dst, const float* src, int64_t n) {
  add_inplace_kernel<<<grid_for(n, 256), 256>>>(dst, src, n);
  CUDA_CHECK_LAUNCH();
}

// For one gradient chunk G (rows, vn) of vocab columns [v0, v0 + vn):
//   dh[rows] = G W[v0:v0+vn]  (or += through dh_scratch (≥ rows, H) when dh_add),
//   dW[v0:v0+vn] += Gᵀ h[rows] in vocab pieces through a (V_piece, H) scratch (the backend
// GEMM writes, it does not accumulate); Gᵀ pieces are column-major views, passed to
// cuBLASLt as a transpose flag with ld = vn, not copied.
void grads_vocab_chunk(const Tensor& h, const Tensor& W, int64_t r0, int64_t rows, const Tensor& g, int64_t v0,
                       int64_t vn, const Tensor& dh, bool dh_add, const Tensor& dh_scratch, const Tensor& dW,
                       const Tensor& dW_piece) {
  const int64_t H = W.size(1);
  const Tensor Wc = W.slice(0, v0, v0 + vn).unsqueeze(0);
  const Tensor dh_rows = dh.slice(0, r0, r0 + rows);
  if (!dh_add) {
    matmul(g.unsqueeze(0), Wc, Tensor(), false, dh_rows.unsqueeze(0), Tensor());
  } else {
    const Tensor tmp = dh_scratch.slice(0, 0, rows);
    matmul(g.unsqueeze(0), Wc, Tensor(), false, tmp.unsqueeze(0), Tensor());
    add_inplace(static_cast<float*>(dh_rows.data_ptr()), static_cast<const float*>(tmp.data_ptr()), rows * H);
  }
  if (!dW.defined()) return;  // frozen lm head
  const int64_t P = dW_piece.size(0);
  const Tensor hr = h.slice(0, r0, r0 + rows).unsqueeze(0);
  for (int64_t p0 = 0; p0 < vn; p0 += P) {
    const int64_t pn = std::min(P, vn - p0);
    const Tensor piece = dW_piece.slice(0, 0, pn);
    matmul(g.slice(1, p0, p0 + pn).transpose(0, 1).unsqueeze(0), hr, Tensor(), false, piece.unsqueeze(0), Tensor());
    add_inplace(static_cast<float*>(dW.data_ptr()) + (v0 + p0) * H, static_cast<const float*>(piece.data_ptr()),
                pn * H);
  }
}

// The whole vocab at once (CE, JSD): dh[rows] = G W; dW += Gᵀ h[rows]. G is the (R, V) chunk.
void grads_chunk(const Tensor& h, const Tensor& W, int64_t r0, int64_t rows, const Tensor& G, const Tensor& dh,
                 const Tensor& dW, const Tensor& dW_piece) {
  grads_vocab_chunk(h, W, r0, rows, G.slice(0, 0, rows), 0, W.size(0), dh, false, Tensor(), dW, dW_piece);
}

Tensor sum_rows(const Tensor& row_loss, double scale) {
  const Tensor s = reduce_all(Reduce::sum, row_loss);
  return binary(Binary::mul, s, Tensor::scalar(scale, DType::f32, row_loss.device()));
}


// PPO's metrics, summed on the host (N·4 floats) over the valid tokens.
void sum_ppo_metrics(const Tensor& metrics, const Tensor& side, int64_t N, LinearPPOResult& res) {
  const std::vector<double> mv = metrics.to_vector();
  const std::vector<double> sv = side.to_vector();
  double nv = 0, lo = 0, hi = 0, kl = 0, ent = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (sv[n * 5 + 4] == 0.0) continue;
    nv += 1;
    lo += mv[n * 4];
    hi += mv[n * 4 + 1];
    kl += mv[n * 4 + 2];
    ent += mv[n * 4 + 3];
  }
  nv = std::max(nv, 1.0);
  res.clip_low_fraction = lo / nv;
  res.clip_high_fraction = hi / nv;
  res.mean_kl = kl / nv;
  res.entropy = ent / nv;
}

// ---------------------------------------------------------------- default path: row kernels
//
// Rows of the f32 logits chunk u are ld floats apart, rows of the gradient chunk g ldg
// elements apart; g may alias u (f32 inputs: TG = float, ldg = ld). Each element of g is
// written by the thread that last reads the same element of u, and everything any thread
// reads at another index (u[y]) is read before the first __syncthreads, so the aliasing is
// safe. The streaming loops are unrolled 4× so each thread has several loads in flight (the
// rows kernels are bound by reading the f32 chunk: R = 512 rows are only ~4 blocks per SM).

// One more element x into a thread's online (max m, Σ e^(x − m) = s).
__device__ __forceinline__ void online_add(float& m, float& s, float x) {
  if (x > m) {
    s = s * __expf(m - x) + 1.0f;  // m = −inf at the first element: s = 0·0 + 1
    m = x;
  } else {
    s += __expf(x - m);
  }
}

// logsumexp over the block from every thread's online (m, s); threads without elements have
// m = −inf, s = 0 and contribute nothing.
__device__ float block_lse(float m, float s) {
  const float M = block_all(m, MaxOp{});
  const float part = m == -INFINITY ? 0.0f : s * __expf(m - M);
  const float S = block_all(part, SumOp{});
  return M + logf(S);
}

template <class TG>
__global__ void ce_rows_lp_kernel(const float* u, int64_t ld, TG* g, int64_t ldg, int64_t V, const int64_t* tgt,
                                  int64_t ignore, float inv_tau, float eps, float zl, float c, bool grad,
                                  float* row_loss) {
  const int64_t i = blockIdx.x;
  const float* z = u + i * ld;
  TG* gr = g + i * ldg;
  const int64_t y = tgt[i];
  if (y == ignore) {
    if (grad) {
      for (int64_t v = threadIdx.x; v < V; v += kThreads) gr[v] = TG(0.0f);
    }
    if (threadIdx.x == 0) row_loss[i] = 0.0f;
    return;
  }
  const float zy = z[y] * inv_tau;  // before any thread can overwrite it (g aliasing u)
  float m = -INFINITY, s = 0.0f, sz = 0.0f;
#pragma unroll 4
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const float zz = z[v] * inv_tau;
    online_add(m, s, zz);
    sz += zz;
  }
  const float lse = block_lse(m, s);
  if (eps != 0.0f) sz = block_all(sz, SumOp{});
  if (threadIdx.x == 0) {
    row_loss[i] = (1.0f - eps) * (lse - zy) + eps * (lse - sz / static_cast<float>(V)) + zl * lse * lse;
  }
  if (!grad) return;
  const float pm = 1.0f + 2.0f * zl * lse, off = eps / static_cast<float>(V), cy = c * (1.0f - eps);
#pragma unroll 4
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    float gv = c * (__expf(z[v] * inv_tau - lse) * pm - off);
    if (v == y) gv -= cy;
    gr[v] = TG(gv);
  }
}

// Generalized JSD_β per row; us = student chunk, ut = teacher chunk (both rows ld apart), g
// the student's gradient (may alias us).
template <class TG>
__global__ void jsd_rows_lp_kernel(const float* us, const float* ut, int64_t ld, TG* g, int64_t ldg, int64_t V,
                                   const float* mask, const int64_t* tgt, int64_t ignore, float beta, float tau,
                                   float hard_w, float scale, bool grad, float* row_loss) {
  const int64_t i = blockIdx.x;
  const float* s = us + i * ld;
  const float* t = ut + i * ld;
  TG* gr = g + i * ldg;
  if (mask != nullptr && mask[i] == 0.0f) {
    if (grad) {
      for (int64_t v = threadIdx.x; v < V; v += kThreads) gr[v] = TG(0.0f);
    }
    if (threadIdx.x == 0) row_loss[i] = 0.0f;
    return;
  }
  const float inv_tau = 1.0f / tau;
  const int64_t y = tgt != nullptr ? tgt[i] : ignore;
  const bool hard = hard_w != 0.0f && y != ignore;
  const float uy = hard ? s[y] : 0.0f;  // before any thread can overwrite it
  float ms = -INFINITY, ss = 0.0f, mt = -INFINITY, st = 0.0f, mr = -INFINITY, sr = 0.0f;
#pragma unroll 4
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const float sv = s[v];
    online_add(ms, ss, sv * inv_tau);
    online_add(mt, st, t[v] * inv_tau);
    if (hard) online_add(mr, sr, sv);
  }
  const float lse_s = block_lse(ms, ss), lse_t = block_lse(mt, st);
  const float lse_raw = hard ? block_lse(mr, sr) : 0.0f;  // `hard` is uniform over the block
  const float l1b = beta < 1.0f ? log1pf(-beta) : 0.0f, lb = beta > 0.0f ? logf(beta) : 0.0f;
  const float c = scale * inv_tau, w = hard_w * scale;
  float loss = 0.0f, dot = 0.0f;
  if (beta == 0.0f) {
    // Forward KL: the gradient c·(p_S − p_T) needs no row total, so loss and gradient share a pass.
#pragma unroll 4
    for (int64_t v = threadIdx.x; v < V; v += kThreads) {
      const float sv = s[v];
      const float lps = sv * inv_tau - lse_s, lpt = t[v] * inv_tau - lse_t, pt = __expf(lpt);
      loss += pt * (lpt - lps);
      if (grad) {
        float gv = c * (__expf(lps) - pt);
        if (hard) gv += w * (__expf(sv - lse_raw) - (v == y ? 1.0f : 0.0f));
        gr[v] = TG(gv);
      }
    }
    loss = block_all(loss, SumOp{});
  } else {
#pragma unroll 4
    for (int64_t v = threadIdx.x; v < V; v += kThreads) {
      const float lps = s[v] * inv_tau - lse_s, lpt = t[v] * inv_tau - lse_t;
      if (beta == 1.0f) {
        loss += __expf(lps) * (lps - lpt);
      } else {
        const float lm = mixture_log(lps, lpt, l1b, lb);
        const float ps = __expf(lps);
        loss += beta * __expf(lpt) * (lpt - lm) + (1.0f - beta) * ps * (lps - lm);
        dot += ps * (1.0f - beta) * (lps - lm);
      }
    }
    loss = block_all(loss, SumOp{});
    if (beta != 1.0f) dot = block_all(dot, SumOp{});
    if (grad) {
#pragma unroll 4
      for (int64_t v = threadIdx.x; v < V; v += kThreads) {
        const float sv = s[v];
        const float lps = sv * inv_tau - lse_s, lpt = t[v] * inv_tau - lse_t, ps = __expf(lps);
        float gv;
        if (beta == 1.0f) {
          gv = c * ps * (lps - lpt - loss);
        } else {
          const float lm = mixture_log(lps, lpt, l1b, lb);
          gv = c * ps * ((1.0f - beta) * (lps - lm) - dot);
        }
        if (hard) gv += w * (__expf(sv - lse_raw) - (v == y ? 1.0f : 0.0f));
        gr[v] = TG(gv);
      }
    }
  }
  if (threadIdx.x == 0) row_loss[i] = loss + (hard ? hard_w * (lse_raw - uy) : 0.0f);
}

// PPO pass 2 on one vocab chunk u (rows, vn; rows ld apart) of raw logits, columns
// [v0, v0 + vn): g = coef·([v = a] − p_v)/τ (g may alias u).
template <class TG>
__global__ void ppo_grad_lp_kernel(const float* u, int64_t ld, TG* g, int64_t ldg, int64_t vn, int64_t v0,
                                   const int64_t* act, const float* cl, float inv_tau) {
  const int64_t i = blockIdx.x;
  const float* z = u + i * ld;
  TG* gr = g + i * ldg;
  const float cf = cl[i * 2] * inv_tau, lse = cl[i * 2 + 1];
  const int64_t a = act[i] - v0;  // the action's column in this chunk (maybe outside it)
#pragma unroll 4
  for (int64_t v = threadIdx.x; v < vn; v += kThreads) {
    float gv = -cf * __expf(z[v] * inv_tau - lse);
    if (v == a) gv += cf;
    gr[v] = TG(gv);
  }
}

// ---------------------------------------------------------------- default path: drivers

// The f32 path's inputs: f32 contiguous (a full copy of a bf16 tensor).
Tensor as_f32(const Tensor& t) { return t.dtype() == DType::f32 ? t : t.to(DType::f32).contiguous(); }

bool f32_path_selected() {
  const char* e = std::getenv("SOMNUS_LOSS_CUDA");
  return e != nullptr && std::strcmp(e, "f32") == 0;
}

// Bytes of one f32 logits chunk: 512 MB, or SOMNUS_LOSS_CUDA_CHUNK_MB.
int64_t chunk_budget_bytes() {
  const char* e = std::getenv("SOMNUS_LOSS_CUDA_CHUNK_MB");
  const long mb = e != nullptr ? std::strtol(e, nullptr, 10) : 0;
  return (mb > 0 ? static_cast<int64_t>(mb) : int64_t{512}) << 20;
}

// Rows per chunk of the default path (see the header).
int64_t rows_for_budget(int64_t N, int64_t V, int64_t forced) {
  const int64_t n = std::max<int64_t>(N, 1);
  if (forced > 0) return std::min(forced, n);
  const int64_t fit = chunk_budget_bytes() / (4 * std::max<int64_t>(V, 1));
  return std::min(std::max<int64_t>(128, fit / 128 * 128), n);
}

int64_t padded(int64_t v) { return (v + 7) / 8 * 8; }

// A (rows, vn) view of a flat chunk buffer with rows ld apart.
Tensor rows_view(const Tensor& buf, int64_t rows, int64_t vn, int64_t ld) {
  return buf.slice(0, 0, rows * ld).view({rows, ld}).slice(1, 0, vn);
}

// u (rows, vn) f32 = h[r0:r0+rows] W[v0:v0+vn]ᵀ.
void logits_lp(const Tensor& h, const Tensor& W, int64_t r0, int64_t rows, int64_t v0, int64_t vn, const Tensor& u) {
  matmul_f32_out(h.slice(0, r0, r0 + rows), W.slice(0, v0, v0 + vn).transpose(0, 1), u, false);
}

// For one gradient chunk G (rows, vn) of vocab columns [v0, v0 + vn), in h's dtype:
//   dh[r0:r0+rows] = G W[v0:v0+vn]  (+= when dh_add),
//   dW[v0:v0+vn]  += Gᵀ h[rows]     (= when !dW_add); Gᵀ is a transposed view (op T), not a copy.
void grads_lp(const Tensor& h, const Tensor& W, int64_t r0, int64_t rows, const Tensor& G, int64_t v0, int64_t vn,
              const Tensor& dh, bool dh_add, const Tensor& dW, bool dW_add) {
  matmul_f32_out(G, W.slice(0, v0, v0 + vn), dh.slice(0, r0, r0 + rows), dh_add);
  if (dW.defined()) matmul_f32_out(G.transpose(0, 1), h.slice(0, r0, r0 + rows), dW.slice(0, v0, v0 + vn), dW_add);
}

// The gradient chunk buffer: u itself for f32 inputs, a bf16 buffer of u's layout for bf16.
Tensor grad_buffer(const Tensor& u_buf, DType dt) {
  return dt == DType::f32 ? u_buf : Tensor::empty({u_buf.numel()}, dt, u_buf.device());
}

// Calls f(TG{}) with TG the gradient chunk's element type.
template <class F>
void visit_grad_type(DType dt, F&& f) {
  if (dt == DType::bf16) {
    f(bf16{});
  } else {
    f(float{});
  }
}

// (N, H) f32 dh and, when wanted, the (V, H) f32 dW (zero filled only when no chunk writes it).
void alloc_grads(bool grad, bool want_dW, int64_t N, int64_t H, int64_t V, const Device& dev, Tensor& dh,
                 Tensor& dW) {
  if (!grad) return;
  dh = Tensor::empty({N, H}, DType::f32, dev);
  if (want_dW) dW = N > 0 ? Tensor::empty({V, H}, DType::f32, dev) : Tensor::zeros({V, H}, DType::f32, dev);
}

LinearLossResult ce_lp_path(const Tensor& h, const Tensor& W, const Tensor& targets,
                            const LinearCrossEntropyOptions& opt, double denom) {
  const int64_t N = h.size(0), H = h.size(1), V = W.size(0);
  const Device dev = h.device();
  const DType dt = h.dtype();
  const int64_t R = rows_for_budget(N, V, opt.chunking.rows_per_chunk), ld = padded(V);
  const Tensor u_buf = Tensor::empty({R * ld}, DType::f32, dev);
  const Tensor g_buf = opt.compute_grad ? grad_buffer(u_buf, dt) : Tensor();
  const Tensor row_loss = Tensor::empty({N}, DType::f32, dev);
  LinearLossResult res;
  Tensor dh, dW;
  alloc_grads(opt.compute_grad, opt.compute_dW, N, H, V, dev, dh, dW);
  const double scale = 1.0 / denom;
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    const Tensor u = rows_view(u_buf, rows, V, ld);
    logits_lp(h, W, r0, rows, 0, V, u);
    visit_grad_type(dt, [&](auto tag) {
      using TG = decltype(tag);
      ce_rows_lp_kernel<TG><<<static_cast<unsigned>(rows), kThreads>>>(
          static_cast<const float*>(u_buf.data_ptr()), ld,
          opt.compute_grad ? static_cast<TG*>(g_buf.data_ptr()) : nullptr, ld, V,
          static_cast<const int64_t*>(targets.data_ptr()) + r0, opt.ignore_index,
          static_cast<float>(1.0 / opt.temperature), static_cast<float>(opt.label_smoothing),
          static_cast<float>(opt.z_loss), static_cast<float>(scale / opt.temperature), opt.compute_grad,
          static_cast<float*>(row_loss.data_ptr()) + r0);
      CUDA_CHECK_LAUNCH();
    });
    if (opt.compute_grad) grads_lp(h, W, r0, rows, rows_view(g_buf, rows, V, ld), 0, V, dh, false, dW, r0 > 0);
  }
  res.loss = sum_rows(row_loss, scale);
  res.dh = dh;
  res.dW = dW;
  return res;
}

LinearLossResult jsd_lp_path(const Tensor& hs, const Tensor& Ws, const Tensor& ht, const Tensor& Wt,
                             const Tensor& mask, const Tensor& targets, const LinearJSDOptions& opt, double denom) {
  const int64_t N = hs.size(0), H = hs.size(1), V = Ws.size(0);
  const Device dev = hs.device();
  const DType dt = hs.dtype();
  const int64_t R = rows_for_budget(N, V, opt.chunking.rows_per_chunk), ld = padded(V);
  const Tensor us_buf = Tensor::empty({R * ld}, DType::f32, dev), ut_buf = Tensor::empty({R * ld}, DType::f32, dev);
  const Tensor g_buf = opt.compute_grad ? grad_buffer(us_buf, dt) : Tensor();
  const Tensor row_loss = Tensor::empty({N}, DType::f32, dev);
  LinearLossResult res;
  Tensor dh, dW;
  alloc_grads(opt.compute_grad, opt.compute_dW, N, H, V, dev, dh, dW);
  const double scale = 1.0 / denom;
  const float* mp = mask.defined() ? static_cast<const float*>(mask.data_ptr()) : nullptr;
  const int64_t* tp = targets.defined() ? static_cast<const int64_t*>(targets.data_ptr()) : nullptr;
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    logits_lp(hs, Ws, r0, rows, 0, V, rows_view(us_buf, rows, V, ld));
    logits_lp(ht, Wt, r0, rows, 0, V, rows_view(ut_buf, rows, V, ld));
    visit_grad_type(dt, [&](auto tag) {
      using TG = decltype(tag);
      jsd_rows_lp_kernel<TG><<<static_cast<unsigned>(rows), kThreads>>>(
          static_cast<const float*>(us_buf.data_ptr()), static_cast<const float*>(ut_buf.data_ptr()), ld,
          opt.compute_grad ? static_cast<TG*>(g_buf.data_ptr()) : nullptr, ld, V, mp ? mp + r0 : nullptr,
          tp ? tp + r0 : nullptr, opt.ignore_index, static_cast<float>(opt.beta), static_cast<float>(opt.temperature),
          static_cast<float>(opt.hard_label_weight), static_cast<float>(scale), opt.compute_grad,
          static_cast<float*>(row_loss.data_ptr()) + r0);
      CUDA_CHECK_LAUNCH();
    });
    if (opt.compute_grad) grads_lp(hs, Ws, r0, rows, rows_view(g_buf, rows, V, ld), 0, V, dh, false, dW, r0 > 0);
  }
  res.loss = sum_rows(row_loss, scale);
  res.dh = dh;
  res.dW = dW;
  return res;
}

LinearPPOResult ppo_lp_path(const Tensor& h, const Tensor& W, const Tensor& actions, const Tensor& side, bool has_ref,
                            const LinearPPOOptions& opt) {
  const int64_t N = h.size(0), H = h.size(1), V = W.size(0);
  const Device dev = h.device();
  const DType dt = h.dtype();
  const int64_t Vc = opt.chunking.vocab_chunk > 0 ? std::min(opt.chunking.vocab_chunk, V) : V;
  const int64_t R = rows_for_budget(N, Vc, opt.chunking.rows_per_chunk), ld = padded(Vc);
  const int64_t n_vchunks = (V + Vc - 1) / Vc;
  const Tensor u_buf = Tensor::empty({R * ld}, DType::f32, dev);
  const Tensor g_buf = opt.compute_grad ? grad_buffer(u_buf, dt) : Tensor();
  const Tensor row_loss = Tensor::empty({N}, DType::f32, dev), logp = Tensor::empty({N}, DType::f32, dev);
  const Tensor metrics = Tensor::empty({N, 4}, DType::f32, dev);
  const Tensor state = Tensor::empty({N, 4}, DType::f32, dev), cl = Tensor::empty({N, 2}, DType::f32, dev);
  LinearPPOResult res;
  Tensor dh, dW;
  alloc_grads(opt.compute_grad, opt.compute_dW, N, H, V, dev, dh, dW);
  const float inv_tau = static_cast<float>(1.0 / opt.temperature);
  const int64_t* ap = static_cast<const int64_t*>(actions.data_ptr());
  float* stp = static_cast<float*>(state.data_ptr());
  const float* clp = static_cast<const float*>(cl.data_ptr());
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    // Pass 1: the online logsumexp over the vocab chunks; a chunk's rows are padded(vn) apart.
    for (int64_t c = 0; c < n_vchunks; ++c) {
      const int64_t v0 = c * Vc, vn = std::min(Vc, V - v0), ldu = padded(vn);
      logits_lp(h, W, r0, rows, v0, vn, rows_view(u_buf, rows, vn, ldu));
      ppo_stats_kernel<<<static_cast<unsigned>(rows), kThreads>>>(static_cast<const float*>(u_buf.data_ptr()), ldu,
                                                                   vn, v0, ap + r0, inv_tau, c == 0, stp + r0 * 4);
      CUDA_CHECK_LAUNCH();
    }
    ppo_token_kernel<<<static_cast<unsigned>((rows + 127) / 128), 128>>>(
        stp + r0 * 4, rows, static_cast<const float*>(side.data_ptr()) + r0 * 5, static_cast<float>(opt.eps_low),
        static_cast<float>(opt.eps_high), static_cast<float>(opt.kl_beta), has_ref,
        static_cast<float*>(row_loss.data_ptr()) + r0, static_cast<float*>(logp.data_ptr()) + r0,
        static_cast<float*>(metrics.data_ptr()) + r0 * 4, static_cast<float*>(cl.data_ptr()) + r0 * 2);
    CUDA_CHECK_LAUNCH();
    if (!opt.compute_grad) continue;
    // Pass 2: the gradient chunk by chunk (one chunk: pass 1's logits are still in place).
    for (int64_t c = 0; c < n_vchunks; ++c) {
      const int64_t v0 = c * Vc, vn = std::min(Vc, V - v0), ldu = padded(vn);
      if (n_vchunks > 1) logits_lp(h, W, r0, rows, v0, vn, rows_view(u_buf, rows, vn, ldu));
      visit_grad_type(dt, [&](auto tag) {
        using TG = decltype(tag);
        ppo_grad_lp_kernel<TG><<<static_cast<unsigned>(rows), kThreads>>>(
            static_cast<const float*>(u_buf.data_ptr()), ldu, static_cast<TG*>(g_buf.data_ptr()), ldu, vn, v0,
            ap + r0, clp + r0 * 2, inv_tau);
        CUDA_CHECK_LAUNCH();
      });
      grads_lp(h, W, r0, rows, rows_view(g_buf, rows, vn, ldu), v0, vn, dh, c > 0, dW, r0 > 0);
    }
  }
  res.loss = sum_rows(row_loss, 1.0);
  res.logp = logp;
  res.dh = dh;
  res.dW = dW;
  sum_ppo_metrics(metrics, side, N, res);
  return res;
}

// ---------------------------------------------------------------- the f32 path (SOMNUS_LOSS_CUDA=f32)

// h (N, H), W (V, H) f32 contiguous on the device; targets i64 (N,) on the device.
LinearLossResult ce_f32_path(const Tensor& h, const Tensor& W, const Tensor& targets,
                             const LinearCrossEntropyOptions& opt, double denom) {
  const int64_t N = h.size(0), H = h.size(1), V = W.size(0);
  const Device dev = h.device();
  const int64_t R = rows_per_chunk(N, V, opt.chunking.rows_per_chunk);
  Tensor chunk = Tensor::empty({R, V}, DType::f32, dev), row_loss = Tensor::empty({N}, DType::f32, dev);
  LinearLossResult res;
  Tensor dh, dW, dW_chunk;
  if (opt.compute_grad) {
    dh = Tensor::empty({N, H}, DType::f32, dev);
    if (opt.compute_dW) {
      dW = Tensor::zeros({V, H}, DType::f32, dev);
      dW_chunk = Tensor::empty({dw_piece_rows(V, H), H}, DType::f32, dev);
    }
  }
  const double scale = 1.0 / denom;
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    logits_chunk(h, W, r0, rows, chunk);
    ce_rows_kernel<<<static_cast<unsigned>(rows), kThreads>>>(
        static_cast<float*>(chunk.data_ptr()), V, static_cast<const int64_t*>(targets.data_ptr()) + r0,
        opt.ignore_index, static_cast<float>(1.0 / opt.temperature), static_cast<float>(opt.label_smoothing),
        static_cast<float>(opt.z_loss), static_cast<float>(scale / opt.temperature), opt.compute_grad,
        static_cast<float*>(row_loss.data_ptr()) + r0);
    CUDA_CHECK_LAUNCH();
    if (opt.compute_grad) grads_chunk(h, W, r0, rows, chunk, dh, dW, dW_chunk);
  }
  res.loss = sum_rows(row_loss, scale);
  res.dh = dh;
  res.dW = dW;
  return res;
}

LinearLossResult jsd_f32_path(const Tensor& hs, const Tensor& Ws, const Tensor& ht, const Tensor& Wt,
                              const Tensor& mask, const Tensor& targets, const LinearJSDOptions& opt, double denom) {
  const int64_t N = hs.size(0), H = hs.size(1), V = Ws.size(0);
  const Device dev = hs.device();
  const int64_t R = rows_per_chunk(N, V, opt.chunking.rows_per_chunk);
  Tensor cs = Tensor::empty({R, V}, DType::f32, dev), ct = Tensor::empty({R, V}, DType::f32, dev);
  Tensor row_loss = Tensor::empty({N}, DType::f32, dev);
  LinearLossResult res;
  Tensor dh, dW, dW_chunk;
  if (opt.compute_grad) {
    dh = Tensor::empty({N, H}, DType::f32, dev);
    if (opt.compute_dW) {
      dW = Tensor::zeros({V, H}, DType::f32, dev);
      dW_chunk = Tensor::empty({dw_piece_rows(V, H), H}, DType::f32, dev);
    }
  }
  const double scale = 1.0 / denom;
  const float* mp = mask.defined() ? static_cast<const float*>(mask.data_ptr()) : nullptr;
  const int64_t* tp = targets.defined() ? static_cast<const int64_t*>(targets.data_ptr()) : nullptr;
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    logits_chunk(hs, Ws, r0, rows, cs);
    logits_chunk(ht, Wt, r0, rows, ct);
    jsd_rows_kernel<<<static_cast<unsigned>(rows), kThreads>>>(
        static_cast<float*>(cs.data_ptr()), static_cast<float*>(ct.data_ptr()), V, mp ? mp + r0 : nullptr,
        tp ? tp + r0 : nullptr, opt.ignore_index, static_cast<float>(opt.beta), static_cast<float>(opt.temperature),
        static_cast<float>(opt.hard_label_weight), static_cast<float>(scale), opt.compute_grad,
        static_cast<float*>(row_loss.data_ptr()) + r0);
    CUDA_CHECK_LAUNCH();
    if (opt.compute_grad) grads_chunk(hs, Ws, r0, rows, cs, dh, dW, dW_chunk);
  }
  res.loss = sum_rows(row_loss, scale);
  res.dh = dh;
  res.dW = dW;
  return res;
}

// side (N, 5) f32 on the device: old_logp, ref_logp, advantage, weight, mask.
LinearPPOResult ppo_f32_path(const Tensor& h, const Tensor& W, const Tensor& actions, const Tensor& side, bool has_ref,
                             const LinearPPOOptions& opt) {
  const int64_t N = h.size(0), H = h.size(1), V = W.size(0);
  const Device dev = h.device();
  // Rows × vocab chunks, as the CPU twin: R rows of Vc columns per chunk.
  const int64_t Vc = opt.chunking.vocab_chunk > 0 ? std::min(opt.chunking.vocab_chunk, V) : V;
  const int64_t R = rows_per_chunk(N, Vc, opt.chunking.rows_per_chunk);
  const int64_t n_vchunks = (V + Vc - 1) / Vc;
  Tensor chunk = Tensor::empty({R * Vc}, DType::f32, dev), row_loss = Tensor::empty({N}, DType::f32, dev);
  Tensor logp = Tensor::empty({N}, DType::f32, dev), metrics = Tensor::empty({N, 4}, DType::f32, dev);
  Tensor state = Tensor::empty({N, 4}, DType::f32, dev), cl = Tensor::empty({N, 2}, DType::f32, dev);
  LinearPPOResult res;
  Tensor dh, dW, dW_chunk, dh_scratch;
  if (opt.compute_grad) {
    dh = Tensor::empty({N, H}, DType::f32, dev);
    if (n_vchunks > 1) dh_scratch = Tensor::empty({R, H}, DType::f32, dev);
    if (opt.compute_dW) {
      dW = Tensor::zeros({V, H}, DType::f32, dev);
      dW_chunk = Tensor::empty({dw_piece_rows(Vc, H), H}, DType::f32, dev);
    }
  }
  const float inv_tau = static_cast<float>(1.0 / opt.temperature);
  const int64_t* ap = static_cast<const int64_t*>(actions.data_ptr());
  float* stp = static_cast<float*>(state.data_ptr());
  float* clp = static_cast<float*>(cl.data_ptr());
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    const auto u_of = [&](int64_t vn) { return chunk.slice(0, 0, rows * vn).view({rows, vn}); };
    // Pass 1: the online logsumexp over the vocab chunks.
    for (int64_t c = 0; c < n_vchunks; ++c) {
      const int64_t v0 = c * Vc, vn = std::min(Vc, V - v0);
      const Tensor u = u_of(vn);
      logits_vocab_chunk(h, W, r0, rows, v0, vn, u);
      ppo_stats_kernel<<<static_cast<unsigned>(rows), kThreads>>>(static_cast<const float*>(u.data_ptr()), vn, vn, v0,
                                                                   ap + r0, inv_tau, c == 0, stp + r0 * 4);
      CUDA_CHECK_LAUNCH();
    }
    ppo_token_kernel<<<static_cast<unsigned>((rows + 127) / 128), 128>>>(
        stp + r0 * 4, rows, static_cast<const float*>(side.data_ptr()) + r0 * 5, static_cast<float>(opt.eps_low),
        static_cast<float>(opt.eps_high), static_cast<float>(opt.kl_beta), has_ref,
        static_cast<float*>(row_loss.data_ptr()) + r0, static_cast<float*>(logp.data_ptr()) + r0,
        static_cast<float*>(metrics.data_ptr()) + r0 * 4, clp + r0 * 2);
    CUDA_CHECK_LAUNCH();
    if (!opt.compute_grad) continue;
    // Pass 2: the gradient chunk by chunk (one chunk: pass 1's logits are still in place).
    for (int64_t c = 0; c < n_vchunks; ++c) {
      const int64_t v0 = c * Vc, vn = std::min(Vc, V - v0);
      const Tensor u = u_of(vn);
      if (n_vchunks > 1) logits_vocab_chunk(h, W, r0, rows, v0, vn, u);
      ppo_grad_kernel<<<static_cast<unsigned>(rows), kThreads>>>(static_cast<float*>(u.data_ptr()), vn, v0, ap + r0,
                                                                  clp + r0 * 2, inv_tau);
      CUDA_CHECK_LAUNCH();
      grads_vocab_chunk(h, W, r0, rows, u, v0, vn, dh, c > 0, dh_scratch, dW, dW_chunk);
    }
  }
  res.loss = sum_rows(row_loss, 1.0);
  res.logp = logp;
  res.dh = dh;
  res.dW = dW;
  sum_ppo_metrics(metrics, side, N, res);
  return res;
}

}  // namespace

// ---------------------------------------------------------------- entry points

// h (N, H), W (V, H) contiguous on the device, both bf16 or both f32 (kernels/cpu/losses.cpp
// casts other dtypes to f32); targets i64 (N,) on the device. dh and dW come back in f32.
LinearLossResult linear_cross_entropy_cuda(const Tensor& h, const Tensor& W, const Tensor& targets,
                                           const LinearCrossEntropyOptions& opt, double denom) {
  if (f32_path_selected()) return ce_f32_path(as_f32(h), as_f32(W), targets, opt, denom);
  return ce_lp_path(h, W, targets, opt, denom);
}

LinearLossResult linear_jsd_cuda(const Tensor& hs, const Tensor& Ws, const Tensor& ht, const Tensor& Wt,
                                 const Tensor& mask, const Tensor& targets, const LinearJSDOptions& opt, double denom) {
  if (f32_path_selected()) {
    return jsd_f32_path(as_f32(hs), as_f32(Ws), as_f32(ht), as_f32(Wt), mask, targets, opt, denom);
  }
  return jsd_lp_path(hs, Ws, ht, Wt, mask, targets, opt, denom);
}

// side (N, 5) f32 on the device: old_logp, ref_logp, advantage, weight, mask.
LinearPPOResult linear_ppo_loss_cuda(const Tensor& h, const Tensor& W, const Tensor& actions, const Tensor& side,
                                     bool has_ref, const LinearPPOOptions& opt) {
  if (f32_path_selected()) return ppo_f32_path(as_f32(h), as_f32(W), actions, side, has_ref, opt);
  return ppo_lp_path(h, W, actions, side, has_ref, opt);
}

}  // namespace somnus::kernels::cuda
