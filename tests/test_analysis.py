"""The analysis on a hand-made table whose per-seed scores have chosen means and stds."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from orchestrator.analysis import analyze, analyze_file

MEANS = {("full", "CB"): 0.80, ("sam", "CB"): 0.85, ("lora", "CB"): 0.78, ("bitfit", "CB"): 0.80,
         ("full", "RTE"): 0.70, ("sam", "RTE"): 0.72, ("lora", "RTE"): 0.71, ("bitfit", "RTE"): 0.66}
STDS = {("full", "CB"): 0.03, ("sam", "CB"): 0.01, ("lora", "CB"): 0.05, ("bitfit", "CB"): 0.02,
        ("full", "RTE"): 0.02, ("sam", "RTE"): 0.01, ("lora", "RTE"): 0.04, ("bitfit", "RTE"): 0.06}


def hand_made(extra_rows=()):
    rows = []
    for (method, task), mu in MEANS.items():
        sigma = STDS[(method, task)]
        for seed, value in enumerate([mu - sigma, mu, mu + sigma]):  # ddof=1 std of these is exactly sigma
            rows.append({"method": method, "task": task, "seed": seed, "sparsity": None if method in ("full", "bitfit")
                         else 0.005, "perturbation": None, "status": "FINISHED", "test_score": value,
                         "train_score": value + 0.1})
    rows.append({"method": "sam", "task": "CB", "seed": 9, "sparsity": 0.005, "perturbation": None,
                 "status": "FAILED", "test_score": None, "train_score": None})  # not counted
    rows.extend(extra_rows)
    return pd.DataFrame(rows)


def test_means_stds_ranks_and_spearman(tmp_path):
    path = tmp_path / "trials.parquet"
    hand_made().to_parquet(path)
    analyze_file(path, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "table.csv")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    cells = table[table["task"] != "AVG"].set_index(["method", "task"])
    for key, mu in MEANS.items():
        assert cells.loc[key, "mean"] == pytest.approx(mu, abs=1e-12)
        assert cells.loc[key, "std"] == pytest.approx(STDS[key], abs=1e-12)
        assert cells.loc[key, "n"] == 3
    # ranks computed independently: CB means 0.80 tie between full and bitfit -> average rank 2.5
    assert cells.loc[("full", "CB"), "perf_rank"] == 2.5 == cells.loc[("bitfit", "CB"), "perf_rank"]
    assert cells.loc[("sam", "CB"), "perf_rank"] == 1 and cells.loc[("sam", "CB"), "stab_rank"] == 1
    perf, stab = [], []
    for task in ("CB", "RTE"):
        keys = [k for k in MEANS if k[1] == task]
        perf += list(stats.rankdata([-MEANS[k] for k in keys]))
        stab += list(stats.rankdata([STDS[k] for k in keys]))
        for k, p, s in zip(keys, perf[-4:], stab[-4:]):
            assert (cells.loc[k, "perf_rank"], cells.loc[k, "stab_rank"]) == (p, s)
    expected = stats.spearmanr(stab, perf)
    assert summary["spearman"]["rho"] == pytest.approx(expected.statistic)
    assert summary["spearman"]["p_value"] == pytest.approx(expected.pvalue)
    assert summary["spearman"]["n_pairs"] == 8
    assert summary["best"]["CB"][0] == "sam" and summary["best"]["RTE"] == ["sam", "lora", "full"]
    avg = table[table["task"] == "AVG"].set_index("method")
    assert avg.loc["sam", "mean"] == pytest.approx((0.85 + 0.72) / 2)
    assert avg.loc["sam", "std"] == pytest.approx((0.01 + 0.01) / 2)
    assert summary["n_finished"] == 24


def test_several_sparsities_and_perturbations_are_separate_groups():
    extra = [{"method": "sam", "task": "CB", "seed": s, "sparsity": 0.05, "perturbation": None, "status": "FINISHED",
              "test_score": 0.5 + s / 100, "train_score": 0.9} for s in range(3)]
    extra += [{"method": "sam", "task": "CB", "seed": 0, "sparsity": 0.005, "perturbation": k, "status": "FINISHED",
               "test_score": 0.6 + k / 100, "train_score": 0.9} for k in range(3)]
    table, summary, sweep, tests = analyze(hand_made(extra))
    labels = [(g["sparsity"], g["perturbation"]) for g in summary["groups"]]
    assert labels == [(0.005, "none"), (0.005, "perturbed"), (0.05, "none")]
    assert summary["groups"][1]["splits"] == [0, 1, 2]
    row = sweep[(sweep["method"] == "sam") & (sweep["task"] == "CB") & (sweep["sparsity"] == 0.05)].iloc[0]
    assert row["test_score_mean"] == pytest.approx(0.51) and row["test_score_std"] == pytest.approx(0.01)
    pair = tests[(tests["task"] == "CB") & (tests["method_a"] == "full") & (tests["method_b"] == "sam")
                 & (tests["group_perturbation"] == "none") & (tests["group_sparsity"] == 0.005)].iloc[0]
    diffs = np.array([0.80 - 0.03, 0.80, 0.83]) - np.array([0.84, 0.85, 0.86])
    assert pair["mean_diff"] == pytest.approx(diffs.mean())
    assert pair["t_p_value"] == pytest.approx(stats.ttest_rel([0.77, 0.80, 0.83], [0.84, 0.85, 0.86]).pvalue)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="lacks column"):
        analyze(pd.DataFrame({"method": ["x"]}))
