#!/usr/bin/env bash
# Runs CUDA kernels' own source on the CPU under the host emulation of cuda_emu.h (no GPU, no
# nvcc needed): extracts the kernels with extract.py, compiles a driver with the host C++
# compiler, runs it. Drivers: attention_fwd.cpp (the bf16 forward: attn_fwd_v3 and the default
# attn_fwd_mma<D, true, true>), attention_bwd.cpp (the tensor-core backward: attn_bwd_dkdv_mma
# with atomic dQ and attn_bwd_dq_mma, default and v3), attention_decode.cpp (split-K decode:
# attn_decode_gqa, attn_rows_simt, attn_combine, on strided KV-cache views). ctest runs them as
# kernels.cuda_emu_attention_{fwd,bwd,decode} (label `emu`, not under the sanitizers); by hand:
#   tests/kernels/cuda_emu/run.sh [work dir] [fwd|bwd|decode ...]   (~10 s to compile, 20–60 s to run)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
work="${1:-$(mktemp -d)}"
cxx="${CXX:-c++}"
mkdir -p "$work"
# usage: run.sh [work dir] [fwd|bwd ...] (default: all drivers)
parts=("${@:2}")
[ ${#parts[@]} -gt 0 ] || parts=(fwd bwd decode)
# Under AddressSanitizer + UBSan by default (CUDA_EMU_SANITIZE=0: -O2 without), so that a
# kernel's read past a global tensor (a tail it does not mask) is an error, not just a wrong
# number; about 1.7x the time. CUDA_EMU_SANITIZE=thread: ThreadSanitizer with every cp.async
# landing at its issue, a deterministic check for a missing barrier (any shared-memory access
# pair of two warps not ordered by a __syncthreads is reported); minutes per case, so pick
# cases, e.g. CUDA_EMU_ONLY=9,10 CUDA_EMU_SANITIZE=thread tests/kernels/cuda_emu/run.sh /tmp/w bwd.
case "${CUDA_EMU_SANITIZE:-1}" in
  1) opt="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" ;;
  thread) opt="-O1 -g -fsanitize=thread -DCUDA_EMU_EAGER_COPIES" ;;
  *) opt="-O2" ;;
esac
status=0
for part in "${parts[@]}"; do
  python3 "$here/extract.py" "$root/kernels/cuda/attention.cu" "$work/attention_$part.inc" "$part"
  "$cxx" -std=c++20 $opt -fno-strict-aliasing -pthread -I"$here" -I"$work" -I"$root" "$here/attention_$part.cpp" \
    -o "$work/attention_${part}_emu"
  "$work/attention_${part}_emu" || status=1
done
exit $status
