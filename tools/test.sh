#!/usr/bin/env bash
# README command (2): set up, build (CUDA backend compiled when nvcc is found), run every test,
# then the CPU suite again under AddressSanitizer + UndefinedBehaviorSanitizer (tools/sanitize.sh,
# its own build directory; SOMNUS_SKIP_SANITIZE=1 skips it), then the loader fuzz targets for
# 30 s each (tools/fuzz.sh, clang + libFuzzer in build-fuzz; SOMNUS_SKIP_FUZZ=1 skips it).
# CUDA tests (label `cuda`) skip visibly when there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --torch   # python3-torch: the PyTorch parity test
source tools/blas_env.sh   # OPENBLAS_CORETYPE where OpenBLAS does not know this CPU
build_dir="${SOMNUS_BUILD_DIR:-build}"
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" "$@"
if [ "${SOMNUS_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "test: the CPU suite under ASan + UBSan"
  tools/sanitize.sh
fi
if [ "${SOMNUS_SKIP_FUZZ:-0}" != 1 ]; then
  echo "test: libFuzzer targets, ${SOMNUS_FUZZ_SECONDS:-30} s each (tools/fuzz.sh)"
  tools/fuzz.sh
fi
