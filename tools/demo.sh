#!/usr/bin/env bash
# README command (1): set up a fresh machine, build, and run the CPU wake → sleep → dream demo:
# the CLINC150 class-incremental experiment in its tiny config (PARADIGM §5.1), comparing ICL,
# SFT and Sleep over 3 seeds. It prints the table (final average accuracy, forgetting,
# accuracy on the domain just learned, seconds; mean ± std) and writes runs/demo/result.json,
# table.md, bars.png, curves.png (forgetting curves) and heatmap.png (accuracy matrices).
#
# The demo needs only the CPU `somnus` binary, so it builds that target alone in build-demo
# without CUDA (the test command builds everything in build/). Extra arguments go to
# `somnus experiment` (e.g. --set 'seeds=[0]' for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."
export SOMNUS_BUILD_DIR="${SOMNUS_BUILD_DIR:-build-demo}"
export SOMNUS_CUDA="${SOMNUS_CUDA:-OFF}"
export SOMNUS_TARGETS="${SOMNUS_TARGETS:-somnus}"
tools/setup.sh
source tools/blas_env.sh   # OPENBLAS_CORETYPE where OpenBLAS does not know this CPU
somnus="$SOMNUS_BUILD_DIR/tools/somnus"
out=runs/demo
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
# OpenMP threads spin while waiting by default; on a small machine that steals the cores
# the other threads need.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

rm -rf "$out"
"$somnus" experiment clinc150 --config tiny --out "$out" "$@"
