// CUDA fused multi-tensor AdamW: the twin of kernels/cpu/adamw.cpp (the same per-element
// math, kernels/adamw_math.h). Multi-tensor apply in the style of apex: the pointers and
// scalars of up to kMaxTensors tensors travel in one kernel argument, every tensor is cut
// into chunks of kChunk elements, block b finds its (tensor, chunk) from the prefix table of
// chunk counts, and one launch updates the whole batch, so a model with hundreds of small
// parameters costs a few launches, not hundreds. Accesses are coalesced (consecutive threads,
// consecutive elements). The clip scale is read from device memory: no host sync.
// Bytes per element: read w, g, m, v; write w, m, v (+2 for the bf16 copy): 28–30 B in f32.
#include "kernels/adamw_math.h"
#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements per block
constexpr int kMaxTensors = 24;   // keeps the argument under 4 KB for f64 too

template <class T>
struct AdamWBatch {
  T* w[kMaxTensors];
  const T* g[kMaxTensors];
  T* m[kMaxTensors];
  T* v[kMaxTensors];
  uint16_t* out[kMaxTensors];  // bf16 bits, or null
  int64_t n[kMaxTensors];
  uint64_t base[kMaxTensors];  // element offset across the whole list (Philox counter)
  AdamWScalars<T> s[kMaxTensors];
  int64_t block_start[kMaxTensors + 1];
  int count;
};

template <class T>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(const __grid_constant__ AdamWBatch<T> b, const void* clip_ptr, bool clip_f64, bool sr,
                 uint64_t seed) {
  int t = 0;
  while (t + 1 < b.count && blockIdx.x >= b.block_start[t + 1]) ++t;
  const int64_t start = (static_cast<int64_t>(blockIdx.x) - b.block_start[t]) * kChunk;
  const int64_t end = min(b.n[t], start + kChunk);
  const bool has_clip = clip_ptr != nullptr;
  const T clip = !has_clip ? T(1)
                 : clip_f64 ? static_cast<T>(*static_cast<const double*>(clip_ptr))
                            : static_cast<T>(*static_cast<const float*>(clip_ptr));
  T* w = b.w[t];
  const T* g = b.g[t];
  T* m = b.m[t];
  T* v = b.v[t];
  uint16_t* out = b.out[t];
  const AdamWScalars<T> s = b.s[t];
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    T mi = m[i], vi = v[i];
    const T wi = adamw_element<T>(w[i], g[i], mi, vi, s, clip, has_clip);
    w[i] = wi;
    m[i] = mi;
    v[i] = vi;
    if (out != nullptr) {
      const float f = static_cast<float>(wi);
      out[i] = sr ? bf16_stochastic_round(f, stochastic_round_bits(seed, b.base[t] + static_cast<uint64_t>(i)))
                  : bf16::from_float(f);
    }
  }
}

}  // namespace

void adamw_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avg,
                const std::vector<Tensor>& exp_avg_sq, const std::vector<AdamWHyper>& hyper, const Tensor& clip_scale,
                const std::vector<Tensor>& bf16_params, bool stochastic_rounding, uint64_t seed) {
  set_device(params[0]);
  const void* clip = clip_scale.defined() ? clip_scale.data_ptr() : nullptr;
  const bool clip_f64 = clip_scale.defined() && clip_scale.dtype() == DType::f64;
  visit_floating(params[0].dtype(), "adamw_step", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bf16>) {
      throw_error("adamw_step: bf16 master weights");
    } else {
      AdamWBatch<T> b{};
      uint64_t base = 0;
      auto flush = [&] {
        if (b.count == 0) return;
        const int64_t blocks = b.block_start[b.count];
        if (blocks > 0) {
          adamw_kernel<T><<<static_cast<unsigned>(blocks), kThreads>>>(b, clip, clip_f64, stochastic_rounding, seed);
          CUDA_CHECK_LAUNCH();
        }
        b = AdamWBatch<T>{};
      };
      for (size_t i = 0; i < params.size(); ++i) {
        if (params[i].dtype() != params[0].dtype()) {
          throw_error("adamw_step: all params must share one dtype on CUDA");
        }
        const int64_t n = params[i].numel();
        const int64_t chunks = (n + kChunk - 1) / kChunk;
        if (b.count == kMaxTensors || b.block_start[b.count] + chunks > (int64_t{1} << 30)) flush();
        const int k = b.count;
        b.w[k] = static_cast<T*>(params[i].data_ptr());
        b.g[k] = static_cast<const T*>(grads[i].data_ptr());
        b.m[k] = static_cast<T*>(exp_avg[i].data_ptr());
        b.v[k] = static_cast<T*>(exp_avg_sq[i].data_ptr());
        b.out[k] = !bf16_params.empty() && bf16_params[i].defined() ? static_cast<uint16_t*>(bf16_params[i].data_ptr())
                                                                    : nullptr;
        b.n[k] = n;
        b.base[k] = base;
        b.s[k] = make_adamw_scalars<T>(hyper[i]);
        b.block_start[k + 1] = b.block_start[k] + chunks;
        b.count = k + 1;
        base += static_cast<uint64_t>(n);
      }
      flush();
    }
  });
}

}  // namespace somnus::kernels::cuda
