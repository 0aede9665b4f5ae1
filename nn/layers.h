// The basic layers: Linear (with optional LoRA), Embedding, LayerNorm, RMSNorm and rotary
// position embeddings. Every layer is composed from the differentiable functions of
// autograd/functions.h, so it runs on CPU and CUDA and differentiates without new rules.
//
// Conventions (PyTorch's, so that weights map one to one onto torch/HF checkpoints):
//   Linear.weight (out, in), y = x @ weight^T + bias. The transpose is a view that BLAS
//   takes as a transpose flag; nothing is copied.
//   LoRA (Hu et al. 2021, PEFT's layout): lora_A (r, in), lora_B (out, r),
//   y += (alpha / r) · (x @ A^T) @ B^T.
//   RoPE: the "rotate half" pairing of HF Llama (dim i pairs with i + D/2).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "nn/module.h"
#include "tensor/random.h"

namespace somnus::nn {

// ---------------------------------------------------------------- Linear (+ LoRA)

class Linear : public Module {
 public:
  // weight ~ N(0, init_std²), bias = 0.
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen, double init_std = 0.02,
         DType dtype = DType::f32, Device device = Device::cpu());

  // x (..., in) -> (..., out). gelu: apply GELU (tanh form) after the bias, through the
  // matmul's fused bias+GELU epilogue when no (unmerged) LoRA is in the way.
  Tensor forward(const Tensor& x, bool gelu = false) const;

  // Adds lora_A ~ N(0, 1/in) and lora_B = 0 (so the adapter starts as a no-op) as parameters
  // "lora_A" and "lora_B". Throws if LoRA is already enabled or rank < 1. Freezing the base
  // weights is the caller's choice (module.freeze(), then lora_A/lora_B.set_requires_grad).
  void enable_lora(int64_t rank, double alpha, Generator& gen);
  bool has_lora() const { return lora_rank_ > 0; }
  int64_t lora_rank() const { return lora_rank_; }
  double lora_scale() const { return lora_rank_ > 0 ? lora_alpha_ / static_cast<double>(lora_rank_) : 0.0; }
  // merge: weight += scale · B @ A, and forward skips the adapter. unmerge subtracts it again
  // (exact up to rounding). While merged the adapter is not in the graph: train it unmerged.
  void merge_lora();
  void unmerge_lora();
  bool lora_merged() const { return lora_merged_; }

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

  Tensor weight;  // (out, in)
  Tensor bias;    // (out,) or undefined
  Tensor lora_A;  // (r, in) or undefined
  Tensor lora_B;  // (out, r) or undefined

 private:
  Tensor lora_delta() const;  // scale · B @ A, (out, in), no history
  int64_t in_features_, out_features_;
  int64_t lora_rank_ = 0;
  double lora_alpha_ = 0.0;
  bool lora_merged_ = false;
};

// ---------------------------------------------------------------- Embedding

class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t dim, Generator& gen, double init_std = 0.02, DType dtype = DType::f32,
            Device device = Device::cpu());
  // ids int (...) -> (..., C)
  Tensor forward(const Tensor& ids) const;
  Tensor weight;  // (V, C)
};

// ---------------------------------------------------------------- norms

enum class NormKind { layernorm, rmsnorm };
const char* norm_kind_name(NormKind k);

// Normalises over the last dim; a common base so that blocks can hold either.
class Norm : public Module {
 public:
  virtual Tensor forward(const Tensor& x) const = 0;  // (..., C) -> (..., C)
};

// (x − mean) / sqrt(var + eps) · weight [+ bias], var biased (as torch.nn.LayerNorm).
class LayerNorm : public Norm {
 public:
  LayerNorm(int64_t dim, double eps = 1e-5, bool bias = true, DType dtype = DType::f32, Device device = Device::cpu());
  Tensor forward(const Tensor& x) const override;
  Tensor weight;  // (C,) ones
  Tensor bias;    // (C,) zeros, or undefined
  double eps;
};

// x / sqrt(mean(x²) + eps) · weight (Zhang & Sennrich 2019; Llama).
class RMSNorm : public Norm {
 public:
  RMSNorm(int64_t dim, double eps = 1e-5, DType dtype = DType::f32, Device device = Device::cpu());
  Tensor forward(const Tensor& x) const override;
  Tensor weight;  // (C,) ones
  double eps;
};

std::shared_ptr<Norm> make_norm(NormKind kind, int64_t dim, double eps, bool bias, DType dtype = DType::f32,
                                Device device = Device::cpu());

// ---------------------------------------------------------------- rotary position embedding

// Rotates each (i, i + D/2) pair of a head by angle pos · theta^(−2i/D) (Su et al. 2021).
// The cos/sin tables (max_positions, D/2) are computed once in f64 and kept as non-persistent
// buffers, so they follow to(device/dtype) but are not saved.
class RoPE : public Module {
 public:
  RoPE(int64_t head_dim, int64_t max_positions, double theta = 10000.0, DType dtype = DType::f32,
       Device device = Device::cpu());
  // x (B, H, T, D); positions int (T,) shared by the batch, or (B, T) per row (left-padded
  // batches). Positions must lie in [0, max_positions).
  Tensor forward(const Tensor& x, const Tensor& positions) const;
  int64_t head_dim() const { return head_dim_; }
  int64_t max_positions() const { return max_positions_; }

 private:
  int64_t head_dim_, max_positions_;
  Tensor cos_, sin_;  // (max_positions, D/2)
};

}  // namespace somnus::nn
