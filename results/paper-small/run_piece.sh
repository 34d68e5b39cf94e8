#!/usr/bin/env bash
# One piece of issue 20's sweep (configs/paper/small.yaml) on a borrowed GPU machine, resumable across machines
# through the product's own resume path: the piece unpacks the sweep state committed in STATE (default
# results/paper-small/sweep/state.tar.xz), runs `peft-sweep run` until the sweep ends or MINUTES pass, and packs
# the state the next piece needs. DRAIN minutes before the end it drains the sweep (`peft-sweep stop --drain`:
# running trials finish, no new one starts, the driver ends); at the end it stops what still runs (`peft-sweep
# stop`: those trials' records STOPPED; without checkpoints they start over in the next piece).
# The MINUTES count from when the driver is up (its driver.json), after it rebuilt MLflow from the records and
# started Ray; whatever that takes, the piece ends its sweep 2 min 15 s before its budget (--budget, default 9 min)
# is up, counted from when the script started.
#
# usage: bash results/paper-small/run_piece.sh OUT_DIR [--minutes M] [--drain-minutes D] [--stop-after N] [--first]
#                                              [--budget SECONDS] [-- EXTRA_RUN_ARGS...]
#   --minutes M        the sweep runs M minutes (default 6, or what a smaller --budget leaves room for; at most 6:
#                      with ~45 s before the clock (unpacking, the MLflow rebuild, Ray's start) and up to 2 min 15 s
#                      after it (stop, export, pack) a piece ends within 9 min of a device call's 10)
#   --drain-minutes D  drain the sweep D minutes before the end (default 2, or half the minutes where they are fewer
#                      than 3; about one trial of small.yaml: set it to the probe's wall_s max from piece.json);
#                      0: no drain, running trials stop at the end
#   --stop-after N     end the piece once N more trials have FINISHED (a piece that measures; the CPU smoke test):
#                      drained as at the end (unless --drain-minutes 0), then stopped at the end
#   --first            the first piece: there is no state yet (without it, a missing STATE is an error, so that a
#                      wrong path never starts the sweep over)
#   --budget SECONDS   the piece ends within this many seconds of its start (default 540, for a call of 600 s);
#                      give less when the session's device time left is less than a call's 10 min (a call is cut
#                      at the time left, and then brings back only what $OUT held): --minutes must fit in it
# writes:
#   OUT_DIR/state.tar.xz   spec.yaml, identity.json and records/ (each trial's outcome, curve and costs): copy it
#                          to STATE and commit; the next piece, on any machine, starts from it. Also packed each
#                          time a trial finishes, so a call cut short still brings back every finished trial (what
#                          ran then is RUNNING in it: the next piece runs those again)
#   OUT_DIR/trials.parquet, curves.parquet   `peft-sweep export` of the sweep so far
#   OUT_DIR/piece.json     this piece: trials per status, how many finished in it, their steps and seconds, how
#                          long the driver took to be up (before_clock_s) and how the sweep ended
#   OUT_DIR/piece.log      the run's console
# What does not travel, and why: a device call carries 64 MiB in all and the GPU bundle (Ray, MLflow, the model)
# takes 62 of them. So no Tune checkpoints (a stopped trial starts over in the next piece, from step 0), no model
# deltas or masks, and no MLflow store: each piece's `run` rebuilds MLflow from the records (the product's
# `sync`, made for a store that was down), so FINISHED trials are never rerun and every piece's store holds them all.
# On the GPU machine Ray and MLflow come from the bundle (benchmarks/devbundle.sh), the model from its bf16 copy
# in /tmp/minilm-l6 and the data from /tmp/data. EXTRA_RUN_ARGS go to `peft-sweep run` (the CPU smoke test passes
# a tiny model and grid); STATE, SPEC and WORK (where the sweep folder is made) may be set in the environment.
set -uo pipefail
begun=$(date +%s)  # the device call's clock, near enough: the piece must end within BUDGET_S of it
BUDGET_S=540       # 9 min of a call's 10 (--budget): a call killed at its limit brings back only what $OUT held
BEFORE_S=45        # allowed before the sweep's clock: unpacking the bundle, the driver's MLflow rebuild, Ray's start
AFTER_S=135        # after it: the stop (60 s), the process's end (30 s; 60 after a drain), the kill (10 s), export
out=${1:?usage: run_piece.sh OUT_DIR [--minutes M] [--drain-minutes D] [--stop-after N] [--first] [--budget SECONDS] [-- EXTRA_RUN_ARGS...]}
shift
minutes=""         # default: 6, or what --budget leaves room for
drain_minutes=""    # default: 2, or half the minutes where they are fewer than 3
stop_after=0
first=0
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=${2:?--minutes needs a number}; shift 2;;
    --drain-minutes) drain_minutes=${2:?--drain-minutes needs a number}; shift 2;;
    --stop-after) stop_after=${2:?--stop-after needs a number of trials}; shift 2;;
    --first) first=1; shift;;
    --budget) BUDGET_S=${2:?--budget needs a number of seconds}; shift 2;;
    --) shift; break;;
    *) echo "unknown option $1; valid: --minutes M, --drain-minutes D, --stop-after N, --first, --budget S, then -- and" \
            "arguments for peft-sweep run" >&2
       exit 2;;
  esac
done
number='^[0-9]+([.][0-9]+)?$'
[[ $BUDGET_S =~ ^[1-9][0-9]*$ ]] || { echo "--budget $BUDGET_S: give whole seconds, e.g. 540" >&2; exit 2; }
if (( BUDGET_S < BEFORE_S + AFTER_S + 60 )); then
  echo "--budget $BUDGET_S: a piece needs $BEFORE_S s before the sweep's clock, $AFTER_S s after it and a minute of" \
       "sweep: at least $(( BEFORE_S + AFTER_S + 60 )) s" >&2
  exit 2
fi
fits=$(awk -v s=$(( BUDGET_S - BEFORE_S - AFTER_S )) 'BEGIN { printf "%.1f", int(s / 6) / 10 }')  # to 0.1 min
[ -n "$minutes" ] || minutes=$(awk -v f="$fits" 'BEGIN { print (f < 6 ? f : 6) }')
[ -n "$drain_minutes" ] || drain_minutes=$(awk -v m="$minutes" 'BEGIN { print (m >= 3 ? 2 : m / 2) }')
[[ $minutes =~ $number ]] || { echo "--minutes $minutes: give a number of minutes, e.g. 6 or 2.5" >&2; exit 2; }
[[ $drain_minutes =~ $number ]] || { echo "--drain-minutes $drain_minutes: give a number of minutes, e.g. 2 or 0" >&2; exit 2; }
[[ $stop_after =~ ^[0-9]+$ ]] || { echo "--stop-after $stop_after: give a whole number of trials" >&2; exit 2; }
seconds=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 + 0.5 }')
drain_s=$(awk -v m="$drain_minutes" 'BEGIN { printf "%d", m * 60 + 0.5 }')
if (( seconds + BEFORE_S + AFTER_S > BUDGET_S )); then
  echo "--minutes $minutes: with up to $BEFORE_S s before the sweep's clock and $AFTER_S s after it, the piece could" \
       "run past its budget of $BUDGET_S s (--budget; a device call cut there brings back only what is packed by" \
       "then); use at most $fits" >&2
  exit 2
fi
if (( drain_s >= seconds )); then
  echo "--drain-minutes $drain_minutes: the drain must start inside the piece's $minutes min; give less, or 0 for" \
       "no drain" >&2
  exit 2
fi
absolute() { case $1 in /*) echo "$1";; *) echo "$PWD/$1";; esac; }  # paths as the caller meant them
out=$(absolute "$out")
state=$(absolute "${STATE:-}")
spec=$(absolute "${SPEC:-}")
work=$(absolute "${WORK:-/tmp/paper-small-runs}")
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[ -n "${STATE:-}" ] || state=$root/results/paper-small/sweep/state.tar.xz
if ((first)) && [ -f "$state" ]; then echo "--first, but $state exists: the sweep has begun" >&2; exit 2; fi
if ! ((first)) && [ ! -f "$state" ]; then echo "no sweep state at $state (pass --first for the first piece)" >&2; exit 2; fi
[ -n "${SPEC:-}" ] || spec=$root/configs/paper/small.yaml
py=${PYTHON:-python3}
# every path is local: say so, so that no library reaches for the network (or waits on it)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true PYTHONUNBUFFERED=1
unpack=0
"$py" -c 'import ray, mlflow' 2>/dev/null || unpack=1  # no bundle then: its unpack says what is missing
if [ -f .devbundle/unpack.sh ] && { [ ! -d /tmp/minilm-l6 ] || [ ! -d /tmp/data ]; }; then unpack=1; fi  # model, data
if ((unpack)); then
  bash benchmarks/devbundle.sh unpack >&2 || exit 2
  export PYTHONPATH=/tmp/site:$root${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}  # Ray's workers import trainables from here
fi
args=(--set "output_dir=$work")
if ! "$py" -c 'from trainables.models import resolve_model; resolve_model("minilm-l6")' 2>/dev/null; then
  args+=(--set model=/tmp/minilm-l6)  # the bundle's copy (bf16 weights): every piece on a GPU uses it
fi
data=${PEFT_SWEEP_DATA_DIR:-}
if [ -z "$data" ]; then for d in ../shared/data /tmp/data; do [ -d "$d" ] && data=$(cd "$d" && pwd) && break; done; fi
args+=(--set "data.dir=${data:?no task data: set PEFT_SWEEP_DATA_DIR}")
# the GPUs torch sees, told to Ray (which would count them itself through NVML, and stop the sweep if that failed);
# ray.* changes no trial's key
gpus=$("$py" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
if [ "${gpus:-0}" -gt 0 ] 2>/dev/null; then args+=(--set "ray.num_gpus=$gpus"); fi
name=$("$py" - "$spec" "${args[@]}" "$@" <<'PY'
import sys
from orchestrator.spec import load_spec
argv = sys.argv[2:]
print(load_spec(sys.argv[1], [v for i, v in enumerate(argv) if i and argv[i - 1] == "--set"]).name)
PY
) || exit 2
sweep=$work/$name
if [ -f "$sweep/driver.json" ] && "$py" - "$sweep" <<'PY'
import sys
from pathlib import Path
from orchestrator import driver
sys.exit(0 if driver.alive(Path(sys.argv[1])) else 1)
PY
then  # an earlier call killed at its limit leaves its driver (in a session of its own) running on a warm machine
  echo "a driver still runs $sweep ($(cat "$sweep/driver.json")); the folder is left as it is. Stop it first:" \
       "$py -m orchestrator stop $sweep (its state is not the committed one: pack it by hand if it is wanted)" >&2
  exit 2
fi
rm -rf "$sweep"  # a warm machine keeps /tmp: start from the committed state only
mkdir -p "$out" "$sweep"
rm -f "$out/state.tar.xz" "$out/state.part"  # what comes back is this piece's state, never an earlier one's
if [ -f "$state" ]; then
  tar -C "$sweep" -xJf "$state" || { echo "$state: not a readable state archive" >&2; exit 2; }
  echo "starting from $state" >&2
fi
finished_files() { grep -l '"status": "FINISHED"' "$sweep"/records/*.json 2>/dev/null; }
finished() { finished_files | xargs -r -n1 basename; }
n_finished() { finished_files | wc -l; }  # polled every 2 s: no basename per record
finished_before=$(finished | tr '\n' ' ')
n_before=$(n_finished)
# the state as it is now, written whole or not at all (a call cut part-way brings back the last whole one). The
# records are replaced atomically, one file per trial; tar's status 1 is a file that changed while read (a record
# rewritten then: the snapshot after the next finished trial has it)
pack_state() {  # $1: xz's level (the snapshots' is lower: a few seconds less in the loop)
  tar -C "$sweep" --exclude='*.tmp' --warning=no-file-changed -cf - spec.yaml identity.json records \
    | xz -T0 "-${1:-9}" > "$out/state.part"
  local rc=("${PIPESTATUS[@]}")
  if (( rc[0] <= 1 && rc[1] == 0 )); then mv "$out/state.part" "$out/state.tar.xz"; else rm -f "$out/state.part"; return 1; fi
}
packed=$n_before
snapshot() {  # after each trial that finished in this piece
  local n; n=$(n_finished)
  if (( n > packed )) && [ -f "$sweep/identity.json" ] && pack_state 6; then
    packed=$n; echo "state packed with $n FINISHED trial(s) (a snapshot: the piece goes on)" >&2
  fi
}

setsid "$py" -m orchestrator run "$spec" --yes "${args[@]}" "$@" > "$out/piece.log" 2>&1 &
pid=$!
# whatever ends this script, the driver does not outlive it: SIGTERM lets it leave its trials resumable
trap 'kill -0 "$pid" 2>/dev/null && { kill -TERM -- "-$pid"; sleep 5; kill -KILL -- "-$pid"; } 2>/dev/null' EXIT
latest=$(( begun + BUDGET_S - AFTER_S ))  # the sweep ends by then, however long the driver took to start it
alive() { kill -0 "$pid" 2>/dev/null; }
# the clock starts when the driver is up (driver.json): it has rebuilt MLflow from the records, started Ray and
# starts the trials; from then on `peft-sweep stop` reaches it
while alive && [ "$(date +%s)" -lt "$latest" ] && [ ! -f "$sweep/driver.json" ]; do sleep 1; done
started=$(date +%s)
before_clock=$(( started - begun ))
deadline=$(( started + seconds < latest ? started + seconds : latest ))
drain_at=$(( deadline - drain_s ))
ended="the sweep ended"
enough() { [ "$stop_after" -gt 0 ] && [ $(( $(n_finished) - n_before )) -ge "$stop_after" ]; }
while alive && [ "$(date +%s)" -lt "$drain_at" ] && ! enough; do sleep 2; snapshot; done
snapshot
why=$( enough && echo "$stop_after more trial(s) finished" || echo "$drain_minutes min before the end")
drained=0
if alive && ((drain_s)) && [ "$(date +%s)" -lt "$deadline" ]; then
  ended="drained"
  echo "draining the sweep ($why): running trials finish, no new one starts; what still runs at" \
       "$(date -d "@$deadline" +%T) is stopped" >&2
  # 0: the driver has let go of the sweep (its driver.json is gone); its process may still be shutting Ray down
  "$py" -m orchestrator stop "$sweep" --drain --timeout $(( deadline - $(date +%s) )) >&2 &
  drainer=$!
  while kill -0 "$drainer" 2>/dev/null; do sleep 2; snapshot; done  # trials that finish while it drains, too
  wait "$drainer" && drained=1
  snapshot
fi
if ! ((drained)) && alive; then
  ended="stopped"
  if ((drain_s)); then why="trials still run at the end"; elif enough; then why="$stop_after more trial(s) finished"
  else why="$minutes min are up"; fi
  echo "stopping the sweep: $why" >&2
  "$py" -m orchestrator stop "$sweep" --timeout 60 >&2
fi
# a driver that has let go of its sweep ends once Ray has shut down (seconds); one that has not ended by then, or
# did not stop when asked, is killed (SIGTERM first: the driver then leaves its trials resumable). After a drain
# nothing of the sweep is left to it: more time, and a kill then costs nothing (the records are complete)
grace=$(( drained ? 60 : 30 ))
for _ in $(seq "$grace"); do alive || break; sleep 1; done
cut=0
if alive; then
  echo "the driver (pid $pid) has not ended $grace s after the sweep's stop: killing it" >&2
  { kill -TERM -- "-$pid"; sleep 10; kill -KILL -- "-$pid"; } 2>/dev/null
  cut=1
fi
wait "$pid"; rc=$?
if ((drained && cut)); then
  echo "(its exit status $rc is the kill's: the drain had ended its sweep)" >&2; rc=0
fi
trap - EXIT
"$py" -m orchestrator stop "$sweep" >/dev/null 2>&1  # a driver killed above leaves its trials RUNNING: mark them
echo "peft-sweep run ended ($ended) with rc $rc, $(( $(date +%s) - started )) s after the driver was up (which" \
     "came $before_clock s after this script started)" >&2
if [ ! -f "$sweep/identity.json" ] || [ ! -d "$sweep/records" ]; then
  echo "no sweep state to pack in $sweep (see $out/piece.log); nothing to commit" >&2; exit 3
fi
"$py" -m orchestrator export "$sweep" >&2 && cp "$sweep"/export/{trials,curves}.parquet "$out"/
pack_state || { echo "packing the state failed" "$( [ -f "$out/state.tar.xz" ] && echo "(what $out/state.tar.xz holds is the" \
                     "snapshot with $packed FINISHED)")" >&2; exit 3; }
"$py" - "$sweep" "$rc" "$(( $(date +%s) - started ))" "$before_clock" "$ended" $finished_before \
  > "$out/piece.json" <<'PY'
import json, sys, statistics
from pathlib import Path
sweep, rc, wall, before_clock, ended = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
before = set(sys.argv[6:])
recs = {p.name: json.loads(p.read_text()) for p in sorted((sweep / "records").glob("*.json"))}
per_status = {}
for r in recs.values():
    per_status[r.get("status")] = per_status.get(r.get("status"), 0) + 1
mine = [r["result"] for name, r in recs.items() if r.get("status") == "FINISHED" and name not in before]
def stat(field):
    vals = [r[field] for r in mine if isinstance(r.get(field), (int, float))]
    return {"mean": statistics.fmean(vals), "max": max(vals)} if vals else None
print(json.dumps({"rc": rc, "piece_wall_s": wall, "before_clock_s": before_clock, "ended": ended,
                  "per_status": per_status, "finished_in_this_piece": len(mine),
                  "device": sorted({str(r.get("device_name") or r.get("device")) for r in mine}),
                  **{f: stat(f) for f in ("steps", "best_step", "wall_s", "setup_s", "train_s", "eval_s", "checkpoint_s")}},
                 indent=1))
PY
cat "$out/piece.json"
exit "$rc"
