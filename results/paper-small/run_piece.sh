#!/usr/bin/env bash
# One piece of issue 20's sweep (configs/paper/small.yaml) on a borrowed GPU machine, resumable across machines
# through the product's own resume path: the piece unpacks the sweep state committed in STATE (default
# results/paper-small/sweep/state.tar.xz), runs `peft-sweep run` until the sweep ends or MINUTES pass, then
# `peft-sweep stop` (running trials stop, their records STOPPED), and packs the state the next piece needs.
#
# usage: bash results/paper-small/run_piece.sh OUT_DIR [--minutes M] [--stop-after N] [-- EXTRA_RUN_ARGS...]
#   --minutes M       stop the sweep after M minutes (default 6: a device call may run 10, unpacking included)
#   --stop-after N    stop it once N more trials have FINISHED (a piece that measures; the CPU smoke test)
#   --first           the first piece: there is no state yet (without it, a missing STATE is an error, so that a
#                     wrong path never starts the sweep over)
# writes:
#   OUT_DIR/state.tar.xz   spec.yaml, identity.json and records/ (each trial's outcome, curve and costs): copy it
#                          to STATE and commit; the next piece, on any machine, starts from it
#   OUT_DIR/trials.parquet, curves.parquet   `peft-sweep export` of the sweep so far
#   OUT_DIR/piece.json     this piece: trials per status, how many finished in it, their steps and seconds
#   OUT_DIR/piece.log      the run's console
# What does not travel, and why: a device call carries 64 MiB in all and the GPU bundle (Ray, MLflow, the model)
# takes 62 of them. So no Tune checkpoints (a stopped trial starts over in the next piece, from step 0), no model
# deltas or masks, and no MLflow store: each piece's `run` rebuilds MLflow from the records (the product's
# `sync`, made for a store that was down), so FINISHED trials are never rerun and every piece's store holds them all.
# On the GPU machine Ray and MLflow come from the bundle (benchmarks/devbundle.sh), the model from its bf16 copy
# in /tmp/minilm-l6 and the data from /tmp/data. EXTRA_RUN_ARGS go to `peft-sweep run` (the CPU smoke test passes
# a tiny model and grid); STATE, SPEC and WORK (where the sweep folder is made) may be set in the environment.
set -uo pipefail
out=${1:?usage: run_piece.sh OUT_DIR [--minutes M] [--stop-after N] [-- EXTRA_RUN_ARGS...]}
shift
minutes=6
stop_after=0
first=0
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=${2:?--minutes needs a number}; shift 2;;
    --stop-after) stop_after=${2:?--stop-after needs a number of trials}; shift 2;;
    --first) first=1; shift;;
    --) shift; break;;
    *) echo "unknown option $1; valid: --minutes M, --stop-after N, --first, then -- and arguments for peft-sweep run" >&2
       exit 2;;
  esac
done
[[ $minutes =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "--minutes $minutes: give a number of minutes, e.g. 6 or 2.5" >&2; exit 2; }
[[ $stop_after =~ ^[0-9]+$ ]] || { echo "--stop-after $stop_after: give a whole number of trials" >&2; exit 2; }
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
if ! "$py" -c 'import ray, mlflow' 2>/dev/null; then
  bash benchmarks/devbundle.sh unpack >&2 || exit 2
  export PYTHONPATH=/tmp/site:$root
fi
export PYTHONPATH=${PYTHONPATH:-$root}
args=(--set "output_dir=$work")
if ! "$py" -c 'from trainables.models import resolve_model; resolve_model("minilm-l6")' 2>/dev/null; then
  args+=(--set model=/tmp/minilm-l6)  # the bundle's copy (bf16 weights): every piece on a GPU uses it
fi
data=${PEFT_SWEEP_DATA_DIR:-}
if [ -z "$data" ]; then for d in ../shared/data /tmp/data; do [ -d "$d" ] && data=$(cd "$d" && pwd) && break; done; fi
args+=(--set "data.dir=${data:?no task data: set PEFT_SWEEP_DATA_DIR}")
name=$("$py" - "$spec" "${args[@]}" "$@" <<'PY'
import sys
from orchestrator.spec import load_spec
argv = sys.argv[2:]
print(load_spec(sys.argv[1], [v for i, v in enumerate(argv) if i and argv[i - 1] == "--set"]).name)
PY
) || exit 2
sweep=$work/$name
rm -rf "$sweep"  # a warm machine keeps /tmp: start from the committed state only
mkdir -p "$out" "$sweep"
if [ -f "$state" ]; then
  tar -C "$sweep" -xJf "$state" || { echo "$state: not a readable state archive" >&2; exit 2; }
  echo "starting from $state" >&2
fi
finished() { grep -l '"status": "FINISHED"' "$sweep"/records/*.json 2>/dev/null | xargs -r -n1 basename; }
finished_before=$(finished | tr '\n' ' ')
n_before=$(finished | wc -l)
seconds=$("$py" -c 'import sys; print(round(float(sys.argv[1]) * 60))' "$minutes")

setsid "$py" -m orchestrator run "$spec" --yes "${args[@]}" "$@" > "$out/piece.log" 2>&1 &
pid=$!
# whatever ends this script, the driver does not outlive it: SIGTERM lets it leave its trials resumable
trap 'kill -0 "$pid" 2>/dev/null && { kill -TERM -- "-$pid"; sleep 5; kill -KILL -- "-$pid"; } 2>/dev/null' EXIT
started=$(date +%s)
deadline=$(( started + seconds ))
enough() { [ "$stop_after" -gt 0 ] && [ $(( $(finished | wc -l) - n_before )) -ge "$stop_after" ]; }
while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ] && ! enough; do sleep 2; done
if kill -0 "$pid" 2>/dev/null; then
  echo "stopping the sweep: $( enough && echo "$stop_after more trial(s) finished" || echo "$minutes min are up")" >&2
  "$py" -m orchestrator stop "$sweep" --timeout 90 >&2 || { kill -TERM -- "-$pid"; sleep 20; kill -KILL -- "-$pid"; }
fi
wait "$pid"; rc=$?
trap - EXIT
"$py" -m orchestrator stop "$sweep" >/dev/null 2>&1  # a driver killed above leaves its trials RUNNING: mark them
echo "peft-sweep run ended with rc $rc after $(( $(date +%s) - started )) s" >&2
if [ ! -f "$sweep/identity.json" ] || [ ! -d "$sweep/records" ]; then
  echo "no sweep state to pack in $sweep (see $out/piece.log); nothing to commit" >&2; exit 3
fi
"$py" -m orchestrator export "$sweep" >&2 && cp "$sweep"/export/{trials,curves}.parquet "$out"/
tar -C "$sweep" -cf - spec.yaml identity.json records | xz -T0 -9 > "$out/state.tar.xz"
[ "${PIPESTATUS[0]}${PIPESTATUS[1]}" = 00 ] || { echo "packing the state failed" >&2; rm -f "$out/state.tar.xz"; exit 3; }
"$py" - "$sweep" "$rc" "$(( $(date +%s) - started ))" $finished_before > "$out/piece.json" <<'PY'
import json, sys, statistics
from pathlib import Path
sweep, rc, wall, before = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), set(sys.argv[4:])
recs = {p.name: json.loads(p.read_text()) for p in sorted((sweep / "records").glob("*.json"))}
per_status = {}
for r in recs.values():
    per_status[r.get("status")] = per_status.get(r.get("status"), 0) + 1
mine = [r["result"] for name, r in recs.items() if r.get("status") == "FINISHED" and name not in before]
def stat(field):
    vals = [r[field] for r in mine if isinstance(r.get(field), (int, float))]
    return {"mean": statistics.fmean(vals), "max": max(vals)} if vals else None
print(json.dumps({"rc": rc, "piece_wall_s": wall, "per_status": per_status, "finished_in_this_piece": len(mine),
                  "device": sorted({str(r.get("device_name") or r.get("device")) for r in mine}),
                  **{f: stat(f) for f in ("steps", "best_step", "wall_s", "setup_s", "train_s", "eval_s", "checkpoint_s")}},
                 indent=1))
PY
cat "$out/piece.json"
exit "$rc"
