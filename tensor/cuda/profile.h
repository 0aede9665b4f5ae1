// CUDA glue for tensor/profiler.cpp: timing events from a per-device pool and NVTX ranges.
// Implemented in tensor/cuda/profile.cu; without CUDA, tensor/cuda_stubs.cpp makes the NVTX
// calls no-ops and the event calls throw (no tensor can live on a CUDA device there).
#pragma once

namespace somnus::cuda {

// Records a pooled timing event on `device`'s default stream (the stream every somnus kernel
// runs on) and returns its handle. Never synchronizes.
int profile_event_record(int device);
// Milliseconds between two recorded events of `device`; waits for `to` to complete.
float profile_event_elapsed_ms(int device, int from, int to);
// Makes every handle of every device reusable (the events themselves are kept for reuse).
void profile_events_clear();

void nvtx_push(const char* name);
void nvtx_pop();

}  // namespace somnus::cuda
