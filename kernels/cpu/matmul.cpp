// CPU matmul: out (Bt, M, N) = a (Bt, M, K) @ b (Bt or 1, K, N) [+ bias (N,)] [then gelu],
// with pre_gelu (Bt, M, N) receiving a @ b + bias when defined.
//
// Algorithm: OpenBLAS sgemm (f32) / dgemm (f64), row-major. Each 2-D operand slice is passed
// as it lies in memory: row-major (stride(-1) == 1) goes in as NoTrans, column-major
// (stride(-2) == 1, i.e. a transposed view such as w.transpose(0, 1)) as Trans with the
// matching leading dimension; only other layouts are copied with contiguous(). When b is
// shared by the batch and a's batch folds into its rows, the whole batch is one GEMM of
// (Bt·M, K) @ (K, N), which keeps BLAS efficient for small M; otherwise the batch is a
// loop of GEMMs (the parallelism comes from BLAS's own threads). bf16 converts a and b to
// f32, runs sgemm, and rounds the result once. The bias/gelu epilogue is a single pass over
// the output after the GEMM (the CPU twin of cuBLASLt's fused epilogue).
// Cost: 2·Bt·M·N·K FLOPs; operand bytes (M·K + K·N + M·N)·size per batch. Compute bound
// for large shapes, which is why it is handed to BLAS.
#include <cblas.h>

#include <climits>
#include <cmath>
#include <set>
#include <string>
#include <type_traits>

#include "kernels/backend.h"
#include "kernels/cpu/vec_math.h"
#include "tensor/dispatch.h"
#include "tensor/format.h"

namespace somnus::kernels::cpu {

namespace {

// How a (rows, cols) slice with strides (s0, s1) can be handed to row-major BLAS.
struct BlasOperand {
  bool ok = false;
  CBLAS_TRANSPOSE trans = CblasNoTrans;
  int64_t ld = 0;
};

BlasOperand blas_operand(int64_t rows, int64_t cols, int64_t s0, int64_t s1) {
  // Strides of size-1 dims are meaningless; BLAS only needs ld >= the row length.
  if ((s1 == 1 || cols == 1) && (rows == 1 || s0 >= std::max<int64_t>(1, cols))) {
    return {true, CblasNoTrans, rows == 1 ? std::max<int64_t>(1, cols) : s0};
  }
  if ((s0 == 1 || rows == 1) && (cols == 1 || s1 >= std::max<int64_t>(1, rows))) {
    return {true, CblasTrans, cols == 1 ? std::max<int64_t>(1, rows) : s1};
  }
  return {};
}

// One output row (M == 1, e.g. a decode step) is a matrix-vector product: gemv streams the
// weights once, where gemm would first pack them into its panel layout (measured ~40% of a
// batch-1 decode step in sgemm's copy routine).
template <class T>
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, const T* a, int64_t lda,
          const T* b, int64_t ldb, T* c, int64_t ldc) {
  constexpr bool f32 = std::is_same_v<T, float>;
  const auto i = [](int64_t v) { return static_cast<blasint>(v); };
  if (M == 1) {
    // x = a's single row: contiguous when a is row-major, else stride lda (a transposed view).
    const int64_t incx = ta == CblasNoTrans ? 1 : lda;
    // y (N) = op(b)^T x: b row-major (K, N) -> gemv Trans; b transposed, i.e. (N, K) row-major -> NoTrans.
    const bool b_rows_are_k = tb == CblasNoTrans;
    const CBLAS_TRANSPOSE tv = b_rows_are_k ? CblasTrans : CblasNoTrans;
    const int64_t rows = b_rows_are_k ? K : N, cols = b_rows_are_k ? N : K;
    if constexpr (f32) {
      cblas_sgemv(CblasRowMajor, tv, i(rows), i(cols), 1.0f, b, i(ldb), a, i(incx), 0.0f, c, 1);
    } else {
      cblas_dgemv(CblasRowMajor, tv, i(rows), i(cols), 1.0, b, i(ldb), a, i(incx), 0.0, c, 1);
    }
    return;
  }
  if constexpr (f32) {
    cblas_sgemm(CblasRowMajor, ta, tb, i(M), i(N), i(K), 1.0f, a, i(lda), b, i(ldb), 0.0f, c, i(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, i(M), i(N), i(K), 1.0, a, i(lda), b, i(ldb), 0.0, c, i(ldc));
  }
}

// out (R, N) contiguous: out += bias; pre = out; out = gelu(out), in one pass.
template <class T>
void epilogue(T* out, T* pre, int64_t R, int64_t N, const T* bias, int64_t bias_stride, bool gelu) {
#pragma omp parallel for schedule(static) if (R * N > 32768 && R > 1)
  for (int64_t r = 0; r < R; ++r) {
    T* o = out + r * N;
    if (bias) {
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) o[j] += bias[j * bias_stride];
    }
    if (pre) {
      T* p = pre + r * N;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) p[j] = o[j];
    }
    if (gelu) {
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) o[j] = gelu_c(o[j]);
    }
  }
}

// a (Bt, M, K), b (Bb, K, N), out (Bt, M, N) contiguous, all of dtype T (f32 or f64).
template <class T>
void matmul_typed(Tensor a, Tensor b, const Tensor& bias, bool gelu, const Tensor& out, const Tensor& pre) {
  const int64_t Bt = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2), Bb = b.size(0);
  SOMNUS_CHECK(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && Bt * M <= INT_MAX,
               "matmul: a {} @ b {} exceeds the 32-bit BLAS interface", shape_str(a.shape()), shape_str(b.shape()));
  T* c = static_cast<T*>(out.data_ptr());
  if (K == 0) {
    out.fill_(0.0);
  } else {
    BlasOperand ob = blas_operand(K, N, b.stride(1), b.stride(2));
    if (!ob.ok) {
      b = b.contiguous();
      ob = blas_operand(K, N, b.stride(1), b.stride(2));
    }
    // One GEMM over the whole batch when b is shared and a's rows are evenly spaced
    // across batches (a row-major with a.stride(0) == M · a.stride(1)).
    const bool fold = Bb == 1 && (a.stride(2) == 1 || K == 1) &&
                      (Bt == 1 || a.stride(0) == M * a.stride(1)) && a.stride(1) >= K;
    if (fold) {
      gemm(CblasNoTrans, ob.trans, Bt * M, N, K, static_cast<const T*>(a.data_ptr()), a.stride(1),
           static_cast<const T*>(b.data_ptr()), ob.ld, c, N);
    } else {
      BlasOperand oa = blas_operand(M, K, a.stride(1), a.stride(2));
      if (!oa.ok) {
        a = a.contiguous();
        oa = blas_operand(M, K, a.stride(1), a.stride(2));
      }
      const T* ap = static_cast<const T*>(a.data_ptr());
      const T* bp = static_cast<const T*>(b.data_ptr());
      for (int64_t i = 0; i < Bt; ++i) {
        gemm(oa.trans, ob.trans, M, N, K, ap + i * a.stride(0), oa.ld, bp + (Bb == 1 ? 0 : i * b.stride(0)), ob.ld,
             c + i * M * N, N);
      }
    }
  }
  const T* bias_p = bias.defined() ? static_cast<const T*>(bias.data_ptr()) : nullptr;
  T* pre_p = pre.defined() ? static_cast<T*>(pre.data_ptr()) : nullptr;
  if (bias_p || pre_p || gelu) epilogue(c, pre_p, Bt * M, N, bias_p, bias.defined() ? bias.stride(0) : 0, gelu);
}

}  // namespace

void matmul(const Tensor& a, const Tensor& b, const Tensor& bias, bool gelu, const Tensor& out,
            const Tensor& pre_gelu) {
  switch (a.dtype()) {
    case DType::f32: return matmul_typed<float>(a, b, bias, gelu, out, pre_gelu);
    case DType::f64: return matmul_typed<double>(a, b, bias, gelu, out, pre_gelu);
    case DType::bf16: {
      // bf16 in, f32 math, one rounding on the way out.
      const Tensor out32 = Tensor::empty(out.shape(), DType::f32);
      const Tensor pre32 = pre_gelu.defined() ? Tensor::empty(pre_gelu.shape(), DType::f32) : Tensor();
      matmul_typed<float>(a.to(DType::f32), b.to(DType::f32), bias.defined() ? bias.to(DType::f32) : Tensor(), gelu,
                          out32, pre32);
      strided_copy(out, out32);
      if (pre_gelu.defined()) strided_copy(pre_gelu, pre32);
      return;
    }
    default: fail("matmul: expected a floating dtype (f32, f64, bf16), got {}", dtype_name(a.dtype()));
  }
}

}  // namespace somnus::kernels::cpu

namespace somnus::kernels {

std::string blas_core() {
  const char* name = openblas_get_corename();
  return name != nullptr ? std::string(name) : std::string();
}

std::string blas_core_advice() {
  // OpenBLAS's kernel sets without AVX2 (a fallback for a CPU it did not recognise).
  static const std::set<std::string> pre_avx2 = {"Prescott", "Core2",  "Penryn",    "Dunnington", "Nehalem",
                                                 "Atom",     "Katmai", "Coppermine", "Northwood", "Banias",
                                                 "Sandybridge", "Opteron", "Opteron_SSE3", "Barcelona", "Bobcat",
                                                 "Bulldozer",   "Piledriver"};
  if (pre_avx2.count(blas_core()) == 0) return "";
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return "";
}

}  // namespace somnus::kernels
