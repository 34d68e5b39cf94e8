"""results/paper-small/reanalyze.py, issue 20's independent check, agrees with `analyze` and finds a difference."""
import json
import subprocess
import sys

import pandas as pd

from orchestrator.analysis import analyze_file
from tests.sweeps import ROOT
from tests.test_analysis import hand_made

SCRIPT = ROOT / "results" / "paper-small" / "reanalyze.py"


def _check(trials, out):
    return subprocess.run([sys.executable, str(SCRIPT), str(trials), str(out)], capture_output=True, text=True,
                          timeout=300)


def test_the_independent_reanalysis_agrees_and_catches_a_changed_number(tmp_path):
    trials, out = tmp_path / "trials.parquet", tmp_path / "analysis"
    df = hand_made()
    df["in_grid"] = True
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "seed": 7, "test_score": 0.0, "in_grid": False}  # not the grid's
    df.to_parquet(trials)
    analyze_file(trials, out)
    done = _check(trials, out)
    assert done.returncode == 0 and "matches the analysis" in done.stdout, done.stdout + done.stderr

    summary = json.loads((out / "summary.json").read_text())
    summary["spearman"]["rho"] += 0.01
    (out / "summary.json").write_text(json.dumps(summary))
    table = pd.read_csv(out / "table.csv")
    table.loc[(table["method"] == "sam") & (table["task"] == "CB"), "std"] += 1e-6
    table.to_csv(out / "table.csv", index=False)
    done = _check(trials, out)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DIFFERS: ρ: here" in done.stdout and "DIFFERS: sam/CB std: here" in done.stdout, done.stdout
    assert _check(trials, tmp_path / "none").returncode == 2


def test_it_reanalyses_the_products_first_group_of_several(tmp_path):
    """With two sparsities and perturbed splits the first group is (smallest p, standard split) even where only the
    methods without a sparsity ran there (the review's case: p = 0.001 only on perturbed splits); AVG rows and ranks
    are compared too."""
    trials, out = tmp_path / "trials.parquet", tmp_path / "analysis"
    df = hand_made()
    masked = df[df["sparsity"].notna() & (df["status"] == "FINISHED")]
    extra = pd.concat([masked.assign(sparsity=0.001, perturbation=k, test_score=masked["test_score"] - 0.01 * k)
                       for k in (1, 2)])
    pd.concat([df, extra], ignore_index=True).to_parquet(trials)
    analyze_file(trials, out)
    done = _check(trials, out)
    assert done.returncode == 0 and "group p = 0.001, standard split" in done.stdout, done.stdout + done.stderr
    table = pd.read_csv(out / "table.csv")
    first = table["group_sparsity"].eq(0.001) & table["group_perturbation"].eq("none") & table["task"].eq("AVG")
    table.loc[first & table["method"].eq("full"), "mean"] += 1e-6
    table.to_csv(out / "table.csv", index=False)
    done = _check(trials, out)
    assert done.returncode == 1 and "DIFFERS: full/AVG mean" in done.stdout, done.stdout


def test_it_agrees_on_rho_where_tasks_rank_different_numbers_of_cells(tmp_path):
    """A one-seed cell has no std, so its task ranks fewer cells: ρ pools each task's ranks scaled to its size
    ((rank − 0.5)/k), here too."""
    trials, out = tmp_path / "trials.parquet", tmp_path / "analysis"
    df = hand_made()
    df = df[~((df["method"] == "lora") & (df["task"] == "RTE") & (df["seed"] > 0))]  # lora/RTE: one seed
    df.to_parquet(trials)
    analyze_file(trials, out)
    assert json.loads((out / "summary.json").read_text())["spearman"]["n_pairs"] == 7
    done = _check(trials, out)
    assert done.returncode == 0 and "matches the analysis" in done.stdout, done.stdout + done.stderr
