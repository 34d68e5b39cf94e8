"""The paper's analysis of a trials table: mean ± std per (method, task) with an AVG column, performance
and stability ranks per task, Spearman's ρ between them over pooled (method, task) pairs, the sparsity
sweep, and paired tests between methods across seeds.

Groups: trials that differ in sparsity or in perturbation mode are analysed apart. A method without a
sparsity (full, mixout, bitfit) joins every sparsity group. Perturbation mode is "none" (the standard
split) or "perturbed" (all perturbation splits k pooled: the spread then covers data and seed)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

NEEDED = ["method", "task", "seed", "sparsity", "perturbation", "status", "test_score"]
PAIRED_TEST = ("paired t-test over matching seeds (scipy.stats.ttest_rel): trials with the same seed share the "
               "head initialisation and batch order, so differences are paired; with 5-10 seeds the t-test has "
               "far more power than Wilcoxon's signed-rank test, whose two-sided p cannot go below 2/2^n. "
               "Wilcoxon's p is given beside it for readers who distrust normality.")


def groups(df: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    df = df.assign(perturbed=df["perturbation"].notna())
    sparsities = sorted(df["sparsity"].dropna().unique()) or [None]
    out = []
    for p, perturbed in itertools.product(sparsities, sorted(df["perturbed"].unique())):
        part = df[(df["perturbed"] == perturbed) & (df["sparsity"].isna() | (df["sparsity"] == p if p is not None
                                                                             else True))]
        if len(part):
            label = {"sparsity": None if p is None else float(p), "perturbation": "perturbed" if perturbed else "none"}
            if perturbed:
                label["splits"] = sorted(int(k) for k in part["perturbation"].dropna().unique())
            out.append((label, part))
    return out


def method_task_table(df: pd.DataFrame) -> pd.DataFrame:
    """n, mean, std (ddof=1), performance rank and stability rank per (method, task); AVG rows added."""
    t = (df.groupby(["method", "task"])["test_score"].agg(n="count", mean="mean", std=lambda s: s.std(ddof=1))
         .reset_index())
    t["perf_rank"] = t.groupby("task")["mean"].rank(ascending=False, method="average")
    t["stab_rank"] = t.groupby("task")["std"].rank(ascending=True, method="average")
    avg = t.groupby("method").agg(n=("n", "sum"), mean=("mean", "mean"), std=("std", "mean")).reset_index()
    avg["task"] = "AVG"  # the paper's AVG column: mean of the task means and of the task stds
    return pd.concat([t, avg], ignore_index=True)[["method", "task", "n", "mean", "std", "perf_rank", "stab_rank"]]


def spearman(table: pd.DataFrame) -> dict[str, Any]:
    pairs = table[(table["task"] != "AVG") & table["std"].notna()]
    if len(pairs) < 3:
        return {"rho": None, "p_value": None, "n_pairs": int(len(pairs))}
    res = stats.spearmanr(pairs["stab_rank"], pairs["perf_rank"])
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n_pairs": int(len(pairs))}


def best_three(table: pd.DataFrame) -> dict[str, list[str]]:
    out = {}
    for task, part in table.groupby("task", sort=False):
        out[task] = part.sort_values(["mean", "method"], ascending=[False, True])["method"].head(3).tolist()
    return out


def paired_tests(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for task, part in df.groupby("task"):
        wide = part.pivot_table(index=["seed", part["perturbation"].fillna(-1)], columns="method",
                                values="test_score")
        for a, b in itertools.permutations(wide.columns, 2):
            both = wide[[a, b]].dropna()
            if len(both) < 2 or a > b:
                continue
            diff = both[a] - both[b]
            t = stats.ttest_rel(both[a], both[b]) if diff.std(ddof=1) > 0 else None
            w = stats.wilcoxon(both[a], both[b]) if (diff != 0).sum() > 0 else None
            rows.append({"task": task, "method_a": a, "method_b": b, "n": len(both), "mean_diff": float(diff.mean()),
                         "t_p_value": None if t is None else float(t.pvalue),
                         "wilcoxon_p_value": None if w is None else float(w.pvalue)})
    return pd.DataFrame(rows, columns=["task", "method_a", "method_b", "n", "mean_diff", "t_p_value",
                                       "wilcoxon_p_value"])


def sparsity_sweep(df: pd.DataFrame) -> pd.DataFrame:
    s = df[df["sparsity"].notna()]
    cols = [c for c in ("test_score", "train_score") if c in s]
    out = s.groupby(["method", "task", "sparsity"])[cols].agg(["mean", lambda x: x.std(ddof=1), "count"])
    out.columns = [f"{c}_{'std' if f == '<lambda_0>' else f}" for c, f in out.columns]
    return out.reset_index()


def analyze(trials: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame, pd.DataFrame]:
    missing = [c for c in NEEDED if c not in trials.columns]
    if missing:
        raise ValueError(f"trials table lacks column(s) {missing}; needed: {NEEDED}")
    df = trials[trials["status"] == "FINISHED"].copy()
    if df.empty:
        raise ValueError("no FINISHED trials to analyse")
    tables, summary_groups, tests = [], [], []
    for label, part in groups(df):
        t = method_task_table(part)
        for k, v in label.items():
            t[f"group_{k}"] = json.dumps(v) if isinstance(v, list) else v
        tables.append(t)
        pt = paired_tests(part)
        pt["group_sparsity"], pt["group_perturbation"] = label["sparsity"], label["perturbation"]
        tests.append(pt)
        summary_groups.append({**label, "spearman": spearman(t), "best": best_three(t[t["task"] != "AVG"]),
                               "n_trials": int(len(part))})
    table = pd.concat(tables, ignore_index=True)
    main = summary_groups[0]
    summary = {"spearman": main["spearman"], "best": main["best"], "group": {k: main[k] for k in main
                                                                            if k not in ("spearman", "best")},
               "groups": summary_groups, "n_finished": int(len(df)), "n_trials": int(len(trials)),
               "paired_test": PAIRED_TEST,
               "units": "ranks within each task (1 = best mean / smallest std, ties averaged); ρ over the pooled "
                        "(method, task) pairs of all tasks, AVG excluded"}
    return table, summary, sparsity_sweep(df), pd.concat(tests, ignore_index=True)


def analyze_file(trials_path: str | Path, out: str | Path) -> list[Path]:
    trials = pd.read_parquet(trials_path)
    table, summary, sweep, tests = analyze(trials)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "table.csv", out / "table.parquet", out / "summary.json", out / "sparsity.csv",
             out / "paired_tests.csv"]
    table.to_csv(paths[0], index=False)
    table.to_parquet(paths[1], index=False)
    paths[2].write_text(json.dumps(summary, indent=2))
    sweep.to_csv(paths[3], index=False)
    tests.to_csv(paths[4], index=False)
    return paths
