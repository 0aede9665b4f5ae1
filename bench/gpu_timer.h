// What bench_kernels_cuda does on the device before each timed call (bench/gpu_timer.cu), so
// that a row times the device's work for the call alone:
//   1. a read of twice the L2 size, so the call starts from a cold L2 and reads its inputs
//      from HBM, as a real step does (a decode reads each layer's KV cache once per token, with
//      every other layer's data passing through L2 in between). The read leaves the evicted
//      lines clean, so no write-back of the flush lands in the timed region;
//   2. a kernel that spins for `delay_us` microseconds, so the host enqueues the call's
//      launches while the GPU is still busy, and the call's kernels then run back to back:
//      the time between the two events is the device's, not the host's enqueue time.
// Both are enqueued on the current device's default stream, before the start event.
#pragma once

namespace somnus::bench {

// The flush buffer (twice cudaDevAttrL2CacheSize) is allocated on a device's first call.
void enqueue_l2_flush();
void enqueue_delay(double delay_us);

}  // namespace somnus::bench
