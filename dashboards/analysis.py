"""The analysis of a trials table, pure (DataFrames in, DataFrames and dicts out): the paper's statistics and the
ones a reviewer asks for beyond it.

The paper's: mean ± std per (method, task) with an AVG column, performance and stability ranks per task,
Spearman's ρ between them over pooled (method, task) pairs, the sparsity sweep, paired tests across seeds.
Beyond it: Friedman's test over tasks as blocks with Nemenyi's critical difference (Demšar, JMLR 2006;
scikit-posthocs), Holm-corrected paired tests with wins/ties/losses per pair, bootstrap intervals of the mean and
chi-square intervals of the std, a permutation p-value for ρ that permutes within tasks, and how the stability
ranking settles with more seeds.

It lives in ``dashboards`` so that the report and ``peft-sweep analyze`` (``orchestrator.analysis``, which only
reads and writes files) share it without ``dashboards`` importing ``orchestrator``.

Groups: trials that differ in sparsity or in perturbation mode are analysed apart. A method without a
sparsity (full, mixout, bitfit) joins every sparsity group. Perturbation mode is "none" (the standard
split) or "perturbed" (all perturbation splits k pooled: the spread then covers data and seed)."""
from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats

ALPHA = 0.05
# paired tests need this many replicates: over 2, a t-test's variance is one difference's, and scores that move in
# steps (CB's 56 test examples) gave two near-equal differences a p of 0.0004 and a "significant" lead
MIN_PAIRED = 3
N_BOOTSTRAP = 9999
N_PERMUTATIONS = 9999
MAX_SEED_SUBSETS = 200
NEEDED = ["method", "task", "seed", "sparsity", "perturbation", "status", "test_score"]
UNSCORED = "FINISHED, no test score"  # the status ``mark_unscored`` gives a FINISHED trial whose score is missing
PAIRED_TEST = ("paired t-test over matching seeds (scipy.stats.ttest_rel): trials with the same seed share the "
               "head initialisation and batch order, so differences are paired; with 5-10 seeds the t-test has "
               "far more power than Wilcoxon's signed-rank test, whose two-sided p cannot go below 2/2^n. "
               "Wilcoxon's p is given beside it for readers who distrust normality. Holm's correction "
               "is applied per task over all method pairs of that task, for each test "
               f"separately; a pair 'wins' a task when its Holm-corrected t-test p < {ALPHA} and its mean "
               "difference is positive.")


@dataclass
class Analysis:
    """Everything ``analyze`` computes; each frame carries group_sparsity / group_perturbation columns."""
    table: pd.DataFrame  # per (method, task) and AVG: n, mean, std, intervals, ranks
    summary: dict[str, Any]  # JSON-ready: Spearman, Friedman, Nemenyi, Holm summary, seeds-enough, per group
    sparsity: pd.DataFrame  # mean/std/count per (method, task, sparsity)
    tests: pd.DataFrame  # paired tests per task and method pair, raw and Holm-corrected p
    pairs: pd.DataFrame  # wins/ties/losses per method pair across tasks at the corrected level
    seeds: pd.DataFrame  # stability rank of each method vs the number of seeds used


def groups(df: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    sparsities = sorted(df["sparsity"].dropna().unique()) or [None]
    out = []
    for p, perturbed in itertools.product(sparsities, sorted(df["perturbation"].notna().unique())):
        label = {"sparsity": None if p is None else float(p), "perturbation": "perturbed" if perturbed else "none"}
        part = trials_in(df, label)
        if len(part):
            if perturbed:
                label["splits"] = sorted(int(k) for k in part["perturbation"].dropna().unique())
            out.append((label, part))
    return out


def current(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials of the sweep's current grid. The export marks ``in_grid`` False the trials a fixed or dropped
    row, or a ``run --force`` with other settings, left behind: they stay in the records and MLflow but are no
    results of the spec. A table without the column (an older export, one's own) is all current."""
    if "in_grid" not in trials:
        return trials
    return trials[trials["in_grid"].fillna(True).astype(bool)]


def scored(trials: pd.DataFrame) -> pd.DataFrame:
    """The FINISHED trials with a test score. A FINISHED row without one (its result could not be read back:
    a store moved, an artifact lost) is no score of 0 or of NaN: it would make its cell "nan ± nan" and leave its
    method's AVG over the other tasks. ``unscored`` lists those rows."""
    score = pd.to_numeric(trials["test_score"], errors="coerce").astype(float)  # None in an object column: NaN
    return trials.assign(test_score=score)[(trials["status"] == "FINISHED") & np.isfinite(score)]


def mark_unscored(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials with each FINISHED one that has no test score given the status UNSCORED, for counts of what
    became of them beside the results (a table of statuses alone, with no scores, is returned as it is)."""
    if "test_score" not in trials:
        return trials
    lacking = (trials["status"] == "FINISHED") & ~trials.index.isin(scored(trials).index)
    return trials.assign(status=trials["status"].mask(lacking, UNSCORED))


def unscored(trials: pd.DataFrame) -> list[str]:
    """The FINISHED trials with no test score, by trial key (method/task/seed where the table has no keys)."""
    finished = trials[trials["status"] == "FINISHED"]
    rows = finished.loc[finished.index.difference(scored(trials).index)]
    if "trial_key" in rows:
        return [str(k) for k in rows["trial_key"]]
    return [f"{r.method}/{r.task}/seed {r.seed}" for r in rows.itertuples()]


def trials_in(trials: pd.DataFrame, label: dict[str, Any]) -> pd.DataFrame:
    """The current trials of the group ``label`` names; a method without a sparsity belongs to every sparsity
    group."""
    trials = current(trials)
    sparsity = trials["sparsity"].isna() | (trials["sparsity"] == label["sparsity"] if label["sparsity"] is not None
                                            else True)
    return trials[sparsity & (trials["perturbation"].notna() == (label["perturbation"] == "perturbed"))]


def rows_of(frame: pd.DataFrame, label: dict[str, Any]) -> pd.DataFrame:
    """The rows of an analysis frame (table, tests, pairs, seeds) that belong to the group ``label`` names."""
    sparsity = frame["group_sparsity"]
    same = sparsity.isna() if label.get("sparsity") is None else sparsity == label["sparsity"]
    return frame[same & (frame["group_perturbation"] == label["perturbation"])]


def settled(x):
    """``x`` rounded to 10 decimals, for what ranks and ties are decided on. Float sums in another order made equal
    means differ in the last bit (0.6 + 0.7 + 0.8 against 0.8 + 0.6 + 0.7) and a constant cell's std 3e-17, not
    0: ranks 1 / 2.5 / 2.5 for three methods with the same scores, a "leader" of two equal averages. Real
    differences of scores (fractions of a test set) are many orders above 1e-10."""
    return np.round(x, 10) + 0.0  # + 0.0: no "-0.0"


def bootstrap_ci(values: np.ndarray, statistic=np.mean) -> tuple[float | None, float | None]:
    """95% percentile-bootstrap interval over seeds (scipy.stats.bootstrap, seeded, so reruns agree).

    Percentile rather than scipy's default BCa: BCa's jackknife acceleration is unstable with 3-10 points and is
    NaN when resamples tie. With so few seeds every bootstrap interval is too narrow; read it as a lower bound
    on the uncertainty."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None, None
    res = stats.bootstrap((values,), statistic, n_resamples=N_BOOTSTRAP, method="percentile",
                          confidence_level=0.95, vectorized=True, rng=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def std_ci(values: np.ndarray) -> tuple[float | None, float | None]:
    """95% interval of the std from (n − 1)s²/σ² ~ χ²(n − 1), for normal scores.

    Not a bootstrap: resampling 3-10 seeds repeats them, so resampled stds sit below the observed one and the
    percentile interval ended at the observed std with 0 below it (a reader takes that for a bug, rightly)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return None, None
    s, df = float(np.std(values, ddof=1)), n - 1
    return s * math.sqrt(df / stats.chi2.ppf(0.975, df)), s * math.sqrt(df / stats.chi2.ppf(0.025, df))


def method_task_table(df: pd.DataFrame) -> pd.DataFrame:
    """n, mean, std (ddof=1) with their intervals, performance and stability rank per (method, task);
    AVG rows added (mean of task means and of task stds, no interval; no std where a task has one seed;
    ``n_tasks``: the tasks it averages, fewer than the table's where a method finished no trial of a task).
    ``n_one_class``: the seeds whose every test prediction was one class (all of them: the cell ``collapsed``);
    empty for trials that did not record it (regression, older exports); ``n_share``: the seeds that did."""
    rows = []
    for (method, task), part in df.groupby(["method", "task"]):
        x = part["test_score"].to_numpy(dtype=float)
        m_lo, m_hi = bootstrap_ci(x, np.mean)
        s_lo, s_hi = std_ci(x)
        share = part["test_top_class_share"].dropna() if "test_top_class_share" in part else pd.Series([])
        rows.append({"method": method, "task": task, "n": len(x), "mean": settled(x.mean()),
                     "median": settled(np.median(x)),
                     "std": settled(x.std(ddof=1)) if len(x) > 1 else np.nan, "mean_ci_low": m_lo, "mean_ci_high": m_hi,
                     "std_ci_low": s_lo, "std_ci_high": s_hi,
                     "n_one_class": int((share >= 1.0).sum()) if len(share) else np.nan, "n_share": len(share)})
    t = pd.DataFrame(rows)
    t["perf_rank"] = t.groupby("task")["mean"].rank(ascending=False, method="average")
    t["stab_rank"] = t.groupby("task")["std"].rank(ascending=True, method="average")
    # the mean of the task stds only where every task has one: pandas' mean skips a one-seed cell's NaN, and the
    # AVG std of the method that kept one seed on its noisiest task covered its calm tasks only
    avg = t.groupby("method").agg(n=("n", "sum"), mean=("mean", "mean"),
                                  std=("std", lambda s: s.mean() if s.notna().all() else np.nan),
                                  n_tasks=("task", "nunique")).reset_index()
    avg[["mean", "std"]] = settled(avg[["mean", "std"]])
    avg["task"] = "AVG"  # the paper's AVG column: mean of the task means and of the task stds
    cols = ["method", "task", "n", "mean", "median", "std", "mean_ci_low", "mean_ci_high", "std_ci_low", "std_ci_high",
            "perf_rank", "stab_rank", "n_one_class", "n_share", "n_tasks"]
    return pd.concat([t, avg], ignore_index=True).reindex(columns=cols)


def within_task_permutation_p(ranks_a: np.ndarray, ranks_b: np.ndarray, tasks: np.ndarray,
                              n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided Monte-Carlo p-value of Spearman's ρ when ranks_a is shuffled only within each task.

    scipy.stats.permutation_test cannot restrict its shuffles to blocks, hence numpy: pooled (method, task) pairs
    are not independent (the ranks in one task are tied to each other), so only exchanges inside a task are
    allowed under the null. The pooled ranks of a shuffled vector are a shuffle of the pooled ranks, so ρ of each
    shuffle is the Pearson correlation of the pooled ranks. p = (1 + #{|ρ*| ≥ |ρ|}) / (1 + n_permutations)."""
    ra, rb = stats.rankdata(ranks_a), stats.rankdata(ranks_b)
    rho = np.corrcoef(ra, rb)[0, 1]
    rng = np.random.default_rng(seed)
    shuffled = np.tile(ra, (n_permutations, 1))
    for task in np.unique(tasks):
        idx = np.flatnonzero(tasks == task)
        shuffled[:, idx] = rng.permuted(shuffled[:, idx], axis=1)
    sa = shuffled - shuffled.mean(axis=1, keepdims=True)
    sb = rb - rb.mean()
    perm = (sa @ sb) / (np.linalg.norm(sa, axis=1) * np.linalg.norm(sb))
    return float((1 + np.sum(np.abs(perm) >= abs(rho) - 1e-12)) / (1 + n_permutations))


def spearman_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """The (method, task) cells ρ correlates, those with a std (n ≥ 2), with both ranks taken among them within
    each task (a single-seed cell left out must not shift the others' ranks). Fig. 3b plots these."""
    pairs = table[(table["task"] != "AVG") & table["std"].notna()].copy()
    pairs["perf_rank"] = pairs.groupby("task")["mean"].rank(ascending=False, method="average")
    pairs["stab_rank"] = pairs.groupby("task")["std"].rank(ascending=True, method="average")
    # ρ pools ranks scaled to (rank - 0.5) / k within each task: raw ranks 1..k of a task with fewer cells are
    # low on both axes, which made ρ positive where no task had any correlation (0.43 on average for tasks of
    # 10, 10, 3, 3, 2, 2, 2 cells of random numbers). With equal k the scaling changes nothing.
    k = pairs.groupby("task")["std"].transform("size")
    pairs["perf_quantile"], pairs["stab_quantile"] = (pairs["perf_rank"] - 0.5) / k, (pairs["stab_rank"] - 0.5) / k
    # the permutation p's shuffles depend on row order: the same cells in another order gave another p
    return pairs.sort_values(["task", "stab_rank", "perf_rank"], kind="stable")


def _rho(pairs: pd.DataFrame) -> dict[str, Any]:
    # on what ρ correlates: a task of one cell, or of k tied ones, scales to 0.5 whatever its raw rank
    if len(pairs) < 3 or pairs["stab_quantile"].nunique() < 2 or pairs["perf_quantile"].nunique() < 2:
        return {"rho": None, "p_value": None, "permutation_p_value": None, "n_pairs": int(len(pairs)),
                "reason": "needs ≥3 (method, task) pairs whose stability and performance ranks both vary "
                          "within a task"}
    res = stats.spearmanr(pairs["stab_quantile"], pairs["perf_quantile"])
    return {"rho": float(res.statistic), "p_value": float(res.pvalue),
            "permutation_p_value": within_task_permutation_p(pairs["stab_quantile"].to_numpy(),
                                                              pairs["perf_quantile"].to_numpy(),
                                                              pairs["task"].to_numpy()),
            "n_pairs": int(len(pairs)), "n_permutations": N_PERMUTATIONS}


def spearman(table: pd.DataFrame) -> dict[str, Any]:
    """ρ between stability and performance rank over ``spearman_pairs``; ``n_pairs_one_class``: the pairs with a
    seed that predicted one class for every test example, and ``without_one_class``: ρ without them (a one-class
    cell has a std near 0, so stability rank 1, and a low mean: such cells alone can make ρ negative)."""
    pairs = spearman_pairs(table)
    out = _rho(pairs)
    if out["rho"] is not None:
        out.update(p_value_is="scipy.stats.spearmanr's p, which treats the pooled pairs as independent "
                              "(they are not)",
                   permutation_p_value_is="two-sided p from shuffling stability ranks within each task (pairs of "
                                          "different tasks never exchanged); the one to trust")
    one = pairs["n_one_class"].fillna(0) > 0 if "n_one_class" in pairs else pd.Series(False, index=pairs.index)
    out["n_pairs_one_class"] = int(one.sum())
    if one.any():
        rest = spearman_pairs(table.drop(index=pairs.index[one]))
        out["without_one_class"] = _rho(rest)
    return out


def best_three(table: pd.DataFrame) -> dict[str, list[str]]:
    """Per task, the methods in the first three places, best first; tied methods share a place (so a tie for
    third can make more than three)."""
    out = {}
    for task, part in table.groupby("task", sort=False):
        part = part.sort_values(["mean", "method"], ascending=[False, True])
        out[task] = part.loc[part["mean"].rank(ascending=False, method="min") <= 3, "method"].tolist()
    return out


def best_per_task(result: Analysis) -> dict[str, tuple[str, float]]:
    """(method, mean) of the best mean per task of the first group, and for AVG the best among the methods that
    finished every task (``averaged``): the top AVG row may average fewer tasks. Methods tied for the best are
    named together ("bitfit, sam")."""
    table = rows_of(result.table, result.summary["group"])
    out = {}
    for task, part in [*table[table["task"] != "AVG"].groupby("task"), ("AVG", averaged(table)[0])]:
        if len(part):
            top = part[part["mean"] == part["mean"].max()]
            out[str(task)] = (", ".join(sorted(map(str, top["method"]))), float(top["mean"].iloc[0]))
    return out


def nemenyi_cd(k: int, n_blocks: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of average ranks (Demšar 2006, eq. 5): q_α √(k(k+1)/(6N)) with q_α the
    studentized range quantile over √2 (q_0.05 = 2.569 for k = 4)."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n_blocks)))


def _friedman_on(cells: pd.DataFrame, blocks: str) -> dict[str, Any]:
    """Friedman's χ² (scipy, ties corrected) on a blocks × methods table; complete blocks only."""
    complete = cells.dropna()
    dropped = [str(b) for b in cells.index.difference(complete.index)]
    k, n = complete.shape[1], complete.shape[0]
    base = {"blocks": blocks, "n_blocks": int(n), "n_methods": int(k), "dropped_blocks": dropped}
    if k < 3 or n < 2:
        return {**base, "statistic": None, "p_value": None, "average_ranks": None,
                "reason": f"needs ≥3 methods and ≥2 complete blocks, has {k} method{'s' * (k != 1)} "
                          f"and {n} block{'s' * (n != 1)}"}
    ranks = complete.rank(axis=1, ascending=False, method="average").mean()  # 1 = best score
    if (complete.nunique(axis=1) == 1).all():  # scipy's tie correction would divide by zero (NaN)
        return {**base, "statistic": None, "p_value": None,
                "average_ranks": {str(m): float(r) for m, r in ranks.sort_values().items()},
                "reason": "every block ties all methods: no ranking to test"}
    res = stats.friedmanchisquare(*(complete[m].to_numpy() for m in complete.columns))
    return {**base, "statistic": float(res.statistic), "p_value": float(res.pvalue), "df": int(k - 1),
            "average_ranks": {str(m): float(r) for m, r in ranks.sort_values().items()}}


def friedman(df: pd.DataFrame) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Friedman over methods with tasks as blocks (on per-task means) with Nemenyi's post-hoc, and Friedman
    over (task, seed[, perturbation split]) blocks."""
    cells = settled(df.groupby(["task", "method"])["test_score"].mean().unstack("method"))
    main = _friedman_on(cells, "tasks (per-task mean over seeds)")
    nemenyi: dict[str, Any] = {"alpha": ALPHA, "cd": None, "p_values": None}
    if main["statistic"] is not None:
        complete = cells.dropna()
        p = sp.posthoc_nemenyi_friedman(complete.to_numpy())  # rank direction does not change |R_i - R_j|
        p.index = p.columns = [str(c) for c in complete.columns]
        nemenyi.update(friedman_rejects=bool(main["p_value"] < ALPHA),  # else no pair is declared different
                       cd=nemenyi_cd(complete.shape[1], complete.shape[0]),
                       p_values={a: {b: float(p.loc[a, b]) for b in p.columns if b != a} for a in p.index})
    per_seed = df.pivot_table(index=["task", "seed", df["perturbation"].fillna(-1).rename("split")],
                              columns="method", values="test_score")
    seed_blocks = _friedman_on(per_seed, "(task, seed, perturbation split) triples; blocks of one task are not "
                                         "independent of each other, so read its p-value as optimistic")
    return main, nemenyi, seed_blocks


def constant(x) -> bool:
    """Equal values but for float rounding (scores summed and subtracted in another order). ``std == 0`` let
    differences of -0.1 ± 1e-17 pass as a spread, and the t-test made p ≈ 1e-31 of them."""
    x = np.asarray(x, dtype=float)
    return len(x) == 0 or float(np.ptp(x)) <= 1e-9 * max(1.0, float(np.abs(x).max()))


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down corrected p-values; None (no test possible) stays None and is no member of the family.
    Ours, not statsmodels' multipletests (the test suite checks the two agree): its Holm branch runs gc.collect()
    on every call, 0.2 s each here and more in a driver holding torch, for a three-line formula."""
    idx = [i for i, p in enumerate(p_values) if p is not None and not pd.isna(p)]
    out: list[float | None] = [None] * len(p_values)
    if idx:
        raw = np.array([p_values[i] for i in idx], dtype=float)
        order = np.argsort(raw, kind="stable")
        m = len(raw)
        stepped = np.minimum(1.0, np.maximum.accumulate(raw[order] * np.arange(m, 0, -1)))
        corrected = np.empty(m)
        corrected[order] = stepped
        for i, c in zip(idx, corrected):
            out[i] = float(c)
    return out


def paired_tests(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for task, part in df.groupby("task"):
        wide = part.pivot_table(index=["seed", part["perturbation"].fillna(-1)], columns="method",
                                values="test_score")
        task_rows = []
        for a, b in itertools.combinations(sorted(wide.columns), 2):
            both = wide[[a, b]].dropna()
            diff = (both[a] - both[b]).to_numpy(dtype=float, copy=True)
            diff[np.abs(diff) <= 1e-9] = 0.0  # rounding, not a difference (Wilcoxon counts every nonzero sign)
            tested = len(both) >= MIN_PAIRED and not constant(diff)  # else no test: a tie, in the row all the same
            t = stats.ttest_rel(both[a], both[b]) if tested else None
            w = stats.wilcoxon(diff) if len(both) >= MIN_PAIRED and diff.any() else None
            task_rows.append({"task": task, "method_a": a, "method_b": b, "n": len(both),
                              "mean_diff": float(diff.mean()) if len(both) else None,
                              "t_p_value": None if t is None else float(t.pvalue),
                              "wilcoxon_p_value": None if w is None else float(w.pvalue)})
        for col in ("t_p_value", "wilcoxon_p_value"):
            for r, c in zip(task_rows, holm([r[col] for r in task_rows])):
                r[col.replace("p_value", "p_holm")] = c
        rows.extend(task_rows)
    return pd.DataFrame(rows, columns=["task", "method_a", "method_b", "n", "mean_diff", "t_p_value", "t_p_holm",
                                       "wilcoxon_p_value", "wilcoxon_p_holm"])


def pair_summary(tests: pd.DataFrame) -> pd.DataFrame:
    """Per method pair across tasks: tasks where a beats b (Holm-corrected t-test p < α, positive mean
    difference), where b beats a, and ties (no significant difference, or no test possible)."""
    rows = []
    for (a, b), part in tests.groupby(["method_a", "method_b"]):
        sig = part["t_p_holm"].notna() & (part["t_p_holm"].astype(float) < ALPHA)
        wins, losses = int((sig & (part["mean_diff"] > 0)).sum()), int((sig & (part["mean_diff"] < 0)).sum())
        rows.append({"method_a": a, "method_b": b, "wins": wins, "ties": len(part) - wins - losses,
                     "losses": losses, "n_tasks": len(part)})
    return pd.DataFrame(rows, columns=["method_a", "method_b", "wins", "ties", "losses", "n_tasks"])


def seeds_enough(df: pd.DataFrame, left_out: dict[str, str] | None = None
                 ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stability rank of each method (rank of its AVG std, 1 = most stable) when only n of the seeds are used.
    ``left_out`` (``not_ranked_on_stability``, method: why): methods left out, as from the most-stable answer:
    a small std from guessing would rank them high at every n.

    For each n from 2 to all seeds: every subset of n seeds (at most MAX_SEED_SUBSETS, drawn at random with a
    fixed seed when there are more), std per (method, task) over those seeds, mean over tasks, rank among methods.
    Reported per n: the mean rank and its 10th/90th percentiles over subsets, and Kendall's τ between the
    subset's ranking and the all-seed ranking, averaged over subsets (1 = the ranking has settled)."""
    left_out = {m: why for m, why in (left_out or {}).items() if m in set(df["method"])}
    df = df[~df["method"].isin(left_out)]
    cols = ["n_seeds", "method", "mean_rank", "rank_p10", "rank_p90", "n_subsets"]
    reps = df.assign(rep=list(zip(df["seed"], df["perturbation"].fillna(-1))))
    n_rep = reps["rep"].nunique()
    if n_rep < 3 or reps["method"].nunique() < 2:  # checked before the cube: with every method left out it is empty
        return pd.DataFrame(columns=cols), {"n_seeds": int(n_rep), "kendall_tau": {}, "left_out": left_out,
                                            "reason": "needs ≥3 seeds and ≥2 methods" + (
                                                " ranked on stability" if left_out else "")}
    cube = reps.pivot_table(index=["method", "task"], columns="rep", values="test_score")
    methods = sorted(cube.index.get_level_values("method").unique())
    tasks = sorted(cube.index.get_level_values("task").unique())
    cube = cube.reindex(pd.MultiIndex.from_product([methods, tasks]))
    x = cube.to_numpy().reshape(len(methods), len(tasks), -1)  # method × task × replicate, NaN where missing

    def ranks(subsets: np.ndarray) -> np.ndarray:  # subsets: S × n indices → methods × S ranks
        with warnings.catch_warnings():  # a cell with < 2 of the chosen seeds has no std: NaN, skipped
            warnings.simplefilter("ignore", RuntimeWarning)
            stds = np.nanstd(x[:, :, subsets], ddof=1, axis=-1)  # methods × tasks × S
            avg = settled(stds.mean(axis=1))  # methods × S; NaN where a task has < 2 of the seeds, as the table's AVG
        return stats.rankdata(avg, axis=0, method="average", nan_policy="omit")

    full = ranks(np.arange(n_rep)[None, :])[:, 0]
    rng = np.random.default_rng(0)
    rows, taus = [], {}
    for n in range(2, n_rep + 1):
        if math.comb(n_rep, n) <= MAX_SEED_SUBSETS:
            subsets = np.array(list(itertools.combinations(range(n_rep), n)))
        else:
            subsets = np.array([np.sort(rng.choice(n_rep, n, replace=False)) for _ in range(MAX_SEED_SUBSETS)])
        r = ranks(subsets)
        for i, m in enumerate(methods):
            ranked = r[i][~np.isnan(r[i])]  # none for a method with no std (a single seed per task)
            rows.append({"n_seeds": n, "method": m, "mean_rank": float(ranked.mean()) if ranked.size else math.nan,
                         "rank_p10": float(np.percentile(ranked, 10)) if ranked.size else math.nan,
                         "rank_p90": float(np.percentile(ranked, 90)) if ranked.size else math.nan,
                         "n_subsets": len(subsets)})
        tau = [_tau(r[:, s], full) for s in range(r.shape[1])]
        taus[str(n)] = float(np.nanmean(tau)) if not np.all(np.isnan(tau)) else None
    return pd.DataFrame(rows, columns=cols), {"n_seeds": int(n_rep), "kendall_tau": taus,
                                              "all_seed_ranks": {m: float(v) for m, v in zip(methods, full)},
                                              "left_out": left_out}


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's τ over the methods ranked in both: one with no rank (a task with one of the seeds) is left out
    rather than making τ NaN; NaN, quietly, when fewer than two are left."""
    keep = ~(np.isnan(a) | np.isnan(b))
    return float(stats.kendalltau(a[keep], b[keep]).statistic) if keep.sum() >= 2 else math.nan


def replicates(trials: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Test scores ×100 with one row per replicate (seed, perturbation split) and one column per (method, task)."""
    part = trials[trials["task"].isin(tasks)]
    rep = [part["seed"], part["perturbation"].fillna(-1).rename("split")]
    return part.pivot_table(index=rep, columns=["method", "task"], values="test_score") * 100


def paired_on_average(trials: pd.DataFrame, a: str, b: str, tasks: list[str]) -> dict[str, Any]:
    """``a`` − ``b`` on the average over ``tasks``, paired by replicate (same seed: same head initialisation and
    batch order): a paired t-test with its 95% interval on the per-replicate averages; per task the paired p with
    Holm over these tasks only. One planned comparison, so not corrected over every method pair."""
    wide = replicates(trials, tasks)
    have = [(m, t) for m in (a, b) for t in tasks if (m, t) in wide.columns]
    if len(have) < 2 * len(tasks):
        return {"a": a, "b": b, "n": 0, "answer": f"no paired comparison: {a} or {b} lacks a task"}
    some = wide[have].dropna(how="all")
    full = some.dropna()
    runs = "runs (seed × split)" if (some.index.get_level_values("split") != -1).any() else "seeds"
    diff = settled(full[a].mean(axis=1) - full[b].mean(axis=1))
    out: dict[str, Any] = {"a": a, "b": b, "n": int(len(diff)), "avg_diff": float(diff.mean()) if len(diff) else None,
                           "n_dropped": int(len(some) - len(full))}
    # paired by seed, so a seed that lacks a cell is left out, and the difference is not the table's: said
    fewer = "" if len(some) == len(full) or not len(full) else (
        f" (over the {len(full)} of {len(some)} {runs} with a score on every task; the table's averages differ by "
        f"{settled(some[a].mean().mean() - some[b].mean().mean()):+.1f})")
    if len(diff) < MIN_PAIRED or constant(diff):
        out["answer"] = (f"{a} − {b} on the average: " + ("n/a" if not len(diff) else f"{diff.mean():+.1f}{fewer}")
                         + f"; no paired test ({len(diff)} replicate(s) with every task" +
                         (", identical differences" if len(diff) >= MIN_PAIRED else
                          f": too few, a test needs {MIN_PAIRED}") + ")")
        return out
    t = stats.ttest_rel(full[a].mean(axis=1), full[b].mean(axis=1))
    ci = t.confidence_interval(0.95)
    per_task = []
    for task in tasks:
        pair = wide[[(a, task), (b, task)]].dropna()
        d = pair[(a, task)] - pair[(b, task)]
        p = float(stats.ttest_rel(pair[(a, task)], pair[(b, task)]).pvalue) \
            if len(d) >= MIN_PAIRED and not constant(d) else None
        per_task.append({"task": task, "mean_diff": float(d.mean()) if len(d) else None, "n": int(len(d)), "p": p})
    for row, corrected in zip(per_task, holm([r["p"] for r in per_task])):
        row["p_holm"] = corrected
    sig = [r["task"] for r in per_task if r["p_holm"] is not None and r["p_holm"] < ALPHA]
    out.update(ci_low=float(ci.low), ci_high=float(ci.high), p=float(t.pvalue), tasks=per_task)
    verdict = "a significant difference" if t.pvalue < ALPHA else f"no significant difference (n = {len(diff)})"
    out["answer"] = (f"{a} − {b} on the average: {diff.mean():+.1f} points{fewer}, 95% CI [{ci.low:+.1f}, "
                     f"{ci.high:+.1f}], paired t-test over {len(diff)} {runs} p = {t.pvalue:.3g}: {verdict}"
                     + (f"; per task (Holm over the {len(tasks)} tasks) significant on " + (", ".join(sig) or "none")
                        if len(tasks) > 1 else ""))
    return out


def collapsed(cells: pd.DataFrame, majority: dict[str, float]) -> pd.Series:
    """Per cell: it collapsed to a constant guess, so its std is the label distribution's, not the method's: every
    seed predicted one class for every test example (``n_one_class`` = n), or, where some seed did not record
    that (``n_share`` < n), every seed scored the same at or below the majority class. A cell where only some
    seeds did so keeps its std: failed seeds among learning ones are instability (and where most failed, the cell
    is ``at_chance``)."""
    none = pd.Series(False, index=cells.index)
    known = cells["n_share"].fillna(0) >= cells["n"] if "n_share" in cells else none  # every seed recorded it
    every = cells["n_one_class"].fillna(0) >= cells["n"] if "n_one_class" in cells else none
    return every | (~known & (cells["std"] == 0) & at_chance(cells, majority))


def collapsed_tasks(cells: pd.DataFrame, majority: dict[str, float]) -> dict[str, list[str]]:
    """Per method, the tasks where its cell ``collapsed``."""
    gone = cells[collapsed(cells, majority)]
    return {str(m): sorted(part["task"]) for m, part in gone.groupby("method")}


def majority_scores(trials: pd.DataFrame) -> dict[str, float]:
    """Each task's majority-class test score (the trials' scale), where the trials record it."""
    if "majority_test_score" not in trials:
        return {}
    per_task = pd.to_numeric(trials["majority_test_score"], errors="coerce").groupby(trials["task"]).mean()
    return {str(t): float(v) for t, v in per_task.dropna().items()}


def at_chance(cells: pd.DataFrame, majority: dict[str, float]) -> pd.Series:
    """Per cell: most of its seeds did not beat its task's majority-class score (``majority``, the cells' scale):
    the median seed is at or below it. Not the mean (four seeds guessing and one a point above made a mean "above
    chance"), nor a bootstrap interval (with three seeds its low end is the worst seed: one failed seed made a
    method that learned "at chance"). False where the score is unknown."""
    floor = cells["task"].map(majority).astype(float)
    middle = cells["median"].fillna(cells["mean"]) if "median" in cells else cells["mean"]
    # 1e-6, on either scale: rounding (``settled``, then ×100) is far smaller, one test example in 100,000 larger
    return floor.notna() & (middle <= floor + 1e-6)


def not_ranked_on_stability(cells: pd.DataFrame, majority: dict[str, float]) -> dict[str, str]:
    """The methods whose small std would not be stability, each with why: collapsed on some task, or not above
    the majority class (``at_chance``) on any task it has (a method that learned nothing can vary little). One rule
    for the most-stable answer, the seeds-enough ranking and the claims' smaller-std count, each over the tasks it
    covers. At chance on some tasks only is said beside the answer, not ruled on.
    ``cells``: per-task rows (no AVG), with ``n``, ``mean``, ``std`` and, where known, ``median``,
    ``n_one_class``."""
    out = {m: f"collapsed to a constant guess on {', '.join(ts)}" for m, ts in collapsed_tasks(cells, majority).items()}
    low = cells.assign(low=at_chance(cells, majority))
    for m, part in low.groupby("method"):
        if part["low"].all() and str(m) not in out:
            out[str(m)] = (f"most seeds not above the majority class on {', '.join(sorted(part['task']))}, every "
                           "task it has")
    return out


def one_seed_tasks(table: pd.DataFrame) -> dict[str, list[str]]:
    """Per method, the tasks where it has one seed (no std): its AVG has no std then (``method_task_table``)."""
    cells = table[(table["task"] != "AVG") & table["std"].isna()]
    return {str(m): sorted(part["task"]) for m, part in cells.groupby("method")}


def counted(statuses: pd.Series) -> str:
    """"1 FAILED, 2 PENDING": how many of each status, by name."""
    return ", ".join(f"{n} {s}" for s, n in statuses.fillna("no status").value_counts().sort_index().items())


def status_counts(trials: pd.DataFrame) -> str:
    """"3 trials: 1 FAILED, 2 PENDING", a FINISHED trial without a score counted as UNSCORED."""
    return f"{len(trials)} trial{'' if len(trials) == 1 else 's'}: " + counted(mark_unscored(trials)["status"])


def averaged(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The AVG rows of one group's table that average every task, best first, and the methods left out with
    the tasks they lack (no finished trial there)."""
    tasks = sorted(table.loc[table["task"] != "AVG", "task"].unique())
    avg = table[table["task"] == "AVG"].sort_values(["mean", "method"], ascending=[False, True])
    lacking = {m: sorted(set(tasks) - set(table.loc[(table["method"] == m) & (table["task"] != "AVG"), "task"]))
               for m in avg["method"]}
    lacking = {m: ts for m, ts in lacking.items() if ts}
    return avg[~avg["method"].isin(lacking)], lacking


def jsonable(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN as None (json would write NaN, which is not JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _tag(frame: pd.DataFrame, label: dict[str, Any]) -> pd.DataFrame:
    frame = frame.copy()
    for k, v in label.items():
        frame[f"group_{k}"] = json.dumps(v) if isinstance(v, list) else v
    return frame


def analyze(trials: pd.DataFrame) -> Analysis:
    missing = [c for c in NEEDED if c not in trials.columns]
    if missing:
        raise ValueError(f"trials table lacks column(s) {missing}; needed: {NEEDED}")
    ours = current(trials)
    df, lacking = scored(ours).copy(), unscored(ours)
    if df.empty:
        raise ValueError("no FINISHED trial with a test score to analyse yet" + (
            f" ({len(trials)} not in the sweep's current grid)" if len(trials) and ours.empty else
            f" ({status_counts(ours)})" if len(ours) else " (no trials)"))
    tables, summary_groups, tests, pairs, seeds = [], [], [], [], []
    for label, part in groups(df):
        t = method_task_table(part)
        pt = paired_tests(part)
        ps = pair_summary(pt)
        se, se_summary = seeds_enough(part, not_ranked_on_stability(t[t["task"] != "AVG"], majority_scores(part)))
        fr, nem, fr_seed = friedman(part)
        tables.append(_tag(t, label))
        tests.append(_tag(pt, label))
        pairs.append(_tag(ps, label))
        seeds.append(_tag(se, label))
        summary_groups.append({**label, "spearman": spearman(t), "best": best_three(t[t["task"] != "AVG"]),
                               "friedman": fr, "friedman_task_seed": fr_seed, "nemenyi": nem,
                               "holm": {"alpha": ALPHA, "family": "all method pairs of one task, per test",
                                        "pairs": ps.to_dict("records")},
                               "seeds_enough": se_summary, "n_trials": int(len(part))})
    main = summary_groups[0]
    summary = {**{k: main[k] for k in ("spearman", "best", "friedman", "friedman_task_seed", "nemenyi", "holm",
                                       "seeds_enough")},
               "group": {k: main[k] for k in ("sparsity", "perturbation", "splits", "n_trials") if k in main},
               "groups": summary_groups, "n_finished": int(len(df)), "n_trials": int(len(ours)),
               "unscored": lacking,  # FINISHED, no test score: left out of every statistic
               "n_not_in_grid": int(len(trials) - len(ours)),
               "paired_test": PAIRED_TEST,
               "units": "scores as the task's metric in [0, 1] (the report shows ×100); ranks within each task "
                        "(1 = best mean / smallest std, ties averaged); ρ over the pooled (method, task) pairs of "
                        "all tasks, AVG excluded, cells of one seed (no std) left out; intervals of a mean are 95% "
                        "percentile bootstraps over seeds, of a std chi-square (normal scores)"}
    return Analysis(pd.concat(tables, ignore_index=True), summary, sparsity_sweep(df),
                    pd.concat(tests, ignore_index=True), pd.concat(pairs, ignore_index=True),
                    pd.concat(seeds, ignore_index=True))


def sparsity_sweep(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count per (method, task, sparsity), the standard split and the perturbed splits apart (as
    the groups are); ``group_sparsity`` is empty (the rows span the sparsities)."""
    cols = [c for c in ("test_score", "train_score") if c in df]
    frames = []
    for perturbed, part in df[df["sparsity"].notna()].groupby(df["perturbation"].notna()):
        out = part.groupby(["method", "task", "sparsity"])[cols].agg(["mean", lambda x: x.std(ddof=1), "count"])
        out.columns = [f"{c}_{'std' if f == '<lambda_0>' else f}" for c, f in out.columns]
        frames.append(_tag(out.reset_index(), {"sparsity": None, "perturbation": "perturbed" if perturbed else "none"}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["method", "task", "sparsity", "group_sparsity", "group_perturbation"])
