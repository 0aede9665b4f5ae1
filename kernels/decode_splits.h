// How many KV splits a split-K decode launch takes when the caller leaves it to the backend
// (attention_decode with num_splits <= 0). Shared host-side arithmetic, so that it is tested
// on the CPU (tests/kernels/test_attention.cpp) although only the CUDA backend uses it.
//
// A decode launch has few (b, kv head) blocks per split (B·Hkv: 64 at B 8, Hkv 8), far fewer
// than the slots of a GPU (SMs × blocks per SM: 396 on an H100 for the unpiped GQA kernel, 264
// for its pipe_wide variant), and it is
// bandwidth-bound, so what matters is that the launch fills the slots evenly: the wave
// efficiency of n splits is waves / ceil(waves), waves = blocks_per_split·n / slots (the rule
// of FlashAttention-2's num_splits_heuristic). The smallest n within 0.85 of the best
// efficiency wins (fewer splits: fewer partials to write and combine, longer blocks); no
// split gets fewer than `min_keys` keys. The previous rule, S / 256 clamped to [1, 64], gave
// 4 splits at S = 1024 (256 blocks on 396 slots: 0.44 of the copy bandwidth on an H100) and
// 16 at S = 4096 (2.6 waves: 0.53).
#pragma once
#include <algorithm>
#include <cstdint>

namespace somnus::kernels {

inline int64_t decode_splits_for_waves(int64_t blocks_per_split, int64_t slots, int64_t S, int64_t min_keys = 64,
                                       int64_t max_splits = 128) {
  if (blocks_per_split <= 0 || slots <= 0 || S <= 0) return 1;
  if (blocks_per_split * 10 >= slots * 8) return 1;  // one split already fills 80% of a wave
  const int64_t cap = std::clamp<int64_t>(S / std::max<int64_t>(min_keys, 1), 1, std::max<int64_t>(max_splits, 1));
  auto efficiency = [&](int64_t n) {
    const double waves = static_cast<double>(blocks_per_split * n) / static_cast<double>(slots);
    return waves / static_cast<double>((blocks_per_split * n + slots - 1) / slots);
  };
  double best = 0.0;
  for (int64_t n = 1; n <= cap; ++n) best = std::max(best, efficiency(n));
  for (int64_t n = 1; n <= cap; ++n) {
    if (efficiency(n) >= 0.85 * best) return n;
  }
  return cap;
}

}  // namespace somnus::kernels
