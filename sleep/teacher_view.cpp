// The teacher view (see teacher_view.h).
#include "sleep/teacher_view.h"

#include <fmt/format.h>

#include <utility>

#include "autograd/grad_mode.h"
#include "tensor/format.h"

namespace somnus::sleep {

TeacherView::TeacherView(nn::Transformer& model, TeacherViewSpec spec) : model_(model), spec_(std::move(spec)) {
  const int64_t L = model_.config().n_layer;
  const int64_t n_levels = static_cast<int64_t>(model_.config().levels.size());
  SOMNUS_CHECK(spec_.sender >= 0 && spec_.sender < n_levels, "TeacherView: sender level {} out of range [0, {})",
               spec_.sender, n_levels);
  SOMNUS_CHECK(spec_.sender_slots.empty() || static_cast<int64_t>(spec_.sender_slots.size()) == L,
               "TeacherView: sender_slots has {} layers, the model {}", spec_.sender_slots.size(), L);
  SOMNUS_CHECK(spec_.receiver_new_slot.empty() || static_cast<int64_t>(spec_.receiver_new_slot.size()) == L,
               "TeacherView: receiver_new_slot has {} layers, the model {}", spec_.receiver_new_slot.size(), L);
  const std::string sender_prefix = fmt::format(".cms.{}.", spec_.sender);
  for (const auto& [name, t] : spec_.sender_old) {
    SOMNUS_CHECK(name.find(sender_prefix) != std::string::npos && name.find(".slots.") == std::string::npos,
                 "TeacherView: '{}' is not a (non-slot) parameter of sender level {}", name, spec_.sender);
    const Tensor cur = model_.parameter(name);  // throws naming it when absent
    SOMNUS_CHECK(cur.shape() == t.shape() && cur.dtype() == t.dtype() && cur.device() == t.device(),
                 "TeacherView: θ_old of '{}' is {} {} on {}, the parameter {} {} on {}", name, shape_str(t.shape()),
                 dtype_name(t.dtype()), t.device().str(), shape_str(cur.shape()), dtype_name(cur.dtype()),
                 cur.device().str());
  }
}

TeacherView::~TeacherView() {
  if (entered_) swap_out();
}

std::string TeacherView::slot_b_name(int64_t layer, int64_t level, int64_t slot) {
  return fmt::format("blocks.{}.cms.{}.slots.{}.B", layer, level, slot);
}

void TeacherView::swap_in() {
  SOMNUS_CHECK(!entered_, "TeacherView: already entered (scopes do not nest)");
  stashed_.clear();
  for (const auto& [name, old] : spec_.sender_old) stashed_.emplace_back(name, model_.set_parameter(name, old));
  for (size_t l = 0; l < spec_.sender_slots.size(); ++l) {
    nn::CmsLevel& lv = model_.level(static_cast<int64_t>(l), spec_.sender);
    for (const auto& [s, old_b] : spec_.sender_slots[l]) {
      const std::string name = slot_b_name(static_cast<int64_t>(l), spec_.sender, s);
      stashed_.emplace_back(name, model_.set_parameter(name, old_b));
      lv.set_slot_mask_for_view(s, true);
    }
  }
  for (size_t l = 0; l < spec_.receiver_new_slot.size(); ++l) {
    const int64_t s = spec_.receiver_new_slot[l];
    if (s >= 0) model_.level(static_cast<int64_t>(l), spec_.sender + 1).set_slot_mask_for_view(s, false);
  }
  entered_ = true;
}

void TeacherView::swap_out() {
  if (!entered_) return;
  for (const auto& [name, t] : stashed_) model_.set_parameter(name, t);
  stashed_.clear();
  for (size_t l = 0; l < spec_.sender_slots.size(); ++l) {
    nn::CmsLevel& lv = model_.level(static_cast<int64_t>(l), spec_.sender);
    for (const auto& entry : spec_.sender_slots[l]) lv.set_slot_mask_for_view(entry.first, false);
  }
  for (size_t l = 0; l < spec_.receiver_new_slot.size(); ++l) {
    const int64_t s = spec_.receiver_new_slot[l];
    if (s >= 0) model_.level(static_cast<int64_t>(l), spec_.sender + 1).set_slot_mask_for_view(s, true);
  }
  entered_ = false;
}

Tensor TeacherView::hidden_states(const Tensor& ids) {
  NoGradGuard no_grad;
  Scope scope(*this);
  return model_.hidden_states(ids);
}

}  // namespace somnus::sleep
