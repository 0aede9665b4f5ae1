#!/usr/bin/env bash
# Runs CUDA kernels' own source on the CPU under the host emulation of cuda_emu.h (no GPU, no
# nvcc needed): extracts the kernels with extract.py, compiles the driver with the host C++
# compiler, runs it. Kernels covered: the bf16 attention forward, attn_fwd_v3 and the default
# attn_fwd_mma<D, true, true> (attention_fwd.cpp). ctest runs it as kernels.cuda_emu_attention_fwd
# (label `emu`, not under the sanitizers); by hand:
#   tests/kernels/cuda_emu/run.sh [work dir]      (about 10 s to compile, 20 s to run on 2 cores)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
work="${1:-$(mktemp -d)}"
cxx="${CXX:-c++}"
mkdir -p "$work"
python3 "$here/extract.py" "$root/kernels/cuda/attention.cu" "$work/attention_fwd.inc"
"$cxx" -std=c++20 -O2 -fno-strict-aliasing -pthread -I"$here" -I"$work" "$here/attention_fwd.cpp" -o "$work/attention_fwd_emu"
"$work/attention_fwd_emu"
