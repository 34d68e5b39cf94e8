"""Our analysis beside a published table, and the paper's claims answered from our trials.

A published table is a CSV with the columns method, task, mean and std, scores ×100: ``../shared/paper/table1.csv``
is Fu et al.'s Table 1. Its method names are matched to ours blind to case and punctuation, with the paper's
suffixes read as ours (FullTuning → full, MagPruning → magprune); a published method that matches none of ours
is listed, never guessed. Its AVG column covers the tasks the paper ran, so the published AVG is recomputed
over the tasks both tables hold, the way ``analysis.method_task_table`` computes ours (mean of the task means
and of the task stds).

The claims (Fu et al., AAAI 2023), each answered with numbers and beside what the published table says on the
same tasks:
- methods other than full tuning are more stable: their std per task against full tuning's, with a
  Brown–Forsythe test per (method, task) cell (Holm over all cells);
- SAM leads the average;
- stability rank and performance rank correlate positively (Spearman ρ, within-task permutation p);
- a variant of a method (SAM with one global top-k against per tensor) against its base, paired by seed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .analysis import ALPHA, Analysis, holm, rows_of, spearman, trials_in

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
    what is wrong: a missing column, a score that is not a number, a (method, task) given twice."""
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a CSV table ({str(exc).splitlines()[0][:80]}); a published table "
                         f"has the columns {', '.join(PUBLISHED_COLUMNS)} (scores ×100)") from None
    missing = [c for c in PUBLISHED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{str(path)!r} lacks the column(s) {', '.join(missing)}; a published table has the "
                         f"columns {', '.join(PUBLISHED_COLUMNS)} (scores ×100), e.g. ../shared/paper/table1.csv")
    for col in ("mean", "std"):
        bad = table[pd.to_numeric(table[col], errors="coerce").isna()]
        if len(bad):
            row = bad.iloc[0]
            raise ValueError(f"{str(path)!r}: {col} {row[col]!r} of ({row['method']}, {row['task']}) is not a number")
        table[col] = table[col].astype(float)
    twice = table[table.duplicated(["method", "task"])]
    if len(twice):
        raise ValueError(f"{str(path)!r}: ({twice.iloc[0]['method']}, {twice.iloc[0]['task']}) is given twice")
    return table[table["task"] != "AVG"].reset_index(drop=True)


def _avg_rows(cells: pd.DataFrame, tasks: list[str], cols: tuple[str, str]) -> pd.DataFrame:
    """AVG over ``tasks`` per method: the mean of its task means and task stds, NaN unless it has all of them."""
    rows = []
    for method, part in cells.groupby("method", sort=False):
        have = part.dropna(subset=[cols[0]])
        complete = set(have["task"]) >= set(tasks)
        rows.append({"method": method, "task": "AVG",
                     cols[0]: have[cols[0]].mean() if complete else np.nan,
                     cols[1]: have[cols[1]].mean() if complete else np.nan})
    return pd.DataFrame(rows)


def _ranks(frame: pd.DataFrame, mean: str, std: str, among: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Performance and stability ranks per task (1 = best mean, smallest std), among the rows ``among`` only."""
    sub = frame[among]
    perf = sub.groupby("task")[mean].rank(ascending=False, method="average")
    stab = sub.groupby("task")[std].rank(ascending=True, method="average")
    return perf.reindex(frame.index), stab.reindex(frame.index)


def side_by_side(table: pd.DataFrame, published: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Ours (the main group's table, scores in [0, 1]) and the published table (×100) on the tasks both hold.
    Ranks are taken among the methods both tables hold, so that they compare like with like."""
    ours = table[table["task"] != "AVG"]
    tasks = sorted(set(ours["task"]) & set(published["task"]))
    if not tasks:
        raise ValueError(f"no task is in both tables: ours {sorted(set(ours['task']))}, published "
                         f"{sorted(set(published['task']))}")
    keys = {name_key(m): m for m in ours["method"].unique()}
    published = published.assign(ours=published["method"].map(lambda m: keys.get(name_key(m))))
    matched = published.dropna(subset=["ours"])
    cells = ours[ours["task"].isin(tasks)][["method", "task", "n", "mean", "std"]].copy()
    cells[["mean", "std"]] *= 100
    theirs = matched[matched["task"].isin(tasks)].rename(columns={"method": "paper_method", "mean": "paper_mean",
                                                                  "std": "paper_std"})
    # outer: a published cell of a method we ran shows even where our trials of that task did not finish
    cells = cells.merge(theirs.rename(columns={"ours": "method"}), on=["method", "task"], how="outer")
    avg = _avg_rows(cells, tasks, ("mean", "std")).merge(_avg_rows(cells, tasks, ("paper_mean", "paper_std")),
                                                         on=["method", "task"])
    avg["paper_method"] = avg["method"].map(cells.dropna(subset=["paper_method"])
                                            .drop_duplicates("method").set_index("method")["paper_method"])
    avg["n"] = avg["method"].map(cells.groupby("method")["n"].sum())
    order = list(dict.fromkeys(list(matched["ours"]) + sorted(ours["method"].unique())))  # the paper's order
    out = pd.concat([cells, avg], ignore_index=True)
    out = out.iloc[np.lexsort((out["task"].map({t: i for i, t in enumerate(tasks + ["AVG"])}),
                               out["method"].map({m: i for i, m in enumerate(order)})))].reset_index(drop=True)
    out["mean_diff"], out["std_diff"] = out["mean"] - out["paper_mean"], out["std"] - out["paper_std"]
    both = out["mean"].notna() & out["paper_mean"].notna()
    out["perf_rank"], out["stab_rank"] = _ranks(out, "mean", "std", both)
    out["paper_perf_rank"], out["paper_stab_rank"] = _ranks(out, "paper_mean", "paper_std", both)
    cols = ["method", "paper_method", "task", "n", "mean", "std", "paper_mean", "paper_std", "mean_diff",
            "std_diff", "perf_rank", "paper_perf_rank", "stab_rank", "paper_stab_rank"]
    notes = {"tasks": tasks, "tasks_not_published": sorted(set(ours["task"]) - set(tasks)),
             "published_methods_unmatched": sorted(set(published["method"]) - set(matched["method"])),
             "methods_not_published": sorted(set(ours["method"]) - set(matched["ours"]))}
    return out.reindex(columns=cols), notes


def stability_vs_base(cells: pd.DataFrame, trials: pd.DataFrame) -> dict[str, Any]:
    """Every other method's std per task against full tuning's, ours and the published."""
    base = cells[(cells["method"] == BASE) & cells["std"].notna()].set_index("task")
    if base.empty:
        return {"answer": None, "reason": f"{BASE!r} has no finished task with a std to compare with"}
    rows = []
    for _, cell in cells[(cells["method"] != BASE) & cells["std"].notna() & cells["task"].isin(base.index)].iterrows():
        a = trials.loc[(trials["method"] == cell["method"]) & (trials["task"] == cell["task"]), "test_score"]
        b = trials.loc[(trials["method"] == BASE) & (trials["task"] == cell["task"]), "test_score"]
        p = float(stats.levene(a, b, center="median").pvalue) if min(len(a), len(b)) >= 2 and \
            (a.std() > 0 or b.std() > 0) else None
        full, theirs = base.loc[cell["task"]], cell["paper_std"]
        rows.append({"method": cell["method"], "task": cell["task"], "std": cell["std"], "full_std": full["std"],
                     "below": bool(cell["std"] < full["std"]), "p": p,
                     "paper_below": None if pd.isna(theirs) or pd.isna(full["paper_std"])
                     else bool(theirs < full["paper_std"])})
    for row, corrected in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = corrected
    sig = [r for r in rows if r["p_holm"] is not None and r["p_holm"] < ALPHA]
    published = [r for r in rows if r["paper_below"] is not None]
    below, sig_below = sum(r["below"] for r in rows), sum(r["below"] for r in sig)
    paper_below = sum(r["paper_below"] for r in published)
    answer = (f"{below} of {len(rows)} (method, task) cells have a smaller std than {BASE} tuning; "
              f"{sig_below} of them significantly and {len(sig) - sig_below} significantly larger "
              f"(Brown–Forsythe, Holm over the {len(rows)} cells, α = {ALPHA})")
    if published:
        answer += f". The published table on the same cells: {paper_below} of {len(published)} smaller"
    return {"answer": answer, "cells_below": below, "n_cells": len(rows), "significantly_below": sig_below,
            "significantly_above": len(sig) - sig_below, "paper_cells_below": paper_below,
            "paper_n_cells": len(published), "test": "scipy.stats.levene(center='median') on the seeds' test "
            "scores, Holm-corrected over all cells", "cells": rows}


def best_on_average(cells: pd.DataFrame, analysis: dict[str, Any], pairs: pd.DataFrame) -> dict[str, Any]:
    avg = cells[cells["task"] == "AVG"].dropna(subset=["mean"]).sort_values(["mean", "method"],
                                                                            ascending=[False, True])
    order = avg["method"].tolist()
    if not order:
        return {"answer": None, "reason": "no method ran on every shared task"}
    leader = order[0]
    out: dict[str, Any] = {"leader": leader, "leader_avg": float(avg.iloc[0]["mean"]),
                           "ranking": [{"method": m, "avg": float(v)} for m, v in zip(avg["method"], avg["mean"])]}
    answer = f"{leader} leads the average ({out['leader_avg']:.1f})"
    if CLAIMED_BEST in order:
        place = order.index(CLAIMED_BEST) + 1
        out.update(claimed_best=CLAIMED_BEST, place=place, n_methods=len(order),
                   claimed_best_avg=float(avg.set_index("method").loc[CLAIMED_BEST, "mean"]))
        rival = order[1] if place == 1 and len(order) > 1 else leader
        if rival != CLAIMED_BEST:
            a, b = sorted([CLAIMED_BEST, rival])
            row = pairs[(pairs["method_a"] == a) & (pairs["method_b"] == b)]
            if len(row):
                r = row.iloc[0]
                wins, losses = (r["wins"], r["losses"]) if a == CLAIMED_BEST else (r["losses"], r["wins"])
                out["against"] = {"method": rival, "wins": int(wins), "ties": int(r["ties"]),
                                  "losses": int(losses), "n_tasks": int(r["n_tasks"])}
        if place == 1 and len(order) > 1:
            answer += f", ahead of {order[1]} ({float(avg.iloc[1]['mean']):.1f})"
        elif place > 1:
            answer += f"; {CLAIMED_BEST} is {place} of {len(order)} ({out['claimed_best_avg']:.1f})"
        if "against" in out:
            vs = out["against"]
            answer += (f"; against {vs['method']} it wins {vs['wins']}, ties {vs['ties']} and loses "
                       f"{vs['losses']} of {vs['n_tasks']} tasks (paired t-test over seeds, Holm, α = {ALPHA})")
    fr = analysis.get("friedman") or {}
    if fr.get("average_ranks"):
        out["friedman"] = {"p_value": fr["p_value"], "average_ranks": fr["average_ranks"],
                           "nemenyi_cd": (analysis.get("nemenyi") or {}).get("cd")}
    theirs = cells[cells["task"] == "AVG"].dropna(subset=["mean", "paper_mean"]).sort_values(
        ["paper_mean", "method"], ascending=[False, True])
    if len(theirs):
        out["paper_leader"] = theirs.iloc[0]["method"]
        if CLAIMED_BEST in theirs["method"].tolist():
            out["paper_place"] = theirs["method"].tolist().index(CLAIMED_BEST) + 1
        answer += (f". The published table on the same tasks and methods: {out['paper_leader']} leads"
                   + (f", {CLAIMED_BEST} is {out['paper_place']} of {len(theirs)}" if "paper_place" in out else ""))
    out["answer"] = answer
    return out


def stability_performance(cells: pd.DataFrame, analysis: dict[str, Any]) -> dict[str, Any]:
    """Ours over every (method, task) of the analysis, and ours and the published table's computed the same way
    on the cells both hold (ranks among the methods both hold)."""
    ours = dict(analysis.get("spearman") or {})
    rho, perm = ours.get("rho"), ours.get("permutation_p_value")
    same = cells[(cells["task"] != "AVG") & cells["mean"].notna() & cells["paper_mean"].notna()]
    keep = ("rho", "p_value", "permutation_p_value", "n_pairs")
    on_same = {who: {k: v for k, v in spearman(pd.DataFrame({
        "task": same["task"], "std": same[std], "perf_rank": same[perf], "stab_rank": same[stab]})).items()
        if k in keep} for who, std, perf, stab in (("ours", "std", "perf_rank", "stab_rank"),
                                                  ("paper", "paper_std", "paper_perf_rank", "paper_stab_rank"))}
    out = {"ours": ours, "ours_same_cells": on_same["ours"], "paper_same_cells": on_same["paper"],
           "positive_and_significant": None if rho is None or perm is None else bool(rho > 0 and perm < ALPHA)}
    if rho is None:
        out["answer"] = f"no ρ: {ours.get('reason', 'too few pairs')}"
        return out
    out["answer"] = (f"ρ = {rho:.3f} over {ours['n_pairs']} (method, task) pairs, within-task permutation "
                     f"p = {perm:.4f} (scipy's p, which treats the pairs as independent: {ours['p_value']:.4f})")
    mine, theirs = on_same["ours"], on_same["paper"]
    if mine.get("rho") is not None and theirs.get("rho") is not None:
        out["answer"] += (f". On the {mine['n_pairs']} cells both tables hold: ours ρ = {mine['rho']:.3f} "
                          f"(permutation p = {mine['permutation_p_value']:.4f}), the published table's "
                          f"ρ = {theirs['rho']:.3f} (permutation p = {theirs['permutation_p_value']:.4f})")
    return out


def variants_vs_base(cells: pd.DataFrame, trials: pd.DataFrame, tests: pd.DataFrame) -> dict[str, Any]:
    """Each variant (a method run with other parameters under its own name) against its base method."""
    if "base_method" not in trials.columns:
        return {}
    out = {}
    pairs = trials[["method", "base_method"]].drop_duplicates()
    for variant, base in pairs[pairs["method"] != pairs["base_method"]].itertuples(index=False):
        if base not in set(trials["method"]):
            continue
        a, b = sorted([variant, base])
        sign = 1 if a == variant else -1
        rows = []
        for _, t in tests[(tests["method_a"] == a) & (tests["method_b"] == b)].iterrows():
            rows.append({"task": t["task"], "mean_diff": sign * t["mean_diff"] * 100, "n": int(t["n"]),
                         "t_p_holm": t["t_p_holm"]})
        avg = cells[(cells["task"] == "AVG") & cells["method"].isin([variant, base])].set_index("method")["mean"]
        wins = sum(1 for r in rows if r["t_p_holm"] is not None and not pd.isna(r["t_p_holm"])
                   and r["t_p_holm"] < ALPHA and r["mean_diff"] > 0)
        losses = sum(1 for r in rows if r["t_p_holm"] is not None and not pd.isna(r["t_p_holm"])
                     and r["t_p_holm"] < ALPHA and r["mean_diff"] < 0)
        diff = float(avg[variant] - avg[base]) if len(avg) == 2 and avg.notna().all() else None
        out[variant] = {"base": base, "avg_diff": diff, "wins": wins, "losses": losses,
                        "ties": len(rows) - wins - losses, "tasks": rows,
                        "answer": (f"{variant} − {base} on the average: "
                                   + ("n/a" if diff is None else f"{diff:+.1f}")
                                   + f"; per task {variant} wins {wins}, ties {len(rows) - wins - losses} and loses "
                                     f"{losses} (paired t-test over seeds, Holm, α = {ALPHA})")}
    return out


def compare(trials: pd.DataFrame, result: Analysis, published: pd.DataFrame) -> Comparison:
    """The comparison on the analysis's main group (the first sparsity, standard split)."""
    label = result.summary["group"]
    part = trials_in(trials[trials["status"] == "FINISHED"], label)
    cells, notes = side_by_side(rows_of(result.table, label), published)
    part = part[part["task"].isin(notes["tasks"])]
    main_summary = {k: result.summary.get(k) for k in ("spearman", "friedman", "nemenyi")}
    claims = {"group": label, **notes,
              "other_methods_vs_full_std": stability_vs_base(cells[cells["task"] != "AVG"], part),
              "best_on_average": best_on_average(cells, main_summary, rows_of(result.pairs, label)),
              "stability_vs_performance": stability_performance(cells, main_summary),
              "variants_vs_base": variants_vs_base(cells, part, rows_of(result.tests, label)),
              "units": "scores ×100; std with ddof=1 over seeds; AVG over the tasks both tables hold"}
    return Comparison(cells, claims)


def jsonable(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN as None (json would write NaN, which is not JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not np.isfinite(value) else value


def markdown(comparison: Comparison) -> str:
    """The side-by-side table and the answers, for a RESULTS.md."""
    t, c = comparison.table, comparison.claims
    tasks = c["tasks"] + ["AVG"]
    lines = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for method, part in t.groupby("method", sort=False):
        row = part.set_index("task")
        cells = []
        for task in tasks:
            if task not in row.index:
                cells.append("–")
                continue
            r = row.loc[task]
            spread = "" if pd.isna(r["std"]) else f" ± {r['std']:.1f}"
            ours = "–" if pd.isna(r["mean"]) else f"{r['mean']:.1f}{spread}"
            paper = "" if pd.isna(r["paper_mean"]) else f" ({r['paper_mean']:.1f} ± {r['paper_std']:.1f})"
            cells.append(ours + paper)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Ours: mean ± std over seeds; in brackets the published table; –: no finished trial (AVG: not "
                  "every task). Scores ×100.", ""]
    for key, title in CLAIMS:
        lines.append(f"- **{title}** {c[key].get('answer') or c[key].get('reason')}.")
    for variant, v in c["variants_vs_base"].items():
        lines.append(f"- **{variant} against {v['base']}:** {v['answer']}.")
    return "\n".join(lines) + "\n"
