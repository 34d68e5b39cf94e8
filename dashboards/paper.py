"""Our analysis beside a published table, and the paper's claims answered from our trials.

A published table is a CSV with the columns method, task, mean and std, scores ×100: ``../shared/paper/table1.csv``
is Fu et al.'s Table 1. Its method names are matched to ours blind to case and punctuation, with the paper's
suffixes read as ours (FullTuning → full, MagPruning → magprune); a published method that matches none of ours
is listed, never guessed. Its AVG column covers the tasks the paper ran, so the published AVG is recomputed
over the tasks both tables hold, the way ``analysis.method_task_table`` computes ours (mean of the task means
and of the task stds).

The claims (Fu et al., AAAI 2023), each answered with numbers and beside what the published table says on the
same tasks:
- methods other than full tuning are more stable: per method, its average std against full tuning's, tested
  over all shared tasks at once (one Brown–Forsythe test on scale-matched deviations, Holm over the methods). A
  test per (method, task) cell cannot decide anything with 5 seeds (its smallest p is 0.004, its size far below
  α), so cells are described (std ratio with its F interval), never counted as significant;
- SAM leads the average: the AVG ranking, and SAM against the leader (or the runner-up) on the average itself,
  a paired t-test over seeds with its confidence interval (a planned comparison: not corrected over every pair);
- stability rank and performance rank correlate positively (Spearman ρ, within-task permutation p);
- a variant of a method (SAM with one global top-k against per tensor) against its base, as SAM against its rival.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .analysis import (ALPHA, Analysis, at_chance, collapsed, holm, majority_scores, not_ranked_on_stability,
                       paired_on_average, replicates, rows_of, scored, settled, spearman, trials_in)

MIN_SEEDS_FOR_SPREAD_TEST = 3  # Brown–Forsythe on 2 against 2 has zero within-group variance: p ≈ 0
PUBLISHED_COLUMNS = ("method", "task", "mean", "std")
BASE = "full"  # the method the stability claim compares every other one with
CLAIMED_BEST = "sam"  # the method the paper finds best on average


CLAIMS = (("other_methods_vs_full_std", "Are methods other than full tuning more stable?"),
          ("best_on_average", "Does SAM lead the average?"),
          ("stability_vs_performance", "Do stability and performance correlate?"))  # claims.json key, question


@dataclass
class Comparison:
    table: pd.DataFrame  # per (method, task) and AVG over the shared tasks: ours and the published, ×100
    claims: dict[str, Any]  # JSON-ready


def name_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return re.sub(r"pruning$", "prune", re.sub(r"tuning$", "", key))


def read_published(path: str | Path) -> pd.DataFrame:
    """The published table without its AVG rows (recomputed over the shared tasks). Raises ValueError naming
    what is wrong: a missing column, an empty or non-number score, a fraction where ×100 is meant, a negative std,
    a (method, task) given twice."""
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a CSV table ({str(exc).splitlines()[0][:80]}); a published table "
                         f"has the columns {', '.join(PUBLISHED_COLUMNS)} (scores ×100)") from None
    missing = [c for c in PUBLISHED_COLUMNS if c not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns))
        raise ValueError(f"{str(path)!r} lacks the column(s) {', '.join(missing)} (it has {found}); "
                         f"a published table has the columns {', '.join(PUBLISHED_COLUMNS)} (scores ×100), comma-"
                         "separated, e.g. ../shared/paper/table1.csv")
    for col in ("mean", "std"):
        values = pd.to_numeric(table[col], errors="coerce")
        bad = table[values.isna()]
        if len(bad):
            row = bad.iloc[0]
            what = "is empty" if pd.isna(row[col]) else f"{row[col]!r} is not a number"
            raise ValueError(f"{str(path)!r}: the {col} of ({row['method']}, {row['task']}) {what}")
        table[col] = values.astype(float)
    if (table["std"] < 0).any():
        row = table[table["std"] < 0].iloc[0]
        raise ValueError(f"{str(path)!r}: the std of ({row['method']}, {row['task']}) is negative ({row['std']:g})")
    if len(table) and (table["mean"].abs() <= 1).all():
        raise ValueError(f"{str(path)!r}: every mean is within [-1, 1]; a published table gives scores ×100 "
                         "(multiply its means and stds by 100)")
    twice = table[table.duplicated(["method", "task"])]
    if len(twice):
        raise ValueError(f"{str(path)!r}: ({twice.iloc[0]['method']}, {twice.iloc[0]['task']}) is given twice")
    return table[table["task"].str.upper() != "AVG"].reset_index(drop=True)


def _avg_rows(cells: pd.DataFrame, tasks: list[str], cols: tuple[str, str]) -> pd.DataFrame:
    """AVG over ``tasks`` per method, the paper's way (mean of the task means, mean of the task stds); each NaN
    unless every task has one (an AVG std over fewer tasks would sit beside one over all of them)."""
    rows = []
    for method, part in cells.groupby("method", sort=False):
        rows.append({"method": method, "task": "AVG"} | {
            col: settled(part[col].mean()) if set(part.dropna(subset=[col])["task"]) >= set(tasks) else np.nan
            for col in cols})
    return pd.DataFrame(rows)


def _ranks(frame: pd.DataFrame, mean: str, std: str, among: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Performance and stability ranks per task (1 = best mean, smallest std), among the rows ``among`` only."""
    sub = frame[among]
    perf = sub.groupby("task")[mean].rank(ascending=False, method="average")
    stab = sub.groupby("task")[std].rank(ascending=True, method="average")
    return perf.reindex(frame.index), stab.reindex(frame.index)


def side_by_side(table: pd.DataFrame, published: pd.DataFrame, ran: list[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Ours (the main group's table, scores in [0, 1]) and the published table (×100) on the tasks both hold
    (task names matched blind to case, in the published order). ``ran``: every method with a trial in the group,
    finished or not. Ranks (``*_shared``) are taken among the methods both tables hold, to compare like with like."""
    ours = table[table["task"] != "AVG"]
    our_tasks = {t.upper(): t for t in ours["task"].unique()}
    published = published.assign(task=published["task"].map(lambda t: our_tasks.get(str(t).upper(), t)))
    tasks = [t for t in dict.fromkeys(published["task"]) if t in set(ours["task"])]
    if not tasks:
        raise ValueError(f"no task is in both tables: ours {sorted(set(ours['task']))}, published "
                         f"{sorted(set(published['task']))}")
    keys: dict[str, str] = {}
    for m in ran:
        if name_key(m) in keys:
            raise ValueError(f"methods {keys[name_key(m)]!r} and {m!r} both match the same published name")
        keys[name_key(m)] = m
    published = published.assign(ours=published["method"].map(lambda m: keys.get(name_key(m))))
    matched = published.dropna(subset=["ours"])
    twice = matched[matched.duplicated(["ours", "task"], keep=False)]
    if len(twice):
        names = sorted(set(twice["method"]))
        raise ValueError(f"published methods {', '.join(names)} all match our {twice.iloc[0]['ours']!r}; keep one")
    cells = ours[ours["task"].isin(tasks)].reindex(columns=["method", "task", "n", "mean", "median", "std",
                                                            "n_one_class", "n_share"])
    cells[["mean", "median", "std"]] *= 100
    theirs = matched[matched["task"].isin(tasks)].rename(columns={"method": "paper_method", "mean": "paper_mean",
                                                                  "std": "paper_std", "ours": "method"})
    # outer: a published cell of a method we ran shows even where our trials of that task did not finish
    cells = cells.merge(theirs, on=["method", "task"], how="outer")
    avg = _avg_rows(cells, tasks, ("mean", "std")).merge(_avg_rows(cells, tasks, ("paper_mean", "paper_std")),
                                                         on=["method", "task"])
    avg["paper_method"] = avg["method"].map(theirs.drop_duplicates("method").set_index("method")["paper_method"])
    avg["n"] = avg["method"].map(cells.groupby("method")["n"].sum())
    order = list(dict.fromkeys(list(matched["ours"]) + sorted(ours["method"].unique())))  # the paper's order
    out = pd.concat([cells, avg], ignore_index=True)
    out = out.iloc[np.lexsort((out["task"].map({t: i for i, t in enumerate(tasks + ["AVG"])}),
                               out["method"].map({m: i for i, m in enumerate(order)})))].reset_index(drop=True)
    out["mean_diff"], out["std_diff"] = out["mean"] - out["paper_mean"], out["std"] - out["paper_std"]
    both = out["mean"].notna() & out["paper_mean"].notna()
    out["perf_rank_shared"], out["stab_rank_shared"] = _ranks(out, "mean", "std", both)
    out["paper_perf_rank_shared"], out["paper_stab_rank_shared"] = _ranks(out, "paper_mean", "paper_std", both)
    cols = ["method", "paper_method", "task", "n", "mean", "std", "paper_mean", "paper_std", "mean_diff",
            "std_diff", "perf_rank_shared", "paper_perf_rank_shared", "stab_rank_shared", "paper_stab_rank_shared",
            "median", "n_one_class", "n_share"]
    finished = set(ours["method"])
    notes = {"tasks": tasks, "tasks_not_published": sorted(set(ours["task"]) - set(tasks)),
             "published_tasks_not_run": [t for t in dict.fromkeys(published["task"]) if t not in tasks],
             "published_methods_not_run": sorted(set(published["method"]) - set(matched["method"])),
             "published_methods_without_a_finished_trial": sorted(set(matched.loc[~matched["ours"].isin(finished),
                                                                                  "method"])),
             "methods_not_published": sorted(finished - set(matched["ours"]))}
    return out.reindex(columns=cols), notes


def _spread_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Brown–Forsythe's p for one cell against full's, where it can say anything (≥ 3 seeds each, not both constant)."""
    if min(len(a), len(b)) < MIN_SEEDS_FOR_SPREAD_TEST or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    return float(stats.levene(a, b, center="median").pvalue)


def _scaled_deviations(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """|x − its cell's median| for both cells of one task, divided by the median of all of them, so that tasks
    with wide and narrow spreads weigh alike when pooled; None where both are constant."""
    da, db = np.abs(a - np.median(a)), np.abs(b - np.median(b))
    scale = np.median(np.concatenate([da, db]))
    if scale == 0:
        scale = np.mean(np.concatenate([da, db]))
    return None if scale == 0 else (da / scale, db / scale)


def _absent(method: str, ran: set[str]) -> str:
    return (f"{method} ran here without a finished trial" if method in ran else
            f"{method} is not in this sweep (add it to grid.methods to answer this)")


def stability_vs_base(cells: pd.DataFrame, trials: pd.DataFrame, tasks: list[str], majority: dict[str, float],
                      ran: set[str]) -> dict[str, Any]:
    """Every other method against full tuning: its average std, and one test of spread over all shared tasks."""
    if BASE not in set(trials["method"]):
        return {"answer": None, "reason": f"no std to compare with: {_absent(BASE, ran)}"}
    wide = replicates(trials, tasks)
    avg = cells[cells["task"] == "AVG"].set_index("method")
    base_cells = cells[(cells["method"] == BASE) & (cells["task"] != "AVG")].set_index("task")
    published_std = cells.set_index(["method", "task"])["paper_std"]
    per_task = cells[(cells["task"] != "AVG") & cells["mean"].notna()]
    # the answer's rule (collapsed on some task, or at chance on all), over these tasks: such a method is left out
    # of the count and the tests, and named with its average std beside full's (whichever is larger)
    ruled = not_ranked_on_stability(per_task, majority)
    left_out = {m: why for m, why in ruled.items() if m != BASE}
    # per cell, the answer's test: collapsed, or most seeds not above the majority class: its spread is mostly a
    # guess's; a cell where most seeds learned keeps its spread, a failed seed and all (that is instability)
    no_learning = dict(zip(zip(per_task["method"], per_task["task"]),
                           collapsed(per_task, majority) | at_chance(per_task, majority)))
    methods, cell_rows = [], []
    for method in [m for m in dict.fromkeys(cells["method"]) if m != BASE]:
        za, zb = [], []
        for task in tasks:
            if (method, task) not in wide.columns or (BASE, task) not in wide.columns:
                continue
            a, b = wide[(method, task)].dropna().to_numpy(), wide[(BASE, task)].dropna().to_numpy()
            if min(len(a), len(b)) < 2:
                continue
            sa, sb = settled(np.std(a, ddof=1)), settled(np.std(b, ddof=1))
            ratio, lo, hi = (sa / sb, None, None) if sb > 0 else (None, None, None)
            if ratio is not None and sa > 0:  # σ_a/σ_b from F = s_a²/s_b² ~ F(n_a − 1, n_b − 1) (normal scores)
                f = ratio ** 2
                lo = math.sqrt(f / stats.f.ppf(0.975, len(a) - 1, len(b) - 1))
                hi = math.sqrt(f / stats.f.ppf(0.025, len(a) - 1, len(b) - 1))
            paper, paper_base = published_std.get((method, task)), base_cells["paper_std"].get(task)
            own, base = bool(no_learning.get((method, task))), bool(no_learning.get((BASE, task)))
            cell_rows.append({"method": method, "task": task, "n": len(a), "full_n": len(b), "std": float(sa),
                              "full_std": float(sb), "std_ratio": ratio, "ratio_ci_low": lo, "ratio_ci_high": hi,
                              "below": bool(sa < sb), "p": _spread_p(a, b), "learned_nothing": own,
                              "full_learned_nothing": base,
                              "paper_below": None if paper is None or paper_base is None or pd.isna(paper)
                              or pd.isna(paper_base) else bool(paper < paper_base)})
            # a cell that learned nothing varies little: pooled, it made a constant guess "significantly" stable
            if (min(len(a), len(b)) >= MIN_SEEDS_FOR_SPREAD_TEST and not (own or base) and method not in left_out
                    and (scaled := _scaled_deviations(a, b))):
                za.append(scaled[0])
                zb.append(scaled[1])
        row: dict[str, Any] = {"method": method, "avg_std": avg["std"].get(method),
                               "full_avg_std": avg["std"].get(BASE), "paper_avg_std": avg["paper_std"].get(method),
                               "paper_full_avg_std": avg["paper_std"].get(BASE), "tasks_tested": len(za), "p": None}
        if za:
            za_all, zb_all = np.concatenate(za), np.concatenate(zb)
            row["p"] = float(stats.ttest_ind(za_all, zb_all, equal_var=False).pvalue)
            row["smaller"] = bool(za_all.mean() < zb_all.mean())
        methods.append(row)
    for row, corrected in zip(methods, holm([r["p"] for r in methods])):
        row["p_holm"] = corrected
    ruled_out = [r["method"] for r in methods if r["method"] in left_out]  # left_out, in the table's order
    compared = [r for r in methods if r["avg_std"] is not None and r["full_avg_std"] is not None
                and not pd.isna(r["avg_std"]) and not pd.isna(r["full_avg_std"]) and r["method"] not in ruled_out]
    below = [r["method"] for r in compared if r["avg_std"] < r["full_avg_std"]]
    n_tested = sum(r["p"] is not None for r in methods)  # Holm's family: the methods a test could be run for
    sig = [r for r in methods if r["p_holm"] is not None and r["p_holm"] < ALPHA]
    sig_smaller = [r["method"] for r in sig if r["smaller"]]
    sig_larger = [r["method"] for r in sig if not r["smaller"]]
    published = [r for r in methods if r["paper_avg_std"] is not None and r["paper_full_avg_std"] is not None
                 and not pd.isna(r["paper_avg_std"]) and not pd.isna(r["paper_full_avg_std"])]
    paper_below = [r["method"] for r in published if r["paper_avg_std"] < r["paper_full_avg_std"]]
    kept = [r for r in cell_rows if r["method"] not in ruled_out]  # the methods this answer compares
    n_cells, cells_below = len(kept), sum(r["below"] for r in kept)
    no_stability = sum(r["below"] and (r["learned_nothing"] or r["full_learned_nothing"]) for r in kept)
    base_gone = [t for t in tasks if no_learning.get((BASE, t))]
    testable = [r for r in cell_rows if min(r["n"], r["full_n"]) >= MIN_SEEDS_FOR_SPREAD_TEST]
    full_ranks = {t: r for t, r in base_cells["stab_rank_shared"].dropna().items()}
    n_ranked = cells[cells["task"] != "AVG"].groupby("task")["stab_rank_shared"].count()
    no_avg = [r["method"] for r in methods if r["method"] not in ruled_out and r not in compared]
    if why := _no_average_std(cells, BASE, tasks):
        head = f"no average std of {BASE} to compare with ({why})"
    else:
        head = (f"{len(below)} of {len(compared)} methods {'has' if len(below) == 1 else 'have'} a smaller average "
                f"std than {BASE} tuning" + (" (" + ", ".join(
                    m + (f" (collapsed or most seeds not above the majority class on {', '.join(ts)})" if (ts := [
                        c["task"] for c in cell_rows if c["method"] == m and c["learned_nothing"]]) else "")
                    for m in below) + ")" if below else "")
                + (" (not compared, no average std: " + "; ".join(f"{m}, {_no_average_std(cells, m, tasks)}"
                                                                   for m in no_avg) + ")" if no_avg else ""))
    answer = (head
              + (" (left out, its std no measure of stability: " + "; ".join(
                  f"{m}, {left_out[m]}{_std_beside(avg['std'].get(m), avg['std'].get(BASE))}"
                  for m in ruled_out) + ")" if ruled_out else "")
              + (f" ({BASE} itself: {ruled[BASE]})" if BASE in ruled else "")
              + (f"; {BASE}'s own cells collapsed or most of its seeds are not above the majority class on "
                 f"{', '.join(base_gone)}, so those tasks stay out of the test of spread" if base_gone else "")
              + (f"; tested over the shared tasks at once, {len(sig_smaller)} significantly smaller"
                 + (f" ({', '.join(sig_smaller)})" if sig_smaller else "")
                 + f" and {len(sig_larger)} significantly larger" + (f" ({', '.join(sig_larger)})" if sig_larger
                                                                     else "")
                 + f" (Brown–Forsythe on deviations from each cell's median scaled per task, ≥ "
                   f"{MIN_SEEDS_FOR_SPREAD_TEST} seeds per cell, Holm over the {n_tested} method"
                   f"{'s' * (n_tested != 1)} tested, α = {ALPHA}). " if n_tested else
                 "; no test of spread: no cell with ≥ 3 seeds on both sides is left to test (a left-out method's, "
                 "collapsed or at chance on one side, or constant on both). " if testable else
                 f"; no test of spread: it needs ≥ {MIN_SEEDS_FOR_SPREAD_TEST} seeds per cell on both sides, and no "
                 "method has them. ")
              + f"Per cell, {cells_below} of {n_cells} stds are below {BASE}'s"
              + (f", {no_stability} of them where its cell or {BASE}'s collapsed or is at chance (no stability to "
                 "compare)" if no_stability else "")
              + (f"; with {n} seeds against {n} one cell's std ratio is known only within ×/÷ "
                 f"{math.sqrt(stats.f.ppf(0.975, n - 1, n - 1)):.1f} (95%)" if (n := _modal_n(cell_rows)) >= 2 else ""))
    if full_ranks:
        answer += ("; " + BASE + "'s stability rank among the methods both tables hold: "
                   + ", ".join(f"{t} {r:g} of {n_ranked[t]}" for t, r in full_ranks.items()))
    if published:
        answer += (f". The published table on the same tasks: {len(paper_below)} of {len(published)} methods "
                   f"{'has' if len(paper_below) == 1 else 'have'} a smaller average std than {BASE} tuning")
    return {"answer": answer, "methods_below": below, "n_methods": len(compared),
            "significantly_smaller": sig_smaller, "significantly_larger": sig_larger,
            "left_out": {m: left_out[m] for m in ruled_out}, "paper_methods_below": paper_below,
            "paper_n_methods": len(published), "cells_below": cells_below,
            "n_cells": n_cells, "cells_below_learned_nothing": no_stability,
            "test": "per method: scipy.stats.ttest_ind (Welch) on |score − cell median| / task scale, the pooled "
                    "Brown–Forsythe test of spread, cells with ≥ 3 seeds on both sides; Holm over methods. Per cell "
                    "(descriptive): the std ratio with its 95% F interval and Brown–Forsythe's raw p",
            "methods": methods, "cells": cell_rows}


def _std_beside(std: float | None, base_std: float | None) -> str:
    """", average std 8.0 against full's 3.3": a left-out method's own figure, for the reader to weigh."""
    if std is None or base_std is None or pd.isna(std) or pd.isna(base_std):
        return ""
    return f", average std {std:.1f} against {BASE}'s {base_std:.1f}"


def _no_average_std(cells: pd.DataFrame, method: str, tasks: list[str]) -> str:
    """Why ``method`` has no AVG std over ``tasks`` ("one finished seed on CB; no finished trial on RTE"), or ""."""
    own = cells[(cells["method"] == method) & (cells["task"] != "AVG")].set_index("task")["n"].reindex(tasks)
    one, none = [t for t in tasks if own[t] == 1], [t for t in tasks if not own[t] >= 1]
    return "; ".join(([f"one finished seed on {', '.join(one)}"] if one else [])
                     + ([f"no finished trial on {', '.join(none)}"] if none else []))


def _modal_n(cell_rows: list[dict[str, Any]]) -> int:
    return int(pd.Series([r["n"] for r in cell_rows]).mode().iloc[0]) if cell_rows else 0


def best_on_average(cells: pd.DataFrame, trials: pd.DataFrame, tasks: list[str], ran: set[str]) -> dict[str, Any]:
    """The AVG ranking (ties share a place) and SAM against the leader or, when it leads, the runner-up.
    ``ran``: the methods with a trial in the group, finished or not."""
    avg = cells[cells["task"] == "AVG"].dropna(subset=["mean"]).sort_values(["mean", "method"],
                                                                            ascending=[False, True])
    if avg.empty:
        return {"answer": None, "reason": "no method finished every shared task"}
    place = avg["mean"].rank(ascending=False, method="min").astype(int)  # ties share a place
    out: dict[str, Any] = {"ranking": [{"method": m, "avg": float(v), "place": int(p)}
                                       for m, v, p in zip(avg["method"], avg["mean"], place)]}
    leaders = avg.loc[place == 1, "method"].tolist()
    out["leader"] = leaders[0] if len(leaders) == 1 else leaders
    bases = dict(zip(trials["method"], trials["base_method"])) if "base_method" in trials else {}
    named = [m + (f" (a variant of {bases[m]})" if bases.get(m, m) != m else "") for m in leaders]
    answer = (f"{' and '.join(named)} {'lead' if len(leaders) > 1 else 'leads'} the average "
              f"({avg.iloc[0]['mean']:.1f}{', tied' if len(leaders) > 1 else ''})")
    if CLAIMED_BEST not in set(avg["method"]):
        why = ("did not finish every shared task" if CLAIMED_BEST in set(trials["method"]) else
               "ran here without a finished trial" if CLAIMED_BEST in ran else "is not in this sweep")
        answer += f"; {CLAIMED_BEST} {why}, so it has no place"
    else:
        mine = int(place[avg["method"] == CLAIMED_BEST].iloc[0])
        out.update(claimed_best=CLAIMED_BEST, place=mine, n_methods=len(avg))
        order = avg["method"].tolist()
        rival = next((m for m in order if m != CLAIMED_BEST), None)
        if mine == 1 and rival is not None:
            answer += (f", ahead of {rival} ({float(avg.set_index('method').loc[rival, 'mean']):.1f})"
                       if rival not in leaders else "")
        elif mine > 1:
            score = float(avg.set_index("method").loc[CLAIMED_BEST, "mean"])
            answer += f"; {CLAIMED_BEST} is {mine} of {len(avg)} ({score:.1f})"
        if rival is not None:
            out["against"] = paired_on_average(trials, CLAIMED_BEST, rival, tasks)
            answer += f"; {out['against']['answer']}"
    theirs = cells[cells["task"] == "AVG"].dropna(subset=["mean", "paper_mean"])
    if len(theirs):
        their_place = theirs.set_index("method")["paper_mean"].rank(ascending=False, method="min").astype(int)
        first = sorted(their_place[their_place == 1].index)
        out["paper_leader"] = first[0] if len(first) == 1 else first
        answer += (f". The published table on the same tasks and methods: {' and '.join(first)} "
                   f"{'lead, tied' if len(first) > 1 else 'leads'}")
        if CLAIMED_BEST in their_place.index:
            out["paper_place"] = int(their_place[CLAIMED_BEST])
            answer += f", {CLAIMED_BEST} is {out['paper_place']} of {len(theirs)}"
    out["answer"] = answer
    return out


def stability_performance(cells: pd.DataFrame, analysis: dict[str, Any], notes: dict[str, Any]) -> dict[str, Any]:
    """Ours over every (method, task) of the analysis, and ours and the published table's computed the same way
    on the cells both hold (ranks among the methods both hold)."""
    ours = dict(analysis.get("spearman") or {})
    rho, perm = ours.get("rho"), ours.get("permutation_p_value")
    # a cell of ours with one seed has no std, so no place in ours: out of the published table's too
    same = cells[(cells["task"] != "AVG") & cells[["mean", "std", "paper_mean", "paper_std"]].notna().all(axis=1)]
    keep = ("rho", "p_value", "permutation_p_value", "n_pairs")
    # spearman ranks within each task among these cells: the methods both tables hold
    on_same = {who: {k: v for k, v in spearman(pd.DataFrame({
        "task": same["task"], "mean": same[mean], "std": same[std]})).items() if k in keep}
        for who, mean, std in (("ours", "mean", "std"), ("paper", "paper_mean", "paper_std"))}
    out = {"ours": ours, "ours_same_cells": on_same["ours"], "paper_same_cells": on_same["paper"],
           "positive_and_significant": None if rho is None or perm is None else bool(rho > 0 and perm < ALPHA)}
    if rho is None:
        out["answer"] = f"no ρ: {ours.get('reason', 'too few pairs')}"
        return out
    scope = " (all our tasks, " + ", ".join(notes["tasks_not_published"]) + " included)" \
        if notes["tasks_not_published"] else ""
    out["answer"] = (f"ρ = {rho:.3f} over {ours['n_pairs']} (method, task) pairs{scope}, within-task "
                     f"permutation p = {perm:.4f} (scipy's p, which treats the pairs as independent: "
                     f"{ours['p_value']:.4f})")
    mine, theirs = on_same["ours"], on_same["paper"]
    if mine.get("rho") is not None and theirs.get("rho") is not None:
        out["answer"] += (f". On the {mine['n_pairs']} cells both tables hold: ours ρ = {mine['rho']:.3f} "
                          f"(permutation p = {mine['permutation_p_value']:.4f}), the published table's "
                          f"ρ = {theirs['rho']:.3f} (permutation p = {theirs['permutation_p_value']:.4f})")
    if ours.get("n_pairs_one_class"):  # collapsed cells: a std near 0 with a low mean, which alone pulls ρ down
        rest = ours.get("without_one_class") or {}
        out["answer"] += (f". Our pairs with a seed that predicted one class: {ours['n_pairs_one_class']}; "
                          + (f"without them ρ = {rest['rho']:.3f} over {rest['n_pairs']} (permutation p = "
                             f"{rest['permutation_p_value']:.4f})" if rest.get("rho") is not None
                             else "without them too few pairs are left for ρ"))
    return out


def variants_vs_base(trials: pd.DataFrame, tasks: list[str], ran: set[str]) -> dict[str, Any]:
    """Each variant (a method run with other parameters under its own name) against its base method."""
    if "base_method" not in trials.columns:
        return {}
    out: dict[str, Any] = {}
    pairs = trials[["method", "base_method"]].drop_duplicates()
    for variant, base in pairs[pairs["method"] != pairs["base_method"]].itertuples(index=False):
        if base not in set(trials["method"]):
            out[variant] = {"base": base, "answer": f"no comparison: {_absent(base, ran)}"}
            continue
        out[variant] = {"base": base, **paired_on_average(trials, variant, base, tasks)}
    return out


def compare(trials: pd.DataFrame, result: Analysis, published: pd.DataFrame) -> Comparison:
    """The comparison on the analysis's main group (its first sparsity, standard split), named in the claims."""
    label = result.summary["group"]
    group = trials_in(trials, label)
    cells, notes = side_by_side(rows_of(result.table, label), published, list(dict.fromkeys(group["method"])))
    tasks = notes["tasks"]
    part = scored(group)
    part = part[part["task"].isin(tasks)]
    majority = {t: 100 * v for t, v in majority_scores(part).items()}
    others = [g for g in result.summary["groups"] if (g["sparsity"], g["perturbation"])
              != (label["sparsity"], label["perturbation"])]
    seeds = part.groupby(["method", "task"]).size()
    started = group[group["source"] != "grid"] if "source" in group else group  # the export's never-started rows
    ran = set(started["method"])
    models = sorted(map(str, part["model"].dropna().unique())) if "model" in part else []
    claims = {"group": label, "models": models,
              "methods_without_a_finished_trial": sorted(ran - set(part["method"])),
              "other_groups": [{k: g[k] for k in ("sparsity", "perturbation")} for g in others],
              "seeds_per_cell": int(seeds.mode().iloc[0]) if len(seeds) else 0, "majority": majority, **notes,
              "other_methods_vs_full_std": stability_vs_base(cells, part, tasks, majority, ran),
              "best_on_average": best_on_average(cells, part, tasks, ran),
              "stability_vs_performance": stability_performance(cells, result.summary, notes),
              "variants_vs_base": variants_vs_base(part, tasks, ran),
              "units": "scores ×100; std with ddof=1 over seeds; AVG over the tasks both tables hold; "
                       "differences are ours − published"}
    return Comparison(cells, claims)


def caption(c: dict[str, Any]) -> str:
    """What the side-by-side table shows: the group, seeds per cell, what was left out."""
    group = c["group"]
    sparsity = "no sparsity" if group.get("sparsity") is None else f"sparsity {group['sparsity']:g}"
    text = (f"Ours: mean ± std over seeds ({c['seeds_per_cell']} per cell; (n = k) marks a cell with fewer), "
            f"{sparsity}, {'the standard split' if group['perturbation'] == 'none' else 'perturbed splits'}"
            + (" (other groups of this export are not compared: " + "; ".join(
                f"sparsity {g['sparsity']}, {g['perturbation']}" for g in c["other_groups"]) + ")"
               if c["other_groups"] else "")
            + "; then, marked paper, the published table's (in brackets in claims.md); –: no finished trial (AVG: not every task). Scores ×100. "
            + (f"Our model: {', '.join(c['models'])}. " if c.get("models") else "")
            + "The published numbers come from their own model, budget and seeds: compare orderings and spreads "
              "more than levels.")
    for key, what in (("methods_without_a_finished_trial", "rows of this sweep with no finished trial"),
                      ("published_methods_not_run", "published methods not in this sweep"),
                      ("published_methods_without_a_finished_trial", "published methods that ran here without a "
                                                                         "finished trial"),
                      ("published_tasks_not_run", "published tasks not in this sweep")):
        if c.get(key):
            text += f" {what.capitalize()}: {', '.join(c[key])}."
    return text


def table_cells(comparison: Comparison) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Per method, per task and AVG: ours ("mean ± std", "–" without a value), its seed mark ("(n = k)" on a cell
    with fewer seeds than most, else ""), and the published ("mean ± std", "" where none): what the markdown and
    the report's section show, each in its own markup."""
    t, c = comparison.table, comparison.claims
    rows = []
    for method, part in t.groupby("method", sort=False):
        row = part.set_index("task")
        cells = []
        for task in c["tasks"] + ["AVG"]:
            if task not in row.index:
                cells.append(("–", "", ""))
                continue
            r = row.loc[task]
            spread = "" if pd.isna(r["std"]) else f" ± {r['std']:.1f}"
            few = task != "AVG" and not pd.isna(r["n"]) and r["n"] < c["seeds_per_cell"]
            cells.append(("–" if pd.isna(r["mean"]) else f"{r['mean']:.1f}{spread}",
                          f"(n = {int(r['n'])})" if few and not pd.isna(r["mean"]) else "",
                          "" if pd.isna(r["paper_mean"]) else f"{r['paper_mean']:.1f} ± {r['paper_std']:.1f}"))
        rows.append((method, cells))
    return rows


def answers(claims: dict[str, Any]) -> list[tuple[str, str]]:
    """(question, answer) for each claim and each variant against its base."""
    out = [(title, claims[key].get("answer") or claims[key].get("reason")) for key, title in CLAIMS]
    return out + [(f"{v} against {info['base']}", info["answer"]) for v, info in claims["variants_vs_base"].items()]


def markdown(comparison: Comparison) -> str:
    """The side-by-side table and the answers, for a RESULTS.md."""
    c = comparison.claims
    tasks = c["tasks"] + ["AVG"]
    lines = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for method, cells in table_cells(comparison):
        lines.append(f"| {method} | " + " | ".join(ours + (f" {few}" if few else "") + (f" ({paper})" if paper else "")
                                                  for ours, few, paper in cells) + " |")
    if c["majority"]:
        majority = [c["majority"].get(task) for task in c["tasks"]]
        avg = sum(majority) / len(majority) if None not in majority else None
        lines.append("| majority class | " + " | ".join("" if m is None else f"{m:.1f}" for m in majority + [avg])
                     + " |")
    lines += ["", caption(c), ""]
    lines += [f"- **{title}{'' if title.endswith('?') else ':'}** {text}." for title, text in answers(c)]
    return "\n".join(lines) + "\n"
