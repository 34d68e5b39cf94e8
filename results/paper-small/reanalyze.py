"""An independent re-analysis of a trials file: recomputes Table 1's cells and the stability-performance Spearman ρ
with pandas and scipy alone, and compares them with what `peft-sweep analyze` wrote. Issue 20 is done when this
passes on the committed results/paper-small/trials.parquet.

Independent of the product: it imports nothing from this repository. What it shares with it is the protocol, written
out here: the trials of the current grid (``in_grid``) that FINISHED with a finite test score; the first group (the
smallest sparsity, methods without one included, the standard split before the perturbed ones; the first such
pair that holds trials); per (method, task) the mean and the std (ddof=1) of the test scores, rounded to 10
decimals, with their ranks within the task (performance: higher mean first; stability: smaller std first; ties
averaged); per method the AVG row (mean of its task means; mean of its task stds where every task has one); ρ over
the pooled (method, task) cells with a std, ranked again among those cells and scaled to (rank − 0.5)/k, k the
cells of that task. The within-task permutation p is drawn again here with another generator, so it is
compared within its Monte-Carlo error, not to the digit.

    python results/paper-small/reanalyze.py results/paper-small/trials.parquet results/paper-small/analysis
Exit 0: everything matches; 1: a difference (each printed); 2: bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

N_PERMUTATIONS = 9999


def first_group(trials: pd.DataFrame) -> tuple[pd.DataFrame, float | None, bool]:
    """The first group's trials, its sparsity (None: no method takes one) and whether it is the perturbed one."""
    if "in_grid" in trials:
        trials = trials[trials["in_grid"].fillna(True).astype(bool)]
    score = pd.to_numeric(trials["test_score"], errors="coerce").astype(float)
    done = trials.assign(test_score=score)[(trials["status"] == "FINISHED") & np.isfinite(score)]
    for p in sorted(done["sparsity"].dropna().unique()) or [None]:
        for perturbed in (False, True):
            part = done[(done["perturbation"].notna() == perturbed)
                        & (done["sparsity"].isna() | (done["sparsity"] == p) if p is not None else True)]
            if len(part):
                return part, p, perturbed
    raise SystemExit("reanalyze: no FINISHED trial with a test score")


def _round(x: float) -> float:
    return round(float(x), 10) + 0.0


def cells(done: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (method, task), part in done.groupby(["method", "task"]):
        x = part["test_score"].astype(float)
        rows.append({"method": method, "task": task, "n": len(x), "mean": _round(x.mean()),
                     "std": _round(x.std(ddof=1)) if len(x) > 1 else math.nan})
    table = pd.DataFrame(rows)
    table["perf_rank"] = table.groupby("task")["mean"].transform(lambda m: stats.rankdata(-m))
    table["stab_rank"] = table.groupby("task")["std"].transform(
        lambda s: pd.Series(stats.rankdata(s, nan_policy="omit"), index=s.index))
    return table


def averages(table: pd.DataFrame) -> pd.DataFrame:
    rows = [{"method": m, "task": "AVG", "n": int(part["n"].sum()), "mean": _round(part["mean"].mean()),
             "std": _round(part["std"].mean()) if part["std"].notna().all() else math.nan,
             "perf_rank": math.nan, "stab_rank": math.nan} for m, part in table.groupby("method")]
    return pd.DataFrame(rows)


def rho(table: pd.DataFrame) -> tuple[float, float, float, int]:
    """ρ, scipy's p, the within-task permutation p and the number of pairs."""
    pairs = table[table["std"].notna()].copy()
    # each task's ranks scaled to its number of cells, (rank - 0.5) / k: raw ranks of tasks with fewer cells sit low
    # on both axes and correlate by themselves
    pairs["perf"] = pairs.groupby("task")["mean"].transform(lambda m: (stats.rankdata(-m) - 0.5) / len(m))
    pairs["stab"] = pairs.groupby("task")["std"].transform(lambda s: (stats.rankdata(s) - 0.5) / len(s))
    res = stats.spearmanr(pairs["stab"], pairs["perf"])
    observed = abs(float(res.statistic))
    stab, perf, tasks = list(pairs["stab"]), list(pairs["perf"]), list(pairs["task"])
    by_task = {t: [i for i, u in enumerate(tasks) if u == t] for t in dict.fromkeys(tasks)}
    rng, hits = random.Random(12345), 0
    for _ in range(N_PERMUTATIONS):
        shuffled = stab[:]
        for idx in by_task.values():
            values = [stab[i] for i in idx]
            rng.shuffle(values)
            for i, v in zip(idx, values):
                shuffled[i] = v
        hits += abs(stats.spearmanr(shuffled, perf).statistic) >= observed - 1e-12
    return float(res.statistic), float(res.pvalue), (1 + hits) / (1 + N_PERMUTATIONS), len(pairs)


def compare(trials_path: Path, analysis_dir: Path) -> list[str]:
    """The differences between this re-analysis and the analysis folder; empty when everything matches."""
    trials = pd.read_parquet(trials_path)
    done, sparsity, perturbed = first_group(trials)
    ours = cells(done)
    theirs = pd.read_csv(analysis_dir / "table.csv")
    same = theirs["group_sparsity"].isna() if sparsity is None else theirs["group_sparsity"] == sparsity
    theirs = theirs[same & (theirs["group_perturbation"] == ("perturbed" if perturbed else "none"))]
    theirs = theirs.set_index(["method", "task"])
    table = pd.concat([ours, averages(ours)], ignore_index=True)
    problems = []
    if set(map(tuple, table[["method", "task"]].values)) != set(theirs.index):
        problems.append(f"rows differ: here {len(table)} (AVG included), table.csv {len(theirs)}")
    for row in table.itertuples():
        if (row.method, row.task) not in theirs.index:
            continue
        other = theirs.loc[(row.method, row.task)]
        for col in ("n", "mean", "std", "perf_rank", "stab_rank"):
            a, b = getattr(row, col), float(other[col])
            if not (math.isnan(a) and math.isnan(b)) and not math.isclose(a, b, rel_tol=0, abs_tol=1e-9):
                problems.append(f"{row.method}/{row.task} {col}: here {a!r}, table.csv {b!r}")
    summary = json.loads((analysis_dir / "summary.json").read_text())["spearman"]
    r, p, perm, n = rho(ours)
    print(f"re-analysis of the group p = {sparsity}, {'perturbed splits' if perturbed else 'standard split'}: "
          f"{len(ours)} cells, ρ = {r:.6f} over {n} pairs, scipy p = {p:.4g}, within-task permutation p = "
          f"{perm:.4g} ({N_PERMUTATIONS} shuffles)")
    if summary.get("n_pairs") != n:
        problems.append(f"pairs: here {n}, summary.json {summary.get('n_pairs')}")
    if summary.get("rho") is None or not math.isclose(r, summary["rho"], rel_tol=0, abs_tol=1e-9):
        problems.append(f"ρ: here {r!r}, summary.json {summary.get('rho')!r}")
    if summary.get("p_value") is None or not math.isclose(p, summary["p_value"], rel_tol=1e-6, abs_tol=1e-12):
        problems.append(f"scipy p: here {p!r}, summary.json {summary.get('p_value')!r}")
    theirs_perm = summary.get("permutation_p_value")
    error = 4 * math.sqrt(max(perm * (1 - perm), 1 / N_PERMUTATIONS) / N_PERMUTATIONS) + 2 / N_PERMUTATIONS
    if theirs_perm is None or abs(perm - theirs_perm) > error:
        problems.append(f"permutation p: here {perm:.4g}, summary.json {theirs_perm!r} (Monte-Carlo error "
                        f"allowed {error:.2g})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trials", type=Path, help="trials.parquet (peft-sweep export)")
    parser.add_argument("analysis", type=Path, help="the folder `peft-sweep analyze` wrote (table.csv, summary.json)")
    args = parser.parse_args(argv)
    for path in (args.trials, args.analysis / "table.csv", args.analysis / "summary.json"):
        if not path.is_file():
            print(f"reanalyze: no file {path}", file=sys.stderr)
            return 2
    problems = compare(args.trials, args.analysis)
    for line in problems:
        print(f"DIFFERS: {line}")
    print("matches the analysis" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
