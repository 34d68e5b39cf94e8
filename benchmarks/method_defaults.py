"""Do the methods' default settings train? Each method with its defaults on one task and seed, against the
task's majority-class score on the same split. Prints one JSON line per method and a Markdown table.

  python benchmarks/method_defaults.py --task CB --max-steps 150            # the README's table (CPU: ~30 min)
  python benchmarks/method_defaults.py --methods sam full --max-steps 60    # a subset

Not a test: it takes minutes per method on a CPU. Data from $PEFT_SWEEP_DATA_DIR (or --data-dir).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables import TrialConfig, run_trial  # noqa: E402
from trainables.methods import METHODS, get_method  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="CB")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.005)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args(argv)
    rows = []
    for method in args.methods:
        cfg = TrialConfig(task=args.task, method=method, seed=args.seed, model=args.model,
                          sparsity=args.sparsity if get_method(method).uses_sparsity else None,
                          data={"dir": args.data_dir}, training={"max_steps": args.max_steps})
        t0 = time.perf_counter()
        r = run_trial(cfg)
        row = {"method": method, "task": args.task, "seed": args.seed, "max_steps": args.max_steps,
               "lr": cfg.effective_lr(), "test_score": round(r["test_score"], 4),
               "majority_test_score": round(r["majority_test_score"], 4), "dev_score": round(r["dev_score"], 4),
               "best_step": r["best_step"], "trainable_params": r["trainable_params"],
               "beats_majority": r["test_score"] > r["majority_test_score"], "wall_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    print("\n| method | lr | test | majority | beats |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['lr']:g} | {r['test_score']:.3f} | {r['majority_test_score']:.3f} | "
              f"{'yes' if r['beats_majority'] else 'NO'} |")
    return 0 if all(r["beats_majority"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
