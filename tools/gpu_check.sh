#!/usr/bin/env bash
# One call on a GPU machine verifies the CUDA backend: configure with SOMNUS_CUDA=ON, build,
# run every CUDA test (ctest -L cuda, no skips allowed), then every CUDA benchmark, and print
# one summary table. Usage: tools/gpu_check.sh [build-dir]   (default build-gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
build_dir="${1:-build-gpu}"
out="${OUT:-$build_dir/gpu_check}"
mkdir -p "$out"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" || {
  echo "gpu_check: no GPU visible (nvidia-smi failed)"; exit 1; }
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DSOMNUS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build "$build_dir" -j "$(nproc)" > "$out/build.log" 2>&1 || { grep -E 'error' -A3 "$out/build.log" | head -60; exit 1; }

status=0
ctest --test-dir "$build_dir" -L cuda --output-on-failure --timeout 120 -j 1 > "$out/ctest_cuda.log" 2>&1 || status=1
tail -5 "$out/ctest_cuda.log"
if grep -q "Skipped" "$out/ctest_cuda.log"; then
  echo "gpu_check: some CUDA tests skipped on a GPU machine:"; grep -i "skipped" "$out/ctest_cuda.log" | head; status=1
fi
grep -E "\(Failed\)|\*\*\*Failed" "$out/ctest_cuda.log" | head -40

# ---- compute-sanitizer (issue 8 §7): memcheck over every CUDA test binary, racecheck over
# the kernels that use shared memory (attention, fused norms/AdamW, losses, sampling,
# reductions, softmax, embedding backward). Tests that provoke CUDA errors on purpose (out
# of memory, bad input) and the profiler's timing tests are filtered out. Each binary gets a
# time budget (SOMNUS_SANITIZER_BUDGET_S, default 60 s) so the whole check stays near 10
# minutes; an error report or a binary past its budget fails the check.
# SOMNUS_SKIP_COMPUTE_SANITIZER=1 skips this section.
if [ "${SOMNUS_SKIP_COMPUTE_SANITIZER:-0}" != 1 ]; then
  csan="$(command -v compute-sanitizer || true)"
  [ -z "$csan" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && csan=/usr/local/cuda/bin/compute-sanitizer
  if [ -z "$csan" ]; then
    echo "gpu_check: compute-sanitizer not found (CUDA toolkit's bin/): memcheck/racecheck not run"; status=1
  else
    budget="${SOMNUS_SANITIZER_BUDGET_S:-60}"
    skip_filter='-*OutOfMemory*:*BadInput*:*Unsupported*:CudaProfiler.*'
    race_filter='CudaAttention.*:CudaFused.*:CudaLosses.*:CudaSampling.*:CudaOps.Reduce*:CudaOps.Softmax*:CudaOps.Embedding*'
    run_sanitizer() {  # tool binary gtest-filter
      local tool="$1" bin="$2" filter="$3" log rc
      log="$out/csan_${tool}_$(basename "$bin").log"
      timeout "$budget" "$csan" --tool "$tool" --error-exitcode 99 --report-api-errors no --print-limit 20 \
        "$bin" --gtest_filter="$filter" --gtest_brief=1 > "$log" 2>&1
      rc=$?
      if [ $rc -eq 0 ]; then
        printf 'gpu_check: %-9s %-32s ok (%s)\n' "$tool" "$(basename "$bin")" "$(grep -Eo 'ERROR SUMMARY: [0-9]+ errors?|RACECHECK SUMMARY: [0-9]+ hazards?[^)]*' "$log" | tail -1)"
      elif [ $rc -eq 124 ]; then
        echo "gpu_check: $tool $(basename "$bin") ran past its ${budget}s budget (log $log)"; status=1
      else
        echo "gpu_check: $tool $(basename "$bin") FAILED (exit $rc, log $log):"
        grep -E '=========  (Invalid|Race|Error|Program hit|Uninitialized)|ERROR SUMMARY|RACECHECK SUMMARY|FAILED' "$log" | head -12
        status=1
      fi
    }
    for bin in "$build_dir"/tests/*_test_cuda_*; do
      [ -x "$bin" ] || continue
      run_sanitizer memcheck "$bin" "*$skip_filter"
    done
    for bin in "$build_dir"/tests/kernels_test_cuda_attention "$build_dir"/tests/kernels_test_cuda_fused \
               "$build_dir"/tests/kernels_test_cuda_losses "$build_dir"/tests/kernels_test_cuda_ops; do
      [ -x "$bin" ] || continue
      run_sanitizer racecheck "$bin" "$race_filter$skip_filter"
    done
  fi
fi
# ---- end compute-sanitizer

for b in "$build_dir"/bench/bench_*cuda*; do
  [ -x "$b" ] || continue
  # Each binary gets a time budget so that the whole check stays within ~10 minutes.
  timeout "${SOMNUS_BENCH_BUDGET_S:-150}" "$b" --benchmark_format=json --benchmark_out="$out/$(basename "$b").json" \
    --benchmark_out_format=json --benchmark_min_time=0.2 > "$out/$(basename "$b").txt" 2>&1
  rc=$?
  if [ $rc -eq 124 ]; then echo "gpu_check: $(basename "$b") ran past its budget (partial JSON kept)"; status=1;
  elif [ $rc -ne 0 ]; then echo "gpu_check: $(basename "$b") failed (exit $rc)"; status=1; fi
done

# ---- attention (issue 4 §1): PyTorch SDPA (flash backend) at bench_kernels_cuda's attention
# shapes; its JSON joins the table below (torch_sdpa_* rows beside attention_* rows).
if python3 -c 'import torch' 2>/dev/null; then
  timeout 120 python3 bench/reference/attention.py --json "$out/torch_attention.json" > "$out/torch_attention.txt" 2>&1 || {
    echo "gpu_check: bench/reference/attention.py failed:"; tail -5 "$out/torch_attention.txt"; status=1; }
else
  echo "gpu_check: python3 has no torch: the PyTorch attention reference was not run"
fi
# ---- end attention

python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
print(f"\n| benchmark | time (us) | TFLOP/s | GB/s |\n|---|---|---|---|")
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    try:
        data = json.load(open(f))
    except Exception as e:
        print(f"| {os.path.basename(f)} | unreadable: {e} | | |"); continue
    for b in data.get("benchmarks", []):
        if b.get("error_occurred"):
            print(f"| {b['name']} | error: {b.get('error_message')} | | |"); continue
        t = b["real_time"] * {"ns": 1e-3, "us": 1, "ms": 1e3, "s": 1e6}[b["time_unit"]]
        fl = b.get("FLOP/s", 0) / 1e12
        by = b.get("bytes/s", 0) / 1e9
        print(f"| {b['name']} | {t:.1f} | {fl:.2f} | {by:.1f} |")
PY
echo "gpu_check: logs in $out; status $status"
exit $status
