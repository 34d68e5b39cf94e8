"""The sweep's answer in words, from an ``Analysis``: the best method on average and whether its lead over the
runner-up is more than the seeds' noise, the most stable method on average, and what each leaves out and why.
A sweep's end and `peft-sweep analyze` print these lines and tag the parent run with them; the report's seeds
caption names the same methods left out. The numbers behind them come from ``dashboards.analysis``."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .analysis import (Analysis, at_chance, averaged, counted, majority_scores, mark_unscored, not_ranked_on_stability,
                       one_seed_tasks, paired_on_average, rows_of, scored, trials_in)


def not_ranked_line(left_out: dict[str, str]) -> str:
    """``not_ranked_on_stability``'s methods as the answer and the report's seeds-enough caption name them."""
    return ("not ranked on stability, its std there no measure of stability: "
            + "; ".join(f"{m} ({why})" for m, why in left_out.items()))

def majority_average(trials: pd.DataFrame, tasks: list[str]) -> float | None:
    """The mean over ``tasks`` of each task's majority-class test score (the table's majority row, AVG), or None
    where the trials do not record it for every task."""
    per_task = majority_scores(trials)
    if not tasks or any(t not in per_task for t in tasks):
        return None
    return float(np.mean([per_task[t] for t in tasks]))

def best_line(method: str, mean: float, std: float | None, one_seed: list[str] | None = None) -> str:
    """The answer's first line; the ± and its meaning only where a std exists (two seeds or more on every
    task; ``one_seed``: the tasks where the method has one)."""
    what = "test score ×100, mean over tasks of the mean over seeds"
    if std is None:
        why = f"one finished seed on {', '.join(one_seed)}" if one_seed else "one seed per cell"
        return f"best on average: {method} {100 * mean:.1f} ({what}; {why}, so no std)"
    return f"best on average: {method} {100 * mean:.1f} ± {100 * std:.1f} ({what} ± mean per-task std)"

def unranked(trials: pd.DataFrame) -> dict[str, str]:
    """Methods none of whose trials FINISHED with a score, each with what became of its trials ("sam (2 FAILED)")."""
    out = {}
    for method, statuses in mark_unscored(trials).groupby("method")["status"]:
        counts = statuses.value_counts()
        if "FINISHED" not in counts:
            out[method] = f"{method} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
    return out

def scored_count(trials: pd.DataFrame) -> str | None:
    """"scored 5 of 7 trials; not scored: 1 FAILED, 1 STOPPED (sam: 2 of 4 scored)" where some trials have no
    score, naming the methods that still have one (those with none are "not ranked"); None where all have one."""
    have = scored(trials)
    if len(have) == len(trials):
        return None
    rest = mark_unscored(trials).loc[trials.index.difference(have.index), "status"]
    got = have["method"].value_counts()
    per = [f"{m}: {got[m]} of {n} scored" for m, n in trials["method"].value_counts().sort_index().items()
           if 0 < got.get(m, 0) < n]
    return (f"scored {len(have)} of {len(trials)} trials; not scored: {counted(rest)}"
            + (f" ({'; '.join(per)})" if per else ""))

def answer(result: Analysis, trials: pd.DataFrame) -> dict[str, Any]:
    """The sweep's answer to its question, from its first group: the best method on average and whether its lead
    over the runner-up is more than the seeds' noise, and the most stable method on average. ``lines`` for a
    console, the rest for a tracking store."""
    label = result.summary["group"]
    table = rows_of(result.table, label)
    avg, lacking = averaged(table)
    out: dict[str, Any] = {"lines": [], "best": None, "tied": [], "lead": None, "most_stable": None, "lacking": lacking,
                           "unranked": unranked(trials_in(trials, label))}
    if len(result.summary.get("groups", [])) > 1:  # else it reads as the whole sweep's answer
        where = ([f"sparsity {label['sparsity']:g}"] if label.get("sparsity") is not None else []) + [
            "the unperturbed split" if label["perturbation"] == "none" else "the perturbed splits"]
        out["lines"].append(f"the answer below is for {', '.join(where)}: the first of {len(result.summary['groups'])} "
                            "groups (sparsity, split); each group's numbers are in table.csv and the report")
    if count := scored_count(trials_in(trials, label)):
        out["lines"].append(count)
    missing = result.summary.get("unscored") or []
    if missing:  # FINISHED, yet no score came back: left out of every number below, and said so
        out["lines"].append(f"left out, FINISHED with no test score: {len(missing)} trial(s): "
                            + ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    ours = scored(trials_in(trials, label))
    if "diverged_at_step" in ours and len(gone := ours[pd.to_numeric(ours["diverged_at_step"]).notna()]):
        # FINISHED with the best state from before the nan: a score like any other, yet worth a look
        per = ", ".join(f"{m} ({n})" for m, n in gone["method"].value_counts().sort_index().items())
        out["lines"].append(f"{len(gone)} trial(s) diverged (nan loss) after an evaluation and count with their "
                            f"best state before it: {per}")
    if out["unranked"]:  # a method that failed everywhere is not a method that lost: said beside the answer
        out["lines"].append("not ranked, no finished trial: " + "; ".join(out["unranked"].values()))
    if lacking:  # an average over the easy tasks only would rank a method that failed the hard one first
        out["lines"].append("not ranked on average, no finished trial on some task: "
                            + "; ".join(f"{m} ({', '.join(ts)})" for m, ts in lacking.items()))
    if avg.empty:
        return out
    cells = table[table["task"] != "AVG"]
    one_seed = {m: ts for m, ts in one_seed_tasks(table).items() if m in set(avg["method"])}
    best = avg.iloc[0]
    out["best"] = best["method"]
    tied = avg.loc[avg["mean"] == best["mean"], "method"].tolist()  # equal to 1e-10 (``settled``): no leader
    if len(tied) > 1:
        out["tied"] = tied
        few = "".join(f"; {m}: one finished seed on {', '.join(one_seed[m])}, so no std" for m in tied
                      if one_seed.get(m))
        out["lines"].append(f"best on average: {' and '.join(tied)}, tied at {100 * best['mean']:.1f} (test score "
                            f"×100, mean over tasks of the mean over seeds{few})")
    else:
        out["lines"].append(best_line(best["method"], best["mean"], None if pd.isna(best["std"]) else best["std"],
                                      one_seed.get(best["method"])))
    if (floor := majority_average(trials_in(trials, label), sorted(cells["task"].unique()))) is not None \
            and best["mean"] <= floor + 1e-9:  # "best" of methods that all guess the majority class is no answer
        out["lines"].append(f"the best average is at or below the majority-class score ({100 * floor:.1f}): no "
                            "method learned these tasks here (a learning rate too high or too low, or too few "
                            "steps, are the usual causes)")
    if len(avg) == 1:  # a crown with no rival: said, so it is not read as a win
        out["lines"].append(f"{best['method']} is the only method ranked here: best and most stable compare it with "
                            "nothing")
    if len(avg) > 1:
        tasks = sorted(cells["task"].unique())
        part = trials_in(scored(trials), label)
        out["lead"] = paired_on_average(part, best["method"], avg.iloc[1]["method"], tasks)
        said = ("its lead over the runner-up" if not out["tied"] else "the tied pair, paired" if len(tied) == 2
                else f"the first two of the {len(tied)} tied, paired")
        out["lines"].append(f"{said}: {out['lead']['answer']}")
    majority = majority_scores(trials_in(trials, label))
    left_out = not_ranked_on_stability(cells, majority)
    stable = avg[~avg["method"].isin(left_out)].dropna(subset=["std"]).sort_values(["std", "method"])
    if left_out:  # a small std from a constant guess: not to be crowned (nor tagged) the most stable
        out["lines"].append(not_ranked_line(left_out))
    if one_seed and cells["std"].notna().any():  # a mean over the other tasks' stds would leave one out
        out["lines"].append("not ranked on stability, one finished seed on some task: "
                            + "; ".join(f"{m} ({', '.join(ts)})" for m, ts in one_seed.items()))
        if stable.empty:
            out["lines"].append("most stable on average: none ranked (no method has two finished seeds or more "
                                "on every task)")
    # per method, the tasks where most of its seeds are not above the majority: said beside a most-stable crown
    chance = cells[at_chance(cells, majority)].groupby("method")["task"].apply(sorted).to_dict()
    if len(stable):
        m = stable.iloc[0]
        level = stable.loc[stable["std"] == m["std"], "method"].tolist()  # equal to 1e-10 (``settled``): a tie
        out["most_stable"] = ", ".join(level)  # as the parent run's tag names them
        if len(level) > 1:
            out["lines"].append(f"most stable on average: {' and '.join(level)}, tied (mean per-task std "
                                f"{100 * m['std']:.1f}, test score ×100" + "".join(
                                    f"; {x}: most seeds not above the majority class on {', '.join(chance[x])}"
                                    for x in level if x in chance) + ")")
            return out
        its = cells[cells["method"] == m["method"]]
        one = int(its["n_one_class"].sum()) if "n_one_class" in its and its["n_one_class"].notna().any() else 0
        fewest, most = int(its["n"].min()), int(cells["n"].max())
        out["lines"].append(f"most stable on average: {m['method']} (mean per-task std {100 * m['std']:.1f}, test "
                            f"score ×100; its mean {100 * m['mean']:.1f}"
                            + (f"; {one} of its seeds predicted one class for every test example" if one
                               else "")
                            + (f"; most seeds not above the majority class on {', '.join(chance[m['method']])}, "
                               "where a small std may be a guess's" if m["method"] in chance else "")
                            + (f"; a std over as few as {fewest} of up to {most} seeds: seeds lost to failures may "
                               "have been its unstable ones" if fewest < most else "") + ")")
    return out
