// Linear (+ LoRA), Embedding, LayerNorm, RMSNorm, RoPE (see layers.h).
#include "nn/layers.h"

#include <cmath>
#include <vector>

#include "autograd/functions.h"
#include "kernels/ops.h"
#include "tensor/format.h"

namespace somnus::nn {

// ---------------------------------------------------------------- Linear

Linear::Linear(int64_t in_features, int64_t out_features, bool use_bias, Generator& gen, double init_std, DType dtype,
               Device device)
    : in_features_(in_features), out_features_(out_features) {
  SOMNUS_CHECK(in_features > 0 && out_features > 0, "Linear: features must be positive, got in {} out {}", in_features,
               out_features);
  weight = randn({out_features, in_features}, gen, dtype, device, 0.0, init_std);
  register_parameter("weight", weight);
  if (use_bias) {
    bias = Tensor::zeros({out_features}, dtype, device);
    register_parameter("bias", bias);
  }
}

Tensor Linear::forward(const Tensor& x, bool gelu) const {
  SOMNUS_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == in_features_, "Linear: expected x (..., {}), got {}",
               in_features_, x.defined() ? shape_str(x.shape()) : "undefined");
  // matmul takes 2-D or 3-D inputs; fold any other leading dims.
  const Shape lead(x.shape().begin(), x.shape().end() - 1);
  const bool fold = x.dim() > 3 || x.dim() == 1;
  const Tensor x2 = fold ? reshape(x, {-1, in_features_}) : x;
  const Tensor wt = transpose(weight, 0, 1);  // (in, out) view
  const bool adapter = has_lora() && !lora_merged_;
  Tensor y;
  if (!adapter) {
    y = matmul(x2, wt, bias, gelu);  // (..., out)
  } else {
    y = matmul(x2, wt, bias);
    Tensor low = matmul(x2, transpose(lora_A, 0, 1));  // (..., r)
    y = y + matmul(low, transpose(lora_B, 0, 1)) * lora_scale();
    if (gelu) y = somnus::gelu(y);
  }
  if (!fold) return y;
  Shape out_shape = lead;
  out_shape.push_back(out_features_);
  return reshape(y, out_shape);
}

void Linear::enable_lora(int64_t rank, double alpha, Generator& gen) {
  SOMNUS_CHECK(!has_lora(), "Linear::enable_lora: LoRA is already enabled (rank {})", lora_rank_);
  SOMNUS_CHECK(rank >= 1, "Linear::enable_lora: rank must be >= 1, got {}", rank);
  lora_rank_ = rank;
  lora_alpha_ = alpha;
  lora_A = randn({rank, in_features_}, gen, weight.dtype(), weight.device(), 0.0,
                 1.0 / std::sqrt(static_cast<double>(in_features_)));
  lora_B = Tensor::zeros({out_features_, rank}, weight.dtype(), weight.device());
  register_parameter("lora_A", lora_A);
  register_parameter("lora_B", lora_B);
}

Tensor Linear::lora_delta() const {
  NoGradGuard no_grad;
  Tensor delta = kernels::matmul(lora_B.detach(), lora_A.detach());  // (out, in)
  return kernels::binary(kernels::Binary::mul, delta, Tensor::scalar(lora_scale(), delta.dtype(), delta.device()));
}

void Linear::merge_lora() {
  SOMNUS_CHECK(has_lora(), "Linear::merge_lora: LoRA is not enabled");
  SOMNUS_CHECK(!lora_merged_, "Linear::merge_lora: already merged");
  weight.copy_(kernels::binary(kernels::Binary::add, weight.detach(), lora_delta()));
  lora_merged_ = true;
}

void Linear::unmerge_lora() {
  SOMNUS_CHECK(has_lora(), "Linear::unmerge_lora: LoRA is not enabled");
  SOMNUS_CHECK(lora_merged_, "Linear::unmerge_lora: not merged");
  weight.copy_(kernels::binary(kernels::Binary::sub, weight.detach(), lora_delta()));
  lora_merged_ = false;
}

// ---------------------------------------------------------------- Embedding

Embedding::Embedding(int64_t num_embeddings, int64_t dim, Generator& gen, double init_std, DType dtype, Device device) {
  SOMNUS_CHECK(num_embeddings > 0 && dim > 0, "Embedding: sizes must be positive, got ({}, {})", num_embeddings, dim);
  weight = randn({num_embeddings, dim}, gen, dtype, device, 0.0, init_std);
  register_parameter("weight", weight);
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(weight, ids); }

// ---------------------------------------------------------------- norms

const char* norm_kind_name(NormKind k) { return k == NormKind::layernorm ? "layernorm" : "rmsnorm"; }

LayerNorm::LayerNorm(int64_t dim, double eps_, bool use_bias, DType dtype, Device device) : eps(eps_) {
  SOMNUS_CHECK(dim > 0, "LayerNorm: dim must be positive, got {}", dim);
  weight = Tensor::ones({dim}, dtype, device);
  register_parameter("weight", weight);
  if (use_bias) {
    bias = Tensor::zeros({dim}, dtype, device);
    register_parameter("bias", bias);
  }
}

Tensor LayerNorm::forward(const Tensor& x) const {
  SOMNUS_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == weight.size(0), "LayerNorm: expected x (..., {}), got {}",
               weight.size(0), x.defined() ? shape_str(x.shape()) : "undefined");
  // One fused kernel each way (kernels/cpu/norm.cpp, kernels/cuda/norm.cu).
  return layer_norm(x, Tensor(), weight, bias, eps).y;  // (..., C)
}

RMSNorm::RMSNorm(int64_t dim, double eps_, DType dtype, Device device) : eps(eps_) {
  SOMNUS_CHECK(dim > 0, "RMSNorm: dim must be positive, got {}", dim);
  weight = Tensor::ones({dim}, dtype, device);
  register_parameter("weight", weight);
}

Tensor RMSNorm::forward(const Tensor& x) const {
  SOMNUS_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == weight.size(0), "RMSNorm: expected x (..., {}), got {}",
               weight.size(0), x.defined() ? shape_str(x.shape()) : "undefined");
  return rms_norm(x, Tensor(), weight, eps).y;  // (..., C), fused (kernels/cpu/norm.cpp)
}

std::shared_ptr<Norm> make_norm(NormKind kind, int64_t dim, double eps, bool bias, DType dtype, Device device) {
  if (kind == NormKind::layernorm) return std::make_shared<LayerNorm>(dim, eps, bias, dtype, device);
  return std::make_shared<RMSNorm>(dim, eps, dtype, device);
}

// ---------------------------------------------------------------- RoPE

RoPE::RoPE(int64_t head_dim, int64_t max_positions, double theta, DType dtype, Device device)
    : head_dim_(head_dim), max_positions_(max_positions) {
  SOMNUS_CHECK(head_dim > 0 && head_dim % 2 == 0, "RoPE: head_dim must be positive and even, got {}", head_dim);
  SOMNUS_CHECK(max_positions > 0, "RoPE: max_positions must be positive, got {}", max_positions);
  SOMNUS_CHECK(theta > 0.0, "RoPE: theta must be positive, got {}", theta);
  const int64_t half = head_dim / 2;
  std::vector<double> c(static_cast<size_t>(max_positions * half)), s(c.size());
  for (int64_t p = 0; p < max_positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
      const double angle = static_cast<double>(p) * inv_freq;
      c[static_cast<size_t>(p * half + i)] = std::cos(angle);
      s[static_cast<size_t>(p * half + i)] = std::sin(angle);
    }
  }
  cos_ = Tensor::from_vector(c, {max_positions, half}, dtype, device);
  sin_ = Tensor::from_vector(s, {max_positions, half}, dtype, device);
  register_buffer("cos", cos_, /*persistent=*/false);
  register_buffer("sin", sin_, /*persistent=*/false);
}

Tensor RoPE::forward(const Tensor& x, const Tensor& positions) const {
  SOMNUS_CHECK(x.defined() && x.dim() == 4 && x.size(3) == head_dim_, "RoPE: expected x (B, H, T, {}), got {}",
               head_dim_, x.defined() ? shape_str(x.shape()) : "undefined");
  SOMNUS_CHECK(positions.defined() && is_integral(positions.dtype()), "RoPE: positions must be an integer tensor");
  const int64_t B = x.size(0), T = x.size(2);
  if (positions.dim() == 1) {
    SOMNUS_CHECK(positions.size(0) == T, "RoPE: positions {} do not match x {} (T = {})", shape_str(positions.shape()),
                 shape_str(x.shape()), T);
  } else {
    SOMNUS_CHECK(positions.dim() == 2 && positions.size(0) == B && positions.size(1) == T,
                 "RoPE: positions must be (T,) or (B, T) = ({}, {}), got {}", B, T, shape_str(positions.shape()));
  }
  // One fused kernel each way (kernels/cpu/rope.cpp, kernels/cuda/rope.cu).
  const Tensor c = cos_.dtype() == x.dtype() ? cos_ : cos_.to(x.dtype());  // (P, D/2)
  const Tensor s = sin_.dtype() == x.dtype() ? sin_ : sin_.to(x.dtype());
  return somnus::rope(x, c, s, positions);  // (B, H, T, D)
}

}  // namespace somnus::nn
