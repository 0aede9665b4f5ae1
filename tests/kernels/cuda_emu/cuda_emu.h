// A host emulation of the CUDA primitives our tensor-core kernels are written against, so that
// the kernels' own source runs on a machine without a GPU (tests/kernels/cuda_emu/run.sh pulls
// the kernels out of kernels/cuda/*.cu with extract.py and compiles them after this header).
// It checks the things a GPU-less build cannot: fragment layouts, shared-memory addressing,
// barriers, the cp.async group accounting, masks and tails. It does not check timing, register
// pressure, bank conflicts, or anything the inline PTX itself gets wrong beyond its documented
// semantics.
//
// Model: a block is blockDim.x·blockDim.y fibers (one per CUDA thread, on the launching OS
// thread: emu_fiber.h) run to completion before the next block; __syncthreads is a barrier over
// the block, and every warp-collective (mma.sync, ldmatrix, shfl) is a barrier over its 32
// threads, so a collective a lane skips leaves the block waiting (undefined on the GPU): the
// launch reports where each thread waits and aborts. Semantics emulated, from the PTX ISA:
//   mma_bf16       mma.sync.m16n8k16.row.col f32.bf16.bf16.f32: A a0 (row gr, cols 2tq..+1),
//                  a1 (gr + 8), a2 (cols + 8), a3 (both); B b0 (k 2tq..+1, n gr), b1 (k + 8);
//                  C c0, c1 (gr, 2tq..+1), c2, c3 (gr + 8). Products summed in f32 over k.
//   ldsm_x4_at     ldmatrix.x4(.trans): lane l gives the address of row l % 8 of matrix l / 8;
//                  register i gets matrix i at (row lane / 4, cols 2·(lane % 4)..+1), or with
//                  .trans (rows 2·(lane % 4)..+1, col lane / 4). Misaligned → abort.
//   cp_async16     lands either at once or when a wait retires its group (commit closes a
//                  group; wait<N> lands all but the newest N), by a per-thread coin: reading a
//                  tile before its wait can read the garbage the block's shared memory starts
//                  with (0xff bytes: bf16 NaN), and issuing into a buffer before the barrier
//                  that frees it can overwrite data a slower warp still reads.
//   shared memory  bounds-checked on every ldmatrix and cp.async.
//   ex2_approx     exp2 (the hardware's ex2.approx.ftz differs by ~2 ulp).
//   atomicAdd      f32, f64, i32, u32 and u64, relaxed (the order of adds is the threads' schedule);
//   atomicMin      u64, relaxed;
//   atomicInc      u32 (wraps to 0 past `top`), relaxed.
//   __threadfence, __ldcg: a no-op and a plain load (blocks run one after another).
//   wgmma, mbarriers, TMA: their own sections below (asynchrony, descriptors, phases, copies).
//   cub::BlockReduce, WarpReduce, BlockScan  the reductions in thread / lane 0 only; the scans
//                  in thread order (their section at the end).
// Written 2026-11-26 (derived from a helper's emulator of the attention backward); the kernels
// it has run are listed in run.sh.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <limits>
#include <functional>
#include <map>

#include "emu_fiber.h"
#include "tensor/dispatch.h"  // compute_t (and tensor/dtype.h)
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __align__(x)
#define __grid_constant__
using std::max;
using std::min;
using std::isinf;  // CUDA has them unqualified
using std::isnan;
using std::isfinite;
using std::fma;    // fma(float, float, float) is fmaf, as on the device
struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline emu::FiberLocal<Dim3> threadIdx_fl;
#define threadIdx (threadIdx_fl.get())
inline emu::FiberLocal<int> t_lin_fl;  // the thread's linear index in its block (x fastest): its warp is t_lin / 32
#define t_lin (t_lin_fl.get())
Dim3 blockIdx, blockDim, gridDim;
unsigned char* g_smem;
// stdout line-buffered even into a pipe (ctest's log): the emulation reports a fault with a
// printf line and std::abort, which does not flush.
inline const int g_stdout_line_buffered = std::setvbuf(stdout, nullptr, _IOLBF, 0);
static uint16_t f2bf(float x) {
  uint32_t u; std::memcpy(&u, &x, 4);
  if (std::isnan(x)) return 0x7fc0;
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
static float bf2f(uint16_t h) { uint32_t u = static_cast<uint32_t>(h) << 16; float x; std::memcpy(&x, &u, 4); return x; }
struct uint4 { uint32_t x, y, z, w; };
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline float __expf(float x) { return std::exp(x); }
inline float ex2_approx(float x) { return std::exp2(x); }
inline uint16_t __float2bfloat16_rn(float x) { return f2bf(x); }  // bf16 as its bits here
inline float __bfloat162float(uint16_t x) { return bf2f(x); }
using somnus::bf16;  // the engine's storage type (tensor/dtype.h), as the kernels' bf16
inline uint16_t __bfloat16_as_ushort(uint16_t x) { return x; }
inline uint32_t __float_as_uint(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
// Atomics: relaxed std::atomic_ref operations (one OS thread runs every fiber, so they are
// atomic anyway; relaxed, so that ThreadSanitizer sees no ordering the GPU's atomics do not give).
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v, std::memory_order_relaxed); }
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  return std::atomic_ref<unsigned>(*p).fetch_add(v, std::memory_order_relaxed);
}
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v, std::memory_order_relaxed); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v, std::memory_order_relaxed); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v, std::memory_order_relaxed);
}
// CUDA's atomicInc: the old value; stores 0 when old >= top, else old + 1.
inline unsigned atomicInc(unsigned* p, unsigned top) {
  std::atomic_ref<unsigned> a(*p);
  unsigned old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, old >= top ? 0u : old + 1u, std::memory_order_relaxed)) {
  }
  return old;
}
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long> a(*p);
  unsigned long long old = a.load(std::memory_order_relaxed);
  while (old > v && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}
// Blocks run one after another here: device-wide ordering holds by construction.
inline void __threadfence() {}
template <class T>
inline T __ldcg(const T* p) { return *p; }
inline uint32_t pack_bf16(float lo, float hi) { return f2bf(lo) | (static_cast<uint32_t>(f2bf(hi)) << 16); }
inline uint32_t pack_u16(uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16); }
constexpr int kMaxWarps = 32;
static_assert(kMaxWarps * 32 == emu::kMaxFibers, "a fiber per thread of the largest block");
emu::Barrier* g_block_bar;
struct Warp { emu::Barrier* bar; uint32_t a[32][4], b[32][2]; const uint16_t* ldsm[32]; uint64_t shfl[32]; };
Warp* g_warps;
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
// __syncwarp: a barrier over the thread's warp (whole warps only; the mask is not emulated).
inline void __syncwarp(unsigned = 0xffffffffu) { g_warps[t_lin / 32].bar->arrive_and_wait(); }
inline void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  const int lane = t_lin % 32;
  Warp& w = g_warps[t_lin / 32];
  w.a[lane][0] = a0; w.a[lane][1] = a1; w.a[lane][2] = a2; w.a[lane][3] = a3;
  w.b[lane][0] = b0; w.b[lane][1] = b1;
  w.bar->arrive_and_wait();
  float A[16][16], Bm[16][8];
  auto lo = [](uint32_t r) { return bf2f(static_cast<uint16_t>(r & 0xffff)); };
  auto hi = [](uint32_t r) { return bf2f(static_cast<uint16_t>(r >> 16)); };
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    A[g][2 * t] = lo(w.a[l][0]); A[g][2 * t + 1] = hi(w.a[l][0]);
    A[g + 8][2 * t] = lo(w.a[l][1]); A[g + 8][2 * t + 1] = hi(w.a[l][1]);
    A[g][2 * t + 8] = lo(w.a[l][2]); A[g][2 * t + 9] = hi(w.a[l][2]);
    A[g + 8][2 * t + 8] = lo(w.a[l][3]); A[g + 8][2 * t + 9] = hi(w.a[l][3]);
    Bm[2 * t][g] = lo(w.b[l][0]); Bm[2 * t + 1][g] = hi(w.b[l][0]);
    Bm[2 * t + 8][g] = lo(w.b[l][1]); Bm[2 * t + 9][g] = hi(w.b[l][1]);
  }
  w.bar->arrive_and_wait();
  const int gr = lane >> 2, tq = lane & 3;
  for (int e = 0; e < 4; ++e) {
    const int r = gr + (e >= 2 ? 8 : 0), col = 2 * tq + (e & 1);
    float s = 0.f;
    for (int kk = 0; kk < 16; ++kk) s += A[r][kk] * Bm[kk][col];
    c[e] += s;
  }
}
// Any 4- or 8-byte value (float, double, int, ...), through the warp's exchange slots.
template <class V>
inline V __shfl_xor_sync(unsigned, V v, int m) {
  static_assert(sizeof(V) <= 8);
  Warp& w = g_warps[t_lin / 32];
  const int l = t_lin % 32;
  std::memcpy(&w.shfl[l], &v, sizeof(V));
  w.bar->arrive_and_wait();
  V r;
  std::memcpy(&r, &w.shfl[l ^ m], sizeof(V));
  w.bar->arrive_and_wait();
  return r;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
// Round-to-nearest products the device compiler never contracts into an FMA (no -march here, so
// the host compiler does not contract either; std::fma is the device's fma).
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
// cp.async: copies land when a wait retires their group (so a missing wait reads garbage).
struct PendingCopy { uint16_t* sm; const uint16_t* g; bool valid; };
inline emu::FiberLocal<std::vector<PendingCopy>> t_open_fl;
#define t_open (t_open_fl.get())
inline emu::FiberLocal<std::vector<std::vector<PendingCopy>>> t_groups_fl;
#define t_groups (t_groups_fl.get())
size_t g_smem_bytes;
inline void check_smem(const void* p, size_t n) {
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (c < g_smem || c + n > g_smem + g_smem_bytes) { std::printf("shared access out of bounds\n"); std::abort(); }
}
// Where in [issue, wait] a copy lands: at the issue or at the wait, by a per-thread coin with a
// fixed seed (reset per block in launch), so one run exercises both a read before the data is
// there (a missing wait) and a write under a reader (an issue before the barrier that frees the
// buffer).
inline emu::FiberLocal<uint64_t> t_coin_fl{0};
#define t_coin (t_coin_fl.get())
// Built with CUDA_EMU_EAGER_COPIES (run.sh's thread-sanitizer mode) every copy lands at its
// issue: a write by the issuing thread that ThreadSanitizer orders against every other thread's
// reads only through the barriers, so a missing __syncthreads is reported whatever the schedule.
inline bool land_now() {
#ifdef CUDA_EMU_EAGER_COPIES
  return true;
#else
  t_coin = t_coin * 6364136223846793005ull + 1442695040888963407ull;
  return (t_coin >> 33) & 1;
#endif
}
// The async proxy (wgmma and the bulk reductions read shared memory through it): a 16-byte
// chunk a cp.async landed in is "unfenced" (g_unfenced[chunk] = the landing thread + 1) until
// that thread executes fence_proxy_async; a wgmma operand or a bulk reduction's source in an
// unfenced chunk aborts at the issue (the ISA: writes to shared memory by the generic proxy —
// cp.async's included — must be fenced with fence.proxy.async before the async proxy reads
// them). Plain stores are tracked where a kernel makes them through st_shared_b32 (the
// backward's dSᵀ) or st_shared_v4 (attn_bwd_ws's dQ staging), not otherwise. Stricter than the
// ISA could allow (a fence by another thread after the barrier might also order the writes):
// the kernels fence in the landing thread, and so does this rule.
std::atomic<int>* g_unfenced;  // per 16-byte chunk of the block's shared memory
inline emu::FiberLocal<std::vector<uint32_t>> t_unfenced_fl;  // the chunks this thread landed since its fence
#define t_unfenced (t_unfenced_fl.get())
// The 16-byte chunk at p was written by this thread through the generic proxy: unfenced until
// its fence_proxy_async.
inline void mark_unfenced(const void* p) {
  const uint32_t c = static_cast<uint32_t>(static_cast<const unsigned char*>(p) - g_smem) / 16;
  g_unfenced[c].store(t_lin + 1, std::memory_order_relaxed);
  t_unfenced.push_back(c);
}
inline void land16(uint16_t* sm, const uint16_t* g, bool valid) {
  if (valid) std::memcpy(sm, g, 16); else std::memset(sm, 0, 16);
  mark_unfenced(sm);
}
inline void fence_proxy_async() {
  for (uint32_t c : t_unfenced) {
    int mine = t_lin + 1;
    g_unfenced[c].compare_exchange_strong(mine, 0, std::memory_order_relaxed);
  }
  t_unfenced.clear();
}
// A plain shared store a wgmma reads later (st_shared_b32 in the kernels): unfenced, like a
// cp.async landing, until the storing thread's fence_proxy_async.
inline void st_shared_b32(void* p, uint32_t v) {
  check_smem(p, 4);
  std::memcpy(p, &v, 4);
  mark_unfenced(p);
}
inline void cp_async16(uint16_t* sm, const uint16_t* g, bool valid) {
  if (reinterpret_cast<uintptr_t>(sm) % 16 || (valid && reinterpret_cast<uintptr_t>(g) % 16)) {
    std::printf("cp.async misaligned\n");
    std::abort();
  }
  check_smem(sm, 16);
  if (land_now()) {
    land16(sm, g, valid);
    return;
  }
  t_open.push_back({sm, g, valid});
}
inline void cp_async_commit() { t_groups.push_back(std::move(t_open)); t_open.clear(); }
template <int N> inline void cp_async_wait() {
  while (static_cast<int>(t_groups.size()) > N) {
    for (auto& c : t_groups.front()) land16(c.sm, c.g, c.valid);
    t_groups.erase(t_groups.begin());
  }
}
// The shared-space address of the block's shared memory: not 1024-byte aligned on purpose, so a
// kernel that needs alignment (the 128-byte swizzle of wgmma operands) must establish it.
constexpr uint32_t kEmuSmemBase = 0x250;
inline uint32_t __cvta_generic_to_shared(const void* p) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - g_smem) + kEmuSmemBase;
}
template <bool kTrans>
inline void ldsm_x4_at(uint32_t (&r)[4], uint32_t a) {
  const uint16_t* p = reinterpret_cast<const uint16_t*>(g_smem + (a - kEmuSmemBase));
  const int lane = t_lin % 32;
  Warp& w = g_warps[t_lin / 32];
  if (a % 16 != 0) { std::printf("ldmatrix misaligned\n"); std::abort(); }
  check_smem(p, 16);
  w.ldsm[lane] = p;
  w.bar->arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!kTrans) {
      const uint16_t* row = w.ldsm[i * 8 + lane / 4];
      lo = row[2 * (lane % 4)]; hi = row[2 * (lane % 4) + 1];
    } else {
      lo = w.ldsm[i * 8 + 2 * (lane % 4)][lane / 4];
      hi = w.ldsm[i * 8 + 2 * (lane % 4) + 1][lane / 4];
    }
    r[i] = pack_u16(lo, hi);
  }
  w.bar->arrive_and_wait();
}
template <bool kTrans>
inline void ldsm_x4(uint32_t (&r)[4], const uint16_t* p) { ldsm_x4_at<kTrans>(r, __cvta_generic_to_shared(p)); }

// ---- wgmma (Hopper warpgroup MMA: the wrappers attn_fwd_wg and attn_bwd_dkdv_wg call in
// kernels/cuda/attention.cu: wgmma_ss_n64, wgmma_ss_k (N = 64, 128), wgmma_ss_n64_tt, wgmma_rs_tb)
// Semantics emulated, from the PTX ISA (asynchronous warpgroup-level matrix instructions): a
// warpgroup is 128 consecutive threads (t_lin / 128); every thread of it must execute the
// instruction with the same descriptors (else abort; a thread that skips it deadlocks).
// Asynchrony: the product is computed at the issue (operands as they are then) into a shadow
// of the thread's accumulator, and the accumulator registers read garbage (NaN and 1e30) from the issue until the
// wgmma_wait that retires the instruction's group (commit closes a group; wait<N> retires all
// but the newest N) copies the shadow in; a write to them meanwhile aborts there (when it
// changed the poison: a scaling by 1 passes). So reading the
// accumulators before the wait, or rescaling them under an instruction in flight, gives wrong
// results. Chained instructions on one accumulator (k-steps) accumulate onto the pending
// shadow. At the retiring wait the warpgroup's shared operands are hashed again and must be
// unchanged since the issue (a buffer overwritten under an instruction in flight aborts), and
// the RS form's A registers must be unchanged too (abort). A thread that ends with an
// instruction not retired aborts. wgmma_fence: an issue needs one since the thread's last
// wgmma_wait (or the kernel's start), else abort — stricter than the ISA, which asks for the
// fence only where registers the instruction uses were accessed since, but after a wait our
// kernels always have touched them. fence_proxy_async: see g_unfenced (cp.async writes only).
// D layout: warp w of the group owns rows 16w..+15, d[j][e] = (row 16w + lane/4 +
// 8·(e ≥ 2), column 8j + 2·(lane%4) + (e&1)); A from registers: mma.sync's A layout per warp.
// Descriptor: start, LBO, SBO in 16-byte units (14 bits each at bits 0, 16, 32), swizzle mode in
// bits 62–63 — only 1 (128-byte) is emulated, base offset (bits 49–51) 0, other bits 0. With the
// 128-byte swizzle a byte address a (shared space) is stored at a ^ (((a >> 7) & 7) << 4).
//   K-major operand (imm-trans 0), element (mn, k) of the 16-wide k-step:
//     start + (mn / 8)·SBO + (mn % 8)·128 + 2k;
//   MN-major operand (imm-trans-a / imm-trans-b 1), element (k, n) — for A, (k, m): start +
//     (n / 64)·LBO + 2·(n % 64) + (k / 8)·SBO + (k % 8)·128.
struct WarpGroup {
  emu::Barrier* bar;
  uint32_t a[128][4];
  uint64_t da[128], db[128];
};
WarpGroup* g_wgs;
inline emu::FiberLocal<bool> t_wg_fenced_fl{false};  // a wgmma_fence since the last wait / the start
#define t_wg_fenced (t_wg_fenced_fl.get())
inline void wgmma_fence() { t_wg_fenced = true; }
template <int N>
inline void wg_fence_operands(float (&)[N][4]) {}
template <int N>
inline void wg_fence_operands(uint32_t (&)[N][4]) {}
bool g_wg_lag = false;  // see wgmma_wait
struct WgDesc {
  uint32_t start, lbo, sbo;
};
inline WgDesc wg_decode(uint64_t d) {
  const uint64_t known = 0x3FFFull | (0x3FFFull << 16) | (0x3FFFull << 32) | (3ull << 62);
  if ((d >> 62) != 1 || (d & ~known) != 0) {
    std::printf("wgmma descriptor 0x%llx: only the 128-byte swizzle, base offset 0 are emulated\n",
                static_cast<unsigned long long>(d));
    std::abort();
  }
  return {static_cast<uint32_t>(d & 0x3FFF) << 4, static_cast<uint32_t>((d >> 16) & 0x3FFF) << 4,
          static_cast<uint32_t>((d >> 32) & 0x3FFF) << 4};
}
// Publishes this thread's operands, waits for the warpgroup, checks the descriptors agree.
inline WarpGroup& wg_enter(uint64_t da, uint64_t db) {
  WarpGroup& g = g_wgs[t_lin / 128];
  const int t = t_lin % 128;
  g.da[t] = da;
  g.db[t] = db;
  g.bar->arrive_and_wait();
  if (g.da[t] != g.da[0] || g.db[t] != g.db[0]) {
    std::printf("wgmma: descriptors differ across the warpgroup\n");
    std::abort();
  }
  return g;
}
// An instruction in flight, as one thread sees it: its accumulator (n floats at d) and their
// value at completion; the RS form's A registers (at a, as issued); for the warpgroup's first
// thread the operands' hash at the issue and what to rehash (descriptors, majors, N).
struct WgInFlight {
  float* d;
  int n;
  std::vector<float> result;
  const uint32_t* a;
  uint32_t a_issued[4];
  uint64_t hash, da, db;
  bool mn_a, mn_b, rs;
  int width;  // N
};
inline emu::FiberLocal<std::vector<WgInFlight>> t_wg_open_fl;
#define t_wg_open (t_wg_open_fl.get())
inline emu::FiberLocal<std::vector<std::vector<WgInFlight>>> t_wg_groups_fl;
#define t_wg_groups (t_wg_groups_fl.get())
// The accumulator's value an instruction issued now starts from: the latest pending result on
// the same registers, else the registers.
inline const float* wg_acc_source(const float* d) {
  for (auto g = t_wg_open.rbegin(); g != t_wg_open.rend(); ++g) if (g->d == d) return g->result.data();
  for (auto gs = t_wg_groups.rbegin(); gs != t_wg_groups.rend(); ++gs) {
    for (auto g = gs->rbegin(); g != gs->rend(); ++g) if (g->d == d) return g->result.data();
  }
  return d;
}
// Which barrier phase made each 16-byte chunk of shared memory valid (a TMA copy landed in it):
// (completed phases after which it is valid) << 20 | barrier index; 0: not written by TMA. A
// thread whose wgmma reads such a chunk must itself have observed that phase (mbar_wait), as
// the ISA gives the copy's data only to the threads that observe the phase completion.
std::unique_ptr<std::atomic<uint64_t>[]> g_tma_owner;
inline emu::FiberLocal<std::vector<uint64_t>> t_seen_fl;  // per barrier index: completed phases this thread observed
#define t_seen (t_seen_fl.get())
inline void tma_check_observed(uint32_t phys) {
  if (!g_tma_owner) return;
  const uint64_t o = g_tma_owner[(phys - kEmuSmemBase) / 16].load(std::memory_order_relaxed);
  if (o == 0) return;
  const uint32_t idx = static_cast<uint32_t>(o & 0xFFFFF);
  const uint64_t ph = o >> 20;
  if (idx >= t_seen.size() || t_seen[idx] < ph) {
    std::printf("wgmma: thread %d reads data a TMA copy landed without having waited for its barrier's phase\n", t_lin);
    std::abort();
  }
}
inline uint16_t wg_bits(uint32_t a) {
  const uint32_t phys = a ^ (((a >> 7) & 7u) << 4);
  if (phys < kEmuSmemBase) { std::printf("wgmma operand below shared memory\n"); std::abort(); }
  const unsigned char* p = g_smem + (phys - kEmuSmemBase);
  check_smem(p, 2);
  tma_check_observed(phys);
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline float wg_load(uint32_t a) { return bf2f(wg_bits(a)); }
inline uint32_t wg_kmajor(const WgDesc& w, int mn, int k) { return w.start + (mn / 8) * w.sbo + (mn % 8) * 128 + 2 * k; }
inline uint32_t wg_mnmajor(const WgDesc& w, int k, int n) {
  return w.start + (n / 64) * w.lbo + 2 * (n % 64) + (k / 8) * w.sbo + (k % 8) * 128;
}
// FNV-1a over the bits of the shared operands of one instruction (A only in the SS form).
inline uint64_t wg_hash(const WgInFlight& f, bool at_issue = false) {
  uint64_t h = 1469598103934665603ull;
  const auto mix = [&](uint32_t addr) {
    if (at_issue) {
      const uint32_t phys = addr ^ (((addr >> 7) & 7u) << 4);
      if (phys >= kEmuSmemBase) check_smem(g_smem + (phys - kEmuSmemBase), 2);  // before the map's index
      if (phys >= kEmuSmemBase && g_unfenced[(phys - kEmuSmemBase) / 16].load(std::memory_order_relaxed) != 0) {
        std::printf("wgmma: an operand written by cp.async or st_shared_b32 without a fence.proxy.async since\n");
        std::abort();
      }
    }
    h = (h ^ wg_bits(addr)) * 1099511628211ull;
  };
  const WgDesc A = f.rs ? WgDesc{} : wg_decode(f.da), B = wg_decode(f.db);
  for (int k = 0; k < 16; ++k) {
    if (!f.rs) for (int m = 0; m < 64; ++m) mix(f.mn_a ? wg_mnmajor(A, k, m) : wg_kmajor(A, m, k));
    for (int n = 0; n < f.width; ++n) mix(f.mn_b ? wg_mnmajor(B, k, n) : wg_kmajor(B, n, k));
  }
  return h;
}
// An in-flight instruction's accumulators: NaN and 1e30 alternately, so that a read before the
// wait shows through fmaxf (which drops a NaN) as well as through a product with 0 (which
// drops a large finite value).
inline void wg_poison(const WgInFlight& f) {
  for (int i = 0; i < f.n; ++i) f.d[i] = i % 2 == 0 ? std::numeric_limits<float>::quiet_NaN() : 1e30f;
}
// Called by every thread of the warpgroup inside the issue (before its closing barrier): the
// result becomes the pending value, the registers read garbage until the retiring wait.
inline void wg_issue(WgInFlight&& f, const float* result) {
  if (!t_wg_fenced) {
    std::printf("wgmma: issued without a wgmma_fence since the last wait (or the kernel's start)\n");
    std::abort();
  }
  if (t_lin % 128 == 0) f.hash = wg_hash(f, true);
  f.result.assign(result, result + f.n);
  wg_poison(f);
  t_wg_open.push_back(std::move(f));
}
inline void wgmma_commit() {
  t_wg_groups.push_back(std::move(t_wg_open));
  t_wg_open.clear();
}
template <int N>
inline void wgmma_wait() {
  t_wg_fenced = false;
  if (static_cast<int>(t_wg_groups.size()) <= N) return;
  WarpGroup& g = g_wgs[t_lin / 128];
  // A lagging warpgroup (g_wg_lag, set by a driver for chosen cases): warpgroup 1's
  // instructions stay in flight until nothing else can run, while warpgroup 0 runs ahead to
  // wherever its barriers let it, so that a shared buffer it rewrites under warpgroup 1's wgmma
  // is caught by the rehash below deterministically, not only when the schedule happens to lag.
  if (g_wg_lag && t_lin / 128 == 1) emu::sched().defer();
  g.bar->arrive_and_wait();  // the warpgroup's threads are all at the wait: rehash their operands
  // A write to the accumulators in flight (e.g. a rescale before the wait: alpha·1e30 ≠ 1e30;
  // a constant over a NaN) changed the poison: checked before any retiring result is copied in.
  for (size_t i = 0; i + N < t_wg_groups.size(); ++i) {
    for (const auto& f : t_wg_groups[i]) {
      for (int e = 0; e < f.n; ++e) {
        if (e % 2 == 1 ? f.d[e] != 1e30f : !std::isnan(f.d[e])) {
          std::printf("wgmma: accumulators written between the issue and the wait\n");
          std::abort();
        }
      }
    }
  }
  while (static_cast<int>(t_wg_groups.size()) > N) {
    for (auto& f : t_wg_groups.front()) {
      if (t_lin % 128 == 0 && wg_hash(f) != f.hash) {
        std::printf("wgmma: a shared operand changed between the issue and the wait\n");
        std::abort();
      }
      if (f.rs && std::memcmp(f.a, f.a_issued, sizeof f.a_issued) != 0) {
        std::printf("wgmma: A registers changed between the issue and the wait\n");
        std::abort();
      }
      std::copy(f.result.begin(), f.result.end(), f.d);
    }
    t_wg_groups.erase(t_wg_groups.begin());
  }
  // Registers an instruction still in flight writes stay poisoned.
  for (const auto& f : t_wg_open) wg_poison(f);
  for (const auto& gs : t_wg_groups) for (const auto& f : gs) wg_poison(f);
  g.bar->arrive_and_wait();
}
// The SS form: A and B from shared memory, each K-major (imm-trans 0) or MN-major (1); A (m, k)
// MN-major sits at the MN-major address of (k, m).
template <bool kMnA, bool kMnB, int N = 64>
inline void wgmma_ss(float (&d)[N / 8][4], uint64_t da, uint64_t db, int acc) {
  WarpGroup& g = wg_enter(da, db);
  const WgDesc A = wg_decode(da), B = wg_decode(db);
  const int t = t_lin % 128, w = t / 32, gr = (t % 32) >> 2, tq = t & 3;
  const float* in = wg_acc_source(&d[0][0]);
  float out[N / 2];
  for (int j = 0; j < N / 8; ++j) {
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * w + gr + (e >= 2 ? 8 : 0), col = 8 * j + 2 * tq + (e & 1);
      float s = 0.f;
      for (int k = 0; k < 16; ++k) {
        const float a = wg_load(kMnA ? wg_mnmajor(A, k, row) : wg_kmajor(A, row, k));
        s += a * wg_load(kMnB ? wg_mnmajor(B, k, col) : wg_kmajor(B, col, k));
      }
      out[4 * j + e] = (acc != 0 ? in[4 * j + e] : 0.f) + s;
    }
  }
  wg_issue({&d[0][0], N / 2, {}, nullptr, {}, 0, da, db, kMnA, kMnB, false, N}, out);
  g.bar->arrive_and_wait();
}
inline void wgmma_ss_n64(float (&d)[8][4], uint64_t da, uint64_t db, int acc) { wgmma_ss<false, false>(d, da, db, acc); }
inline void wgmma_ss_n64_tt(float (&d)[8][4], uint64_t da, uint64_t db, int acc) { wgmma_ss<true, true>(d, da, db, acc); }
template <int N>
inline void wgmma_ss_k(float (&d)[N / 8][4], uint64_t da, uint64_t db, int acc) { wgmma_ss<false, false, N>(d, da, db, acc); }
template <int N>
inline void wgmma_rs_tb(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t db) {
  WarpGroup& g = g_wgs[t_lin / 128];
  for (int i = 0; i < 4; ++i) g.a[t_lin % 128][i] = a[i];
  wg_enter(0, db);
  const WgDesc B = wg_decode(db);
  // A (row, k): register hi + 2·khi of lane (row % 8)·4 + (k % 8) / 2 of warp row / 16, half k % 2.
  auto A = [&](int row, int k) {
    const int w = row / 16, r16 = row % 16, owner = w * 32 + (r16 % 8) * 4 + (k % 8) / 2;
    const uint32_t reg = g.a[owner][(r16 >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
    return bf2f(static_cast<uint16_t>(k % 2 ? reg >> 16 : reg & 0xffff));
  };
  const int t = t_lin % 128, w = t / 32, gr = (t % 32) >> 2, tq = t & 3;
  const float* in = wg_acc_source(&d[0][0]);
  float out[N / 2];
  for (int j = 0; j < N / 8; ++j) {
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * w + gr + (e >= 2 ? 8 : 0), col = 8 * j + 2 * tq + (e & 1);
      float s = 0.f;
      for (int k = 0; k < 16; ++k) s += A(row, k) * wg_load(wg_mnmajor(B, k, col));
      out[4 * j + e] = in[4 * j + e] + s;
    }
  }
  WgInFlight f{&d[0][0], N / 2, {}, &a[0], {a[0], a[1], a[2], a[3]}, 0, 0, db, false, true, true, N};
  wg_issue(std::move(f), out);
  g.bar->arrive_and_wait();
}

// ---- mbarriers and TMA (attn_fwd_ws: mbar_init, mbar_init_fence, mbar_arrive,
// mbar_arrive_expect_tx, mbar_wait, tma_load_3d, setmaxnreg_inc/dec; the host's
// cuTensorMapEncodeTiled through tensor_map_encoder). Semantics emulated, from the PTX ISA
// (mbarrier, cp.async.bulk.tensor) and the driver API's cuTensorMapEncodeTiled:
//   mbarrier   8-byte aligned in the block's shared memory, initialised (count) before any other
//              use (else abort); a phase completes when its pending arrivals reach 0 and its
//              transaction count is 0, then the next phase starts with `count` pending; an
//              arrival beyond the count (the phase waiting only for bytes) aborts;
//              mbar_wait(bar, parity) returns once (completed phases & 1) != parity, so a fresh
//              barrier passes parity 1 at once and blocks on 0 — the hardware's rule, lagging
//              two phases behind included (a wait that never completes: the launch reports
//              it and aborts). The arrival that completes a phase yields (the waiters run first).
//   TMA        tma_load_3d copies the box at (c0, c1, c2) of a map (dims, byte strides and box as
//              encoded; coordinates innermost first; elements outside the tensor are 0) densely
//              into shared memory at dst with the 128-byte swizzle applied to the shared-space
//              address bits (as wgmma reads them; dst must be 1024-byte aligned: abort), and
//              counts the whole box's bytes down on the barrier. The copy lands at the issue or
//              at the first mbar_wait on its barrier by any thread, by the issuing thread's
//              coin: a consumer that reads a slot without waiting for its barrier reads stale
//              data (or the 0xff garbage), a producer that refills a slot before its "empty"
//              barrier lands under a wgmma in flight (the operand hash aborts). Copies through
//              the async proxy: no fence.proxy.async needed before wgmma reads them. A wgmma
//              operand in a chunk a copy landed in aborts unless the reading thread has itself
//              waited for the phase that copy completed (the ISA gives the data to the threads
//              that observe the phase; g_tma_owner). A block that ends with a copy not landed,
//              or a barrier mid-phase, aborts.
//   encode     checks what the driver documents (rank 1–5, 16-byte aligned address, strides
//              multiples of 16, box dims 1–256, box inner bytes a multiple of 16 and, with the
//              128-byte swizzle, at most 128) and records the map; only bf16, no interleave,
//              element strides 1 and the 128-byte swizzle are emulated (else abort).
//   setmaxnreg no-op (register allocation is not modelled).
//   named barriers (bar.sync / bar.arrive id, threads): below.
enum CUresult { CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1 };
using cuuint32_t = uint32_t;
using cuuint64_t = uint64_t;
enum CUtensorMapDataType { CU_TENSOR_MAP_DATA_TYPE_UINT16 = 1, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9 };
enum CUtensorMapInterleave { CU_TENSOR_MAP_INTERLEAVE_NONE = 0 };
enum CUtensorMapSwizzle { CU_TENSOR_MAP_SWIZZLE_NONE = 0, CU_TENSOR_MAP_SWIZZLE_128B = 3 };
enum CUtensorMapL2promotion { CU_TENSOR_MAP_L2_PROMOTION_NONE = 0, CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3 };
enum CUtensorMapFloatOOBfill { CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0 };
struct CUtensorMap {
  const unsigned char* base = nullptr;
  uint32_t rank = 0;
  uint64_t dim[5] = {}, stride[5] = {};  // stride[i]: bytes between consecutive indices of dim i (stride[0] = 2)
  uint32_t box[5] = {};
};
inline CUresult emu_encode_tiled(CUtensorMap* m, CUtensorMapDataType type, cuuint32_t rank, void* base, const cuuint64_t* dims,
                                 const cuuint64_t* strides, const cuuint32_t* box, const cuuint32_t* step,
                                 CUtensorMapInterleave il, CUtensorMapSwizzle sw, CUtensorMapL2promotion, CUtensorMapFloatOOBfill) {
  if (type != CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 || il != CU_TENSOR_MAP_INTERLEAVE_NONE || sw != CU_TENSOR_MAP_SWIZZLE_128B) {
    std::printf("cuTensorMapEncodeTiled: only bf16, no interleave, the 128-byte swizzle are emulated\n");
    std::abort();
  }
  if (rank < 1 || rank > 5 || reinterpret_cast<uintptr_t>(base) % 16 != 0) return CUDA_ERROR_INVALID_VALUE;
  *m = CUtensorMap{};
  m->base = static_cast<const unsigned char*>(base);
  m->rank = rank;
  m->stride[0] = 2;
  for (uint32_t i = 0; i < rank; ++i) {
    if (dims[i] == 0 || dims[i] > (uint64_t{1} << 32) || box[i] == 0 || box[i] > 256 || step[i] != 1) return CUDA_ERROR_INVALID_VALUE;
    if (i > 0 && (strides[i - 1] % 16 != 0 || strides[i - 1] >= (uint64_t{1} << 40))) return CUDA_ERROR_INVALID_VALUE;
    m->dim[i] = dims[i];
    m->box[i] = box[i];
    if (i > 0) m->stride[i] = strides[i - 1];
  }
  if ((box[0] * 2) % 16 != 0 || box[0] * 2 > 128) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}
inline auto tensor_map_encoder() { return &emu_encode_tiled; }
[[noreturn]] inline void throw_error(const std::string& what) {
  std::printf("error: %s\n", what.c_str());
  std::abort();
}
struct EmuTma {
  uint32_t bar;
  uint32_t dst;
  CUtensorMap map;
  int c[3];
};
struct EmuMbar {
  int count = 0, pending = 0;
  int64_t tx = 0;
  uint64_t phase = 0;  // completed phases
  std::vector<EmuTma> copies;  // issued, not landed
  std::vector<int> waiters;    // fibers in mbar_wait on this barrier, woken when a phase completes
  // ThreadSanitizer: the arrivals and landed copies of phase k release into sync[k % 4], a wait
  // that observes phase k acquire from it (a ring: one object for all phases would let a slow
  // waiter acquire later phases' arrivals too, and hide races).
  char sync[4] = {};
};
// The mbarriers' bookkeeping (g_mbars and what it holds) runs under emu::TsanQuiet: the emulated
// threads' ordering through an mbarrier is the release / acquire above, not these accesses.
std::map<uint32_t, EmuMbar> g_mbars;  // by shared-space address; cleared per block
inline EmuMbar& mbar_at(uint32_t bar) {
  auto it = g_mbars.find(bar);
  if (it == g_mbars.end()) {
    std::printf("mbarrier at 0x%x used before mbar_init\n", bar);
    std::abort();
  }
  return it->second;
}
inline void mbar_try_complete(EmuMbar& b) {
  if (b.pending == 0 && b.tx == 0) {
    ++b.phase;
    b.pending = b.count;
    emu::sched().release(b.waiters);  // the released warps' order drawn again
  }
}
inline void mbar_init(uint32_t bar, uint32_t count) {
  if (bar % 8 != 0 || bar < kEmuSmemBase) { std::printf("mbarrier misaligned or outside shared memory\n"); std::abort(); }
  check_smem(g_smem + (bar - kEmuSmemBase), 8);
  emu::TsanQuiet quiet;
  if (!g_tma_owner) g_tma_owner.reset(new std::atomic<uint64_t>[g_smem_bytes / 16 + 1]());
  EmuMbar& b = g_mbars[bar];
  b = EmuMbar{};
  b.count = b.pending = static_cast<int>(count);
}
inline void mbar_init_fence() {}
// Returns whether this arrival completed the phase.
inline bool mbar_count_arrival(EmuMbar& b, uint32_t bar) {
  if (b.pending == 0) {
    std::printf("mbarrier at 0x%x: an arrival beyond its count (the phase waits for bytes only)\n", bar);
    std::abort();
  }
  emu::tsan_release(&b.sync[b.phase % 4]);
  --b.pending;
  const uint64_t phase = b.phase;
  mbar_try_complete(b);
  return b.phase != phase;
}
// The arrival that completes a phase then yields: the waiters it released (a producer refilling
// the slot) run first, as a fast producer could on the GPU, so that a slot released before the
// wgmma reading it has retired is refilled under it (the operand hash aborts).
// With a lagging producer (g_producer_lag, below) a producer thread's arrival that does not
// complete the phase waits until nothing else can run: a store it makes after its arrival
// instead of before (attn_bwd_ws's lse / Δ) then lands after the consumers, waiting for the
// tile, have read.
bool g_producer_lag = false;
inline void mbar_arrive(uint32_t bar) {
  bool completed = false;
  {
    emu::TsanQuiet quiet;
    completed = mbar_count_arrival(mbar_at(bar), bar);
  }
  if (completed || (g_producer_lag && t_lin / 128 == 2)) emu::sched().defer();
}
// mbarrier.expect_tx: bytes for the current phase, no arrival.
inline void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  emu::TsanQuiet quiet;
  mbar_at(bar).tx += bytes;
}
inline void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  emu::TsanQuiet quiet;
  EmuMbar& b = mbar_at(bar);
  b.tx += bytes;
  mbar_count_arrival(b, bar);
}
// Writes the box into shared memory and counts its bytes down on b (under emu::TsanQuiet: the
// copy is the async proxy's, not the landing thread's).
inline void tma_land(const EmuTma& c, EmuMbar& b) {
  emu::tsan_release(&b.sync[b.phase % 4]);
  const CUtensorMap& m = c.map;
  uint32_t off = 0;
  for (uint32_t i2 = 0; i2 < m.box[2]; ++i2) {
    for (uint32_t i1 = 0; i1 < m.box[1]; ++i1) {
      for (uint32_t i0 = 0; i0 < m.box[0]; ++i0, off += 2) {
        const int64_t x[3] = {int64_t{c.c[0]} + i0, int64_t{c.c[1]} + i1, int64_t{c.c[2]} + i2};
        bool in = true;
        uint64_t src = 0;
        for (int a = 0; a < 3; ++a) {
          in = in && x[a] >= 0 && static_cast<uint64_t>(x[a]) < m.dim[a];
          src += static_cast<uint64_t>(x[a]) * m.stride[a];
        }
        uint16_t v = 0;
        if (in) std::memcpy(&v, m.base + src, 2);
        const uint32_t a = c.dst + off, phys = a ^ (((a >> 7) & 7u) << 4);
        unsigned char* p = g_smem + (phys - kEmuSmemBase);
        check_smem(p, 2);
        std::memcpy(p, &v, 2);
        g_tma_owner[(phys - kEmuSmemBase) / 16].store(((b.phase + 1) << 20) | ((c.bar - kEmuSmemBase) / 8), std::memory_order_relaxed);
      }
    }
  }
  b.tx -= off;
  if (b.tx < 0) {
    std::printf("mbarrier: a TMA copy completed more bytes than announced by mbar_arrive_expect_tx\n");
    std::abort();
  }
  mbar_try_complete(b);
}
inline void tma_load_3d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, uint32_t bar) {
  if (map->rank != 3) { std::printf("tma_load_3d: a map of rank %u\n", map->rank); std::abort(); }
  if (dst < kEmuSmemBase || (dst % 1024) != 0) {
    std::printf("tma_load_3d: destination 0x%x not 1024-byte aligned (128-byte swizzle)\n", dst);
    std::abort();
  }
  check_smem(g_smem + (dst - kEmuSmemBase), size_t{map->box[0]} * map->box[1] * map->box[2] * 2);
  emu::TsanQuiet quiet;
  EmuMbar& b = mbar_at(bar);
  EmuTma c{bar, dst, *map, {c0, c1, c2}};
  if (land_now()) {
    tma_land(c, b);
  } else {
    b.copies.push_back(c);
    emu::sched().wake_all(b.waiters);  // a waiting thread lands it (its first look after the issue)
  }
}
// A lagging producer (g_producer_lag, set by a driver for chosen cases): each mbar_wait of a
// warpgroup-2 thread (the warp-specialized kernels' producer) first waits until nothing else can
// run, so that the consumers wait for every tile and read it as soon as its phase completes: a
// store the producer makes after its arrival (instead of before) is then read stale.
inline void mbar_wait(uint32_t bar, uint32_t parity) {
  if (g_producer_lag && t_lin / 128 == 2) emu::sched().defer();
  for (;;) {
    {
      emu::TsanQuiet quiet;
      EmuMbar& b = mbar_at(bar);
      for (const auto& c : b.copies) tma_land(c, b);
      b.copies.clear();
      if ((b.phase & 1) != parity) {
        emu::tsan_acquire(&b.sync[(b.phase - 1) % 4]);  // the phase observed: the last completed
        const uint32_t idx = (bar - kEmuSmemBase) / 8;
        if (t_seen.size() <= idx) t_seen.resize(idx + 1, 0);
        t_seen[idx] = std::max(t_seen[idx], b.phase);
        return;
      }
      b.waiters.push_back(emu::sched().self());
    }
    emu::sched().wait("mbar_wait (a phase that never completes)");
  }
}
// At a block's end (launch): every copy landed, every barrier between phases.
inline void mbar_check_block_end() {
  for (const auto& [bar, b] : g_mbars) {
    if (!b.copies.empty() || b.tx != 0 || b.pending != b.count) {
      std::printf("mbarrier at 0x%x: the block ended mid-phase (%d of %d arrivals pending, %lld bytes, %zu copies not landed)\n",
                  bar, b.pending, b.count, static_cast<long long>(b.tx), b.copies.size());
      std::abort();
    }
  }
  g_mbars.clear();
  g_tma_owner.reset();
}
// Named barriers (bar.sync / bar.arrive with an id and a thread count): a barrier completes when
// `threads` threads have arrived (bar.sync ones wait for it, bar.arrive ones do not); the counts of
// one barrier's arrivals must agree (else abort), and a block that ends with arrivals pending at a
// named barrier aborts (a turn passed that nobody took: unmatched, it would pair with the wrong
// turn on the GPU).
struct EmuNamedBar {
  int threads = 0, arrived = 0;
  uint64_t generation = 0;
  std::vector<int> waiters;  // fibers in named_bar_sync
  char sync[4] = {};         // ThreadSanitizer: generation g's arrivals release into sync[g % 4]
};
EmuNamedBar g_nbars[16];  // bookkeeping under emu::TsanQuiet
inline uint64_t named_bar_count_arrival(int id, int threads) {
  if (id <= 0 || id >= 16 || threads <= 0 || threads % 32 != 0) {
    std::printf("named barrier %d with %d threads: ids 1..15, a multiple of 32 threads\n", id, threads);
    std::abort();
  }
  EmuNamedBar& b = g_nbars[id];
  if (b.arrived > 0 && b.threads != threads) {
    std::printf("named barrier %d: arrivals with %d and %d threads\n", id, b.threads, threads);
    std::abort();
  }
  b.threads = threads;
  const uint64_t gen = b.generation;
  emu::tsan_release(&b.sync[gen % 4]);
  if (++b.arrived == threads) {
    b.arrived = 0;
    ++b.generation;
    emu::sched().release(b.waiters);  // the released warps' order drawn again
  }
  return gen;
}
// The arrival that completes a named barrier yields after it (as the mbarrier's completing
// arrival): the released threads run ahead, so that a buffer one side writes after the barrier
// while the other still reads it (attn_bwd_ws's dSᵀ with one buffer instead of two) is
// overwritten under the reader.
inline void named_bar_arrive(int id, int threads) {
  bool completed = false;
  {
    emu::TsanQuiet quiet;
    // The generation before the arrival, then the one after (in one expression the two
    // operands' order is unspecified: read first, the generation never differs, and the
    // completing arrival did not yield).
    const uint64_t gen = named_bar_count_arrival(id, threads);
    completed = g_nbars[id].generation != gen;
  }
  if (completed) emu::sched().defer();
}
inline void named_bar_sync(int id, int threads) {
  bool completed = false;
  uint64_t gen = 0;
  {
    emu::TsanQuiet quiet;
    gen = named_bar_count_arrival(id, threads);
    completed = g_nbars[id].generation != gen;
    if (!completed) g_nbars[id].waiters.push_back(emu::sched().self());
  }
  if (completed) {
    emu::tsan_acquire(&g_nbars[id].sync[gen % 4]);
    emu::sched().defer();
    return;
  }
  // A named barrier's generation only moves on when this one completes: woken means passed.
  emu::sched().wait("named barrier (arrivals short of its thread count)");
  emu::tsan_acquire(&g_nbars[id].sync[gen % 4]);
}
inline void named_bar_check_block_end() {
  for (int id = 1; id < 16; ++id) {
    if (g_nbars[id].arrived != 0) {
      std::printf("named barrier %d: the block ended with %d of %d threads arrived\n", id, g_nbars[id].arrived,
                  g_nbars[id].threads);
      std::abort();
    }
    emu::TsanQuiet quiet;
    g_nbars[id] = EmuNamedBar{};
  }
}
// Bulk reductions (cp.reduce.async.bulk .global.shared::cta .add.f32, bulk-group completion;
// attn_bwd_ws's dQ): at the issue the source (16-byte aligned, a multiple of 16 bytes, inside
// the block's shared memory) must hold no chunk written by the generic proxy and not yet fenced
// (st_shared_v4 / st_shared_b32 / cp.async writes before their writer's fence_proxy_async:
// abort), and its bytes are hashed; the add to global memory is done when a wait retires the
// group (bulk_commit closes a group; bulk_wait_read<N> / bulk_wait<N> retire all but the newest
// N), after checking that the source is unchanged since the issue (a region rewritten before the
// reduction has read it aborts), as relaxed atomic adds. A thread that ends with a reduction
// not retired aborts (its source would be freed under it).
struct EmuBulk {
  float* dst;
  uint32_t src, bytes;
  uint64_t hash;
};
inline emu::FiberLocal<std::vector<EmuBulk>> t_bulk_open_fl;
#define t_bulk_open (t_bulk_open_fl.get())
inline emu::FiberLocal<std::vector<std::vector<EmuBulk>>> t_bulk_groups_fl;
#define t_bulk_groups (t_bulk_groups_fl.get())
inline uint64_t bulk_hash(const unsigned char* p, uint32_t bytes) {
  uint64_t h = 1469598103934665603ull;
  for (uint32_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
inline void st_shared_v4(void* p, float a, float b, float c, float d) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) { std::printf("st_shared_v4: misaligned\n"); std::abort(); }
  check_smem(p, 16);
  const float v[4] = {a, b, c, d};
  std::memcpy(p, v, 16);
  mark_unfenced(p);
}
inline void bulk_reduce_add_f32(float* dst, uint32_t src, uint32_t bytes) {
  if (src % 16 != 0 || bytes == 0 || bytes % 16 != 0 || reinterpret_cast<uintptr_t>(dst) % 16 != 0 || src < kEmuSmemBase) {
    std::printf("bulk_reduce_add_f32: source, destination or size not 16-byte aligned\n");
    std::abort();
  }
  const unsigned char* p = g_smem + (src - kEmuSmemBase);
  check_smem(p, bytes);
  for (uint32_t c = (src - kEmuSmemBase) / 16; c < (src - kEmuSmemBase + bytes) / 16; ++c) {
    if (const int w = g_unfenced[c].load(std::memory_order_relaxed); w != 0) {
      std::printf("bulk_reduce_add_f32 (thread %d): shared chunk %u written by thread %d without its proxy fence\n", t_lin,
                  c, w - 1);
      std::abort();
    }
  }
  t_bulk_open.push_back({dst, src, bytes, bulk_hash(p, bytes)});
}
inline void bulk_commit() {
  t_bulk_groups.push_back(std::move(t_bulk_open));
  t_bulk_open.clear();
}
inline void bulk_retire(const EmuBulk& b) {
  const unsigned char* p = g_smem + (b.src - kEmuSmemBase);
  if (bulk_hash(p, b.bytes) != b.hash) {
    std::printf("bulk_reduce_add_f32 (thread %d): its source was rewritten before the reduction read it\n", t_lin);
    std::abort();
  }
  for (uint32_t i = 0; i < b.bytes / 4; ++i) {
    float v;
    std::memcpy(&v, p + 4 * i, 4);
    atomicAdd(b.dst + i, v);
  }
}
template <int N> inline void bulk_wait_read() {
  while (static_cast<int>(t_bulk_groups.size()) > N) {
    for (const auto& b : t_bulk_groups.front()) bulk_retire(b);
    t_bulk_groups.erase(t_bulk_groups.begin());
  }
}
template <int N> inline void bulk_wait() { bulk_wait_read<N>(); }
template <int N> inline void setmaxnreg_dec() {}
template <int N> inline void setmaxnreg_inc() {}

// For the drivers' reports and references (the drivers link no engine library, so not
// dtype_name): a storage type's name and a stored value in double (bf16 through float).
template <class T>
const char* emu_type_name() {
  if constexpr (std::is_same_v<T, float>) return "f32";
  if constexpr (std::is_same_v<T, double>) return "f64";
  return "bf16";
}
template <class T>
double emu_d(T v) {
  return static_cast<double>(static_cast<somnus::compute_t<T>>(v));
}

// Whether two host buffers hold the same bytes (the drivers' "bitwise" checks).
template <class T>
bool emu_same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}
// Whether x still holds the quiet NaN an output buffer was filled with (T(NaN): never written).
template <class T>
bool emu_is_poison(T x) {
  const T p = static_cast<T>(std::nanf(""));
  return std::memcmp(&x, &p, sizeof(T)) == 0;
}

// A driver's main over its cases in f32, bf16 and f64 (cases(T{}, first seed): seeds 100…, 200…,
// 300…): prints the number of failing cases and returns it (the exit status).
template <class F>
int emu_run_dtypes(F&& cases) {
  const int f = cases(float{}, 100u) + cases(somnus::bf16{}, 200u) + cases(double{}, 300u);
  std::printf("%d failures\n", f);
  return f;
}

// CUDA_EMU_ONLY="3,9": a driver runs only the cases with those seeds (its output prints none;
// see the driver's case list), for the slow thread-sanitizer mode; unset: every case.
inline bool emu_selected(uint32_t seed) {
  const char* only = std::getenv("CUDA_EMU_ONLY");
  if (only == nullptr || *only == '\0') return true;
  const std::string list = std::string(",") + only + ",";
  return list.find("," + std::to_string(seed) + ",") != std::string::npos;
}

// A kernel's static __shared__ arrays (extract.py turns them into function statics and calls
// emu_shared on each): recorded here so that launch fills them with 0xff garbage before every
// block after the first, as the GPU gives a block uninitialised shared memory.
std::vector<std::pair<void*, size_t>> g_statics;
inline void emu_shared(void* p, size_t bytes) {
  emu::TsanQuiet quiet;
  for (const auto& e : g_statics) {
    if (e.first == p) return;
  }
  g_statics.emplace_back(p, bytes);
}


// Runs body() as a grid (gx, gy, gz) of blocks of `threads` threads with `smem` bytes of
// dynamic shared memory (filled with 0xff garbage at the start of each block), block after
// block. A kernel's static __shared__ arrays become function statics (extract.py), which is
// right as long as blocks run one at a time.
// `threads` may be a 2-D block (launch2d): threadIdx.x = t % bx, threadIdx.y = t / bx.
// Thread t of every block runs on fiber t (emu_fiber.h). Between two blocks all threads meet twice at
// a barrier of launch's own (not the kernel's: a kernel whose threads reach __syncthreads
// unequally still hangs there, rather than pairing with these waits). Before the first, thread
// 0 checks the block that ended and sets up the next (blockIdx, shared memory and statics
// poisoned, fresh warpgroup and fence state); after it, every thread resets its own per-thread
// state and runs the block — as a fresh thread of the first version would have.
template <class F>
void launch(unsigned gx, unsigned gy, int threads, int smem, F&& body, unsigned gz = 1, int bx = 0) {
  if (bx == 0) bx = threads;
  // Exactly `smem` bytes, 16-byte aligned: ASan reports a shared access past the end.
  const auto free_aligned = [](unsigned char* p) { ::operator delete[](p, std::align_val_t(16)); };
  std::unique_ptr<unsigned char[], decltype(free_aligned)> smv(
      static_cast<unsigned char*>(::operator new[](std::max(smem, 1), std::align_val_t(16))), free_aligned);
  unsigned char* smd = smv.get();
  if (threads > 32 * kMaxWarps || threads % bx != 0) { std::printf("launch: bad block\n"); std::abort(); }
  blockDim.x = bx;
  blockDim.y = threads / bx;
  blockDim.z = 1;
  gridDim.x = gx;
  gridDim.y = gy;
  gridDim.z = gz;
  g_smem_bytes = smem;
  g_smem = smd;
  std::unique_ptr<std::atomic<int>[]> unfenced(new std::atomic<int>[smem / 16 + 1]());
  g_unfenced = unfenced.get();
  emu::Barrier bb(threads, "__syncthreads", emu::Barrier::kBlock),
      between(threads, "launch's wait between blocks (a thread in a wait of its own)", emu::Barrier::kBlock);
  g_block_bar = &bb;
  const int nw = (threads + 31) / 32;
  Warp warps[kMaxWarps];
  std::vector<std::unique_ptr<emu::Barrier>> wb;
  for (int w = 0; w < nw; ++w) {
    wb.emplace_back(new emu::Barrier(std::min(32, threads - 32 * w), "a warp collective (shfl, mma, ldmatrix, __syncwarp)",
                                     emu::Barrier::kWarp));
    warps[w].bar = wb.back().get();
  }
  g_warps = warps;
  // Warpgroups (wgmma): 128-thread groups when the block has whole ones.
  std::vector<WarpGroup> wgs(threads % 128 == 0 ? threads / 128 : 0);
  std::vector<std::unique_ptr<emu::Barrier>> wgb;
  for (size_t i = 0; i < wgs.size(); ++i) {
    wgb.emplace_back(new emu::Barrier(128, "a warpgroup collective (wgmma)", emu::Barrier::kWarpGroup));
  }
  g_wgs = wgs.data();
  const uint64_t blocks = uint64_t{gx} * gy * gz;
  // Thread 0, between blocks: the set-up of block k (a fresh block's state).
  const auto set_up = [&](uint64_t k) {
    blockIdx.x = static_cast<unsigned>(k % gx);
    blockIdx.y = static_cast<unsigned>(k / gx % gy);
    blockIdx.z = static_cast<unsigned>(k / gx / gy);
    std::memset(smd, 0xff, smem);  // garbage: bf16 0xffff is NaN
    for (const auto& e : g_statics) std::memset(e.first, 0xff, e.second);
    for (int c = 0; c < smem / 16 + 1; ++c) unfenced[c].store(0, std::memory_order_relaxed);
    for (size_t i = 0; i < wgs.size(); ++i) {
      wgs[i] = WarpGroup{};
      wgs[i].bar = wgb[i].get();
    }
  };
  const std::function<void(int)> thread_body = [&](int t) {
    threadIdx.x = t % bx;
    threadIdx.y = t / bx;
    threadIdx.z = 0;
    t_lin = t;
    for (uint64_t k = 0; k < blocks; ++k) {
      if (t == 0) {
        if (k > 0) {
          mbar_check_block_end();
          named_bar_check_block_end();
        }
        set_up(k);
      }
      between.arrive_and_wait();  // block k set up (blockIdx among it)
      t_coin = 0x9e3779b97f4a7c15ull * (t + 1) + (uint64_t(blockIdx.x) << 20) + (uint64_t(blockIdx.y) << 40) + blockIdx.z;
      t_open.clear();
      t_groups.clear();
      t_wg_open.clear();
      t_wg_groups.clear();
      t_wg_fenced = false;
      t_unfenced.clear();
      t_seen.clear();
      t_bulk_open.clear();
      t_bulk_groups.clear();
      body();
      if (!t_wg_open.empty() || !t_wg_groups.empty()) {
        std::printf("wgmma: a thread ended with an instruction not retired by a wait\n");
        std::abort();
      }
      if (!t_bulk_open.empty() || !t_bulk_groups.empty()) {
        std::printf("bulk_reduce_add_f32: thread %d ended with a reduction not retired by a wait\n", t_lin);
        std::abort();
      }
      between.arrive_and_wait();  // block k done by every thread
    }
  };
  emu::sched().run(threads, thread_body);
  if (blocks > 0) {
    mbar_check_block_end();
    named_bar_check_block_end();
  }
}
template <class F>
void launch2d(unsigned gx, unsigned gy, int bx, int by, int smem, F&& body) {
  launch(gx, gy, bx * by, smem, std::forward<F>(body), 1, bx);
}

// cub::BlockReduce<T, kBlockThreads> (kernels/cuda/losses.cu): every thread stores its value,
// a barrier, and thread 0 folds them in thread order. As in cub, only thread 0's result is
// defined (the others get a poison here, so a kernel that reads it elsewhere fails), and there
// is no barrier after the fold: TempStorage reused without one is the kernel's race, as on the GPU.
namespace cub {
// The block's thread count, which must be the primitive's template argument (else abort).
inline int block_threads(const char* what, int expected) {
  const int n = static_cast<int>(blockDim.x * blockDim.y);
  if (n != expected) {
    std::printf("%s<%d>: launched with %d threads\n", what, expected, n);
    std::abort();
  }
  return n;
}
// What threads other than the one holding a reduction's result get: for floating T, NaN in
// odd threads and 1e30 in even ones (fmaxf / fminf drop a NaN, not a 1e30); else T{}.
template <class T>
T reduce_poison() {
  if constexpr (std::is_floating_point_v<T>) {
    return t_lin % 2 != 0 ? std::numeric_limits<T>::quiet_NaN() : T(1e30);
  } else {
    return T{};
  }
}
template <class T, int kBlockThreads>
class BlockReduce {
 public:
  struct TempStorage {
    T v[kBlockThreads];
  };
  explicit BlockReduce(TempStorage& s) : s_(s) {}
  template <class Op>
  T Reduce(T x, Op op) {
    const int n = block_threads("cub::BlockReduce", kBlockThreads);
    s_.v[t_lin] = x;
    __syncthreads();
    if (t_lin != 0) return reduce_poison<T>();
    T r = s_.v[0];
    for (int i = 1; i < n; ++i) r = op(r, s_.v[i]);
    return r;
  }
  T Sum(T x) {
    return Reduce(x, [](T a, T b) { return a + b; });
  }

 private:
  TempStorage& s_;
};
// cub::WarpReduce<T> (kernels/cuda/reduce.cu): each lane stores its value, a warp barrier,
// lane 0 folds them in lane order; only lane 0's result is defined (the others get
// reduce_poison). Whole warps only.
template <class T>
class WarpReduce {
 public:
  struct TempStorage {
    T v[32];
  };
  explicit WarpReduce(TempStorage& s) : s_(s) {}
  template <class Op>
  T Reduce(T x, Op op) {
    const int lane = t_lin % 32;
    s_.v[lane] = x;
    __syncwarp();
    if (lane != 0) return reduce_poison<T>();
    T r = s_.v[0];
    for (int i = 1; i < 32; ++i) r = op(r, s_.v[i]);
    return r;
  }

 private:
  TempStorage& s_;
};

// cub::BlockScan<T, kBlockThreads> (kernels/cuda/sampling.cu): every thread stores its value, a
// barrier, thread 0 forms the prefix sums in thread order, a barrier, every thread reads its
// own; ExclusiveSum gives thread 0 zero. As with cub, TempStorage needs a barrier before reuse.
template <class T, int kBlockThreads>
class BlockScan {
 public:
  struct TempStorage {
    T v[kBlockThreads], excl[kBlockThreads], total;
  };
  explicit BlockScan(TempStorage& s) : s_(s) {}
  void ExclusiveSum(T x, T& out, T& aggregate) {
    scan(x);
    out = s_.excl[t_lin];
    aggregate = s_.total;
  }
  void ExclusiveSum(T x, T& out) {
    T aggregate;
    ExclusiveSum(x, out, aggregate);
  }
  void InclusiveSum(T x, T& out, T& aggregate) {
    scan(x);
    out = s_.excl[t_lin] + x;
    aggregate = s_.total;
  }

 private:
  void scan(T x) {
    const int n = block_threads("cub::BlockScan", kBlockThreads);
    s_.v[t_lin] = x;
    __syncthreads();
    if (t_lin == 0) {
      T run = T(0);
      for (int i = 0; i < n; ++i) {
        s_.excl[i] = run;
        run = run + s_.v[i];
      }
      s_.total = run;
    }
    __syncthreads();
  }
  TempStorage& s_;
};
}  // namespace cub
