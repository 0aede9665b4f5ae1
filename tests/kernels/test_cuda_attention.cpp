// Fused attention on CUDA (kernels/cuda/attention.cu) against its CPU twin and the f64
// explicit-P reference (attention_reference.h): forward o and lse (the bf16 tensor-core
// kernel and the f32 SIMT kernel), backward dq, dk, dv with atomic and deterministic dQ
// (bf16: the tensor-core kernels, their v2 and v1 and the SIMT fallback,
// chosen by SOMNUS_ATTN_BWD), and split-K decode; T not a multiple of the 64-row tile, T = 1, S ≠ T
// with an offset, D ∈ {64, 128}, GQA ratios 1, 4, 8, causal and not. The backend is called
// directly with outputs filled with NaN first, so an element a kernel forgets to write fails
// the bound. The deterministic backward must be bitwise repeatable (and the tensor-core
// backward's two versions, which feed the same mma sequence, bitwise equal).
//
// Without a CUDA device every test calls GTEST_SKIP() with a message (ctest label `cuda`).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/ops.h"
#include "tensor/random.h"
#include "tests/kernels/attention_dump.h"
#include "tests/kernels/attention_reference.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::kernels;
using namespace somnus::test;

namespace {

const char* const kNoCuda = "no CUDA device: CUDA attention tests need a GPU (run tools/gpu_check.sh on one)";

Device gpu() { return Device::cuda(0); }

//                B  Hq Hkv  T    S    D   causal offset
const AttnCase kCases[] = {
    {2, 2, 2, 64, 64, 64, true, 0},       // one tile exactly
    {1, 4, 1, 77, 77, 64, true, 0},       // masked tails, ratio 4
    {2, 8, 1, 33, 33, 128, false, 0},     // ratio 8, non-causal
    {1, 2, 2, 1, 1, 64, true, 0},         // T = S = 1
    {2, 4, 1, 1, 130, 128, true, 129},    // a decode query at the end of a cache
    {1, 4, 4, 5, 131, 64, true, 126},     // S ≠ T with offset S − T
    {1, 2, 1, 19, 70, 128, true, 3},      // keys no query sees (dk, dv = 0)
    {1, 2, 2, 70, 45, 64, false, 0},      // S < T
    {1, 8, 1, 200, 333, 128, true, 133},  // several tiles both ways, ratio 8
};

std::string case_name(const AttnCase& c, DType dt) {
  return fmt::format("B{} Hq{} Hkv{} T{} S{} D{} {} off{} {}", c.B, c.Hq, c.Hkv, c.T, c.S, c.D,
                     c.causal ? "causal" : "full", c.q_offset, dtype_name(dt));
}

// ‖a − twin‖ measured against the size of the exact (f64) result rather than the twin's: where
// the exact gradient is zero (T = S = 1: one key, P = 1, so dS = dP − D = 0 and dq = dk = 0),
// both backends return rounding noise, and ‖a − twin‖ / ‖twin‖ would be ~1 for two correct
// answers. Absolute when the exact result is all zeros.
double twin_error(const Tensor& a, const Tensor& twin, const std::vector<double>& exact) {
  double num = 0.0, den = 0.0;
  const std::vector<double> x = a.to_vector(), y = twin.to_vector();
  if (x.size() != y.size() || x.size() != exact.size()) return INFINITY;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) return INFINITY;
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += exact[i] * exact[i];
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

Tensor nan_like(const Shape& s, DType dt) { return Tensor::full(s, NAN, dt, gpu()); }

// The backward paths for bf16: the tensor-core kernels (mma, the default until the H100 run of
// 2026-11-27; the default is now the fastest version that runs, see DefaultsAreTheFastestThatRun), their
// earlier versions (SOMNUS_ATTN_BWD=v2: no cp.async prefetch; v1: no ldmatrix either), the
// SIMT kernels (SOMNUS_ATTN_BWD=simt, the fallback), v3 and v4 (base-2 p, so not
// bitwise the first three; v4 = v3 with 8-warp, 128-key dK/dV blocks; kept last). f32 always
// runs SIMT, on every setting.
// The Hopper wgmma versions have tests of their own (the names contain "Wgmma"), which
// tools/gpu_check.sh runs in a separate process: a fault in a kernel never run on a GPU before
// would otherwise leave a sticky CUDA error that fails every later test of the binary.
const char* const kBwdPaths[] = {"mma", "v2", "v1", "simt", "v3", "v4"};

// SOMNUS_TEST_QUICK=1 (tools/gpu_check.sh sets it under compute-sanitizer, where every launch
// is far slower): MatchesCpuTwinAndReference runs mma, v3 and v4 only.
std::vector<const char*> bwd_paths() {
  const char* q = std::getenv("SOMNUS_TEST_QUICK");
  if (q != nullptr && std::string(q) == "1") return {kBwdPaths[0], kBwdPaths[4], kBwdPaths[5]};
  return std::vector<const char*>(std::begin(kBwdPaths), std::end(kBwdPaths));
}

// "" (or "auto"): unset, the default.
void set_bwd_path(const std::string& path) {
  if (path.empty() || path == "auto") {
    unsetenv("SOMNUS_ATTN_BWD");
  } else {
    setenv("SOMNUS_ATTN_BWD", path.c_str(), 1);
  }
}

struct CudaRun {
  Tensor o, lse, dq, dk, dv;
};

// Forward and backward through the CUDA backend with poisoned outputs; results on the CPU.
CudaRun run_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, const AttnCase& c, bool det) {
  const Tensor qg = q.to(gpu()), kg = k.to(gpu()), vg = v.to(gpu()), gg = dout.to(gpu());
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  CudaRun r{nan_like(q.shape(), q.dtype()), nan_like({c.B, c.Hq, c.T}, DType::f32), nan_like(q.shape(), q.dtype()),
        nan_like(k.shape(), k.dtype()), nan_like(v.shape(), v.dtype())};
  cuda::attention_fwd(qg, kg, vg, c.causal, scale, c.q_offset, r.o, r.lse);
  cuda::attention_bwd(qg, kg, vg, r.o, r.lse, gg, c.causal, scale, c.q_offset, det, r.dq, r.dk, r.dv);
  return {r.o.to(Device::cpu()), r.lse.to(Device::cpu()), r.dq.to(Device::cpu()), r.dk.to(Device::cpu()),
          r.dv.to(Device::cpu())};
}

// SOMNUS_ATTN_DUMP_DIR (gpu_check sets it): a case whose GPU result fails its reference checks
// is written to <dir>/<tag>_d<D>_<n>.bin (at most 2 per tag and head dim; format:
// tests/kernels/attention_dump.h)
// — inputs and the GPU's outputs — for the host emulation's replay (attention_fwd_emu /
// attention_bwd_emu --replay FILE VERSION, tests/kernels/cuda_emu), which runs the same kernel
// on the same inputs and maps where the GPU differs (a layout or descriptor misreading shows
// as a pattern in warps, warpgroups, panels or chunks).
void dump_failure(const std::string& tag, const AttnCase& c, bool det, const Tensor& q, const Tensor& k,
                  const Tensor& v, const Tensor& dout, const CudaRun& g, bool failed) {
  const char* dir = std::getenv("SOMNUS_ATTN_DUMP_DIR");
  if (!failed || dir == nullptr || *dir == '\0') return;
  const std::string key = tag + "_d" + std::to_string(c.D);  // a D 128 failure is kept beside a D 64 one
  static std::vector<std::pair<std::string, int>> counts;
  int* n = nullptr;
  for (auto& [t, cnt] : counts) {
    if (t == key) n = &cnt;
  }
  if (n == nullptr) n = &counts.emplace_back(key, 0).second;
  if (*n >= 2) return;
  bool sizes_ok = true;
  const auto raw = [&](const Tensor& t, auto& out) {  // bf16 bits or f32 values
    const Tensor h = t.to(Device::cpu()).contiguous();
    out.resize(static_cast<size_t>(h.numel()));
    if (static_cast<size_t>(h.nbytes()) != out.size() * sizeof(out[0])) {
      sizes_ok = false;  // not the dtype the format has here
      return;
    }
    std::memcpy(out.data(), h.data_ptr(), static_cast<size_t>(h.nbytes()));
  };
  AttnDump x;
  x.D = static_cast<int>(c.D), x.B = static_cast<int>(c.B), x.Hq = static_cast<int>(c.Hq);
  x.Hkv = static_cast<int>(c.Hkv), x.T = static_cast<int>(c.T), x.S = static_cast<int>(c.S);
  x.causal = c.causal ? 1 : 0, x.q_offset = static_cast<int>(c.q_offset), x.det = det ? 1 : 0;
  x.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.D)));
  raw(q, x.q), raw(k, x.k), raw(v, x.v), raw(dout, x.g), raw(g.o, x.o), raw(g.lse, x.lse), raw(g.dq, x.dq);
  raw(g.dk, x.dk), raw(g.dv, x.dv);
  if (!sizes_ok) {
    ADD_FAILURE() << "dump_failure: a tensor is not bf16 (q, k, v, dout, o, dq, dk, dv) or f32 (lse)";
    return;
  }
  const std::string path = std::string(dir) + "/" + key + "_" + std::to_string((*n)++) + ".bin";
  if (!write_dump(path.c_str(), x)) {
    ADD_FAILURE() << "cannot write " << path;
    return;
  }
  std::printf("note: failing case written to %s (replay it under tests/kernels/cuda_emu)\n", path.c_str());
}

// Under SOMNUS_TEST_QUICK the paths other than mma (v3, v4; wgmma in its own test) run bf16 only (f32
// is SIMT on every setting) on three cases — masked tails with GQA 4, keys no query sees,
// several tiles both ways with GQA 8 — so that the compute-sanitizer runs stay within budget.
bool quick_subset(const std::string& path, DType dt, size_t case_index) {
  const char* q = std::getenv("SOMNUS_TEST_QUICK");
  if (q == nullptr || std::string(q) != "1" || path == "mma") return true;
  return dt == DType::bf16 && (case_index == 1 || case_index == 6 || case_index == 8);
}

TEST(CudaAttention, MatchesCpuTwinAndReference) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  for (DType dt : {DType::bf16, DType::f32}) {
    uint64_t seed = 500;
    for (size_t ci = 0; ci < std::size(kCases); ++ci) {
      const AttnCase& c = kCases[ci];
      Generator gen(seed++);
      const Tensor q = randn({c.B, c.Hq, c.T, c.D}, gen, dt), k = randn({c.B, c.Hkv, c.S, c.D}, gen, dt);
      const Tensor v = randn({c.B, c.Hkv, c.S, c.D}, gen, dt), dout = randn({c.B, c.Hq, c.T, c.D}, gen, dt);
      const AttentionOutput cf = attention_fwd(q, k, v, c.causal, 0.0, c.q_offset);
      const AttentionGrads cb = attention_bwd(q, k, v, cf.o, cf.lse, dout, c.causal, 0.0, c.q_offset, true);
      const AttnRef ref = attention_reference(q, k, v, dout, c.causal, 1.0 / std::sqrt(double(c.D)), c.q_offset);
      const double tf = dt == DType::bf16 ? 1e-2 : 1e-5, tb = dt == DType::bf16 ? 2e-2 : 2e-5;
      for (const char* path : bwd_paths()) {
        if (!quick_subset(path, dt, ci)) continue;
        set_bwd_path(path);
        // With the mma backward the forward is mma too (checked here against f64 on every case:
        // the fallback where the faster versions do not run); else the default forward.
        if (std::string(path) == "mma") {
          setenv("SOMNUS_ATTN_FWD", "mma", 1);
        } else {
          unsetenv("SOMNUS_ATTN_FWD");
        }
        for (bool det : {false, true}) {
          SCOPED_TRACE(case_name(c, dt) + (det ? " deterministic" : " atomic dQ") + " bwd " + path);
          const CudaRun g = run_cuda(q, k, v, dout, c, det);
          EXPECT_LT(rel_or_abs_error(g.o, cf.o.to_vector()), tf);
          EXPECT_LT(rel_or_abs_error(g.lse, cf.lse.to_vector()), 1e-5);
          EXPECT_LT(rel_or_abs_error(g.o, ref.o), tf);
          EXPECT_LT(rel_or_abs_error(g.lse, ref.lse), 1e-5);
          EXPECT_LT(twin_error(g.dq, cb.dq, ref.dq), tb);
          EXPECT_LT(twin_error(g.dk, cb.dk, ref.dk), tb);
          EXPECT_LT(twin_error(g.dv, cb.dv, ref.dv), tb);
          EXPECT_LT(rel_or_abs_error(g.dq, ref.dq), tb);
          EXPECT_LT(rel_or_abs_error(g.dk, ref.dk), tb);
          EXPECT_LT(rel_or_abs_error(g.dv, ref.dv), tb);
        }
      }
      set_bwd_path("");
      unsetenv("SOMNUS_ATTN_FWD");
    }
  }
}

// The Hopper backwards (SOMNUS_ATTN_BWD=version: "wgmma", attn_bwd_dkdv_wg, or "wgmma_ws", the
// warp-specialized attn_bwd_ws; v3's dQ kernel in the deterministic mode) on the shared cases
// (bf16; under SOMNUS_TEST_QUICK the three of quick_subset) and `extra` ones, both dQ modes,
// against the CPU twin and f64; the deterministic mode bitwise repeatable and not mma's bits. Skipped with the reason where it cannot run (needs an sm_90 device and a build for sm_90a).
void check_hopper_backward(const char* version, uint64_t seed, const std::vector<AttnCase>& extra = {}) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  setenv("SOMNUS_ATTN_BWD", version, 1);
  const std::string kernel = cuda::attention_bwd_kernel(DType::bf16, 128, 0.125);
  unsetenv("SOMNUS_ATTN_BWD");
  if (kernel != version) {
    GTEST_SKIP() << "SOMNUS_ATTN_BWD=" << version << " runs " << kernel << " here (needs sm_90 and a build for sm_90a)";
  }
  std::vector<AttnCase> cases;
  for (size_t ci = 0; ci < std::size(kCases); ++ci) {
    if (quick_subset(version, DType::bf16, ci)) cases.push_back(kCases[ci]);
  }
  cases.insert(cases.end(), extra.begin(), extra.end());
  for (const AttnCase& c : cases) {
    Generator gen(seed++);
    const DType dt = DType::bf16;
    const Tensor q = randn({c.B, c.Hq, c.T, c.D}, gen, dt), k = randn({c.B, c.Hkv, c.S, c.D}, gen, dt);
    const Tensor v = randn({c.B, c.Hkv, c.S, c.D}, gen, dt), dout = randn({c.B, c.Hq, c.T, c.D}, gen, dt);
    const AttentionOutput cf = attention_fwd(q, k, v, c.causal, 0.0, c.q_offset);
    const AttentionGrads cb = attention_bwd(q, k, v, cf.o, cf.lse, dout, c.causal, 0.0, c.q_offset, true);
    const AttnRef ref = attention_reference(q, k, v, dout, c.causal, 1.0 / std::sqrt(double(c.D)), c.q_offset);
    set_bwd_path("mma");
    const CudaRun def = run_cuda(q, k, v, dout, c, true);  // mma, deterministic
    set_bwd_path(version);
    for (bool det : {false, true}) {
      SCOPED_TRACE(case_name(c, dt) + (det ? " deterministic" : " atomic dQ") + " bwd " + version);
      const CudaRun g = run_cuda(q, k, v, dout, c, det);
      dump_failure(std::string("bwd_") + version, c, det, q, k, v, dout, g,
                   !(rel_or_abs_error(g.dq, ref.dq) < 2e-2 && rel_or_abs_error(g.dk, ref.dk) < 2e-2 &&
                     rel_or_abs_error(g.dv, ref.dv) < 2e-2));
      EXPECT_LT(twin_error(g.dq, cb.dq, ref.dq), 2e-2);
      EXPECT_LT(twin_error(g.dk, cb.dk, ref.dk), 2e-2);
      EXPECT_LT(twin_error(g.dv, cb.dv, ref.dv), 2e-2);
      EXPECT_LT(rel_or_abs_error(g.dq, ref.dq), 2e-2);
      EXPECT_LT(rel_or_abs_error(g.dk, ref.dk), 2e-2);
      EXPECT_LT(rel_or_abs_error(g.dv, ref.dv), 2e-2);
      if (det) {
        const CudaRun again = run_cuda(q, k, v, dout, c, true);
        EXPECT_EQ(g.dq.to_vector(), again.dq.to_vector()) << "deterministic dQ not repeatable";
        EXPECT_EQ(g.dk.to_vector(), again.dk.to_vector());
        EXPECT_EQ(g.dv.to_vector(), again.dv.to_vector());
        if (c.T * c.Hq * c.B >= 1000) {
          EXPECT_NE(g.dk.to_vector(), def.dk.to_vector()) << version << " gave mma's dK bit for bit";
        }
      }
    }
    set_bwd_path("");
  }
}

TEST(CudaAttention, BackwardWgmmaMatchesTwinAndReference) { check_hopper_backward("wgmma", 1500); }

// The warp-specialized backward, also on blocks with many query tiles (18 and 32 through its
// 2-slot ring) and a q_offset that puts a key block's first query tile mid-tile.
TEST(CudaAttention, BackwardWgmmaWsMatchesTwinAndReference) {
  check_hopper_backward("wgmma_ws", 1600, {{1, 2, 1, 560, 300, 64, true, 100}, {1, 4, 1, 500, 256, 128, false, 0}});
}

// Under SOMNUS_TEST_QUICK (compute-sanitizer's racecheck, where this one case through all six
// paths in both dtypes took ~95 s on an H100, by difference of two runs' totals): bf16 only,
// through bwd_paths() (mma, v3, v4).
TEST(CudaAttention, DeterministicBackwardIsBitwiseRepeatable) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  const std::vector<const char*> paths = bwd_paths();
  for (DType dt : somnus::testing::quick_mode() ? std::vector<DType>{DType::bf16} : std::vector<DType>{DType::bf16, DType::f32}) {
    const AttnCase c{2, 8, 2, 300, 300, 128, true, 0};
    Generator gen(42);
    const Tensor q = randn({c.B, c.Hq, c.T, c.D}, gen, dt), k = randn({c.B, c.Hkv, c.S, c.D}, gen, dt);
    const Tensor v = randn({c.B, c.Hkv, c.S, c.D}, gen, dt), dout = randn({c.B, c.Hq, c.T, c.D}, gen, dt);
    std::map<std::string, CudaRun> runs;
    for (const char* path : paths) {
      set_bwd_path(path);
      const CudaRun a = run_cuda(q, k, v, dout, c, true), b = run_cuda(q, k, v, dout, c, true);
      EXPECT_EQ(a.dq.to_vector(), b.dq.to_vector()) << dtype_name(dt) << " bwd " << path;
      EXPECT_EQ(a.dk.to_vector(), b.dk.to_vector()) << dtype_name(dt) << " bwd " << path;
      EXPECT_EQ(a.dv.to_vector(), b.dv.to_vector()) << dtype_name(dt) << " bwd " << path;
      runs.emplace(path, a);
    }
    set_bwd_path("mma");
    const bool mma_runs = cuda::attention_bwd_kernel(dt, c.D, 1.0 / std::sqrt(double(c.D))) == "mma";
    set_bwd_path("");
    // mma, v2, v1: the tensor-core backward's versions feed the same values to the same mma
    // sequence (bf16; f32 runs SIMT on every setting, so it holds trivially).
    const CudaRun& mma = runs.at("mma");
    for (const char* other : {"v2", "v1"}) {
      if (runs.count(other) == 0) continue;
      const CudaRun& r = runs.at(other);
      EXPECT_EQ(mma.dq.to_vector(), r.dq.to_vector()) << dtype_name(dt) << " mma vs " << other;
      EXPECT_EQ(mma.dk.to_vector(), r.dk.to_vector()) << dtype_name(dt) << " mma vs " << other;
      EXPECT_EQ(mma.dv.to_vector(), r.dv.to_vector()) << dtype_name(dt) << " mma vs " << other;
    }
    // v3 and v4 compute p in base 2: where the device runs them, their dQ is not mma's bit for
    // bit (else the switch silently ran mma).
    if (dt == DType::bf16 && mma_runs) {
      for (const char* other : {"v3", "v4"}) {
        setenv("SOMNUS_ATTN_BWD", other, 1);
        const bool runs_it = cuda::attention_bwd_kernel(dt, c.D, 1.0 / std::sqrt(double(c.D))) == other;
        unsetenv("SOMNUS_ATTN_BWD");
        if (runs_it) {
          EXPECT_NE(mma.dq.to_vector(), runs.at(other).dq.to_vector()) << "SOMNUS_ATTN_BWD=" << other << " ran mma";
        }
      }
    }
  }
}

// The decode paths by name: "gqa" (the defaults), "pipe_wide", "pipe", "unpiped", "ring" (the
// GQA kernel's variants, SOMNUS_ATTN_DECODE), "fused" (SOMNUS_DECODE_COMBINE=fused: the combine in
// the decode kernel's last block per (b, kv head), on pipe_wide), "ring_fused" (the same on the
// ring), "simt" (the SIMT row kernel). "" unsets both.
void set_decode_path(const std::string& path) {
  unsetenv("SOMNUS_ATTN_DECODE");
  unsetenv("SOMNUS_DECODE_COMBINE");
  if (path == "fused" || path == "ring_fused") {
    setenv("SOMNUS_DECODE_COMBINE", "fused", 1);
    if (path == "ring_fused") setenv("SOMNUS_ATTN_DECODE", "ring", 1);
  } else if (!path.empty() && path != "gqa") {
    setenv("SOMNUS_ATTN_DECODE", path.c_str(), 1);
  }
}
const char* const kDecodePaths[] = {"gqa", "pipe_wide", "pipe", "unpiped", "ring", "fused", "simt"};

// Both decode kernels: the GQA block kernel (rows = g·T <= 8; by default its ring variant
// for 4 rows (pipe_wide before 2026-11-28), the unpipelined one otherwise) with each variant by name, and the SIMT row
// kernel (SOMNUS_ATTN_DECODE=simt, and rows > 8 on every setting).
TEST(CudaAttention, DecodeMatchesCpuAndReference) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  //                     B  Hq Hkv  T    S   D  causal offset (D set below)
  const AttnCase decode_cases[] = {
      {2, 8, 1, 1, 1000, 0, true, 999},  // g = 8, T = 1: rows 8
      {2, 8, 1, 3, 1000, 0, true, 997},  // rows 24 > 8: the SIMT kernel on both settings
      {2, 8, 2, 2, 1000, 0, true, 998},  // g = 4, T = 2: rows 8
      {1, 4, 2, 2, 333, 0, true, 100},   // S off the key step; keys past 102 unseen (whole splits)
      {1, 4, 4, 1, 77, 0, false, 0},     // g = 1, not causal
  };
  for (const char* path : kDecodePaths) {
    // Quick mode (the sanitizer runs): not "pipe" and "unpiped", which are no default at 4 rows
    // ("gqa" runs unpiped for 1, 2 and 8 rows); "pipe_wide" stays, the fused combine's base.
    if (somnus::testing::quick_mode() && (std::string(path) == "pipe" || std::string(path) == "unpiped")) continue;
    set_decode_path(path);
    for (DType dt : {DType::bf16, DType::f32}) {
      for (int64_t D : {64, 128}) {
        for (AttnCase c : decode_cases) {
          c.D = D;
          Generator gen(7 + D + c.T + c.S);
          const Tensor q = randn({c.B, c.Hq, c.T, c.D}, gen, dt), k = randn({c.B, c.Hkv, c.S, c.D}, gen, dt);
          const Tensor v = randn({c.B, c.Hkv, c.S, c.D}, gen, dt);
          const double scale = 1.0 / std::sqrt(static_cast<double>(D));
          const AttnRef ref = attention_reference(q, k, v, Tensor(), c.causal, scale, c.q_offset);
          for (int64_t splits : {0, 1, 5, 64}) {  // 0: the backend's choice
            SCOPED_TRACE(case_name(c, dt) + fmt::format(" splits {} {}", splits, path));
            Tensor o = nan_like(q.shape(), dt), lse = nan_like({c.B, c.Hq, c.T}, DType::f32);
            cuda::attention_decode(q.to(gpu()), k.to(gpu()), v.to(gpu()), c.causal, scale, c.q_offset, splits, o,
                                   lse);
            const AttentionOutput cpu = attention_decode(q, k, v, c.causal, 0.0, c.q_offset, splits);
            const double tf = dt == DType::bf16 ? 1e-2 : 1e-5;
            EXPECT_LT(rel_or_abs_error(o.to(Device::cpu()), cpu.o.to_vector()), tf);
            EXPECT_LT(rel_or_abs_error(o.to(Device::cpu()), ref.o), tf);
            EXPECT_LT(rel_or_abs_error(lse.to(Device::cpu()), ref.lse), 1e-5);
          }
        }
      }
    }
  }
  set_decode_path("");
}

// The fused combine (SOMNUS_DECODE_COMBINE=fused) runs combine_row, attn_combine's own code, in
// the last block of each (b, kv head) of the pipe_wide kernel, or of the ring's: at a given
// split count, o and lse must be bitwise that kernel's two-launch result, and a second call (its
// tickets back at 0) the same again.
TEST(CudaAttention, DecodeFusedCombineIsBitwiseTheTwoLaunchPath) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(44);
  //                       B  Hq Hkv T  S     D    (rows g·T: 1, 4, 8)
  const AttnCase cases[] = {{3, 4, 4, 1, 900, 128, true, 899}, {2, 8, 2, 1, 1000, 64, true, 999},
                            {2, 8, 1, 1, 333, 128, true, 332}};
  // Quick mode (compute-sanitizer's racecheck, whose attention budget DecodeMatchesCpuAndReference
  // shares): bf16 at 7 splits only, 18 decodes of the 108, still every row count and both bases.
  const bool quick = somnus::testing::quick_mode();
  const std::vector<DType> dtypes = quick ? std::vector<DType>{DType::bf16} : std::vector<DType>{DType::bf16, DType::f32};
  const std::vector<int64_t> split_counts = quick ? std::vector<int64_t>{7} : std::vector<int64_t>{0, 1, 7};
  for (DType dt : dtypes) {
    for (const AttnCase& c : cases) {
      const Tensor q = randn({c.B, c.Hq, c.T, c.D}, g, dt, gpu());
      const Tensor k = randn({c.B, c.Hkv, c.S, c.D}, g, dt, gpu()), v = randn({c.B, c.Hkv, c.S, c.D}, g, dt, gpu());
      for (int64_t splits : split_counts) {
        for (const char* base : {"pipe_wide", "ring"}) {  // fused on each: "fused", "ring_fused"
          SCOPED_TRACE(case_name(c, dt) + fmt::format(" splits {} {}", splits, base));
          set_decode_path(base);
          const AttentionOutput two = attention_decode(q, k, v, true, 0.0, c.q_offset, splits);
          set_decode_path(std::string(base) == "ring" ? "ring_fused" : "fused");
          const AttentionOutput f1 = attention_decode(q, k, v, true, 0.0, c.q_offset, splits);
          const AttentionOutput f2 = attention_decode(q, k, v, true, 0.0, c.q_offset, splits);
          set_decode_path("");
          if (splits > 0) {
            EXPECT_EQ(f1.o.to(Device::cpu()).to_vector(), two.o.to(Device::cpu()).to_vector());
            EXPECT_EQ(f1.lse.to(Device::cpu()).to_vector(), two.lse.to(Device::cpu()).to_vector());
          } else {
            // The automatic split count follows each kernel's occupancy, and the fused kernel
            // has more registers than its base (ptxas: 155 against 147 for the ring), so the
            // two may split S differently: same function, not the same partition.
            const double tol = dt == DType::bf16 ? 1e-2 : 1e-5;
            EXPECT_LT(rel_or_abs_error(f1.o.to(Device::cpu()), two.o.to(Device::cpu()).to_vector()), tol);
            EXPECT_LT(rel_or_abs_error(f1.lse.to(Device::cpu()), two.lse.to(Device::cpu()).to_vector()), tol);
          }
          EXPECT_EQ(f2.o.to(Device::cpu()).to_vector(), f1.o.to(Device::cpu()).to_vector());
        }
      }
    }
  }
}

// A KV cache hands the decode a (B, Hkv, len, D) prefix of (B, Hkv, capacity, D) buffers. The
// CUDA decode kernels (GQA and SIMT) read it in place through the batch / head strides
// (kernels/ops.cpp kv_pair_operands; before 2026-11-26 it was copied every step) and must give
// bit for bit what the contiguous copy gives; the slots past len hold NaN, so a key read past
// the prefix shows. Checked under the host emulation (tests/kernels/cuda_emu) before any GPU ran it.
TEST(CudaAttention, DecodeReadsKvCachePrefixInPlace) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  for (DType dt : {DType::bf16, DType::f32}) {
    Generator g(41);
    const int64_t B = 2, Hq = 8, Hkv = 2, D = 128, cap = 700;
    Tensor kbuf = randn({B, Hkv, cap, D}, g, dt), vbuf = randn({B, Hkv, cap, D}, g, dt);
    kbuf.slice(2, 600, cap).fill_(NAN);
    vbuf.slice(2, 600, cap).fill_(NAN);
    kbuf = kbuf.to(gpu());
    vbuf = vbuf.to(gpu());
    for (int64_t S : {1, 37, 600}) {
      const Tensor k = kbuf.slice(2, 0, S), v = vbuf.slice(2, 0, S);
      ASSERT_FALSE(k.is_contiguous());
      const Tensor kc = k.contiguous(), vc = v.contiguous();
      for (int64_t T : {1, 3}) {  // rows g·T = 4, 12: the GQA kernel, then the SIMT one
        if (T > S) continue;
        SCOPED_TRACE(fmt::format("{} S {} T {}", dtype_name(dt), S, T));
        const Tensor q = randn({B, Hq, T, D}, g, dt, gpu());
        for (const char* path : kDecodePaths) {
          set_decode_path(path);
          const AttentionOutput a = attention_decode(q, k, v, true, 0.0, S - T, 5);
          const AttentionOutput b = attention_decode(q, kc, vc, true, 0.0, S - T, 5);
          set_decode_path("");
          EXPECT_EQ(a.o.to(Device::cpu()).to_vector(), b.o.to(Device::cpu()).to_vector()) << path;
          EXPECT_EQ(a.lse.to(Device::cpu()).to_vector(), b.lse.to(Device::cpu()).to_vector()) << path;
          const AttnRef ref = attention_reference(q.to(Device::cpu()), kc.to(Device::cpu()), vc.to(Device::cpu()),
                                                  Tensor(), true, 1.0 / std::sqrt(double(D)), S - T);
          EXPECT_LT(rel_or_abs_error(a.o.to(Device::cpu()), ref.o), dt == DType::bf16 ? 1e-2 : 1e-5) << path;
        }
      }
    }
  }
}

// Odd strides on size-1 dimensions only — a (B, Hkv, 1, D) view of a transposed (B, 1, Hkv, D)
// projection; B = Hkv = 1 caches of different capacities — are read as they are (the kernels
// never use those strides; the review of 2026-11-27 found the first version rejecting them).
TEST(CudaAttention, DecodeIgnoresStridesOfSizeOneDims) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator g(43);
  for (DType dt : {DType::bf16, DType::f32}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor k1 = randn({2, 1, 4, 64}, g, dt, gpu()).transpose(1, 2);  // (2, 4, 1, 64)
    const Tensor v1 = randn({2, 1, 4, 64}, g, dt, gpu()).transpose(1, 2);
    const Tensor q1 = randn({2, 8, 1, 64}, g, dt, gpu());
    const AttentionOutput a = attention_decode(q1, k1, v1, true, 0.0, 0, 0);
    const AttentionOutput b = attention_decode(q1, k1.clone(), v1.clone(), true, 0.0, 0, 0);
    EXPECT_EQ(a.o.to(Device::cpu()).to_vector(), b.o.to(Device::cpu()).to_vector());
    const Tensor k2 = randn({1, 1, 300, 128}, g, dt, gpu()).slice(2, 0, 100);
    const Tensor v2 = randn({1, 1, 500, 128}, g, dt, gpu()).slice(2, 0, 100);
    const Tensor q2 = randn({1, 4, 1, 128}, g, dt, gpu());
    const AttentionOutput c = attention_decode(q2, k2, v2, true, 0.0, 99, 3);
    const AttentionOutput e = attention_decode(q2, k2.contiguous(), v2.contiguous(), true, 0.0, 99, 3);
    EXPECT_EQ(c.o.to(Device::cpu()).to_vector(), e.o.to(Device::cpu()).to_vector());
  }
}

TEST(CudaAttention, OpFrontEndAndUnsupportedHeadDim) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator gen(3);
  const Tensor q = randn({1, 2, 10, 64}, gen, DType::bf16, gpu());
  const AttentionOutput out = attention_fwd(q, q, q, true);
  EXPECT_EQ(out.o.device(), gpu());
  EXPECT_EQ(out.lse.dtype(), DType::f32);
  const Tensor q48 = randn({1, 2, 10, 48}, gen, DType::f32, gpu());
  EXPECT_THROW(attention_fwd(q48, q48, q48, true), Error);
}

// The bf16 forward's kernel versions (SOMNUS_ATTN_FWD: v1 = plain shared loads, v2 = ldmatrix,
// mma = ldmatrix + cp.async double buffering) feed the same values to the same mma
// sequence, so they must agree bit for bit; v1 is the version checked against the f64
// reference on an H100 first (2026-11-26), and mma is checked against it above.
TEST(CudaAttention, ForwardKernelVersionsAgreeBitwise) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  uint64_t seed = 900;
  for (const AttnCase& c : kCases) {
    SCOPED_TRACE(case_name(c, DType::bf16));
    Generator gen(seed++);
    const Tensor q = randn({c.B, c.Hq, c.T, c.D}, gen, DType::bf16).to(gpu());
    const Tensor k = randn({c.B, c.Hkv, c.S, c.D}, gen, DType::bf16).to(gpu());
    const Tensor v = randn({c.B, c.Hkv, c.S, c.D}, gen, DType::bf16).to(gpu());
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
    std::vector<std::vector<double>> o, lse;
    for (const char* version : {"v1", "v2", "mma"}) {
      setenv("SOMNUS_ATTN_FWD", version, 1);
      Tensor ov = nan_like(q.shape(), DType::bf16), lv = nan_like({c.B, c.Hq, c.T}, DType::f32);
      cuda::attention_fwd(q, k, v, c.causal, scale, c.q_offset, ov, lv);
      unsetenv("SOMNUS_ATTN_FWD");
      o.push_back(ov.to(Device::cpu()).to_vector());
      lse.push_back(lv.to(Device::cpu()).to_vector());
    }
    for (size_t i = 1; i < o.size(); ++i) {
      EXPECT_TRUE(o[i] == o[0]) << "o of version " << i << " differs from v1";
      EXPECT_TRUE(lse[i] == lse[0]) << "lse of version " << i << " differs from v1";
    }
  }
}

// The v3 forward (SOMNUS_ATTN_FWD=v3: 128-row blocks, softmax in base 2, masks only on the
// tiles that need them) computes ex2 instead of exp, so it is not bitwise mma: its o
// and lse are held to the CPU twin and the f64 reference, and the backward run on its o and
// lse must give the reference gradients (a wrong lse would show there). The cases add blocks
// with a partly and a wholly empty warp (T = 150, 300), a warp whose rows see no key at all
// (q_offset = -20: rows 0..19 see nothing, o = 0, lse = -inf like mma), and a negative
// scale, which v3 hands to mma (bitwise mma's result). A case runs only
// where the device takes v3 (cuda::attention_fwd_kernel: two resident blocks per SM, sm_90), and
// then v3's lse must differ from mma's somewhere (ex2 against exp), or v3 did not run.
// SOMNUS_TEST_QUICK=1 (compute-sanitizer) takes the three v3-specific cases, forward only.
// A forward version other than mma (SOMNUS_ATTN_FWD=v3, wgmma, wgmma_pipe, wgmma_ws, wgmma_wspp or wgmma_persist) against the CPU twin and f64, on the
// shared cases plus its own; rows that see no key; a negative scale (handed to mma).
// Cases the device cannot run the version on are noted and skipped.
void forward_version_matches(const char* version, uint64_t seed) {
  const char* quick_env = std::getenv("SOMNUS_TEST_QUICK");
  const bool quick = quick_env != nullptr && std::string(quick_env) == "1";
  std::vector<AttnCase> cases;
  if (!quick) cases.assign(std::begin(kCases), std::end(kCases));
  //                B  Hq Hkv  T    S    D   causal offset
  cases.push_back({1, 4, 2, 150, 150, 128, true, 0});
  cases.push_back({2, 4, 1, 300, 300, 64, true, 0});
  cases.push_back({1, 2, 2, 130, 257, 128, false, 0});
  cases.push_back({1, 2, 1, 256, 1024, 128, true, 768});  // 8 tiles of 128 keys: rings of slots wrap
  somnus::testing::for_each_env("SOMNUS_ATTN_FWD", {version}, [&](const char*) {
    for (const AttnCase& c : cases) {
      SCOPED_TRACE(case_name(c, DType::bf16));
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
      const std::string kernel = cuda::attention_fwd_kernel(DType::bf16, c.D, scale);
      if (kernel != version) {
        std::printf("note: SOMNUS_ATTN_FWD=%s runs %s on this device at D = %lld (v3 needs two resident blocks per "
                    "SM, wgmma a build for sm_90a)\n",
                    version, kernel.c_str(), static_cast<long long>(c.D));
        continue;
      }
      Generator gen(seed++);
      const Tensor q = randn({c.B, c.Hq, c.T, c.D}, gen, DType::bf16), k = randn({c.B, c.Hkv, c.S, c.D}, gen, DType::bf16);
      const Tensor v = randn({c.B, c.Hkv, c.S, c.D}, gen, DType::bf16), dout = randn({c.B, c.Hq, c.T, c.D}, gen, DType::bf16);
      const AttentionOutput cf = attention_fwd(q, k, v, c.causal, 0.0, c.q_offset);
      const AttnRef ref = attention_reference(q, k, v, dout, c.causal, scale, c.q_offset);
      if (quick) {  // forward only
        Tensor o = nan_like(q.shape(), DType::bf16), lse = nan_like({c.B, c.Hq, c.T}, DType::f32);
        cuda::attention_fwd(q.to(gpu()), k.to(gpu()), v.to(gpu()), c.causal, scale, c.q_offset, o, lse);
        EXPECT_LT(rel_or_abs_error(o.to(Device::cpu()), ref.o), 1e-2);
        EXPECT_LT(rel_or_abs_error(lse.to(Device::cpu()), ref.lse), 1e-5);
        continue;
      }
      const CudaRun g = run_cuda(q, k, v, dout, c, true);
      dump_failure(std::string("fwd_") + version, c, true, q, k, v, dout, g,
                   !(rel_or_abs_error(g.o, ref.o) < 1e-2 && rel_or_abs_error(g.lse, ref.lse) < 1e-5));
      EXPECT_LT(rel_or_abs_error(g.o, cf.o.to_vector()), 1e-2);
      EXPECT_LT(rel_or_abs_error(g.lse, cf.lse.to_vector()), 1e-5);
      EXPECT_LT(rel_or_abs_error(g.o, ref.o), 1e-2);
      EXPECT_LT(rel_or_abs_error(g.lse, ref.lse), 1e-5);
      EXPECT_LT(rel_or_abs_error(g.dq, ref.dq), 2e-2);
      EXPECT_LT(rel_or_abs_error(g.dk, ref.dk), 2e-2);
      EXPECT_LT(rel_or_abs_error(g.dv, ref.dv), 2e-2);
      if (c.T * c.Hq * c.B >= 1000) {  // the version ran: its lse is not bitwise mma's
        setenv("SOMNUS_ATTN_FWD", "mma", 1);
        const CudaRun d = run_cuda(q, k, v, dout, c, true);
        setenv("SOMNUS_ATTN_FWD", version, 1);
        EXPECT_NE(g.lse.to_vector(), d.lse.to_vector()) << "SOMNUS_ATTN_FWD=" << version << " gave mma's lse bit for bit";
      }
    }
    // Rows that see no key: o = 0 and lse = -inf, as mma gives.
    if (cuda::attention_fwd_kernel(DType::bf16, 64, 0.125) == version) {
      const AttnCase c{1, 2, 1, 150, 100, 64, true, -20};
      Generator gen(seed++);
      const Tensor q = randn({c.B, c.Hq, c.T, c.D}, gen, DType::bf16).to(gpu());
      const Tensor k = randn({c.B, c.Hkv, c.S, c.D}, gen, DType::bf16).to(gpu());
      const Tensor v = randn({c.B, c.Hkv, c.S, c.D}, gen, DType::bf16).to(gpu());
      const double scale = 0.125;
      std::vector<std::vector<double>> o, lse;
      for (const char* run : {version, "mma"}) {
        setenv("SOMNUS_ATTN_FWD", run, 1);
        Tensor ov = nan_like(q.shape(), DType::bf16), lv = nan_like({c.B, c.Hq, c.T}, DType::f32);
        cuda::attention_fwd(q, k, v, c.causal, scale, c.q_offset, ov, lv);
        o.push_back(ov.to(Device::cpu()).to_vector());
        lse.push_back(lv.to(Device::cpu()).to_vector());
      }
      EXPECT_LT(rel_or_abs_error(o[0], o[1]), 1e-2);
      for (int64_t hq = 0; hq < c.Hq; ++hq) {
        for (int64_t i = 0; i < c.T; ++i) {
          const double a = lse[0][hq * c.T + i], b = lse[1][hq * c.T + i];
          if (i < 20) {
            EXPECT_TRUE(std::isinf(a) && a < 0) << "row " << i << " lse " << a;
            for (int64_t x = 0; x < c.D; ++x) EXPECT_EQ(o[0][(hq * c.T + i) * c.D + x], 0.0) << "row " << i;
          } else {
            EXPECT_NEAR(a, b, 1e-4 * (1.0 + std::abs(b))) << "row " << i;
          }
        }
      }
      setenv("SOMNUS_ATTN_FWD", version, 1);
    }
    // A negative scale: the version hands it to mma (the selector says so, and the result is
    // bitwise mma's), which must be right against f64.
    {
      const AttnCase c{1, 2, 2, 70, 70, 64, true, 0};
      Generator gen(seed++);
      const Tensor q = randn({c.B, c.Hq, c.T, c.D}, gen, DType::bf16), k = randn({c.B, c.Hkv, c.S, c.D}, gen, DType::bf16);
      const Tensor v = randn({c.B, c.Hkv, c.S, c.D}, gen, DType::bf16);
      const AttnRef ref = attention_reference(q, k, v, Tensor(), c.causal, -0.125, c.q_offset);
      EXPECT_EQ(cuda::attention_fwd_kernel(DType::bf16, 64, -0.125), "mma");
      std::vector<std::vector<double>> o, lse;
      for (const char* run : {version, "mma"}) {
        setenv("SOMNUS_ATTN_FWD", run, 1);
        Tensor ov = nan_like(q.shape(), DType::bf16), lv = nan_like({c.B, c.Hq, c.T}, DType::f32);
        cuda::attention_fwd(q.to(gpu()), k.to(gpu()), v.to(gpu()), c.causal, -0.125, c.q_offset, ov, lv);
        o.push_back(ov.to(Device::cpu()).to_vector());
        lse.push_back(lv.to(Device::cpu()).to_vector());
      }
      EXPECT_EQ(o[0], o[1]);
      EXPECT_EQ(lse[0], lse[1]);
      EXPECT_LT(rel_or_abs_error(o[0], ref.o), 1e-2);
      EXPECT_LT(rel_or_abs_error(lse[0], ref.lse), 1e-5);
    }
  });
}

TEST(CudaAttention, ForwardV3MatchesTwinAndReference) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  forward_version_matches("v3", 1300);
}

// The Hopper forwards need an sm_90 device and a build for sm_90a (CMake's default architectures
// "80;90a" include it); elsewhere they are skipped with the reason this gives ("" where `version`
// runs).
std::string hopper_forward_skip_reason(const char* version) {
  if (!cuda_available()) return kNoCuda;
  setenv("SOMNUS_ATTN_FWD", version, 1);
  const std::string kernel = cuda::attention_fwd_kernel(DType::bf16, 128, 0.125);
  unsetenv("SOMNUS_ATTN_FWD");
  if (kernel == version) return "";
  return "SOMNUS_ATTN_FWD=" + std::string(version) + " runs " + kernel + " here (needs sm_90 and a build for sm_90a)";
}

TEST(CudaAttention, ForwardWgmmaMatchesTwinAndReference) {
  if (const std::string why = hopper_forward_skip_reason("wgmma"); !why.empty()) GTEST_SKIP() << why;
  forward_version_matches("wgmma", 1400);
}

// The pipelined Hopper forward (SOMNUS_ATTN_FWD=wgmma_pipe: 128-key tiles, P V of one tile in
// flight during the next tile's softmax); its own test, run by gpu_check in a process of its own.
TEST(CudaAttention, ForwardWgmmaPipeMatchesTwinAndReference) {
  if (const std::string why = hopper_forward_skip_reason("wgmma_pipe"); !why.empty()) GTEST_SKIP() << why;
  forward_version_matches("wgmma_pipe", 1500);
}

// The warp-specialized Hopper forward (SOMNUS_ATTN_FWD=wgmma_ws: a producer warpgroup loads K and
// V with TMA into mbarrier-guarded rings, the two consumer warpgroups run wgmma_pipe's loop), and
// the same with the consumers taking turns at the tensor cores (wgmma_wspp); gpu_check runs both
// in a process of their own ("*WgmmaWs*").
TEST(CudaAttention, ForwardWgmmaWsMatchesTwinAndReference) {
  if (const std::string why = hopper_forward_skip_reason("wgmma_ws"); !why.empty()) GTEST_SKIP() << why;
  forward_version_matches("wgmma_ws", 1600);
}

TEST(CudaAttention, ForwardWgmmaWsPingPongMatchesTwinAndReference) {
  if (const std::string why = hopper_forward_skip_reason("wgmma_wspp"); !why.empty()) GTEST_SKIP() << why;
  forward_version_matches("wgmma_wspp", 1700);
}

// wgmma_wspp on persistent blocks (SOMNUS_ATTN_FWD=wgmma_persist): once with 3 blocks, so that
// each runs many work items at these sizes (rings, phases and turns carried across items, Q
// replaced under the Q-empty barrier), once with the default grid (one block per SM).
TEST(CudaAttention, ForwardWgmmaWsPersistentMatchesTwinAndReference) {
  if (const std::string why = hopper_forward_skip_reason("wgmma_persist"); !why.empty()) GTEST_SKIP() << why;
  setenv("SOMNUS_ATTN_PERSIST_BLOCKS", "3", 1);
  forward_version_matches("wgmma_persist", 1800);
  unsetenv("SOMNUS_ATTN_PERSIST_BLOCKS");
  forward_version_matches("wgmma_persist", 1900);
}

// The defaults (SOMNUS_ATTN_FWD / SOMNUS_ATTN_BWD unset) are the fastest versions measured that
// the device runs (H100, 2026-11-27, bench/RESULTS.md): forward wgmma_persist, else v3, else
// mma; backward wgmma_ws, else v4, else v3, else mma. "auto" and "" mean the same; a negative
// scale (which the base-2 versions do not take) gets mma; f32 gets the SIMT kernels.
TEST(CudaAttention, DefaultsAreTheFastestThatRun) {
  if (!cuda_available()) GTEST_SKIP() << kNoCuda;
  const auto fwd_with = [](const char* value, int64_t D, double scale) {
    setenv("SOMNUS_ATTN_FWD", value, 1);
    const std::string k = cuda::attention_fwd_kernel(DType::bf16, D, scale);
    unsetenv("SOMNUS_ATTN_FWD");
    return k;
  };
  const auto bwd_with = [](const char* value, int64_t D, double scale) {
    setenv("SOMNUS_ATTN_BWD", value, 1);
    const std::string k = cuda::attention_bwd_kernel(DType::bf16, D, scale);
    unsetenv("SOMNUS_ATTN_BWD");
    return k;
  };
  unsetenv("SOMNUS_ATTN_FWD");
  unsetenv("SOMNUS_ATTN_BWD");
  for (int64_t D : {64, 128}) {
    SCOPED_TRACE("D " + std::to_string(D));
    const double scale = 1.0 / std::sqrt(double(D));
    std::string fwd = "mma";
    for (const char* v : {"v3", "wgmma_persist"}) {  // slowest first
      if (fwd_with(v, D, scale) == v) fwd = v;
    }
    EXPECT_EQ(cuda::attention_fwd_kernel(DType::bf16, D, scale), fwd);
    EXPECT_EQ(fwd_with("auto", D, scale), fwd);
    EXPECT_EQ(fwd_with("", D, scale), fwd);
    EXPECT_EQ(fwd_with("mma", D, scale), "mma");
    EXPECT_EQ(cuda::attention_fwd_kernel(DType::bf16, D, -scale), "mma");
    EXPECT_EQ(cuda::attention_fwd_kernel(DType::f32, D, scale), "simt");
    std::string bwd = bwd_with("mma", D, scale);  // "v2" where mma's buffers do not fit
    for (const char* v : {"v3", "v4", "wgmma_ws"}) {
      if (bwd_with(v, D, scale) == v) bwd = v;
    }
    EXPECT_EQ(cuda::attention_bwd_kernel(DType::bf16, D, scale), bwd);
    EXPECT_EQ(bwd_with("auto", D, scale), bwd);
    EXPECT_EQ(bwd_with("", D, scale), bwd);
    EXPECT_EQ(cuda::attention_bwd_kernel(DType::f32, D, scale), "simt");
    EXPECT_EQ(cuda::attention_bwd_kernel(DType::bf16, D, -scale), bwd_with("mma", D, scale));
    std::printf("note: D = %lld: forward %s, backward %s by default on this device\n", static_cast<long long>(D),
                fwd.c_str(), bwd.c_str());
  }
}

}  // namespace
