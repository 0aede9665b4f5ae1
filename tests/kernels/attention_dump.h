// The attention dump format: test_cuda_attention.cpp's dump_failure writes a failing GPU case
// (inputs and the GPU's outputs) when gpu_check sets SOMNUS_ATTN_DUMP_DIR, and the host
// emulation's replay (tests/kernels/cuda_emu/replay.h) reads it. One writer and one reader, so
// that the two cannot drift. Little-endian: "SOMNUSA1", int32 D, B, Hq, Hkv, T, S, causal,
// q_offset, det; f32 scale; then q, k, v, dout (bf16 bits), o (bf16), lse (f32), dq, dk, dv
// (bf16). Written 2026-11-27.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

struct AttnDump {
  int D = 0, B = 0, Hq = 0, Hkv = 0, T = 0, S = 0, causal = 0, q_offset = 0, det = 0;
  float scale = 0.f;
  std::vector<uint16_t> q, k, v, g, o, dq, dk, dv;  // bf16 bits
  std::vector<float> lse;
};

// Reads the format dump_failure writes; false (with a message) on a short or foreign file.
inline bool load_dump(const char* path, AttnDump& x) {
  std::FILE* f = std::fopen(path, "rb");
  if (f == nullptr) {
    std::printf("replay: cannot open %s\n", path);
    return false;
  }
  char magic[8];
  int32_t h[9];
  bool ok = std::fread(magic, 1, 8, f) == 8 && std::memcmp(magic, "SOMNUSA1", 8) == 0 &&
            std::fread(h, sizeof h, 1, f) == 1 && std::fread(&x.scale, sizeof x.scale, 1, f) == 1;
  if (ok) {
    x.D = h[0], x.B = h[1], x.Hq = h[2], x.Hkv = h[3], x.T = h[4], x.S = h[5], x.causal = h[6], x.q_offset = h[7],
    x.det = h[8];
    const auto in = [](int v) { return v > 0 && v <= (1 << 20); };  // bounded before any product
    ok = (x.D == 64 || x.D == 128) && in(x.B) && in(x.Hq) && in(x.Hkv) && x.Hq % x.Hkv == 0 && in(x.T) && in(x.S) &&
         int64_t(x.B) * x.Hq * x.T * x.D < (int64_t(1) << 31) && int64_t(x.B) * x.Hkv * x.S * x.D < (int64_t(1) << 31);
  }
  if (!ok) {
    std::fclose(f);
    std::printf("replay: %s is not an attention dump\n", path);
    return false;
  }
  const size_t nq = size_t(x.B) * x.Hq * x.T * x.D, nk = size_t(x.B) * x.Hkv * x.S * x.D;
  const auto rd = [&](auto& vec, size_t n) {
    vec.resize(n);
    ok = ok && std::fread(vec.data(), sizeof vec[0], n, f) == n;
  };
  rd(x.q, nq), rd(x.k, nk), rd(x.v, nk), rd(x.g, nq), rd(x.o, nq), rd(x.lse, size_t(x.B) * x.Hq * x.T), rd(x.dq, nq),
      rd(x.dk, nk), rd(x.dv, nk);
  ok = ok && std::fgetc(f) == EOF;  // nothing after dv: the header's sizes are the file's
  std::fclose(f);
  if (!ok) std::printf("replay: %s is not a complete attention dump\n", path);
  return ok;
}

// Writes x to path; false when the file cannot be written.
inline bool write_dump(const char* path, const AttnDump& x) {
  std::FILE* f = std::fopen(path, "wb");
  if (f == nullptr) return false;
  const int32_t h[9] = {x.D, x.B, x.Hq, x.Hkv, x.T, x.S, x.causal, x.q_offset, x.det};
  bool ok = std::fwrite("SOMNUSA1", 1, 8, f) == 8 && std::fwrite(h, sizeof h, 1, f) == 1 &&
            std::fwrite(&x.scale, sizeof x.scale, 1, f) == 1;
  const auto wr = [&](const auto& vec) { ok = ok && std::fwrite(vec.data(), sizeof vec[0], vec.size(), f) == vec.size(); };
  wr(x.q), wr(x.k), wr(x.v), wr(x.g), wr(x.o), wr(x.lse), wr(x.dq), wr(x.dk), wr(x.dv);
  return std::fclose(f) == 0 && ok;
}
