"""The same small sweep through Ray Tune at several GPU fractions per trial: wall time, trials/hour and
aggregate training samples/s, with the ratio to one GPU per trial, measured in the same run.

  python benchmarks/sweep_packing.py --fractions 1,0.5,0.25,0.125 --trials 8 --steps 300   # one GPU
  python benchmarks/sweep_packing.py --smoke                                                # CPU (CI)
  python benchmarks/sweep_packing.py --fresh-workers ...   # also: one GPU per trial, a fresh process per trial

Each setting's JSON line is printed as soon as its sweep ends (the whole-GPU setting runs first, so each line
carries its ratio). The aggregate samples/s and the ratios come from the trials' own timing: the span from the
first trial's start to the last trial's end (a trial's end is when the driver wrote its FINISHED record, its
start that minus the trial's wall_s), so what every sweep pays once (preflight, MLflow store, Ray Tune start,
export, analysis, report) is left out; it is printed apart as sweep_overhead_s, and the ratio with it included
as ratio_to_whole_gpu_incl_sweep_overhead.

--fresh-workers measures what reusing a worker process saves (resources.reuse_workers, the default): the
whole-GPU setting again with a new process per trial (imports, CUDA start and model code each time), with
--fresh-trials trials (fewer than --trials: it is the slowest setting), and prints the ratio of the time per
trial of the two (fresh_vs_reused_per_trial).

On CPU the "GPUs" are logical (ray.init(num_gpus=1)): the smoke run checks the script, not a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def trial_span(sweep_dir: Path, batch_size: int) -> dict:
    """The finished trials' own timing, from the sweep's local records: the span from the first trial's start to
    the last one's end, the samples they trained in it, and each trial's wall time."""
    from orchestrator import records

    recs = records.all_records(sweep_dir)
    # a trial's end as its worker saw it: the driver records the ends of trials that end together one after the
    # other (record, MLflow, the final checkpoint's mask and delta), which stretched a packed setting's span
    done = [(r["result"].get("trial_ended_at") or records.written_at(sweep_dir, k), r["result"])
            for k, r in recs.items() if r.get("status") == "FINISHED"]
    if not done:
        raise RuntimeError(f"no FINISHED trial in {sweep_dir / 'records'}: {sorted(r.get('status') for r in recs.values())}")
    span = max(end for end, _ in done) - min(end - r["wall_s"] for end, r in done)
    return {"finished": len(done), "trials_span_s": span, "samples": sum(r["steps"] for _, r in done) * batch_size,
            "trial_wall_s": sorted(round(r["wall_s"], 2) for _, r in done)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fractions", default="1,0.5,0.25,0.125")
    p.add_argument("--trials", type=int, default=8, help="trials per setting (seeds of SAM on CB)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", default="minilm-l6", help="alias or model folder")
    p.add_argument("--data-dir", default=os.environ.get("PEFT_SWEEP_DATA_DIR", "../shared/data"))
    p.add_argument("--fresh-workers", action="store_true", help="also the whole-GPU setting without worker reuse")
    p.add_argument("--fresh-trials", type=int, default=3, help="trials of the fresh-worker setting")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.fractions, args.trials, args.fresh_trials, args.steps, args.batch_size = "1,0.5", 2, 2, 4, 4
        from trial_throughput import model_folder

        args.model = model_folder("tiny", Path(tempfile.mkdtemp()))
    import ray
    import torch
    from trial_throughput import guarded

    from orchestrator import sweep
    from orchestrator.spec import spec_from_dict

    gpus = torch.cuda.device_count() or 1
    ray.init(num_gpus=gpus, num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    fractions = sorted({float(f) for f in args.fractions.split(",")}, reverse=True)  # the whole GPU first
    settings = [(f, True, args.trials) for f in fractions]
    if args.fresh_workers:
        settings.append((fractions[0], False, args.fresh_trials))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (logical GPUs)"
    base, errors = None, []
    with tempfile.TemporaryDirectory() as out:
        for fraction, reuse, trials in settings:
            spec = spec_from_dict({
                "name": f"packing-{fraction}{'' if reuse else '-fresh'}", "model": args.model, "output_dir": out,
                "data": {"dir": args.data_dir},
                "grid": {"methods": ["sam"], "tasks": ["CB"], "seeds": list(range(trials))},
                "training": {"batch_size": args.batch_size, "max_steps": args.steps, "eval_every": args.steps,
                             "patience": 100, "checkpoint_every": 0},
                "methods": {"sam": {"burnin": 4}},
                "resources": {"gpu_per_trial": fraction, "cpu_per_trial": max(1, (os.cpu_count() or 2) // 8),
                              "reuse_workers": reuse}})
            t0 = time.perf_counter()

            def measure(spec=spec, t0=t0):
                failed = sweep.run(spec)
                return failed, time.perf_counter() - t0, trial_span(spec.sweep_dir, args.batch_size)

            # one setting's failure must not lose the next settings' lines
            got = guarded({"gpu_per_trial": fraction, "reuse_workers": reuse, "trials": trials, "device": device},
                          measure, errors)
            if got is None:
                continue
            failed, wall, t = got
            row = {"gpu_per_trial": fraction, "reuse_workers": reuse, "trials": trials, "failed": failed, **t,
                   "wall_s": wall, "sweep_overhead_s": wall - t["trials_span_s"],
                   "trials_per_hour": t["finished"] * 3600 / t["trials_span_s"],
                   "aggregate_samples_per_s": t["samples"] / t["trials_span_s"],
                   "aggregate_samples_per_s_incl_sweep_overhead": t["samples"] / wall, "device": device}
            if base is None and fraction == fractions[0] and reuse:  # the ratios' base: the whole GPU, reused
                base = row
            if base is None:  # the whole-GPU setting failed: this one's figures go without ratios
                print(json.dumps(row), flush=True)
                continue
            if reuse:
                row["ratio_to_whole_gpu"] = row["aggregate_samples_per_s"] / base["aggregate_samples_per_s"]
                row["ratio_to_whole_gpu_incl_sweep_overhead"] = (row["aggregate_samples_per_s_incl_sweep_overhead"]
                                                                 / base["aggregate_samples_per_s_incl_sweep_overhead"])
            else:  # how much longer a trial takes with a fresh process each (one trial at a time, both)
                row["fresh_vs_reused_per_trial"] = ((t["trials_span_s"] / t["finished"])
                                                    / (base["trials_span_s"] / base["finished"]))
            print(json.dumps(row), flush=True)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
