"""Gather gpu_suite.sh's step outputs into one results file: the exact commands, torch/GPU info, every figure,
the ratios issue 19's goals name, torch.profiler tables, and each step that failed, ran out of time, was cut off
or was left out for the suite's time budget.

  python benchmarks/suite_results.py OUT_DIR/suite.out OUT_DIR [--log OUT_DIR/suite.log] [--started ISO] [--smoke]
      [--print-step NAME | --final]                                  (gpu_suite.sh calls it after every step)

suite.out holds every step's stdout between "#start NAME LIMIT COMMAND" and "#end NAME RC SECONDS" lines (tab
separated; "#skip NAME LIMIT COMMAND REASON" for a step left out). A step with a start and no end was cut off (the
suite was killed): its rows so far are kept and it is listed under "errors". Run it again on a returned suite.out
to rebuild the results file after such a kill.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
from pathlib import Path

import torch

# the ratios the goals name, each with its goal (None: reported, no goal)
GOALS = {"minilm-l6.full_vs_plain": 0.9, "minilm-l6.sam_vs_full": 1.0, "minilm-l6.random_vs_full": 1.0,
         "minilm-l6.lora_vs_full": 1.0, "minilm-l6.sam_peak_mem_vs_full": 0.75,
         "minilm-l6.sam_peak_mem_incl_setup_vs_full": None,
         "roberta-base-shape.full_vs_plain": 0.9, "roberta-base-shape.sam_vs_full": 1.0,
         "roberta-base-shape.lora_vs_full": 1.0, "roberta-base-shape.sam_peak_mem_vs_full": 0.75,
         "roberta-base-shape.sam_peak_mem_incl_setup_vs_full": None,
         "packing.best_vs_one_trial_per_gpu": 4.0, "cb_trial.outside_training_share": 0.15,
         "optimizer.masked_vs_dense_adamw": None, "packing.fresh_vs_reused_per_trial": None,
         "packing.best_vs_one_trial_per_gpu_incl_sweep_overhead": None,
         "determinism.on_vs_off_train_s": None}
STEP_MODEL = {"minilm": "minilm-l6", "roberta": "roberta-base-shape"}


def ratio(a, b):
    return a / b if a is not None and b else None


def parse_steps(text: str) -> tuple[list[dict], dict[str, list[dict]], dict[str, list[str]]]:
    """(steps, JSON rows by step, lines that start with "{" but are not JSON, by step) from suite.out."""
    steps: list[dict] = []
    rows: dict[str, list[dict]] = {}
    bad: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(("#start\t", "#skip\t")):
            kind, name, limit, cmd, *reason = line.split("\t")
            step = {"step": name, "time_limit_s": int(limit), "command": cmd, "rc": None, "wall_s": None}
            if kind == "#skip":
                step["skipped"] = reason[0] if reason else "left out"
            steps.append(step)
            current = name if kind == "#start" else None
        elif line.startswith("#end\t"):
            _, name, rc, wall = line.split("\t")
            step = next(s for s in reversed(steps) if s["step"] == name)
            step["rc"], step["wall_s"] = int(rc), int(wall)
            current = None
        elif line.startswith("{") and current is not None:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a library's print, or a line cut off by a kill
                bad.setdefault(current, []).append(line[:300])
                continue
            if isinstance(row, dict):
                rows.setdefault(current, []).append(row)
            else:
                bad.setdefault(current, []).append(line[:300])
    return steps, rows, bad


def stderr_tail(log: Path | None, name: str, n: int = 2000) -> str:
    """The end of the step's section of suite.log (its stderr)."""
    if log is None or not log.exists():
        return ""
    sections = re.split(r"^### step ", log.read_text(errors="replace"), flags=re.M)
    mine = [s for s in sections if s.startswith(f"{name} (limit")]
    return mine[-1][-n:] if mine else ""


def collect(steps_out: Path, log: Path | None, smoke: bool, started: str | None = None) -> dict:
    steps, rows, bad = parse_steps(steps_out.read_text(errors="replace") if steps_out.exists() else "")
    figures, ratios, profiles, errors = {}, {}, {}, {}
    for step in steps:
        name = step["step"]
        if "skipped" in step:  # never started: no figures
            errors[name] = {"skipped": step["skipped"]}
            continue
        if step["rc"] is None:
            errors[name] = {"rc": None, "cut_off": True, "stderr_tail": stderr_tail(log, name)}
        elif step["rc"]:
            errors[name] = {"rc": step["rc"], "timed_out": step["rc"] in (124, 137),
                            "stderr_tail": stderr_tail(log, name)}
        if name in bad:
            errors.setdefault(name, {})["not_json"] = bad[name]
        out = [dict(r) for r in rows.get(name, [])]
        failed = {str(r.get("case", r.get("gpu_per_trial"))): r["error"] for r in out if "error" in r}
        if failed:  # a case (or packing setting) that failed while the step went on: its line holds the error
            errors.setdefault(name, {})["cases"] = failed
        if name in STEP_MODEL:
            key = STEP_MODEL[name]
            cases = {r["case"]: r for r in out if "case" in r and not r["case"].startswith("profile_")}
            for r in out:  # profile_<method>: a profiled step of its own, after the timed ones
                if "profile" in r:
                    profiles[f"{key}.{r['case'].removeprefix('profile_')}"] = r.pop("profile")
            figures[key] = cases
            plain, full = cases.get("plain_pytorch", {}), cases.get("ours_full", {})
            ratios[f"{key}.full_vs_plain"] = ratio(full.get("samples_per_s"), plain.get("samples_per_s"))
            for m in ("sam", "random", "lora"):
                if f"ours_{m}" in cases:
                    ratios[f"{key}.{m}_vs_full"] = ratio(cases[f"ours_{m}"].get("samples_per_s"),
                                                         full.get("samples_per_s"))
            sam = cases.get("ours_sam", {})  # peak memory: None on CPU
            ratios[f"{key}.sam_peak_mem_vs_full"] = ratio(sam.get("peak_mem_gib"), full.get("peak_mem_gib"))
            ratios[f"{key}.sam_peak_mem_incl_setup_vs_full"] = ratio(sam.get("peak_mem_incl_setup_gib"),
                                                                     full.get("peak_mem_incl_setup_gib"))
            if "cb_trial_overhead" in cases:
                ratios["cb_trial.outside_training_share"] = cases["cb_trial_overhead"]["outside_training_share"]
        elif name == "optim":
            figures["optimizer"] = out
            dense = next((r for r in out if str(r.get("case", "")).startswith("dense")), {})
            masked = next((r for r in out if r.get("case") == "masked_adamw"), {})
            ratios["optimizer.masked_vs_dense_adamw"] = ratio(masked.get("ms_per_step"), dense.get("ms_per_step"))
        elif name == "packing":
            figures["packing"] = out
            reused = [r for r in out if r.get("reuse_workers", True)]
            ratios["packing.best_vs_one_trial_per_gpu"] = max(
                (r["ratio_to_whole_gpu"] for r in reused if r.get("ratio_to_whole_gpu") is not None), default=None)
            ratios["packing.best_vs_one_trial_per_gpu_incl_sweep_overhead"] = max(
                (r["ratio_to_whole_gpu_incl_sweep_overhead"] for r in reused
                 if r.get("ratio_to_whole_gpu_incl_sweep_overhead") is not None), default=None)
            ratios["packing.fresh_vs_reused_per_trial"] = next(
                (r["fresh_vs_reused_per_trial"] for r in out if "fresh_vs_reused_per_trial" in r), None)
        elif name == "determinism":  # whether a seed reruns identically, per setting, and what "on" costs
            figures["determinism"] = out
            on, off = ({r["case"]: r for r in out}.get(f"deterministic_{s}", {}) for s in ("on", "off"))
            ratios["determinism.on_vs_off_train_s"] = ratio(sum(on.get("train_s") or []) or None,
                                                            sum(off.get("train_s") or []) or None)
    for k in GOALS:
        ratios.setdefault(k, None)
    cuda = torch.cuda.is_available()
    return {"date": started or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "smoke": smoke,
            "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "python": platform.python_version(),
            "host": platform.node(), "cpu_count": os.cpu_count(), "commands": steps,
            "ratios": ratios, "goals": {k: v for k, v in GOALS.items() if v is not None},
            "figures": figures, "profiles": profiles, "errors": errors}


def write(res: dict, out: Path) -> Path:
    """OUT/<date>-<gpu or cpu>[-smoke].json, replaced atomically (a kill never leaves half a file)."""
    name = re.sub(r"[^A-Za-z0-9.]+", "-", res["gpu"] or "cpu").strip("-").lower()
    path = out / f"{res['date'][:10]}-{name}{'-smoke' if res['smoke'] else ''}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps_out", type=Path, help="gpu_suite.sh's suite.out")
    p.add_argument("out", type=Path, help="folder for the results file")
    p.add_argument("--log", type=Path, help="gpu_suite.sh's suite.log (the stderr tail of a failed step)")
    p.add_argument("--started", help="when the suite started (ISO 8601): the results file's date and name")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--print-step", help="print this step's rows (without profiles) and, if it failed, its error")
    p.add_argument("--final", action="store_true", help="print every ratio with its goal")
    args = p.parse_args()
    res = collect(args.steps_out, args.log, args.smoke, args.started)
    path = write(res, args.out)
    if args.print_step:
        _, rows, _ = parse_steps(args.steps_out.read_text(errors="replace"))
        for r in rows.get(args.print_step, []):
            print(json.dumps({k: v for k, v in r.items() if k != "profile"}))
        if args.print_step in res["errors"]:
            print(json.dumps({"step": args.print_step, "error": res["errors"][args.print_step]}), file=sys.stderr)
    if args.final:
        for k, v in res["ratios"].items():
            print(json.dumps({"ratio": k, "value": v, "goal": GOALS.get(k)}))
    print(json.dumps({"results_file": str(path), "steps": [s["step"] for s in res["commands"]],
                      "errors": sorted(res["errors"])}), flush=True)


if __name__ == "__main__":
    main()
