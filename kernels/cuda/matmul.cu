// matmul on CUDA through cuBLASLt: out (Bt, M, N) = a (Bt, M, K) @ b (Bt or 1, K, N)
// [+ bias (N,)] [then gelu, tanh form], optionally also writing pre_gelu = a @ b + bias.
//
// cuBLAS is column-major, our tensors row-major: a row-major (M, N) matrix is the column-major
// (N, M) matrix with the same bytes, so we compute out^T = b^T · a^T, with cuBLAS's A = b and
// B = a. A transposed view (unit stride on the row dim) is passed with CUBLAS_OP_T instead of
// being copied; only views that neither layout describes (overlapping or broadcast strides) are
// made contiguous first.
//
// Batching: one GEMM when Bt == 1; when b is shared and a's batches are stacked rows (the
// Linear layer case), the batch folds into M; when both have a batch stride, one strided-
// batched GEMM; otherwise (a broadcast a, or a shared b that cannot fold) one GEMM per batch.
//
// Types: f32 (CUBLAS_COMPUTE_32F; TF32 tensor cores only after set_allow_tf32(true)), bf16
// inputs and output with f32 accumulation (CUBLAS_COMPUTE_32F), f64 (CUBLAS_COMPUTE_64F).
// Epilogues run inside the GEMM (CUBLASLT_EPILOGUE_BIAS, GELU, GELU_BIAS, GELU_AUX[_BIAS] for
// pre_gelu). The GELU aux output needs a leading dim divisible by 8 and a 16-byte aligned
// pointer; when that fails, when the epilogue has no cuBLASLt algorithm (f64), or in the
// per-batch loop, the bias/GELU run as a separate elementwise kernel (bias_gelu_kernel).
// cuBLASLt's GELU epilogue is the tanh approximation, like ours.
// Backward epilogue (issue 4 §2): matmul_dgelu_bgrad (kernels/matmul_dgelu.h) runs the
// second MLP layer's input-gradient GEMM dh = g · W2 with CUBLASLT_EPILOGUE_DGELU_BGRAD:
// D = (A·B) ∘ gelu'(aux) with aux = the GELU_AUX pre-activation written above (same dtype
// as D, ld % 8 == 0, 16-byte aligned), and the bias pointer receiving the bias gradient, the
// sums of D over its columns in cuBLAS's column-major view (over our rows): dL/db1. DGELU
// alone when dbias is not wanted. The bias gradient has D's dtype (the attribute's default).
// autograd/fused_mlp.h pairs the two MLP layers in one node to use it. When the heuristic
// has no algorithm (or for f64, or layouts it cannot take) the caller falls back to the
// unfused matmul, gelu' and reduction. BGRADA/BGRADB (a bias gradient fused into the
// weight-gradient GEMM) are not used: the bias reduction is already fused here for b1, and
// b2's is one small reduction of g.
//
// Cost: 2·Bt·M·N·K FLOPs; bytes (Bt·M·K + Bb·K·N + Bt·M·N)·sizeof(T) (+ Bt·M·N for pre_gelu).
// matmul_f32_out (for the fused lm-head losses, kernels/cuda/losses.cu): bf16 (or f32) a and b,
// an f32 D (CUDA_R_16BF A/B, CUDA_R_32F C/D, CUBLAS_COMPUTE_32F: a combination cuBLASLt lists),
// and optionally beta = 1 with C = D, so a chunk's dW += Gᵀ h accumulates in place.
// Handles and 32 MiB workspaces are cached per device; heuristic results are cached per
// problem (shape, strides, dtype, epilogue, pointer alignment), so a repeated matmul costs
// only descriptor set-up and the launch.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"
#include "kernels/matmul_dgelu.h"

namespace somnus::kernels::cuda {

// ---------------------------------------------------------------- cuBLAS error checking

inline void cublas_check(cublasStatus_t status, const char* expr, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) [[unlikely]] {
    throw_error(std::string("cuBLAS error: ") + cublasLtGetStatusName(status) + " (" +
                cublasLtGetStatusString(status) + ") in " + expr + " at " + file + ":" + std::to_string(line));
  }
}

#define CUBLAS_CHECK(expr) ::somnus::kernels::cuda::cublas_check((expr), #expr, __FILE__, __LINE__)

// ---------------------------------------------------------------- TF32 switch

namespace {
std::atomic<bool> g_allow_tf32{false};
}

void set_allow_tf32(bool allow) { g_allow_tf32.store(allow); }
bool allow_tf32() { return g_allow_tf32.load(); }

namespace {

// ---------------------------------------------------------------- per-device context

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // what cuBLAS recommends for Hopper

struct LtContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Created on first use and never destroyed: it must outlive every static tensor and any
// matmul issued during process teardown. The workspace is a fixed per-device cost like the
// CUDA context, so it comes from cudaMalloc rather than the (stats-tracked) tensor allocator.
LtContext& lt_context(int device) {
  static std::mutex mu;
  static auto* contexts = new std::vector<std::unique_ptr<LtContext>>();
  std::lock_guard<std::mutex> lock(mu);
  if (contexts->size() <= static_cast<size_t>(device)) contexts->resize(device + 1);
  auto& slot = (*contexts)[device];
  if (!slot) {
    auto ctx = std::make_unique<LtContext>();
    CUBLAS_CHECK(cublasLtCreate(&ctx->handle));
    const cudaError_t err = cudaMalloc(&ctx->workspace, kWorkspaceBytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // run without a workspace: cuBLASLt then picks algorithms that need none
      ctx->workspace = nullptr;
    } else {
      CUDA_CHECK(err);
      ctx->workspace_bytes = kWorkspaceBytes;
    }
    slot = std::move(ctx);
  }
  return *slot;
}

// ---------------------------------------------------------------- RAII for descriptors

// Destroyed with a checked call on the normal path (release()); the destructor only cleans up
// during exception unwinding, where a second error could not be reported anyway.
template <class H, cublasStatus_t (*Destroy)(H)>
struct LtHandle {
  H h = nullptr;
  LtHandle() = default;
  LtHandle(const LtHandle&) = delete;
  LtHandle& operator=(const LtHandle&) = delete;
  ~LtHandle() {
    if (h) Destroy(h);
  }
  void release() {
    if (h) {
      H tmp = h;
      h = nullptr;
      CUBLAS_CHECK(Destroy(tmp));
    }
  }
};
using MatmulDesc = LtHandle<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using MatrixLayout = LtHandle<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using Preference = LtHandle<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

// ---------------------------------------------------------------- operands

// One cuBLAS operand: op(stored) is the matrix cuBLAS multiplies; `stored` is column-major
// rows × cols with leading dim ld.
struct Operand {
  cublasOperation_t op = CUBLAS_OP_N;
  uint64_t rows = 0, cols = 0;
  int64_t ld = 0;
};

// The row-major logical matrix X (R × C, element strides sr, sc) handed to cuBLAS as X^T:
//   X row-major (sc == 1): its bytes are the column-major (C × R) matrix X^T, ld sr: op N.
//   X column-major (sr == 1, a transposed view): the column-major (R × C) matrix X, ld sc: op T.
// Size-1 dims have meaningless strides, so they are normalised. nullopt: needs a copy.
std::optional<Operand> transposed_operand(int64_t R, int64_t C, int64_t sr, int64_t sc) {
  if ((sc == 1 || C == 1) && (R == 1 || sr >= std::max<int64_t>(C, 1))) {
    return Operand{CUBLAS_OP_N, static_cast<uint64_t>(C), static_cast<uint64_t>(R),
                   R == 1 ? std::max<int64_t>(C, 1) : sr};
  }
  if ((sr == 1 || R == 1) && (C == 1 || sc >= std::max<int64_t>(R, 1))) {
    return Operand{CUBLAS_OP_T, static_cast<uint64_t>(R), static_cast<uint64_t>(C),
                   C == 1 ? std::max<int64_t>(R, 1) : sc};
  }
  return std::nullopt;
}

// The cuBLAS view of the (R × C) matrix of t over its dims (dr, dc): t itself when a leading
// dim describes it, else a contiguous copy, which `use` keeps alive for the call.
Operand operand_of(const Tensor& t, int64_t R, int64_t C, int dr, int dc, Tensor& use, const char* op) {
  use = t;
  std::optional<Operand> o = transposed_operand(R, C, t.stride(dr), t.stride(dc));
  if (!o) {
    use = t.contiguous();
    o = transposed_operand(R, C, use.stride(dr), use.stride(dc));
  }
  if (!o) throw_error(std::string(op) + ": internal error: contiguous operand not describable");
  return *o;
}

// ---------------------------------------------------------------- one cuBLASLt call

struct Gemm {
  DType dtype = DType::f32;
  Operand A, B;                // cuBLAS A (our b, giving b^T) and B (our a, giving a^T)
  const void* a_ptr = nullptr;  // cuBLAS A
  const void* b_ptr = nullptr;  // cuBLAS B
  void* d_ptr = nullptr;
  uint64_t m = 0, n = 0, k = 0;  // D is m × n column-major, ld ldd
  int64_t ldd = 0;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_d = 0;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  void* aux = nullptr;
  int64_t aux_ld = 0, aux_stride = 0;
  bool f32_out = false;     // D (and C) in f32 whatever the input dtype (matmul_f32_out)
  bool accumulate = false;  // beta = 1: D = A·B + D (matmul_f32_out)
};

cudaDataType_t cuda_type(DType d) {
  switch (d) {
    case DType::f32: return CUDA_R_32F;
    case DType::f64: return CUDA_R_64F;
    case DType::bf16: return CUDA_R_16BF;
    default: throw_error(std::string("matmul: unsupported dtype ") + dtype_name(d) + " (expected f32, f64 or bf16)");
  }
}

int64_t alignment_class(const void* p) {
  if (p == nullptr) return 0;
  const auto u = reinterpret_cast<uintptr_t>(p);
  int64_t a = 1;
  while (a < 256 && u % (2 * a) == 0) a *= 2;
  return a;
}

// Heuristic results, cached by everything the heuristic looks at.
struct AlgoKey {
  std::array<int64_t, 29> f{};
  bool operator==(const AlgoKey& o) const { return f == o.f; }
};
struct AlgoKeyHash {
  size_t operator()(const AlgoKey& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
    for (int64_t v : k.f) {
      h ^= static_cast<uint64_t>(v);
      h *= 1099511628211ull;
    }
    return static_cast<size_t>(h);
  }
};
struct CachedAlgo {
  bool supported = false;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

AlgoKey make_key(int device, const Gemm& g, int compute) {
  AlgoKey k;
  int i = 0;
  auto put = [&](int64_t v) { k.f[i++] = v; };
  put(device);
  put(static_cast<int64_t>(g.dtype));
  put(compute);
  put(g.A.op), put(static_cast<int64_t>(g.A.rows)), put(static_cast<int64_t>(g.A.cols)), put(g.A.ld);
  put(g.B.op), put(static_cast<int64_t>(g.B.rows)), put(static_cast<int64_t>(g.B.cols)), put(g.B.ld);
  put(static_cast<int64_t>(g.m)), put(static_cast<int64_t>(g.n)), put(g.ldd);
  put(g.batch), put(g.stride_a), put(g.stride_b), put(g.stride_d);
  put(static_cast<int64_t>(g.epilogue)), put(g.aux_ld), put(g.aux_stride);
  put(alignment_class(g.a_ptr)), put(alignment_class(g.b_ptr)), put(alignment_class(g.d_ptr));
  put(alignment_class(g.bias)), put(alignment_class(g.aux));
  put(static_cast<int64_t>(g.k));
  put(g.f32_out ? 1 : 0), put(g.accumulate ? 1 : 0);
  return k;
}

void set_layout_batch(const MatrixLayout& l, int64_t batch, int64_t stride) {
  if (batch <= 1) return;
  const int32_t count = static_cast<int32_t>(batch);
  CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l.h, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l.h, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                sizeof(stride)));
}

// Runs g. Returns false (and does nothing) when cuBLASLt has no algorithm for it; the caller
// falls back to a plain GEMM plus the epilogue kernel. Every other failure throws.
bool run_gemm(int device, const Gemm& g) {
  if (g.batch > INT32_MAX) throw_error("matmul: batch count " + std::to_string(g.batch) + " exceeds cuBLASLt's limit");
  LtContext& ctx = lt_context(device);
  const cudaDataType_t dt = cuda_type(g.dtype);
  cublasComputeType_t compute;
  cudaDataType_t scale_type;
  if (g.dtype == DType::f64) {
    compute = CUBLAS_COMPUTE_64F;
    scale_type = CUDA_R_64F;
  } else {
    compute = (g.dtype == DType::f32 && allow_tf32()) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    scale_type = CUDA_R_32F;
  }

  MatmulDesc desc;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.h, compute, scale_type));
  const int32_t opa = g.A.op, opb = g.B.op;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
  const cublasLtEpilogue_t epi = g.epilogue;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (g.bias != nullptr) {
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
  }
  if (g.aux != nullptr) {
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux,
                                                sizeof(g.aux)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &g.aux_ld,
                                                sizeof(g.aux_ld)));
    if (g.batch > 1) {
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE,
                                                  &g.aux_stride, sizeof(g.aux_stride)));
    }
  }

  MatrixLayout la, lb, ld;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la.h, dt, g.A.rows, g.A.cols, g.A.ld));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb.h, dt, g.B.rows, g.B.cols, g.B.ld));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld.h, g.f32_out ? CUDA_R_32F : dt, g.m, g.n, g.ldd));
  set_layout_batch(la, g.batch, g.stride_a);
  set_layout_batch(lb, g.batch, g.stride_b);
  set_layout_batch(ld, g.batch, g.stride_d);

  // Heuristic (cached).
  static std::mutex cache_mu;
  static auto* cache = new std::unordered_map<AlgoKey, CachedAlgo, AlgoKeyHash>();
  const AlgoKey key = make_key(device, g, static_cast<int>(compute));
  CachedAlgo algo;
  bool found = false;
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache->find(key);
    if (it != cache->end()) {
      algo = it->second;
      found = true;
    }
  }
  if (!found) {
    Preference pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.h));
    const uint64_t ws = ctx.workspace_bytes;
    CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    // The heuristic assumes 256-byte aligned A/B/C/D unless told otherwise; views, offset
    // slices and the per-batch loop's pointers can be less aligned (C is D here).
    const uint32_t align_a = static_cast<uint32_t>(alignment_class(g.a_ptr));
    const uint32_t align_b = static_cast<uint32_t>(alignment_class(g.b_ptr));
    const uint32_t align_d = static_cast<uint32_t>(alignment_class(g.d_ptr));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                      sizeof(align_a)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                      sizeof(align_b)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                      sizeof(align_d)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                      sizeof(align_d)));
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(ctx.handle, desc.h, la.h, lb.h, ld.h, ld.h, pref.h, 1, &result, &count);
    if (st == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
      algo.supported = true;
      algo.algo = result.algo;
      algo.workspace = result.workspaceSize;
    } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) {
      CUBLAS_CHECK(st);
    }
    pref.release();
    std::lock_guard<std::mutex> lock(cache_mu);
    cache->emplace(key, algo);
  }
  if (algo.supported) {
    const float alpha_f = 1.0f, beta_f = g.accumulate ? 1.0f : 0.0f;
    const double alpha_d = 1.0, beta_d = g.accumulate ? 1.0 : 0.0;
    const void* alpha = g.dtype == DType::f64 ? static_cast<const void*>(&alpha_d) : &alpha_f;
    const void* beta = g.dtype == DType::f64 ? static_cast<const void*>(&beta_d) : &beta_f;
    CUBLAS_CHECK(cublasLtMatmul(ctx.handle, desc.h, alpha, g.a_ptr, la.h, g.b_ptr, lb.h, beta, g.d_ptr, ld.h, g.d_ptr,
                                ld.h, &algo.algo, ctx.workspace, algo.workspace, /*stream=*/0));
  }
  ld.release();
  lb.release();
  la.release();
  desc.release();
  return algo.supported;
}

void run_gemm_or_throw(int device, const Gemm& g) {
  if (!run_gemm(device, g)) {
    throw_error("matmul: cuBLASLt found no algorithm for m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) +
                " k=" + std::to_string(g.k) + " dtype " + dtype_name(g.dtype) +
                " batch=" + std::to_string(g.batch));
  }
}

// ---------------------------------------------------------------- the unfused epilogue

// out[e] = act(src[e] + bias[e % N]); pre[e] = src[e] + bias[e % N] when pre is set.
// src may alias out; all of src, pre, out are contiguous (rows, N).
template <class T>
__global__ void bias_gelu_kernel(const T* src, const T* bias, int64_t bias_stride, T* pre, T* out, int64_t total,
                                 int64_t N, bool gelu) {
  using C = compute_t<T>;
  SOMNUS_GRID_STRIDE(e, total) {
    C v = load_c(src + e);
    if (bias != nullptr) v += load_c(bias + (e % N) * bias_stride);
    if (pre != nullptr) store_c(pre + e, v);
    store_c(out + e, gelu ? m_gelu(v) : v);
  }
}

void launch_bias_gelu(const Tensor& src, const Tensor& bias, const Tensor& pre, bool gelu, const Tensor& out,
                      int64_t N) {
  const int64_t total = out.numel();
  if (total == 0) return;
  visit_floating(out.dtype(), "matmul", [&](auto tag) {
    using T = decltype(tag);
    bias_gelu_kernel<T><<<grid_for(total, 256), 256>>>(
        static_cast<const T*>(src.data_ptr()), bias.defined() ? static_cast<const T*>(bias.data_ptr()) : nullptr,
        bias.defined() ? bias.stride(0) : 0, pre.defined() ? static_cast<T*>(pre.data_ptr()) : nullptr,
        static_cast<T*>(out.data_ptr()), total, N, gelu);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

// ---------------------------------------------------------------- backend entry point

void matmul(const Tensor& a, const Tensor& b, const Tensor& bias, bool gelu, const Tensor& out,
            const Tensor& pre_gelu) {
  set_device(out);
  const int device = out.device().index;
  const int64_t Bt = a.size(0), M = a.size(1), K = a.size(2);
  const int64_t Bb = b.size(0), N = b.size(2);
  const bool want_pre = gelu && pre_gelu.defined();
  const bool has_bias = bias.defined();
  if (out.numel() == 0) return;
  if (!out.is_contiguous() || (want_pre && !pre_gelu.is_contiguous())) {
    throw_error("matmul: out and pre_gelu must be contiguous (backend contract)");
  }
  if (K == 0) {  // an empty sum: out = act(bias or 0)
    out.fill_(0.0);
    if (has_bias || gelu) launch_bias_gelu(out, bias, want_pre ? pre_gelu : Tensor(), gelu, out, N);
    return;
  }

  // Operands as cuBLAS sees them; copy only views no leading dim can describe.
  Tensor a_use, b_use;
  const Operand a_op = operand_of(a, M, K, 1, 2, a_use, "matmul");
  const Operand b_op = operand_of(b, K, N, 1, 2, b_use, "matmul");
  const int64_t esize = dtype_size(out.dtype());
  const int64_t sab = a_use.stride(0), sbb = b_use.stride(0);

  Gemm g;
  g.dtype = out.dtype();
  g.A = b_op;
  g.B = a_op;
  g.a_ptr = b_use.data_ptr();
  g.b_ptr = a_use.data_ptr();
  g.m = static_cast<uint64_t>(N);
  g.k = static_cast<uint64_t>(K);
  g.ldd = N;

  // How the batch maps onto cuBLASLt calls.
  enum class Mode { single, batched, loop } mode = Mode::single;
  const int64_t a_row_stride = M > 1 ? a_use.stride(1) : sab;
  const bool a_rows_stack =
      a_op.op == CUBLAS_OP_N && a_row_stride >= std::max<int64_t>(K, 1) && (M == 1 || sab == M * a_row_stride);
  if (Bt == 1) {
    g.n = static_cast<uint64_t>(M);
  } else if (Bb == 1 && a_rows_stack) {  // shared b, stacked rows: one (Bt·M, K) @ (K, N)
    g.B = *transposed_operand(Bt * M, K, a_row_stride, 1);
    g.n = static_cast<uint64_t>(Bt * M);
  } else if (Bb == Bt && sab != 0 && sbb != 0) {
    mode = Mode::batched;
    g.n = static_cast<uint64_t>(M);
    g.batch = Bt;
    g.stride_a = sbb;
    g.stride_b = sab;
    g.stride_d = M * N;
  } else {
    mode = Mode::loop;
    g.n = static_cast<uint64_t>(M);
  }

  if (mode == Mode::loop) {
    // One GEMM per batch (broadcast a, or a shared b whose a cannot fold), epilogue after.
    for (int64_t i = 0; i < Bt; ++i) {
      Gemm gi = g;
      gi.a_ptr = static_cast<const char*>(g.a_ptr) + (Bb == 1 ? 0 : i * sbb) * esize;
      gi.b_ptr = static_cast<const char*>(g.b_ptr) + i * sab * esize;
      gi.d_ptr = static_cast<char*>(out.data_ptr()) + i * M * N * esize;
      run_gemm_or_throw(device, gi);
    }
    if (has_bias || gelu) launch_bias_gelu(out, bias, want_pre ? pre_gelu : Tensor(), gelu, out, N);
    return;
  }

  const Tensor bias_c = has_bias ? bias.contiguous() : Tensor();
  if (out.dtype() != DType::f64) {
    // Fused epilogues. gelu_after: GEMM(+bias) went to pre_gelu, gelu still to apply.
    bool gelu_after = false;
    Gemm f = g;
    f.d_ptr = out.data_ptr();
    f.bias = has_bias ? bias_c.data_ptr() : nullptr;
    if (want_pre && N % 8 == 0 && aligned_to(pre_gelu.data_ptr(), 16)) {
      f.epilogue = has_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
      f.aux = pre_gelu.data_ptr();
      f.aux_ld = N;
      f.aux_stride = mode == Mode::batched ? M * N : 0;
    } else if (want_pre) {
      // The aux output needs ld % 8 == 0: write a @ b + bias to pre_gelu, then gelu it.
      f.epilogue = has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
      f.d_ptr = pre_gelu.data_ptr();
      gelu_after = true;
    } else if (gelu) {
      f.epilogue = has_bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    } else if (has_bias) {
      f.epilogue = CUBLASLT_EPILOGUE_BIAS;
    }
    if (run_gemm(device, f)) {
      if (gelu_after) launch_bias_gelu(pre_gelu, Tensor(), Tensor(), true, out, N);
      return;
    }
    if (f.epilogue == CUBLASLT_EPILOGUE_DEFAULT) run_gemm_or_throw(device, f);  // never returns false quietly
  }
  // f64, or no algorithm with the epilogue: plain GEMM into out, then the epilogue kernel.
  Gemm p = g;
  p.d_ptr = out.data_ptr();
  run_gemm_or_throw(device, p);
  if (has_bias || gelu) launch_bias_gelu(out, bias, want_pre ? pre_gelu : Tensor(), gelu, out, N);
}

// ---------------------------------------------------------------- f32 output (fused losses)

// out (M, N) f32 [+]= a (M, K) @ b (K, N); a, b 2-D, both bf16 or both f32, views with a unit
// stride on either dim (a transposed view goes in as op T, not copied); out row-major with a
// unit column stride and any row stride ≥ N (padded rows keep every row 16-byte aligned).
void matmul_f32_out(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) {
  if (a.dim() != 2 || b.dim() != 2 || out.dim() != 2 || a.size(1) != b.size(0) || out.size(0) != a.size(0) ||
      out.size(1) != b.size(1)) {
    throw_error("matmul_f32_out: shapes must be a (M, K), b (K, N), out (M, N)");
  }
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const int64_t ldd = M > 1 ? out.stride(0) : N;  // rows of out may be padded (ld ≥ N)
  if (a.dtype() != b.dtype() || (a.dtype() != DType::bf16 && a.dtype() != DType::f32) || out.dtype() != DType::f32 ||
      (N > 1 && out.stride(1) != 1) || ldd < N) {
    throw_error("matmul_f32_out: a and b must both be bf16 or both f32, out f32 with unit column stride");
  }
  set_device(out);
  const int device = out.device().index;
  if (out.numel() == 0) return;
  if (K == 0) {
    if (!accumulate) out.fill_(0.0);
    return;
  }
  Tensor a_use, b_use;
  const Operand a_op = operand_of(a, M, K, 0, 1, a_use, "matmul_f32_out");
  const Operand b_op = operand_of(b, K, N, 0, 1, b_use, "matmul_f32_out");
  Gemm g;
  g.dtype = a.dtype();
  g.A = b_op;
  g.B = a_op;
  g.a_ptr = b_use.data_ptr();
  g.b_ptr = a_use.data_ptr();
  g.d_ptr = out.data_ptr();
  g.m = static_cast<uint64_t>(N);
  g.n = static_cast<uint64_t>(M);
  g.k = static_cast<uint64_t>(K);
  g.ldd = ldd;
  g.f32_out = true;
  g.accumulate = accumulate;
  run_gemm_or_throw(device, g);
}

// ---------------------------------------------------------------- DGELU/BGRAD epilogue

bool matmul_dgelu_bgrad(const Tensor& g, const Tensor& b, const Tensor& pre, const Tensor& dz, const Tensor& dbias) {
  if (dz.dtype() == DType::f64) return false;  // cuBLASLt has no f64 epilogue kernels
  const int64_t K = g.size(-1), N = b.size(-1);
  const int64_t R = K > 0 ? g.numel() / K : 0;  // rows of g and of dz, batches folded
  if (b.dim() == 3 && b.size(0) != 1) return false;  // per-batch b: no single GEMM
  if (R == 0 || N == 0 || K == 0) return false;
  if (!pre.is_contiguous() || !dz.is_contiguous() || N % 8 != 0 || !aligned_to(pre.data_ptr(), 16)) return false;
  if (dbias.defined() && !dbias.is_contiguous()) return false;
  set_device(dz);
  const int device = dz.device().index;
  // g as one row-major (R, K) matrix; b as (K, N) (a transposed view goes in with op T).
  const Tensor g_use = g.is_contiguous() ? g : g.contiguous();
  const Tensor b2 = b.dim() == 3 ? b.select(0, 0) : b;
  Tensor b_use = b2;
  std::optional<Operand> b_op = transposed_operand(K, N, b2.stride(0), b2.stride(1));
  if (!b_op) {
    b_use = b2.contiguous();
    b_op = transposed_operand(K, N, b_use.stride(0), b_use.stride(1));
  }
  const std::optional<Operand> a_op = transposed_operand(R, K, K, 1);
  if (!a_op || !b_op) return false;
  Gemm e;
  e.dtype = dz.dtype();
  e.A = *b_op;
  e.B = *a_op;
  e.a_ptr = b_use.data_ptr();
  e.b_ptr = g_use.data_ptr();
  e.d_ptr = dz.data_ptr();
  e.m = static_cast<uint64_t>(N);
  e.n = static_cast<uint64_t>(R);
  e.k = static_cast<uint64_t>(K);
  e.ldd = N;
  e.epilogue = dbias.defined() ? CUBLASLT_EPILOGUE_DGELU_BGRAD : CUBLASLT_EPILOGUE_DGELU;
  e.bias = dbias.defined() ? dbias.data_ptr() : nullptr;  // written: the bias gradient
  e.aux = pre.data_ptr();
  e.aux_ld = N;
  return run_gemm(device, e);
}

}  // namespace somnus::kernels::cuda
