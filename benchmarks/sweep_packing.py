"""The same small sweep through Ray Tune at several GPU fractions per trial: wall time, trials/hour and
aggregate training samples/s, with the ratio to one GPU per trial, measured in the same run.

  python benchmarks/sweep_packing.py --fractions 1,0.5,0.25,0.125 --trials 8 --steps 300   # one GPU
  python benchmarks/sweep_packing.py --smoke                                                # CPU (CI)
  python benchmarks/sweep_packing.py --fresh-workers ...   # also: one GPU per trial, a fresh process per trial

--fresh-workers measures what reusing a worker process saves (resources.reuse_workers, the default): the
whole-GPU setting again with a new process per trial (imports, CUDA start and model code each time), and
prints the ratio of the two wall times.

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fractions", default="1,0.5,0.25,0.125")
    p.add_argument("--trials", type=int, default=8, help="trials per setting (seeds of SAM on CB)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", default="minilm-l6", help="alias or model folder")
    p.add_argument("--data-dir", default=os.environ.get("PEFT_SWEEP_DATA_DIR", "../shared/data"))
    p.add_argument("--fresh-workers", action="store_true", help="also the whole-GPU setting without worker reuse")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.fractions, args.trials, args.steps, args.batch_size = "1,0.5", 2, 4, 4
        from trial_throughput import model_folder

        args.model = model_folder("tiny", Path(tempfile.mkdtemp()))
    import ray
    import torch

    from orchestrator import sweep
    from orchestrator.spec import spec_from_dict

    gpus = torch.cuda.device_count() or 1
    ray.init(num_gpus=gpus, num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    settings = [(float(f), True) for f in args.fractions.split(",")]
    if args.fresh_workers:
        settings.append((max(f for f, _ in settings), False))
    with tempfile.TemporaryDirectory() as out:
        for fraction, reuse in settings:
            spec = spec_from_dict({
                "name": f"packing-{fraction}{'' if reuse else '-fresh'}", "model": args.model, "output_dir": out,
                "data": {"dir": args.data_dir},
                "grid": {"methods": ["sam"], "tasks": ["CB"], "seeds": list(range(args.trials))},
                "training": {"batch_size": args.batch_size, "max_steps": args.steps, "eval_every": args.steps,
                             "patience": 100, "checkpoint_every": 0},
                "methods": {"sam": {"burnin": 4}},
                "resources": {"gpu_per_trial": fraction, "cpu_per_trial": max(1, (os.cpu_count() or 2) // 8),
                              "reuse_workers": reuse}})
            t0 = time.perf_counter()
            sweep.run(spec)
            wall = time.perf_counter() - t0
            samples = args.trials * args.steps * args.batch_size
            row = {"gpu_per_trial": fraction, "reuse_workers": reuse, "trials": args.trials, "wall_s": wall,
                   "trials_per_hour": args.trials * 3600 / wall, "aggregate_samples_per_s": samples / wall,
                   "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (logical GPUs)"}
            rows.append(row)
    whole = max(r["gpu_per_trial"] for r in rows)
    base = next(r for r in rows if r["gpu_per_trial"] == whole and r["reuse_workers"])
    for r in rows:
        r["ratio_to_whole_gpu"] = r["aggregate_samples_per_s"] / base["aggregate_samples_per_s"]
        if not r["reuse_workers"]:  # how much longer the same sweep takes with a fresh process per trial
            r["fresh_vs_reused_wall"] = r["wall_s"] / base["wall_s"]
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
