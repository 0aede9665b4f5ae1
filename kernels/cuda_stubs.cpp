// Built only without the CUDA backend. ops.cpp never dispatches here (no tensor can be on
// a CUDA device in such a build), but the symbols must exist; each throws somnus::Error.
#include "kernels/backend.h"
#include "tensor/error.h"

namespace somnus::kernels::cuda {

[[noreturn]] static void no_cuda(const char* op) {
  throw_error(std::string(op) + ": this build has no CUDA backend");
}

void unary(Unary, const Tensor&, const Tensor&, double) { no_cuda("unary"); }
void unary_backward(Unary, const Tensor&, const Tensor&, const Tensor&, double) { no_cuda("unary_backward"); }
void binary(Binary, const Tensor&, const Tensor&, const Tensor&) { no_cuda("binary"); }
void where(const Tensor&, const Tensor&, const Tensor&, const Tensor&) { no_cuda("where"); }
void reduce(Reduce, const Tensor&, int64_t, const Tensor&) { no_cuda("reduce"); }
void argmax(const Tensor&, int64_t, const Tensor&) { no_cuda("argmax"); }
void softmax(const Tensor&, const Tensor&, bool) { no_cuda("softmax"); }
void softmax_backward(const Tensor&, const Tensor&, const Tensor&, bool) { no_cuda("softmax_backward"); }
void matmul(const Tensor&, const Tensor&, const Tensor&, bool, const Tensor&, const Tensor&) { no_cuda("matmul"); }
void embedding(const Tensor&, const Tensor&, const Tensor&) { no_cuda("embedding"); }
void embedding_backward(const Tensor&, const Tensor&, const Tensor&, bool) { no_cuda("embedding_backward"); }
void gather(const Tensor&, int64_t, const Tensor&, const Tensor&) { no_cuda("gather"); }
void scatter_add(int64_t, const Tensor&, const Tensor&, const Tensor&) { no_cuda("scatter_add"); }
void index_select(const Tensor&, int64_t, const Tensor&, const Tensor&) { no_cuda("index_select"); }
void index_add(int64_t, const Tensor&, const Tensor&, const Tensor&) { no_cuda("index_add"); }

// attention (issue 4 §1)
void attention_fwd(const Tensor&, const Tensor&, const Tensor&, bool, double, int64_t, const Tensor&, const Tensor&) {
  no_cuda("attention_fwd");
}
void attention_bwd(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool,
                   double, int64_t, bool, const Tensor&, const Tensor&, const Tensor&) {
  no_cuda("attention_bwd");
}
void attention_decode(const Tensor&, const Tensor&, const Tensor&, bool, double, int64_t, int64_t, const Tensor&,
                      const Tensor&) {
  no_cuda("attention_decode");
}
std::string attention_fwd_kernel(DType, int64_t, double) { no_cuda("attention_fwd_kernel"); }
std::string attention_bwd_kernel(DType, int64_t, double) { no_cuda("attention_bwd_kernel"); }
// end attention

void set_allow_tf32(bool) { no_cuda("set_allow_tf32"); }
bool allow_tf32() { return false; }


void norm_forward(bool, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, const Tensor&,
                  const Tensor&, const Tensor&, const Tensor&) { no_cuda("norm_forward"); }
void norm_backward(bool, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                   const Tensor&, const Tensor&, const Tensor&) { no_cuda("norm_backward"); }
void swiglu(const Tensor&, const Tensor&, const Tensor&) { no_cuda("swiglu"); }
void swiglu_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  no_cuda("swiglu_backward");
}
void rope(const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, const Tensor&) { no_cuda("rope"); }
void adamw_step(const std::vector<Tensor>&, const std::vector<Tensor>&, const std::vector<Tensor>&,
                const std::vector<Tensor>&, const std::vector<AdamWHyper>&, const Tensor&, const std::vector<Tensor>&,
                bool, uint64_t) {
  no_cuda("adamw_step");
}

}  // namespace somnus::kernels::cuda
