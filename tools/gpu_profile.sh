#!/usr/bin/env bash
# Nsight Compute (ncu) profiles of chosen kernels, on a GPU machine, from what tools/gpu_pack.sh
# packed: each target is one benchmark row of bench_kernels_cuda, run briefly, and the kernel
# to profile in it (its 3rd launch, after the warm-up).
#
#   tools/gpu_profile.sh --prebuilt PACK[.tar.xz] [NAME=ROW_REGEX@KERNEL_REGEX ...]
#
# Without targets it profiles the kernels of issue 4's open items: the bf16 RMSNorm and LayerNorm
# forwards (16384×4096: 0.75 and 0.66 of copy on the H200 of 2026-11-28, not yet profiled), the
# LayerNorm backward (bf16 16384×4096: the default, SOMNUS_NORM_BWD=racc and =pair) and the GQA decode at S 1024 (the
# default ring, =pipe_wide (the default before 2026-11-28), and the fused combine on each), then the default attention forward
# and backward at the headline shape (causal, T 4096, D 128: their headroom toward FA3, first
# profiled on the H200 of 2026-11-28; the backward's dK/dV or fused kernel). One file per target, $OUT/ncu_NAME.txt
# (OUT defaults to ./ncu_out), with ncu's SpeedOfLight, Occupancy, LaunchStats, WarpStateStats,
# SchedulerStats and MemoryWorkloadAnalysis sections. ncu runs with --clock-control none (the
# device guide's advice: leave the card's clocks alone), so durations are at the clock the
# benchmarks ran at. The run of 2026-11-27 let ncu lock the SM clock at its base (1.56 GHz on
# that H100), so its durations are longer than the benchmark's. Each target
# runs under a time limit (SOMNUS_PROFILE_BUDGET_S, default 60 s). Exits non-zero when a target
# fails or profiles no kernel.
set -uo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = --prebuilt ] || { echo "usage: tools/gpu_profile.sh --prebuilt PACK[.tar.xz] [NAME=ROW_REGEX@KERNEL_REGEX ...]"; exit 2; }
. tools/gpu_prebuilt.sh
use_prebuilt "${2:-}" gpu_profile bench || exit 1
shift 2
out="${OUT:-ncu_out}"
mkdir -p "$out"
ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
[ -x "$ncu" ] || { echo "gpu_profile: ncu not found"; exit 1; }
bench="$prebuilt/bin/bench_kernels_cuda"
[ -x "$bench" ] || { echo "gpu_profile: $bench not in the pack"; exit 1; }
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(
    "rms_fwd=^rms_norm_fwd/bf16/16384x4096@norm_forward_reg_kernel"
    "ln_fwd=^layer_norm_fwd/bf16/16384x4096@norm_forward_reg_kernel"
    "ln_bwd=^layer_norm_bwd/bf16/16384x4096@norm_backward_reg_kernel"
    "ln_bwd_racc=^layer_norm_bwd_racc/bf16/16384x4096@norm_backward_racc_kernel"
    "ln_bwd_pair=^layer_norm_bwd_pair/bf16/16384x4096@norm_backward_reg_kernel"
    "decode=^attention_decode/bf16/B8_Hq32_Hkv8_D128/S:1024/@attn_decode_gqa"
    "decode_pipe_wide=^attention_decode_pipe_wide/bf16/B8_Hq32_Hkv8_D128/S:1024/@attn_decode_gqa"
    "decode_fused=^attention_decode_fused/bf16/B8_Hq32_Hkv8_D128/S:1024/@attn_decode_gqa"
    "decode_ring_fused=^attention_decode_ring_fused/bf16/B8_Hq32_Hkv8_D128/S:1024/@attn_decode_gqa"
    "attn_fwd=^attention_fwd/causal/bf16/T:4096/D:128/@attn_fwd_"
    "attn_bwd=^attention_bwd/causal/bf16/T:4096/D:128/@attn_bwd_(ws|dkdv)"
  )
fi
status=0
for t in "${targets[@]}"; do
  name="${t%%=*}" spec="${t#*=}"
  row="${spec%@*}" kernel="${spec##*@}"
  if [ "$name" = "$t" ] || [ "$row" = "$spec" ]; then echo "gpu_profile: bad target '$t' (NAME=ROW_REGEX@KERNEL_REGEX)"; status=1; continue; fi
  t0=$SECONDS
  timeout "${SOMNUS_PROFILE_BUDGET_S:-60}" "$ncu" --clock-control none --kernel-name "regex:$kernel" --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section MemoryWorkloadAnalysis \
    "$bench" --benchmark_filter="$row" --benchmark_min_time=0.01 > "$out/ncu_$name.txt" 2>&1
  rc=$?
  dur=$(grep -m1 -E '^ +Duration' "$out/ncu_$name.txt" | awk '{print $(NF-1), $NF}' )
  dram=$(grep -m1 -E '^ +DRAM Throughput' "$out/ncu_$name.txt" | awk '{print $NF}')
  printf 'gpu_profile: %-14s rc %-3s %4s s  duration %-12s DRAM %s%%\n' "$name" "$rc" "$((SECONDS - t0))" "${dur:-?}" "${dram:-?}"
  if [ "$rc" -ne 0 ] || [ -z "$dur" ]; then
    status=1
    tail -5 "$out/ncu_$name.txt" | sed 's/^/  /'
  fi
done
exit $status
