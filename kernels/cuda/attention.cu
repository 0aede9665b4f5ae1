// Fused attention on CUDA, one file per op family as the CPU twin (kernels/cpu/attention.cpp),
// which runs the same algorithms and whose header gives the math. Sections: helpers (problem
// dimensions, mma.sync / ldmatrix / cp.async wrappers, the SIMT row kernel); the forward and
// the SIMT backward; the tensor-core backward; split-K decode; the public entry points.
//
// Shapes: q, o (B, Hq, T, D); k, v (B, Hkv, S, D), query head h reads kv head h / (Hq/Hkv);
// lse (B, Hq, T) f32. D ∈ {64, 128} (template parameter). Causal: query i sees keys
// j <= q_offset + i. All tensors contiguous (ops.cpp makes them so), except K and V of the
// decode: a KV cache's (B, Hkv, S, D) prefix view, read through its batch and head strides.
//
// Kernels written without a GPU stayed opt-in until a GPU run had checked and measured them;
// since the H100 run of 2026-11-27 the default (SOMNUS_ATTN_FWD / _BWD unset) is the fastest
// version that runs: wgmma_persist / wgmma_ws on sm_90a, else v3 / v4, else mma. Every kernel
// here also runs on the CPU under the
// host emulation of tests/kernels/cuda_emu (mma.sync, ldmatrix, cp.async, shuffles, wgmma with
// its descriptors and swizzle, mbarriers and TMA), which checks layouts, barriers, masks and tails against f64 —
// not speed.
//
// Kernels:
//   attn_fwd_mma    bf16 forward on tensor cores (mma.sync.m16n8k16 bf16 -> f32). A block is
//                   4 warps = 64 query rows (16 per warp) of one (b, h); key tiles of 64 are
//                   staged in shared memory (rows padded by 8 elements against bank conflicts).
//                   Per tile: S = Q Kᵀ in registers (16 × 64 per warp), masked, online softmax
//                   (row max/sum over the quad of lanes that share a row), O rescaled, P
//                   rounded to bf16 and fed straight from the S accumulators as the A operand
//                   of O += P V (the FA2 register trick: the C layout of two n-tiles is the A
//                   layout of one k-step). Causal blocks stop at the last key their last row
//                   sees. Versions (SOMNUS_ATTN_FWD; v1, v2 and mma give bitwise the same result):
//                     v1   fragments from plain 32/16-bit shared loads, tiles loaded
//                          synchronously (3 · 64 · (D + 8) · 2 bytes of shared memory);
//                     v2   Q fragments kept in registers, K and V fragments by ldmatrix
//                          (.trans for V);
//                     mma  v2 + K/V tiles double-buffered with cp.async (5 tiles of
//                          shared memory, 87 KiB at D = 128; the default until 2026-11-27);
//                     v3   (attn_fwd_v3, its own section; the default off sm_90a) 8 warps
//                          = 128 rows per block, Q by ldmatrix, base-2 softmax with the scale
//                          folded in, masks only where needed; not bitwise the others.
//                     wgmma (attn_fwd_wg, its own section) v3 on
//                          Hopper's warpgroup MMA (sm_90a): Q Kᵀ and P V by wgmma.mma_async
//                          from 128-byte-swizzled shared tiles, P from registers;
//                     wgmma_pipe 128-key tiles, one block per SM, each tile's
//                          P V on the tensor cores while the next tile's softmax runs;
//                     wgmma_ws (attn_fwd_ws) wgmma_pipe's two consumer
//                          warpgroups fed by a third, producer warpgroup that loads K and V
//                          with TMA into mbarrier-guarded rings (FA3's warp specialization);
//                     wgmma_wspp wgmma_ws with the consumers taking turns at
//                          the tensor cores (FA3's ping-pong);
//                     wgmma_persist wgmma_wspp on persistent blocks (one per
//                          SM, longest causal tiles first; the next item's loads overlap the
//                          last one's end); the default on sm_90a.
//   attn_rows_simt  (helpers section) SIMT forward, one warp per query row; f32 inputs.
//   Backward: attn_bwd_delta (Δ = rowsum(dO ∘ O), a warp per row), then for bf16 the
//   tensor-core kernels (tensor-core backward section), or (f32, or SOMNUS_ATTN_BWD=simt) the SIMT
//   kernels: attn_bwd_dkdv (a warp per key, 8 keys per block, all warps walk the same query
//   rows so that each row's dQ contribution is first summed over the block's 8 keys in shared
//   memory and then added with D f32 atomics); the deterministic mode instead runs
//   attn_bwd_dq (a warp per query row, keys in a fixed order; no atomics anywhere).
//
// FLOPs: forward 4·B·Hq·T·S·D (≈ half when causal); backward 2.5× that. H100 (2026-11-26,
// B·T = 16k, H·D = 2048, T = 4096, causal, D = 64 / 128): v1 107 / 88 TFLOP/s, v2 125 / 73,
// mma 184 / 188 (0.55–0.88× PyTorch SDPA's flash forward over all shapes); 2026-11-27: v3 243
// (D 128), wgmma 334, wgmma_ws 420, wgmma_persist 398 (causal) / 468 (full) — 1.36–1.37× SDPA;
// backward wgmma_ws 391 (1.63× SDPA), fwd+bwd 382; all figures in bench/RESULTS.md.
#include <cuda.h>  // CUtensorMap and its enums (types only: the encoder is fetched through the runtime)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"
#include "kernels/decode_splits.h"

namespace somnus::kernels::cuda {

namespace {

// ---------------------------------------------------------------- helpers

struct AttnDims {
  int B, Hq, Hkv, T, S, g;
  int causal;
  int q_offset;
  float scale;
  // Keys [0, visible(i)) are visible from query row i.
  __device__ __forceinline__ int visible(int i) const {
    if (!causal) return S;
    const int v = q_offset + i + 1;
    return v < 0 ? 0 : (v < S ? v : S);
  }
};

inline AttnDims dims_of(const Tensor& q, const Tensor& k, bool causal, double scale, int64_t q_offset) {
  const int64_t lim = int64_t(1) << 30;
  // (b, h) pairs go on grid.y, which holds at most 65535 blocks.
  if (q.size(2) >= lim || k.size(2) >= lim || q_offset >= lim || q.size(0) * q.size(1) > 65535) {
    throw_error("attention (CUDA): sizes beyond the kernels' limits (T, S < 2^30, B·Hq <= 65535): q " +
                shape_str(q.shape()) + " k " +
                shape_str(k.shape()));
  }
  AttnDims d;
  d.B = static_cast<int>(q.size(0));
  d.Hq = static_cast<int>(q.size(1));
  d.Hkv = static_cast<int>(k.size(1));
  d.T = static_cast<int>(q.size(2));
  d.S = static_cast<int>(k.size(2));
  d.g = d.Hq / d.Hkv;
  d.causal = causal ? 1 : 0;
  d.q_offset = static_cast<int>(q_offset);
  d.scale = static_cast<float>(scale);
  return d;
}

// Element strides of K and V (the same for both) over batch and kv head; a head's S rows are D
// apart. Only the SIMT row kernel and the GQA decode kernel take them (so that a decode step
// reads a KV cache's prefix in place); the other kernels take contiguous K, V. A separate
// kernel argument, not part of AttnDims: growing AttnDims changed the register allocation of
// the GPU-measured backward kernels (ptxas: a spill where there was none).
// The stride of a size-1 dimension is never used (and a view may carry any value there, as
// is_contiguous() ignores it), so it reads as 0.
struct KvStrides {
  int64_t sb, sh;
};
inline KvStrides kv_strides(const Tensor& k) {
  return {k.size(0) == 1 ? 0 : k.stride(0), k.size(1) == 1 ? 0 : k.stride(1)};
}
// Rows of D contiguous elements (a single row: any stride), non-negative batch / head strides.
inline bool kv_rows_ok(const Tensor& t) {
  const KvStrides s = kv_strides(t);
  return t.stride(3) == 1 && (t.size(2) == 1 || t.stride(2) == t.size(3)) && s.sb >= 0 && s.sh >= 0;
}

template <class T>
__device__ __forceinline__ float to_f(T x) {
  return static_cast<float>(x);
}

// The value a bf16 kernel feeds to an mma (the CPU twin's mma_round).
template <class T>
__device__ __forceinline__ float mma_round(float x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return __bfloat162float(__float2bfloat16_rn(x));
  } else {
    return x;
  }
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t pack_u16(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// 2^x by the SFU (ex2.approx.ftz: ~2 ulp; -inf gives 0): the v3 kernels' softmax runs in base 2.
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
constexpr float kLog2e = 1.4426950408889634f;

// D = A·B + C, m16n8k16, bf16 inputs, f32 accumulators (in place).
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// P's A fragment for k-step kk of P V from the S accumulators x (C fragments of n-tiles 2kk and
// 2kk + 1, rounded to bf16): the FA2 register trick — the C layout of two n-tiles is the A
// layout of one k-step.
template <int NT>
__device__ __forceinline__ void p_frag(const float (&x)[NT][4], int kk, uint32_t& a0, uint32_t& a1, uint32_t& a2,
                                       uint32_t& a3) {
  a0 = pack_bf16(x[2 * kk][0], x[2 * kk][1]);
  a1 = pack_bf16(x[2 * kk][2], x[2 * kk][3]);
  a2 = pack_bf16(x[2 * kk + 1][0], x[2 * kk + 1][1]);
  a3 = pack_bf16(x[2 * kk + 1][2], x[2 * kk + 1][3]);
}

// O's rows gr (c0, c1) and gr + 8 (c2, c3) scaled by alpha[0], alpha[1] (the online softmax's
// rescale when a row's max grows).
template <int D>
__device__ __forceinline__ void rescale_rows(float (&oacc)[D / 8][4], const float (&alpha)[2]) {
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    oacc[n][0] *= alpha[0];
    oacc[n][1] *= alpha[0];
    oacc[n][2] *= alpha[1];
    oacc[n][3] *= alpha[1];
  }
}

// Bytes per row of a 64-column panel of a 128-byte-swizzled tile (wgmma operands).
constexpr uint32_t kSwRow = 128;

// The 64-bit shared-memory matrix descriptor of wgmma: start address, leading and stride byte
// offsets (each in 16-byte units, 14 bits), swizzle mode 1 (128-byte) in bits 62–63, base
// offset 0 (every panel starts 1024-byte aligned; a k-step's 32-byte advance inside the row
// is part of the start address, the swizzle being applied to the final address bits).
__device__ __forceinline__ uint64_t wg_desc(uint32_t start, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((start >> 4) & 0x3FFFu) | (static_cast<uint64_t>((lbo >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFFu) << 32) | (uint64_t{1} << 62);
}

// ---------------------------------------------------------------- device limits, alignment

// The most dynamic shared memory a block may opt into on the current device (227 KB on
// sm_90, 163 KB on sm_80, 99 KB on sm_86/sm_89): a kernel version that needs more is not
// launched there (the tensor-core backward falls back to its version without the prefetch
// buffers).
inline int max_dynamic_smem_bytes() {
  int dev = 0, bytes = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes;
}

// The persistent forward's grid: the current device's SM count, or SOMNUS_ATTN_PERSIST_BLOCKS
// when set (> 0: the tests use a few blocks, so that each runs many items at the tests' sizes).
inline int persistent_blocks() {
  const char* e = std::getenv("SOMNUS_ATTN_PERSIST_BLOCKS");
  const int asked = e != nullptr ? std::atoi(e) : 0;
  if (asked > 0) return asked;
  int dev = 0, n = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

// The tensor-core kernels read q, k, v, dO with 16-byte vector loads. ops.cpp passes
// contiguous tensors, but a contiguous view may start at an offset that is not a multiple of
// 16 bytes: such an input is copied (a fresh allocation is aligned); an output the caller
// allocated must be aligned already.
inline Tensor aligned16(const Tensor& t) { return aligned_to(t.data_ptr(), 16) ? t : t.clone(); }
inline void check_aligned16(const Tensor& t, const char* op, const char* name) {
  if (!aligned_to(t.data_ptr(), 16)) {
    throw_error(std::string(op) + " (CUDA): output " + name + " must start on a 16-byte boundary");
  }
}

// ---------------------------------------------------------------- tiles and fragments
// (used by the forward and the tensor-core backward)

// rows × D bf16 from global (row-major) into shared memory with row stride D + 8, zero rows
// at and past `valid` (masked products stay finite: a zero V row times p = 0 stays 0, garbage could be NaN).
template <int D>
__device__ __forceinline__ void load_tile_bf16(uint16_t* sm, const uint16_t* g, int rows, int valid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < rows * kChunks; c += blockDim.x) {
    const int r = c / kChunks, x = (c % kChunks) * 8;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < valid) val = *reinterpret_cast<const uint4*>(g + static_cast<int64_t>(r) * D + x);
    *reinterpret_cast<uint4*>(sm + r * (D + 8) + x) = val;
  }
}

// cp.async of 16 bytes global → shared, zero-filled when !valid (src-size 0: nothing is read,
// but `g` must still be a mapped address: callers pass the tile's base for invalid rows).
__device__ __forceinline__ void cp_async16(uint16_t* sm, const uint16_t* g, bool valid) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(sm));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(g), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// load_tile_bf16 through cp.async (asynchronous: the caller commits and waits).
template <int D>
__device__ __forceinline__ void issue_tile_bf16(uint16_t* sm, const uint16_t* g, int rows, int valid) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < rows * kChunks; c += blockDim.x) {
    const int r = c / kChunks, x = (c % kChunks) * 8;
    const bool ok = r < valid;
    cp_async16(sm + r * (D + 8) + x, ok ? g + static_cast<int64_t>(r) * D + x : g, ok);
  }
}

// rows × D bf16 from global (row-major) into the swizzled panels at `sm` (1024-byte aligned in
// the shared space): column chunk x (8 bf16) of row r to panel x / 8 at sm + (x / 8)·rows·64
// elements, row r·64, chunk (x % 8) ^ (r % 8). Rows at and past `valid` are zero-filled.
template <int D>
__device__ __forceinline__ void issue_tile_sw128(uint16_t* sm, const uint16_t* g, int rows, int valid) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < rows * kChunks; c += blockDim.x) {
    const int r = c / kChunks, x = c % kChunks;
    const bool ok = r < valid;
    cp_async16(sm + (x >> 3) * rows * 64 + r * 64 + (((x & 7) ^ (r & 7)) << 3), ok ? g + static_cast<int64_t>(r) * D + x * 8 : g,
               ok);
  }
}

// ldmatrix.x4 (kTrans: .trans) from shared memory: lane l gives the address of row l % 8 of
// 8×8 matrix l / 8 (16-byte aligned); register i receives this thread's part of matrix i:
// without .trans (row lane/4, cols 2·(lane%4) + {0, 1}), with .trans (rows 2·(lane%4) + {0, 1},
// col lane/4), the lower index in the low half.
// (ldsm_x4_at: the same from a 32-bit shared-space address.)
template <bool kTrans>
__device__ __forceinline__ void ldsm_x4_at(uint32_t (&r)[4], uint32_t a) {
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
  }
}
template <bool kTrans>
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const uint16_t* p) {
  ldsm_x4_at<kTrans>(r, static_cast<uint32_t>(__cvta_generic_to_shared(p)));
}

// ---------------------------------------------------------------- Hopper wgmma (sm_90a)
// Warpgroup MMA (wgmma.mma_async, PTX ISA 8.0), used by the Hopper forward and backward
// (attn_fwd_wg, attn_bwd_dkdv_wg). A warpgroup is 4 consecutive warps (128 threads); one instruction computes a
// 64 × N tile with K = 16, warp w of the group owning rows 16w..16w + 15 in mma.sync's m16n8
// accumulator layout per 8 columns: d[j][e] is (row 16w + lane/4 + 8·(e ≥ 2), column
// 8j + 2·(lane % 4) + (e & 1)), so the v3 softmax and p_frag apply unchanged. A taken from
// registers (the RS form) has mma.sync's A layout, per warp for its 16 rows.
// The shared-memory operands are given by matrix descriptors (wg_desc, with the tile layout
// they describe). These wrappers are built only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL: CMake's
// "90a"); for other targets they trap, and attention_fwd / attention_bwd never select the
// kernels there (wgmma_built asks the device code). Ordering rules followed by the kernel: shared memory
// written by cp.async (the generic proxy) is made visible to wgmma (the async proxy) by
// fence_proxy_async before the barrier; wgmma_fence before a batch whose registers
// (accumulators, A fragments) ordinary instructions wrote; commit + wait before the
// accumulators are read, and before the operands' shared memory is overwritten.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SOMNUS_WGMMA(...) asm volatile(__VA_ARGS__)
#else
#define SOMNUS_WGMMA(...) __trap()
#endif
__device__ __forceinline__ void wgmma_fence() { SOMNUS_WGMMA("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { SOMNUS_WGMMA("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  SOMNUS_WGMMA("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { SOMNUS_WGMMA("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// A plain 32-bit store to shared memory that a wgmma reads later (the backward's dSᵀ): the
// writing thread must execute fence_proxy_async before the barrier that precedes the read. A
// helper of its own so that the host emulation sees these stores (it checks that fence).
__device__ __forceinline__ void st_shared_b32(void* p, uint32_t v) { *static_cast<uint32_t*>(p) = v; }
// Keeps the compiler from moving reads or writes of an accumulator across the asynchronous
// region (between the issue and the wait it is the tensor core's).
template <int N>
__device__ __forceinline__ void wg_fence_operands(float (&d)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
  }
}
template <int N>
__device__ __forceinline__ void wg_fence_operands(uint32_t (&a)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[j][e])::"memory");
  }
}
#define SOMNUS_WG_ACC8(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define SOMNUS_WG_ACC64(d)                                                                                   \
  SOMNUS_WG_ACC8(d, 0), SOMNUS_WG_ACC8(d, 1), SOMNUS_WG_ACC8(d, 2), SOMNUS_WG_ACC8(d, 3), SOMNUS_WG_ACC8(d, 4), \
      SOMNUS_WG_ACC8(d, 5), SOMNUS_WG_ACC8(d, 6), SOMNUS_WG_ACC8(d, 7)
#define SOMNUS_WG_ACC128(d)                                                                                       \
  SOMNUS_WG_ACC64(d), SOMNUS_WG_ACC8(d, 8), SOMNUS_WG_ACC8(d, 9), SOMNUS_WG_ACC8(d, 10), SOMNUS_WG_ACC8(d, 11),     \
      SOMNUS_WG_ACC8(d, 12), SOMNUS_WG_ACC8(d, 13), SOMNUS_WG_ACC8(d, 14), SOMNUS_WG_ACC8(d, 15)
// d (64 × 64 per warpgroup) = A B, + d when acc != 0; A (64 × 16) and B (16 × 64) in shared
// memory, both K-major (imm-trans-a = imm-trans-b = 0).
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[8][4], uint64_t da, uint64_t db, int acc) {
  SOMNUS_WGMMA(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : SOMNUS_WG_ACC64(d)
      : "l"(da), "l"(db), "r"(acc));
}
// d (64 × 64 per warpgroup) = A B, + d when acc != 0; A (64 × 16) and B (16 × 64) in shared
// memory, both MN-major (imm-trans-a = imm-trans-b = 1): the backward's dQ = dS K, with dS
// stored key-major and K read transposed.
__device__ __forceinline__ void wgmma_ss_n64_tt(float (&d)[8][4], uint64_t da, uint64_t db, int acc) {
  SOMNUS_WGMMA(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 1, 1;\n}\n"
      : SOMNUS_WG_ACC64(d)
      : "l"(da), "l"(db), "r"(acc));
}
// d (64 × N per warpgroup, N = 64 or 128) = A B, + d when acc != 0; A (64 × 16) and B (16 × N)
// in shared memory, both K-major: the forward's S = Q Kᵀ over N keys.
template <int N>
__device__ __forceinline__ void wgmma_ss_k(float (&d)[N / 8][4], uint64_t da, uint64_t db, int acc) {
  static_assert(N == 64 || N == 128);
  if constexpr (N == 64) {
    wgmma_ss_n64(d, da, db, acc);
  } else {
    SOMNUS_WGMMA(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : SOMNUS_WG_ACC128(d)
        : "l"(da), "l"(db), "r"(acc));
  }
}
// d (64 × N per warpgroup, N = 64 or 128) += A B; A (64 × 16) from registers, B (16 × N) in
// shared memory, MN-major (imm-trans-b = 1).
template <int N>
__device__ __forceinline__ void wgmma_rs_tb(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t db) {
  static_assert(N == 64 || N == 128);
  if constexpr (N == 64) {
    SOMNUS_WGMMA(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
        : SOMNUS_WG_ACC64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
  } else {
    SOMNUS_WGMMA(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
        : SOMNUS_WG_ACC128(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
  }
}
// ---- mbarriers and TMA (the warp-specialized forward, attn_fwd_ws; PTX ISA 8.0, sm_90a here).
// An mbarrier (8 bytes of shared memory, addressed by its shared-space address) completes a
// phase when its expected arrivals (mbar_init's count) have arrived and its transaction count
// (bytes announced by mbar_arrive_expect_tx, counted down by the TMA copies that name it) is
// back to 0; mbar_wait(bar, parity) returns once the phase of that parity has completed (a
// fresh barrier is in phase 0: waiting on parity 1 returns at once). tma_load_3d copies a box
// of a tensor map (host: cuTensorMapEncodeTiled; 3-D, innermost coordinate first) into shared
// memory through the async proxy, the same proxy wgmma reads through, so no proxy fence is
// needed between the two; elements outside the tensor read as 0; the bytes of the whole box
// count towards the barrier's transactions.
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  SOMNUS_WGMMA("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the other threads and to the async proxy (then a
// block barrier).
__device__ __forceinline__ void mbar_init_fence() { SOMNUS_WGMMA("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  SOMNUS_WGMMA("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Announces `bytes` more transaction bytes for the barrier's current phase, without arriving.
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  SOMNUS_WGMMA("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  SOMNUS_WGMMA("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    SOMNUS_WGMMA(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  }
}
// Named block barriers (ids 1..15; __syncthreads is 0): bar.sync waits until `threads` threads
// (a multiple of 32, counted by warps) have arrived at barrier `id`, bar.arrive arrives without
// waiting. attn_fwd_ws<D, true> passes the tensor cores back and forth between its two consumer
// warpgroups with them (FA3's ping-pong).
__device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Hands registers back to / takes them from the SM's pool (per warpgroup, every warp of it
// executes the same one): the producer warpgroup of attn_fwd_ws needs few, the consumers many.
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  SOMNUS_WGMMA("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  SOMNUS_WGMMA("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, uint32_t bar) {
  SOMNUS_WGMMA(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
// ---- bulk reductions (attn_bwd_ws's dQ; PTX ISA 8.0, sm_90). bulk_reduce_add_f32 adds `bytes`
// bytes of f32 from shared memory (16-byte aligned, a multiple of 16 bytes) to global memory
// through the async proxy, element-wise atomically at L2 (cp.reduce.async.bulk, bulk-group
// completion): shared memory written by ordinary stores must be fenced (fence_proxy_async, by
// each writer, then a barrier) before the issue; bulk_commit closes the thread's open group;
// bulk_wait_read<N> returns once all but the newest N groups have read their source (it may be
// rewritten), bulk_wait<N> once they have completed (written the destination).
__device__ __forceinline__ void st_shared_v4(void* p, float a, float b, float c, float d) {
  *static_cast<float4*>(p) = make_float4(a, b, c, d);
}
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, uint32_t src, uint32_t bytes) {
  SOMNUS_WGMMA("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { SOMNUS_WGMMA("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  SOMNUS_WGMMA("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
  SOMNUS_WGMMA("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}
#undef SOMNUS_WGMMA
#undef SOMNUS_WG_ACC8
#undef SOMNUS_WG_ACC64
#undef SOMNUS_WG_ACC128

// ---------------------------------------------------------------- SIMT forward / decode splits

constexpr int kRowWarps = 4;
constexpr int kSimtBc = 32;

// grid (ceil(Tq / warps), B·Hq, n_split), blockDim = 32·warps (warps = min(4, Tq): a decode
// step with one query runs one-warp blocks, so no warp idles); a warp per query row; keys
// [split·chunk, +chunk).
// partial: write f32 (o_s, lse_s) to o_part (B·Hq, n_split, Tq, D), lse_part (B·Hq, n_split, Tq)
// (o_s normalised by its own l; lse_s = −inf and o_s = 0 for a split the row cannot see);
// otherwise o (T) and lse directly.
template <class T, int D>
__global__ void __launch_bounds__(kRowWarps * 32) attn_rows_simt(const T* __restrict__ q, const T* __restrict__ k,
                                                               const T* __restrict__ v, T* __restrict__ o,
                                                               float* __restrict__ lse, float* __restrict__ o_part,
                                                               float* __restrict__ lse_part, int chunk, AttnDims d,
                                                               KvStrides kvs) {
  constexpr int E = D / 32;
  __shared__ float Ks[kSimtBc][D];
  __shared__ float Vs[kSimtBc][D];
  const int bh = blockIdx.y, b = bh / d.Hq, h = bh % d.Hq, sp = blockIdx.z, n_split = gridDim.z;
  const T* kh = k + b * kvs.sb + (h / d.g) * kvs.sh;  // this head's S rows (strided cache views too)
  const T* vh = v + b * kvs.sb + (h / d.g) * kvs.sh;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps = static_cast<int>(blockDim.x / 32);
  const int i = static_cast<int>(blockIdx.x) * warps + warp;
  const int k_lo = sp * chunk, k_hi = min(d.S, k_lo + chunk);
  const int last = min((static_cast<int>(blockIdx.x) + 1) * warps, d.T) - 1;
  const int k_end = min(k_hi, d.visible(last));
  const int my_end = i < d.T ? min(k_hi, d.visible(i)) : k_lo;

  float qv[E], acc[E];
  const T* qr = q + (static_cast<int64_t>(bh) * d.T + (i < d.T ? i : 0)) * D;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    qv[e] = to_f(qr[lane + 32 * e]) * d.scale;
    acc[e] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int j0 = k_lo; j0 < k_end; j0 += kSimtBc) {
    __syncthreads();
    for (int c = threadIdx.x; c < kSimtBc * D; c += blockDim.x) {
      const int r = c / D, x = c % D, j = j0 + r;
      Ks[r][x] = j < k_end ? to_f(kh[static_cast<int64_t>(j) * D + x]) : 0.f;
      Vs[r][x] = j < k_end ? to_f(vh[static_cast<int64_t>(j) * D + x]) : 0.f;
    }
    __syncthreads();
    const int n = min(kSimtBc, my_end - j0);  // warp-uniform
    for (int r = 0; r < n; ++r) {
      float s = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) s += qv[e] * Ks[r][lane + 32 * e];
      s = warp_allreduce_sum(s);
      const float m_new = fmaxf(m, s);
      const float alpha = __expf(m - m_new), p = __expf(s - m_new);
      l = l * alpha + p;
      const float pv = mma_round<T>(p);
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] = acc[e] * alpha + pv * Vs[r][lane + 32 * e];
      m = m_new;
    }
  }
  if (i >= d.T) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;
  if (o_part != nullptr) {
    const int64_t idx = (static_cast<int64_t>(bh) * n_split + sp) * d.T + i;
#pragma unroll
    for (int e = 0; e < E; ++e) o_part[idx * D + lane + 32 * e] = acc[e] * inv;
    if (lane == 0) lse_part[idx] = l > 0.f ? m + logf(l) : -INFINITY;
  } else {
    const int64_t row = static_cast<int64_t>(bh) * d.T + i;
#pragma unroll
    for (int e = 0; e < E; ++e) o[row * D + lane + 32 * e] = static_cast<T>(acc[e] * inv);
    if (lane == 0) lse[row] = m + logf(l);
  }
}

template <class F>
inline void visit_head_dim(int64_t D, const char* op, F&& f) {
  switch (D) {
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: throw_error(std::string(op) + ": the CUDA kernels take head dim 64 or 128, got " + std::to_string(D));
  }
}

template <class F>
inline void visit_attn_dtype(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::bf16: return f(bf16{});
    default: throw_error(std::string(op) + ": the CUDA kernels take f32 or bf16, got " + dtype_name(dt));
  }
}

template <class T, int D>
inline void launch_rows(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d, int n_split, int chunk,
                        const Tensor& o, const Tensor& lse, float* o_part, float* lse_part) {
  const int warps = std::min(kRowWarps, d.T);
  const dim3 grid((d.T + warps - 1) / warps, d.B * d.Hq, n_split);
  attn_rows_simt<T, D><<<grid, warps * 32>>>(q.data<T>(), k.data<T>(), v.data<T>(),
                                                o.defined() ? o.data<T>() : nullptr,
                                                lse.defined() ? lse.data<float>() : nullptr, o_part, lse_part, chunk,
                                                d, kv_strides(k));
  CUDA_CHECK_LAUNCH();
}

// ================================================================ forward, SIMT backward

// The environment switches that select a previous kernel version (SOMNUS_ATTN_FWD=v1|v2,
// SOMNUS_ATTN_BWD=v2|v1|simt, SOMNUS_ATTN_DECODE=simt), read at every call so that tests can
// switch: kept so a regression on a GPU can be bisected without a rebuild.
bool env_equals(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, value) == 0;
}

// The GQA decode kernel's variant for R rows (see attn_decode_gqa): kPipe from
// SOMNUS_ATTN_DECODE (=unpiped 0, =pipe 1, =pipe_wide 2, =ring 3; unset: 3 for R = 4, the rows
// the GPU runs timed (g = 4, T = 1), and 0, the kernel before 2026-11-27, for R = 1, 2, 8, where
// nothing was timed). The ring is R = 4's default since the H200 run of 2026-11-28: B 8 Hq 32
// Hkv 8 D 128 bf16, µs at S 1024 / 4096 / 32768, two runs: ring 25.1–26.2 / 50.1–51.2 /
// 290.4–290.5 against pipe_wide (the default before) 24.3–25.0 / 58.8–59.8 / 376.7–377.8, so
// 15% and 23% faster at the longer caches and ~1 µs slower at S 1024. kFuse from
// SOMNUS_DECODE_COMBINE=fused, which is built on the ring (kPipe = 3) when
// SOMNUS_ATTN_DECODE=ring, else on kPipe = 2 (as before the ring became the default, so that
// the names keep their kernels); it won no row of that run, so it stays opt-in.
struct DecodeVariant {
  int pipe;
  bool fuse;
};
DecodeVariant decode_variant(int R) {
  const bool fuse = env_equals("SOMNUS_DECODE_COMBINE", "fused");
  const bool ring = env_equals("SOMNUS_ATTN_DECODE", "ring");
  int pipe = R == 4 ? 3 : 0;
  if (env_equals("SOMNUS_ATTN_DECODE", "unpiped")) pipe = 0;
  if (env_equals("SOMNUS_ATTN_DECODE", "pipe")) pipe = 1;
  if (ring) pipe = 3;
  if (env_equals("SOMNUS_ATTN_DECODE", "pipe_wide") || (fuse && !ring)) pipe = 2;
  return {pipe, fuse};
}

// ---------------------------------------------------------------- bf16 forward, tensor cores

// The forwards' epilogue: l summed over the quad of lanes that share a row, this thread's O
// rows row0 and row0 + 8 normalised and stored as bf16 (rows < T), lse = m + ln l (m: the row
// max in natural-log units) by the quad's first lane.
template <int D>
__device__ __forceinline__ void store_fwd_rows(uint16_t* __restrict__ o, float* __restrict__ lse, int bh,
                                               const AttnDims& d, int row0, int tq, const float (&oacc)[D / 8][4],
                                               float (&l)[2], const float (&m)[2]) {
  const int row1 = row0 + 8;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  const float inv0 = l[0] > 0.f ? 1.f / l[0] : 0.f, inv1 = l[1] > 0.f ? 1.f / l[1] : 0.f;
  uint16_t* oh = o + static_cast<int64_t>(bh) * d.T * D;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int col = n * 8 + 2 * tq;
    if (row0 < d.T) {
      *reinterpret_cast<uint32_t*>(oh + static_cast<int64_t>(row0) * D + col) =
          pack_bf16(oacc[n][0] * inv0, oacc[n][1] * inv0);
    }
    if (row1 < d.T) {
      *reinterpret_cast<uint32_t*>(oh + static_cast<int64_t>(row1) * D + col) =
          pack_bf16(oacc[n][2] * inv1, oacc[n][3] * inv1);
    }
  }
  if (tq == 0) {
    if (row0 < d.T) lse[static_cast<int64_t>(bh) * d.T + row0] = m[0] + logf(l[0]);
    if (row1 < d.T) lse[static_cast<int64_t>(bh) * d.T + row1] = m[1] + logf(l[1]);
  }
}


constexpr int kMmaWarps = 4;
constexpr int kMmaBr = 16 * kMmaWarps;  // 64 query rows per block
constexpr int kMmaBc = 64;              // keys per tile

template <int D>
constexpr int mma_smem_bytes(bool pipe = false) {
  return (pipe ? 5 : 3) * kMmaBr * (D + 8) * 2;
}

// kLdsm (the default since 2026-11-26): Q's A fragments loaded once into registers, K's and
// V's B fragments with ldmatrix (V's transposed by ldmatrix.trans) instead of 32-bit and
// 16-bit shared loads — the v1 kernel (kLdsm = false, SOMNUS_ATTN_FWD=v1) issued two 16-bit
// loads per V register, 4 per mma, and measured 61–125 TFLOP/s on an H100.
// kPipe (needs kLdsm; the default): K and V tiles double-buffered with cp.async, tile j + 1
// in flight while tile j is computed (shared memory 5 · 64 · (D + 8) · 2 bytes: 87 KiB at
// D = 128). SOMNUS_ATTN_FWD=v2 runs kLdsm without kPipe.
template <int D, bool kLdsm, bool kPipe>
__global__ void __launch_bounds__(kMmaWarps * 32) attn_fwd_mma(const uint16_t* __restrict__ q,
                                                             const uint16_t* __restrict__ k,
                                                             const uint16_t* __restrict__ v, uint16_t* __restrict__ o,
                                                             float* __restrict__ lse, AttnDims d) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int LD = D + 8;
  uint16_t* Qs = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* Ks = Qs + kMmaBr * LD;
  uint16_t* Vs = Ks + kMmaBc * LD;

  const int bh = blockIdx.y, b = bh / d.Hq, h = bh % d.Hq;
  const int64_t kvh = static_cast<int64_t>(b) * d.Hkv + h / d.g;
  // The default version takes the query tiles in reverse: under a causal mask the last tiles
  // see the most keys, and starting them first leaves the short ones for the tail of the grid.
  const int qt = kPipe && d.causal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int q0 = qt * kMmaBr;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane >> 2, tq = lane & 3;
  const uint16_t* qh = q + (static_cast<int64_t>(bh) * d.T) * D;
  const uint16_t* kh = k + kvh * d.S * D;
  const uint16_t* vh = v + kvh * d.S * D;

  load_tile_bf16<D>(Qs, qh + static_cast<int64_t>(q0) * D, kMmaBr, d.T - q0);

  // This thread's two rows (within the block): wr and wr + 8.
  const int wr = warp * 16 + gr;
  // ldmatrix addressing: this lane gives row `lrow` of matrix `lmat`.
  const int lmat = lane >> 3, lrow = lane & 7;
  uint32_t qf[kLdsm ? D / 16 : 1][4];
  if constexpr (kLdsm) {
    __syncthreads();  // Qs is loaded
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int c = kk * 16 + 2 * tq;
      qf[kk][0] = *reinterpret_cast<const uint32_t*>(Qs + wr * LD + c);
      qf[kk][1] = *reinterpret_cast<const uint32_t*>(Qs + (wr + 8) * LD + c);
      qf[kk][2] = *reinterpret_cast<const uint32_t*>(Qs + wr * LD + c + 8);
      qf[kk][3] = *reinterpret_cast<const uint32_t*>(Qs + (wr + 8) * LD + c + 8);
    }
  }
  const int row0 = q0 + wr, row1 = row0 + 8;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float oacc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.f;

  const int k_end = d.visible(min(q0 + kMmaBr, d.T) - 1);  // the block's last row sees the most
  if constexpr (kPipe) {
    if (k_end > 0) {
      issue_tile_bf16<D>(Ks, kh, kMmaBc, k_end);
      issue_tile_bf16<D>(Vs, vh, kMmaBc, k_end);
    }
    cp_async_commit();
  }
  for (int j0 = 0, t = 0; j0 < k_end; j0 += kMmaBc, ++t) {
    uint16_t* Kt = Ks;
    uint16_t* Vt = Vs;
    if constexpr (kPipe) {
      // Buffers alternate: tile t in buffer t & 1. The next tile goes into the other buffer,
      // which every thread finished reading at the end of iteration t − 1.
      Kt = Ks + (t & 1) * 2 * kMmaBc * LD;
      Vt = Kt + kMmaBc * LD;
      if (j0 + kMmaBc < k_end) {
        uint16_t* Kn = Ks + ((t + 1) & 1) * 2 * kMmaBc * LD;
        issue_tile_bf16<D>(Kn, kh + static_cast<int64_t>(j0 + kMmaBc) * D, kMmaBc, k_end - j0 - kMmaBc);
        issue_tile_bf16<D>(Kn + kMmaBc * LD, vh + static_cast<int64_t>(j0 + kMmaBc) * D, kMmaBc,
                           k_end - j0 - kMmaBc);
        cp_async_commit();
        cp_async_wait<1>();  // tile t has landed (this thread's copies)
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();  // ... and every thread's
    } else {
      __syncthreads();  // the previous tile is no longer read (and Qs is loaded on the first pass)
      load_tile_bf16<D>(Ks, kh + static_cast<int64_t>(j0) * D, kMmaBc, k_end - j0);
      load_tile_bf16<D>(Vs, vh + static_cast<int64_t>(j0) * D, kMmaBc, k_end - j0);
      __syncthreads();
    }

    // S = Q Kᵀ: 16 × 64 per warp, 8 n-tiles of 8 keys.
    float s[kMmaBc / 8][4];
#pragma unroll
    for (int nt = 0; nt < kMmaBc / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    if constexpr (kLdsm) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int nt = 0; nt < kMmaBc / 8; nt += 2) {
          // Matrices: (keys nt·8.., d kk·16..), (.., d + 8), (keys (nt+1)·8.., d), (.., d + 8).
          uint32_t kb[4];
          ldsm_x4<false>(kb, Kt + ((nt + (lmat >> 1)) * 8 + lrow) * LD + kk * 16 + (lmat & 1) * 8);
          mma_bf16(s[nt], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], kb[0], kb[1]);
          mma_bf16(s[nt + 1], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], kb[2], kb[3]);
        }
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int c = kk * 16 + 2 * tq;
        const uint32_t a0 = *reinterpret_cast<const uint32_t*>(Qs + wr * LD + c);
        const uint32_t a1 = *reinterpret_cast<const uint32_t*>(Qs + (wr + 8) * LD + c);
        const uint32_t a2 = *reinterpret_cast<const uint32_t*>(Qs + wr * LD + c + 8);
        const uint32_t a3 = *reinterpret_cast<const uint32_t*>(Qs + (wr + 8) * LD + c + 8);
#pragma unroll
        for (int nt = 0; nt < kMmaBc / 8; ++nt) {
          const uint16_t* kr = Kt + (nt * 8 + gr) * LD + c;
          mma_bf16(s[nt], a0, a1, a2, a3, *reinterpret_cast<const uint32_t*>(kr),
                   *reinterpret_cast<const uint32_t*>(kr + 8));
        }
      }
    }

    // Scale, mask, online softmax. s[nt][0..1] belong to row0, s[nt][2..3] to row1.
    const int vis0 = d.visible(row0), vis1 = d.visible(row1);
    float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kMmaBc / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = j0 + nt * 8 + 2 * tq + (e & 1);
        const int vis = e < 2 ? vis0 : vis1;
        s[nt][e] = col < vis ? s[nt][e] * d.scale : -INFINITY;
        mt[e >> 1] = fmaxf(mt[e >> 1], s[nt][e]);
      }
    }
    float alpha[2], mb[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 1));
      mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 2));
      const float m_new = fmaxf(m[r], mt[r]);
      mb[r] = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet: p = 0, not NaN
      alpha[r] = __expf(m[r] - mb[r]);
      m[r] = m_new;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < kMmaBc / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = __expf(s[nt][e] - mb[e >> 1]);
        l[e >> 1] += s[nt][e];  // this thread's columns; the quad is summed at the end
      }
    }
    rescale_rows<D>(oacc, alpha);

    // O += P V: 4 k-steps of 16 keys; P's A fragments come from the S accumulators.
#pragma unroll
    for (int kk = 0; kk < kMmaBc / 16; ++kk) {
      uint32_t a0, a1, a2, a3;
      p_frag(s, kk, a0, a1, a2, a3);
      if constexpr (kLdsm) {
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
          // Transposed matrices: (keys kk·16.., d n·8..), (keys + 8, d n·8..), (keys, d (n+1)·8..),
          // (keys + 8, d (n+1)·8..): b0, b1 of n-tile n, then of n + 1.
          uint32_t vb[4];
          ldsm_x4<true>(vb, Vt + (kk * 16 + (lmat & 1) * 8 + lrow) * LD + (n + (lmat >> 1)) * 8);
          mma_bf16(oacc[n], a0, a1, a2, a3, vb[0], vb[1]);
          mma_bf16(oacc[n + 1], a0, a1, a2, a3, vb[2], vb[3]);
        }
      } else {
        const int kr = kk * 16 + 2 * tq;  // key rows of V for b0 (and + 8 for b1)
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          const int col = n * 8 + gr;
          const uint32_t b0 = pack_u16(Vt[kr * LD + col], Vt[(kr + 1) * LD + col]);
          const uint32_t b1 = pack_u16(Vt[(kr + 8) * LD + col], Vt[(kr + 9) * LD + col]);
          mma_bf16(oacc[n], a0, a1, a2, a3, b0, b1);
        }
      }
    }
    if constexpr (kPipe) __syncthreads();  // buffer t & 1 is free for tile t + 2
  }

  store_fwd_rows<D>(o, lse, bh, d, row0, tq, oacc, l, m);
}

// ---------------------------------------------------------------- bf16 forward v3

// attn_fwd_v3 (SOMNUS_ATTN_FWD=v3; written 2026-11-26 on a machine without a GPU, checked and
// measured on an H100 on 2026-11-27: 243 TFLOP/s against mma's 189, causal D 128 T 4k; the
// default where the Hopper kernels do not run). What it changes against the default version, each aimed at the default's
// measured 188 TFLOP/s (H100, causal, D = 128, T = 4k) against the ~350 of FA2:
//   - 8 warps = 128 query rows per block (16 per warp, as before): a K/V tile staged in
//     shared memory feeds twice the rows, halving the global → shared traffic and the
//     cp.async instructions per FLOP;
//   - Q's A fragments by ldmatrix from shared memory at every k-step instead of 32 registers
//     per thread, so that with __launch_bounds__(256, 2) two blocks (16 warps) fit on an SM
//     (the default: 182 registers × 128 threads and 87 KiB → 2 blocks of 4 warps). Shared
//     memory 128 + 4 · 64 rows of (D + 8) bf16: 102 KiB at D = 128, 2 blocks per sm_90 SM;
//   - softmax in base 2 with the scale folded in: p = 2^(s·c − m·c), c = scale · log2 e, one
//     FFMA + ex2 per element instead of FMUL (scale), FADD, FMUL (log2 e) and ex2; the row max
//     is taken of the unscaled s (needs scale > 0: other scales take the default version);
//   - the mask only on tiles that cross a row's visible range (the causal diagonal, the
//     key tail), decided per warp; tiles past every row of the warp are skipped by that warp
//     (a causal 128-row block's first warp stops 112 keys earlier than its last).
// Numerics: f32 scores and accumulators, P rounded to bf16 for P V, as the default; the
// results differ from it by the ex2 rounding (tested against the CPU twin and the f64
// reference, not bitwise).
// Issue count per warp per 16 × 64 tile at D = 128 (prediction): 128 mma, 8 + 32 + 32
// ldmatrix, ~32 · 4 softmax instructions + 64 rescales ≈ 430 issue slots against ~560 in
// the default; with 16 warps per SM instead of 8 the softmax of one warp overlaps the mma of
// another. Expected: 250–330 TFLOP/s at causal D = 128 T = 4k (not measured yet).
constexpr int kV3Warps = 8;
constexpr int kV3Br = 16 * kV3Warps;  // 128 query rows per block
constexpr int kV3Bc = 64;             // keys per tile

template <int D>
constexpr int v3_smem_bytes() {
  return (kV3Br + 4 * kV3Bc) * (D + 8) * 2;  // Q, then 2 buffers of (K tile, V tile)
}

// One tile of 8·NT keys (64; 128 in the pipelined wgmma forward) of the base-2 online softmax
// (v3 and the wgmma forward), for this thread's
// rows row0 and row1 = row0 + 8: s holds the warp's unscaled scores (16 × 8·NT, mma.sync's
// accumulator layout: s[nt][0..1] row0, s[nt][2..3] row1), masked only where some row of the
// warp does not see the whole tile (j0 + 8·NT > w_all); m (the row max of the unscaled s) and l
// (this thread's columns of the row sum; the quad is summed at the end) are updated, s becomes
// p = 2^(s·c2 − m·c2) with c2 = scale · log2 e, and alpha is the factor O is to be rescaled by
// (softmax_tile_b2 rescales it; the pipelined wgmma forward later, once O is no longer in flight).
template <int NT>
__device__ __forceinline__ void softmax_tile_b2_p(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                                  const AttnDims& d, int j0, int w_all, int row0, int row1, int tq,
                                                  float c2) {
  if (j0 + 8 * NT > w_all) {
    const int vis0 = d.visible(row0), vis1 = d.visible(row1);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = j0 + nt * 8 + 2 * tq + (e & 1);
        if (col >= (e < 2 ? vis0 : vis1)) s[nt][e] = -INFINITY;
      }
    }
  }
  float mt[2] = {m[0], m[1]};
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    mt[0] = fmaxf(mt[0], fmaxf(s[nt][0], s[nt][1]));
    mt[1] = fmaxf(mt[1], fmaxf(s[nt][2], s[nt][3]));
  }
  float ms[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 1));
    mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 2));
    ms[r] = mt[r] == -INFINITY ? 0.f : mt[r] * c2;  // nothing visible yet: p = 0, not NaN
    alpha[r] = ex2_approx(fmaf(m[r], c2, -ms[r]));  // m = −inf: 0
    m[r] = mt[r];
    l[r] *= alpha[r];
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = ex2_approx(fmaf(s[nt][e], c2, -ms[e >> 1]));
      l[e >> 1] += s[nt][e];
    }
  }
}
template <int D>
__device__ __forceinline__ void softmax_tile_b2(float (&s)[8][4], float (&m)[2], float (&l)[2],
                                                float (&oacc)[D / 8][4], const AttnDims& d, int j0, int w_all,
                                                int row0, int row1, int tq, float c2) {
  float alpha[2];
  softmax_tile_b2_p(s, m, l, alpha, d, j0, w_all, row0, row1, tq, c2);
  rescale_rows<D>(oacc, alpha);
}

template <int D>
__global__ void __launch_bounds__(kV3Warps * 32, 2) attn_fwd_v3(const uint16_t* __restrict__ q,
                                                               const uint16_t* __restrict__ k,
                                                               const uint16_t* __restrict__ v,
                                                               uint16_t* __restrict__ o, float* __restrict__ lse,
                                                               AttnDims d) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int LD = D + 8;
  constexpr int kTile = kV3Bc * LD;
  uint16_t* Qs = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* Ks = Qs + kV3Br * LD;  // buffer t: K at Ks + 2t·kTile, V at Ks + (2t + 1)·kTile

  const int bh = blockIdx.y, b = bh / d.Hq, h = bh % d.Hq;
  const int64_t kvh = static_cast<int64_t>(b) * d.Hkv + h / d.g;
  // Causal: the last query tiles (the most keys) first, as the default version.
  const int qt = d.causal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int q0 = qt * kV3Br;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane >> 2, tq = lane & 3;
  const int lmat = lane >> 3, lrow = lane & 7;  // ldmatrix: this lane gives row lrow of matrix lmat
  const uint16_t* qh = q + static_cast<int64_t>(bh) * d.T * D;
  const int64_t kv_off = kvh * d.S * D;  // k + kv_off, v + kv_off: one offset live, not two pointers

  // Q and the first K/V tile: cp.async group 0.
  const int k_end = d.visible(min(q0 + kV3Br, d.T) - 1);  // the block's last row sees the most
  issue_tile_bf16<D>(Qs, qh + static_cast<int64_t>(q0) * D, kV3Br, d.T - q0);
  if (k_end > 0) {
    issue_tile_bf16<D>(Ks, k + kv_off, kV3Bc, k_end);
    issue_tile_bf16<D>(Ks + kTile, v + kv_off, kV3Bc, k_end);
  }
  cp_async_commit();

  // This warp's rows w0 .. w0 + 15; this thread's two: row0 and row1 = row0 + 8.
  const int w0 = q0 + warp * 16;
  const int row0 = w0 + gr, row1 = row0 + 8;
  const bool w_live = w0 < d.T;
  const int w_end = w_live ? d.visible(min(w0 + 15, d.T - 1)) : 0;  // keys [0, w_end) seen by some row
  const int w_all = w_live ? d.visible(w0) : 0;                     // keys [0, w_all) seen by every row
  const float c2 = d.scale * kLog2e;                                // scale · log2 e
  // ldmatrix addresses as 32-bit shared-space byte addresses (fewer registers than generic
  // pointers: the D = 128 kernel is at the 128-register cap). Q's A fragments: matrices rows
  // +0 / +8 of the warp, columns +0 / +8 of the k-step; K's B fragments: keys +0 / +8 of the
  // n-tile pair, columns +0 / +8; V's (transposed): keys +0 / +8 of the k-step, columns +0 / +8.
  const uint32_t q_frag = static_cast<uint32_t>(__cvta_generic_to_shared(Qs)) +
                          2u * ((warp * 16 + (lmat & 1) * 8 + lrow) * LD + (lmat >> 1) * 8);
  const uint32_t k_lane = 2u * (((lmat >> 1) * 8 + lrow) * LD + (lmat & 1) * 8);
  const uint32_t v_lane = 2u * (((lmat & 1) * 8 + lrow) * LD + (lmat >> 1) * 8);
  const uint32_t kv_base = static_cast<uint32_t>(__cvta_generic_to_shared(Ks));

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // m: the row max of the unscaled s
  float oacc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.f;

  for (int j0 = 0, t = 0; j0 < k_end; j0 += kV3Bc, ++t) {
    const uint32_t Kt = kv_base + (t & 1) * (4u * kTile) + k_lane;        // this lane's K address
    const uint32_t Vt = kv_base + (t & 1) * (4u * kTile) + 2u * kTile + v_lane;  // ... and V's
    if (j0 + kV3Bc < k_end) {
      // The other buffer was last read in iteration t − 1, which ended with a barrier.
      uint16_t* Kn = Ks + ((t + 1) & 1) * 2 * kTile;
      const int64_t next = kv_off + static_cast<int64_t>(j0 + kV3Bc) * D;
      issue_tile_bf16<D>(Kn, k + next, kV3Bc, k_end - j0 - kV3Bc);
      issue_tile_bf16<D>(Kn + kTile, v + next, kV3Bc, k_end - j0 - kV3Bc);
      cp_async_commit();
      cp_async_wait<1>();  // tile t (and Q) landed: this thread's copies
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // ... and every thread's

    if (j0 < w_end) {  // warp-uniform: a warp none of whose rows sees this tile skips it
      // S = Q Kᵀ: 16 × 64 per warp, 8 n-tiles of 8 keys.
      float s[kV3Bc / 8][4];
#pragma unroll
      for (int nt = 0; nt < kV3Bc / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t qa[4];
        ldsm_x4_at<false>(qa, q_frag + 2u * (kk * 16));
#pragma unroll
        for (int nt = 0; nt < kV3Bc / 8; nt += 2) {
          // Matrices: (keys nt·8.., d kk·16..), (.., d + 8), (keys (nt+1)·8.., d), (.., d + 8).
          uint32_t kb[4];
          ldsm_x4_at<false>(kb, Kt + 2u * (nt * 8 * LD + kk * 16));
          mma_bf16(s[nt], qa[0], qa[1], qa[2], qa[3], kb[0], kb[1]);
          mma_bf16(s[nt + 1], qa[0], qa[1], qa[2], qa[3], kb[2], kb[3]);
        }
      }
      softmax_tile_b2<D>(s, m, l, oacc, d, j0, w_all, row0, row1, tq, c2);
      // O += P V: 4 k-steps of 16 keys; P's A fragments come from the S accumulators.
#pragma unroll
      for (int kk = 0; kk < kV3Bc / 16; ++kk) {
        uint32_t a0, a1, a2, a3;
        p_frag(s, kk, a0, a1, a2, a3);
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
          uint32_t vb[4];
          ldsm_x4_at<true>(vb, Vt + 2u * (kk * 16 * LD + n * 8));
          mma_bf16(oacc[n], a0, a1, a2, a3, vb[0], vb[1]);
          mma_bf16(oacc[n + 1], a0, a1, a2, a3, vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // buffer t & 1 is free for tile t + 2
  }
  cp_async_wait<0>();  // a block that saw no key still has Q's group in flight

  const float m_nat[2] = {m[0] * d.scale, m[1] * d.scale};  // lse in natural log: m·scale + ln l
  store_fwd_rows<D>(o, lse, bh, d, row0, tq, oacc, l, m_nat);
}

// Whether two v3 blocks can be resident on an SM of the current device (the kernel is built for
// that: 128 registers a thread at __launch_bounds__(256, 2)); asks for the largest shared-memory
// carveout first, so the occupancy query sees it.
template <int D>
bool v3_fits() {
  if (v3_smem_bytes<D>() > max_dynamic_smem_bytes()) return false;
  CUDA_CHECK(cudaFuncSetAttribute(attn_fwd_v3<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, v3_smem_bytes<D>()));
  CUDA_CHECK(cudaFuncSetAttribute(attn_fwd_v3<D>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                  static_cast<int>(cudaSharedmemCarveoutMaxShared)));
  int blocks = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, attn_fwd_v3<D>, kV3Warps * 32, v3_smem_bytes<D>()));
  return blocks >= 2;
}

// ---------------------------------------------------------------- bf16 forward on Hopper wgmma

// attn_fwd_wg (SOMNUS_ATTN_FWD=wgmma; written 2026-11-27 without a GPU, passed on an H100 the
// same day; runs only where the device code was built for sm_90a). The v3 forward with
// its two matrix products on Hopper's warpgroup MMA instead of mma.sync:
//   - a block is 2 warpgroups (8 warps, 128 query rows; each warpgroup 64 rows) and K/V tiles
//     of 64 keys, double-buffered with cp.async as in v3;
//   - tiles are stored in the 128-byte-swizzled layout wgmma reads (issue_tile_sw128): Q, K
//     and V in panels of 64 columns (D = 128: two panels), row r's 16-byte chunk c at
//     r·128 + ((c ^ (r % 8))·16) from a 1024-byte aligned panel;
//   - S = Q Kᵀ: D/16 wgmma.m64n64k16 per warpgroup, both operands from shared memory
//     (K-major descriptors: Q's rows and K's keys 8 to a 1024-byte group, the k-step 32 bytes
//     into the row); no Q or K fragments in registers, no ldmatrix;
//   - O += P V: 4 wgmma.m64nDk16 per tile, P from registers (p_frag: the accumulator layout is
//     mma.sync's), V from shared memory read transposed (MN-major descriptor: 64 d-columns a
//     128-byte row, 8 keys to a 1024-byte group, panels LBO = 64·128 bytes apart);
//   - the softmax, masks and epilogue are v3's (base 2, masks only on tiles crossing a warp's
//     visible range); a warpgroup skips only tiles none of its 64 rows sees (wgmma is a
//     warpgroup instruction), a warp's fully masked rows add p = 0.
// kPipe = false ("wgmma"): each product is issued, committed and waited for before its result
// is used (the other warpgroup and the other resident block fill the tensor cores meanwhile).
// Expected (prediction, not measured): above v3, 300–400 TFLOP/s at causal D = 128, T = 4k on
// an H100, the tensor-core rate per SM being twice mma.sync's.
// kPipe = true ("wgmma_pipe", 2026-11-27, also without a GPU): 128-key tiles (S = Q Kᵀ as
// m64n128k16: per k-step 6 KiB of shared operands for 256 kFLOP, where m64n64k16 reads 4 KiB
// for 128 kFLOP — at the tensor-core peak (~4096 FLOP/clk/SM) the 64-key SS product needs all
// of the SM's 128 B/clk of shared bandwidth, the 128-key one 96) and FA3's intra-warpgroup
// overlap: iteration t issues S_t, then O += P_(t−1) V_(t−1), and computes the softmax of S_t
// while that P V runs; O is rescaled after it retires. P_(t−1) stays in registers (the RS
// operand in flight), so S (64), P (32) and O (D/2) are live together: 193 / 160 registers at
// D = 128 / 64 (ptxas, no spill), one block of 8 warps per SM (161 / 81 KiB of shared memory).
// Expected (prediction, not measured): 350–450 TFLOP/s at causal D = 128, T = 4k on an H100 if
// the overlap holds; below "wgmma" if two warpgroups per SM cannot hide the softmax.
// Numerics of both as v3 (f32 accumulators, P rounded to bf16).
constexpr int kWgWarps = 8;
constexpr int kWgBr = 16 * kWgWarps;  // 128 query rows per block, 64 per warpgroup
constexpr int kWgBc = 64;             // keys per tile
constexpr int kWgPipeBc = 128;        // keys per tile of the pipelined version
constexpr int wg_keys(bool pipe) { return pipe ? kWgPipeBc : kWgBc; }

template <int D, bool kPipe = false>
constexpr int wg_smem_bytes() {
  return (kWgBr + 4 * wg_keys(kPipe)) * D * 2 + 1024;  // Q, 2 × (K tile, V tile); + slack to align to 1024
}

// The forward's two products for one warpgroup, each a commit group of its own (shared by
// attn_fwd_wg and attn_fwd_ws). Tiles in 64-column panels of 128-byte swizzled rows.
// S = Q Kᵀ (64 × kBc): D/16 k-steps (4 per panel, 32 bytes each); q_desc: the shared address
// of this warpgroup's first Q row (panels kWgBr·128 bytes apart), k_tile: the K tile's (panels
// kBc·128 apart).
template <int D, int kBc>
__device__ __forceinline__ void wg_issue_qk(float (&s)[kBc / 8][4], uint32_t q_desc, uint32_t k_tile) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t step = (kk & 3) * 32u;
    const uint64_t da = wg_desc(q_desc + (kk >> 2) * (kWgBr * kSwRow) + step, 16, 8 * kSwRow);
    const uint64_t db = wg_desc(k_tile + (kk >> 2) * (kBc * kSwRow) + step, 16, 8 * kSwRow);
    wgmma_ss_k<kBc>(s, da, db, kk > 0 ? 1 : 0);
  }
  wgmma_commit();
}
// O += P V: kBc/16 k-steps of 16 keys (16 rows of the V tile = 2048 bytes each), P from pa (RS),
// V read transposed (MN-major: panels kBc·128 bytes apart).
template <int D, int kBc>
__device__ __forceinline__ void wg_issue_pv(float (&oacc)[D / 8][4], uint32_t (&pa)[kBc / 16][4], uint32_t v_tile) {
  wg_fence_operands(oacc);  // the rescale and the P fragments are written before the fence
  wg_fence_operands(pa);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kBc / 16; ++kk) {
    wgmma_rs_tb<D>(oacc, pa[kk], wg_desc(v_tile + kk * 16 * kSwRow, kBc * kSwRow, 8 * kSwRow));
  }
  wgmma_commit();
}
template <int NT>
__device__ __forceinline__ void wg_make_p(float (&s)[NT][4], uint32_t (&pa)[NT / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) p_frag(s, kk, pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3]);
}

template <int D, bool kPipe>
__global__ void __launch_bounds__(kWgWarps * 32, kPipe ? 1 : 2) attn_fwd_wg(const uint16_t* __restrict__ q,
                                                               const uint16_t* __restrict__ k,
                                                               const uint16_t* __restrict__ v,
                                                               uint16_t* __restrict__ o, float* __restrict__ lse,
                                                               AttnDims d) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kBc = wg_keys(kPipe);  // keys per tile
  constexpr int kTile = kBc * D;  // elements of one K or V tile
  // The swizzle is a function of the shared address bits 4–9: panels start 1024-byte aligned.
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  uint16_t* Qs = reinterpret_cast<uint16_t*>(smem_raw + (((raw + 1023u) & ~1023u) - raw));
  uint16_t* Ks = Qs + kWgBr * D;  // buffer t: K at Ks + 2t·kTile, V at Ks + (2t + 1)·kTile

  const int bh = blockIdx.y, b = bh / d.Hq, h = bh % d.Hq;
  const int64_t kvh = static_cast<int64_t>(b) * d.Hkv + h / d.g;
  const int qt = d.causal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int q0 = qt * kWgBr;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane >> 2, tq = lane & 3;
  const int wg = warp / 4;  // this warp's warpgroup: rows q0 + 64·wg ..
  const uint16_t* qh = q + static_cast<int64_t>(bh) * d.T * D;
  const int64_t kv_off = kvh * d.S * D;

  const int k_end = d.visible(min(q0 + kWgBr, d.T) - 1);
  issue_tile_sw128<D>(Qs, qh + static_cast<int64_t>(q0) * D, kWgBr, d.T - q0);
  if (k_end > 0) {
    issue_tile_sw128<D>(Ks, k + kv_off, kBc, k_end);
    issue_tile_sw128<D>(Ks + kTile, v + kv_off, kBc, k_end);
  }
  cp_async_commit();

  const int w0 = q0 + warp * 16;  // this warp's rows w0 .. w0 + 15 (as v3)
  const int row0 = w0 + gr, row1 = row0 + 8;
  const int w_all = w0 < d.T ? d.visible(w0) : 0;  // keys [0, w_all) seen by every row of the warp
  const int g0 = q0 + wg * 64;
  const int g_end = g0 < d.T ? d.visible(min(g0 + 63, d.T - 1)) : 0;  // keys seen by some row of the warpgroup
  const float c2 = d.scale * kLog2e;
  // Descriptor bases: this warpgroup's 64 rows of Q (panel p at + p·kWgBr·128), the K and V
  // tiles of buffer 0 (panel p at + p·kBc·128; buffer t at + t·4·kTile bytes).
  const uint32_t q_desc0 = static_cast<uint32_t>(__cvta_generic_to_shared(Qs)) + wg * 64 * kSwRow;
  const uint32_t kv_base = static_cast<uint32_t>(__cvta_generic_to_shared(Ks));

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float oacc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.f;

  // The two products on buffer slot t & 1 (K at kv_base + (t & 1)·4·kTile bytes, V 2·kTile
  // bytes after it), each a commit group of its own (wg_issue_qk, wg_issue_pv).
  uint32_t pa[kBc / 16][4];  // P of the tile whose P V is issued next, as RS A fragments
  const auto issue_s = [&](int t, float (&s)[kBc / 8][4]) {
    wg_issue_qk<D, kBc>(s, q_desc0, kv_base + (t & 1) * (4u * kTile));
  };
  const auto issue_pv = [&](int t) { wg_issue_pv<D, kBc>(oacc, pa, kv_base + (t & 1) * (4u * kTile) + 2u * kTile); };
  const auto make_p = [&](float (&s)[kBc / 8][4]) { wg_make_p(s, pa); };
  if constexpr (!kPipe) {
    for (int j0 = 0, t = 0; j0 < k_end; j0 += kBc, ++t) {
      // Tile t landed (this thread's copies), made visible to wgmma (the async proxy) before the
      // next tile's copies are issued: the proxy fence then has no copy in flight to wait for.
      cp_async_wait<0>();
      fence_proxy_async();
      if (j0 + kBc < k_end) {  // the other buffer was last read in iteration t − 1 (its end barrier)
        uint16_t* Kn = Ks + ((t + 1) & 1) * 2 * kTile;
        const int64_t next = kv_off + static_cast<int64_t>(j0 + kBc) * D;
        issue_tile_sw128<D>(Kn, k + next, kBc, k_end - j0 - kBc);
        issue_tile_sw128<D>(Kn + kTile, v + next, kBc, k_end - j0 - kBc);
        cp_async_commit();
      }
      __syncthreads();  // ... and every thread's

      if (j0 < g_end) {  // warpgroup-uniform
        float s[kBc / 8][4];
        issue_s(t, s);
        wgmma_wait<0>();
        wg_fence_operands(s);
        softmax_tile_b2<D>(s, m, l, oacc, d, j0, w_all, row0, row1, tq, c2);  // as v3
        make_p(s);
        issue_pv(t);
        wgmma_wait<0>();
        wg_fence_operands(oacc);
      }
      __syncthreads();  // buffer t & 1 is free for tile t + 2 (this block's wgmmas on it are done)
    }
  } else {
    // Pipelined (SOMNUS_ATTN_FWD=wgmma_pipe): O += P V of tile t − 1 runs on the tensor cores
    // while the softmax of tile t runs on the ALUs. K_t is copied one iteration ahead (slot
    // t & 1), V_t with K_(t+1), so V lags one tile: iteration t issues S_t = Q K_tᵀ, then
    // O += P_(t−1) V_(t−1), waits for S_t (the PV in flight), computes P_t, waits for the PV,
    // rescales O. One barrier per iteration (top): after it every warp has retired S_(t−1) and
    // PV_(t−2), so the slots of K_(t+1) and V_t are free. The block runs n_tiles + 1 tops; this
    // warpgroup computes in the first n_g + 1 of them (n_g: the tiles some row of it sees), in
    // peeled loops, so that every wgmma and wait is on a straight path (ptxas serializes wgmma
    // whose wait is under a branch it cannot prove warpgroup-uniform).
    const int n_tiles = (k_end + kBc - 1) / kBc;
    const int n_g = (g_end + kBc - 1) / kBc;  // <= n_tiles
    const auto top = [&](int t) {
      cp_async_wait<0>();   // K_t and V_(t−1), this thread's copies ...
      fence_proxy_async();  // ... visible to wgmma after the barrier
      __syncthreads();
      const int j0 = t * kBc;
      if (t + 1 < n_tiles) {
        const int64_t next = kv_off + static_cast<int64_t>(j0 + kBc) * D;
        issue_tile_sw128<D>(Ks + ((t + 1) & 1) * 2 * kTile, k + next, kBc, k_end - j0 - kBc);
      }
      if (t >= 1 && t < n_tiles) {  // V_t (V_0 came with Q and K_0)
        issue_tile_sw128<D>(Ks + (t & 1) * 2 * kTile + kTile, v + kv_off + static_cast<int64_t>(j0) * D, kBc,
                            k_end - j0);
      }
      cp_async_commit();
    };
    int t = 0;
    if (n_g > 0) {
      top(0);  // tile 0: S only (O is zero, no rescale)
      float s[kBc / 8][4];
      issue_s(0, s);
      wgmma_wait<0>();
      wg_fence_operands(s);
      float alpha[2];
      softmax_tile_b2_p(s, m, l, alpha, d, 0, w_all, row0, row1, tq, c2);
      make_p(s);
      for (t = 1; t < n_g; ++t) {
        top(t);
        issue_s(t, s);
        issue_pv(t - 1);
        wgmma_wait<1>();  // S_t (the PV in flight)
        wg_fence_operands(s);
        softmax_tile_b2_p(s, m, l, alpha, d, t * kBc, w_all, row0, row1, tq, c2);
        wgmma_wait<0>();  // PV_(t−1)
        wg_fence_operands(oacc);
        wg_fence_operands(pa);
        rescale_rows<D>(oacc, alpha);
        make_p(s);
      }
      top(n_g);  // the last PV
      issue_pv(n_g - 1);
      wgmma_wait<0>();
      wg_fence_operands(oacc);
      t = n_g + 1;
    }
    for (; t <= n_tiles; ++t) top(t);  // the other warpgroup's tiles: copies and barriers
  }
  cp_async_wait<0>();

  const float m_nat[2] = {m[0] * d.scale, m[1] * d.scale};
  store_fwd_rows<D>(o, lse, bh, d, row0, tq, oacc, l, m_nat);
}

// attn_fwd_ws (SOMNUS_ATTN_FWD=wgmma_ws; written 2026-11-27 without a GPU, passed on an H100 the
// same day; its persistent form is the default on sm_90a): the pipelined forward (attn_fwd_wg<D, true>: 128-key tiles, each tile's
// P V on the tensor cores while the next tile's softmax runs) with FA3's warp specialization.
// A block is 12 warps: warps 0–7 are the two consumer warpgroups (64 query rows each, as in
// attn_fwd_wg), warps 8–11 the producer warpgroup, whose first thread loads Q and the K and V
// tiles into rings of kWsStages slots with TMA (cp.async.bulk.tensor: one instruction per
// 64-column panel, the 128-byte swizzle done by the copy engine, rows past T or S read as 0).
// Each slot has a "full"
// mbarrier (the producer's arrival with the tile's bytes; the copy counts them down) and an
// "empty" one (the 256 consumer threads arrive once their wgmma reading the slot has retired:
// K after S = Q Kᵀ, V after O += P V). So the two warpgroups no longer meet at a block barrier
// per tile, no consumer instruction is spent on copies, and the producer runs up to kWsStages
// tiles ahead. K and V have rings of their own (S_t needs K_t when P V needs V_(t−1)), and the
// producer loads K one tile ahead of V (K_(t+1) before V_t, as FA3: K_(t+1) then waits only for
// S_(t−1), not for P V of tile t − 2). Tiles are whole 128-key boxes: keys in [k_end, S) of the
// last one are loaded (TMA zero-fills only past S) and weighted by p = 0, so an Inf or NaN
// stored there would reach O, where wgmma_pipe's copies zero-fill from k_end.
// Phases: slot s of a ring serves tiles s, s + kWsStages, ...; the n-th use (n = t / kWsStages)
// waits for its full barrier's phase of parity n & 1, and the producer, before the n-th load
// (n ≥ 1), for its empty barrier's phase of parity (n − 1) & 1. Every consumer thread waits for
// every tile of the block, also the tiles no row of its warpgroup sees (arriving at once): the
// empty barriers count both warpgroups, and no copy may still be landing when the block exits.
// Registers: 384 threads, one block per SM; the launch gives each 168, then setmaxnreg moves
// them: the producer warpgroup gives back all but 24, the consumers take 240 (an SM
// sub-partition holds one warp of each warpgroup: 24 + 2 · 240 ≤ 512 per lane of its 64 KiB
// register file); ptxas allocates the consumer code with up to 201 (192 with ping-pong) at
// D = 128, the producer's with 16, no spill. Shared memory: Q, 2 × kWsStages tiles (160 / 80 KiB at D = 128 / 64) and
// 10 barriers.
// Expected (prediction, not measured): above wgmma_pipe — the copy issue leaves the consumers'
// instruction stream and the block barrier goes: 400–500 TFLOP/s at causal D = 128, T = 4k on
// an H100. With kPingPong this is FA3's forward structure (warp specialization, ping-pong,
// softmax overlapped with the previous tile's P V), for which FA3 reports ~600 TFLOP/s (with
// persistent blocks, as wgmma_persist, and TMA stores of O, which these kernels do not have).
// Work items (query tile, (b, h)) are taken longest first: a grid of one block per item
// (wgmma_ws, wgmma_wspp), or persistent blocks, one per SM (SOMNUS_ATTN_FWD=wgmma_persist, with
// ping-pong), each running items blockIdx.x, blockIdx.x + gridDim.x, ... with its rings, phases
// and turns continuing from item to item: the producer loads the next item's Q (once both
// warpgroups' last S of the item has retired: the Q-empty barrier) and first K/V tiles while the
// consumers finish and store the last item (FA3's persistent scheduling; static, no atomics).
// kPingPong (SOMNUS_ATTN_FWD=wgmma_wspp): the two consumer warpgroups take turns at issuing
// their products (named barriers 1 and 2, FA3's ping-pong), so that one's softmax runs while the
// other's products run, instead of both issuing at once and both waiting on their softmax; both
// warpgroups then compute every tile of a work item (the turns must pair up).
constexpr int kWsStages = 2;
constexpr int kWsThreads = kWgWarps * 32 + 128;  // two consumer warpgroups + the producer warpgroup
constexpr int kWsBars = 2 + 4 * kWsStages;        // Q full, Q empty; K full, K empty, V full, V empty per slot
// Registers per thread after setmaxnreg (the launch gives 168 to each of the 384 threads; an
// SM sub-partition's 16384 hold one producer and two consumer warps: 32 · (24 + 2 · 240) = 16128).
constexpr int kWsProducerRegs = 24, kWsConsumerRegs = 240;
// setmaxnreg.inc waits until the pool has the registers: counts beyond what the launch gives
// (168 per thread: 65536 / 384, rounded down to a multiple of 8) would hang, which no test on
// the CPU can see.
static_assert(kWsProducerRegs % 8 == 0 && kWsConsumerRegs % 8 == 0 && kWsProducerRegs >= 24 && kWsConsumerRegs <= 256);
static_assert(128 * kWsProducerRegs + kWgWarps * 32 * kWsConsumerRegs <= kWsThreads * ((65536 / kWsThreads) & ~7),
              "attn_fwd_ws: the warpgroups ask for more registers than the launch gives");

template <int D>
constexpr int ws_smem_bytes() {
  return (kWgBr + 2 * kWsStages * kWgPipeBc) * D * 2 + 8 * kWsBars + 1024;  // + slack to align to 1024
}

template <int D, bool kPingPong>
__global__ void __launch_bounds__(kWsThreads, 1) attn_fwd_ws(const __grid_constant__ CUtensorMap tm_q,
                                                          const __grid_constant__ CUtensorMap tm_k,
                                                          const __grid_constant__ CUtensorMap tm_v,
                                                          uint16_t* __restrict__ o, float* __restrict__ lse,
                                                          AttnDims d) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kBc = kWgPipeBc;
  constexpr uint32_t kTileBytes = kBc * D * 2;  // one K or V tile
  constexpr uint32_t kQBytes = kWgBr * D * 2;
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t sq = (raw + 1023u) & ~1023u;  // Q; panels (and tiles) 1024-byte aligned
  const uint32_t sk = sq + kQBytes, sv = sk + kWsStages * kTileBytes, sbar = sv + kWsStages * kTileBytes;
  // Barriers: Q full, Q empty, then per ring slot K full, K empty, V full, V empty; t is a
  // position in the ring (the block's K/V tiles counted over its items).
  const uint32_t q_full = sbar, q_empty = sbar + 8u;
  const auto full_k = [&](int t) { return sbar + 8u * (2 + t % kWsStages); };
  const auto empty_k = [&](int t) { return sbar + 8u * (2 + kWsStages + t % kWsStages); };
  const auto full_v = [&](int t) { return sbar + 8u * (2 + 2 * kWsStages + t % kWsStages); };
  const auto empty_v = [&](int t) { return sbar + 8u * (2 + 3 * kWsStages + t % kWsStages); };
  const auto parity = [](int t) { return static_cast<uint32_t>((t / kWsStages) & 1); };
  const auto k_slot = [&](int t) { return sk + (t % kWsStages) * kTileBytes; };
  const auto v_slot = [&](int t) { return sv + (t % kWsStages) * kTileBytes; };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane >> 2, tq = lane & 3;
  // The block's work items: w = blockIdx.x, blockIdx.x + gridDim.x, ... < n_work, item w being
  // query tile n_qt − 1 − w / (B·Hq) of (b, h) = w % (B·Hq): the longest causal tiles first. One
  // item per block when the grid is n_work blocks; persistent blocks (a grid of one block per
  // SM) run several, their rings and phases continuing from item to item (g: the K/V tiles
  // the block has gone through, j: its items), and the producer loads the next item's Q and
  // first tiles while the consumers finish and store the last.
  const int n_qt = (d.T + kWgBr - 1) / kWgBr, n_bh = d.B * d.Hq, n_work = n_qt * n_bh;
  struct Item {
    int bh, kvh, q0, n_tiles;
  };
  const auto item = [&](int w) {
    Item it;
    it.bh = w % n_bh;
    it.kvh = (it.bh / d.Hq) * d.Hkv + (it.bh % d.Hq) / d.g;
    it.q0 = (n_qt - 1 - w / n_bh) * kWgBr;
    it.n_tiles = (d.visible(min(it.q0 + kWgBr, d.T) - 1) + kBc - 1) / kBc;
    return it;
  };

  if (threadIdx.x == 0) {
    mbar_init(q_full, 1);
    mbar_init(q_empty, kWgWarps * 32);
    for (int s = 0; s < kWsStages; ++s) {
      mbar_init(full_k(s), 1);
      mbar_init(empty_k(s), kWgWarps * 32);
      mbar_init(full_v(s), 1);
      mbar_init(empty_v(s), kWgWarps * 32);
    }
    mbar_init_fence();
  }
  __syncthreads();  // the last block-wide barrier: from here the roles meet only at mbarriers

  if (warp >= kWgWarps) {  // the producer warpgroup
    setmaxnreg_dec<kWsProducerRegs>();
    if (warp == kWgWarps && lane == 0) {
      int g = 0, j = 0;
      for (int w = blockIdx.x; w < n_work; w += gridDim.x, ++j) {
        const Item it = item(w);
        if (j > 0) mbar_wait(q_empty, (j - 1) & 1);  // the last item's Q no longer read
        mbar_arrive_expect_tx(q_full, kQBytes);
#pragma unroll
        for (int p = 0; p < D / 64; ++p) tma_load_3d(sq + p * (kWgBr * kSwRow), &tm_q, 64 * p, it.q0, it.bh, q_full);
        // Ring position r = g + t of the item's tile t.
        const auto load_k = [&](int t) {
          const int r = g + t;
          if (r >= kWsStages) mbar_wait(empty_k(r), parity(r) ^ 1u);  // S of ring tile r − kWsStages retired
          mbar_arrive_expect_tx(full_k(r), kTileBytes);
#pragma unroll
          for (int p = 0; p < D / 64; ++p) {
            tma_load_3d(k_slot(r) + p * (kBc * kSwRow), &tm_k, 64 * p, t * kBc, it.kvh, full_k(r));
          }
        };
        if (it.n_tiles > 0) load_k(0);
        for (int t = 0; t < it.n_tiles; ++t) {
          if (t + 1 < it.n_tiles) load_k(t + 1);  // K one tile ahead of V, as the consumers use them
          const int r = g + t;
          if (r >= kWsStages) mbar_wait(empty_v(r), parity(r) ^ 1u);  // P V of that ring tile retired
          mbar_arrive_expect_tx(full_v(r), kTileBytes);
#pragma unroll
          for (int p = 0; p < D / 64; ++p) {
            tma_load_3d(v_slot(r) + p * (kBc * kSwRow), &tm_v, 64 * p, t * kBc, it.kvh, full_v(r));
          }
        }
        g += it.n_tiles;
      }
    }
    return;
  }

  // The consumers: as attn_fwd_wg<D, true>'s loop, with the slots' barriers in place of the
  // per-tile block barrier and copies.
  setmaxnreg_inc<kWsConsumerRegs>();
  const int wg = warp / 4;
  const float c2 = d.scale * kLog2e;
  const uint32_t q_desc0 = sq + wg * 64 * kSwRow;
  // Ping-pong: a warpgroup issues its products (S_t, P_(t−1) V_(t−1)) only in its turn, waiting
  // at named barrier 1 + wg, and passes the turn to the other's barrier right after issuing, then
  // runs its softmax while the other's products run. Both warpgroups take n_c + 1 turns per item
  // (n_c equal in both); warpgroup 1 opens (passes warpgroup 0 its first turn) before the
  // block's first turn and warpgroup 0 takes the pass after warpgroup 1's last turn at the end,
  // so every bar.sync has exactly one bar.arrive of the other warpgroup's 128 threads.
  const auto turn_wait = [&] {
    if constexpr (kPingPong) named_bar_sync(1 + wg, 2 * 128);
  };
  const auto turn_pass = [&] {
    if constexpr (kPingPong) named_bar_arrive(2 - wg, 2 * 128);
  };
  bool opened = false;  // ping-pong: the turns have started (block-uniform)
  uint32_t pa[kBc / 16][4];
  int g = 0, j = 0;
  for (int w = blockIdx.x; w < n_work; w += gridDim.x, ++j) {
    const Item it = item(w);
    const int w0 = it.q0 + warp * 16;
    const int row0 = w0 + gr, row1 = row0 + 8;
    const int w_all = w0 < d.T ? d.visible(w0) : 0;
    const int g0 = it.q0 + wg * 64;
    const int g_end = g0 < d.T ? d.visible(min(g0 + 63, d.T - 1)) : 0;
    // The tiles this warpgroup computes: those some row of it sees (<= n_tiles); with ping-pong
    // all of the item's, so that both warpgroups take the same number of turns (a tile no row
    // sees adds p = 0: the masks; it happens only in items at T's end or with a q_offset).
    const int n_c = kPingPong ? it.n_tiles : (g_end + kBc - 1) / kBc;
    if constexpr (kPingPong) {
      if (!opened && n_c > 0) {
        opened = true;
        if (wg == 1) named_bar_arrive(1, 2 * 128);
      }
    }

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    float oacc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.f;

    mbar_wait(q_full, j & 1);  // Q (waited for by every consumer thread: no copy lands after the exit)
    int t = 0;
    if (n_c > 0) {
      float s[kBc / 8][4];
      float alpha[2];
      turn_wait();
      mbar_wait(full_k(g), parity(g));
      wg_issue_qk<D, kBc>(s, q_desc0, k_slot(g));
      turn_pass();
      wgmma_wait<0>();
      mbar_arrive(empty_k(g));
      wg_fence_operands(s);
      softmax_tile_b2_p(s, m, l, alpha, d, 0, w_all, row0, row1, tq, c2);
      wg_make_p(s, pa);
      for (t = 1; t < n_c; ++t) {
        const int r = g + t;
        turn_wait();
        mbar_wait(full_k(r), parity(r));
        wg_issue_qk<D, kBc>(s, q_desc0, k_slot(r));
        mbar_wait(full_v(r - 1), parity(r - 1));
        wg_issue_pv<D, kBc>(oacc, pa, v_slot(r - 1));
        turn_pass();
        wgmma_wait<1>();  // S_t (the P V in flight)
        mbar_arrive(empty_k(r));
        wg_fence_operands(s);
        softmax_tile_b2_p(s, m, l, alpha, d, t * kBc, w_all, row0, row1, tq, c2);
        wgmma_wait<0>();  // P_(t−1) V_(t−1)
        mbar_arrive(empty_v(r - 1));
        wg_fence_operands(oacc);
        wg_fence_operands(pa);
        rescale_rows<D>(oacc, alpha);
        wg_make_p(s, pa);
      }
      const int r = g + n_c - 1;
      turn_wait();
      mbar_wait(full_v(r), parity(r));  // the last P V
      wg_issue_pv<D, kBc>(oacc, pa, v_slot(r));
      turn_pass();
      wgmma_wait<0>();
      mbar_arrive(empty_v(r));
      wg_fence_operands(oacc);
    }
    mbar_arrive(q_empty);  // every S of this item retired (or none issued): Q may be replaced
    for (; t < it.n_tiles; ++t) {  // tiles no row of this warpgroup sees (no ping-pong): released at once
      mbar_wait(full_k(g + t), parity(g + t));
      mbar_arrive(empty_k(g + t));
      mbar_wait(full_v(g + t), parity(g + t));
      mbar_arrive(empty_v(g + t));
    }
    g += it.n_tiles;

    const float m_nat[2] = {m[0] * d.scale, m[1] * d.scale};
    store_fwd_rows<D>(o, lse, it.bh, d, row0, tq, oacc, l, m_nat);
  }
  if constexpr (kPingPong) {
    if (opened && wg == 0) named_bar_sync(1, 2 * 128);  // warpgroup 1's pass after its last turn
  }
}

// Whether the device code was built with wgmma (sm_90a) for the current device: a one-time
// probe per device (a build for sm_90 alone, or sm_80 code, answers no).
__global__ void wgmma_probe(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}
bool wgmma_built() {
  static std::atomic<int> cache[64];  // per device: 0 unknown, 1 no, 2 yes
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) return false;
  if (cache[dev].load() == 0) {
    Tensor flag = Tensor::zeros({1}, DType::i32, Device::cuda(dev));
    wgmma_probe<<<1, 1>>>(static_cast<int*>(flag.data_ptr()));
    CUDA_CHECK_LAUNCH();
    cache[dev].store(flag.item() != 0.0 ? 2 : 1);
  }
  return cache[dev].load() == 2;
}

// Whether one block of `kernel` (`threads` threads, `smem` bytes of dynamic shared memory) fits
// an SM of the current device, asking for the largest shared-memory carveout first; cached per
// device in `cache` (0 unknown, 1 no, 2 yes).
template <class Kernel>
bool one_block_fits(Kernel kernel, int threads, int smem, std::atomic<int> (&cache)[64]) {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) return false;
  if (cache[dev].load() == 0) {
    bool fits = smem <= max_dynamic_smem_bytes();
    if (fits) {
      CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                      static_cast<int>(cudaSharedmemCarveoutMaxShared)));
      int blocks = 0;
      CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem));
      fits = blocks >= 1;
    }
    cache[dev].store(fits ? 2 : 1);
  }
  return cache[dev].load() == 2;
}
// attn_fwd_wg<D, kPipe> (the synchronous kernel is built for two resident blocks, the pipelined
// one for one) and attn_fwd_ws<D, kPingPong>.
template <int D, bool kPipe>
bool wg_fits() {
  static std::atomic<int> cache[64];
  return one_block_fits(attn_fwd_wg<D, kPipe>, kWgWarps * 32, wg_smem_bytes<D, kPipe>(), cache);
}
template <int D, bool kPingPong>
bool ws_fits() {
  static std::atomic<int> cache[64];
  return one_block_fits(attn_fwd_ws<D, kPingPong>, kWsThreads, ws_smem_bytes<D>(), cache);
}

// cuTensorMapEncodeTiled, fetched once through the runtime (the build links no driver library).
using TensorMapEncode = PFN_cuTensorMapEncodeTiled_v12000;  // the ABI of the version asked for below
TensorMapEncode tensor_map_encoder() {
  static const TensorMapEncode fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || p == nullptr) {
      throw_error("attention (CUDA): the driver does not provide cuTensorMapEncodeTiled (TMA)");
    }
    return reinterpret_cast<TensorMapEncode>(p);
  }();
  return fn;
}
// The TMA map attn_fwd_ws reads a contiguous (heads, rows, D) bf16 tensor through: 3-D
// {D, rows, heads} (innermost first; strides in bytes), boxes of 64 columns × box_rows rows × 1
// head, 128-byte swizzled (the layout issue_tile_sw128 writes), out-of-range elements read as 0.
CUtensorMap bf16_panel_map(const void* base, int64_t heads, int64_t rows, int D, int box_rows) {
  CUtensorMap map;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(rows), static_cast<cuuint64_t>(heads)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(D) * 2, static_cast<cuuint64_t>(rows) * D * 2};
  const cuuint32_t box[3] = {64, static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t step[3] = {1, 1, 1};
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims,
                                          strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                          CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw_error("attention (CUDA): cuTensorMapEncodeTiled failed (error " + std::to_string(static_cast<int>(r)) +
                ") for a (" + std::to_string(heads) + ", " + std::to_string(rows) + ", " + std::to_string(D) +
                ") tensor");
  }
  return map;
}
// attn_fwd_ws's three maps: Q (B·Hq, T, D) in boxes of a block's kWgBr rows, K and V
// (B·Hkv, S, D) in tiles of kWgPipeBc keys.
struct WsMaps {
  CUtensorMap q, k, v;
};
template <int D>
WsMaps ws_maps(const void* q, const void* k, const void* v, const AttnDims& d) {
  return {bf16_panel_map(q, int64_t{d.B} * d.Hq, d.T, D, kWgBr), bf16_panel_map(k, int64_t{d.B} * d.Hkv, d.S, D, kWgPipeBc),
          bf16_panel_map(v, int64_t{d.B} * d.Hkv, d.S, D, kWgPipeBc)};
}

// The requested version of SOMNUS_ATTN_FWD or SOMNUS_ATTN_BWD: the variable's value, or "auto"
// where it is unset or empty.
std::string attn_version_env(const char* name) {
  const char* e = std::getenv(name);
  return e == nullptr || *e == '\0' ? "auto" : e;
}

// The bf16 forward version attention_fwd runs (SOMNUS_ATTN_FWD, the scale and the device):
// "wgmma", "wgmma_pipe", "wgmma_ws", "wgmma_wspp" or "wgmma_persist" (asked for, scale > 0,
// built for sm_90a and the block fits), "v3" (asked for, scale > 0 and v3_fits), "v1", "v2",
// or "mma" (asked for, or where nothing else runs). Unset ("auto", the default): the fastest
// that runs, as measured on an H100 on 2026-11-27 (bench/RESULTS.md) — wgmma_persist (causal D 128
// T 4k: 398 TFLOP/s; v3 243, mma 189), else v3, else mma.
template <int D>
const char* fwd_version(float scale) {
  const std::string want = attn_version_env("SOMNUS_ATTN_FWD");
  const bool autov = want == "auto", hopper = scale > 0.f && wgmma_built();
  if (want == "wgmma" && hopper && wg_fits<D, false>()) return "wgmma";
  if (want == "wgmma_pipe" && hopper && wg_fits<D, true>()) return "wgmma_pipe";
  if (want == "wgmma_ws" && hopper && ws_fits<D, false>()) return "wgmma_ws";
  if (want == "wgmma_wspp" && hopper && ws_fits<D, true>()) return "wgmma_wspp";
  if ((autov || want == "wgmma_persist") && hopper && ws_fits<D, true>()) return "wgmma_persist";
  if ((autov || want == "v3") && scale > 0.f && v3_fits<D>()) return "v3";
  if (want == "v1") return "v1";
  if (want == "v2") return "v2";
  return "mma";
}

// ---------------------------------------------------------------- backward (SIMT)

// Δ = rowsum(dO ∘ O): a warp per row.
template <class T, int D>
__global__ void attn_bwd_delta(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ delta,
                               int64_t rows) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  float s = 0.f;
#pragma unroll
  for (int e = 0; e < D / 32; ++e) s += to_f(o[row * D + lane + 32 * e]) * to_f(dout[row * D + lane + 32 * e]);
  s = warp_allreduce_sum(s);
  if (lane == 0) delta[row] = s;
}

constexpr int kKeyWarps = 8;  // keys per dK/dV block

// grid (ceil(S / 8), B·Hkv); a warp per key j holds k_j, v_j, dk_j, dv_j (D/32 per lane).
// Every warp walks the same query rows (those that see the block's first key), so that the
// dQ contributions of the block's 8 keys are summed in shared memory before the f32 atomics
// (dq_acc null: deterministic mode, dQ comes from attn_bwd_dq).
template <class T, int D>
__global__ void __launch_bounds__(kKeyWarps * 32) attn_bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k,
                                                              const T* __restrict__ v, const T* __restrict__ dout,
                                                              const float* __restrict__ lse,
                                                              const float* __restrict__ delta, T* __restrict__ dk,
                                                              T* __restrict__ dv, float* __restrict__ dq_acc,
                                                              AttnDims d) {
  constexpr int E = D / 32;
  __shared__ float red[kKeyWarps][D];
  const int bkv = blockIdx.y, b = bkv / d.Hkv, hkv = bkv % d.Hkv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int j0 = static_cast<int>(blockIdx.x) * kKeyWarps, j = j0 + warp;
  const bool key_ok = j < d.S;
  const int64_t krow = (static_cast<int64_t>(bkv) * d.S + (key_ok ? j : 0)) * D;
  float kv[E], vv[E], dkv[E], dvv[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    kv[e] = to_f(k[krow + lane + 32 * e]);
    vv[e] = to_f(v[krow + lane + 32 * e]);
    dkv[e] = dvv[e] = 0.f;
  }
  const int i_first = d.causal ? max(0, j0 - d.q_offset) : 0;
  for (int hg = 0; hg < d.g; ++hg) {
    const int64_t bh = static_cast<int64_t>(b) * d.Hq + hkv * d.g + hg;
    for (int i = i_first; i < d.T; ++i) {
      const int64_t row = bh * d.T + i;
      const bool ok = key_ok && j < d.visible(i);  // warp-uniform
      float ds = 0.f;
      float qv[E];
#pragma unroll
      for (int e = 0; e < E; ++e) qv[e] = to_f(q[row * D + lane + 32 * e]);
      if (ok) {
        float gv[E], s = 0.f, dp = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          gv[e] = to_f(dout[row * D + lane + 32 * e]);
          s += qv[e] * kv[e];
          dp += gv[e] * vv[e];
        }
        s = warp_allreduce_sum(s);
        dp = warp_allreduce_sum(dp);
        const float p = __expf(d.scale * s - lse[row]);
        ds = mma_round<T>(p * (dp - delta[row]));
        const float pv = mma_round<T>(p);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          dvv[e] += pv * gv[e];
          dkv[e] += d.scale * ds * qv[e];
        }
      }
      if (dq_acc != nullptr) {
#pragma unroll
        for (int e = 0; e < E; ++e) red[warp][lane + 32 * e] = d.scale * ds * kv[e];
        __syncthreads();
        for (int x = threadIdx.x; x < D; x += blockDim.x) {
          float t = 0.f;
#pragma unroll
          for (int w = 0; w < kKeyWarps; ++w) t += red[w][x];
          if (t != 0.f) atomicAdd(dq_acc + row * D + x, t);
        }
        __syncthreads();
      }
    }
  }
  if (!key_ok) return;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    dk[krow + lane + 32 * e] = static_cast<T>(dkv[e]);
    dv[krow + lane + 32 * e] = static_cast<T>(dvv[e]);
  }
}

// Deterministic dQ: grid (ceil(T / 4), B·Hq), a warp per query row, keys in order.
template <class T, int D>
__global__ void __launch_bounds__(kRowWarps * 32) attn_bwd_dq(const T* __restrict__ q, const T* __restrict__ k,
                                                            const T* __restrict__ v, const T* __restrict__ dout,
                                                            const float* __restrict__ lse,
                                                            const float* __restrict__ delta, T* __restrict__ dq,
                                                            AttnDims d) {
  constexpr int E = D / 32;
  __shared__ float Ks[kSimtBc][D];
  __shared__ float Vs[kSimtBc][D];
  const int bh = blockIdx.y, b = bh / d.Hq, h = bh % d.Hq;
  const int64_t kvh = static_cast<int64_t>(b) * d.Hkv + h / d.g;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int i = static_cast<int>(blockIdx.x) * kRowWarps + warp;
  const int last = min((static_cast<int>(blockIdx.x) + 1) * kRowWarps, d.T) - 1;
  const int k_end = d.visible(last);
  const int my_end = i < d.T ? d.visible(i) : 0;
  const int64_t row = static_cast<int64_t>(bh) * d.T + (i < d.T ? i : 0);
  float qv[E], gv[E], acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    qv[e] = to_f(q[row * D + lane + 32 * e]);
    gv[e] = to_f(dout[row * D + lane + 32 * e]);
    acc[e] = 0.f;
  }
  const float lse_i = lse[row], delta_i = delta[row];
  for (int j0 = 0; j0 < k_end; j0 += kSimtBc) {
    __syncthreads();
    for (int c = threadIdx.x; c < kSimtBc * D; c += blockDim.x) {
      const int r = c / D, x = c % D, j = j0 + r;
      Ks[r][x] = j < k_end ? to_f(k[(kvh * d.S + j) * D + x]) : 0.f;
      Vs[r][x] = j < k_end ? to_f(v[(kvh * d.S + j) * D + x]) : 0.f;
    }
    __syncthreads();
    const int n = min(kSimtBc, my_end - j0);
    for (int r = 0; r < n; ++r) {
      float s = 0.f, dp = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        s += qv[e] * Ks[r][lane + 32 * e];
        dp += gv[e] * Vs[r][lane + 32 * e];
      }
      s = warp_allreduce_sum(s);
      dp = warp_allreduce_sum(dp);
      const float p = __expf(d.scale * s - lse_i);
      const float ds = mma_round<T>(p * (dp - delta_i));
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] += d.scale * ds * Ks[r][lane + 32 * e];
    }
  }
  if (i >= d.T) return;
#pragma unroll
  for (int e = 0; e < E; ++e) dq[row * D + lane + 32 * e] = static_cast<T>(acc[e]);
}

template <class T>
__global__ void cast_from_f32(const float* __restrict__ x, T* __restrict__ y, int64_t n) {
  SOMNUS_GRID_STRIDE(i, n) { y[i] = static_cast<T>(x[i]); }
}

// ================================================================ tensor-core backward
//
// The attention backward on tensor cores (mma.sync.m16n8k16, bf16 -> f32), D ∈ {64, 128}:
// FlashAttention-2's backward. The entry point attention_bwd computes Δ = rowsum(dO ∘ O)
// first and then calls attention_bwd_mma for bf16 inputs (unless SOMNUS_ATTN_BWD=simt selects the SIMT kernels);
// in the atomic mode it casts the f32 dQ accumulator to bf16 afterwards.
//
// Math (per query head, p = exp(scale·q·k − lse), lse of the scaled scores):
//   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − Δ),  dK = scale · dSᵀ Q,  dQ = scale · dS K.
// P and dS are rounded to bf16 where they feed an mma (the CPU twin's mma_round); dS is
// formed from the f32 P.
//
// Kernels (4 warps, shared-memory rows padded by 8 elements against bank conflicts; the
// fragment layouts are attn_fwd_mma's: A from row-major rows r / r + 8, columns c / c + 8
// (32-bit shared loads, or the C fragments of a previous product); B by ldmatrix.x4, two
// n-tiles at a time, from the rows of the operand's transpose (S, dP) or transposed by
// .trans from the operand's rows (dV, dK, dQ); C rows gr / gr + 8, columns 2·tq, 2·tq + 1).
// The dK/dV kernel prefetches the next (Q, dO) tile with cp.async while it computes one.
// SOMNUS_ATTN_BWD=v2 drops the prefetch, v1 also ldmatrix (B as 32-bit pairs, or two 16-bit
// loads per register; the first version), simt selects the SIMT kernels (above):
//   attn_bwd_dkdv_mma  grid (S / 64, B·Hkv): a block owns 64 keys of one kv head (16 per
//                      warp), K_j, V_j in shared memory and dK_j, dV_j in f32 registers. It
//                      loops over the g query heads of the GQA group and the 64-row query tiles
//                      that see its first key (causal: rows i with q_offset + i >= j0), each:
//                      Sᵀ = K Qᵀ, Pᵀ (masked: rows >= T, keys past visible(i)), dV += Pᵀ dO
//                      (Pᵀ from the S accumulators as the A operand), dPᵀ = V dOᵀ, dSᵀ,
//                      dK += dSᵀ Q; in the atomic mode dS goes to shared memory (query-major)
//                      and dQ_i += dS K_j (64 × D, 16 query rows per warp) is added to the f32
//                      accumulator with atomics. Each dK, dV row is written once (bf16), also
//                      the zero rows of keys no query sees.
//   attn_bwd_dq_mma    deterministic mode: grid (T / 64, B·Hq), 16 query rows per warp; key
//                      tiles in a fixed order, recomputing S = Q Kᵀ, dP = dO Vᵀ, dS and
//                      dQ += dS K in registers, then written as bf16. No atomics anywhere.
// SOMNUS_ATTN_BWD=v3 (kV3; see bwd_mma_version) changes both kernels: p in base 2, the
// mask only on tiles some row does not see whole, ldmatrix A fragments, dSᵀ key-major, and the
// dQ kernel's K/V tiles double-buffered with cp.async (6 tiles: 102 KiB at D = 128);
// SOMNUS_ATTN_BWD=v4 also gives the dK/dV kernel 8 warps = 128 keys a block (kWarps; 155 KiB
// of shared memory at D = 128, 90 KiB at D = 64).
// Shared memory: dkdv 6 · 64 · (D + 8) · 2 + 64 · 72 · 2 + 1024 bytes (112 KiB at D = 128,
// two blocks a SM; 65.5 KiB at D = 64; without the prefetch 77.5 / 45.5 KiB); dq
// 4 · 64 · (D + 8) · 2 (68 KiB / 36 KiB).
//
// Cost: FLOPs (the convention of the benchmarks) 10·B·Hq·T·S·D (five GEMMs of 2·T·S·D), about
// half of it causal. Executed: the atomic mode does exactly those five; the deterministic mode
// 14·B·Hq·T·S·D (S and dP are recomputed by the dQ pass). Minimum bytes: read q, k, v, dO
// (bf16) and lse, Δ (f32), write dq, dk, dv (bf16): 2·(3·B·Hq·T·D + 4·B·Hkv·S·D) + 8·B·Hq·T,
// plus 8·B·Hq·T·D for the f32 dQ accumulator's zero fill, reads and cast in the atomic mode.
// At B·Hq = B·Hkv = 32, T = S = 4096, D = 128, causal: 0.34 TFLOP against 0.24 GB (+0.13 GB
// atomic): ~1400 FLOP/byte, compute bound (the atomic dQ's L2 traffic, 4·D bytes per query
// row and key tile, ~2.2 GB here, is served by L2 atomics, not HBM).
// Predicted: 60–120 TFLOP/s on an H100 (the forward's mma.sync v1 kernel ran 61–125; only
// two blocks of four warps fit an SM at D = 128 (255 registers a thread), the A fragments of
// K, V (dkdv) and Q, dO (dq) are reloaded for every tile, and the atomic dQ adds 64·D f32
// atomics (as float2 on sm_90) per (query tile, key tile): latency and shared-load bound, not
// at the tensor-core peak; v1 lower, ~40–80).
// Measured (H100, 2026-11-26, B·T = 16k, H·D = 2048): default 64–110 TFLOP/s at D = 64 and
// 79–159 at D = 128 (causal T = 4096: 105 / 138; v2 87 / 108, v1 106 / 101; the SIMT kernels
// 4.7 / 6.5): 0.44–0.80× of PyTorch SDPA's flash backward at the same shapes.
//
// Checked without a GPU (2026-11-26) by a host emulation of all three versions (128 threads a
// block, mma.sync / ldmatrix from the PTX fragment layouts, cp.async completing at the wait)
// against an f64 reference on the test's cases; the same emulation reproduces the forward.

// p[0] += a, p[1] += b atomically (p 8-byte aligned): one vector atomic on sm_90, two scalar
// ones before.
__device__ __forceinline__ void atomic_add2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// Pᵀ in base 2 from the Sᵀ accumulators of the backward's base-2 versions (v3, v4, wgmma):
// s[nt][0..1] key key0, s[nt][2..3] key key1, queries i0 + nt·8 + 2·tq (+1); p = 2^(s·c2 −
// lse₂[query]), 0 for rows past T and keys a row does not see (keys past S included). `whole`
// (block-uniform): every row of the tile sees every key of the block, no per-element mask.
__device__ __forceinline__ void p_tile_b2(float (&s)[8][4], bool whole, const AttnDims& d, int i0, int key0,
                                          int key1, int tq, float c2, const float* lse_s) {
  if (whole) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = ex2_approx(fmaf(s[nt][e], c2, -lse_s[nt * 8 + 2 * tq + (e & 1)]));
    }
  } else {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = nt * 8 + 2 * tq + (e & 1), row = i0 + qi;
        const bool ok = row < d.T && (e < 2 ? key0 : key1) < d.visible(row);
        s[nt][e] = ok ? ex2_approx(fmaf(s[nt][e], c2, -lse_s[qi])) : 0.f;
      }
    }
  }
}

// A staged query tile's lse (base 2, as the base-2 backward kernels v3, v4 and wgmma use it) and
// Δ for row i0 + threadIdx.x (threads < kRows; 0 past T): loaded into registers with the tile's
// copies and stored to shared memory later (buffer buf of kRows floats each), so that a barrier
// right after the copies' issue does not wait for these loads (reviewwg2).
template <int kRows>
struct TileStats {
  float lse = 0.f, del = 0.f;
  __device__ __forceinline__ void load(const float* __restrict__ lse_g, const float* __restrict__ delta_g,
                                       int64_t row, int i0, int T) {
    const int r = threadIdx.x;
    const bool ok = r < kRows && i0 + r < T;
    lse = ok ? lse_g[row + r] * kLog2e : 0.f;
    del = ok ? delta_g[row + r] : 0.f;
  }
  __device__ __forceinline__ void store(float* lse_b, float* del_b, int buf) const {
    if (threadIdx.x < kRows) {
      lse_b[buf * kRows + threadIdx.x] = lse;
      del_b[buf * kRows + threadIdx.x] = del;
    }
  }
};

// The dK/dV kernels' epilogue: this thread's key rows key0 and key1 (< S only) of dK (scaled)
// and dV, columns 8n + 2·tq (+1), as bf16 pairs; dkh, dvh point at the kv head's (S, D) rows.
template <int D>
__device__ __forceinline__ void store_dkdv_rows(uint16_t* dkh, uint16_t* dvh, int key0,
                                                int key1, const AttnDims& d, int tq, const float (&dka)[D / 8][4],
                                                const float (&dva)[D / 8][4]) {
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int col = n * 8 + 2 * tq;
    if (key0 < d.S) {
      *reinterpret_cast<uint32_t*>(dkh + static_cast<int64_t>(key0) * D + col) =
          pack_bf16(d.scale * dka[n][0], d.scale * dka[n][1]);
      *reinterpret_cast<uint32_t*>(dvh + static_cast<int64_t>(key0) * D + col) = pack_bf16(dva[n][0], dva[n][1]);
    }
    if (key1 < d.S) {
      *reinterpret_cast<uint32_t*>(dkh + static_cast<int64_t>(key1) * D + col) =
          pack_bf16(d.scale * dka[n][2], d.scale * dka[n][3]);
      *reinterpret_cast<uint32_t*>(dvh + static_cast<int64_t>(key1) * D + col) = pack_bf16(dva[n][2], dva[n][3]);
    }
  }
}

constexpr int kBwdWarps = 4;
constexpr int kBwdTile = 16 * kBwdWarps;  // 64 keys per dK/dV block, 64 query rows per tile
constexpr int kDsLd = kBwdTile + 8;       // row stride of the dS tile (query-major)

// K, V (`keys` rows each), then 1 or 2 (kPipe) buffers of (Q, dO) tiles, the dS tile (`keys`
// rows: key-major in v3/v4; 64 rows query-major before), 1 or 2 buffers of lse, Δ.
template <int D>
constexpr int dkdv_smem_bytes(bool pipe, int keys = kBwdTile) {
  return 2 * keys * (D + 8) * 2 + (pipe ? 4 : 2) * kBwdTile * (D + 8) * 2 + keys * kDsLd * 2 +
         (pipe ? 4 : 2) * kBwdTile * 4;
}

template <int D>
constexpr int dq_smem_bytes(bool v3 = false) {
  return (v3 ? 6 : 4) * kBwdTile * (D + 8) * 2;  // Q, dO, 1 or 2 (v3) buffers of (K, V)
}

__device__ __forceinline__ uint32_t ld32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// acc[nt] (16 × 8 each, nt < 8) += A Bᵀ over D: A rows ra, ra + 8 of `a` (row-major, stride
// D + 8), B = the 64 rows of `bt` (row-major, the transpose of the B operand). kLdsm: the B
// fragments of two n-tiles by one ldmatrix.x4 (matrices (n-tile, k-half) = (0,0), (0,1),
// (1,0), (1,1)) instead of 32-bit loads. kLdsmA (the v3 backward): A's fragment by one
// ldmatrix.x4 too (matrices rows +0 / +8 of the warp's 16, columns +0 / +8: a0..a3) instead of
// four 32-bit loads.
template <int D, bool kLdsm, bool kLdsmA = false>
__device__ __forceinline__ void mma_abt(float (&acc)[8][4], const uint16_t* a, int ra, const uint16_t* bt, int gr,
                                        int tq) {
  constexpr int LD = D + 8;
  const int lane = threadIdx.x % 32, lmat = lane >> 3, lrow = lane & 7;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int c = kk * 16 + 2 * tq;
    uint32_t a0, a1, a2, a3;
    if constexpr (kLdsmA) {
      uint32_t af[4];
      ldsm_x4<false>(af, a + (ra - gr + (lmat & 1) * 8 + lrow) * LD + kk * 16 + (lmat >> 1) * 8);
      a0 = af[0];
      a1 = af[1];
      a2 = af[2];
      a3 = af[3];
    } else {
      a0 = ld32(a + ra * LD + c);
      a1 = ld32(a + (ra + 8) * LD + c);
      a2 = ld32(a + ra * LD + c + 8);
      a3 = ld32(a + (ra + 8) * LD + c + 8);
    }
    if constexpr (kLdsm) {
#pragma unroll
      for (int nt = 0; nt < 8; nt += 2) {
        uint32_t bf[4];
        ldsm_x4<false>(bf, bt + (nt * 8 + (lmat >> 1) * 8 + lrow) * LD + kk * 16 + (lmat & 1) * 8);
        mma_bf16(acc[nt], a0, a1, a2, a3, bf[0], bf[1]);
        mma_bf16(acc[nt + 1], a0, a1, a2, a3, bf[2], bf[3]);
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const uint16_t* br = bt + (nt * 8 + gr) * LD + c;
        mma_bf16(acc[nt], a0, a1, a2, a3, ld32(br), ld32(br + 8));
      }
    }
  }
}

// The B fragments (b0, b1) of n-tiles n and n + 1 for k-step kk of B = rows × D of `b`
// (row-major, stride D + 8): kLdsm: one ldmatrix.x4.trans (matrices (k-half, n-tile) = (0,0),
// (1,0), (0,1), (1,1)); otherwise two 16-bit loads per register.
template <int D, bool kLdsm>
__device__ __forceinline__ void load_b_pair(uint32_t (&bf)[4], const uint16_t* b, int kk, int n, int gr, int tq) {
  constexpr int LD = D + 8;
  if constexpr (kLdsm) {
    const int lane = threadIdx.x % 32, lmat = lane >> 3, lrow = lane & 7;
    ldsm_x4<true>(bf, b + (kk * 16 + (lmat & 1) * 8 + lrow) * LD + n * 8 + (lmat >> 1) * 8);
  } else {
    const int kr = kk * 16 + 2 * tq;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int col = (n + h) * 8 + gr;
      bf[2 * h] = pack_u16(b[kr * LD + col], b[(kr + 1) * LD + col]);
      bf[2 * h + 1] = pack_u16(b[(kr + 8) * LD + col], b[(kr + 9) * LD + col]);
    }
  }
}

// acc[n] (16 × 8 each, n < D/8) += X B: X (16 × 64) from the C fragments x[nt] of a previous
// product (rounded to bf16: the C layout of n-tiles 2kk, 2kk + 1 is the A layout of k-step
// kk), B = 64 rows × D of `b` (row-major, stride D + 8), see load_b_pair.
template <int D, bool kLdsm>
__device__ __forceinline__ void mma_cb(float (&acc)[D / 8][4], const float (&x)[8][4], const uint16_t* b, int gr,
                                       int tq) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t a0, a1, a2, a3;
    p_frag(x, kk, a0, a1, a2, a3);
#pragma unroll
    for (int n = 0; n < D / 8; n += 2) {
      uint32_t bf[4];
      load_b_pair<D, kLdsm>(bf, b, kk, n, gr, tq);
      mma_bf16(acc[n], a0, a1, a2, a3, bf[0], bf[1]);
      mma_bf16(acc[n + 1], a0, a1, a2, a3, bf[2], bf[3]);
    }
  }
}

__device__ __forceinline__ uint16_t bf16_bits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

// ---------------------------------------------------------------- dK, dV (and atomic dQ)

// Registers: D = 128 needs ~255 a thread (the f32 dK, dV accumulators, 2 · 64, besides Sᵀ and
// dPᵀ, 2 · 32), so two blocks a SM; D = 64 ~200 (a bound of 170 for three blocks spills).
// The block's work is a sequence of `total` query tiles (it = hg · n_i + tile), so kPipe
// (cp.async double buffering of Q, dO, with lse, Δ) prefetches across the GQA heads too.
// kWarps (v4: 8, needs kV3): warps per block = 16·kWarps keys per block, so each (Q, dO) tile
// and each dQ atomic serves twice the keys; the dQ product is split over the warps as 4 groups
// of 16 query rows × kWarps / 4 groups of D columns.
template <int D, bool kLdsm, bool kPipe, bool kV3 = false, int kWarps = kBwdWarps>
__global__ void __launch_bounds__(kWarps * 32) attn_bwd_dkdv_mma(
    const uint16_t* __restrict__ q, const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
    const uint16_t* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
    uint16_t* __restrict__ dk, uint16_t* __restrict__ dv, float* __restrict__ dq_acc, AttnDims d) {
  static_assert(kWarps == kBwdWarps || (kWarps == 8 && kV3), "8-warp blocks build on v3");
  static_assert(kWarps * 32 >= kBwdTile, "a thread per row of a tile stages its lse and Δ (v3)");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int LD = D + 8;
  constexpr int kBufs = kPipe ? 2 : 1;
  constexpr int kKeys = 16 * kWarps;  // keys per block
  uint16_t* Ks = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* Vs = Ks + kKeys * LD;
  uint16_t* QGb = Vs + kKeys * LD;                 // kBufs × (Q tile, dO tile)
  uint16_t* Ss = QGb + kBufs * 2 * kBwdTile * LD;  // dS: [query][key] (default) or [key][query] (v3)
  float* lse_b = reinterpret_cast<float*>(Ss + kKeys * kDsLd);  // kBufs × 64
  float* del_b = lse_b + kBufs * kBwdTile;                         // kBufs × 64

  const int bkv = blockIdx.y, b = bkv / d.Hkv, hkv = bkv % d.Hkv;
  const int j0 = static_cast<int>(blockIdx.x) * kKeys;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane >> 2, tq = lane & 3;
  const int kr = warp * 16 + gr;  // this thread's key rows kr, kr + 8 (within the tile)
  const int key0 = j0 + kr, key1 = key0 + 8;
  const int64_t kv_base = static_cast<int64_t>(bkv) * d.S * D;

  load_tile_bf16<D>(Ks, k + kv_base + static_cast<int64_t>(j0) * D, kKeys, d.S - j0);
  load_tile_bf16<D>(Vs, v + kv_base + static_cast<int64_t>(j0) * D, kKeys, d.S - j0);

  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.f;
  }

  const int i_first = d.causal ? max(0, j0 - d.q_offset) : 0;  // the first row that sees key j0
  const int n_i = i_first < d.T ? (d.T - i_first + kBwdTile - 1) / kBwdTile : 0;  // tiles a head
  const int total = d.g * n_i;
  // Q, dO (async or not), lse and Δ (plain loads) of tile `it` into buffer `buf`. v3/v4 with the
  // async copies: lse and Δ into next_stats, stored at the end of the iteration (TileStats).
  TileStats<kBwdTile> next_stats;
  const auto stage = [&](int it, int buf, bool async) {
    const int i0 = i_first + (it % n_i) * kBwdTile;
    const int64_t row = (static_cast<int64_t>(b) * d.Hq + hkv * d.g + it / n_i) * d.T + i0;
    uint16_t* Qd = QGb + buf * 2 * kBwdTile * LD;
    if (async) {
      issue_tile_bf16<D>(Qd, q + row * D, kBwdTile, d.T - i0);
      issue_tile_bf16<D>(Qd + kBwdTile * LD, dout + row * D, kBwdTile, d.T - i0);
      cp_async_commit();
    } else {
      load_tile_bf16<D>(Qd, q + row * D, kBwdTile, d.T - i0);
      load_tile_bf16<D>(Qd + kBwdTile * LD, dout + row * D, kBwdTile, d.T - i0);
    }
    if constexpr (kV3) {  // blockDim.x >= kBwdTile
      // v3 keeps lse in base 2 (lse · log2 e), so that p = 2^(s · scale · log2 e − lse₂).
      next_stats.load(lse, delta, row, i0, d.T);
      if (!async) next_stats.store(lse_b, del_b, buf);
    } else {
      for (int r = threadIdx.x; r < kBwdTile; r += blockDim.x) {
        const bool ok = i0 + r < d.T;
        lse_b[buf * kBwdTile + r] = ok ? lse[row + r] : 0.f;
        del_b[buf * kBwdTile + r] = ok ? delta[row + r] : 0.f;
      }
    }
  };
  const float c2 = d.scale * kLog2e;
  if (kPipe && total > 0) {
    stage(0, 0, true);
    if constexpr (kV3) next_stats.store(lse_b, del_b, 0);  // visible after the loop's first barrier
  }
  for (int it = 0; it < total; ++it) {
    const int buf = kPipe ? (it & 1) : 0;
    const int i0 = i_first + (it % n_i) * kBwdTile;
    const int64_t bh = static_cast<int64_t>(b) * d.Hq + hkv * d.g + it / n_i;
    if constexpr (kPipe) {
      // Tile it + 1 goes into the other buffer, read last by tile it − 1 (done: the barrier
      // at the end of the loop); then wait for tile it's own copies.
      if (it + 1 < total) {
        stage(it + 1, buf ^ 1, true);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();  // tile it (every thread's copies and lse, Δ stores) is visible
    } else {
      __syncthreads();  // the previous tile's Q, dO, dS, lse, Δ are no longer read
      stage(it, 0, false);
      __syncthreads();
    }
    {
      const uint16_t* Qs = QGb + buf * 2 * kBwdTile * LD;
      const uint16_t* Gs = Qs + kBwdTile * LD;  // dO
      const float* lse_s = lse_b + buf * kBwdTile;
      const float* del_s = del_b + buf * kBwdTile;

      // Sᵀ = K Qᵀ: 16 keys × 64 queries per warp. s[nt][0..1]: key kr, queries nt·8 + 2tq (+1);
      // s[nt][2..3]: key kr + 8.
      float s[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
      mma_abt<D, kLdsm, kV3>(s, Ks, kr, Qs, gr, tq);

      // Pᵀ, masked to 0 (rows past T, keys the row does not see, keys past S). v3: in base 2,
      // and without the per-element mask where every row of the tile sees every key of the
      // block (block-uniform: rows i0.. all < T and key j0 + 63 < visible(i0)).
      if constexpr (kV3) {
        p_tile_b2(s, i0 + kBwdTile <= d.T && j0 + kKeys <= d.visible(i0), d, i0, key0, key1, tq, c2, lse_s);
      } else {
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qi = nt * 8 + 2 * tq + (e & 1), row = i0 + qi;
            const int key = e < 2 ? key0 : key1;
            const bool ok = row < d.T && key < d.visible(row);
            s[nt][e] = ok ? __expf(d.scale * s[nt][e] - lse_s[qi]) : 0.f;
          }
        }
      }

      // dV += Pᵀ dO.
      mma_cb<D, kLdsm>(dva, s, Gs, gr, tq);

      // dPᵀ = V dOᵀ, then dSᵀ = Pᵀ ∘ (dPᵀ − Δ) in place.
      float dp[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
      mma_abt<D, kLdsm, kV3>(dp, Vs, kr, Gs, gr, tq);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[nt][e] = s[nt][e] * (dp[nt][e] - del_s[nt * 8 + 2 * tq + (e & 1)]);
      }

      // dK += dSᵀ Q (scaled at the end).
      mma_cb<D, kLdsm>(dka, dp, Qs, gr, tq);

      if (dq_acc != nullptr) {  // block-uniform
        // dS to shared memory, then dQ_i += scale · dS K_j: 16 query rows per warp. The default
        // stores dS query-major, one 16-bit store per element, and reads the A fragments with
        // 32-bit loads; v3 stores dSᵀ key-major as it lies in the accumulators (two adjacent
        // queries of one key: one 32-bit store) and reads the A fragments of dS back with
        // ldmatrix.trans (matrices keys +0 / +8 × queries +0 / +8 of the warp: a0, a1, a2, a3).
        // The dQ product's split: query rows qw·16.. (4 groups), n-tiles [n_lo, n_lo + kNGroup).
        constexpr int kNGroup = D / 8 / (kWarps / 4);
        const int qw = kWarps == 4 ? warp : warp % 4, n_lo = kWarps == 4 ? 0 : (warp / 4) * kNGroup;
        const int qr = qw * 16 + gr;  // this thread's query rows qr, qr + 8 (within the tile)
        uint32_t a[kKeys / 16][4];
        if constexpr (kV3) {
#pragma unroll
          for (int nt = 0; nt < 8; ++nt) {
            *reinterpret_cast<uint32_t*>(Ss + kr * kDsLd + nt * 8 + 2 * tq) = pack_bf16(dp[nt][0], dp[nt][1]);
            *reinterpret_cast<uint32_t*>(Ss + (kr + 8) * kDsLd + nt * 8 + 2 * tq) = pack_bf16(dp[nt][2], dp[nt][3]);
          }
          __syncthreads();
          const int lmat = lane >> 3, lrow = lane & 7;
#pragma unroll
          for (int kk = 0; kk < kKeys / 16; ++kk) {
            ldsm_x4<true>(a[kk], Ss + (kk * 16 + (lmat >> 1) * 8 + lrow) * kDsLd + qw * 16 + (lmat & 1) * 8);
          }
        } else {
#pragma unroll
          for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int qi = nt * 8 + 2 * tq + (e & 1);
              Ss[qi * kDsLd + kr + (e < 2 ? 0 : 8)] = bf16_bits(dp[nt][e]);
            }
          }
          __syncthreads();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) {
            const int c = kk * 16 + 2 * tq;
            a[kk][0] = ld32(Ss + qr * kDsLd + c);
            a[kk][1] = ld32(Ss + (qr + 8) * kDsLd + c);
            a[kk][2] = ld32(Ss + qr * kDsLd + c + 8);
            a[kk][3] = ld32(Ss + (qr + 8) * kDsLd + c + 8);
          }
        }
        const int row0 = i0 + qr, row1 = row0 + 8;
        float* dq0 = dq_acc + (bh * d.T + row0) * D;
        float* dq1 = dq0 + 8 * D;
#pragma unroll
        for (int n = n_lo; n < n_lo + kNGroup; n += 2) {
          float acc[2][4] = {};
#pragma unroll
          for (int kk = 0; kk < kKeys / 16; ++kk) {
            uint32_t bf[4];
            load_b_pair<D, kLdsm>(bf, Ks, kk, n, gr, tq);
            mma_bf16(acc[0], a[kk][0], a[kk][1], a[kk][2], a[kk][3], bf[0], bf[1]);
            mma_bf16(acc[1], a[kk][0], a[kk][1], a[kk][2], a[kk][3], bf[2], bf[3]);
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int col = (n + h) * 8 + 2 * tq;
            if (row0 < d.T) atomic_add2(dq0 + col, d.scale * acc[h][0], d.scale * acc[h][1]);
            if (row1 < d.T) atomic_add2(dq1 + col, d.scale * acc[h][2], d.scale * acc[h][3]);
          }
        }
      }
    }
    if constexpr (kPipe) {
      // v3: tile it + 1's lse, Δ into the other buffer (read last by tile it − 1).
      if (kV3 && it + 1 < total) next_stats.store(lse_b, del_b, buf ^ 1);
      __syncthreads();  // buffer buf and Ss are no longer read; buf ^ 1's lse, Δ are written
    }
  }

  // Every key of the tile below S is written, zero where no query sees it.
  store_dkdv_rows<D>(dk + kv_base, dv + kv_base, key0, key1, d, tq, dka, dva);
}

// ---------------------------------------------------------------- deterministic dQ

// kV3 (SOMNUS_ATTN_BWD=v3): K, V tiles double-buffered with cp.async (the default loads them
// synchronously between two barriers), A fragments of Q and dO by ldmatrix, p in base 2, and
// the per-element mask only on tiles some row does not see whole.
template <int D, bool kLdsm, bool kV3 = false>
__global__ void __launch_bounds__(kBwdWarps * 32) attn_bwd_dq_mma(
    const uint16_t* __restrict__ q, const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
    const uint16_t* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
    uint16_t* __restrict__ dq, AttnDims d) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int LD = D + 8;
  constexpr int kTile = kBwdTile * LD;
  uint16_t* Qs = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* Gs = Qs + kTile;  // dO
  uint16_t* KVb = Gs + kTile;  // 1 or 2 (kV3) buffers of (K tile, V tile)

  const int bh = blockIdx.y, b = bh / d.Hq, h = bh % d.Hq;
  const int64_t kv_base = (static_cast<int64_t>(b) * d.Hkv + h / d.g) * d.S * D;
  const int q0 = static_cast<int>(blockIdx.x) * kBwdTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane >> 2, tq = lane & 3;
  const int64_t q_base = static_cast<int64_t>(bh) * d.T;

  if constexpr (kV3) {
    // The first K/V tile in flight (cp.async group 0) while Q and dO load synchronously.
    const int k_end0 = d.visible(min(q0 + kBwdTile, d.T) - 1);
    if (k_end0 > 0) {
      issue_tile_bf16<D>(KVb, k + kv_base, kBwdTile, k_end0);
      issue_tile_bf16<D>(KVb + kTile, v + kv_base, kBwdTile, k_end0);
    }
    cp_async_commit();
  }
  load_tile_bf16<D>(Qs, q + (q_base + q0) * D, kBwdTile, d.T - q0);
  load_tile_bf16<D>(Gs, dout + (q_base + q0) * D, kBwdTile, d.T - q0);

  const int wr = warp * 16 + gr;  // this thread's rows wr, wr + 8 (within the tile)
  const int row0 = q0 + wr, row1 = row0 + 8;
  const bool ok0 = row0 < d.T, ok1 = row1 < d.T;
  // (v3: lse in base 2, lse · log2 e.)
  const float lse0 = ok0 ? (kV3 ? kLog2e : 1.f) * lse[q_base + row0] : 0.f;
  const float lse1 = ok1 ? (kV3 ? kLog2e : 1.f) * lse[q_base + row1] : 0.f;
  const float c2 = d.scale * kLog2e;
  const float del0 = ok0 ? delta[q_base + row0] : 0.f, del1 = ok1 ? delta[q_base + row1] : 0.f;
  const int vis0 = ok0 ? d.visible(row0) : 0, vis1 = ok1 ? d.visible(row1) : 0;

  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

  const int k_end = d.visible(min(q0 + kBwdTile, d.T) - 1);  // the block's last row sees the most
  // The rows of the tile all see keys [0, k_full) (and all rows are < T, or none is full).
  const int k_full = q0 + kBwdTile <= d.T ? d.visible(q0) : 0;
  for (int j0 = 0, t = 0; j0 < k_end; j0 += kBwdTile, ++t) {
    const uint16_t* Ks = KVb + (kV3 ? (t & 1) * 2 * kTile : 0);
    const uint16_t* Vs = Ks + kTile;
    if constexpr (kV3) {
      // The other buffer was last read in iteration t − 1, which ended with a barrier.
      if (j0 + kBwdTile < k_end) {
        uint16_t* Kn = KVb + ((t + 1) & 1) * 2 * kTile;
        const int64_t next = kv_base + static_cast<int64_t>(j0 + kBwdTile) * D;
        issue_tile_bf16<D>(Kn, k + next, kBwdTile, k_end - j0 - kBwdTile);
        issue_tile_bf16<D>(Kn + kTile, v + next, kBwdTile, k_end - j0 - kBwdTile);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();  // tile t is in (every thread's copies), and Qs, Gs on the first pass
    } else {
      __syncthreads();  // the previous key tile is no longer read (and Qs, Gs are loaded first)
      load_tile_bf16<D>(KVb, k + kv_base + static_cast<int64_t>(j0) * D, kBwdTile, k_end - j0);
      load_tile_bf16<D>(KVb + kTile, v + kv_base + static_cast<int64_t>(j0) * D, kBwdTile, k_end - j0);
      __syncthreads();
    }

    // S = Q Kᵀ and dP = dO Vᵀ: 16 rows × 64 keys per warp.
    float s[8][4], dp[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
    }
    mma_abt<D, kLdsm, kV3>(s, Qs, wr, Ks, gr, tq);
    mma_abt<D, kLdsm, kV3>(dp, Gs, wr, Vs, gr, tq);

    // dS = P ∘ (dP − Δ), P masked to 0; in place of s.
    if (kV3 && j0 + kBwdTile <= k_full) {  // block-uniform: every row sees the whole tile
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool hi = e >= 2;
          s[nt][e] = ex2_approx(fmaf(s[nt][e], c2, -(hi ? lse1 : lse0))) * (dp[nt][e] - (hi ? del1 : del0));
        }
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = j0 + nt * 8 + 2 * tq + (e & 1);
          const bool hi = e >= 2;
          if constexpr (kV3) {
            const float p = col < (hi ? vis1 : vis0) ? ex2_approx(fmaf(s[nt][e], c2, -(hi ? lse1 : lse0))) : 0.f;
            s[nt][e] = p * (dp[nt][e] - (hi ? del1 : del0));
          } else {
            const float p = col < (hi ? vis1 : vis0) ? __expf(d.scale * s[nt][e] - (hi ? lse1 : lse0)) : 0.f;
            s[nt][e] = p * (dp[nt][e] - (hi ? del1 : del0));
          }
        }
      }
    }

    // dQ += dS K.
    mma_cb<D, kLdsm>(acc, s, Ks, gr, tq);
    if constexpr (kV3) __syncthreads();  // buffer t & 1 is free for tile t + 2
  }
  if constexpr (kV3) cp_async_wait<0>();  // a block whose rows see no key still has its group

  uint16_t* dqh = dq + q_base * D;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int col = n * 8 + 2 * tq;
    if (ok0) {
      *reinterpret_cast<uint32_t*>(dqh + static_cast<int64_t>(row0) * D + col) =
          pack_bf16(d.scale * acc[n][0], d.scale * acc[n][1]);
    }
    if (ok1) {
      *reinterpret_cast<uint32_t*>(dqh + static_cast<int64_t>(row1) * D + col) =
          pack_bf16(d.scale * acc[n][2], d.scale * acc[n][3]);
    }
  }
}

// ---------------------------------------------------------------- dK/dV on Hopper wgmma

// attn_bwd_dkdv_wg (SOMNUS_ATTN_BWD=wgmma; written 2026-11-27 without a GPU, passed on an H100
// the same day; sm_90a builds only). v4's block — 128 keys of one kv head, 2 warpgroups
// of 64 keys, query tiles of 64 rows double-buffered with cp.async, base-2 p, the mask only on
// tiles some row does not see whole — with the five products on wgmma (FA3's dataflow):
//   Sᵀ  = K Qᵀ    SS, both K-major (64 keys × 64 queries per warpgroup, D/16 k-steps)
//   dPᵀ = V dOᵀ   SS, both K-major (committed after Sᵀ as a group of its own: Pᵀ is computed
//                 and dV issued while it runs; dSᵀ waits for it, dV stays in flight meanwhile)
//   dV += Pᵀ dO   RS: Pᵀ from the S accumulators (p_frag), dO read MN-major (4 k-steps)
//   dK += dSᵀ Q   RS: dSᵀ from registers, Q read MN-major
//   dQ += dS K    atomic mode: dSᵀ is stored to shared memory (128 keys × 64 queries, one
//                 swizzled panel) and read back as an M-major A operand, K as an MN-major B
//                 (wgmma_ss_n64_tt); at D = 128 warpgroup w takes d-columns 64w.. over all 128
//                 keys, at D = 64 each warpgroup its own 64 keys over all columns; f32 atomics.
// The tiles in shared memory are 128-byte swizzled panels (issue_tile_sw128; layouts as in the
// forward): K, V (128 rows), 2 × (Q, dO) (64 rows), dSᵀ. Deterministic mode: this kernel
// without dQ, then v3's dQ kernel (attn_bwd_dq_mma<D, true, true>).
// Shared memory (wg_bwd_smem_bytes): (2·128 + 4·64)·D·2 + 128·64·2 + 1 KiB + lse, Δ: 146 KiB at
// D = 128 (one block per SM), 82 KiB at D = 64. Registers: the dK, dV accumulators (D/2 each per thread), S and dP
// (32 each, dead before the RS products), the A fragments of P and dS (16 each), dQ (32):
// 251 / 227 registers at D = 128 / 64 (ptxas, no spill). Two block barriers per query tile:
// after the dSᵀ stores (atomic mode) and at the end, which also publishes the next tile.
// Expected (prediction, not measured): the products at wgmma's rate, the per-element softmax
// and dS work as v4's: 250–350 TFLOP/s at causal D = 128, T = 4k on an H100 (v4: not measured;
// the default 138).
constexpr int kWgBwdKeys = 128;  // keys per block, 64 per warpgroup
constexpr int kWgBwdRows = 64;   // query rows per tile

template <int D>
constexpr int wg_bwd_smem_bytes() {
  // K, V; 2 × (Q, dO); dSᵀ; 2 × (lse, Δ); + slack to align the panels to 1024 bytes
  return 2 * kWgBwdKeys * D * 2 + 4 * kWgBwdRows * D * 2 + kWgBwdKeys * kWgBwdRows * 2 + 4 * kWgBwdRows * 4 + 1024;
}

// The per-tile steps of the wgmma backwards (attn_bwd_dkdv_wg, attn_bwd_ws), for warpgroup wg's
// 64 keys; shared-space byte addresses: k_sh, v_sh the block's K, V (panels of 128 rows),
// q_sh, g_sh the tile's Q, dO (panels of 64 rows), s_sh a dSᵀ buffer (one panel of 128 rows).
// Sᵀ = K Qᵀ and dPᵀ = V dOᵀ (64 keys × 64 queries each, both operands K-major), committed as
// two groups, so that Pᵀ is computed while dPᵀ is still on the tensor cores.
template <int D>
__device__ __forceinline__ void wg_bwd_issue_s_dp(float (&s)[8][4], float (&dp)[8][4], uint32_t k_sh, uint32_t v_sh,
                                                  uint32_t q_sh, uint32_t g_sh, int wg) {
  constexpr uint32_t kKPanel = kWgBwdKeys * kSwRow, kQPanel = kWgBwdRows * kSwRow;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk >> 2) * kKPanel + wg * 64 * kSwRow + (kk & 3) * 32u;
    const uint32_t qoff = (kk >> 2) * kQPanel + (kk & 3) * 32u;
    wgmma_ss_n64(s, wg_desc(k_sh + off, 16, 8 * kSwRow), wg_desc(q_sh + qoff, 16, 8 * kSwRow), kk > 0 ? 1 : 0);
  }
  wgmma_commit();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk >> 2) * kKPanel + wg * 64 * kSwRow + (kk & 3) * 32u;
    const uint32_t qoff = (kk >> 2) * kQPanel + (kk & 3) * 32u;
    wgmma_ss_n64(dp, wg_desc(v_sh + off, 16, 8 * kSwRow), wg_desc(g_sh + qoff, 16, 8 * kSwRow), kk > 0 ? 1 : 0);
  }
  wgmma_commit();
}
// acc += A B over the tile's 64 queries, one group: A from registers (a: the A fragments of Pᵀ
// or dSᵀ, k-steps of 16 queries), B the 64 × D tile at b_sh (dO for dV, Q for dK) read MN-major.
template <int D>
__device__ __forceinline__ void wg_bwd_issue_rs(float (&acc)[D / 8][4], uint32_t (&a)[4][4], uint32_t b_sh) {
  wg_fence_operands(a);  // the A fragments are written before the fence
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    wgmma_rs_tb<D>(acc, a[kk], wg_desc(b_sh + kk * 16 * kSwRow, kWgBwdRows * kSwRow, 8 * kSwRow));
  }
  wgmma_commit();
}
// dSᵀ = Pᵀ ∘ (dPᵀ − Δ) into dp (s: Pᵀ, del_s: the tile's Δ), and its A fragments sa.
__device__ __forceinline__ void wg_bwd_ds(float (&dp)[8][4], const float (&s)[8][4], const float* del_s, int tq,
                                          uint32_t (&sa)[4][4]) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dp[nt][e] = s[nt][e] * (dp[nt][e] - del_s[nt * 8 + 2 * tq + (e & 1)]);
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) p_frag(dp, kk, sa[kk][0], sa[kk][1], sa[kk][2], sa[kk][3]);
}
// This thread's dSᵀ rows kr and kr + 8 (keys of the block) into the buffer at ds (row = key,
// 16-byte chunks swizzled), as bf16 pairs through st_shared_b32.
__device__ __forceinline__ void wg_bwd_store_ds(unsigned char* ds, const float (&dp)[8][4], int kr, int tq) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = kr + 8 * h;
      st_shared_b32(ds + r * kSwRow + ((nt ^ (r & 7)) << 4) + 4 * tq, pack_bf16(dp[nt][2 * h], dp[nt][2 * h + 1]));
    }
  }
}
// dQ (64 queries × 64 columns per warpgroup) = dS K, one group: A = dSᵀ read M-major (queries
// contiguous in a key row), B = K read MN-major (d contiguous in a key row); at D = 128
// warpgroup wg takes d-columns 64·wg.. over all 128 keys, at D = 64 its own 64 keys over all.
template <int D>
__device__ __forceinline__ void wg_bwd_issue_dq(float (&dqa)[8][4], uint32_t s_sh, uint32_t k_sh, int wg) {
  constexpr uint32_t kKPanel = kWgBwdKeys * kSwRow;
  constexpr int kSteps = D == 128 ? kWgBwdKeys / 16 : 64 / 16;
  const uint32_t key_lo = D == 128 ? 0u : static_cast<uint32_t>(wg) * 64u;    // first key row
  const uint32_t k_col = D == 128 ? static_cast<uint32_t>(wg) * kKPanel : 0u;  // d-column panel
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) {
    const uint32_t rows = (key_lo + kk * 16) * kSwRow;
    wgmma_ss_n64_tt(dqa, wg_desc(s_sh + rows, kKPanel, 8 * kSwRow), wg_desc(k_sh + k_col + rows, kKPanel, 8 * kSwRow),
                    kk > 0 ? 1 : 0);
  }
  wgmma_commit();
}

template <int D>
__global__ void __launch_bounds__(256, 1) attn_bwd_dkdv_wg(const uint16_t* __restrict__ q,
                                                          const uint16_t* __restrict__ k,
                                                          const uint16_t* __restrict__ v,
                                                          const uint16_t* __restrict__ dout,
                                                          const float* __restrict__ lse,
                                                          const float* __restrict__ delta, uint16_t* __restrict__ dk,
                                                          uint16_t* __restrict__ dv, float* __restrict__ dq_acc,
                                                          AttnDims d) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kTileQ = kWgBwdRows * D;  // elements of a Q or dO tile
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  uint16_t* Ks = reinterpret_cast<uint16_t*>(smem_raw + (((raw + 1023u) & ~1023u) - raw));
  uint16_t* Vs = Ks + kWgBwdKeys * D;
  uint16_t* QGb = Vs + kWgBwdKeys * D;       // buffer t: Q at QGb + 2t·kTileQ, dO at + kTileQ
  uint16_t* Ss = QGb + 4 * kTileQ;           // dSᵀ: [key][query], one panel of 128 rows
  float* lse_b = reinterpret_cast<float*>(Ss + kWgBwdKeys * kWgBwdRows);  // 2 × 64
  float* del_b = lse_b + 2 * kWgBwdRows;                                   // 2 × 64

  const int bkv = blockIdx.y, b = bkv / d.Hkv, hkv = bkv % d.Hkv;
  const int j0 = static_cast<int>(blockIdx.x) * kWgBwdKeys;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane >> 2, tq = lane & 3;
  const int wg = warp / 4;
  const int kr = warp * 16 + gr;  // this thread's key rows kr, kr + 8 (within the block)
  const int key0 = j0 + kr, key1 = key0 + 8;
  const int64_t kv_base = static_cast<int64_t>(bkv) * d.S * D;

  issue_tile_sw128<D>(Ks, k + kv_base + static_cast<int64_t>(j0) * D, kWgBwdKeys, d.S - j0);
  issue_tile_sw128<D>(Vs, v + kv_base + static_cast<int64_t>(j0) * D, kWgBwdKeys, d.S - j0);
  cp_async_commit();

  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.f;
  }

  const int i_first = d.causal ? max(0, j0 - d.q_offset) : 0;  // the first row that sees key j0
  const int n_i = i_first < d.T ? (d.T - i_first + kWgBwdRows - 1) / kWgBwdRows : 0;
  const int total = d.g * n_i;
  // Tile it's Q and dO by cp.async into buffer buf; its lse and Δ into next_stats, stored to
  // shared memory by the caller later (TileStats).
  TileStats<kWgBwdRows> next_stats;
  const auto stage = [&](int it, int buf) {
    const int i0 = i_first + (it % n_i) * kWgBwdRows;
    const int64_t row = (static_cast<int64_t>(b) * d.Hq + hkv * d.g + it / n_i) * d.T + i0;
    issue_tile_sw128<D>(QGb + buf * 2 * kTileQ, q + row * D, kWgBwdRows, d.T - i0);
    issue_tile_sw128<D>(QGb + buf * 2 * kTileQ + kTileQ, dout + row * D, kWgBwdRows, d.T - i0);
    cp_async_commit();
    next_stats.load(lse, delta, row, i0, d.T);
  };
  const float c2 = d.scale * kLog2e;
  // Shared-space bases (panels: K, V 128 rows, Q, dO 64 rows of kSwRow bytes).
  const uint32_t k_sh = static_cast<uint32_t>(__cvta_generic_to_shared(Ks));
  const uint32_t v_sh = static_cast<uint32_t>(__cvta_generic_to_shared(Vs));
  const uint32_t qg_sh = static_cast<uint32_t>(__cvta_generic_to_shared(QGb));
  const uint32_t s_sh = static_cast<uint32_t>(__cvta_generic_to_shared(Ss));
  // Tile it + 1 is waited for, fenced and its stats stored at the end of iteration it, before
  // the one barrier that both frees buffer buf and publishes tile it + 1; tile it + 2 is then
  // issued into buf (its copies in flight for a whole iteration, as before, one barrier less).
  if (total > 0) {  // block-uniform
    stage(0, 0);
    next_stats.store(lse_b, del_b, 0);
    cp_async_wait<0>();   // K, V and tile 0: this thread's copies ...
    fence_proxy_async();  // ... visible to wgmma after the barrier
    __syncthreads();
    if (total > 1) stage(1, 1);
  }
  for (int it = 0; it < total; ++it) {
    const int buf = it & 1;
    const int i0 = i_first + (it % n_i) * kWgBwdRows;
    const int64_t bh = static_cast<int64_t>(b) * d.Hq + hkv * d.g + it / n_i;
    const uint32_t q_sh = qg_sh + buf * 4u * kTileQ, g_sh = q_sh + 2u * kTileQ;  // bytes
    const float* lse_s = lse_b + buf * kWgBwdRows;
    const float* del_s = del_b + buf * kWgBwdRows;

    // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ: 64 keys (this warpgroup's) × 64 queries each.
    float s[8][4], dp[8][4];
    wg_bwd_issue_s_dp<D>(s, dp, k_sh, v_sh, q_sh, g_sh, wg);
    wgmma_wait<1>();  // Sᵀ (dPᵀ in flight)
    wg_fence_operands(s);

    // Pᵀ (base 2; masked to 0 for rows past T and keys a row does not see), then dV += Pᵀ dO
    // (B = the 64 queries × D tile of dO read MN-major, 16 rows a k-step) while dPᵀ finishes.
    // s[nt][0..1]: key kr, queries nt·8 + 2tq (+1); s[nt][2..3]: key kr + 8.
    p_tile_b2(s, i0 + kWgBwdRows <= d.T && j0 + kWgBwdKeys <= d.visible(i0), d, i0, key0, key1, tq, c2, lse_s);
    uint32_t pa[4][4], sa[4][4];  // A fragments of Pᵀ and dSᵀ, k-steps of 16 queries
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) p_frag(s, kk, pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3]);
    wg_bwd_issue_rs<D>(dva, pa, g_sh);
    wgmma_wait<1>();  // dPᵀ (dV in flight)
    wg_fence_operands(dp);

    // dSᵀ = Pᵀ ∘ (dPᵀ − Δ) in dp, then dK += dSᵀ Q (Q read MN-major).
    wg_bwd_ds(dp, s, del_s, tq, sa);
    if (dq_acc != nullptr) wg_bwd_store_ds(reinterpret_cast<unsigned char*>(Ss), dp, kr, tq);  // block-uniform
    wg_bwd_issue_rs<D>(dka, sa, q_sh);
    if (dq_acc != nullptr) {
      fence_proxy_async();  // this thread's dSᵀ stores, visible to wgmma after the barrier
      __syncthreads();      // both warpgroups' dSᵀ rows are written
      float dqa[8][4];
      wg_bwd_issue_dq<D>(dqa, s_sh, k_sh, wg);
      wgmma_wait<0>();
      wg_fence_operands(dqa);
      const int c0 = D == 128 ? wg * 64 : 0;
      const int row0 = i0 + (warp % 4) * 16 + gr, row1 = row0 + 8;
      float* dq0 = dq_acc + (bh * d.T + row0) * D;
      float* dq1 = dq0 + 8 * D;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int col = c0 + 8 * j + 2 * tq;
        if (row0 < d.T) atomic_add2(dq0 + col, d.scale * dqa[j][0], d.scale * dqa[j][1]);
        if (row1 < d.T) atomic_add2(dq1 + col, d.scale * dqa[j][2], d.scale * dqa[j][3]);
      }
    } else {
      wgmma_wait<0>();
    }
    wg_fence_operands(dka);
    wg_fence_operands(dva);
    if (it + 1 < total) {
      cp_async_wait<0>();   // tile it + 1: this thread's copies ...
      fence_proxy_async();  // ... visible to wgmma after the barrier
      next_stats.store(lse_b, del_b, buf ^ 1);  // buf ^ 1 was read last in iteration it − 1
    }
    __syncthreads();  // buffer buf, dSᵀ and lse/Δ of buf are no longer read; tile it + 1 is visible
    if (it + 2 < total) stage(it + 2, buf);
  }
  cp_async_wait<0>();  // a block no query tile reached still has K, V in flight

  // Every key of the block below S is written, zero where no query sees it.
  store_dkdv_rows<D>(dk + kv_base, dv + kv_base, key0, key1, d, tq, dka, dva);
}

// attn_bwd_ws (SOMNUS_ATTN_BWD=wgmma_ws; written 2026-11-27 without a GPU, passed on an H100 the
// same day and the default on sm_90a since): the wgmma backward above (attn_bwd_dkdv_wg: 128-key blocks, the five
// products on wgmma, Pᵀ and dV while dPᵀ is in flight) with FA3's warp specialization and dQ
// store. A block is 12 warps: warps 0–7 the two consumer warpgroups (64 keys each, the loop of
// attn_bwd_dkdv_wg), warps 8–11 the producer warpgroup, of which warp 8 works:
//   - its first thread loads K and V once (TMA, a barrier of their own) and each (Q, dO) tile
//     into a ring of kBwsStages slots (TMA: one instruction per 64-column panel, the 128-byte
//     swizzle done by the copy engine, rows past T read as 0);
//   - its 32 threads store the tile's lse (base 2) and Δ (0 past T; loaded into registers a
//     tile ahead) into the slot's stats after the first thread has announced the tile's bytes
//     (mbar_expect_tx) and issued its copies, and arrive on the slot's "full" barrier (count
//     32), which completes when the copies have counted the bytes down;
//   - before refilling a slot it waits on the slot's "empty" barrier, at which the 256 consumer
//     threads arrive once their wgmma reading the slot (dV reads dO, dK reads Q) has retired.
// So the consumers execute no copy, no global load of lse / Δ and no block barrier per tile.
// dQ (atomic mode): the consumers' dSᵀ goes to one of two buffers (alternating per tile); at
// D = 128 the two warpgroups meet at named barrier 1 (256 threads: the other warpgroup's dSᵀ
// rows are written; the barrier of the previous tile proves the buffer's readers of two tiles
// back done), at D = 64 each warpgroup's dQ reads only its own 64 rows and it syncs alone;
// each warpgroup's 64 × 64 product dQ += dS K (as attn_bwd_dkdv_wg) is scaled and written to a
// 16 KiB staging region of its own in fragment order (float4 j·128 + thread: conflict-free), and
// warp 9 of the producer warpgroup (the dQ writer, FA3's) adds the region to the f32
// accumulator with one bulk reduction (cp.reduce.async.bulk .add.f32, done by the copy engine
// at L2), in place of 4096 per-thread f32 atomics per tile and warpgroup. The hand-over, per
// warpgroup w, on named barriers of 160 threads: the consumers write, fence the async proxy and
// arrive at dQ-full w (no wait); the writer syncs there, issues, and once the region has been
// read (cp.async.bulk.wait_group.read) arrives at dQ-empty w, which the consumers sync on
// before they write the next tile's dQ.
// The accumulator is laid out as the regions (bws_dq_acc_elems: per (b, h) and 64-row query
// tile, 64·D floats in fragment order; at D = 128 warpgroup w's columns 64w.. are region w, at
// D = 64 both warpgroups add their keys' share into the same region); dq_from_bws_acc casts it
// to dQ. So the query tiles of a block start at a multiple of 64: the first is the one holding
// the first row that sees key j0 (rows before that in it see no key of the block: p = 0).
// Deterministic mode: this kernel without dQ (no dSᵀ stores, no named barriers), then v3's dQ
// kernel, as wgmma.
// Registers: 384 threads, one block per SM; setmaxnreg as attn_fwd_ws (producer 24, consumers
// 240): ptxas, sm_90a: consumer code up to R233 / R170 at D = 128 / 64, producer and writer 17,
// no spill. Shared memory: K, V, 2 × (Q, dO), 2 × dSᵀ, 2 × 16 KiB staging, stats, 5 barriers:
// 194 / 130 KiB at D = 128 / 64.
// Expected (prediction, not measured): the consumers' instruction stream loses the copy issue,
// the lse / Δ loads, one block barrier per tile and 32 red.global.v2 per thread and tile (for
// 8 STS.128, a fence and a barrier arrival); FA3 reports ~450–500 TFLOP/s for its backward at
// D = 128 on an H100. Here, with neither FA3's swapped dQ operands nor its larger query tiles:
// 250–350 TFLOP/s at causal D = 128, T = 4k (reviewbws: 280–380).
constexpr int kBwsStages = 2;
constexpr int kBwsThreads = 384;                 // two consumer warpgroups + the producer warpgroup
constexpr int kBwsBars = 1 + 2 * kBwsStages;     // K/V full; per ring slot full, empty
constexpr int kBwsRegion = 64 * 64;              // floats of a warpgroup's dQ staging region
constexpr int kBwsProducerRegs = 24, kBwsConsumerRegs = 240;
// Named barriers: dSᵀ written (D 128: both warpgroups, 256 threads; D 64: per warpgroup, 128);
// per warpgroup w, dQ-full (its 128 threads arrive once its region is staged, the writer warp
// syncs) and dQ-empty (the writer arrives once it has read the region, the 128 sync).
constexpr int kBarDs = 1, kBarDqFull = 4, kBarDqEmpty = 6;
static_assert(128 * kBwsProducerRegs + 256 * kBwsConsumerRegs <= kBwsThreads * ((65536 / kBwsThreads) & ~7),
              "attn_bwd_ws: the warpgroups ask for more registers than the launch gives");

template <int D>
constexpr int bws_smem_bytes() {
  // K, V; kBwsStages × (Q, dO); 2 × dSᵀ; 2 staging regions; kBwsStages × (lse, Δ); barriers;
  // + slack to align the panels to 1024 bytes
  return 2 * kWgBwdKeys * D * 2 + kBwsStages * 2 * kWgBwdRows * D * 2 + 2 * kWgBwdKeys * kWgBwdRows * 2 +
         2 * kBwsRegion * 4 + kBwsStages * 2 * kWgBwdRows * 4 + 8 * kBwsBars + 1024;
}
// Floats of attn_bwd_ws's dQ accumulator: 64·D per (b, h) and 64-row query tile.
inline int64_t bws_dq_acc_elems(const AttnDims& d, int D) {
  return int64_t{d.B} * d.Hq * ((d.T + kWgBwdRows - 1) / kWgBwdRows) * kWgBwdRows * D;
}

template <int D>
__global__ void __launch_bounds__(kBwsThreads, 1) attn_bwd_ws(const __grid_constant__ CUtensorMap tm_q,
                                                           const __grid_constant__ CUtensorMap tm_k,
                                                           const __grid_constant__ CUtensorMap tm_v,
                                                           const __grid_constant__ CUtensorMap tm_g,
                                                           const float* __restrict__ lse,
                                                           const float* __restrict__ delta, uint16_t* __restrict__ dk,
                                                           uint16_t* __restrict__ dv, float* __restrict__ dq_acc,
                                                           AttnDims d) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr uint32_t kKvBytes = kWgBwdKeys * D * 2;    // K or V
  constexpr uint32_t kTileBytes = kWgBwdRows * D * 2;  // a Q or dO tile
  constexpr uint32_t kKPanel = kWgBwdKeys * kSwRow, kQPanel = kWgBwdRows * kSwRow;
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t k_sh = (raw + 1023u) & ~1023u;  // panels 1024-byte aligned (the swizzle's period)
  const uint32_t v_sh = k_sh + kKvBytes;
  const uint32_t ring = v_sh + kKvBytes;                           // slot s: Q, then dO
  const uint32_t ds_sh = ring + kBwsStages * 2 * kTileBytes;       // 2 × dSᵀ (128 keys × 64 queries)
  const uint32_t dq_sh = ds_sh + 2 * kWgBwdKeys * kSwRow;          // 2 staging regions
  const uint32_t st_sh = dq_sh + 2 * kBwsRegion * 4;               // per slot: lse (64), Δ (64)
  const uint32_t sbar = st_sh + kBwsStages * 2 * kWgBwdRows * 4;
  const auto at = [&](uint32_t a) { return smem_raw + (a - raw); };  // the generic address of a
  const uint32_t kv_full = sbar;
  const auto full = [&](int it) { return sbar + 8u * (1 + it % kBwsStages); };
  const auto empty = [&](int it) { return sbar + 8u * (1 + kBwsStages + it % kBwsStages); };
  const auto parity = [](int it) { return static_cast<uint32_t>((it / kBwsStages) & 1); };
  const auto slot = [&](int it) { return ring + static_cast<uint32_t>(it % kBwsStages) * 2u * kTileBytes; };
  const auto stats = [&](int it) { return reinterpret_cast<float*>(at(st_sh)) + (it % kBwsStages) * 2 * kWgBwdRows; };

  const int bkv = blockIdx.y, b = bkv / d.Hkv, hkv = bkv % d.Hkv;
  const int j0 = static_cast<int>(blockIdx.x) * kWgBwdKeys;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // The block's query tiles: g heads × n_i tiles of 64 rows from i_first (a multiple of 64).
  const int i_first = d.causal ? max(0, j0 - d.q_offset) / kWgBwdRows * kWgBwdRows : 0;
  const int n_i = i_first < d.T ? (d.T - i_first + kWgBwdRows - 1) / kWgBwdRows : 0;
  const int total = d.g * n_i;
  const auto tile_i0 = [&](int it) { return i_first + (it % n_i) * kWgBwdRows; };
  const auto tile_bh = [&](int it) { return static_cast<int64_t>(b) * d.Hq + hkv * d.g + it / n_i; };

  if (threadIdx.x == 0) {
    mbar_init(kv_full, 1);
    for (int s = 0; s < kBwsStages; ++s) {
      mbar_init(full(s), 32);
      mbar_init(empty(s), 256);
    }
    mbar_init_fence();
  }
  __syncthreads();  // the last block-wide barrier

  if (warp >= 8) {  // the producer warpgroup
    setmaxnreg_dec<kBwsProducerRegs>();
    if (warp == 8 && total > 0) {  // block-uniform total
      if (lane == 0) {
        mbar_arrive_expect_tx(kv_full, 2 * kKvBytes);
#pragma unroll
        for (int p = 0; p < D / 64; ++p) {
          tma_load_3d(k_sh + p * kKPanel, &tm_k, 64 * p, j0, bkv, kv_full);
          tma_load_3d(v_sh + p * kKPanel, &tm_v, 64 * p, j0, bkv, kv_full);
        }
      }
      // Lane l handles rows l and l + 32 of a tile's stats, loaded into registers a tile ahead
      // (their latency behind the wait for the slot) and stored once the tile's copies are issued.
      static_assert(kWgBwdRows == 64);
      float lse_r[2], del_r[2];
      const auto load_stats = [&](int it) {
        const int i0 = tile_i0(it);
        const int64_t row = tile_bh(it) * d.T + i0;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const bool ok = i0 + lane + 32 * h < d.T;
          lse_r[h] = ok ? lse[row + lane + 32 * h] * kLog2e : 0.f;
          del_r[h] = ok ? delta[row + lane + 32 * h] : 0.f;
        }
      };
      load_stats(0);
      for (int it = 0; it < total; ++it) {
        if (it >= kBwsStages) mbar_wait(empty(it), parity(it) ^ 1u);  // dV, dK of tile it − kBwsStages retired
        if (lane == 0) {  // the copies first: their bytes announced without an arrival
          const int i0 = tile_i0(it), bh = static_cast<int>(tile_bh(it));
          mbar_expect_tx(full(it), 2 * kTileBytes);
#pragma unroll
          for (int p = 0; p < D / 64; ++p) {
            tma_load_3d(slot(it) + p * kQPanel, &tm_q, 64 * p, i0, bh, full(it));
            tma_load_3d(slot(it) + kTileBytes + p * kQPanel, &tm_g, 64 * p, i0, bh, full(it));
          }
        }
        float* st = stats(it);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          st[lane + 32 * h] = lse_r[h];
          st[kWgBwdRows + lane + 32 * h] = del_r[h];
        }
        mbar_arrive(full(it));  // each lane's stores above, released to the consumers' wait
        if (it + 1 < total) load_stats(it + 1);
      }
    }
    if (warp == 9 && dq_acc != nullptr) {  // the dQ writer (atomic mode; dq_acc block-uniform)
      const int n_qt = (d.T + kWgBwdRows - 1) / kWgBwdRows;
#pragma unroll 1  // (unrolled, it spills under the producers' 24 registers)
      for (int it = 0; it < total; ++it) {
        const int64_t tile = tile_bh(it) * n_qt + tile_i0(it) / kWgBwdRows;
#pragma unroll
        for (int w = 0; w < 2; ++w) {
          named_bar_sync(kBarDqFull + w, 128 + 32);  // warpgroup w's region staged and fenced
          if (lane == 0) {
            bulk_reduce_add_f32(dq_acc + tile * kWgBwdRows * D + (D == 128 ? w * kBwsRegion : 0),
                                dq_sh + static_cast<uint32_t>(w) * (kBwsRegion * 4), kBwsRegion * 4);
            bulk_commit();
            bulk_wait_read<0>();  // the region read: warpgroup w may rewrite it
          }
          __syncwarp();
          // Released before warpgroup 1's region is waited for (the consumers wait for this
          // before tiles 1.., not after the last).
          if (it + 1 < total) named_bar_arrive(kBarDqEmpty + w, 128 + 32);
        }
      }
      if (lane == 0) bulk_wait<0>();  // the last reductions done before the exit
    }
    return;
  }

  // The consumers: attn_bwd_dkdv_wg's loop on the ring's slots.
  setmaxnreg_inc<kBwsConsumerRegs>();
  const int gr = lane >> 2, tq = lane & 3, wg = warp / 4;
  const int kr = warp * 16 + gr;  // this thread's key rows kr, kr + 8 (within the block)
  const int key0 = j0 + kr, key1 = key0 + 8;
  const int64_t kv_base = static_cast<int64_t>(bkv) * d.S * D;
  const bool atomic = dq_acc != nullptr;
  const float c2 = d.scale * kLog2e;
  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.f;
  }
  if (total > 0) mbar_wait(kv_full, 0);
  for (int it = 0; it < total; ++it) {
    const int i0 = tile_i0(it);
    const uint32_t q_sh = slot(it), g_sh = q_sh + kTileBytes;
    const float* lse_s = stats(it);
    const float* del_s = lse_s + kWgBwdRows;
    mbar_wait(full(it), parity(it));

    // Sᵀ = K Qᵀ, dPᵀ = V dOᵀ (two groups), Pᵀ and dV += Pᵀ dO while dPᵀ runs: as attn_bwd_dkdv_wg.
    float s[8][4], dp[8][4];
    wg_bwd_issue_s_dp<D>(s, dp, k_sh, v_sh, q_sh, g_sh, wg);
    wgmma_wait<1>();  // Sᵀ (dPᵀ in flight)
    wg_fence_operands(s);
    p_tile_b2(s, i0 + kWgBwdRows <= d.T && j0 + kWgBwdKeys <= d.visible(i0), d, i0, key0, key1, tq, c2, lse_s);
    uint32_t pa[4][4], sa[4][4];  // A fragments of Pᵀ and dSᵀ, k-steps of 16 queries
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) p_frag(s, kk, pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3]);
    wg_bwd_issue_rs<D>(dva, pa, g_sh);
    wgmma_wait<1>();  // dPᵀ (dV in flight)
    wg_fence_operands(dp);

    // dSᵀ = Pᵀ ∘ (dPᵀ − Δ), then dK += dSᵀ Q (Q read MN-major).
    wg_bwd_ds(dp, s, del_s, tq, sa);
    const uint32_t s_sh = ds_sh + static_cast<uint32_t>(it & 1) * (kWgBwdKeys * kSwRow);
    if (atomic) {  // block-uniform: dSᵀ to this tile's buffer
      wg_bwd_store_ds(at(s_sh), dp, kr, tq);
      // This thread's dSᵀ stores, visible to wgmma after the barrier below; fenced before dK is
      // issued (the fence, a MEMBAR, need not wait behind dK's products: reviewbws).
      fence_proxy_async();
    }
    wg_bwd_issue_rs<D>(dka, sa, q_sh);
    if (atomic) {
      // The dSᵀ rows this warpgroup's dQ reads are written: at D = 128 both warpgroups' (named
      // barrier 1, 256 threads), at D = 64 its own 64 (its own barrier 2 + wg).
      if constexpr (D == 128) {
        named_bar_sync(kBarDs, 2 * 128);
      } else {
        named_bar_sync(kBarDs + 1 + wg, 128);
      }
      float dqa[8][4];  // dQ (64 queries × 64 columns per warpgroup) = dS K
      wg_bwd_issue_dq<D>(dqa, s_sh, k_sh, wg);
      wgmma_wait<1>();  // dV and dK retired (dQ in flight): the slot is no longer read
      mbar_arrive(empty(it));
      wgmma_wait<0>();
      wg_fence_operands(dqa);
      // The staging region, once the writer has read the last tile's (its arrival on dQ-empty);
      // the writes; each writer's proxy fence; then the writer warp's turn (dQ-full).
      const int t = threadIdx.x % 128;
      const uint32_t region = dq_sh + static_cast<uint32_t>(wg) * (kBwsRegion * 4);
      if (it > 0) named_bar_sync(kBarDqEmpty + wg, 128 + 32);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        st_shared_v4(at(region) + (j * 128 + t) * 16, d.scale * dqa[j][0], d.scale * dqa[j][1], d.scale * dqa[j][2],
                     d.scale * dqa[j][3]);
      }
      fence_proxy_async();
      named_bar_arrive(kBarDqFull + wg, 128 + 32);
    } else {
      wgmma_wait<0>();
      mbar_arrive(empty(it));
    }
    wg_fence_operands(dka);
    wg_fence_operands(dva);
  }

  // Every key of the block below S is written, zero where no query sees it.
  store_dkdv_rows<D>(dk + kv_base, dv + kv_base, key0, key1, d, tq, dka, dva);
}

// dQ (bf16, (B·Hq, T, D)) from attn_bwd_ws's accumulator: thread f reads float4 f of the
// accumulator (tile f / (16·D); region, j, thread of the fragment order) and writes its two
// column pairs, rows r and r + 8 of the tile (rows past T dropped).
template <int D>
__global__ void dq_from_bws_acc(const float4* __restrict__ acc, uint16_t* __restrict__ dq, int T, int64_t n4) {
  const int64_t f = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (f >= n4) return;
  const int n_qt = (T + kWgBwdRows - 1) / kWgBwdRows;
  const int64_t tile = f / (16 * D);
  const int in_tile = static_cast<int>(f % (16 * D));
  const int region = in_tile / 1024, j = (in_tile % 1024) / 128, t = in_tile % 128;
  const int lane = t % 32, row = (t / 32) * 16 + lane / 4, col = region * 64 + 8 * j + 2 * (lane % 4);
  const int64_t bh = tile / n_qt;
  const int r0 = static_cast<int>(tile % n_qt) * kWgBwdRows + row;
  const float4 v = acc[f];
  if (r0 < T) *reinterpret_cast<uint32_t*>(dq + (bh * T + r0) * D + col) = pack_bf16(v.x, v.y);
  if (r0 + 8 < T) *reinterpret_cast<uint32_t*>(dq + (bh * T + r0 + 8) * D + col) = pack_bf16(v.z, v.w);
}

// The tensor-core backward version for SOMNUS_ATTN_BWD, the scale and the device: "v1", "v2",
// "v3", "v4", "wgmma", "wgmma_ws" (sections above: sm_90a builds, scale > 0, the block fits) or
// "mma" (the default until 2026-11-27). Unset ("auto", the default): the fastest that runs, as
// measured on an H100 on 2026-11-27 (bench/RESULTS.md) — wgmma_ws (causal D 128 T 4k: 391
// TFLOP/s; wgmma 278, v4 198, v3 179, mma 138), else v4, else v3, else mma / v2. mma's prefetch
// buffers need 112 KiB at D = 128, more
// than sm_86/sm_89 allow a block (99 KiB): there v2 runs (also for v3, which builds on them).
// SOMNUS_ATTN_BWD=v3 (written 2026-11-26 without a GPU, checked under the host
// emulation of tests/kernels/cuda_emu, then on an H100): mma plus base-2 p with the mask only on tiles
// that need it, A fragments by ldmatrix, dSᵀ stored key-major with 32-bit stores and read by
// ldmatrix.trans, and a cp.async-pipelined deterministic dQ; not bitwise the others. Needs
// scale > 0 (else mma). SOMNUS_ATTN_BWD=v4: v3 with 8-warp dK/dV blocks of 128 keys
// (FA2's block shape at D = 128): each staged (Q, dO) tile and each f32 dQ atomic serves twice
// the keys — the atomic dQ traffic to L2 (64 queries × D floats per tile and block: ~1.9 TB/s
// at 300 TFLOP/s with 64-key blocks) halves. 155 KiB of shared memory at D = 128: one block
// (8 warps) per SM, as many warps as v3's two 4-warp blocks. Falls back to v3 where it does
// not fit.
template <int D>
bool bws_fits() {
  static std::atomic<int> cache[64];
  return one_block_fits(attn_bwd_ws<D>, kBwsThreads, bws_smem_bytes<D>(), cache);
}
template <int D>
const char* bwd_mma_version(float scale) {
  const std::string want = attn_version_env("SOMNUS_ATTN_BWD");
  const bool autov = want == "auto";
  if (want == "v1") return "v1";
  const int smem = max_dynamic_smem_bytes();
  if ((autov || want == "wgmma_ws") && scale > 0.f && dq_smem_bytes<D>(true) <= smem && wgmma_built() &&
      bws_fits<D>()) {
    return "wgmma_ws";
  }
  if (want == "wgmma" && scale > 0.f && wg_bwd_smem_bytes<D>() <= smem && dq_smem_bytes<D>(true) <= smem &&
      wgmma_built()) {
    return "wgmma";
  }
  if (want == "v2" || dkdv_smem_bytes<D>(true) > smem) return "v2";
  const bool v4 = autov || want == "v4";
  if ((v4 || want == "v3") && scale > 0.f && dq_smem_bytes<D>(true) <= smem) {
    return v4 && dkdv_smem_bytes<D>(true, 128) <= smem ? "v4" : "v3";
  }
  return "mma";
}

// A zero-filled f32 accumulator of n elements.
Tensor zeros_f32(int64_t n, Device device) {
  Tensor t = Tensor::empty({n}, DType::f32, device);
  CUDA_CHECK(cudaMemsetAsync(t.data_ptr(), 0, n * sizeof(float)));
  return t;
}

// The deterministic dQ pass (attn_bwd_dq_mma, no atomics): the mma versions' own (kLdsm, kV3),
// and v3's (true, true) for the Hopper backwards (wgmma, wgmma_ws).
template <int D, bool kLdsm = true, bool kV3 = true>
void launch_dq(const uint16_t* qp, const uint16_t* kp, const uint16_t* vp, const uint16_t* gp, const Tensor& lse,
               const Tensor& delta, const AttnDims& d, const Tensor& dq) {
  constexpr int smem = dq_smem_bytes<D>(kV3);
  const auto kernel = attn_bwd_dq_mma<D, kLdsm, kV3>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid((d.T + kBwdTile - 1) / kBwdTile, d.B * d.Hq);
  kernel<<<grid, kBwdWarps * 32, smem>>>(qp, kp, vp, gp, lse.data<float>(), delta.data<float>(),
                                         reinterpret_cast<uint16_t*>(dq.data_ptr()), d);
  CUDA_CHECK_LAUNCH();
}

// SOMNUS_ATTN_BWD=wgmma_ws: attn_bwd_ws (Q, dO, K, V through TMA maps; the atomic dQ into its
// tiled accumulator, then dq_from_bws_acc), or in deterministic mode attn_bwd_ws without dQ
// and v3's dQ kernel.
template <int D>
void attention_bwd_ws(const uint16_t* qp, const uint16_t* kp, const uint16_t* vp, const uint16_t* gp, const Tensor& lse,
                      const Tensor& delta, const AttnDims& d, bool deterministic, const Tensor& dq, const Tensor& dk,
                      const Tensor& dv) {
  Tensor acc;
  if (!deterministic) acc = zeros_f32(bws_dq_acc_elems(d, D), dq.device());
  const int64_t q_heads = int64_t{d.B} * d.Hq, kv_heads = int64_t{d.B} * d.Hkv;
  const CUtensorMap tq = bf16_panel_map(qp, q_heads, d.T, D, kWgBwdRows);
  const CUtensorMap tg = bf16_panel_map(gp, q_heads, d.T, D, kWgBwdRows);
  const CUtensorMap tk = bf16_panel_map(kp, kv_heads, d.S, D, kWgBwdKeys);
  const CUtensorMap tv = bf16_panel_map(vp, kv_heads, d.S, D, kWgBwdKeys);
  constexpr int smem = bws_smem_bytes<D>();
  CUDA_CHECK(cudaFuncSetAttribute(attn_bwd_ws<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid((d.S + kWgBwdKeys - 1) / kWgBwdKeys, d.B * d.Hkv);
  attn_bwd_ws<D><<<grid, kBwsThreads, smem>>>(tq, tk, tv, tg, lse.data<float>(), delta.data<float>(),
                                              reinterpret_cast<uint16_t*>(dk.data_ptr()),
                                              reinterpret_cast<uint16_t*>(dv.data_ptr()),
                                              deterministic ? nullptr : acc.data<float>(), d);
  CUDA_CHECK_LAUNCH();
  if (deterministic) {
    launch_dq<D>(qp, kp, vp, gp, lse, delta, d, dq);
  } else {
    const int64_t n4 = acc.numel() / 4;
    dq_from_bws_acc<D><<<static_cast<unsigned>((n4 + 255) / 256), 256>>>(
        reinterpret_cast<const float4*>(acc.data<float>()), reinterpret_cast<uint16_t*>(dq.data_ptr()), d.T, n4);
    CUDA_CHECK_LAUNCH();
  }
}

// The tensor-core backward: bf16, D ∈ {64, 128}; delta = rowsum(dO ∘ O) (B·Hq·T) already
// computed. Atomic mode (deterministic false): dQ is accumulated in f32 (a zero-filled
// accumulator: B·Hq·T·D, or attn_bwd_ws's tiles) and cast to dq at the end; deterministic
// mode: dQ written by a separate pass without atomics.
void attention_bwd_mma(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, const Tensor& lse,
                       const Tensor& delta, const AttnDims& d, bool deterministic, const Tensor& dq, const Tensor& dk,
                       const Tensor& dv) {
  if (q.dtype() != DType::bf16 || k.dtype() != DType::bf16 || v.dtype() != DType::bf16 ||
      dout.dtype() != DType::bf16) {
    throw_error(std::string("attention_bwd_mma: the tensor-core backward takes bf16, got ") + dtype_name(q.dtype()));
  }
  const auto* qp = reinterpret_cast<const uint16_t*>(q.data_ptr());
  const auto* kp = reinterpret_cast<const uint16_t*>(k.data_ptr());
  const auto* vp = reinterpret_cast<const uint16_t*>(v.data_ptr());
  const auto* gp = reinterpret_cast<const uint16_t*>(dout.data_ptr());
  // SOMNUS_ATTN_BWD=v2: ldmatrix without the cp.async prefetch; v1: plain shared loads for
  // the B fragments instead of ldmatrix (kept to bisect a regression on a GPU without a
  // rebuild; all three feed the same values to the same mma sequence).
  visit_head_dim(q.size(3), "attention_bwd_mma", [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    const std::string version = bwd_mma_version<D>(d.scale);
    if (version == "wgmma_ws") {
      attention_bwd_ws<D>(qp, kp, vp, gp, lse, delta, d, deterministic, dq, dk, dv);
      return;
    }
    Tensor acc;  // the atomic dQ's accumulator
    if (!deterministic) acc = zeros_f32(q.numel(), q.device());
    float* dq_acc = deterministic ? nullptr : acc.data<float>();
    const auto cast_dq = [&] {
      if (deterministic) return;
      cast_from_f32<bf16><<<grid_for(q.numel(), 256), 256>>>(dq_acc, dq.data<bf16>(), q.numel());
      CUDA_CHECK_LAUNCH();
    };
    const auto launch = [&](auto ldsm_tag, auto pipe_tag, auto v3_tag, auto warps_tag) {
      constexpr bool kLdsm = decltype(ldsm_tag)::value, kPipe = decltype(pipe_tag)::value;
      constexpr bool kV3 = decltype(v3_tag)::value;
      constexpr int kWarps = decltype(warps_tag)::value, kKeys = 16 * kWarps;
      if (d.S > 0) {
        constexpr int smem = dkdv_smem_bytes<D>(kPipe, kKeys);
        const auto kernel = attn_bwd_dkdv_mma<D, kLdsm, kPipe, kV3, kWarps>;
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const dim3 grid((d.S + kKeys - 1) / kKeys, d.B * d.Hkv);
        kernel<<<grid, kWarps * 32, smem>>>(qp, kp, vp, gp, lse.data<float>(), delta.data<float>(),
                                               reinterpret_cast<uint16_t*>(dk.data_ptr()),
                                               reinterpret_cast<uint16_t*>(dv.data_ptr()), dq_acc, d);
        CUDA_CHECK_LAUNCH();
      }
      if (dq_acc == nullptr && d.T > 0) launch_dq<D, kLdsm, kV3>(qp, kp, vp, gp, lse, delta, d, dq);
    };
    using Four = std::integral_constant<int, kBwdWarps>;
    if (version == "wgmma") {
      if (d.S > 0) {
        constexpr int smem = wg_bwd_smem_bytes<D>();
        CUDA_CHECK(cudaFuncSetAttribute(attn_bwd_dkdv_wg<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const dim3 grid((d.S + kWgBwdKeys - 1) / kWgBwdKeys, d.B * d.Hkv);
        attn_bwd_dkdv_wg<D><<<grid, 256, smem>>>(qp, kp, vp, gp, lse.data<float>(), delta.data<float>(),
                                                 reinterpret_cast<uint16_t*>(dk.data_ptr()),
                                                 reinterpret_cast<uint16_t*>(dv.data_ptr()), dq_acc, d);
        CUDA_CHECK_LAUNCH();
      }
      if (dq_acc == nullptr && d.T > 0) launch_dq<D>(qp, kp, vp, gp, lse, delta, d, dq);  // deterministic dQ
      cast_dq();
      return;
    }
    if (version == "v1") {
      launch(std::false_type{}, std::false_type{}, std::false_type{}, Four{});
    } else if (version == "v2") {
      launch(std::true_type{}, std::false_type{}, std::false_type{}, Four{});
    } else if (version == "v3") {
      launch(std::true_type{}, std::true_type{}, std::true_type{}, Four{});
    } else if (version == "v4") {
      launch(std::true_type{}, std::true_type{}, std::true_type{}, std::integral_constant<int, 8>{});
    } else {
      launch(std::true_type{}, std::true_type{}, std::false_type{}, Four{});
    }
    cast_dq();
  });
}

// ================================================================ split-K decode
//
// Split-K flash-decoding on CUDA (kernels/ops.h attention_decode): a few query rows against
// a long KV cache. The S keys are cut into n_split chunks; each chunk gives a partial
// (o_s, lse_s) in f32, then attn_combine merges them: lse = log Σ e^lse_s,
// o = Σ e^(lse_s − lse) o_s. The CPU twin is kernels/cpu/attention.cpp.
//
// Kernel attn_decode_gqa (default): one block per (b, kv head, split) runs ALL g = Hq/Hkv
// query heads × T query rows of that kv head (rows = g·T ≤ 8), so each K/V byte is read from
// HBM exactly once (the SIMT row kernel re-read it g times, one warp per query head).
// Decode is bandwidth-bound: at T = 1 each key costs 2·D·sizeof(T) bytes and ~4·g·D FLOPs.
// Layout: a lane holds V = 16/sizeof(T) elements of a key row (one 16-byte load: 8 bf16 or
// 4 f32), LPK = D/V lanes cover a row, so a warp covers KPW = 32/LPK consecutive keys
// (bf16 D=128: 16 lanes, 2 keys = 512 contiguous bytes per load instruction) and the 4 warps
// of a block cover 4·KPW consecutive keys; U such sub-steps (U = 4, or 2 at 8 rows to stay
// within registers) are loaded before any is used, so each thread has 2·U 16-byte loads in
// flight (the default since 2026-11-27, kPipe = 2 below, loads the next step's while it
// computes this one's). The q rows (pre-scaled, f32) and the accumulators of this thread's V columns stay
// in registers. q·k is reduced over the LPK lanes of a key with xor shuffles (every lane
// ends with the same sum), then one online-softmax update per row per U keys
// (m, l, acc: U + 1 exps instead of 2U). Each lane group keeps its own state; at the end of
// the split the 4·KPW states go to shared memory and are merged per (row, column). A key
// beyond the row's visible(i) (causal / q_offset) or beyond the split gets s = −inf.
// Numerics as the twin: f32 accumulation, p rounded to bf16 before p·v for bf16 inputs, l
// summed from the unrounded p.
// Bytes: 2·B·Hkv·S·D·sizeof(T) (K and V once) + the partials, B·Hq·T·n_split·(D + 1)·4
// written and read back by attn_combine (bench shape B8 Hq32 Hkv8 D128 bf16, S = 4096,
// 16 splits: 134 MB of K/V vs 2.1 MB of partials, ×2). Resources (ptxas, sm_90, bf16 D=128):
// R = 4 (the bench's g = 4): 161 registers, 16.6 KB smem → 3 blocks (12 warps) per SM, up to
// 48 KB of loads in flight per SM; R = 8: 241 registers, U = 2 → 2 blocks per SM; no spills.
// Issue cost ~600 instructions per warp per 4 KB at R = 4 (≈ 6 TB/s ceiling), so HBM bounds
// it. Prediction on an H100 (3.35 TB/s HBM, memcpy 2.9 TB/s read+write): ~2.3–2.6 TB/s at
// S = 32768 (4096 blocks); lower at S = 4096 (1024 blocks, 2.6 waves; 54 µs of traffic plus
// two launches and the partials: ~1.8–2.2 TB/s) and S = 1024. Measured (H100, 2026-11-26;
// bytes of K and V over the time): 2217 GB/s at S = 32768, 1509 at S = 4096, 1245 at S = 1024
// (the SIMT row kernel: 47–52 GB/s); the device-to-device copy ran at 2826–2926 GB/s.
// Rows > 8 (long speculative / prefill-like T), misaligned pointers or strides, or
// SOMNUS_ATTN_DECODE=simt take the SIMT row kernel (attn_rows_simt, helpers section),
// grid.z = splits, with the same partials and combine. Both read K and V through
// KvStrides, so a KV cache's prefix is read in place (since 2026-11-26, checked
// under the host emulation; before, ops.cpp copied it every step). Splits: the caller's, or
// (num_splits <= 0) auto_decode_splits below.

constexpr int kDecWarps = 4;
constexpr int kDecMaxRows = 8;

// One (b, h, query row) of the combine, by one warp: lse = log Σ e^lse_s, o = Σ e^(lse_s − lse)
// o_s over the n_split partials. attn_combine runs it per row; the fused decode
// (SOMNUS_DECODE_COMBINE=fused) in the last block of each (b, kv head): the same code, so the
// same bits. kL2: the partials are read through L2 (ld.global.cg), as the fused decode must
// (other blocks wrote them during this kernel, and L1 is not coherent); attn_combine, a kernel
// after the one that wrote them, reads them with plain loads, as it did when run 7 timed it
// (lse_s is read three times a row: L1 may serve the second and third).
template <bool kL2>
__device__ __forceinline__ float ld_partial(const float* p) {
  if constexpr (kL2) {
    return __ldcg(p);
  } else {
    return *p;
  }
}
template <class T, int D, bool kL2>
__device__ __forceinline__ void combine_row(const float* __restrict__ o_part, const float* __restrict__ lse_part,
                                            T* __restrict__ o, float* __restrict__ lse, int64_t row, int Tq,
                                            int n_split, int lane) {
  constexpr int E = D / 32;
  const int64_t bh = row / Tq, i = row % Tq;
  float mx = -INFINITY;
  for (int s = 0; s < n_split; ++s) mx = fmaxf(mx, ld_partial<kL2>(lse_part + (bh * n_split + s) * Tq + i));
  float sum = 0.f;
  for (int s = 0; s < n_split; ++s) sum += __expf(ld_partial<kL2>(lse_part + (bh * n_split + s) * Tq + i) - mx);
  const float lse_row = mx + logf(sum);
  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.f;
  // No branch on w, so the unrolled loads of several splits are in flight at once (one
  // split at a time made this loop latency-bound: 64 splits ≈ 64 L2 round trips). An unseen
  // split has o_s = 0 and w = 0.
#pragma unroll 4
  for (int s = 0; s < n_split; ++s) {
    const int64_t idx = (bh * n_split + s) * Tq + i;
    const float ls = ld_partial<kL2>(lse_part + idx);
    const float w = ls == -INFINITY ? 0.f : __expf(ls - lse_row);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] += w * ld_partial<kL2>(o_part + idx * D + lane + 32 * e);
  }
#pragma unroll
  for (int e = 0; e < E; ++e) o[row * D + lane + 32 * e] = static_cast<T>(acc[e]);
  if (lane == 0) lse[row] = lse_row;
}

// grid (n_split, B·Hkv), blockDim 32·kDecWarps. R ≥ g·T rows (padding rows see no key).
// Writes o_part (B·Hq, n_split, T, D) normalised by its own l and lse_part (B·Hq, n_split, T)
// (o_s = 0, lse_s = −inf for a split the row cannot see), the layout of attn_rows_simt.
// (minBlocksPerSM = 1 stated explicitly: without it ptxas capped the R = 2 bf16 variant at
// 96 registers and spilled.)
// kPipe > 0: the loads of step j + 1 are issued before the arithmetic of step j (registers
// double-buffered). kPipe = 1 (SOMNUS_ATTN_DECODE=pipe) halves U, so the loaded data take the
// registers they took before (bf16 D 128 R 4: 159 registers, 3 blocks per SM, 4 loads in
// flight per thread at all times); kPipe = 2 (=pipe_wide; the default for R = 4 from
// 2026-11-27 until the ring replaced it on 2026-11-28, decode_variant) keeps U (201 registers, 2 blocks per SM, 8 loads per thread;
// R = 8 halves U in both); kPipe = 0 (=unpiped) is the kernel before, still the default for
// R = 1, 2, 8 (untimed there; the pipelined instances hold fewer blocks per SM). Why: without it a step's loads are issued and at once
// waited for, so each step costs a DRAM round trip plus its arithmetic, in series; at S = 1024
// (6 splits of 171 keys: 6 steps per block, one wave) ncu showed 42% of the DRAM bandwidth
// and 3 warps per scheduler (24.7 µs at ncu's clocks, and 7 µs more for attn_combine).
// Measured (H100, 2026-11-27, run 7, B 8 Hq 32 Hkv 8 D 128 bf16, µs at S 1024 / 4096 / 32768):
// unpiped 28.4 / 73.0 / 435.0, pipe 28.3 / 70.2 / 424.3, pipe_wide 26.6 / 69.6 / 420.4 (0.48 /
// 0.74 / 0.86 of the copy bandwidth). Each with its own automatic split count: 6 for unpiped
// and pipe (396 slots), 4 for pipe_wide (264). Pipelining alone (pipe vs unpiped): 0–4%; at
// S 1024 the unpiped kernel with 4 splits ran 26.3 µs, so there pipe_wide's gain is the split
// count. Less than predicted: each block's 6–8 steps still start with a DRAM round trip for q
// and the first K/V step, and end with the shared-memory merge (not profiled since).
// kFuse (SOMNUS_DECODE_COMBINE=fused; first run on a GPU 2026-11-28, H200: bitwise the
// two-launch path, as its test asks, but no faster: on pipe_wide 24.9 / 66.8 / 452.3 µs at S
// 1024 / 4096 / 32768 against 24.3 / 59.8 / 377.8 without it; ncu at S 1024 put its DRAM
// throughput at 30% against 37%: the last block's serial combine is the likely cost): no attn_combine
// launch. Each block, having written its partials, fences them and takes a ticket from
// tickets[b·Hkv + kv head] by atomicInc, which wraps it back to 0 for the next launch as the
// last block (the one drawing n_split − 1) takes it; that block combines the (b, kv head)'s g·T
// rows with combine_row (a warp per row). The tickets are per device, shared by every launch:
// two fused decodes in flight at once on different streams would mix their counts (every
// kernel here runs on the legacy default stream). o, lse, tickets: unused (nullptr) when !kFuse.
// kPipe = 3 (SOMNUS_ATTN_DECODE=ring; the default for R = 4 since its first GPU run, H200,
// 2026-11-28: 0.87 of a 1 GiB copy's bandwidth at S 32768, 0.62 at S 4096; decode_variant): K/V go to shared
// memory by cp.async, kDecRing steps in a ring, kDecRing − 1 steps ahead of the arithmetic.
// Why: pipe / pipe_wide hold one step (16 KiB a block) in flight, in registers, so a block of
// 6–8 steps still waits ~6–8 DRAM round trips; the ring keeps 2 steps (32 KiB) per block in
// flight with fewer registers than the unpiped kernel (ptxas, bf16 D 128 R 4: 147 against 161;
// 3 blocks per SM: 96 KiB in flight per SM against ~32–48 KiB), and a block's first round trip
// brings 2 steps. Predicted at S 1024 (6 steps a block): ~3 round trips instead of ~6. Each thread copies and later reads
// back only its own 16-byte slots, so it waits on its own cp.async groups and no barrier is
// needed. Keys past k_end are zero-filled by the copy (src-size 0), as the unpiped kernel
// zeroes them, so with the same U the results are bitwise the unpiped kernel's (checked under
// the emulation, which never contracts a product into an FMA; on nvcc the same source could be
// contracted differently in the two kernels, so the GPU tests compare within tolerance).
// Dynamic shared memory: decode_ring_bytes<R>() (48 KiB for R ≤ 4, 24 KiB for R = 8), with
// the static merge buffers (16.25 KiB at R = 4): 3 blocks per SM fit the H100's 228 KiB. At R
// = 1 and 2 the 48 KiB cap it at 4 blocks per SM where the unpiped kernel fits more (untimed).
template <int R, int kPipe>
constexpr int decode_u() {  // sub-steps of NSUB keys per step
  return (R >= 8 ? 2 : 4) / (kPipe == 1 || (kPipe == 2 && R >= 8) ? 2 : 1);
}
constexpr int kDecRing = 3;
template <int R>
constexpr int decode_ring_bytes() {  // U sub-steps × (K, V) × 16 bytes per thread, per stage
  return kDecRing * decode_u<R, 3>() * 2 * kDecWarps * 32 * 16;
}

template <class T, int D, int R, int kPipe = 0, bool kFuse = false>
__global__ void __launch_bounds__(kDecWarps * 32, 1)
    attn_decode_gqa(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    float* __restrict__ o_part, float* __restrict__ lse_part, int chunk, AttnDims d,
                    KvStrides kvs, T* __restrict__ o = nullptr, float* __restrict__ lse = nullptr,
                    unsigned* __restrict__ tickets = nullptr) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte load
  constexpr int LPK = D / V;                           // lanes per key row
  constexpr int KPW = 32 / LPK;                        // keys per warp per sub-step
  constexpr int NSUB = kDecWarps * KPW;                // lane groups = keys per block sub-step
  constexpr int U = decode_u<R, kPipe>();               // sub-steps per step
  constexpr int kStep = U * NSUB;                      // keys per step
  static_assert(D % V == 0 && LPK <= 32 && 32 % LPK == 0, "head dim / vector width");
  extern __shared__ __align__(16) unsigned char dec_ring[];  // kPipe == 3: decode_ring_bytes<R>()
  __shared__ float sm_acc[NSUB][R][D];
  __shared__ float sm_m[NSUB][R];
  __shared__ float sm_l[NSUB][R];

  const int sp = blockIdx.x, n_split = static_cast<int>(gridDim.x);
  const int bk = blockIdx.y;  // b·Hkv + kv head
  const int b = bk / d.Hkv, hk = bk % d.Hkv;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int grp = lane / LPK, c = lane % LPK;
  const int sub = warp * KPW + grp;  // this lane group's key within a block sub-step
  const int rows = d.g * d.T;
  const int k_lo = sp * chunk, k_hi = min(d.S, k_lo + chunk);

  float qv[R][V], acc[R][V], m[R], l[R];
  int vis[R];  // keys [k_lo, vis[r]) of this split are visible from row r
  int k_end = k_lo;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const bool live = r < rows;
    const int t = live ? r % d.T : 0;
    const int h = hk * d.g + (live ? r / d.T : 0);
    vis[r] = live ? max(k_lo, min(k_hi, d.visible(t))) : k_lo;
    k_end = max(k_end, vis[r]);
    const Vec<T, V> qx = load_vec<V>(q + ((static_cast<int64_t>(b) * d.Hq + h) * d.T + t) * D + c * V, 0);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      qv[r][e] = live ? to_f(qx.v[e]) * d.scale : 0.f;
      acc[r][e] = 0.f;
    }
    m[r] = -INFINITY;
    l[r] = 0.f;
  }

  const int64_t kv_base = b * kvs.sb + hk * kvs.sh + c * V;  // strided cache views too
  const T* kp = k + kv_base;
  const T* vp = v + kv_base;
  // The step starting at key j0: this lane group's keys j0 + u·NSUB + sub (zeros past k_end).
  const auto load_step = [&](int j0, Vec<T, V>(&kx)[U], Vec<T, V>(&vx)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * NSUB + sub;
      if (j < k_end) {
        kx[u] = load_vec<V>(kp + static_cast<int64_t>(j) * D, 0);
        vx[u] = load_vec<V>(vp + static_cast<int64_t>(j) * D, 0);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          kx[u].v[e] = static_cast<T>(0.f);
          vx[u].v[e] = static_cast<T>(0.f);
        }
      }
    }
  };
  // kPipe == 3: this thread's 16-byte slot for sub-step u's K (kv 0) or V (kv 1) in ring stage
  // `stage`; consecutive threads, consecutive slots.
  const auto ring_slot = [&](int stage, int u, int kv) {
    return reinterpret_cast<uint16_t*>(dec_ring) + (((stage * U + u) * 2 + kv) * (kDecWarps * 32) + threadIdx.x) * 8;
  };
  const auto issue_step = [&](int j0, int stage) {  // cp.async of the step at j0 (zero-filled past k_end)
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * NSUB + sub;
      const bool ok = j < k_end;
      const int64_t off = static_cast<int64_t>(ok ? j : 0) * D;
      cp_async16(ring_slot(stage, u, 0), reinterpret_cast<const uint16_t*>(kp + off), ok);
      cp_async16(ring_slot(stage, u, 1), reinterpret_cast<const uint16_t*>(vp + off), ok);
    }
  };
  [[maybe_unused]] const int n_steps = (k_end - k_lo + kStep - 1) / kStep;  // block-uniform
  Vec<T, V> kx[U], vx[U];
  if constexpr (kPipe == 1 || kPipe == 2) load_step(k_lo, kx, vx);
  if constexpr (kPipe == 3) {  // the ring's first kDecRing − 1 steps; one commit group per step, empty or not
#pragma unroll
    for (int st = 0; st < kDecRing - 1; ++st) {
      if (st < n_steps) issue_step(k_lo + st * kStep, st);
      cp_async_commit();
    }
  }
  // k_end is block-uniform, so every lane runs the same iterations (full-warp shuffles).
  int it = 0;
  for (int j0 = k_lo; j0 < k_end; j0 += kStep, ++it) {
    Vec<T, V> kn[U], vn[U];  // kPipe 1, 2: the next step's keys, in flight during this step's arithmetic
    if constexpr (kPipe == 3) {
      const int ahead = it + kDecRing - 1;
      if (ahead < n_steps) issue_step(k_lo + ahead * kStep, ahead % kDecRing);
      cp_async_commit();
      cp_async_wait<kDecRing - 1>();  // this thread's copies of step `it` have landed
#pragma unroll
      for (int u = 0; u < U; ++u) {
        kx[u] = *reinterpret_cast<const Vec<T, V>*>(ring_slot(it % kDecRing, u, 0));
        vx[u] = *reinterpret_cast<const Vec<T, V>*>(ring_slot(it % kDecRing, u, 1));
      }
    } else if constexpr (kPipe > 0) {
      load_step(j0 + kStep, kn, vn);
    } else {
      load_step(j0, kx, vx);
    }
    float s[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * NSUB + sub;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float x = 0.f;
#pragma unroll
        for (int e = 0; e < V; ++e) x += qv[r][e] * to_f(kx[u].v[e]);
#pragma unroll
        for (int o = LPK / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
        s[u][r] = j < vis[r] ? x : -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float mx = m[r];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[u][r]);
      const float mu = mx == -INFINITY ? 0.f : mx;  // nothing seen yet: every p is e^(−inf) = 0
      const float alpha = __expf(m[r] - mu);
      l[r] *= alpha;
#pragma unroll
      for (int e = 0; e < V; ++e) acc[r][e] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float p = __expf(s[u][r] - mu);
        l[r] += p;
        const float pv = mma_round<T>(p);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[r][e] += pv * to_f(vx[u].v[e]);
      }
      m[r] = mx;
    }
    if constexpr (kPipe == 1 || kPipe == 2) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        kx[u] = kn[u];
        vx[u] = vn[u];
      }
    }
  }

  // Merge the NSUB lane-group states of the block per (row, column).
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int e = 0; e < V; ++e) sm_acc[sub][r][c * V + e] = acc[r][e];
    if (c == 0) {
      sm_m[sub][r] = m[r];
      sm_l[sub][r] = l[r];
    }
  }
  __syncthreads();
  for (int idx = static_cast<int>(threadIdx.x); idx < rows * D; idx += static_cast<int>(blockDim.x)) {
    const int r = idx / D, x = idx % D;
    const int t = r % d.T, h = hk * d.g + r / d.T;
    const int64_t pidx = ((static_cast<int64_t>(b) * d.Hq + h) * n_split + sp) * d.T + t;
    float M = -INFINITY;
#pragma unroll
    for (int u = 0; u < NSUB; ++u) M = fmaxf(M, sm_m[u][r]);
    if (M == -INFINITY) {  // the row sees no key of this split: weight 0 in the combine
      o_part[pidx * D + x] = 0.f;
      if (x == 0) lse_part[pidx] = -INFINITY;
      continue;
    }
    float L = 0.f, A = 0.f;
#pragma unroll
    for (int u = 0; u < NSUB; ++u) {
      const float w = __expf(sm_m[u][r] - M);
      L += sm_l[u][r] * w;
      A += sm_acc[u][r][x] * w;
    }
    o_part[pidx * D + x] = A / L;  // L >= 1: the state holding M has p = 1 for its max key
    if (x == 0) lse_part[pidx] = M + logf(L);
  }
  if constexpr (kFuse) {
    __shared__ int last[1];
    __threadfence();  // this block's partials, device-wide, before its ticket
    __syncthreads();
    // atomicInc wraps the counter to 0 for the last block, in the same atomic step: no reset
    // store that a later launch could race. It counts right only from 0: a counter left at
    // c != 0 stays c after every later launch (n takes modulo n), and a wrong block combines
    // each time. The tickets start zeroed (cudaMemset at allocation), and a kernel stops
    // partway only through a fault that leaves the context unusable.
    if (threadIdx.x == 0) {
      const unsigned top = static_cast<unsigned>(n_split - 1);
      last[0] = atomicInc(tickets + bk, top) == top;
    }
    __syncthreads();
    if (!last[0]) return;
    __threadfence();  // the other blocks fenced theirs before taking their tickets
    for (int r = warp; r < rows; r += kDecWarps) {
      const int64_t row = (static_cast<int64_t>(b) * d.Hq + hk * d.g + r / d.T) * d.T + r % d.T;
      combine_row<T, D, true>(o_part, lse_part, o, lse, row, d.T, n_split, lane);
    }
  }
}

// f(std::integral_constant<int, R>) with the R the GQA decode kernel takes for `rows` rows.
template <class F>
void with_decode_rows(int rows, F&& f) {
  if (rows <= 1) {
    f(std::integral_constant<int, 1>{});
  } else if (rows <= 2) {
    f(std::integral_constant<int, 2>{});
  } else if (rows <= 4) {
    f(std::integral_constant<int, 4>{});
  } else {
    f(std::integral_constant<int, kDecMaxRows>{});
  }
}

// f(tag, smem) with the attn_decode_gqa instance of `var` as decltype(tag)::value (a constant,
// so that decode_slots can take it as its template argument) and its dynamic shared memory in
// bytes (the ring's; 0 for the others).
template <auto K>
using KernelTag = std::integral_constant<decltype(K), K>;
template <class T, int D, int R, class F>
void with_decode_kernel(const DecodeVariant& var, F&& f) {
  if (var.fuse && var.pipe == 3) {
    f(KernelTag<&attn_decode_gqa<T, D, R, 3, true>>{}, decode_ring_bytes<R>());
  } else if (var.fuse) {
    f(KernelTag<&attn_decode_gqa<T, D, R, 2, true>>{}, 0);
  } else if (var.pipe == 1) {
    f(KernelTag<&attn_decode_gqa<T, D, R, 1>>{}, 0);
  } else if (var.pipe == 2) {
    f(KernelTag<&attn_decode_gqa<T, D, R, 2>>{}, 0);
  } else if (var.pipe == 3) {
    f(KernelTag<&attn_decode_gqa<T, D, R, 3>>{}, decode_ring_bytes<R>());
  } else {
    f(KernelTag<&attn_decode_gqa<T, D, R, 0>>{}, 0);
  }
}

// Lets Kernel take `bytes` of dynamic shared memory on the current device (needed when its
// static and dynamic shared memory together pass 48 KiB); once per kernel and device.
template <auto Kernel>
void allow_dynamic_smem(int bytes) {
  if (bytes == 0) return;
  static std::atomic<uint64_t> done{0};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
  if (bit != 0 && (done.load() & bit) != 0) return;
  CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.fetch_or(bit);
}

// `tickets` (the fused combine: nullptr unless decode_tickets gave them): o and lse are
// written by the decode kernel itself; else the caller launches attn_combine. Returns whether
// the kernel that ran combined (the caller skips attn_combine only then: the variant is read
// from the environment here, the tickets were asked for before).
template <class T, int D>
bool launch_decode_gqa(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d, int n_split, int chunk,
                       float* o_part, float* lse_part, T* o, float* lse, unsigned* tickets) {
  const dim3 grid(n_split, d.B * d.Hkv);
  bool fused = false;
  with_decode_rows(d.g * d.T, [&](auto rows_tag) {
    constexpr int R = decltype(rows_tag)::value;
    DecodeVariant var = decode_variant(R);
    var.fuse = var.fuse && tickets != nullptr;
    fused = var.fuse;
    with_decode_kernel<T, D, R>(var, [&](auto tag, int smem) {
      allow_dynamic_smem<decltype(tag)::value>(smem);
      decltype(tag)::value<<<grid, kDecWarps * 32, smem>>>(q.data<T>(), k.data<T>(), v.data<T>(), o_part, lse_part,
                                                            chunk, d, kv_strides(k), o, lse,
                                                            var.fuse ? tickets : nullptr);
    });
  });
  CUDA_CHECK_LAUNCH();
  return fused;
}

// The fused combine's tickets: one zeroed unsigned per (b, kv head), kDecodeTickets per device,
// allocated once (cudaMalloc, like matmul.cu's workspace: a fixed per-device cost outside the
// tensor allocator) and left zero by every launch. nullptr when SOMNUS_DECODE_COMBINE is not
// "fused" or the launch needs more (then the two-launch path runs).
constexpr int64_t kDecodeTickets = 16384;
unsigned* decode_tickets(int64_t needed) {
  if (!env_equals("SOMNUS_DECODE_COMBINE", "fused") || needed > kDecodeTickets) return nullptr;
  constexpr int kMaxDevices = 64;
  static std::mutex mu;
  static unsigned* per_device[kMaxDevices] = {};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= kMaxDevices) return nullptr;
  std::lock_guard<std::mutex> lock(mu);
  if (per_device[dev] == nullptr) {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, kDecodeTickets * sizeof(unsigned)));
    CUDA_CHECK(cudaMemset(p, 0, kDecodeTickets * sizeof(unsigned)));
    per_device[dev] = static_cast<unsigned*>(p);
  }
  return per_device[dev];
}

// The number of splits when the caller leaves it to the backend: the wave-efficiency rule of
// kernels/decode_splits.h over this device's slots (SMs × resident blocks of the kernel that
// will run). On an H100 at B 8, Hkv 8 it gives 6 splits at S 1024 and 4096 for the unpiped
// R = 4 kernel (396 slots: one wave of 384 blocks) where S / 256 gave 4 and 16, and 4 splits
// for pipe_wide, the R = 4 default from 2026-11-27 to 2026-11-28 (264 slots: 256 blocks); the
// ring, the R = 4 default since, holds 3 blocks per SM like the unpiped kernel: 6 splits (ncu,
// H200, S 1024: 384 blocks). Measured: see attn_decode_gqa.
// Slots (SMs × resident blocks of Kernel at `threads` threads) of the current device, asked
// once per kernel, block size and device (a decode runs per layer per token).
template <auto Kernel>
int64_t decode_slots(int threads, int smem = 0) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int64_t> cache[kMaxDevices][kRowWarps + 1] = {};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const int slot = threads / 32 <= kRowWarps ? threads / 32 : 0;
  if (dev < kMaxDevices && cache[dev][slot].load() > 0) return cache[dev][slot].load();
  int sms = 0, per_sm = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  allow_dynamic_smem<Kernel>(smem);
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, threads, smem));
  const int64_t slots = static_cast<int64_t>(sms) * std::max(per_sm, 1);
  if (dev < kMaxDevices) cache[dev][slot].store(slots);
  return slots;
}

template <class T, int D>
int64_t auto_decode_splits(const AttnDims& d, bool gqa) {
  int64_t blocks = 0, slots = 0;
  if (gqa) {
    with_decode_rows(d.g * d.T, [&](auto rows_tag) {
      constexpr int R = decltype(rows_tag)::value;
      with_decode_kernel<T, D, R>(decode_variant(R), [&](auto tag, int smem) {
        slots = decode_slots<decltype(tag)::value>(kDecWarps * 32, smem);
      });
    });
    blocks = static_cast<int64_t>(d.B) * d.Hkv;
  } else {
    const int warps = std::min(kRowWarps, d.T);
    slots = decode_slots<attn_rows_simt<T, D>>(warps * 32);
    blocks = static_cast<int64_t>((d.T + warps - 1) / warps) * d.B * d.Hq;
  }
  return decode_splits_for_waves(blocks, slots, d.S);
}

// A warp per (b, h, query row): combines the n_split partials.
template <class T, int D>
__global__ void attn_combine(const float* __restrict__ o_part, const float* __restrict__ lse_part, T* __restrict__ o,
                             float* __restrict__ lse, int64_t rows, int Tq, int n_split) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  combine_row<T, D, false>(o_part, lse_part, o, lse, row, Tq, n_split, static_cast<int>(threadIdx.x % 32));
}

}  // namespace

void attention_fwd(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal, double scale,
                   int64_t q_offset, const Tensor& o, const Tensor& lse) {
  set_device(q_in);
  const Tensor q = aligned16(q_in), k = aligned16(k_in), v = aligned16(v_in);
  check_aligned16(o, "attention_fwd", "o");
  const AttnDims d = dims_of(q, k, causal, scale, q_offset);
  visit_attn_dtype(q.dtype(), "attention_fwd", [&](auto tag) {
    using T = decltype(tag);
    visit_head_dim(q.size(3), "attention_fwd", [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      if constexpr (std::is_same_v<T, bf16>) {
        auto launch = [&](auto kernel, int smem, int rows_per_block = kMmaBr) {
          const dim3 grid((d.T + rows_per_block - 1) / rows_per_block, d.B * d.Hq);
          CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
          kernel<<<grid, rows_per_block / 16 * 32, smem>>>(
              reinterpret_cast<const uint16_t*>(q.data_ptr()), reinterpret_cast<const uint16_t*>(k.data_ptr()),
              reinterpret_cast<const uint16_t*>(v.data_ptr()), reinterpret_cast<uint16_t*>(o.data_ptr()),
              lse.data<float>(), d);
          CUDA_CHECK_LAUNCH();
        };
        // v3 needs scale > 0 (its row max is of the unscaled
        // scores) and two resident blocks per SM (102 KiB of shared memory each at D = 128:
        // sm_90 yes; sm_80 and sm_86/89 no), else mma runs.
        const std::string version = fwd_version<D>(d.scale);
        if (version == "wgmma") {
          launch(attn_fwd_wg<D, false>, wg_smem_bytes<D>(), kWgBr);
        } else if (version == "wgmma_pipe") {
          launch(attn_fwd_wg<D, true>, wg_smem_bytes<D, true>(), kWgBr);
        } else if (version == "wgmma_ws" || version == "wgmma_wspp" || version == "wgmma_persist") {
          // Tensors through TMA maps; a block per work item (query tile, (b, h)), or with
          // "wgmma_persist" one block per SM running the items in turn.
          const WsMaps m = ws_maps<D>(q.data_ptr(), k.data_ptr(), v.data_ptr(), d);
          const int64_t n_work = int64_t{(d.T + kWgBr - 1) / kWgBr} * d.B * d.Hq;
          const int64_t blocks = version == "wgmma_persist" ? std::min<int64_t>(n_work, persistent_blocks()) : n_work;
          const dim3 grid(static_cast<unsigned>(blocks));
          const auto kernel = version == "wgmma_ws" ? attn_fwd_ws<D, false> : attn_fwd_ws<D, true>;
          CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ws_smem_bytes<D>()));
          kernel<<<grid, kWsThreads, ws_smem_bytes<D>()>>>(m.q, m.k, m.v, reinterpret_cast<uint16_t*>(o.data_ptr()),
                                                           lse.data<float>(), d);
          CUDA_CHECK_LAUNCH();
        } else if (version == "v3") {
          launch(attn_fwd_v3<D>, v3_smem_bytes<D>(), kV3Br);
        } else if (version == "v1") {
          launch(attn_fwd_mma<D, false, false>, mma_smem_bytes<D>());
        } else if (version == "v2") {
          launch(attn_fwd_mma<D, true, false>, mma_smem_bytes<D>());
        } else {
          launch(attn_fwd_mma<D, true, true>, mma_smem_bytes<D>(true));
        }
      } else {
        launch_rows<T, D>(q, k, v, d, 1, d.S, o, lse, nullptr, nullptr);
      }
    });
  });
}

std::string attention_bwd_kernel(DType dtype, int64_t head_dim, double scale) {
  if (dtype != DType::bf16 || env_equals("SOMNUS_ATTN_BWD", "simt")) return "simt";
  std::string version;
  visit_head_dim(head_dim, "attention_bwd_kernel", [&](auto dim) {
    version = bwd_mma_version<decltype(dim)::value>(static_cast<float>(scale));
  });
  return version;
}

std::string attention_fwd_kernel(DType dtype, int64_t head_dim, double scale) {
  if (dtype != DType::bf16) return "simt";
  std::string version;
  visit_head_dim(head_dim, "attention_fwd_kernel", [&](auto dim) {
    version = fwd_version<decltype(dim)::value>(static_cast<float>(scale));
  });
  return version;
}

void attention_bwd(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& o, const Tensor& lse,
                   const Tensor& dout_in, bool causal, double scale, int64_t q_offset, bool deterministic,
                   const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  set_device(q_in);
  const Tensor q = aligned16(q_in), k = aligned16(k_in), v = aligned16(v_in), dout = aligned16(dout_in);
  check_aligned16(dq, "attention_bwd", "dq");
  check_aligned16(dk, "attention_bwd", "dk");
  check_aligned16(dv, "attention_bwd", "dv");
  const AttnDims d = dims_of(q, k, causal, scale, q_offset);
  const int64_t rows = static_cast<int64_t>(d.B) * d.Hq * d.T;
  Tensor delta = Tensor::empty({rows}, DType::f32, q.device());
  visit_attn_dtype(q.dtype(), "attention_bwd", [&](auto tag) {
    using T = decltype(tag);
    visit_head_dim(q.size(3), "attention_bwd", [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      // A warp per row and no grid-stride loop: one block per 4 rows (grid_for caps the grid).
      attn_bwd_delta<T, D><<<static_cast<unsigned>((rows + 3) / 4), 128>>>(o.data<T>(), dout.data<T>(),
                                                                          delta.data<float>(), rows);
      CUDA_CHECK_LAUNCH();
      if constexpr (std::is_same_v<T, bf16>) {
        // bf16: the tensor-core kernels unless SOMNUS_ATTN_BWD=simt.
        if (!env_equals("SOMNUS_ATTN_BWD", "simt")) {
          attention_bwd_mma(q, k, v, dout, lse, delta, d, deterministic, dq, dk, dv);
          return;
        }
      }
      Tensor dq_acc;  // the SIMT kernels' atomic dQ
      if (!deterministic) dq_acc = zeros_f32(q.numel(), q.device());
      const dim3 kv_grid((d.S + kKeyWarps - 1) / kKeyWarps, d.B * d.Hkv);
      attn_bwd_dkdv<T, D><<<kv_grid, kKeyWarps * 32>>>(q.data<T>(), k.data<T>(), v.data<T>(), dout.data<T>(),
                                                      lse.data<float>(), delta.data<float>(), dk.data<T>(),
                                                      dv.data<T>(), deterministic ? nullptr : dq_acc.data<float>(), d);
      CUDA_CHECK_LAUNCH();
      if (deterministic) {
        const dim3 q_grid((d.T + kRowWarps - 1) / kRowWarps, d.B * d.Hq);
        attn_bwd_dq<T, D><<<q_grid, kRowWarps * 32>>>(q.data<T>(), k.data<T>(), v.data<T>(), dout.data<T>(),
                                                     lse.data<float>(), delta.data<float>(), dq.data<T>(), d);
      } else {
        cast_from_f32<T><<<grid_for(q.numel(), 256), 256>>>(dq_acc.data<float>(), dq.data<T>(), q.numel());
      }
      CUDA_CHECK_LAUNCH();
    });
  });
}

void attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, int64_t q_offset,
                      int64_t num_splits, const Tensor& o, const Tensor& lse) {
  set_device(q);
  const AttnDims d = dims_of(q, k, causal, scale, q_offset);
  const KvStrides kvs = kv_strides(k), vs = kv_strides(v);
  if (!kv_rows_ok(k) || !kv_rows_ok(v) || vs.sb != kvs.sb || vs.sh != kvs.sh) {
    throw_error("attention_decode (CUDA): k and v need rows of D contiguous elements and the same batch and head "
                "strides: k " + shape_str(k.shape()) + " v " + shape_str(v.shape()));
  }
  const int64_t rows = static_cast<int64_t>(d.B) * d.Hq * d.T;
  visit_attn_dtype(q.dtype(), "attention_decode", [&](auto tag) {
    using T = decltype(tag);
    visit_head_dim(q.size(3), "attention_decode", [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      const bool aligned = aligned_to(q.data<T>(), 16) && aligned_to(k.data<T>(), 16) && aligned_to(v.data<T>(), 16) &&
                           (kvs.sb * static_cast<int64_t>(sizeof(T))) % 16 == 0 &&
                           (kvs.sh * static_cast<int64_t>(sizeof(T))) % 16 == 0;
      const bool gqa = static_cast<int64_t>(d.g) * d.T <= kDecMaxRows && aligned &&
                       !env_equals("SOMNUS_ATTN_DECODE", "simt");
      const int64_t splits = std::min<int64_t>(num_splits > 0 ? num_splits : auto_decode_splits<T, D>(d, gqa), d.S);
      const int chunk = static_cast<int>((d.S + splits - 1) / splits);
      const int n_split = (d.S + chunk - 1) / chunk;
      if (n_split > 65535) throw_error("attention_decode (CUDA): too many splits: " + std::to_string(n_split));
      Tensor o_part = Tensor::empty({rows * n_split * q.size(3)}, DType::f32, q.device());
      Tensor lse_part = Tensor::empty({rows * n_split}, DType::f32, q.device());
      if (gqa) {
        unsigned* tickets = decode_tickets(static_cast<int64_t>(d.B) * d.Hkv);
        if (launch_decode_gqa<T, D>(q, k, v, d, n_split, chunk, o_part.data<float>(), lse_part.data<float>(),
                                    o.data<T>(), lse.data<float>(), tickets)) {
          return;  // combined in the kernel
        }
      } else {
        launch_rows<T, D>(q, k, v, d, n_split, chunk, Tensor(), Tensor(), o_part.data<float>(),
                          lse_part.data<float>());
      }
      // A warp per row, no grid-stride loop: one block per 4 rows (grid_for caps the grid).
      attn_combine<T, D><<<static_cast<unsigned>((rows + 3) / 4), 128>>>(
          o_part.data<float>(), lse_part.data<float>(), o.data<T>(), lse.data<float>(), rows, d.T, n_split);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace somnus::kernels::cuda
