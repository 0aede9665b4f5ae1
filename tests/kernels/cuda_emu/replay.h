// Replay of a failing GPU case: test_cuda_attention.cpp's dump_failure writes, when gpu_check
// sets SOMNUS_ATTN_DUMP_DIR, the inputs and the GPU's outputs of a v3 / v4 / Hopper attention kernel's
// failing case; the forward and backward drivers here, given `--replay FILE [version]`, run
// the same kernel under the emulation on the same inputs and print where the GPU differs, by
// position within the block's tiles — a layout or descriptor misreading shows as a pattern
// (one warp, one warpgroup, one 64-column panel, one 16-byte chunk) that a wrong scale or a
// race does not. Written 2026-11-27, with no GPU failure to replay yet.
#pragma once
#include <unistd.h>

#include "tests/kernels/attention_dump.h"
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

// Where the GPU's (rows × D) result differs from the emulation's: |gpu − emu| > tol·(1 + |emu|)
// (or one is not finite), counted by the row's position in a 128-row block (16-row group
// row % 128 / 16 — a warp's rows in the 128-row / 128-key blocks of v3, v4 and the wgmma
// kernels; the default kernels' blocks are 64 — and warpgroup row % 128 / 64), the column's
// 64-wide panel and its 16-byte chunk in the panel; rows are (head, position) with `len`
// positions a head. Returns the mismatch count.
template <class T>
int mismatch_map(const char* name, const std::vector<T>& gpu, const std::vector<T>& emu, int len, int D, double tol) {
  const auto val = [](T x) {
    if constexpr (std::is_same_v<T, float>) return static_cast<double>(x);
    else return static_cast<double>(bf2f(x));
  };
  int bad = 0, by_warp[8] = {}, by_wg[2] = {}, by_panel[2] = {}, by_chunk[8] = {};
  const int cols = D > 0 ? D : 1;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double a = val(gpu[i]), b = val(emu[i]);
    if (a == b) continue;  // also both −inf (lse of a row that sees no key)
    if (std::isfinite(a) && std::isfinite(b) && std::fabs(a - b) <= tol * (1 + std::fabs(b))) continue;
    const int row = static_cast<int>(i / cols) % len, col = static_cast<int>(i % cols);
    if (bad < 6) {
      std::printf("  %s[head %zu, pos %d, col %d]: gpu %.5g emulation %.5g\n", name, i / cols / len, row, col, a, b);
    }
    ++bad, ++by_warp[row % 128 / 16], ++by_wg[row % 128 / 64], ++by_panel[col / 64 % 2], ++by_chunk[col % 64 / 8];
  }
  std::printf("%s: %d of %zu differ (tol %.0e)", name, bad, gpu.size(), tol);
  if (bad > 0) {
    std::printf("; by 16 rows (pos %% 128 / 16; a warp's in 128-row blocks):");
    for (int x : by_warp) std::printf(" %d", x);
    std::printf("; by warpgroup: %d %d", by_wg[0], by_wg[1]);
    if (D > 1) {
      std::printf("; by 64-column panel: %d %d; by 16-byte chunk (col %% 64 / 8):", by_panel[0], by_panel[1]);
      for (int x : by_chunk) std::printf(" %d", x);
    }
  }
  std::printf("\n");
  return bad;
}

// `--replay FILE VERSION` for a driver: loads the dump, prints its case and calls
// replay(dump, version) — the driver's: the same kernel under the emulation, returning the
// number of differing elements, or -1 for a version it does not have. Exit status: 0 none
// differ, 1 some do, 2 bad arguments or file.
template <class F>
int replay_main(int argc, char** argv, F&& replay) {
  if (argc < 4) {
    std::printf("usage: %s --replay FILE VERSION\n", argv[0]);
    return 2;
  }
  AttnDump x;
  if (!load_dump(argv[2], x)) return 2;
  std::printf("replay %s: %s D%d B%d Hq%d Hkv%d T%d S%d %s off%d %s\n", argv[2], argv[3], x.D, x.B, x.Hq, x.Hkv, x.T,
              x.S, x.causal ? "causal" : "full", x.q_offset, x.det ? "det" : "atomic");
  const int bad = replay(x, std::string(argv[3]));
  return bad < 0 ? 2 : bad > 0 ? 1 : 0;
}

// n bf16 values from N(0, 1) into each of ts (the self-checks' inputs).
inline void randn_bf16(std::mt19937& rng, size_t n, std::initializer_list<std::vector<uint16_t>*> ts) {
  std::normal_distribution<float> nd;
  for (auto* t : ts) {
    t->resize(n);
    for (auto& e : *t) e = f2bf(nd(rng));
  }
}

// The drivers' check of the replay itself: x — an emulated run standing in for a GPU result,
// `shifted` of its elements changed — written and read back through attention_dump.h;
// replay(loaded, version) must find exactly the changed elements. Returns 1 on failure.
template <class F>
int replay_selfcheck(const AttnDump& x, int shifted, const char* version, F&& replay) {
  const std::string path = "/tmp/somnus_emu_replay_" + std::to_string(::getpid()) + ".bin";
  AttnDump y;
  const int found = write_dump(path.c_str(), x) && load_dump(path.c_str(), y) ? replay(y, std::string(version)) : -1;
  std::remove(path.c_str());
  const bool ok = found == shifted;
  std::printf("%s replay self-check: %d shifted, %d found\n", ok ? "ok  " : "FAIL", shifted, found);
  return ok ? 0 : 1;
}
