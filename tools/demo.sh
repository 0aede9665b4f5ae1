#!/usr/bin/env bash
# README command (1): set up a fresh machine, build, and run the CPU end-to-end demo.
# Until the Sleep demo lands (issue 7) this trains a small GPT-2-style transformer on
# ../shared/data/tinyshakespeare for a few minutes with somnus's own tensors, kernels,
# autograd, optimiser and tokenizer (tools/configs/tiny_shakespeare.json), then prints the
# evaluation table, writes runs/demo/loss.png and prints a sample.
# Extra arguments go to `somnus train` (e.g. --steps 200).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
build_dir="${SOMNUS_BUILD_DIR:-build}"
somnus="$build_dir/tools/somnus"
out=runs/demo
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
# OpenMP threads spin while waiting by default; on a small machine that steals the cores
# the other threads need.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

rm -rf "$out"  # a fresh run each time (train refuses to overwrite checkpoints without --resume)
"$somnus" train --config tools/configs/tiny_shakespeare.json --out_dir "$out" "$@"
echo
"$somnus" report --metrics "$out/metrics.jsonl" --plot "$out/loss.png" --title "somnus demo: tiny GPT-2 on tinyshakespeare"
echo
echo "sample (temperature 0.8, top-k 40):"
"$somnus" generate --ckpt "$out" --prompt "ROMEO:" --max-new 120 --temperature 0.8 --top-k 40 --seed 1
