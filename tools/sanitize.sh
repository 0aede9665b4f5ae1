#!/usr/bin/env bash
# The CPU test suite under AddressSanitizer + UndefinedBehaviorSanitizer, in its own build
# directory (build-asan; CUDA off, no benchmarks). Part of the test command (tools/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/blas_env.sh   # OPENBLAS_CORETYPE where OpenBLAS does not know this CPU
build_dir="${SOMNUS_ASAN_BUILD_DIR:-build-asan}"
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSOMNUS_CUDA=OFF -DSOMNUS_SANITIZE=ON \
    -DSOMNUS_BUILD_BENCH=OFF > /dev/null
fi
cmake --build "$build_dir" -j "$(nproc)"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
ctest --test-dir "$build_dir" -L cpu --output-on-failure -j "$(nproc)" "$@"
