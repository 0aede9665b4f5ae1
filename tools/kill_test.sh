#!/usr/bin/env bash
# Kill test (issue 8 §3): crash-safe, bit-exact resume of `somnus train` under SIGKILL.
#
#   1. an uninterrupted reference run (tiny model, checkpoint every 2 steps);
#   2. the same run in another directory, killed with SIGKILL at random moments (during
#      start-up, training steps, evaluation and checkpoint writes alike) and resumed with
#      --resume each time (restarted fresh when the kill came before the first checkpoint),
#      until it finishes with at least $KILLS kills (default 20);
#   3. after every kill, every complete checkpoint directory (ckpt-*/ with a MANIFEST.json)
#      and the one `latest` names must verify and load (`somnus eval --ckpt` checks sizes,
#      XXH64 checksums, then loads the weights): a torn checkpoint fails the test;
#   4. at the end metrics.jsonl (tokens_per_s aside) and the final model and optimiser
#      files must be byte-identical to the reference's.
# Usage: tools/kill_test.sh [kills]     env: SOMNUS_CLI (default build/tools/somnus),
#        SOMNUS_KILL_SEED (random seed for the kill times), SOMNUS_KILL_DIR (work dir, kept on failure)
set -euo pipefail
cd "$(dirname "$0")/.."
kills_wanted="${1:-${KILLS:-20}}"
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
args=(--data "$work/corpus.txt" --steps 60 --batch_size 4 --vocab_size 300 --eval_every 10 --eval_batches 2
      --checkpoint_every 2 --keep_checkpoints 3 --model.n_layer 2 --model.n_embd 32 --model.n_head 2
      --model.block_size 32 --model.levels '[{"period": 1}, {"period": 3}]' --warmup_steps 5 --quiet)

t0=$(date +%s%N)
"$cli" train "${args[@]}" --out_dir "$work/ref" > "$work/ref.log" 2>&1 || { cat "$work/ref.log"; exit 1; }
ref_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
t0=$(date +%s%N)  # start-up + one step + one checkpoint
"$cli" train "${args[@]}" --out_dir "$work/startup" --stop-at 1 > "$work/startup.log" 2>&1 || { cat "$work/startup.log"; exit 1; }
startup_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "kill_test: reference run $ref_ms ms; killing a second run at random points (seed $RANDOM)"

verify_all() {  # every complete checkpoint, and the latest, must verify and load
  local run="$1" d
  for d in "$run"/ckpt-*; do
    [ -d "$d" ] || continue
    [ -f "$d/MANIFEST.json" ] || { echo "kill_test: $d has no manifest but a final name"; return 1; }
    "$cli" eval --ckpt "$d" --data "$work/corpus.txt" --max-batches 1 > "$work/verify.log" 2>&1 || {
      echo "kill_test: checkpoint $d does not load:"; cat "$work/verify.log"; return 1; }
  done
  if [ -f "$run/latest" ]; then
    "$cli" eval --ckpt "$run" --data "$work/corpus.txt" --max-batches 1 > "$work/verify.log" 2>&1 || {
      echo "kill_test: the latest checkpoint of $run does not load:"; cat "$work/verify.log"; return 1; }
  fi
}

run="$work/run"
kills=0 attempts=0 verified=0 steps_seen=""
# Kill delays uniform in [0, start-up + 2 * ref / kills): each life ends somewhere in start-up,
# a step, an evaluation or a checkpoint write, and the kills are spread over the whole run.
window_ms=$(( startup_ms + 2 * ref_ms / kills_wanted ))
[ $window_ms -lt 20 ] && window_ms=20
while :; do
  attempts=$((attempts + 1))
  [ $attempts -gt 400 ] && { echo "kill_test: gave up after $attempts attempts"; exit 1; }
  resume=()
  [ -f "$run/latest" ] && resume=(--resume)
  "$cli" train "${args[@]}" --out_dir "$run" "${resume[@]}" > "$work/life.log" 2>&1 &
  pid=$!
  if [ $kills -lt "$kills_wanted" ]; then
    delay_ms=$(( RANDOM % window_ms ))
    sleep "$(awk -v ms="$delay_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
    kill -KILL "$pid" 2>/dev/null || true
    rc=0
    wait "$pid" 2>/dev/null || rc=$?
    if [ $rc -eq 137 ]; then  # died by our SIGKILL (not a life that had already finished)
      kills=$((kills + 1))
      verify_all "$run" || { echo "kill_test: FAILED after kill $kills (work dir kept: $work)"; exit 1; }
      verified=$((verified + 1))
      steps_seen+=" $( [ -f "$run/latest" ] && sed 's/ckpt-0*//' "$run/latest" || echo none)"
      continue
    fi
  else
    rc=0
    wait "$pid" || rc=$?
  fi
  [ $rc -eq 0 ] || { echo "kill_test: a resumed life failed (exit $rc):"; cat "$work/life.log"; exit 1; }
  if grep -q "^done: step 60 of 60" "$work/life.log"; then
    [ $kills -ge "$kills_wanted" ] && break
    # A life outran its kill and finished the run before enough kills landed (a fast or idle
    # machine): start the killed run over; the lives killed so far were verified already.
    rm -rf "$run"
  fi
done
[ $kills -ge "$kills_wanted" ] || { echo "kill_test: only $kills kills"; exit 1; }

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
    sys.exit(f"kill_test: metrics differ ({len(a)} vs {len(b)} lines; first difference at line {bad + 1})")
for f in ("model.safetensors", "optimizer.safetensors", "train_state.json"):
    x = open(f"{sys.argv[1]}/ckpt-00000060/{f}", "rb").read()
    y = open(f"{sys.argv[2]}/ckpt-00000060/{f}", "rb").read()
    if x != y:
        sys.exit(f"kill_test: final {f} differs from the uninterrupted run's")
PY
echo "kill_test: latest checkpoint step after each kill:$steps_seen"
echo "kill_test: passed: $kills SIGKILLs survived ($verified verified checkpoint states, $attempts lives); metrics and final weights bit-identical"

# ---- somnus sleep: hook for the same test over `somnus sleep` (issue 8 §3). The loop above
# applies once the command can continue an interrupted cycle (a --resume flag); until then
# this only reports that sleep is not covered.
if "$cli" sleep --help 2>/dev/null | grep -q -- "--resume"; then
  echo "kill_test: 'somnus sleep' has --resume: wire it into this test (tools/kill_test.sh)"
elif "$cli" sleep --help 2>/dev/null | grep -q "Usage: .* sleep"; then
  echo "kill_test: 'somnus sleep' has no --resume yet: not covered (train only)"
fi
# ---- end somnus sleep

[ -z "${SOMNUS_KILL_DIR:-}" ] && rm -rf "$work"
exit 0
