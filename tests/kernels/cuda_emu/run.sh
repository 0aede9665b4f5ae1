#!/usr/bin/env bash
# Runs CUDA kernels' own source on the CPU under the host emulation of cuda_emu.h (no GPU, no
# nvcc needed): extracts the kernels with extract.py, compiles a driver with the host C++
# compiler, runs it. Drivers (each <name>.cpp here; its header says what it checks):
# attention_fwd (the bf16 forward: attn_fwd_v3, the Hopper attn_fwd_wg — synchronous and
# pipelined —, the warp-specialized attn_fwd_ws on emulated TMA and mbarriers, and the default
# attn_fwd_mma<D, true, true>),
# attention_bwd (the tensor-core backward: attn_bwd_dkdv_mma with atomic dQ and
# attn_bwd_dq_mma, default, v3, v4; the Hopper attn_bwd_dkdv_wg and the warp-specialized
# attn_bwd_ws on emulated TMA, mbarriers and bulk reductions), attention_decode (split-K decode: attn_decode_gqa,
# attn_rows_simt, attn_combine, on strided KV-cache views), norm, rope and reduce (the kernels of
# kernels/cuda/{norm,rope,reduce}.cu: each version against f64 and, where equal by design, bitwise
# against the previous one), losses (kernels/cuda/losses.cu's row kernels of both paths: CE,
# JSD, PPO, against an f64 loss and its central differences), sampling (kernels/cuda/sampling.cu:
# row stats, the top-k prefilter, the pick, greedy), softmax (kernels/cuda/softmax.cu: warp- and
# block-per-row, forward and backward), activation (kernels/cuda/activation.cu: SwiGLU forward and
# backward, vector and scalar), adamw (kernels/cuda/adamw.cu: the multi-tensor AdamW with its
# bf16 copies, nearest and stochastic), elementwise (kernels/cuda/elementwise.cu: every unary op,
# its backward, every binary op and where(), through launch_elementwise's own choice of the
# vector, scalar or strided kernel), index (kernels/cuda/index.cu: embedding forward, its
# deterministic and atomic backward, gather / index_select, scatter_add / index_add), tensor
# (tensor/cuda/copy.cu and random.cu: the strided copy between every pair of dtypes, fill, the
# Philox fills bitwise random.cpp's CPU branches), matmul (kernels/cuda/matmul.cu's unfused
# bias + GELU epilogue; the GEMMs themselves are cuBLASLt's); every *.cpp here is a driver. A GPU failure of an attention kernel
# (gpu_check writes the case to $OUT/attn_dumps) replays here on the same inputs:
#   <work>/attention_fwd_emu --replay FILE VERSION   (v3, wgmma, wgmma_pipe, wgmma_ws, default)
#   <work>/attention_bwd_emu --replay FILE VERSION   (default, v3, v4, wgmma, wgmma_ws)
# printing where the GPU's result differs by warp, warpgroup, 64-column panel and 16-byte chunk. ctest runs each as kernels.cuda_emu_<name>
# and under ThreadSanitizer as kernels.cuda_emu_<name>_tsan (label `emu`); by hand:
#   tests/kernels/cuda_emu/run.sh [work dir] [name ...]   (5–40 s per driver, the backward ~110 s)
# CUDA_EMU_ARGS: arguments for the driver (attention_bwd: "mma" or "hopper", half of its
# versions; attention_decode: "bf16" or "f32"; ctest runs each driver whole).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
work="${1:-$(mktemp -d)}"
cxx="${CXX:-c++}"
mkdir -p "$work"
# usage: run.sh [work dir] [name ...] (default: all drivers; fwd, bwd, decode = attention_*)
parts=("${@:2}")
if [ ${#parts[@]} -eq 0 ]; then
  for f in "$here"/*.cpp; do parts+=("$(basename "$f" .cpp)"); done
fi
# Under AddressSanitizer + UBSan by default (CUDA_EMU_SANITIZE=0: -O2 without), so that a
# kernel's read past a global tensor (a tail it does not mask) is an error, not just a wrong
# number. CUDA_EMU_SANITIZE=thread: ThreadSanitizer with every cp.async landing at its issue, a
# deterministic check for a missing barrier (any shared-memory access pair of two warps not
# ordered by a __syncthreads is reported); slower (tens of seconds per attention case), so pick
# cases, e.g. CUDA_EMU_ONLY=9,10 CUDA_EMU_SANITIZE=thread tests/kernels/cuda_emu/run.sh /tmp/w bwd.
# Line tables only (-g1: file and line in a sanitizer's report). Under ASan the attention
# forward and backward build at -O1 (their run is most of their time: 40 s and 90 s, against
# 225 s and more at -O0); the others at -O0, where compiling was most of it (norm: 60 s to
# compile at -O1 -g, 4 s to run; 18 s and 13 s at -O0). Measured 2026-11-28 on 2 cores.
case "${CUDA_EMU_SANITIZE:-1}" in
  1) opt="-g1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" ;;
  thread) opt="-O1 -g1 -fsanitize=thread -DCUDA_EMU_EAGER_COPIES" ;;
  *) opt="-O2" ;;
esac
status=0
for part in "${parts[@]}"; do
  case "$part" in fwd | bwd | decode) part="attention_$part" ;; esac
  level=""
  if [ "${CUDA_EMU_SANITIZE:-1}" = 1 ]; then
    case "$part" in attention_fwd | attention_bwd) level="-O1" ;; *) level="-O0" ;; esac
  fi
  python3 "$here/extract.py" "$root/kernels/cuda" "$work/$part.inc" "$part"
  "$cxx" -std=c++20 $opt $level -fno-strict-aliasing -pthread -I"$here" -I"$work" -I"$root" "$here/$part.cpp" \
    -o "$work/${part}_emu"
  "$work/${part}_emu" ${CUDA_EMU_ARGS:-} || status=1
done
exit $status
