#!/usr/bin/env bash
# Fuzz the loaders with libFuzzer (issue 8 §2): builds fuzz/ with clang and
# -fsanitize=fuzzer,address,undefined in its own build directory (build-fuzz; only the
# libraries the targets need), then runs each target for N seconds from its seed corpus
# fuzz/corpus/<target>/ and prints the executions per target. Any crash, sanitizer report,
# leak, timeout (>10 s on one input) or out-of-memory (>2 GB) fails the script; libFuzzer
# writes the input to $SOMNUS_FUZZ_ARTIFACTS (default build-fuzz/artifacts/).
#   tools/fuzz.sh [seconds-per-target] [target...]     (default: SOMNUS_FUZZ_SECONDS or 30; all)
# Targets run in parallel, one per core (SOMNUS_FUZZ_JOBS to change).
# Part of the test command (tools/test.sh); SOMNUS_SKIP_FUZZ=1 skips it there.
# Reproduce a finding: build-fuzz/fuzz/fuzz_<target> <artifact file>
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
seconds="${1:-${SOMNUS_FUZZ_SECONDS:-30}}"
# Checked before the (minutes-long) clang build: libFuzzer would only reject it at the end.
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || {
  echo "fuzz: the first argument is the seconds per target, a positive integer; got '$seconds' (see --help)" >&2; exit 2; }
shift || true
build_dir="${SOMNUS_FUZZ_BUILD_DIR:-build-fuzz}"
artifacts="${SOMNUS_FUZZ_ARTIFACTS:-$build_dir/artifacts}"
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  # -O1 and line tables only: fast to compile, still readable stack traces.
  CC=clang CXX=clang++ cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DSOMNUS_CUDA=OFF -DSOMNUS_FUZZ=ON \
    -DSOMNUS_BUILD_TESTS=OFF -DSOMNUS_BUILD_BENCH=OFF -DSOMNUS_NATIVE=OFF \
    -DCMAKE_CXX_FLAGS_RELEASE="-O1 -gline-tables-only" > /dev/null
fi
cmake --build "$build_dir" -j "$(nproc)" --target fuzz_all
mkdir -p "$artifacts"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for b in "$build_dir"/fuzz/fuzz_*; do [ -x "$b" ] && targets+=("$(basename "$b" | sed 's/^fuzz_//')"); done
fi
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
# Targets that read from a path get their input through a scratch file: on tmpfs, writes and
# the round-trip saves' fsyncs cost no disk I/O.
[ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] && export TMPDIR=/dev/shm
# One target: fuzz it, then print its line (and the evidence on failure); exit status = result.
fuzz_one() {
  local t="$1" bin="$build_dir/fuzz/fuzz_$1" work log rc=0 execs rate seeds=()
  [ -x "$bin" ] || { echo "fuzz: no target '$t' ($bin)"; return 1; }
  # New inputs go to a scratch corpus, so the committed seeds stay as they are.
  work="$build_dir/corpus/$t"
  mkdir -p "$work"
  log="$build_dir/fuzz_$t.log"
  [ -d "fuzz/corpus/$t" ] && seeds+=("fuzz/corpus/$t")
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 -dict=fuzz/json.dict \
    -artifact_prefix="$artifacts/${t}-" "$work" "${seeds[@]}" > "$log" 2>&1 || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  if [ "$rc" -eq 0 ]; then
    printf '%-14s %12s %8s %s\n' "$t" "$execs" "$rate" ok
  else
    printf '%-14s %12s %8s %s\n' "$t" "$execs" "$rate" "FAILED (exit $rc, log $log)"
    grep -E 'ERROR|SUMMARY|fuzz property|terminate|Test unit written' "$log" | head -8
    return 1
  fi
}

# Targets are single-threaded: run one per core at a time (each still gets its full N seconds).
jobs_max="${SOMNUS_FUZZ_JOBS:-$(nproc)}"
status=0
printf '%-14s %12s %8s %s\n' target executions exec/s result
# Each job leaves its exit status in a file: `wait PID` on a job that finished while `jobs` was
# polling can fail with "not a child of this shell" (bash drops finished jobs it has reported),
# which made a passing run exit 1 (seen in CI on 2026-11-27).
rm -f "$build_dir"/fuzz_*.rc
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do sleep 0.2; done
  { rc=0; fuzz_one "$t" || rc=$?; echo "$rc" > "$build_dir/fuzz_$t.rc"; } &
done
wait
for t in "${targets[@]}"; do
  [ "$(cat "$build_dir/fuzz_$t.rc" 2>/dev/null)" = 0 ] || { status=1; echo "fuzz: $t did not pass"; }
done
exit $status
