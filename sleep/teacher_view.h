// The teacher of Knowledge Seeding as a *view* of the student (PARADIGM.md §2, "Teacher-in-
// the-loop memory").
//
// Teacher and student differ only in
//   - the sender level's weights: the teacher has θ_old, the student θ_new;
//   - the sender level's slots: active in the teacher, reset in the student;
//   - the receiver level's new slot: absent in the teacher, trained in the student;
//   - under on_exhausted = merge_oldest (consolidation.h), the receiver slot the student
//     evicted and re-initialised as its new slot: the teacher shows the old occupant there
//     (its A, B and router row), so that seeding distils what it held into the new slot.
// So the teacher is the student's own Transformer with those few handles swapped in for the
// duration of a forward: Module::set_parameter puts θ_old (and the sender slots' old B, an
// evicted receiver slot's old A, B and router row) in place, CmsLevel::set_slot_mask_for_view
// flips masks, and everything else (embeddings, attention, every other level, the lm head)
// is the student's storage, read in place. No model copy exists at any time; the extra
// memory is θ_old of the sender level (which must exist anyway while θ_new is being used),
// the r×C B matrices of its old slots, and the A, B (and C router row) of an evicted slot.
//
// Usage:  TeacherView view(model, spec);          // validates; nothing swapped yet
//         Tensor h = view.hidden_states(ids);     // no_grad forward in the teacher state
//         { TeacherView::Scope s(view); generate(model, ...); }   // anything in the teacher state
// A Scope swaps in on construction and back on destruction (exception-safe); scopes do not nest.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nn/module.h"
#include "nn/transformer.h"
#include "tensor/tensor.h"

namespace somnus::sleep {

// A receiver slot's weights from before the student evicted and re-initialised it.
struct EvictedSlot {
  int64_t slot = -1;  // -1: none in this layer
  Tensor A;           // (C, r)
  Tensor B;           // (r, C)
  Tensor router;      // (C,) on an MoE level; undefined on a dense one
};

struct TeacherViewSpec {
  int64_t sender = 0;             // sender level index ℓ (receiver ℓ + 1)
  NamedTensors sender_old;        // full dotted names -> θ_old tensors (may be empty: θ_new = θ_old)
  // Per layer: the sender slots the student reset, with their B before the reset (the
  // teacher shows them again). A and the router row are not touched by a reset.
  std::vector<std::vector<std::pair<int64_t, Tensor>>> sender_slots;
  std::vector<int64_t> receiver_new_slot;  // per layer: the student's new slot, or -1
  // Per layer (or empty): the receiver slot whose occupant the student evicted
  // (on_exhausted = merge_oldest), with the occupant's weights. The teacher shows that slot
  // active with them. It may be the layer's receiver_new_slot (under merge_oldest it is: the
  // new slot takes the evicted one's place), which the teacher then shows with the old
  // occupant's weights instead of hiding it.
  std::vector<EvictedSlot> receiver_evicted;
};

class TeacherView {
 public:
  // Validates the spec against the model (names, shapes, dtypes, devices, slot indices), so
  // that entering cannot fail half-way; should it fail anyway, nothing stays swapped.
  TeacherView(nn::Transformer& model, TeacherViewSpec spec);
  ~TeacherView();
  TeacherView(const TeacherView&) = delete;
  TeacherView& operator=(const TeacherView&) = delete;

  // Final hidden states (B, T, C) of the teacher, under no_grad (no tape, no activations kept).
  Tensor hidden_states(const Tensor& ids);
  bool entered() const { return entered_; }
  nn::Transformer& model() const { return model_; }
  const TeacherViewSpec& spec() const { return spec_; }

  class Scope {
   public:
    explicit Scope(TeacherView& v) : v_(v) { v_.swap_in(); }
    ~Scope() { v_.swap_out(); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    TeacherView& v_;
  };

 private:
  void swap_in();   // the teacher's handles and masks into the model (all or nothing)
  void swap_out();  // the student's back
  void flip_mask(int64_t layer, int64_t level, int64_t slot, bool active);
  void restore();   // undoes whatever swap_in did, in reverse order
  static std::string slot_param_name(int64_t layer, int64_t level, int64_t slot, const char* param);

  struct Flip {
    int64_t layer, level, slot;
    bool was_active;  // the student's mask
  };
  nn::Transformer& model_;
  TeacherViewSpec spec_;
  NamedTensors stashed_;      // the student's handles while entered
  std::vector<Flip> flipped_;  // the student's masks while entered
  bool entered_ = false;
};

}  // namespace somnus::sleep
