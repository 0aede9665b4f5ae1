// Optimisers: AdamW and SGD over parameter groups, with the multi-frequency update rule of
// PARADIGM.md §1 (paper Eq. 2), fp32 master weights for bf16 parameters, global-norm
// clipping, and state save/load for bit-exact resume.
//
// The multi-frequency rule. Each ParamGroup has a period C (1 = an ordinary group).
//   - Optimiser steps are counted from 1: the k-th call of step() is step k.
//   - Every step, backward adds into every parameter's .grad (autograd accumulates with +=),
//     so a group's .grad is its accumulator.
//   - At step k a group applies its update only when k % C == 0 (first at step C), from the
//     accumulated gradient reduced by AccumulationReduction: mean (the default; the sum
//     divided by C, so that a slow group sees a gradient of the same scale as a fast one and
//     one learning rate fits every period) or sum. Then step() clears that group's .grad.
//   - zero_grad() clears only groups at a window boundary (k % C == 0, where k is the number
//     of steps taken so far), so the usual `zero_grad(); backward(); step();` loop leaves
//     the accumulators of slow groups alone. zero_grad_all() clears everything.
//   - A group's optimiser state (Adam's m, v and bias-correction step) advances once per
//     application, not per global step. Learning rate and weight decay are applied once per
//     application, with the group's lr times lr_scale() at that step.
// A parameter whose .grad is undefined when its group applies is skipped (its state does
// not advance), as in PyTorch.
//
// Clearing a gradient sets it to none (undefined): the next backward allocates it afresh.
//
// bf16 parameters get an f32 master copy (created at the parameter's first update). The
// update runs on the master; the parameter receives it rounded to nearest-even. Before each
// update, elements where the parameter no longer equals the rounded master (someone wrote
// the parameter: a checkpoint load, a slot reset) are re-read from the parameter, so the
// master never overwrites an outside change.
//
// Update paths: CPU tensors are updated by plain loops over their data (the reference);
// tensors on other devices by a composition of kernels:: ops. AdamW on CPU (automatic path)
// and on CUDA runs the fused multi-tensor kernel (kernels::adamw_step): one call per group
// application and (device, dtype), the same per-element expressions as the loop.
// Both evaluate the same expressions in the same order in the parameter's compute type
// (f32 for f32/bf16, f64 for f64); they agree to rounding, not bitwise, because the compiler
// may fuse the loops' multiply-adds. set_update_path(kernel_ops) forces the ops path on CPU
// too, so tests can compare the two. The CPU loops use OpenMP for large tensors; being
// elementwise, their results do not depend on the thread count.
//
// Gradient clipping and accumulation act on .grad as it is. With groups of period > 1,
// .grad of a slow group also holds earlier steps' sums: scale the loss by 1/accum_steps
// rather than the gradients, and clip what the groups due this step will apply:
// clip_grad_norm(opt.due_params(), max_norm) measures each due group's .grad times its
// reduction scale (1/period under mean reduction), so a slow group's C-step sum counts as the
// mean it applies. (Measuring the raw sums instead made every C-th step's norm about C times
// the slow group's share, and the clip then shrank the fast groups' updates on those steps too.)
//
// State (state_dict / save_state): per parameter its buffers (m, v, momentum, master) and
// step; the global step, lr_scale and per-group application counts as JSON; and the
// pending accumulators (.grad of groups in the middle of a window), without which a resumed
// run would lose the partial sums of slow groups. Loading restores exactly that (and clears
// every other .grad), so a run resumed from a checkpoint continues bit-exactly (DESIGN.md §5).
// Hyperparameters (group lr and weight decay, betas, eps, momentum) come from the
// constructor, not from the file; they are saved for information only. Periods, the
// accumulation reduction, the optimiser type and the parameter shapes must match.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/safetensors.h"
#include "tensor/tensor.h"

namespace somnus {

struct ParamGroup {
  std::vector<Tensor> params;
  double lr = 1e-3;
  double weight_decay = 0.0;
  int64_t period = 1;  // update every `period` optimiser steps (PARADIGM §1)
  std::string name;
};

enum class AccumulationReduction { mean, sum };

// Parameters whose .grad is measured as scales[i] · .grad (scales empty: all 1).
struct ScaledParams {
  std::vector<Tensor> params;
  std::vector<double> scales;
};

struct OptimizerState {
  NamedTensors tensors;  // CPU copies: "opt.<group>.<param>.<buffer>"
  nlohmann::json meta;   // type, step, lr_scale, groups (period, applications, per-param step, shape)
};

class Optimizer {
 public:
  enum class UpdatePath { automatic, kernel_ops };

  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Takes step k = step_count() + 1: every group with k % period == 0 applies its update
  // and has its gradients cleared.
  void step();
  // Applies group g's accumulated gradient now, outside its schedule (same reduction as a
  // scheduled application, so with mean reduction a partial window is divided by the full
  // period), then clears it; the step count does not advance. An explicit sleep() uses it to
  // compute the sender level's θ_new (PARADIGM §2 (a)). Does nothing to parameters without
  // a .grad.
  void apply_group_now(size_t g);
  // Forgets the state (moments, master, update count) of these parameters, matched by handle
  // identity, so their next update starts afresh: a slot that consolidation re-initialised
  // must not inherit the moments of its previous occupant. Unknown tensors are ignored.
  void reset_state(const std::vector<Tensor>& params);
  // Clears (sets to none, or fills with zeros) the grads of groups at a window boundary.
  void zero_grad(bool set_to_none = true);
  void zero_grad_all(bool set_to_none = true);

  int64_t step_count() const { return step_; }
  // Indices of the groups that apply at step k (default: the next step).
  std::vector<size_t> groups_due(int64_t k = -1) const;
  // The parameters of those groups, each with the factor its update multiplies .grad by (its
  // reduction scale: 1/period under mean reduction, 1 under sum): what step k applies is
  // scale · .grad. For grad_norm / clip_grad_norm.
  ScaledParams due_params(int64_t k = -1) const;
  // How many times group g has applied its update.
  int64_t applications(size_t g) const { return applications_.at(g); }

  // A new group (validated as the constructor's are); its state starts empty. E.g. the
  // parameters of a newly activated expert slot. Its windows align to the global step count,
  // like every group's (it applies at the next multiple of its period).
  void add_param_group(ParamGroup group);
  // Groups' lr, weight_decay, period and name may be edited in place; their parameter lists
  // may not (step() throws when the layout no longer matches the state).
  std::vector<ParamGroup>& groups() { return groups_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  std::vector<Tensor> params() const;  // every group's, in order

  // Every group's effective lr is group.lr * lr_scale (set it from a schedule each step).
  void set_lr_scale(double s) { lr_scale_ = s; }
  double lr_scale() const { return lr_scale_; }

  AccumulationReduction reduction() const { return reduction_; }
  void set_update_path(UpdatePath p) { path_ = p; }

  virtual std::string type() const = 0;

  OptimizerState state_dict() const;
  // Throws somnus::Error on a different optimiser type, group layout, period, or parameter
  // shape/dtype, and on missing or unexpected state tensors.
  void load_state_dict(const OptimizerState& state);
  // A safetensors file: the tensors of state_dict(), its JSON in metadata "somnus.optimizer".
  void save_state(const std::string& path) const;
  void load_state(const std::string& path);

  // The f32 master of a bf16 parameter (undefined before its first update, or for others).
  Tensor master_weight(size_t group, size_t param) const;

 protected:
  Optimizer(std::vector<ParamGroup> groups, AccumulationReduction reduction);

  struct ParamState {
    int64_t step = 0;                      // applications to this parameter
    std::map<std::string, Tensor> buffers;  // on the parameter's device, compute dtype
  };
  struct UpdateArgs {
    const ParamGroup& group;
    ParamState& state;     // state.step already counts this update
    const Tensor& weight;  // contiguous, f32 or f64: the parameter, its master, or a working copy
    const Tensor& grad;    // contiguous, weight's dtype, the accumulated (un-reduced) gradient
    double grad_scale;     // multiply grad by this (1/period for mean reduction)
    double lr;             // group lr * lr_scale
    bool cpu_loops;        // loops over host data, else kernels:: ops
    // A contiguous bf16 parameter whose f32 master `weight` is: an optimiser that writes the
    // rounded copy in its update kernel (writes_bf16_copy()) fills it; otherwise, or when
    // undefined, apply_group copies weight into the parameter after the update.
    Tensor bf16_param = Tensor();
  };
  // True when update()/update_group() write UpdateArgs::bf16_param themselves on the fused
  // path (cpu_loops or CUDA): the rounding happens in the update's own pass.
  virtual bool writes_bf16_copy() const { return false; }
  // True when that copy is rounded stochastically (the master resync then accepts either
  // bf16 neighbour as the optimiser's own rounding).
  virtual bool stochastic_bf16() const { return false; }
  // Writes the new weight into args.weight in place and updates the state buffers.
  virtual void update(const UpdateArgs& args) = 0;
  // One application of a group: the updates of its parameters that have a .grad, in order
  // (each state.step already advanced). The default calls update() for each; AdamW fuses the
  // kernel-path ones into one multi-tensor kernel call per (device, dtype). The caller
  // copies each working weight back into its parameter afterwards.
  virtual void update_group(const std::vector<UpdateArgs>& updates);
  // The buffer names this optimiser keeps per parameter (besides "master").
  virtual std::vector<std::string> buffer_names() const = 0;
  virtual nlohmann::json hyperparameters() const = 0;

  // A zero-filled buffer like `weight`, created on first use.
  static Tensor& buffer(ParamState& s, const std::string& name, const Tensor& weight);

 private:
  struct Prepared;  // a parameter's working weight and gradient for one application
  void apply_group(size_t g);
  bool prepare_param(size_t g, size_t i, Prepared& out);
  void clear_group(size_t g, bool set_to_none);
  void check_layout() const;

  std::vector<ParamGroup> groups_;
  std::vector<std::vector<ParamState>> state_;
  std::vector<int64_t> applications_;
  std::vector<int64_t> forced_;  // applications by apply_group_now, per group
  int64_t step_ = 0;
  double lr_scale_ = 1.0;
  AccumulationReduction reduction_;
  UpdatePath path_ = UpdatePath::automatic;
};

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  AccumulationReduction reduction = AccumulationReduction::mean;
  // bf16 parameters (f32 masters): the bf16 copy is rounded stochastically (Philox bits from
  // rounding_seed, the step and the element) instead of to nearest-even. The masters and the
  // moments are the same either way.
  bool stochastic_rounding = false;
  uint64_t rounding_seed = 0;
};

// AdamW (Loshchilov & Hutter), in PyTorch's formulation:
//   p ← p·(1 − lr·wd)                           (decoupled weight decay)
//   m ← β1·m + (1 − β1)·g;   v ← β2·v + (1 − β2)·g²
//   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
// with t the parameter's own update count.
class AdamW : public Optimizer {
 public:
  explicit AdamW(std::vector<ParamGroup> groups, AdamWOptions options = {});
  std::string type() const override { return "AdamW"; }
  const AdamWOptions& options() const { return options_; }

 protected:
  void update(const UpdateArgs& args) override;
  void update_group(const std::vector<UpdateArgs>& updates) override;
  bool writes_bf16_copy() const override { return true; }
  bool stochastic_bf16() const override { return options_.stochastic_rounding; }
  uint64_t rounding_seed() const;
  std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq"}; }
  nlohmann::json hyperparameters() const override;

 private:
  AdamWOptions options_;
};

struct SGDOptions {
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  AccumulationReduction reduction = AccumulationReduction::mean;
};

// SGD as PyTorch defines it (weight decay added to the gradient):
//   g ← g + wd·p
//   b ← g on the first update, else μ·b + (1 − dampening)·g       (when μ ≠ 0)
//   g ← g + μ·b (nesterov) or b
//   p ← p − lr·g
class SGD : public Optimizer {
 public:
  explicit SGD(std::vector<ParamGroup> groups, SGDOptions options = {});
  std::string type() const override { return "SGD"; }
  const SGDOptions& options() const { return options_; }

 protected:
  void update(const UpdateArgs& args) override;
  std::vector<std::string> buffer_names() const override { return {"momentum_buffer"}; }
  nlohmann::json hyperparameters() const override;

 private:
  SGDOptions options_;
};

// The global L2 norm over all defined grads (accumulated in f64); when it exceeds max_norm
// the grads are scaled in place by max_norm / (norm + 1e-6). Returns the norm before
// clipping (NaN/inf are returned as they are, and nothing is scaled).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);
// The same over scales[i] · params[i].grad (the norm and the clip factor; the grads are scaled
// by the factor alone, so what the optimiser applies is clipped): e.g. opt.due_params().
double clip_grad_norm(const ScaledParams& params, double max_norm);
// The global L2 norm over all defined grads, without changing them.
double grad_norm(const std::vector<Tensor>& params);
double grad_norm(const ScaledParams& params);
// Multiplies every defined grad in place by `factor` (e.g. 1/accum_steps after the last
// micro-batch; see the note above about groups with period > 1).
void scale_grads(const std::vector<Tensor>& params, double factor);

}  // namespace somnus
