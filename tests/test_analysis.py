"""The analysis on hand-made tables whose answers are known: chosen means and stds, a Friedman statistic
computed by hand, a case where Holm changes a decision, a rank correlation whose within-task permutation
p-value can be enumerated, and a seed subsample whose rankings can be listed."""
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dashboards.analysis import UNSCORED, analyze, bootstrap_ci, holm, nemenyi_cd
from dashboards.answer import answer
from orchestrator.analysis import analyze_file

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
    res = analyze(hand_made(extra))
    summary, sweep, tests = res.summary, res.sparsity, res.tests
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
    # the answer is the first group's, and says so where there are others (it read as the whole sweep's)
    assert answer(res, hand_made(extra))["lines"][0] == (
        "the answer below is for sparsity 0.005, the unperturbed split: the first of 3 groups (sparsity, split); "
        "each group's numbers are in table.csv and the report")


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="lacks column"):
        analyze(pd.DataFrame({"method": ["x"]}))


def trials_from(scores):
    """{(method, task): [score per seed]} -> a FINISHED trials table at one sparsity."""
    return pd.DataFrame([{"method": m, "task": t, "seed": s, "sparsity": 0.01, "perturbation": None,
                          "status": "FINISHED", "test_score": v} for (m, t), vs in scores.items()
                         for s, v in enumerate(vs)])


# 3 tasks x 4 methods; ranks (1 = best) A: 1 2 3 4, B: 2 1 4 3, C: 1 3 2 4 -> rank sums 4, 6, 9, 11
FRIEDMAN_TABLE = {"A": [0.9, 0.8, 0.7, 0.6], "B": [0.8, 0.9, 0.6, 0.7], "C": [0.9, 0.7, 0.8, 0.6]}


def test_friedman_and_nemenyi_by_hand(tmp_path):
    # two seeds per cell with the same offset for every method: per-task means are the table, and each
    # (task, seed) block ranks the methods as its task does
    scores = {(m, t): [v - 0.01, v + 0.01] for t, row in FRIEDMAN_TABLE.items() for m, v in zip("wxyz", row)}
    path = tmp_path / "trials.parquet"
    trials_from(scores).to_parquet(path)
    analyze_file(path, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    fr = summary["friedman"]
    # chi2_F = 12 / (N k (k+1)) * sum R_j^2 - 3 N (k+1) = 12/60 * (16+36+81+121) - 45 = 5.8, df 3
    assert fr["statistic"] == pytest.approx(5.8) and fr["df"] == 3 and fr["n_blocks"] == 3
    assert fr["p_value"] == pytest.approx(0.12176, abs=1e-4)  # chi2(3) upper tail at 5.8, from a table
    assert fr["average_ranks"] == pytest.approx({"w": 4 / 3, "x": 2, "y": 3, "z": 11 / 3})
    # six (task, seed) blocks, every rank sum doubled: 12/120 * 4 * 254 / 4 ... = 0.1 * 1016 - 90 = 11.6
    assert summary["friedman_task_seed"]["statistic"] == pytest.approx(11.6)
    assert summary["friedman_task_seed"]["n_blocks"] == 6
    nem = summary["nemenyi"]
    # Demšar (2006) Table 5a: q_0.05 = 2.569 for k = 4; CD = q sqrt(k(k+1)/(6N))
    assert nem["cd"] == pytest.approx(2.569 * math.sqrt(20 / 18), abs=1e-3)
    assert nemenyi_cd(10, 7) == pytest.approx(3.164 * math.sqrt(110 / 42), abs=1e-3)  # q_0.05 = 3.164, k = 10
    # w and z differ by 7/3 ranks < CD: Nemenyi does not separate them, and its p says so
    assert 7 / 3 < nem["cd"] and nem["p_values"]["w"]["z"] > 0.05
    assert nem["p_values"]["w"]["z"] == nem["p_values"]["z"]["w"]


def test_friedman_needs_three_methods_and_drops_incomplete_tasks():
    scores = {("a", "A"): [0.5, 0.6], ("b", "A"): [0.4, 0.5], ("a", "B"): [0.5, 0.6], ("b", "B"): [0.7, 0.5]}
    fr = analyze(trials_from(scores)).summary["friedman"]
    assert fr["statistic"] is None and "needs ≥3 methods" in fr["reason"]
    scores.update({("c", "A"): [0.1, 0.2], ("c", "B"): [0.3, 0.2], ("a", "C"): [0.1, 0.2], ("b", "C"): [0.2, 0.1]})
    fr = analyze(trials_from(scores)).summary["friedman"]
    assert fr["dropped_blocks"] == ["C"] and fr["n_blocks"] == 2  # C lacks method c


def test_holm_by_hand():
    # step-down: 0.01*3 = 0.03, max(0.03, 0.03*2) = 0.06, max(0.06, 0.04*1) = 0.06
    assert holm([0.03, None, 0.01, 0.04]) == [pytest.approx(0.06), None, pytest.approx(0.03), pytest.approx(0.06)]


def test_holm_agrees_with_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 28):
        raw = list(rng.uniform(0, 0.2, m) ** 2) + [0.0, 1.0, 0.5, 0.5]  # ties, the bounds, clipping at 1
        assert holm(raw) == pytest.approx(list(multipletests(raw, method="holm")[1]), abs=1e-15)


def test_holm_changes_a_decision_and_pairs_count_it():
    c1, c2 = np.array([0.50, 0.52, 0.48, 0.51]), np.array([0.60, 0.62, 0.58, 0.61])
    scores = {("a", "T1"): c1 + [0.05, 0.08, 0.02, 0.06], ("b", "T1"): c1 + [0.03, 0.10, 0.00, 0.06],
              ("c", "T1"): c1,
              ("a", "T2"): c2 + [0.10, 0.11, 0.10, 0.12], ("b", "T2"): c2 + [0.00, 0.01, -0.01, 0.00],
              ("c", "T2"): c2}
    res = analyze(trials_from({k: list(v) for k, v in scores.items()}))
    t1 = res.tests[res.tests["task"] == "T1"].set_index(["method_a", "method_b"])
    raw = {pair: stats.ttest_rel(scores[(pair[0], "T1")], scores[(pair[1], "T1")]).pvalue
           for pair in [("a", "b"), ("a", "c"), ("b", "c")]}
    assert raw[("a", "c")] < 0.05 < raw[("b", "c")] < raw[("a", "b")]  # the fixture is the case we want
    expected = {("a", "c"): 3 * raw[("a", "c")]}
    expected[("b", "c")] = max(expected[("a", "c")], 2 * raw[("b", "c")])
    expected[("a", "b")] = max(expected[("b", "c")], raw[("a", "b")])
    for pair, p in expected.items():
        assert t1.loc[pair, "t_p_value"] == pytest.approx(raw[pair])
        assert t1.loc[pair, "t_p_holm"] == pytest.approx(p)
    assert t1.loc[("a", "c"), "t_p_holm"] > 0.05  # significant raw, not after Holm
    pairs = res.pairs.set_index(["method_a", "method_b"])
    # a beats c on T2 only (T1 is a tie once corrected); a beats b on T2
    assert pairs.loc[("a", "c"), ["wins", "ties", "losses"]].tolist() == [1, 1, 0]
    assert pairs.loc[("a", "b"), ["wins", "ties", "losses"]].tolist() == [1, 1, 0]
    assert res.summary["holm"]["pairs"][1]["wins"] == 1


def test_bootstrap_intervals_known_answers():
    # two seeds: resampled means are 0.6, 0.7, 0.8 with probabilities 1/4, 1/2, 1/4 -> 95% interval [0.6, 0.8];
    # resampled stds are 0 (prob 1/2) or 0.1414 (prob 1/2) -> [0, 0.1414]
    assert bootstrap_ci(np.array([0.6, 0.8])) == pytest.approx((0.6, 0.8))
    assert bootstrap_ci(np.array([0.6, 0.8]), lambda x, axis: np.std(x, ddof=1, axis=axis)) == \
        pytest.approx((0.0, 0.2 / math.sqrt(2)))
    assert bootstrap_ci(np.array([0.6])) == (None, None)
    table = analyze(hand_made()).table.set_index(["method", "task"])
    row = table.loc[("sam", "CB")]  # seeds 0.84, 0.85, 0.86: min and max each drawn 3 times w.p. 1/27 > 2.5%
    assert (row["mean_ci_low"], row["mean_ci_high"]) == pytest.approx((0.84, 0.86))
    # the std's interval from chi-square with 2 degrees of freedom: s·√(2/7.378) and s·√(2/0.0506); the
    # percentile bootstrap gave [0, s] here (resampled stds never exceed the observed spread of 3 points)
    assert (row["std_ci_low"], row["std_ci_high"]) == pytest.approx((0.01 * math.sqrt(2 / stats.chi2.ppf(0.975, 2)),
                                                                     0.01 * math.sqrt(2 / stats.chi2.ppf(0.025, 2))))
    assert (row["std_ci_low"], row["std_ci_high"]) == pytest.approx((0.0052066, 0.0628473), abs=1e-7)


def test_spearman_permutation_within_tasks():
    # two tasks, three methods, performance rank = stability rank in both: pooled rho = 1 and scipy's p ~ 0,
    # but shuffling within tasks gives |rho| = 1 in 2 of the 3! * 3! = 36 arrangements: p = 2/36 = 0.056
    scores = {}
    for task in ("A", "B"):
        for m, (mu, sd) in zip("xyz", [(0.9, 0.01), (0.8, 0.02), (0.7, 0.03)]):
            scores[(m, task)] = [mu - sd, mu, mu + sd]
    sp = analyze(trials_from(scores)).summary["spearman"]
    assert sp["rho"] == pytest.approx(1.0) and sp["p_value"] < 0.01
    assert sp["permutation_p_value"] == pytest.approx(2 / 36, abs=0.01)  # 9999 draws: s.e. 0.002
    assert "within each task" in sp["permutation_p_value_is"]


def test_the_permutation_p_of_the_same_cells_does_not_depend_on_their_order():
    """claims.md gave two permutation p's for the same three cells (0.3345, 0.3310): the shuffles followed the
    row order, and the comparison with the paper builds its table in another order."""
    from dashboards.analysis import spearman

    g = np.random.default_rng(1)
    table = pd.DataFrame({"task": np.repeat(["A", "B", "C"], 4), "mean": g.random(12), "std": g.random(12)})
    p = spearman(table)["permutation_p_value"]
    assert all(spearman(table.sample(frac=1, random_state=s))["permutation_p_value"] == p for s in range(3))


def test_seeds_enough_lists_every_subset():
    # one task, three seeds. x: 0.5 0.5 0.9, y: 0.5 0.6 0.7. All seeds: std x 0.23 > y 0.10 -> y rank 1.
    # Pairs {0,1}: x 0 < y 0.07 (x first), {0,2} and {1,2}: y first -> mean rank x 5/3, y 4/3; tau 1/3
    res = analyze(trials_from({("x", "T"): [0.5, 0.5, 0.9], ("y", "T"): [0.5, 0.6, 0.7]}))
    seeds = res.seeds.set_index(["n_seeds", "method"])
    assert seeds.loc[(2, "x"), "mean_rank"] == pytest.approx(5 / 3)
    assert seeds.loc[(2, "y"), "mean_rank"] == pytest.approx(4 / 3)
    assert seeds.loc[(2, "x"), "n_subsets"] == 3 and seeds.loc[(3, "y"), "mean_rank"] == 1
    assert res.summary["seeds_enough"]["kendall_tau"] == pytest.approx({"2": 1 / 3, "3": 1.0})
    assert res.summary["seeds_enough"]["all_seed_ranks"] == {"x": 2.0, "y": 1.0}


def test_analyze_writes_every_table(tmp_path, capsys):
    path = tmp_path / "trials.parquet"
    hand_made().to_parquet(path)
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("claims.md", "claims.json", "paper_comparison.csv", "mask_overlap.csv"):  # an earlier analyze's
        (out / stale).write_text("of another sweep")  # (with --paper, with masks): not this one's, so not left
    (out / "notes.txt").write_text("mine")
    names = {p.name for p in analyze_file(path, out)}
    assert names == {"table.csv", "table.parquet", "summary.json", "sparsity.csv", "paired_tests.csv",
                     "pair_summary.csv", "seeds_enough.csv"}
    assert {p.name for p in out.iterdir()} == names | {"notes.txt"}
    said = capsys.readouterr().out  # a comparison removed (a sweep's end rewrites its analysis without one): said
    assert "note: removed paper_comparison.csv, claims.json, claims.md from" in said and "--paper CSV" in said, said
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"friedman", "nemenyi", "holm", "friedman_task_seed", "seeds_enough"} <= summary.keys()
    assert "permutation_p_value" in summary["spearman"]
    tests = pd.read_csv(tmp_path / "out" / "paired_tests.csv")
    assert {"t_p_holm", "wilcoxon_p_holm"} <= set(tests.columns)


def test_spearman_is_none_not_nan_when_ranks_are_constant(tmp_path):
    scores = {(m, t): [v - 0.01, v + 0.01] for t, row in FRIEDMAN_TABLE.items() for m, v in zip("wxyz", row)}
    sp = analyze(trials_from(scores)).summary["spearman"]  # every std is equal: stability ranks all tie
    assert sp["rho"] is None and sp["permutation_p_value"] is None and "vary" in sp["reason"]


def test_dashboards_import_nothing_upstream():
    """Issue 12 item 5: the report and `peft-sweep analyze` share dashboards.analysis; dashboards itself never
    imports orchestrator or training code."""
    import ast
    from pathlib import Path

    for path in (Path(__file__).parents[1] / "dashboards").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad = [n for n in names if n.split(".")[0] in ("orchestrator", "trainables")]
            assert not bad, f"{path.name} imports {bad}"


def test_the_answer_names_the_best_whether_its_lead_is_real_and_the_most_stable():
    df = hand_made()
    said = answer(analyze(df), df)
    # AVG means: sam .785, full .75, lora .745, bitfit .73; AVG stds: sam .01, full .025, bitfit .04, lora .045
    assert said["best"] == "sam" and said["most_stable"] == "sam"
    ok = df[df["status"] == "FINISHED"]
    per_seed = {m: ok[ok["method"] == m].groupby("seed")["test_score"].mean() * 100 for m in ("sam", "full")}
    t = stats.ttest_rel(per_seed["sam"], per_seed["full"])
    lead = said["lead"]
    assert (lead["a"], lead["b"], lead["n"]) == ("sam", "full", 3) and lead["p"] == pytest.approx(t.pvalue)
    assert lead["avg_diff"] == pytest.approx(3.5)
    assert said["lines"][0] == "scored 24 of 25 trials; not scored: 1 FAILED (sam: 6 of 7 scored)"
    assert said["lines"][1].startswith("best on average: sam 78.5 ± 1.0 (")
    assert said["lines"][2].startswith("its lead over the runner-up: sam − full on the average: +3.5 points, 95% CI [")
    assert said["lines"][3] == "most stable on average: sam (mean per-task std 1.0, test score ×100; its mean 78.5)"


def _rows(scores: dict, sparsity=0.01, perturbation=None, status="FINISHED") -> list[dict]:
    """Trials from {(method, task): [score per seed]}."""
    return [{"method": m, "task": t, "seed": s, "sparsity": sparsity, "perturbation": perturbation,
             "status": status, "test_score": v, "train_score": v}
            for (m, t), values in scores.items() for s, v in enumerate(values)]


def test_a_pair_with_too_few_paired_seeds_is_a_tie_not_a_missing_task():
    res = analyze(pd.DataFrame(_rows({("a", "T1"): [.5, .6, .7], ("b", "T1"): [.7, .8, .9],
                                      ("a", "T2"): [.5, .6, .7], ("b", "T2"): [.6]})))
    t2 = res.tests[res.tests["task"] == "T2"].iloc[0]
    assert t2["n"] == 1 and pd.isna(t2["t_p_value"]) and pd.isna(t2["t_p_holm"])
    assert res.pairs.iloc[0][["ties", "n_tasks"]].tolist() == [2, 2]  # T2 a tie (T1 ties too: Holm-free n = 3)


def test_differences_equal_but_for_rounding_get_no_test():
    """-0.1 ± 1e-17 in every seed passed `std > 0`: the t-test said p = 1e-31 and the pair was a loss."""
    scores = {("a", "T"): [.5, .6, .7], ("b", "T"): [.6, .7, .8], ("c", "T"): [.9, .2, .4]}
    res = analyze(pd.DataFrame(_rows(scores)))
    ab = res.tests[(res.tests["method_a"] == "a") & (res.tests["method_b"] == "b")].iloc[0]
    assert pd.isna(ab["t_p_value"]) and ab["mean_diff"] == pytest.approx(-0.1)
    lead = answer(res, pd.DataFrame(_rows(scores)))["lead"]  # b − a on the average: the same rounding
    assert (lead["a"], lead["b"]) == ("b", "a") and "identical differences" in lead["answer"], lead


def test_best_on_average_is_among_methods_that_finished_every_task():
    """x failed every trial of the hard task: its average over the easy one alone ranked it first."""
    trials = pd.DataFrame(_rows({("x", "E"): [.90, .91, .92], ("y", "E"): [.88, .89, .90],
                                 ("y", "H"): [.60, .61, .62], ("z", "E"): [.80, .85, .90],
                                 ("z", "H"): [.50, .55, .60]})
                          + _rows({("x", "H"): [None] * 3}, status="FAILED"))
    res = analyze(trials)
    got = answer(res, trials)
    assert got["best"] == "y" and got["most_stable"] == "y" and got["lacking"] == {"x": ["H"]}, got
    assert "not ranked on average, no finished trial on some task: x (H)" in got["lines"]
    avg = res.table[res.table["task"] == "AVG"].set_index("method")
    assert avg.loc["x", "n_tasks"] == 1 and avg.loc["y", "n_tasks"] == 2


def test_the_sparsity_sweep_keeps_the_standard_and_perturbed_splits_apart():
    trials = pd.DataFrame(_rows({("sam", "CB"): [.8, .8, .8]}, sparsity=0.005)
                          + _rows({("sam", "CB"): [.4]}, sparsity=0.005, perturbation=0))
    sweep = analyze(trials).sparsity.set_index("group_perturbation")
    assert sweep.loc["none", "test_score_mean"] == pytest.approx(.8) and sweep.loc["none", "test_score_count"] == 3
    assert sweep.loc["perturbed", "test_score_mean"] == pytest.approx(.4)


def test_every_method_tied_on_every_task_writes_valid_json(tmp_path):
    trials = pd.DataFrame(_rows({(m, t): [.5, .5, .5] for m in "abc" for t in ("T1", "T2")}))
    res = analyze(trials)
    assert res.summary["friedman"]["statistic"] is None and "ties all methods" in res.summary["friedman"]["reason"]
    path = tmp_path / "trials.parquet"
    trials.to_parquet(path)
    analyze_file(path, tmp_path / "out")
    json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=pytest.fail)  # no NaN


def test_spearman_ranks_only_the_cells_it_correlates():
    """A one-seed cell has no std, so it is left out of ρ: its performance rank must not shift the others'."""
    trials = pd.DataFrame(_rows({("x", "T1"): [.80, .81, .82], ("y", "T1"): [.60, .70, .80], ("z", "T1"): [.99],
                                 ("x", "T2"): [.80, .81, .82], ("y", "T2"): [.60, .70, .80]}))
    assert analyze(trials).summary["spearman"]["rho"] == pytest.approx(1.0)


def test_spearman_is_not_biased_by_tasks_with_fewer_cells():
    """Raw ranks 1..k pooled over tasks of unequal k correlate by themselves: a task with 2 cells has ranks 1-2 on
    both axes, one with 10 has 1-10. On random cells (no correlation in any task) ρ averaged 0.43 for tasks of 10,
    10, 3, 3, 2, 2, 2 cells, and scipy's p fell below 0.05 in most draws."""
    from dashboards.analysis import spearman

    rng, ks = np.random.default_rng(0), [10, 10, 3, 3, 2, 2, 2]
    rhos = [spearman(pd.DataFrame({"task": np.repeat([f"T{i}" for i in range(len(ks))], ks),
                                   "mean": rng.random(sum(ks)), "std": rng.random(sum(ks))}))["rho"]
            for _ in range(40)]
    assert abs(np.mean(rhos)) < 0.1, np.mean(rhos)  # s.e. of the mean ≈ 0.03



def test_seeds_enough_leaves_a_method_with_no_std_unranked_without_warnings():
    """z has one seed: no std in any subset, so no rank (numpy warned "Mean of empty slice" into the user's run)."""
    trials = pd.DataFrame(_rows({("x", "T1"): [.80, .81, .82], ("y", "T1"): [.60, .70, .80], ("z", "T1"): [.99]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seeds = analyze(trials).seeds
    assert seeds[seeds["method"] == "z"][["mean_rank", "rank_p10", "rank_p90"]].isna().all().all()
    assert seeds[seeds["method"] != "z"]["mean_rank"].notna().all()

def test_a_partly_collapsed_cell_keeps_its_std_and_a_constant_guess_at_the_majority_is_a_collapse():
    """Two of x's three seeds predicted one class: said beside "most stable" as a count (the cell keeps its std;
    failed seeds are instability, and here the third seed scored near them). Without the share recorded, equal
    scores at the majority class are a collapse; above it, stability."""
    trials = pd.DataFrame(_rows({("x", "T"): [.50, .50, .52], ("y", "T"): [.6, .7, .8]}))
    trials["test_top_class_share"] = np.where(trials["method"] == "x", 1.0, 0.6)
    trials.loc[(trials["method"] == "x") & (trials["seed"] == 2), "test_top_class_share"] = 0.9
    got = answer(analyze(trials), trials)
    assert got["most_stable"] == "x" and got["lines"][-1].endswith(
        "2 of its seeds predicted one class for every test example)"), got["lines"]
    flat = pd.DataFrame(_rows({("x", "T"): [.50, .50, .50], ("y", "T"): [.6, .7, .8]}))
    flat["majority_test_score"] = 0.5
    got = answer(analyze(flat), flat)
    assert got["most_stable"] == "y" and ("not ranked on stability, its std there no measure of stability: x "
                                          "(collapsed to a constant guess on T)") in got["lines"], got["lines"]
    flat["majority_test_score"] = 0.4
    assert answer(analyze(flat), flat)["most_stable"] == "x"


def test_a_method_with_one_seed_on_a_task_has_no_average_std_and_is_not_the_most_stable(tmp_path):
    """x's noisy task kept one seed (the others failed): the mean of its task stds skipped that task, so x's AVG
    std covered only its calm task and x was "most stable"."""
    trials = pd.DataFrame(_rows({("x", "calm"): [.80, .80, .81], ("x", "noisy"): [.5],
                                 ("y", "calm"): [.70, .75, .80], ("y", "noisy"): [.40, .55, .70]})
                          + _rows({("x", "noisy"): [None, None]}, status="FAILED"))
    res = analyze(trials)
    avg = res.table[res.table["task"] == "AVG"].set_index("method")
    assert pd.isna(avg.loc["x", "std"]) and avg.loc["y", "std"] == pytest.approx((0.05 + 0.15) / 2)
    got = answer(res, trials)
    assert got["most_stable"] == "y", got["lines"]
    assert "not ranked on stability, one finished seed on some task: x (noisy)" in got["lines"], got["lines"]
    seeds = res.seeds[res.seeds["n_seeds"] == 3].set_index("method")
    assert pd.isna(seeds.loc["x", "mean_rank"]) and seeds.loc["y", "mean_rank"] == 1
    from dashboards.report import build_report

    trials.to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "report").read_text()
    assert '<span class="n">no std: one seed on noisy</span>' in page
    # x has no all-seed rank: left out of Kendall's τ, which the others still get (it was None for every n)
    trials = pd.concat([trials, pd.DataFrame(_rows({("z", "calm"): [.60, .70, .80], ("z", "noisy"): [.4, .5, .6],
                                                    ("w", "calm"): [.60, .62, .64], ("w", "noisy"): [.5, .6, .7]}))])
    tau = analyze(trials).summary["seeds_enough"]["kendall_tau"]
    assert tau["3"] == pytest.approx(1.0) and tau["2"] is not None, tau


def test_when_no_method_has_a_std_on_every_task_the_answer_says_none_is_most_stable():
    trials = pd.DataFrame(_rows({("a", "x"): [.5, .6, .7], ("a", "y"): [.5], ("b", "x"): [.6, .7, .8],
                                 ("b", "y"): [.6]}))
    got = answer(analyze(trials), trials)
    assert got["most_stable"] is None and "not ranked on stability, one finished seed on some task: a (y); b (y)" \
        in got["lines"] and got["lines"][-1].startswith("most stable on average: none ranked"), got["lines"]


def test_a_score_column_of_objects_with_a_none_is_read_as_numbers():
    """A hand-made or --trials table whose test_score holds None is object dtype: ttest_rel failed on it."""
    trials = pd.DataFrame(_rows({("a", "x"): [.5, .6, .7], ("b", "x"): [.6, .7, .8]}))
    trials["test_score"] = trials["test_score"].astype(object)
    trials.loc[0, "test_score"] = None
    res = analyze(trials)
    assert res.table.set_index(["method", "task"]).loc[("a", "x"), "n"] == 2 and len(res.summary["unscored"]) == 1


def test_a_finished_trial_without_a_score_is_left_out_and_counted(tmp_path):
    """A FINISHED row whose score could not be read made its cell "nan ± nan" and the method's AVG an average
    over its other tasks: it ranked first."""
    trials = pd.DataFrame(_rows({("x", "T1"): [.90, .91, .92], ("x", "T2"): [.30, .31, np.nan],
                                 ("y", "T1"): [.80, .81, .82], ("y", "T2"): [.60, .61, .62]}))
    trials["trial_key"] = [f"{r.method}-{r.task}-{r.seed}" for r in trials.itertuples()]
    res = analyze(trials)
    cells = res.table.set_index(["method", "task"])
    assert cells.loc[("x", "T2"), "n"] == 2 and cells.loc[("x", "T2"), "mean"] == pytest.approx(.305)
    assert res.summary["n_finished"] == 11 and res.summary["unscored"] == ["x-T2-2"]
    got = answer(res, trials)
    assert got["best"] == "y" and "left out, FINISHED with no test score: 1 trial(s): x-T2-2" in got["lines"]
    from dashboards.report import build_report

    trials.to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "report").read_text()
    assert "11 of 12 trials FINISHED with a test score (1 more FINISHED without one, left out" in page
    assert "nan" not in page.split("<h2>Summary</h2>")[0] and f"<td>{UNSCORED}</td>" in page
    trials.loc[trials["method"] == "y", "test_score"] = np.nan  # a method none of whose trials has a score
    trials.to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "report").read_text()
    assert f"0 of 3 scored (3 {UNSCORED})" in page
    assert f"not ranked, no finished trial: y (6 {UNSCORED})" in answer(analyze(trials), trials)["lines"]


def test_the_parent_runs_best_on_average_is_the_answers_best():
    """best_method.AVG took the top AVG row, whose average may leave out a task the method never finished."""
    from dashboards.analysis import best_per_task

    trials = pd.DataFrame(_rows({("x", "E"): [.90, .91, .92], ("y", "E"): [.88, .89, .90],
                                 ("y", "H"): [.60, .61, .62]})
                          + _rows({("x", "H"): [None] * 3}, status="FAILED"))
    res = analyze(trials)
    best = best_per_task(res)
    assert best["AVG"] == ("y", pytest.approx((.89 + .61) / 2)) and answer(res, trials)["best"] == "y"
    assert best["E"] == ("x", pytest.approx(.91)) and best["H"] == ("y", pytest.approx(.61))


def test_rho_without_the_cells_a_collapse_made_stable():
    """A cell whose seeds all predicted one class has a std near 0 (stability rank 1) and a low mean: such cells
    alone can make ρ negative. The summary counts them and gives ρ without them."""
    scores = {("a", "T1"): [.50, .50, .50], ("b", "T1"): [.70, .72, .74], ("c", "T1"): [.60, .65, .70],
              ("a", "T2"): [.50, .50, .50], ("b", "T2"): [.70, .72, .74], ("c", "T2"): [.60, .65, .70],
              ("a", "T3"): [.80, .81, .82], ("b", "T3"): [.60, .65, .70], ("c", "T3"): [.50, .60, .70]}
    trials = pd.DataFrame(_rows(scores))
    trials["test_top_class_share"] = np.where((trials["method"] == "a") & (trials["task"] != "T3"), 1.0, 0.6)
    rho = analyze(trials).summary["spearman"]
    assert rho["n_pairs"] == 9 and rho["n_pairs_one_class"] == 2
    kept = pd.DataFrame([{"task": t, "std": np.std(v, ddof=1), "mean": np.mean(v)} for (m, t), v in scores.items()
                         if not (m == "a" and t != "T3")])
    kept["perf"] = kept.groupby("task")["mean"].rank(ascending=False)
    kept["stab"] = kept.groupby("task")["std"].rank()
    assert rho["without_one_class"]["rho"] == pytest.approx(stats.spearmanr(kept["stab"], kept["perf"]).statistic)
    assert rho["without_one_class"]["n_pairs"] == 7 and rho["rho"] != rho["without_one_class"]["rho"]


def test_most_stable_says_when_its_std_is_over_fewer_seeds_than_the_others():
    """x lost a seed to a failure on T2: its std there is over 2 seeds, the others' over 3 (the lost one may have
    been x's unstable one)."""
    trials = pd.DataFrame(_rows({("x", "T1"): [.80, .80, .81], ("x", "T2"): [.50, .51],
                                 ("y", "T1"): [.70, .75, .80], ("y", "T2"): [.40, .55, .70]})
                          + _rows({("x", "T2"): [None]}, status="FAILED"))
    got = answer(analyze(trials), trials)
    assert got["most_stable"] == "x" and "a std over as few as 2 of up to 3 seeds" in got["lines"][-1], got["lines"]
    full = pd.DataFrame(_rows({("x", "T1"): [.80, .80, .81], ("y", "T1"): [.70, .75, .80]}))
    assert "as few as" not in answer(analyze(full), full)["lines"][-1]


def test_the_answer_says_how_many_trials_it_stands_on_when_some_did_not_finish():
    """With a finished seed for every method the answer named no failed trial: "best on average: sam" stood on 2 of
    sam's 3 seeds, and nothing said so."""
    trials = pd.DataFrame(_rows({("sam", "T1"): [.8, .9, .7], ("bitfit", "T1"): [.6, .7, .65]}))
    trials.loc[(trials["method"] == "sam") & (trials["seed"] == 1), ["status", "test_score"]] = ["FAILED", None]
    trials.loc[len(trials)] = {**trials.iloc[0].to_dict(), "seed": 3, "status": "STOPPED", "test_score": None}
    lines = answer(analyze(trials), trials)["lines"]
    assert lines[0] == "scored 5 of 7 trials; not scored: 1 FAILED, 1 STOPPED (sam: 2 of 4 scored)", lines
    whole = pd.DataFrame(_rows({("sam", "T1"): [.8, .9, .7], ("bitfit", "T1"): [.6, .7, .65]}))
    assert not any(line.startswith("scored ") for line in answer(analyze(whole), whole)["lines"])


def cb_trials(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "base_method": m, "task": "CB", "seed": s, "sparsity": None,
                          "perturbation": None, "status": "FINISHED", "test_score": v, "majority_test_score": 0.1}
                         for m, vs in values.items() for s, v in enumerate(vs)])


def test_equal_scores_in_another_seed_order_tie_exactly():
    """Summed in another order, 0.6 + 0.7 + 0.8 and 0.8 + 0.6 + 0.7 differ in the last bit (0.7000000000000001
    against 0.6999999999999998): ranks 1 / 2.5 / 2.5 for three methods with the same scores, and a "leader"."""
    df = cb_trials({"full": [0.6, 0.7, 0.8], "bitfit": [0.8, 0.6, 0.7], "sam": [0.7, 0.8, 0.6]})
    assert len({sum(v) for v in ([0.6, 0.7, 0.8], [0.8, 0.6, 0.7], [0.7, 0.8, 0.6])}) > 1  # the premise
    table = analyze(df).table
    cells = table[table["task"] == "CB"]
    assert cells["perf_rank"].tolist() == [2.0] * 3 and cells["stab_rank"].tolist() == [2.0] * 3
    assert cells["mean"].nunique() == 1 and table.loc[table["task"] == "AVG", "mean"].nunique() == 1


def test_a_constant_cell_has_a_std_of_exactly_zero():
    """13/56 three times has a float std of 3.4e-17: ranked less stable than another constant cell (0)."""
    df = cb_trials({"full": [13 / 56] * 3, "sam": [14 / 56] * 3, "bitfit": [0.2, 0.25, 0.3]})
    cells = analyze(df).table.query("task == 'CB'").set_index("method")
    assert cells.loc["full", "std"] == 0 and cells.loc["sam", "std"] == 0
    assert cells.loc["full", "stab_rank"] == cells.loc["sam", "stab_rank"] == 1.5


def test_the_answer_says_a_tie_for_best_rather_than_naming_one():
    """Equal averages: it named the alphabetical first "best on average" with a "lead" of −0.0 over the other,
    while the claims said the two were tied."""
    df = cb_trials({"full": [0.2, 0.3, 0.4], "bitfit": [0.8, 0.6, 0.7], "sam": [0.7, 0.8, 0.6]})
    said = answer(analyze(df), df)
    assert said["best"] == "bitfit" and said["tied"] == ["bitfit", "sam"]
    from dashboards.analysis import best_per_task

    assert best_per_task(analyze(df))["AVG"] == ("bitfit, sam", pytest.approx(0.7))  # the parent run's tag
    assert said["lines"][0].startswith("best on average: bitfit and sam, tied at 70.0 (test score ×100"), said["lines"]
    assert said["lines"][1].startswith("the tied pair, paired: bitfit − sam on the average: +0.0 points"), said["lines"]
    # equal stds too (each method's seeds are 0.1 apart): named together, not the alphabetical first
    assert said["most_stable"] == "bitfit, full, sam" and said["lines"][-1] == (
        "most stable on average: bitfit and full and sam, tied (mean per-task std 10.0, test score ×100)"), said["lines"]


def test_a_lead_over_fewer_seeds_than_the_table_averages_says_so():
    """The lead is paired by seed, so a seed that lacks a cell drops out of it: the line gave +3.0 points where
    the table's averages differ by 2.3, without saying it counted fewer seeds."""
    scores = {("a", "T1"): [.80, .70, .90], ("b", "T1"): [.70, .65, .80],
              ("a", "T2"): [.60, .70], ("b", "T2"): [.50, .66, .59]}  # a's seed 2 lacks T2
    df = pd.DataFrame(_rows(scores))
    said = answer(analyze(df), df)
    lead = said["lead"]
    assert lead["n"] == 2 and lead["n_dropped"] == 1
    assert "over the 2 of 3 seeds with a score on every task; the table's averages differ by +" in lead["answer"]


def test_a_method_collapsed_on_a_task_is_not_the_most_stable():
    """Every seed of diffprune predicted the majority class: std 0, so "most stable on average: diffprune", and
    the parent run's most_stable_method tag said so without the console's caveat."""
    df = cb_trials({"full": [.60, .70, .80], "sam": [.65, .70, .76], "diffprune": [.40, .40, .40]})
    df["test_top_class_share"] = np.where(df["method"] == "diffprune", 1.0, 0.6)
    said = answer(analyze(df), df)
    assert said["most_stable"] == "sam", said["lines"]
    assert ("not ranked on stability, its std there no measure of stability: diffprune (collapsed to a constant guess on CB)"
            in said["lines"])


def test_the_answer_counts_the_trials_that_diverged_after_an_evaluation():
    """Such a trial ends FINISHED with its best state before the nan and counts like any other: said, so that a
    reader can look at them."""
    df = cb_trials({"full": [.60, .70, .80], "sam": [.65, .70, .76]})
    df["trial_key"] = [f"k{i}" for i in range(len(df))]
    df["diverged_at_step"] = [None, 300, None, None, None, 120]
    said = answer(analyze(df), df)
    assert ("2 trial(s) diverged (nan loss) after an evaluation and count with their best state before it: "
            "full (1), sam (1)") in said["lines"], said["lines"]


def test_a_best_average_at_the_majority_class_is_said_to_be_no_answer():
    """Every method collapsed to the majority class (a learning rate of 1): "best on average: full and sam, tied at
    36.1" named winners of a sweep where nothing learned."""
    df = cb_trials({"full": [.361] * 3, "sam": [.361] * 3, "bitfit": [.30, .32, .34]})
    df["majority_test_score"] = 0.361
    said = answer(analyze(df), df)
    assert ("the best average is at or below the majority-class score (36.1): no method learned these tasks here "
            "(a learning rate too high or too low, or too few steps, are the usual causes)") in said["lines"], said
    df = cb_trials({"full": [.6, .7, .8], "sam": [.65, .7, .75]})
    assert not any("majority-class score" in line for line in answer(analyze(df), df)["lines"])


def test_the_seeds_enough_ranking_leaves_out_a_method_collapsed_on_a_task():
    """The seeds-enough figure ranked diffprune (every seed one class, std 0) first at every n: the "has the
    ranking settled?" answer rested on a collapse, which the answer no longer ranks on stability."""
    df = cb_trials({"full": [.60, .70, .80], "sam": [.65, .70, .76], "diffprune": [.40, .40, .40]})
    df["test_top_class_share"] = np.where(df["method"] == "diffprune", 1.0, 0.6)
    res = analyze(df)
    assert set(res.seeds["method"]) == {"full", "sam"}
    enough = res.summary["seeds_enough"]
    assert enough["all_seed_ranks"] == {"full": 2.0, "sam": 1.0} and enough["left_out"] == {
        "diffprune": "collapsed to a constant guess on CB"}


def test_seeds_enough_with_every_method_collapsed_says_why_it_ranks_none():
    """Left out as collapsed, no method was left to rank: the analysis failed on an empty cube ("cannot reshape
    array of size 0"), and a sweep's end wrote no analysis and no report (a tiny model's one-trial sweep)."""
    df = cb_trials({"bitfit": [.40, .40, .40], "sam": [.40, .40, .40]})
    df["test_top_class_share"] = 1.0
    enough = analyze(df).summary["seeds_enough"]
    assert enough["left_out"] == {m: "collapsed to a constant guess on CB" for m in ("bitfit", "sam")}
    assert enough["reason"].endswith("ranked on stability")
    one = cb_trials({"bitfit": [.40]})
    one["test_top_class_share"] = 1.0
    assert analyze(one).summary["seeds_enough"]["kendall_tau"] == {}


def test_a_recorded_share_overrules_the_equal_scores_fallback():
    """Equal scores at the majority stand in for a collapse only where the share went unrecorded: with shares of
    0.6 recorded, "collapsed to one class" contradicted the data (a second review); it is at chance instead."""
    from dashboards.analysis import not_ranked_on_stability

    flat = pd.DataFrame(_rows({("x", "T"): [.50, .50, .50], ("y", "T"): [.6, .7, .8]}))
    flat["majority_test_score"] = 0.5
    flat["test_top_class_share"] = 0.6
    cells = analyze(flat).table.query("task != 'AVG'")
    assert not_ranked_on_stability(cells, {"T": 0.5}) == {
        "x": "most seeds not above the majority class on T, every task it has"}
    flat = flat.drop(columns="test_top_class_share")
    cells = analyze(flat).table.query("task != 'AVG'")
    assert not_ranked_on_stability(cells, {"T": 0.5}) == {"x": "collapsed to a constant guess on T"}


def test_two_seeds_get_no_paired_test_and_no_verdict():
    """From a new user's trial: over 2 seeds whose differences were 0.030214 and 0.030250 (CB's scores move in
    steps), the lead was "+3.0 points, 95% CI [+3.0, +3.0], p = 0.000372: a significant difference" and
    pair_summary counted a loss; a t-test over 2 has the variance of one difference."""
    scores = {("a", "T"): [.60, .70], ("b", "T"): [.569786, .66975]}
    res = analyze(pd.DataFrame(_rows(scores)))
    row = res.tests.iloc[0]
    assert row["n"] == 2 and pd.isna(row["t_p_value"]) and pd.isna(row["wilcoxon_p_value"])
    assert res.pairs.iloc[0][["wins", "ties", "losses"]].tolist() == [0, 1, 0]
    lead = answer(res, pd.DataFrame(_rows(scores)))["lead"]
    assert "p" not in lead and "no paired test (2 replicate(s) with every task: too few, a test needs 3)" in \
        lead["answer"], lead


def test_a_one_method_sweep_says_that_best_and_most_stable_compare_nothing():
    """From a new user's trial: a sweep of bitfit alone printed "best on average: bitfit" and "most stable on
    average: bitfit" as if it had won something."""
    df = pd.DataFrame(_rows({("bitfit", "T"): [.5, .6, .7]}))
    lines = answer(analyze(df), df)["lines"]
    assert "bitfit is the only method ranked here: best and most stable compare it with nothing" in lines, lines
    two = pd.DataFrame(_rows({("bitfit", "T"): [.5, .6, .7], ("sam", "T"): [.5, .6, .8]}))
    assert not any("only method" in line for line in answer(analyze(two), two)["lines"])


def test_status_counts_say_trial_for_one():
    from dashboards.analysis import status_counts

    one = pd.DataFrame([{"status": "FAILED", "test_score": None}])
    assert status_counts(one) == "1 trial: 1 FAILED"
    assert status_counts(pd.concat([one, one.assign(status="PENDING")])) == "2 trials: 1 FAILED, 1 PENDING"


def test_a_paired_comparison_over_perturbation_splits_counts_runs_not_seeds():
    """With 3 seeds × 2 splits the test pairs 6 runs; it said "over 6 seeds" (the perturbation sweep's 3 seeds ×
    10 splits read as "30 seeds")."""
    from dashboards.analysis import paired_on_average

    rows = [{"method": m, "task": t, "seed": s, "perturbation": k, "status": "FINISHED",
             "test_score": v + s / 50 + k / 70 + (m == "a") * (s * k) / 300}
            for m, v in {"a": .7, "b": .6}.items() for t in ("T1", "T2") for s in range(3) for k in range(2)]
    said = paired_on_average(pd.DataFrame(rows), "a", "b", ["T1", "T2"])["answer"]
    assert "paired t-test over 6 runs (seed × split)" in said and "seeds" not in said, said
    plain = paired_on_average(pd.DataFrame(_rows({("a", "T"): [.7, .8, .75], ("b", "T"): [.6, .65, .7]})), "a", "b",
                              ["T"])["answer"]
    assert "paired t-test over 3 seeds" in plain, plain


def test_rho_is_none_where_no_task_ranks_two_distinct_cells():
    """T1: a and b tie, T2 has one cell: raw ranks vary (1.5, 1.5, 1) but within their tasks every cell is in the
    middle, so ρ has nothing to correlate. It came out NaN, with a permutation p of 0.0001 beside it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sp = analyze(pd.DataFrame(_rows({("a", "T1"): [.5, .6, .7], ("b", "T1"): [.5, .6, .7],
                                         ("a", "T2"): [.5, .6, .7]}))).summary["spearman"]
    assert sp["rho"] is None and sp["permutation_p_value"] is None and "within a task" in sp["reason"], sp
