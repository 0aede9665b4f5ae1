// CPU fused multi-tensor AdamW: the twin of kernels/cuda/adamw.cu. Tensor by tensor, each an
// OpenMP loop of kernels/adamw_math.h's adamw_element (the expressions of nn/optim.cpp's
// reference loop, in the same order, so results are bit-identical to it), optionally
// writing the bf16 copy (nearest-even or Philox stochastic rounding) in the same pass.
// Bytes per element: read w, g, m, v; write w, m, v (+ the bf16 copy). ~15 FLOPs + 1 sqrt.
#include <omp.h>

#include <type_traits>

#include "kernels/adamw_math.h"
#include "kernels/backend.h"
#include "tensor/dispatch.h"

namespace somnus::kernels::cpu {

namespace {

constexpr int64_t kParallelMin = 16384;

template <class T>
void adamw_one(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWHyper& h, T clip,
               bool has_clip, bf16* out, bool sr, uint64_t seed, uint64_t base) {
  const AdamWScalars<T> s = make_adamw_scalars<T>(h);
  T* wp = p.data<T>();
  const T* gp = g.data<T>();
  T* mp = m.data<T>();
  T* vp = v.data<T>();
  const int64_t n = p.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T w = adamw_element<T>(wp[i], gp[i], mp[i], vp[i], s, clip, has_clip);
    wp[i] = w;
    if (out != nullptr) {
      const float f = static_cast<float>(w);
      out[i].bits = sr ? bf16_stochastic_round(f, stochastic_round_bits(seed, base + static_cast<uint64_t>(i)))
                       : bf16::from_float(f);
    }
  }
}

}  // namespace

void adamw_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avg,
                const std::vector<Tensor>& exp_avg_sq, const std::vector<AdamWHyper>& hyper, const Tensor& clip_scale,
                const std::vector<Tensor>& bf16_params, bool stochastic_rounding, uint64_t seed) {
  const double clip = clip_scale.defined() ? clip_scale.item() : 1.0;
  uint64_t base = 0;  // element offset across the list (for the Philox bits)
  for (size_t i = 0; i < params.size(); ++i) {
    bf16* out = !bf16_params.empty() && bf16_params[i].defined() ? bf16_params[i].data<bf16>() : nullptr;
    visit_floating(params[i].dtype(), "adamw_step", [&](auto tag) {
      using T = decltype(tag);
      if constexpr (std::is_same_v<T, bf16>) {
        throw_error("adamw_step: bf16 master weights");
      } else {
        adamw_one<T>(params[i], grads[i], exp_avg[i], exp_avg_sq[i], hyper[i], static_cast<T>(clip),
                     clip_scale.defined(), out, stochastic_rounding, seed, base);
      }
    });
    base += static_cast<uint64_t>(params[i].numel());
  }
}

}  // namespace somnus::kernels::cpu
