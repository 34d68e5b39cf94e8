#!/usr/bin/env bash
# Issue 19's GPU measurements in one go (~8 min on one H100/H200): trial throughput against a plain PyTorch
# loop (MiniLM-L6 and a RoBERTa-base-shaped random-init model), the optimizer step alone, and trial packing
# through Ray Tune (and what a fresh process per trial costs against reused workers). Prints one JSON line per
# figure and writes OUT_DIR/<date>-<gpu or cpu>.json with the exact
# commands, torch/GPU info, every figure, the ratios the issue's goals name and torch.profiler tables.
#
# usage: bash benchmarks/gpu_suite.sh OUT_DIR [--smoke]
#   --smoke   CPU, tiny settings, about a minute: checks the suite end to end (CI)
# On a GPU machine without Ray or MLflow, bring the bundle along (bash benchmarks/devbundle.sh --help):
#   bash benchmarks/devbundle.sh build      # here, once: .devbundle/ (Ray, MiniLM-L6, task data, MLflow + SQLite store)
# the suite then unpacks it itself (bash benchmarks/devbundle.sh unpack: model to /tmp/minilm-l6, data to /tmp/data).
# Each step has its own time limit; a step that fails or runs out is recorded under "errors", the rest go on.
# The packing step drives a real sweep (orchestrator.sweep), which tracks in MLflow on SQLite: the bundle's MLflow
# part was checked on CPU in a venv without the MLflow stack (benchmarks/devbundle_check.sh, Python 3.11), not yet
# on the GPU machine.
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUT_DIR [--smoke]}
smoke=0
case ${2:-} in --smoke) smoke=1;; "") ;; *) echo "unknown option ${2}; valid: --smoke" >&2; exit 2;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if ! "$py" -c 'import ray, mlflow' 2>/dev/null; then
  if [ ! -f .devbundle/unpack.sh ]; then
    echo "Ray or MLflow is missing and there is no .devbundle/ to unpack (build it with: bash benchmarks/devbundle.sh build)" >&2
    exit 2
  fi
  bash benchmarks/devbundle.sh unpack >&2 && export PYTHONPATH=/tmp/site:$root
fi
export PYTHONPATH=${PYTHONPATH:-$root}
model=minilm-l6
if ! "$py" -c 'from trainables.models import resolve_model; resolve_model("minilm-l6")' 2>/dev/null; then
  model=/tmp/minilm-l6  # the bundle's copy
fi
data=${PEFT_SWEEP_DATA_DIR:-}
if [ -z "$data" ]; then for d in ../shared/data /tmp/data; do [ -d "$d" ] && data=$(cd "$d" && pwd) && break; done; fi
export PEFT_SWEEP_DATA_DIR=${data:?no task data: set PEFT_SWEEP_DATA_DIR}
logs=$(mktemp -d); trap 'rm -rf "$logs"' EXIT
mkdir -p "$out"

tt=(benchmarks/trial_throughput.py --data-dir "$data" --tokenizer-from "$model")
if ((smoke)); then
  steps=(
    "240 minilm   ${tt[*]} --model $model --smoke --methods full,sam,random,lora --profile"
    "240 roberta  ${tt[*]} --model roberta-base-shape --smoke --methods full,sam,lora --cb-steps 0"
    "90  optim    benchmarks/optimizer_step.py --smoke"
    "300 packing  benchmarks/sweep_packing.py --smoke --fresh-workers --data-dir $data"
  )
else
  steps=(
    "150 minilm   ${tt[*]} --model $model --batch-size 32 --seq-len 128 --steps 50 --warmup 10 --methods full,sam,random,lora --cb-steps 300 --profile"
    "150 roberta  ${tt[*]} --model roberta-base-shape --batch-size 32 --seq-len 128 --steps 30 --warmup 5 --methods full,sam,lora --cb-steps 0"
    "30  optim    benchmarks/optimizer_step.py --model $model --steps 100"
    "240 packing  benchmarks/sweep_packing.py --model $model --data-dir $data --fractions 1,0.25,0.125 --trials 8 --steps 100 --fresh-workers"
  )
fi
: > "$logs/commands"
for s in "${steps[@]}"; do
  read -r limit name cmd <<< "$s"
  echo "$name	$limit	$py $cmd" >> "$logs/commands"
  # shellcheck disable=SC2086
  timeout -k 10 "$limit" "$py" $cmd > "$logs/$name.out" 2> "$logs/$name.err"
  echo $? > "$logs/$name.rc"
  grep '^{' "$logs/$name.out" | "$py" -c 'import json,sys; [print(json.dumps({k: v for k, v in json.loads(l).items() if k != "profile"})) for l in sys.stdin]'
done
"$py" benchmarks/suite_results.py "$logs" "$out" $( ((smoke)) && echo --smoke )
