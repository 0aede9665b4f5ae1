// The f64 references of the attention tests (test_attention.cpp, test_cuda_attention.cpp):
// the explicit-P textbook formulas, per (b, h) with a materialised (T, S) matrix.
//   P = softmax(scale·Q Kᵀ + mask)   (mask: −inf where j > q_offset + i when causal)
//   O = P V;  lse_i = log Σ_j e^(scale·q_i·k_j) over visible j
//   dV = Pᵀ dO;  dP = dO Vᵀ;  dS = P ∘ (dP − rowsum(P ∘ dP));  dQ = scale·dS K;  dK = scale·dSᵀ Q
// (dK, dV summed over the query heads of a GQA group). Inputs are read as f64 from whatever
// dtype they have, so a bf16 test compares against the exact result for its rounded inputs.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace somnus::test {

struct AttnCase {
  int64_t B, Hq, Hkv, T, S, D;
  bool causal;
  int64_t q_offset;
};

struct AttnRef {
  std::vector<double> o, lse, dq, dk, dv;
};

// q (B, Hq, T, D), k, v (B, Hkv, S, D), dout like q (may be undefined: no backward).
inline AttnRef attention_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, bool causal,
                                   double scale, int64_t q_offset) {
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  const int64_t g = Hq / Hkv;
  const std::vector<double> Q = q.to_vector(), K = k.to_vector(), V = v.to_vector();
  const std::vector<double> G = dout.defined() ? dout.to_vector() : std::vector<double>();
  AttnRef r;
  r.o.assign(B * Hq * T * D, 0.0);
  r.lse.assign(B * Hq * T, 0.0);
  if (dout.defined()) {
    r.dq.assign(Q.size(), 0.0);
    r.dk.assign(K.size(), 0.0);
    r.dv.assign(V.size(), 0.0);
  }
  std::vector<double> P(T * S), dP(T * S);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t qo = (b * Hq + h) * T * D, ko = (b * Hkv + h / g) * S * D;
      for (int64_t i = 0; i < T; ++i) {
        double m = -INFINITY;
        for (int64_t j = 0; j < S; ++j) {
          double s = 0.0;
          for (int64_t x = 0; x < D; ++x) s += Q[qo + i * D + x] * K[ko + j * D + x];
          s *= scale;
          if (causal && j > q_offset + i) s = -INFINITY;
          P[i * S + j] = s;
          m = std::max(m, s);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < S; ++j) sum += std::exp(P[i * S + j] - m);
        for (int64_t j = 0; j < S; ++j) P[i * S + j] = std::exp(P[i * S + j] - m) / sum;
        r.lse[(b * Hq + h) * T + i] = m + std::log(sum);
        for (int64_t x = 0; x < D; ++x) {
          double acc = 0.0;
          for (int64_t j = 0; j < S; ++j) acc += P[i * S + j] * V[ko + j * D + x];
          r.o[qo + i * D + x] = acc;
        }
      }
      if (!dout.defined()) continue;
      for (int64_t i = 0; i < T; ++i) {
        double rowsum = 0.0;
        for (int64_t j = 0; j < S; ++j) {
          double dp = 0.0;
          for (int64_t x = 0; x < D; ++x) dp += G[qo + i * D + x] * V[ko + j * D + x];
          dP[i * S + j] = dp;
          rowsum += P[i * S + j] * dp;
        }
        for (int64_t j = 0; j < S; ++j) {
          const double p = P[i * S + j], ds = p * (dP[i * S + j] - rowsum);
          for (int64_t x = 0; x < D; ++x) {
            r.dv[ko + j * D + x] += p * G[qo + i * D + x];
            r.dq[qo + i * D + x] += scale * ds * K[ko + j * D + x];
            r.dk[ko + j * D + x] += scale * ds * Q[qo + i * D + x];
          }
        }
      }
    }
  }
  return r;
}

}  // namespace somnus::test
