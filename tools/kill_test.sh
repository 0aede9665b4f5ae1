#!/usr/bin/env bash
# Kill test (issue 8 §3): crash-safe, bit-exact resume of `somnus train` and of `somnus sleep`
# under SIGKILL. For each command:
#
#   1. an uninterrupted reference run (tiny model; checkpoints every 2 steps);
#   2. the same run in another directory, killed with SIGKILL at random moments (during
#      start-up, training/wake steps, evaluation, the sleep phase's seeding, dreaming and
#      checkpoint writes alike) and resumed with --resume each time (restarted fresh when
#      the kill came before the first checkpoint), until it finishes with at least $KILLS
#      kills (default 20);
#   3. after every kill, every complete checkpoint directory (ckpt-*/ with a MANIFEST.json)
#      and the one `latest` names must verify and load (`somnus eval --ckpt` checks sizes,
#      XXH64 checksums, then loads the weights): a torn checkpoint fails the test;
#   4. at the end the metrics (train: metrics.jsonl without tokens_per_s; sleep: metrics.json
#      without seconds and tokens_per_s) and the final weights (and, for train, optimiser and
#      train state) must be byte-identical to the reference's.
# Usage: tools/kill_test.sh [kills]     env: SOMNUS_CLI (default build/tools/somnus),
#        SOMNUS_KILL_SEED (random seed for the kill times), SOMNUS_KILL_DIR (work dir, kept on failure)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
kills_wanted="${1:-${KILLS:-20}}"
[[ "$kills_wanted" =~ ^[1-9][0-9]*$ ]] || {
  echo "kill_test: the argument is the number of kills, a positive integer; got '$kills_wanted' (see --help)" >&2; exit 2; }
cli="${SOMNUS_CLI:-${SOMNUS_BUILD_DIR:-build}/tools/somnus}"
[ -x "$cli" ] || { echo "kill_test: no somnus binary at $cli (build it, or set SOMNUS_CLI)"; exit 1; }
work="${SOMNUS_KILL_DIR:-$(mktemp -d /tmp/somnus_kill.XXXXXX)}"
mkdir -p "$work"
RANDOM="${SOMNUS_KILL_SEED:-$$}"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

# ~16 KB of word-like text from a fixed LCG.
python3 - "$work/corpus.txt" <<'PY'
import sys
words = "the king and queen of sleep dream wakes in a castle night we shall learn slowly".split()
s, out = 4242, []
while sum(len(w) + 1 for w in out) < 16000:
    s = (s * 6364136223846793005 + 1442695040888963407) % 2**64
    out.append(words[(s >> 33) % len(words)] + (".\n" if (s >> 20) % 7 == 0 else ""))
open(sys.argv[1], "w").write(" ".join(out))
PY
train_args=(--data "$work/corpus.txt" --steps 60 --batch_size 4 --vocab_size 300 --eval_every 10 --eval_batches 2
      --checkpoint_every 2 --keep_checkpoints 3 --model.n_layer 2 --model.n_embd 32 --model.n_head 2
      --model.block_size 32 --model.levels '[{"period": 1}, {"period": 3}]' --warmup_steps 5 --quiet)

verify_all() {  # every complete checkpoint under the given roots, and their latest, must verify and load
  local root d
  for root in "$@"; do
    for d in "$root"/ckpt-*; do
      [ -d "$d" ] || continue
      [ -f "$d/MANIFEST.json" ] || { echo "kill_test: $d has no manifest but a final name"; return 1; }
      "$cli" eval --ckpt "$d" --data "$work/corpus.txt" --max-batches 1 > "$work/verify.log" 2>&1 || {
        echo "kill_test: checkpoint $d does not load:"; cat "$work/verify.log"; return 1; }
    done
    if [ -f "$root/latest" ]; then
      "$cli" eval --ckpt "$root" --data "$work/corpus.txt" --max-batches 1 > "$work/verify.log" 2>&1 || {
        echo "kill_test: the latest checkpoint of $root does not load:"; cat "$work/verify.log"; return 1; }
    fi
  done
}

# kill_loop NAME RUN_DIR PROGRESS_ROOT DONE_FILE -- COMMAND...
#   Runs COMMAND (+ --resume once PROGRESS_ROOT/latest exists) in RUN_DIR's terms, SIGKILLs it
#   at random moments until $kills_wanted kills landed, then lets a life finish. A run that
#   got finished (DONE_FILE exists) before enough kills landed starts over. Uses
#   $startup_ms and $ref_ms for the kill window; sets kills/attempts/verified/steps_seen.
kill_loop() {
  local name="$1" run="$2" progress="$3" done_file="$4"; shift 5
  kills=0 attempts=0 verified=0 resumed=0 steps_seen=""
  # Kill delays uniform in [0, start-up + 2 * ref / kills): each life ends somewhere in start-up,
  # a step, an evaluation or a checkpoint write, and the kills are spread over the whole run.
  local window_ms=$(( startup_ms + 2 * ref_ms / kills_wanted )) resume pid rc delay_ms
  [ $window_ms -lt 20 ] && window_ms=20
  while :; do
    if [ -f "$done_file" ]; then  # complete (a killed life may have completed it)
      [ $kills -ge "$kills_wanted" ] && break
      # A life outran its kill and finished the run before enough kills landed (a fast or idle
      # machine): start the killed run over; the lives killed so far were verified already.
      rm -rf "$run"
    fi
    attempts=$((attempts + 1))
    [ $attempts -gt 400 ] && { echo "kill_test: $name: gave up after $attempts attempts"; return 1; }
    resume=()
    [ -f "$progress/latest" ] && resume=(--resume)
    "$@" "${resume[@]}" > "$work/life.log" 2>&1 &
    pid=$!
    if [ $kills -lt "$kills_wanted" ]; then
      delay_ms=$(( (RANDOM << 15 | RANDOM) % window_ms ))  # RANDOM alone stops at 32767
      sleep "$(awk -v ms="$delay_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
      kill -KILL "$pid" 2>/dev/null || true
      rc=0
      wait "$pid" 2>/dev/null || rc=$?
      grep -q "resumed from" "$work/life.log" && resumed=$((resumed + 1))
      if [ $rc -eq 137 ]; then  # died by our SIGKILL (not a life that had already finished)
        kills=$((kills + 1))
        verify_all "$run" "$progress" || { echo "kill_test: $name: FAILED after kill $kills (work dir kept: $work)"; return 1; }
        verified=$((verified + 1))
        steps_seen+=" $( [ -f "$progress/latest" ] && sed 's/ckpt-0*//; s/^$/0/' "$progress/latest" || echo none)"
        continue
      fi
    else
      rc=0
      wait "$pid" || rc=$?
      grep -q "resumed from" "$work/life.log" && resumed=$((resumed + 1))
    fi
    [ $rc -eq 0 ] || { echo "kill_test: $name: a resumed life failed (exit $rc):"; cat "$work/life.log"; return 1; }
    [ -f "$done_file" ] || { echo "kill_test: $name: a life exited 0 without finishing:"; cat "$work/life.log"; return 1; }
  done
  [ $kills -ge "$kills_wanted" ] || { echo "kill_test: $name: only $kills kills"; return 1; }
  # The test must have exercised resume: lives that said "resumed from", and kills that found
  # a checkpoint past the first.
  [ $resumed -ge 1 ] || { echo "kill_test: $name: no life resumed from a checkpoint"; return 1; }
  echo "$steps_seen" | grep -qE ' [1-9][0-9]*' || { echo "kill_test: $name: no kill landed after a checkpoint"; return 1; }
}

# ---- somnus train
t0=$(date +%s%N)
"$cli" train "${train_args[@]}" --out_dir "$work/ref" > "$work/ref.log" 2>&1 || { cat "$work/ref.log"; exit 1; }
ref_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
t0=$(date +%s%N)  # start-up + one step + one checkpoint
"$cli" train "${train_args[@]}" --out_dir "$work/startup" --stop-at 1 > "$work/startup.log" 2>&1 || { cat "$work/startup.log"; exit 1; }
startup_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "kill_test: train: reference run $ref_ms ms; killing a second run at random points (seed $RANDOM)"
run="$work/run"
# train's run is done when its last checkpoint exists (its metrics.jsonl then has 60 lines).
kill_loop train "$run" "$run" "$run/ckpt-00000060/MANIFEST.json" -- \
  "$cli" train "${train_args[@]}" --out_dir "$run" || exit 1
python3 - "$work/ref" "$run" <<'PY'
import json, sys
def metrics(d):
    out = []
    for line in open(d + "/metrics.jsonl"):
        j = json.loads(line); j.pop("tokens_per_s", None); out.append(j)
    return out
a, b = metrics(sys.argv[1]), metrics(sys.argv[2])
if len(a) != 60 or a != b:
    bad = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    sys.exit(f"kill_test: train: metrics differ ({len(a)} vs {len(b)} lines; first difference at line {bad + 1})")
for f in ("model.safetensors", "optimizer.safetensors", "train_state.json"):
    x = open(f"{sys.argv[1]}/ckpt-00000060/{f}", "rb").read()
    y = open(f"{sys.argv[2]}/ckpt-00000060/{f}", "rb").read()
    if x != y:
        sys.exit(f"kill_test: train: final {f} differs from the uninterrupted run's")
PY
echo "kill_test: train: latest checkpoint step after each kill:$steps_seen"
echo "kill_test: train: passed: $kills SIGKILLs survived ($verified verified checkpoint states, $attempts lives, $resumed resumed); metrics and final weights bit-identical"
train_kills=$kills

# ---- somnus sleep: a wake → sleep → dream cycle of a small CMS model with receiver slots
"$cli" train --data "$work/corpus.txt" --out_dir "$work/base" --steps 20 --batch_size 4 --vocab_size 300 \
  --eval_every 20 --eval_batches 1 --checkpoint_every 20 --model.n_layer 2 --model.n_embd 32 --model.n_head 2 \
  --model.block_size 32 --model.levels '[{"period": 1}, {"period": 2, "n_slots": 2, "slot_rank": 4}]' --quiet \
  > "$work/base.log" 2>&1 || { cat "$work/base.log"; exit 1; }
python3 - "$work/corpus.txt" "$work/new.txt" <<'PY'
import sys
words = open(sys.argv[1]).read().split()
open(sys.argv[2], "w").write(" ".join(reversed(words[:2500])))
PY
sleep_args=(--ckpt "$work/base" --data "$work/new.txt" --old-data "$work/corpus.txt" --checkpoint-every 2
      --set wake_steps=12 --set batch_size=2 --set consolidation.ks.steps=4 --set consolidation.ks.n_samples=2
      --set consolidation.ks.batch_size=2 --set consolidation.ks.imitation.group_size=2 --set dream.num_dreams=3
      --set dream.top_k=1 --set dream.keep_random=1 --set dream.rest_iterations=2 --set dream.trial_steps=1
      --set dream.rest_steps=1 --set dream.apply_steps=2 --set dream.dream_length=4)
t0=$(date +%s%N)
"$cli" sleep "${sleep_args[@]}" --out "$work/sref" > "$work/sref.log" 2>&1 || { cat "$work/sref.log"; exit 1; }
ref_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
t0=$(date +%s%N)  # start-up + the first progress checkpoint
"$cli" sleep "${sleep_args[@]}" --out "$work/sstartup" --stop-at 1 > "$work/sstartup.log" 2>&1 || { cat "$work/sstartup.log"; exit 1; }
startup_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "kill_test: sleep: reference run $ref_ms ms; killing a second run at random points"
run="$work/srun"
kill_loop sleep "$run" "$run/progress" "$run/metrics.json" -- "$cli" sleep "${sleep_args[@]}" --out "$run" || exit 1
python3 - "$work/sref" "$run" <<'PY'
import glob, json, sys
def strip(j):  # wall-clock fields differ between runs by nature
    if isinstance(j, dict): return {k: strip(v) for k, v in j.items() if k not in ("seconds", "tokens_per_s")}
    if isinstance(j, list): return [strip(v) for v in j]
    return j
a, b = (strip(json.load(open(d + "/metrics.json"))) for d in sys.argv[1:3])
if a != b:
    sys.exit("kill_test: sleep: metrics.json differs from the uninterrupted run's")
x, y = (open(glob.glob(d + "/ckpt-*/model.safetensors")[0], "rb").read() for d in sys.argv[1:3])
if x != y:
    sys.exit("kill_test: sleep: the final model differs from the uninterrupted run's")
PY
echo "kill_test: sleep: progress step after each kill (wake steps; 13 = after the sleep phase):$steps_seen"
echo "kill_test: sleep: passed: $kills SIGKILLs survived ($verified verified checkpoint states, $attempts lives, $resumed resumed); metrics and final weights bit-identical"
echo "kill_test: passed: $train_kills + $kills SIGKILLs survived (train, sleep)"

[ -z "${SOMNUS_KILL_DIR:-}" ] && rm -rf "$work"
exit 0
