// CUDA fused chunked lm-head losses (kernels/losses.h): the same row chunking as the CPU twin
// (kernels/cpu/losses.cpp), f32 compute.
//
// Per row chunk of R tokens (R = clamp(2^22 / V, 1, N), one (R, V) f32 chunk of logits):
//   u = h[rows] Wᵀ                 cuBLASLt (the backend matmul), (R, H) x (H, V)
//   one block of 256 threads per row: max / logsumexp with cub::BlockReduce, the loss of the
//   row into row_loss[n], and d loss / d u written over u in place (the logits chunk becomes
//   the gradient chunk, so nothing else of size R·V is allocated)
//   dh[rows] = G W                 cuBLASLt
//   dW      += Gᵀ h[rows]          cuBLASLt per vocab piece into a ≤ 16 MB scratch, then an add (f32)
// JSD runs the teacher GEMM into a second chunk. PPO uses one vocab chunk per row chunk here
// (the CPU twin also supports several vocab chunks with an online logsumexp; on the GPU the
// row chunk is sized so the whole vocab fits). The loss is the sum of row_loss (N,) reduced on
// the device; PPO's metrics come back in one small (N, 4) copy.
// Cost: as the CPU twin: 6·N·V·H GEMM FLOPs (8·N·V·H for JSD), ~3 reads + 1 write of each
// logit chunk in the row kernels.
// Not verified on a GPU yet (compile-checked for sm_80/sm_90 only).
#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"
#include "kernels/losses.h"

namespace somnus::kernels::cuda {

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
      const float a = lps + l1b, b = lpt + lb, hi = fmaxf(a, b), lo = fminf(a, b);
      const float lm = hi + log1pf(__expf(lo - hi));
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
      const float a = lps + l1b, b = lpt + lb, hi = fmaxf(a, b), lo = fminf(a, b);
      const float lm = hi + log1pf(__expf(lo - hi));
      g = c * ps * ((1.0f - beta) * (lps - lm) - dot);
    }
    if (hard) g += w * __expf(s[v] - lse_raw);
    s[v] = g;
  }
  __syncthreads();
  if (hard && threadIdx.x == 0) s[y] -= w;
}

// PPO per row (one vocab chunk). side (N, 5): old_logp, ref_logp, advantage, weight, mask.
// metrics (N, 4): clipped low, clipped high, k3, entropy (0 for masked tokens).
__global__ void ppo_rows_kernel(float* u, int64_t V, const int64_t* act, const float* side, float inv_tau,
                                float eps_low, float eps_high, float kl_beta, bool has_ref, bool grad,
                                float* row_loss, float* logp, float* metrics) {
  const int64_t i = blockIdx.x;
  float* z = u + i * V;
  const int64_t a = act[i];
  const float za = z[a] * inv_tau;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) m = fmaxf(m, z[v] * inv_tau);
  m = block_all(m, MaxOp{});
  float s = 0.0f, sz = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const float zz = z[v] * inv_tau, e = __expf(zz - m);
    s += e;
    sz += e * zz;
  }
  s = block_all(s, SumOp{});
  sz = block_all(sz, SumOp{});
  const float lse = m + logf(s), lp = za - lse;
  const float* sd = side + i * 5;
  const bool valid = sd[4] != 0.0f;
  float coef = 0.0f;
  if (valid) {
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
    if (threadIdx.x == 0) {
      row_loss[i] = sd[3] * l;
      metrics[i * 4 + 0] = (ratio < 1.0f - eps_low && A < 0.0f) ? 1.0f : 0.0f;
      metrics[i * 4 + 1] = (ratio > 1.0f + eps_high && A > 0.0f) ? 1.0f : 0.0f;
      metrics[i * 4 + 2] = k3;
      metrics[i * 4 + 3] = lse - sz / s;
    }
  } else if (threadIdx.x == 0) {
    row_loss[i] = 0.0f;
    for (int k = 0; k < 4; ++k) metrics[i * 4 + k] = 0.0f;
  }
  if (threadIdx.x == 0) logp[i] = lp;
  if (!grad) return;
  const float cf = coef * inv_tau;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) z[v] = -cf * __expf(z[v] * inv_tau - lse);
  __syncthreads();
  if (threadIdx.x == 0) z[a] += cf;
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

// Vocab rows of the dW scratch: (V_piece, H) ≤ kChunkElems floats.
int64_t dw_piece_rows(int64_t V, int64_t H) { return std::clamp<int64_t>(kChunkElems / std::max<int64_t>(H, 1), 1, V); }

// dh[rows] = G W; dW += Gᵀ h[rows], the latter in vocab pieces through a (V_piece, H) scratch
// (the backend GEMM writes, it does not accumulate); Gᵀ pieces are column-major views, passed
// to cuBLASLt as a transpose flag with ld = V, not copied.
void grads_chunk(const Tensor& h, const Tensor& W, int64_t r0, int64_t rows, const Tensor& G, const Tensor& dh,
                 const Tensor& dW, const Tensor& dW_piece) {
  const Tensor g = G.slice(0, 0, rows);
  matmul(g.unsqueeze(0), W.unsqueeze(0), Tensor(), false, dh.slice(0, r0, r0 + rows).unsqueeze(0), Tensor());
  if (!dW.defined()) return;  // frozen lm head
  const int64_t V = W.size(0), H = W.size(1), P = dW_piece.size(0);
  const Tensor hr = h.slice(0, r0, r0 + rows).unsqueeze(0);
  for (int64_t v0 = 0; v0 < V; v0 += P) {
    const int64_t vn = std::min(P, V - v0);
    const Tensor piece = dW_piece.slice(0, 0, vn);
    matmul(g.slice(1, v0, v0 + vn).transpose(0, 1).unsqueeze(0), hr, Tensor(), false, piece.unsqueeze(0), Tensor());
    const int64_t n = vn * H;
    add_inplace_kernel<<<grid_for(n, 256), 256>>>(static_cast<float*>(dW.data_ptr()) + v0 * H,
                                                  static_cast<const float*>(piece.data_ptr()), n);
    CUDA_CHECK_LAUNCH();
  }
}

Tensor sum_rows(const Tensor& row_loss, double scale) {
  const Tensor s = reduce_all(Reduce::sum, row_loss);
  return binary(Binary::mul, s, Tensor::scalar(scale, DType::f32, row_loss.device()));
}

}  // namespace

// h (N, H), W (V, H) f32 contiguous on the device; targets i64 (N,) on the device.
LinearLossResult linear_cross_entropy_cuda(const Tensor& h, const Tensor& W, const Tensor& targets,
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

LinearLossResult linear_jsd_cuda(const Tensor& hs, const Tensor& Ws, const Tensor& ht, const Tensor& Wt,
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
LinearPPOResult linear_ppo_loss_cuda(const Tensor& h, const Tensor& W, const Tensor& actions, const Tensor& side,
                                     bool has_ref, const LinearPPOOptions& opt) {
  const int64_t N = h.size(0), H = h.size(1), V = W.size(0);
  const Device dev = h.device();
  const int64_t R = rows_per_chunk(N, V, opt.chunking.rows_per_chunk);
  Tensor chunk = Tensor::empty({R, V}, DType::f32, dev), row_loss = Tensor::empty({N}, DType::f32, dev);
  Tensor logp = Tensor::empty({N}, DType::f32, dev), metrics = Tensor::empty({N, 4}, DType::f32, dev);
  LinearPPOResult res;
  Tensor dh, dW, dW_chunk;
  if (opt.compute_grad) {
    dh = Tensor::empty({N, H}, DType::f32, dev);
    if (opt.compute_dW) {
      dW = Tensor::zeros({V, H}, DType::f32, dev);
      dW_chunk = Tensor::empty({dw_piece_rows(V, H), H}, DType::f32, dev);
    }
  }
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    logits_chunk(h, W, r0, rows, chunk);
    ppo_rows_kernel<<<static_cast<unsigned>(rows), kThreads>>>(
        static_cast<float*>(chunk.data_ptr()), V, static_cast<const int64_t*>(actions.data_ptr()) + r0,
        static_cast<const float*>(side.data_ptr()) + r0 * 5, static_cast<float>(1.0 / opt.temperature),
        static_cast<float>(opt.eps_low), static_cast<float>(opt.eps_high), static_cast<float>(opt.kl_beta), has_ref,
        opt.compute_grad, static_cast<float*>(row_loss.data_ptr()) + r0, static_cast<float*>(logp.data_ptr()) + r0,
        static_cast<float*>(metrics.data_ptr()) + r0 * 4);
    CUDA_CHECK_LAUNCH();
    if (opt.compute_grad) grads_chunk(h, W, r0, rows, chunk, dh, dW, dW_chunk);
  }
  res.loss = sum_rows(row_loss, 1.0);
  res.logp = logp;
  res.dh = dh;
  res.dW = dW;
  // metrics: summed on the host (N·4 floats).
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
  return res;
}

}  // namespace somnus::kernels::cuda
