"""Gather gpu_suite.sh's step outputs into one results file: the exact commands, torch/GPU info, every figure,
the ratios issue 19's goals name, torch.profiler tables, and each step that failed or ran out of time.

  python benchmarks/suite_results.py LOGS_DIR OUT_DIR [--smoke]     (gpu_suite.sh calls it)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
from pathlib import Path

import torch

# the ratios the goals name, each with its goal (None: reported, no goal)
GOALS = {"minilm-l6.full_vs_plain": 0.9, "minilm-l6.sam_vs_full": 1.0, "minilm-l6.random_vs_full": 1.0,
         "minilm-l6.lora_vs_full": 1.0, "minilm-l6.sam_peak_mem_vs_full": 0.75,
         "roberta-base-shape.full_vs_plain": 0.9, "roberta-base-shape.sam_vs_full": 1.0,
         "roberta-base-shape.lora_vs_full": 1.0, "roberta-base-shape.sam_peak_mem_vs_full": 0.75,
         "packing.best_vs_one_trial_per_gpu": 4.0, "cb_trial.outside_training_share": 0.15,
         "optimizer.masked_vs_dense_adamw": None, "packing.fresh_vs_reused_workers_wall": None}
STEP_MODEL = {"minilm": "minilm-l6", "roberta": "roberta-base-shape"}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")] if path.exists() else []


def ratio(a, b):
    return a / b if a is not None and b else None


def collect(logs: Path, smoke: bool) -> dict:
    commands, figures, ratios, profiles, errors = [], {}, {}, {}, {}
    for line in (logs / "commands").read_text().splitlines():
        name, limit, cmd = line.split("\t")
        commands.append({"step": name, "time_limit_s": int(limit), "command": cmd})
        rc = int((logs / f"{name}.rc").read_text())
        if rc:
            tail = (logs / f"{name}.err").read_text()[-2000:] if (logs / f"{name}.err").exists() else ""
            errors[name] = {"rc": rc, "timed_out": rc == 124, "stderr_tail": tail}
        out = rows(logs / f"{name}.out")
        if name in STEP_MODEL:
            key = STEP_MODEL[name]
            cases = {r["case"]: r for r in out}
            for case, r in cases.items():
                if "profile" in r:
                    profiles[f"{key}.{case.removeprefix('ours_')}"] = r.pop("profile")
            figures[key] = cases
            plain, full = cases.get("plain_pytorch", {}), cases.get("ours_full", {})
            ratios[f"{key}.full_vs_plain"] = ratio(full.get("samples_per_s"), plain.get("samples_per_s"))
            for m in ("sam", "random", "lora"):
                if f"ours_{m}" in cases:
                    ratios[f"{key}.{m}_vs_full"] = ratio(cases[f"ours_{m}"]["samples_per_s"], full.get("samples_per_s"))
            ratios[f"{key}.sam_peak_mem_vs_full"] = ratio(cases.get("ours_sam", {}).get("peak_mem_gib"),
                                                          full.get("peak_mem_gib"))  # None on CPU
            if "cb_trial_overhead" in cases:
                ratios["cb_trial.outside_training_share"] = cases["cb_trial_overhead"]["outside_training_share"]
        elif name == "optim":
            figures["optimizer"] = out
            dense = next((r for r in out if r["case"].startswith("dense")), {})
            masked = next((r for r in out if r["case"] == "masked_adamw"), {})
            ratios["optimizer.masked_vs_dense_adamw"] = ratio(masked.get("ms_per_step"), dense.get("ms_per_step"))
        elif name == "packing":
            figures["packing"] = out
            ratios["packing.best_vs_one_trial_per_gpu"] = max((r["ratio_to_whole_gpu"] for r in out
                                                               if r.get("reuse_workers", True)), default=None)
            ratios["packing.fresh_vs_reused_workers_wall"] = next(
                (r["fresh_vs_reused_wall"] for r in out if "fresh_vs_reused_wall" in r), None)
    for k in GOALS:
        ratios.setdefault(k, None)
    cuda = torch.cuda.is_available()
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "smoke": smoke,
            "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "python": platform.python_version(),
            "host": platform.node(), "cpu_count": __import__("os").cpu_count(), "commands": commands,
            "ratios": ratios, "goals": {k: v for k, v in GOALS.items() if v is not None},
            "figures": figures, "profiles": profiles, "errors": errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    res = collect(args.logs, args.smoke)
    for k, v in res["ratios"].items():
        print(json.dumps({"ratio": k, "value": v, "goal": GOALS.get(k)}))
    name = re.sub(r"[^A-Za-z0-9.]+", "-", res["gpu"] or "cpu").strip("-").lower()
    path = args.out / f"{res['date'][:10]}-{name}{'-smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({"results_file": str(path), "errors": sorted(res["errors"])}))


if __name__ == "__main__":
    main()
