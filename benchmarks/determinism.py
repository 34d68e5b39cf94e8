"""Does one seed give the same trial twice on this device, with and without ``training.deterministic``?

Runs one real CB trial (SAM at p = 0.005: its mask is a top-k over burn-in gradients, where the last bits of a
sum can swap entries) twice per setting, each run in a process of its own (cuBLAS reads its workspace setting
once per process), and prints one JSON line per setting: whether the two runs gave the same test score, mask and
trained weights, how many mask entries and weights differ, and each run's wall time (what the setting costs).
On CPU both settings should give identical runs; on a GPU the off setting may not.

  python benchmarks/determinism.py --model minilm-l6 --data-dir ../shared/data --steps 60
  python benchmarks/determinism.py --smoke --data-dir ../shared/data     # CPU, the tiny model (CI)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.trial_throughput import model_folder  # noqa: E402


def one_run(model: str, data_dir: str, steps: int, deterministic: bool, out: Path) -> None:
    """In its own process: train the trial, save its mask and weights to ``out`` (safetensors) and print its
    result's scores and times."""
    from safetensors.torch import save_file

    from trainables import TrialConfig
    from trainables.loop import Trainer

    cfg = TrialConfig(task="CB", method="sam", model=model, sparsity=0.005, seed=0, data={"dir": data_dir},
                      method_params={"burnin": max(2, steps // 10)},
                      training={"max_steps": steps, "eval_every": max(1, steps // 3), "patience": 100,
                                "deterministic": deterministic})
    t = time.perf_counter()
    tr = Trainer(cfg)
    result = tr.run()
    tensors = {f"mask.{n}": idx.cpu().contiguous() for n, idx in (tr.method.mask or {}).items()}
    tensors.update({f"weight.{n}": p.detach().float().cpu().contiguous() for n, p in tr.model.named_parameters()})
    save_file(tensors, str(out))
    print(json.dumps({"test_score": result["test_score"], "deterministic": result["deterministic"],
                      "device_name": result["device_name"], "wall_s": round(time.perf_counter() - t, 3),
                      "train_s": result.get("train_s")}), flush=True)


def compare(a: Path, b: Path) -> dict:
    """How two runs' masks and weights differ."""
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    masks = [n for n in x if n.startswith("mask.")]
    mask_diff = sum(len(set(x[n].tolist()) ^ set(y.get(n, torch.empty(0)).tolist())) for n in masks)
    weights = [n for n in x if n.startswith("weight.")]
    differ = sum(int((x[n] != y[n]).sum()) for n in weights)
    max_abs = max((float((x[n] - y[n]).abs().max()) for n in weights), default=0.0)
    return {"mask_entries": sum(x[n].numel() for n in masks), "mask_entries_differing": mask_diff,
            "weights_differing": differ, "max_abs_weight_diff": max_abs}


def setting(args, model: str, deterministic: bool, tmp: Path) -> dict:
    runs = []
    for i in range(2):
        out = tmp / f"{'on' if deterministic else 'off'}-{i}.safetensors"
        cmd = [sys.executable, __file__, "--one", str(out), "--model", model, "--data-dir", args.data_dir,
               "--steps", str(args.steps)] + (["--deterministic"] if deterministic else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode:
            raise RuntimeError(f"run {i} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    diff = compare(tmp / f"{'on' if deterministic else 'off'}-0.safetensors",
                   tmp / f"{'on' if deterministic else 'off'}-1.safetensors")
    return {"case": f"deterministic_{'on' if deterministic else 'off'}", "device_name": runs[0]["device_name"],
            "same_test_score": runs[0]["test_score"] == runs[1]["test_score"],
            "test_scores": [r["test_score"] for r in runs], **diff,
            "identical": diff["mask_entries_differing"] == 0 and diff["weights_differing"] == 0,
            "trials_said_deterministic": [r["deterministic"] for r in runs],  # the setting reached each run
            "wall_s": [r["wall_s"] for r in runs], "train_s": [r["train_s"] for r in runs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6", help="a model name or folder, or 'tiny' (random init)")
    p.add_argument("--data-dir", required=True, help="the task files (../shared/data)")
    p.add_argument("--steps", type=int, default=60, help="training steps of each run")
    p.add_argument("--timeout", type=float, default=120, help="seconds one run may take")
    p.add_argument("--smoke", action="store_true", help="the tiny model, 8 steps (CPU, CI)")
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child run: save to this file
    p.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one_run(args.model, args.data_dir, args.steps, args.deterministic, args.one)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.smoke:
            args.model, args.steps = "tiny", 8
        model = model_folder(args.model, tmp)
        failed = []
        for deterministic in (False, True):
            try:
                print(json.dumps(setting(args, model, deterministic, tmp)), flush=True)
            except Exception as exc:  # noqa: BLE001 - one setting's failure must not lose the other's figures
                failed.append(deterministic)
                print(json.dumps({"case": f"deterministic_{'on' if deterministic else 'off'}",
                                  "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
