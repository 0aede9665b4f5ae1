// The feed-forward side of a layer (PARADIGM.md §1): dense MLPs, the sparse MoE level, the
// CMS level with its low-rank expert slots, and the CMS chain of levels.
//
//   MLP        GELU:   proj(gelu(fc(x)))              fc's bias+GELU fused in the matmul epilogue
//              SwiGLU: down(silu(gate(x)) ∘ up(x))     (Shazeer 2020; Llama)
//   MoE        router (Linear C -> E) -> softmax -> top-k, the k weights renormalised to sum
//              to 1; each expert is an MLP; Switch-style load-balancing loss.
//   CmsLevel   pre-norm residual: x + level(norm(x)), level = MLP or MoE, plus S low-rank
//              slots {A_s (C, r), B_s (r, C)} that are masked until a sleep activates them;
//              an active slot adds norm(x)·A_s·B_s to the level's output. An update period C.
//   CmsChain   k levels applied in order, periods C_1 <= ... <= C_k, each dividing the next.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nn/layers.h"
#include "nn/module.h"

namespace somnus::nn {

// ---------------------------------------------------------------- dense MLP

enum class MlpKind { gelu, swiglu };
const char* mlp_kind_name(MlpKind k);
// The hidden width when a config leaves it at 0: 4·C for GELU (GPT-2); for SwiGLU Llama's
// 2/3 · 4·C (the same parameter count as a 4·C GELU MLP), rounded up to a multiple of 8.
int64_t default_mlp_hidden(MlpKind kind, int64_t n_embd);

struct MlpConfig {
  int64_t n_embd = 0;
  int64_t hidden = 0;  // 0: default_mlp_hidden
  MlpKind kind = MlpKind::gelu;
  bool bias = true;
  double init_std = 0.02;
  double out_init_std = 0.02;  // the residual projection (proj / down)
};

class MLP : public Module {
 public:
  MLP(const MlpConfig& cfg, Generator& gen, DType dtype = DType::f32, Device device = Device::cpu());
  Tensor forward(const Tensor& x) const;  // (..., C) -> (..., C)
  MlpKind kind() const { return kind_; }
  int64_t hidden() const { return hidden_; }

  std::shared_ptr<Linear> fc, proj;        // GELU:   C -> H -> C
  std::shared_ptr<Linear> gate, up, down;  // SwiGLU: C -> H (×2) -> C

 private:
  MlpKind kind_;
  int64_t hidden_;
};

// ---------------------------------------------------------------- MoE

struct MoEConfig {
  MlpConfig expert;  // every expert has this shape
  int64_t n_experts = 0;
  int64_t top_k = 1;
};

// Host-side record of the last forward's routing (logging, tests, the trainer's balance stats).
struct MoERouting {
  int64_t tokens = 0;                  // N = B·T
  int64_t per_token = 0;               // experts used per token: top_k, +1 with the random extra
  std::vector<int64_t> chosen;         // (N, per_token): top-k by probability (ties: lower index), then the extra
  std::vector<int64_t> expert_counts;  // (E,): tokens each expert processed
};

// Sparse mixture of MLP experts.
//
// Routing happens on the host: the router probabilities (N, E) are copied to the CPU, top-k
// is picked there, and tokens are bucketed per expert. Each expert then runs only on its
// tokens (index_select), its output is scaled by the token's gate and scattered back with
// an index_add, so compute is k dense MLPs' worth (not E), plus two row copies per token
// and expert and one device-to-host copy of the probabilities per call (the MoE routing
// kernel of kernels/cuda will remove that sync). Gates are gather(probs, top-k) / their
// sum: the router learns through the gates (and the auxiliary loss). With one expert per
// token (top_k = 1, no random extra) the gate is the probability itself, as in the Switch
// Transformer: renormalised it would be exactly 1, and the router would learn from the
// auxiliary loss alone.
//
// Load balancing (Switch Transformer, Fedus et al. 2021, generalised to top-k):
//   aux = E · Σ_i f_i · P_i,  f_i = (tokens whose top-k contains i) / (N·k),  P_i = mean_n p_ni.
// It is 1 for perfectly balanced routing; f is a constant, the gradient flows through P.
//
// Dreaming (PARADIGM §3): with set_random_extra_expert(true, &gen), every token also uses
// one expert drawn uniformly from those not in its top-k (skipped when k = E), weighted by
// its probability renormalised together with the top-k. The extra pick does not count in f.
class MoE : public Module {
 public:
  MoE(const MoEConfig& cfg, Generator& gen, DType dtype = DType::f32, Device device = Device::cpu());

  struct Output {
    Tensor out;            // (..., C)
    Tensor router_logits;  // (N, E), N = the product of the leading dims
    Tensor aux_loss;       // 0-dim, when requested
  };
  // x (..., C). want_aux: compute the load-balancing loss (skip it under no_grad inference).
  Output forward(const Tensor& x, bool want_aux = false);

  // gen must outlive its use; it is required when on.
  void set_random_extra_expert(bool on, Generator* gen = nullptr);
  bool random_extra_expert() const { return random_extra_; }
  const MoERouting& last_routing() const { return routing_; }
  int64_t n_experts() const { return n_experts_; }
  int64_t top_k() const { return top_k_; }

  std::shared_ptr<Linear> router;  // C -> E, no bias
  std::shared_ptr<ModuleList<MLP>> experts;

 private:
  int64_t n_experts_, top_k_;
  bool random_extra_ = false;
  Generator* extra_gen_ = nullptr;
  MoERouting routing_;
};

// ---------------------------------------------------------------- CMS level

enum class LevelKind { dense, moe };
const char* level_kind_name(LevelKind k);

// One level of the chain, as it appears in the model config.
struct LevelConfig {
  LevelKind kind = LevelKind::dense;
  int64_t period = 1;     // update period C_ℓ, in optimiser steps
  int64_t hidden = 0;     // MLP (or expert) hidden width; 0: default_mlp_hidden
  int64_t n_experts = 0;  // moe only
  int64_t top_k = 1;      // moe only
  int64_t n_slots = 0;    // low-rank expert slots S
  int64_t slot_rank = 8;  // r
};

// A low-rank expert slot: A (C, r), B (r, C), and for MoE levels its router row (C,).
// Masked until activated. The tensors exist from construction, so optimiser and checkpoint
// layouts never change when slots come and go.
class LowRankSlot : public Module {
 public:
  LowRankSlot(int64_t n_embd, int64_t rank, bool router_row, DType dtype, Device device);
  Tensor A;       // (C, r)
  Tensor B;       // (r, C)
  Tensor router;  // (C,) or undefined
};

// Everything a level needs besides its LevelConfig.
struct CmsLevelConfig {
  LevelConfig level;
  int64_t n_embd = 0;
  MlpKind mlp = MlpKind::gelu;
  NormKind norm = NormKind::layernorm;
  double norm_eps = 1e-5;
  bool bias = true;
  double init_std = 0.02;
  double out_init_std = 0.02;
};

// x -> x + level(norm(x)) + Σ_{active s} gate_s · norm(x)·A_s·B_s.
//
// Slot gates ([choice] PARADIGM §1): 1 on a dense level. On an MoE level the router gets one
// extra logit row per slot, and a slot's gate is its probability in the softmax over
// [expert logits, active slot logits]; slots are always on (outside the top-k). The experts'
// gates stay the renormalised top-k of the experts' probabilities, which does not depend on
// the slot logits (renormalising over the top-k cancels the joint denominator), so a new slot
// with B = 0 leaves the level's output bitwise unchanged.
//
// Masked slots are not part of the forward at all: no computation, no tape, no .grad.
class CmsLevel : public Module {
 public:
  CmsLevel(const CmsLevelConfig& cfg, Generator& gen, DType dtype = DType::f32, Device device = Device::cpu());

  // x (B, T, C) -> (B, T, C). When aux_loss is given and the level is an MoE, its
  // load-balancing loss is added into *aux_loss (which may start undefined).
  Tensor forward(const Tensor& x, Tensor* aux_loss = nullptr);
  // The same level with the residual add fused into its norm: the stream arrives split as
  // x + pending (pending undefined = nothing pending; both (B, T, C)); returns {h, out} with
  // h = x + pending (computed by the norm kernel, which also normalises it) and the level's
  // result h + out, left unsummed so the next norm can fuse that add too.
  // forward(x) == h + out of forward_residual(x, {}), bit for bit.
  std::pair<Tensor, Tensor> forward_residual(const Tensor& x, const Tensor& pending, Tensor* aux_loss = nullptr);

  // ---- slots (PARADIGM §2)
  // Takes the lowest free slot: A ~ N(0, 1/C), B = 0, router row = 0, unmasked, grads cleared.
  // Returns its index. Throws somnus::Error when every slot is active.
  // a_std > 0 overrides the standard deviation of A (default 1/√C, PARADIGM §2's [choice]).
  int64_t activate_slot(Generator& gen, double a_std = 0.0);
  // B = 0, masked, returned to the free pool, grads cleared. Throws when s is not active.
  void reset_slot(int64_t s);
  std::vector<int64_t> active_slots() const;
  bool slot_active(int64_t s) const;
  // Flips slot s's mask only: values, grads and the free pool are left alone. A teacher view
  // (sleep/consolidation.h) uses it to show slots the student has just reset, or hide the
  // student's new slot, and flips them back afterwards.
  void set_slot_mask_for_view(int64_t s, bool active);
  int64_t n_slots() const { return static_cast<int64_t>(slots_.size()); }
  LowRankSlot& slot(int64_t s) const;
  // {A, B} (+ the router row on an MoE level): what consolidation trains.
  std::vector<Tensor> slot_parameters(int64_t s) const;

  int64_t period() const { return cfg_.level.period; }
  LevelKind kind() const { return cfg_.level.kind; }
  const CmsLevelConfig& config() const { return cfg_; }

  std::shared_ptr<Norm> norm;
  std::shared_ptr<MLP> mlp;  // dense levels
  std::shared_ptr<MoE> moe;  // MoE levels

 protected:
  void on_load() override;

 private:
  CmsLevelConfig cfg_;
  std::vector<std::shared_ptr<LowRankSlot>> slots_;
  std::vector<bool> active_;  // host copy of slot_active_
  Tensor slot_active_;        // (S,) i64 persistent buffer, 1 = active: checkpoints keep the masks
};

// ---------------------------------------------------------------- CMS chain

// norm(x + pending) for a LayerNorm or RMSNorm module through the fused residual-add + norm
// kernel (autograd rms_norm / layer_norm): returns {y, h} with h = x + pending. pending
// undefined: {norm(x), x}. Another Norm subclass: the unfused add, then its forward.
std::pair<Tensor, Tensor> norm_with_residual(const Norm& norm, const Tensor& x, const Tensor& pending);

// Throws somnus::Error naming levels[i].period (after `context`) unless there is at least one
// level, every period is >= 1, and each divides the next (which also orders them).
void validate_level_periods(const std::vector<LevelConfig>& levels, const std::string& context = "CmsChain");

// The chain of levels of one layer; level ℓ is registered as "ℓ".
class CmsChain : public Module {
 public:
  // cfg's `level` field is ignored; one level is built per entry of `levels`.
  CmsChain(const std::vector<LevelConfig>& levels, const CmsLevelConfig& common, Generator& gen,
           DType dtype = DType::f32, Device device = Device::cpu());
  Tensor forward(const Tensor& x, Tensor* aux_loss = nullptr);  // (B, T, C) -> (B, T, C)
  // Every level through CmsLevel::forward_residual: the stream x + pending in, {h, out} with
  // the chain's result h + out.
  std::pair<Tensor, Tensor> forward_residual(const Tensor& x, const Tensor& pending, Tensor* aux_loss = nullptr);
  size_t size() const { return levels_.size(); }
  CmsLevel& level(size_t i) const { return *levels_.at(i); }

 private:
  std::vector<std::shared_ptr<CmsLevel>> levels_;
};

}  // namespace somnus::nn
