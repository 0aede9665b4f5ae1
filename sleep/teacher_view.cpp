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
  // The slot entries too, so that entering cannot fail half-way.
  for (size_t l = 0; l < spec_.sender_slots.size(); ++l) {
    const nn::CmsLevel& lv = model_.level(static_cast<int64_t>(l), spec_.sender);
    for (const auto& [s, old_b] : spec_.sender_slots[l]) {
      SOMNUS_CHECK(s >= 0 && s < lv.n_slots(), "TeacherView: sender slot {} of layer {} out of range [0, {})", s, l,
                   lv.n_slots());
      const Tensor& cur = lv.slot(s).B;
      SOMNUS_CHECK(old_b.defined() && old_b.shape() == cur.shape() && old_b.dtype() == cur.dtype() &&
                       old_b.device() == cur.device(),
                   "TeacherView: the old B of sender slot {} of layer {} is {}, the slot's B {} {} on {}", s, l,
                   old_b.defined() ? fmt::format("{} {} on {}", shape_str(old_b.shape()), dtype_name(old_b.dtype()),
                                                 old_b.device().str())
                                   : std::string("undefined"),
                   shape_str(cur.shape()), dtype_name(cur.dtype()), cur.device().str());
    }
  }
  SOMNUS_CHECK(spec_.receiver_evicted.empty() || static_cast<int64_t>(spec_.receiver_evicted.size()) == L,
               "TeacherView: receiver_evicted has {} layers, the model {}", spec_.receiver_evicted.size(), L);
  if (!spec_.receiver_evicted.empty()) {
    SOMNUS_CHECK(spec_.sender + 1 < n_levels,
                 "TeacherView: receiver_evicted given, but sender level {} has no receiver", spec_.sender);
  }
  auto describe = [](const Tensor& t) {
    return t.defined() ? fmt::format("{} {} on {}", shape_str(t.shape()), dtype_name(t.dtype()), t.device().str())
                       : std::string("undefined");
  };
  for (size_t l = 0; l < spec_.receiver_evicted.size(); ++l) {
    const EvictedSlot& e = spec_.receiver_evicted[l];
    if (e.slot == -1) continue;
    const nn::CmsLevel& lv = model_.level(static_cast<int64_t>(l), spec_.sender + 1);
    SOMNUS_CHECK(e.slot >= 0 && e.slot < lv.n_slots(),
                 "TeacherView: evicted receiver slot of layer {} is {}, expected -1 or a slot in [0, {})", l, e.slot,
                 lv.n_slots());
    const nn::LowRankSlot& cur = lv.slot(e.slot);
    const std::pair<const char*, const Tensor*> parts[] = {{"A", &e.A}, {"B", &e.B}, {"router row", &e.router}};
    const Tensor* mine[] = {&cur.A, &cur.B, &cur.router};
    for (size_t i = 0; i < 3; ++i) {
      const Tensor& old = *parts[i].second;
      const Tensor& now = *mine[i];
      const bool fits = old.defined() == now.defined() &&
                        (!old.defined() ||
                         (old.shape() == now.shape() && old.dtype() == now.dtype() && old.device() == now.device()));
      SOMNUS_CHECK(fits, "TeacherView: the old {} of evicted receiver slot {} of layer {} is {}, the slot's {}",
                   parts[i].first, e.slot, l, describe(old), describe(now));
    }
  }
  if (!spec_.receiver_new_slot.empty()) {
    SOMNUS_CHECK(spec_.sender + 1 < n_levels, "TeacherView: receiver_new_slot given, but sender level {} has no receiver",
                 spec_.sender);
    for (size_t l = 0; l < spec_.receiver_new_slot.size(); ++l) {
      const int64_t s = spec_.receiver_new_slot[l];
      const int64_t n = model_.level(static_cast<int64_t>(l), spec_.sender + 1).n_slots();
      SOMNUS_CHECK(s >= -1 && s < n, "TeacherView: receiver_new_slot of layer {} is {}, expected -1 or a slot in [0, {})",
                   l, s, n);
    }
  }
}

TeacherView::~TeacherView() {
  if (entered_) swap_out();
}

std::string TeacherView::slot_param_name(int64_t layer, int64_t level, int64_t slot, const char* param) {
  return fmt::format("blocks.{}.cms.{}.slots.{}.{}", layer, level, slot, param);
}

void TeacherView::swap_in() {
  SOMNUS_CHECK(!entered_, "TeacherView: already entered (scopes do not nest)");
  stashed_.clear();
  flipped_.clear();
  try {
    for (const auto& [name, old] : spec_.sender_old) stashed_.emplace_back(name, model_.set_parameter(name, old));
    for (size_t l = 0; l < spec_.sender_slots.size(); ++l) {
      for (const auto& [s, old_b] : spec_.sender_slots[l]) {
        const std::string name = slot_param_name(static_cast<int64_t>(l), spec_.sender, s, "B");
        stashed_.emplace_back(name, model_.set_parameter(name, old_b));
        flip_mask(static_cast<int64_t>(l), spec_.sender, s, true);
      }
    }
    for (size_t l = 0; l < spec_.receiver_new_slot.size(); ++l) {
      const int64_t s = spec_.receiver_new_slot[l];
      if (s >= 0) flip_mask(static_cast<int64_t>(l), spec_.sender + 1, s, false);
    }
    // After the new slots are hidden: an evicted slot that is also the new one is shown with
    // its old occupant's weights.
    for (size_t l = 0; l < spec_.receiver_evicted.size(); ++l) {
      const EvictedSlot& e = spec_.receiver_evicted[l];
      if (e.slot < 0) continue;
      const auto layer = static_cast<int64_t>(l);
      const int64_t receiver = spec_.sender + 1;
      const std::pair<const char*, const Tensor*> parts[] = {{"A", &e.A}, {"B", &e.B}, {"router", &e.router}};
      for (const auto& [param, old] : parts) {
        if (!old->defined()) continue;  // a dense level has no router row
        const std::string name = slot_param_name(layer, receiver, e.slot, param);
        stashed_.emplace_back(name, model_.set_parameter(name, *old));
      }
      flip_mask(layer, receiver, e.slot, true);
    }
  } catch (...) {
    restore();  // a half-entered view must not leave the student's handles or masks swapped
    throw;
  }
  entered_ = true;
}

void TeacherView::flip_mask(int64_t layer, int64_t level, int64_t slot, bool active) {
  nn::CmsLevel& lv = model_.level(layer, level);
  const bool before = lv.slot_active(slot);
  lv.set_slot_mask_for_view(slot, active);
  flipped_.push_back({layer, level, slot, before});
}

void TeacherView::restore() {
  // Reverse order: a handle or mask touched twice gets its first (the student's) value back.
  for (auto it = stashed_.rbegin(); it != stashed_.rend(); ++it) model_.set_parameter(it->first, it->second);
  for (auto it = flipped_.rbegin(); it != flipped_.rend(); ++it)
    model_.level(it->layer, it->level).set_slot_mask_for_view(it->slot, it->was_active);
  stashed_.clear();
  flipped_.clear();
}

void TeacherView::swap_out() {
  if (!entered_) return;
  restore();
  entered_ = false;
}

Tensor TeacherView::hidden_states(const Tensor& ids) {
  NoGradGuard no_grad;
  Scope scope(*this);
  return model_.hidden_states(ids);
}

}  // namespace somnus::sleep
