// Built only without the CUDA backend: every CUDA entry point explains that it is absent.
#include "tensor/allocator.h"
#include "tensor/cuda/backend.h"
#include "tensor/cuda/profile.h"
#include "tensor/error.h"

namespace somnus::cuda {

[[noreturn]] static void no_cuda(const char* what) {
  throw_error(std::string(what) + ": this build has no CUDA backend (configure with SOMNUS_CUDA=ON on a machine with nvcc)");
}

int device_count() { return 0; }
RawAllocator* raw_allocator(int) { no_cuda("cuda::raw_allocator"); }
void memcpy(void*, Device, const void*, Device, size_t) { no_cuda("cuda::memcpy"); }
void synchronize(int) { no_cuda("cuda::synchronize"); }
void fill(const Tensor&, double) { no_cuda("cuda::fill"); }
void strided_copy(const Tensor&, const Tensor&) { no_cuda("cuda::strided_copy"); }
void fill_uniform(const Tensor&, uint64_t, uint64_t, double, double) { no_cuda("cuda::fill_uniform"); }
void fill_normal(const Tensor&, uint64_t, uint64_t, double, double) { no_cuda("cuda::fill_normal"); }
void fill_randint(const Tensor&, uint64_t, uint64_t, int64_t, int64_t) { no_cuda("cuda::fill_randint"); }
int profile_event_record(int) { no_cuda("cuda::profile_event_record"); }
float profile_event_elapsed_ms(int, int, int) { no_cuda("cuda::profile_event_elapsed_ms"); }
void profile_events_clear() {}
void nvtx_push(const char*) {}
void nvtx_pop() {}

}  // namespace somnus::cuda
