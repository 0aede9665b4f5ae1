#!/usr/bin/env bash
# README command (1): set up a fresh machine, build, and run the CPU end-to-end demo.
# Until the Sleep demo lands this is the engine's smallest real training run: a char-level
# language model trained on ../shared/data/tinyshakespeare with somnus's own tensor,
# kernels and autograd. It prints a table and writes runs/demo/loss.png. Extra arguments go
# to `somnus demo` (e.g. --steps 300).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
build_dir="${SOMNUS_BUILD_DIR:-build}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
"$build_dir/tools/somnus" demo "$@"
