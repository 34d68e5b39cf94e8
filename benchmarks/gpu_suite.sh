#!/usr/bin/env bash
# Issue 19's GPU measurements in one go (under 9 min on one H100/H200): trial throughput against a plain PyTorch
# loop (MiniLM-L6 and a RoBERTa-base-shaped random-init model), the optimizer step alone, and trial packing
# through Ray Tune (and what a fresh process per trial costs against reused workers). Prints one JSON line per
# figure and writes OUT_DIR/<date>-<gpu or cpu>.json with the exact commands, torch/GPU info, every figure, the
# ratios the issue's goals name and torch.profiler tables.
#
# usage: bash benchmarks/gpu_suite.sh OUT_DIR [--smoke] [--only STEP,...] [--budget SECONDS]
#   --smoke    CPU, tiny settings, a few minutes: checks the suite end to end (CI)
#   --only     run only these steps (of minilm, packing, roberta, optim, determinism; in that order: the issue's
#              packing goal before the RoBERTa-shaped and optimizer figures, so a tight budget leaves those out
#              first; determinism, last, reruns one SAM trial per training.deterministic setting)
#   --budget   start no step whose time limit would end later than this many seconds after the suite started
#              (default 540: a device call is killed at 600 s, and what it wrote under OUT_DIR comes back)
# On the borrowed GPU machine (the device tool's run), exactly:
#   command: bash benchmarks/gpu_suite.sh $OUT      carry: [".devbundle"]      timeout_s: 600
# .devbundle/ is git-ignored: without it in carry the suite stops at once (exit 2), and only what is written under
# $OUT comes back. A second call for the steps left out: bash benchmarks/gpu_suite.sh $OUT --only determinism
# On a GPU machine without Ray or MLflow, bring the bundle along (bash benchmarks/devbundle.sh --help):
#   bash benchmarks/devbundle.sh build      # here, once: .devbundle/ (Ray, MiniLM-L6, task data, MLflow + SQLite store)
# the suite then unpacks it itself (bash benchmarks/devbundle.sh unpack: model to /tmp/minilm-l6, data to /tmp/data).
# OUT_DIR holds three files, each written as the suite goes, so a call killed part-way still returns the steps done:
#   suite.out   every step's stdout (its JSON lines), between "#start" and "#end" lines (rc, seconds)
#   suite.log   the suite's own messages and every step's stderr, under a "### step" header each
#   <date>-<gpu>.json   the results of the steps done so far, rewritten after every step (suite_results.py)
# Each step has its own time limit; a step that fails, runs out or is left out for the budget is recorded under
# "errors", the rest go on. The packing step drives a real sweep (orchestrator.sweep), which tracks in MLflow on
# SQLite: the bundle's MLflow part was checked on CPU (benchmarks/devbundle_check.sh, Python 3.11), not yet on
# the GPU machine.
set -uo pipefail
usage="usage: gpu_suite.sh OUT_DIR [--smoke] [--only STEP,...] [--budget SECONDS]"
[[ " $* " == *" --help "* || " $* " == *" -h "* ]] && { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; }
case ${1:-} in ''|-*) echo "$usage (the folder comes first; --help says more)" >&2; exit 2;; esac
out=$1; shift
smoke=0; only=""; budget=540
while (($#)); do
  case $1 in
    --smoke) smoke=1;;
    --only) only=${2:?$usage}; shift;;
    --budget) budget=${2:?$usage}; shift;;
    *) echo "unknown option $1; valid: --smoke, --only STEP,..., --budget SECONDS" >&2; exit 2;;
  esac
  shift
done
[[ $budget =~ ^[0-9]+$ ]] || { echo "--budget must be whole seconds, not '$budget'" >&2; exit 2; }
for s in ${only//,/ }; do
  case $s in minilm|packing|roberta|optim|determinism) ;;
    *) echo "unknown step '$s'; valid: minilm, packing, roberta, optim, determinism" >&2; exit 2;; esac
done
SECONDS=0  # the budget counts from here: unpack and imports included
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
mkdir -p "$out"; out=$(cd "$out" && pwd)  # as the caller meant it, before the cd below
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log=$out/suite.log; steps_out=$out/suite.out
: > "$log"; : > "$steps_out"
say() { echo "$*" | tee -a "$log" >&2; }
# Nothing here may reach for the network (there is none on the GPU machine): say so, and spare MLflow's telemetry.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
py=${PYTHON:-python3}

# The bundle brings Ray and MLflow (into /tmp/site), the model (/tmp/minilm-l6) and the task data (/tmp/data):
# unpack it when any of the three is missing here, whichever.
has_stack=0; "$py" -c 'import ray, mlflow' 2>/dev/null && has_stack=1
has_model=0; "$py" -c 'from trainables.models import resolve_model; resolve_model("minilm-l6")' 2>/dev/null && has_model=1
data=${PEFT_SWEEP_DATA_DIR:-}
if [ -z "$data" ] && [ -d ../shared/data ]; then data=$(cd ../shared/data && pwd); fi
if ! ((has_stack)) || { ! ((has_model)) && [ ! -d /tmp/minilm-l6 ]; } || { [ -z "$data" ] && [ ! -d /tmp/data ]; }; then
  if [ ! -f .devbundle/unpack.sh ]; then
    say "Ray/MLflow, the model or the task data is missing and there is no .devbundle/ to unpack" \
        "(build it with: bash benchmarks/devbundle.sh build)"
    exit 2
  fi
  say "### unpack .devbundle (at ${SECONDS}s)"
  bash benchmarks/devbundle.sh unpack >> "$log" 2>&1 || { say "unpacking .devbundle failed (see $log)"; exit 2; }
  say "unpacked at ${SECONDS}s"
fi
if ((has_stack)); then
  export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
else  # the bundle's Ray and MLflow first, the repo (Ray workers import trainables from it), then the image's own
  export PYTHONPATH=/tmp/site:$root${PYTHONPATH:+:$PYTHONPATH}
fi
# what the steps will import, said once at the start (a library of the image that the bundle's Ray or MLflow
# cannot work with shows here, not minutes later inside the packing step)
"$py" - >> "$log" 2>&1 <<'PY' || say "an import failed (above, in $log): the steps that need it will fail"
import importlib, sys
print("python", sys.version.split()[0])
failed = []
for name in ("torch", "transformers", "peft", "ray", "mlflow", "pydantic", "pandas", "pyarrow", "scipy"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # noqa: BLE001 - each library on its own line, whatever fails
        print(name, "FAILED:", type(exc).__name__, exc)
        failed.append(name)
sys.exit(1 if failed else 0)
PY
model=minilm-l6; ((has_model)) || model=/tmp/minilm-l6  # the bundle's copy
[ -n "$data" ] || { [ -d /tmp/data ] && data=/tmp/data; }
export PEFT_SWEEP_DATA_DIR=${data:?no task data: set PEFT_SWEEP_DATA_DIR}

tt=(benchmarks/trial_throughput.py --data-dir "$data" --tokenizer-from "$model")
# "LIMIT NAME COMMAND": on the GPU the limits (130 + 240 + 80 + 30 s) leave 60 s of the 540 s budget, of which a
# step's start keeps 30 (its kill's grace and suite_results.py after it): ~30 s for the unpack (~15 s), the checks
# above and suite_results.py after each step (a few seconds each), before optim is left out. Packing runs four
# sweeps (a Ray start, an MLflow store, workers that import torch, the end's export, analysis and report each),
# hence the most. Determinism (120 s) starts only where the steps before it ended early enough (or alone:
# --only determinism).
if ((smoke)); then
  steps=(
    "240 minilm   ${tt[*]} --model $model --smoke --methods full,sam,random,lora --profile"
    "300 packing  benchmarks/sweep_packing.py --smoke --fresh-workers --data-dir $data"
    "240 roberta  ${tt[*]} --model roberta-base-shape --smoke --methods full,sam,lora --cb-steps 0"
    "90  optim    benchmarks/optimizer_step.py --smoke"
    "180 determinism benchmarks/determinism.py --smoke --data-dir $data"
  )
else
  steps=(
    "130 minilm   ${tt[*]} --model $model --batch-size 32 --seq-len 128 --steps 50 --warmup 10 --methods full,sam,random,lora --cb-steps 300 --profile"
    "240 packing  benchmarks/sweep_packing.py --model $model --data-dir $data --fractions 1,0.25,0.125 --trials 8 --steps 100 --fresh-workers --fresh-trials 3"
    "80  roberta  ${tt[*]} --model roberta-base-shape --batch-size 32 --seq-len 128 --steps 30 --warmup 5 --methods full,sam,lora --cb-steps 0"
    "30  optim    benchmarks/optimizer_step.py --model $model --steps 100"
    "120 determinism benchmarks/determinism.py --model $model --data-dir $data --steps 60"
  )
fi
grace=10    # timeout's -k: a step that ignores SIGTERM is killed this much later
reserve=20  # suite_results.py after the step
results() { "$py" benchmarks/suite_results.py "$steps_out" "$out" --log "$log" --started "$started" \
              $( ((smoke)) && echo --smoke ) "$@"; }
for s in "${steps[@]}"; do
  read -r limit name cmd <<< "$s"
  if [ -n "$only" ] && [[ ,$only, != *,$name,* ]]; then continue; fi
  if ((SECONDS + limit + grace + reserve > budget)); then  # a later, shorter step may still fit
    stop="its limit of ${limit}s would end after the suite's budget of ${budget}s (at ${SECONDS}s)"
    printf '#skip\t%s\t%s\t%s\t%s\n' "$name" "$limit" "$py $cmd" "$stop" >> "$steps_out"
    say "### step $name: left out, $stop"
    continue
  fi
  printf '#start\t%s\t%s\t%s\n' "$name" "$limit" "$py $cmd" >> "$steps_out"
  say "### step $name (limit ${limit}s, at ${SECONDS}s): $py $cmd"
  t=$SECONDS
  # shellcheck disable=SC2086
  timeout -k "$grace" "$limit" "$py" $cmd >> "$steps_out" 2>> "$log"
  rc=$?
  printf '#end\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t))" >> "$steps_out"
  say "### step $name: rc $rc after $((SECONDS - t))s (at ${SECONDS}s)"
  results --print-step "$name"
done
results --final
