#!/usr/bin/env bash
# README command (2): set up, build (CUDA backend compiled when nvcc is found), run every test.
# CUDA tests (label `cuda`) skip visibly when there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --torch   # python3-torch: the PyTorch parity test
build_dir="${SOMNUS_BUILD_DIR:-build}"
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" "$@"
