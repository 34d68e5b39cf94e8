"""Ours beside a published table, and the paper's claims answered, on hand-made tables whose answers are known
(test_analysis's means and stds, three seeds each) and a published table written here."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dashboards.analysis import analyze, holm
from dashboards.paper import compare, markdown, name_key, read_published
from tests.test_analysis import MEANS, STDS, hand_made

# published (×100): its own names, an AVG over tasks we did not run, a task we did not run, a method we did not run
PUBLISHED = [("FullTuning", "CB", 88.0, 2.0), ("FullTuning", "RTE", 76.0, 2.0), ("FullTuning", "COPA", 67.0, 4.0),
             ("FullTuning", "AVG", 10.0, 10.0),
             ("SAM", "CB", 90.0, 1.0), ("SAM", "RTE", 78.0, 3.0), ("SAM", "COPA", 68.0, 2.0),
             ("SAM", "AVG", 10.0, 10.0),
             ("LoRA", "CB", 89.0, 1.5), ("LoRA", "RTE", 75.0, 1.0),
             ("Bitfit", "CB", 87.0, 3.0), ("Bitfit", "RTE", 74.0, 1.0),
             ("Adapter", "CB", 85.0, 2.5), ("Adapter", "RTE", 73.0, 2.5)]
# sam-global: a variant of sam, CB 0.02 below sam, RTE 0.01 above, about sam's spreads (not exactly: the paired
# differences must vary for a t-test)
VARIANT = {"CB": 0.83, "RTE": 0.73}
MAJORITY = {"CB": 0.5, "RTE": 0.55}  # below every hand-made cell's lowest seed: each learned its task


def trials():
    rows = []
    for task, mu in VARIANT.items():
        sigma = STDS[("sam", task)]
        for seed, value in enumerate([mu - sigma - 0.0005, mu + 0.001, mu + sigma - 0.0005]):
            rows.append({"method": "sam-global", "base_method": "sam", "task": task, "seed": seed,
                         "sparsity": 0.005, "perturbation": None, "status": "FINISHED", "test_score": value})
    df = hand_made(rows)
    df["base_method"] = df["base_method"].fillna(df["method"])
    df["majority_test_score"] = df["task"].map(MAJORITY)
    return df


@pytest.fixture
def published(tmp_path):
    path = tmp_path / "table1.csv"
    pd.DataFrame(PUBLISHED, columns=["method", "task", "mean", "std"]).to_csv(path, index=False)
    return read_published(path)


@pytest.fixture
def comparison(published):
    df = trials()
    return compare(df, analyze(df), published)


def test_names_match_blind_to_case_and_the_papers_suffixes():
    assert [name_key(n) for n in ("FullTuning", "MagPruning", "DiffPruning", "ChildPruning", "Bitfit", "MixOut",
                                  "LoRA", "SAM")] == ["full", "magprune", "diffprune", "childprune", "bitfit",
                                                      "mixout", "lora", "sam"]
    assert name_key("sam-global") != name_key("sam")


def test_side_by_side_on_shared_tasks_with_the_published_avg_recomputed(comparison):
    t = comparison.table.set_index(["method", "task"])
    c = comparison.claims
    assert c["tasks"] == ["CB", "RTE"] and c["published_methods_not_run"] == ["Adapter"]
    assert c["methods_not_published"] == ["sam-global"] and c["published_tasks_not_run"] == ["COPA"]
    assert t.loc[("sam", "CB"), "paper_method"] == "SAM" and t.loc[("bitfit", "RTE"), "paper_method"] == "Bitfit"
    for (method, task), mu in MEANS.items():
        assert t.loc[(method, task), "mean"] == pytest.approx(100 * mu)
        assert t.loc[(method, task), "std"] == pytest.approx(100 * STDS[(method, task)])
    # the published AVG is over CB and RTE, not its own AVG row (10.0) nor COPA
    assert t.loc[("full", "AVG"), "paper_mean"] == pytest.approx((88 + 76) / 2)
    assert t.loc[("sam", "AVG"), "paper_std"] == pytest.approx((1 + 3) / 2)
    assert t.loc[("sam", "AVG"), "mean"] == pytest.approx(100 * (MEANS[("sam", "CB")] + MEANS[("sam", "RTE")]) / 2)
    assert np.isnan(t.loc[("sam-global", "CB"), "paper_mean"])
    assert t.loc[("lora", "RTE"), "mean_diff"] == pytest.approx(71 - 75)
    # ranks among the four methods both hold; sam-global (not published) takes no rank
    assert t.loc[("sam", "CB"), "perf_rank_shared"] == 1 and t.loc[("sam", "CB"), "paper_perf_rank_shared"] == 1
    assert t.loc[("bitfit", "CB"), "paper_perf_rank_shared"] == 4
    assert t.loc[("lora", "RTE"), "paper_stab_rank_shared"] == 1.5
    assert np.isnan(t.loc[("sam-global", "CB"), "perf_rank_shared"])
    assert list(comparison.table["method"].drop_duplicates()) == ["full", "sam", "lora", "bitfit", "sam-global"]
    assert c["seeds_per_cell"] == 3 and c["majority"] == {"CB": pytest.approx(50.0), "RTE": pytest.approx(55.0)}


def scaled(a, b):
    """The pooled Brown–Forsythe input written out: |x − cell median| / median of both cells' deviations."""
    da, db = np.abs(a - np.median(a)), np.abs(b - np.median(b))
    scale = np.median(np.concatenate([da, db]))
    return da / scale, db / scale


def test_stability_against_full_per_method_over_all_tasks(comparison):
    claim = comparison.claims["other_methods_vs_full_std"]
    df = trials()
    df = df[df["status"] == "FINISHED"]
    # AVG stds ×100: full 2.5, sam 1.0, lora 4.5, bitfit 4.0, sam-global ~1.0
    assert claim["methods_below"] == ["sam", "sam-global"] and claim["n_methods"] == 4
    # the published AVG stds: full 2.0, SAM 2.0 (equal: not below), LoRA 1.25, Bitfit 2.0
    assert claim["paper_methods_below"] == ["lora"] and claim["paper_n_methods"] == 3
    by_method = {r["method"]: r for r in claim["methods"]}
    raw = {}
    for method in ("sam", "lora", "bitfit", "sam-global"):
        za, zb = [], []
        for task in ("CB", "RTE"):
            a = df[(df["method"] == method) & (df["task"] == task)].sort_values("seed")["test_score"].to_numpy() * 100
            b = df[(df["method"] == "full") & (df["task"] == task)].sort_values("seed")["test_score"].to_numpy() * 100
            x, y = scaled(a, b)
            za.append(x)
            zb.append(y)
        raw[method] = stats.ttest_ind(np.concatenate(za), np.concatenate(zb), equal_var=False).pvalue
        assert by_method[method]["p"] == pytest.approx(raw[method]) and by_method[method]["tasks_tested"] == 2
    assert [by_method[m]["p_holm"] for m in raw] == pytest.approx(holm(list(raw.values())))
    # per cell: described, not counted as significant; the ratio's interval is the F interval
    assert claim["cells_below"] == 5 and claim["n_cells"] == 8
    cell = next(c for c in claim["cells"] if (c["method"], c["task"]) == ("lora", "CB"))
    f = (5 / 3) ** 2
    assert cell["std_ratio"] == pytest.approx(5 / 3)
    assert cell["ratio_ci_low"] == pytest.approx(np.sqrt(f / stats.f.ppf(0.975, 2, 2)))
    assert cell["ratio_ci_high"] == pytest.approx(np.sqrt(f / stats.f.ppf(0.025, 2, 2)))
    assert "2 of 4 methods have a smaller average std than full tuning (sam, sam-global)" in claim["answer"]
    assert "The published table on the same tasks: 1 of 3 methods" in claim["answer"]
    assert "full's stability rank among the methods both tables hold: CB 3 of 4, RTE 2 of 4" in claim["answer"]


def test_two_seeds_against_two_get_no_spread_test(published):
    """Brown–Forsythe on 2 against 2 has no within-group variance: scipy says p ≈ 1e-29 ("significant")."""
    df = trials()
    df = df[df["seed"] < 2]
    claim = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]
    assert claim["cells"] and all(c["p"] is None for c in claim["cells"])
    assert all(m["p"] is None and m["tasks_tested"] == 0 for m in claim["methods"])
    assert claim["significantly_smaller"] == [] == claim["significantly_larger"]
    # and it says no test ran, where it said "tested ..., 0 significantly smaller ... Holm over the 4 methods"
    assert "; no test of spread: it needs ≥ 3 seeds per cell on both sides, and no method has them." in \
        claim["answer"] and "tested over" not in claim["answer"]


def test_a_collapse_to_the_majority_class_is_not_counted_as_stability(published):
    df = trials()
    df.loc[(df["method"] == "bitfit") & (df["task"] == "RTE"), "test_score"] = 0.55  # the majority score, every seed
    claim = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]
    cell = next(c for c in claim["cells"] if (c["method"], c["task"]) == ("bitfit", "RTE"))
    assert cell["std"] == 0 and cell["below"] and cell["learned_nothing"]
    assert claim["left_out"] == {"bitfit": "collapsed to a constant guess on RTE"} and "bitfit" not in claim["methods_below"]
    assert ("(left out, its std no measure of stability: bitfit, collapsed to a constant guess on RTE, average std 1.0 "
            "against full's 2.5)") in claim["answer"]
    lora_rte = (df["method"] == "lora") & (df["task"] == "RTE")
    df.loc[lora_rte, "test_score"] = [0.53, 0.55, 0.54]  # not above the majority, varying: said per cell, counted
    claim = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]
    cell = next(c for c in claim["cells"] if (c["method"], c["task"]) == ("lora", "RTE"))
    assert cell["learned_nothing"] and cell["below"] and claim["cells_below_learned_nothing"] == 1
    assert "lora" not in claim["left_out"] and "lora" in [r["method"] for r in claim["methods"] if r["p"] is not None]
    assert ("1 of them where its cell or full's collapsed or is at chance"
            in claim["answer"])


def paired(df, a, b, task=None):
    """a − b per seed ×100, on one task or on the average over CB and RTE."""
    df = df[df["status"] == "FINISHED"]
    tasks = [task] if task else ["CB", "RTE"]
    x = df[(df["method"] == a) & df["task"].isin(tasks)].groupby("seed")["test_score"].mean() * 100
    y = df[(df["method"] == b) & df["task"].isin(tasks)].groupby("seed")["test_score"].mean() * 100
    return x, y


def test_best_on_average_and_against_whom(comparison):
    claim = comparison.claims["best_on_average"]
    # AVG (×100): sam 78.5, sam-global 78.0, full 75.0, lora 74.5, bitfit 73.0
    assert [r["method"] for r in claim["ranking"]] == ["sam", "sam-global", "full", "lora", "bitfit"]
    assert claim["leader"] == "sam" and claim["place"] == 1 and claim["n_methods"] == 5
    vs = claim["against"]
    x, y = paired(trials(), "sam", "sam-global")
    expected = stats.ttest_rel(x, y)
    assert vs["b"] == "sam-global" and vs["n"] == 3 and vs["avg_diff"] == pytest.approx((x - y).mean())
    assert vs["p"] == pytest.approx(expected.pvalue)
    assert (vs["ci_low"], vs["ci_high"]) == pytest.approx(tuple(expected.confidence_interval()))
    per_task = [stats.ttest_rel(*paired(trials(), "sam", "sam-global", t)).pvalue for t in ("CB", "RTE")]
    assert [r["p"] for r in vs["tasks"]] == pytest.approx(per_task)
    assert [r["p_holm"] for r in vs["tasks"]] == pytest.approx(holm(per_task))  # over its 2 tasks, not every pair
    assert claim["paper_leader"] == "sam" and claim["paper_place"] == 1
    assert claim["answer"].startswith("sam leads the average (78.5), ahead of sam-global (78.0); sam − sam-global "
                                      "on the average: +0.5 points, 95% CI [")


def test_ties_share_a_place_and_are_said(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("method,task,mean,std\nFullTuning,CB,88.9,2\nSAM,CB,88.9,1\nLoRA,CB,80,1\n")
    df = trials()
    claim = compare(df, analyze(df), read_published(path)).claims["best_on_average"]
    assert claim["paper_leader"] == ["full", "sam"] and claim["paper_place"] == 1
    assert "the same tasks and methods: full and sam lead, tied, sam is 1 of 3" in claim["answer"]


def test_spearman_ours_and_the_published_tables_on_the_same_cells(comparison):
    df = trials()
    claim = comparison.claims["stability_vs_performance"]
    assert claim["ours"]["rho"] == pytest.approx(analyze(df).summary["spearman"]["rho"])
    # the published table's ρ by hand: ranks per task among full, sam, lora, bitfit
    pub = pd.DataFrame(PUBLISHED, columns=["method", "task", "mean", "std"])
    pub = pub[pub["method"].isin(["FullTuning", "SAM", "LoRA", "Bitfit"]) & pub["task"].isin(["CB", "RTE"])]
    perf = pub.groupby("task")["mean"].rank(ascending=False)
    stab = pub.groupby("task")["std"].rank(ascending=True)
    assert claim["paper_same_cells"]["rho"] == pytest.approx(stats.spearmanr(stab, perf).statistic)
    assert claim["paper_same_cells"]["n_pairs"] == 8 == claim["ours_same_cells"]["n_pairs"]


def test_a_variant_against_its_base_method(comparison):
    claim = comparison.claims["variants_vs_base"]["sam-global"]
    df = trials()
    assert claim["base"] == "sam"
    for row in claim["tasks"]:
        x, y = paired(df, "sam-global", "sam", row["task"])
        assert row["mean_diff"] == pytest.approx((x - y).mean())
    x, y = paired(df, "sam-global", "sam")
    assert claim["avg_diff"] == pytest.approx((x - y).mean())
    assert claim["p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)


def test_what_is_left_out_is_said(published):
    df = trials()
    no_base = df[df["method"] != "sam"]
    c = compare(no_base, analyze(no_base), published).claims
    assert c["variants_vs_base"]["sam-global"]["answer"] == ("no comparison: sam is not in this sweep (add it to "
                                                             "grid.methods to answer this)")
    assert "sam is not in this sweep, so it has no place" in c["best_on_average"]["answer"]
    failed_base = df.copy()
    failed_base.loc[failed_base["method"].isin(["sam", "full"]), "status"] = "FAILED"
    c = compare(failed_base, analyze(failed_base), published).claims
    assert c["variants_vs_base"]["sam-global"]["answer"] == "no comparison: sam ran here without a finished trial"
    assert c["other_methods_vs_full_std"]["reason"] == "no std to compare with: full ran here without a finished trial"
    assert c["methods_without_a_finished_trial"] == ["full", "sam"]
    assert "Rows of this sweep with no finished trial: full, sam." in markdown(compare(failed_base, analyze(
        failed_base), published))
    failed = df.copy()
    failed.loc[failed["method"] == "lora", "status"] = "FAILED"
    c = compare(failed, analyze(failed), published).claims
    assert c["published_methods_without_a_finished_trial"] == ["LoRA"] and c["published_methods_not_run"] == ["Adapter"]


def test_two_published_names_for_one_of_ours_are_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("method,task,mean,std\nFullTuning,CB,88,2\nFull,CB,87,2\n")
    df = trials()
    with pytest.raises(ValueError, match="published methods Full, FullTuning all match our 'full'; keep one"):
        compare(df, analyze(df), read_published(path))


def test_task_names_match_blind_to_case_and_spaces_after_commas_are_read(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("method, task, mean, std\nFullTuning, rte, 76, 2\nSAM, cb, 90, 1\nSAM, rte, 78, 3\n")
    df = trials()
    c = compare(df, analyze(df), read_published(path))
    assert c.claims["tasks"] == ["RTE", "CB"]  # in the published order
    assert c.table.set_index(["method", "task"]).loc[("sam", "CB"), "paper_mean"] == 90


def test_markdown_and_json(comparison):
    from dashboards.analysis import jsonable

    text = markdown(comparison)
    assert "| method | CB | RTE | AVG |" in text
    assert "| sam | 85.0 ± 1.0 (90.0 ± 1.0) | 72.0 ± 1.0 (78.0 ± 3.0) | 78.5 ± 1.0 (84.0 ± 2.0) |" in text
    assert "| sam-global | 83.0" in text and "**sam-global against sam:**" in text
    assert "The published numbers come from their own model, budget and seeds" in text  # claims.md stands alone
    json.loads(json.dumps(jsonable(comparison.claims), allow_nan=False))  # NaN would not be JSON


@pytest.mark.parametrize("content, says", [
    ("method,task,mean\nSAM,CB,90\n", "lacks the column(s) std (it has method, task, mean)"),
    ("method,task,mean,std\nSAM,CB,ninety,1\n", "the mean of (SAM, CB) 'ninety' is not a number"),
    ("method,task,mean,std\nSAM,CB,90,1\nSAM,CB,91,1\n", "(SAM, CB) is given twice"),
    ("method,task,mean,std\nSAM,CB,90,1\nSAM,RTE,1,2,3,4\n", "is not a CSV table (Error tokenizing data"),
    ("method,task,mean,std\nSAM,CB,90,\n", "the std of (SAM, CB) is empty"),
    ("method,task,mean,std\nSAM,CB,90,-1\n", "the std of (SAM, CB) is negative (-1)"),
    ("method,task,mean,std\nSAM,CB,0.9,0.01\nSAM,RTE,0.7,0.02\n", "every mean is within [-1, 1]; a published table "
                                                                  "gives scores ×100"),
    (b"PAR1\x15\x04\x15\xff\xfe\x00", "is not a CSV table"),
])
def test_a_bad_published_table_is_named(tmp_path, content, says):
    path = tmp_path / "t.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as err:
        read_published(path)
    assert says in str(err.value)


def test_no_shared_task_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("method,task,mean,std\nSAM,WiC,70,1\n")
    df = trials()
    with pytest.raises(ValueError, match=r"no task is in both tables: ours \['CB', 'RTE'\], published \['WiC'\]"):
        compare(df, analyze(df), read_published(path))


def test_analyze_paper_writes_the_comparison_and_refuses_a_bad_table(tmp_path, capsys, monkeypatch):
    from orchestrator.cli import main

    monkeypatch.setenv("RAY_ADDRESS", "")
    path = tmp_path / "trials.parquet"
    trials().to_parquet(path)
    bad = tmp_path / "bad.csv"
    bad.write_text("method,task,score\nSAM,CB,1\n")
    assert main(["analyze", "--trials", str(path), "--paper", str(bad), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--paper" in err and "lacks the column(s) mean, std" in err and not (tmp_path / "a").exists()
    good = tmp_path / "table1.csv"
    pd.DataFrame(PUBLISHED, columns=["method", "task", "mean", "std"]).to_csv(good, index=False)
    assert main(["analyze", "--trials", str(path), "--paper", str(good), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "best on average: sam 78.5" in out and "most stable on average: sam" in out  # the answer, not just paths
    claims = json.loads((tmp_path / "a" / "claims.json").read_text())
    assert claims["best_on_average"]["leader"] == "sam"
    assert pd.read_csv(tmp_path / "a" / "paper_comparison.csv").shape[0] == 5 * 3
    assert (tmp_path / "a" / "claims.md").read_text().startswith("| method |")


def test_a_method_missing_a_shared_task_has_no_average_and_no_place(published):
    df = trials()
    df = df[~((df["method"] == "lora") & (df["task"] == "RTE"))]
    result = compare(df, analyze(df), published)
    t = result.table.set_index(["method", "task"])
    assert np.isnan(t.loc[("lora", "AVG"), "mean"]) and t.loc[("lora", "AVG"), "paper_mean"] == pytest.approx(82)
    assert "lora" not in [r["method"] for r in result.claims["best_on_average"]["ranking"]]
    assert "| lora | 78.0 ± 5.0 (89.0 ± 1.5) | – (75.0 ± 1.0) | – (82.0 ± 1.2) |" in markdown(result)
    assert result.claims["other_methods_vs_full_std"]["n_cells"] == 7  # lora's RTE has no std to compare


def test_the_report_shows_ours_beside_the_published_table(tmp_path, capsys, monkeypatch):
    from orchestrator.cli import main

    monkeypatch.setenv("RAY_ADDRESS", "")
    path = tmp_path / "trials.parquet"
    df = trials()
    df = df[~((df["method"] == "lora") & (df["task"] == "CB") & (df["seed"] == 2))]  # a cell with fewer seeds
    df.to_parquet(path)
    good = tmp_path / "table1.csv"
    pd.DataFrame(PUBLISHED, columns=["method", "task", "mean", "std"]).to_csv(good, index=False)
    assert main(["report", "--trials", str(path), "--paper", str(good), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    section = page[page.index('<section id="published">'):]
    section = section[:section.index("</section>")]
    assert "<td>85.0 ± 1.0<br><span class=\"ci\">paper 90.0 ± 1.0</span></td>" in section
    # the caption's "(n = k)" mark is on the page too (it was in claims.md only), and the caption says "paper"
    assert '75.5 ± 3.5 <span class="n">(n = 2)</span><br><span class="ci">paper 89.0 ± 1.5</span>' in section
    assert "then, marked paper, the published table" in section
    assert "Published methods not in this sweep: Adapter." in section
    assert "<b>Does SAM lead the average?</b> sam leads the average (78.5), ahead of sam-global" in section
    assert "<b>sam-global against sam</b>" in section
    assert main(["report", "--trials", str(path), "--out", str(tmp_path / "r2")]) == 0
    assert 'id="published"' not in (tmp_path / "r2" / "index.html").read_text()  # only when asked for


def test_a_variant_that_leads_is_named_as_one(published):
    df = trials()
    df.loc[df["method"] == "sam-global", "test_score"] += 0.02  # now above sam
    claim = compare(df, analyze(df), published).claims["best_on_average"]
    assert claim["answer"].startswith("sam-global (a variant of sam) leads the average (80.0); sam is 2 of 5")


def test_the_rho_claim_says_which_pairs_a_collapse_made_stable(published):
    df = trials()
    df["test_top_class_share"] = np.where((df["method"] == "bitfit") & (df["task"] == "RTE"), 1.0, 0.7)
    claim = compare(df, analyze(df), published).claims["stability_vs_performance"]
    rest = analyze(df[~((df["method"] == "bitfit") & (df["task"] == "RTE"))]).summary["spearman"]
    assert claim["ours"]["n_pairs_one_class"] == 1 and rest["n_pairs"] == claim["ours"]["n_pairs"] - 1
    assert (f"Our pairs with a seed that predicted one class: 1; without them ρ = {rest['rho']:.3f} over "
            f"{rest['n_pairs']}") in claim["answer"]


def test_equal_averages_tie_in_the_claims_and_a_constant_cell_has_no_std_ratio(published):
    """Float sums in another seed order named a leader of two equal averages ("sam leads (70.0), ahead of bitfit
    (70.0)"), and a constant cell's std of 3.4e-17 gave a std ratio of 1e15 with an F interval."""
    from tests.test_analysis import cb_trials

    df = cb_trials({"full": [13 / 56] * 3, "sam": [0.6, 0.7, 0.8], "bitfit": [0.8, 0.6, 0.7]})
    claims = compare(df, analyze(df), published).claims
    assert claims["best_on_average"]["leader"] == ["bitfit", "sam"]
    cells = claims["other_methods_vs_full_std"]["cells"]
    assert all(c["full_std"] == 0 and c["std_ratio"] is None for c in cells), cells


def test_a_method_collapsed_everywhere_is_not_significantly_more_stable_than_full(published):
    """Its deviations are all 0: Brown–Forsythe called it significantly smaller than full, the stability claim's
    only such method, with the collapse said only as a count of cells further on."""
    df = trials()
    df.loc[df["method"] == "bitfit", "test_score"] = df["task"].map(MAJORITY)  # the majority scores
    claim = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]
    assert "bitfit" not in claim["significantly_smaller"] and "bitfit" not in claim["methods_below"]
    assert claim["left_out"] == {"bitfit": "collapsed to a constant guess on CB, RTE"}
    assert "(left out, its std no measure of stability: bitfit, collapsed to a constant guess on CB, RTE, average std 0.0 " \
        "against full's 2.5)" in claim["answer"]


def test_with_one_seed_of_full_on_a_task_the_count_says_why_it_has_no_average_std(published):
    """It said "0 of 0 methods have a smaller average std than full tuning"."""
    df = trials()
    df = df[~((df["method"] == "full") & (df["task"] == "CB") & (df["seed"] > 0))]
    answer = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]["answer"]
    assert answer.startswith("no average std of full to compare with (one finished seed on CB)"), answer
    assert "0 of 0" not in answer


def test_a_method_without_an_average_std_is_named_not_dropped_from_the_count(published):
    df = trials()
    df = df[~((df["method"] == "lora") & (df["task"] == "RTE") & (df["seed"] > 0))]
    answer = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]["answer"]
    assert answer.startswith("2 of 3 methods have a smaller average std than full tuning (sam, sam-global) (not "
                             "compared, no average std: lora, one finished seed on RTE)"), answer


def test_full_with_no_finished_trial_on_a_published_task_says_so(published):
    """The published table's (full, RTE) row kept a row for it: it was taken for a one-seed task."""
    df = trials()
    df.loc[(df["method"] == "full") & (df["task"] == "RTE"), ["status", "test_score"]] = ["FAILED", None]
    answer = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]["answer"]
    assert answer.startswith("no average std of full to compare with (no finished trial on RTE)"), answer


def test_both_rhos_on_the_same_cells_are_on_the_same_cells(published):
    """A cell of ours with one seed (no std) was left out of our ρ and kept in the published table's: "the 69
    cells both tables hold" gave the published ρ over 70."""
    df = trials()
    df = df[~((df["method"] == "lora") & (df["task"] == "RTE") & (df["seed"] > 0))]
    claim = compare(df, analyze(df), published).claims["stability_vs_performance"]
    assert claim["ours_same_cells"]["n_pairs"] == claim["paper_same_cells"]["n_pairs"] == 7


def test_one_rule_for_stability_in_the_answer_the_seeds_ranking_and_the_claims(published):
    """A review found three meanings of "collapse": the answer left bitfit (every CB seed one class) unranked on
    stability while the claims counted its std as smaller than full's; a method at chance on every task (lora,
    varying) was crowned most stable by one output and called a collapse by another."""
    from dashboards.answer import answer

    df = trials()
    df["test_top_class_share"] = 0.7
    bitfit_cb = (df["method"] == "bitfit") & (df["task"] == "CB")
    df.loc[bitfit_cb, ["test_score", "test_top_class_share"]] = [0.5, 1.0]
    for task, scores in {"CB": [0.47, 0.48, 0.51], "RTE": [0.54, 0.55, 0.56]}.items():  # not above the majority
        df.loc[(df["method"] == "lora") & (df["task"] == task), "test_score"] = scores
    why = {"bitfit": "collapsed to a constant guess on CB", "lora": "most seeds not above the majority class on CB, RTE, "
                                                              "every task it has"}
    res = analyze(df)
    said = answer(res, df)
    claim = compare(df, res, published).claims["other_methods_vs_full_std"]
    assert res.summary["seeds_enough"]["left_out"] == why
    # left out of the count and the test whichever way their std lies, named with it beside full's: bitfit's is
    # above (its CB std 0 included), lora's below
    assert claim["left_out"] == why and claim["n_methods"] == 2
    assert "bitfit, collapsed to a constant guess on CB, average std 3.0 against full's 2.5" in claim["answer"]
    assert said["most_stable"] not in why and not set(why) & set(claim["methods_below"])
    assert ("not ranked on stability, its std there no measure of stability: bitfit (collapsed to a constant guess on CB); "
            "lora (most seeds not above the majority class on CB, RTE") in said["lines"][-2]
    tested = [r["method"] for r in claim["methods"] if r["p"] is not None]  # nor in the test, nor in Holm's family
    assert sorted(tested) == ["sam", "sam-global"] and "Holm over the 2 methods tested" in claim["answer"]
    assert not {"bitfit", "lora"} & {c["method"] for c in claim["cells"] if c["method"] in claim["methods_below"]}
    assert claim["n_cells"] == 2 * 2


def test_equal_scores_above_the_majority_are_stability_and_full_at_chance_keeps_a_task_out(published):
    """"constant or at the majority" called sam's three equal CB scores, far above the majority class, a collapse
    and kept them out of the pooled test of spread: the strongest evidence of stability, thrown away."""
    df = trials()
    df.loc[(df["method"] == "sam") & (df["task"] == "CB"), "test_score"] = 0.85
    claim = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]
    cell = next(c for c in claim["cells"] if (c["method"], c["task"]) == ("sam", "CB"))
    assert cell["std"] == 0 and not cell["learned_nothing"]
    assert next(r for r in claim["methods"] if r["method"] == "sam")["tasks_tested"] == 2
    df.loc[(df["method"] == "full") & (df["task"] == "RTE"), "test_score"] = [0.53, 0.55, 0.54]  # full at chance
    claim = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]
    assert all(c["full_learned_nothing"] == (c["task"] == "RTE") and not c["learned_nothing"]
               for c in claim["cells"]), claim["cells"]
    assert {r["method"]: r["tasks_tested"] for r in claim["methods"]}["sam"] == 1
    assert ("full's own cells collapsed or most of its seeds are not above the majority class on RTE, so those "
            "tasks stay out of the test of spread") in claim["answer"] and "on RTE)" not in claim["answer"].split(";")[0]
    df.loc[(df["method"] == "full") & (df["task"] == "CB"), "test_score"] = [0.48, 0.50, 0.49]  # and on CB
    claim = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]
    assert "no test of spread: no cell with ≥ 3 seeds on both sides is left to test" in claim["answer"]
    assert "(full itself: most seeds not above the majority class on CB, RTE, every task it has" in claim["answer"]


def test_a_partly_collapsed_cell_is_instability_and_counts(published):
    """Two of bitfit's three CB seeds predicted one class, the third learned: a large std, the very instability
    the claim is about. Ruled "no stability" by a more-than-half rule, it left the count (1 of 1 smaller). Now
    bitfit counts (it learned RTE); its CB cell, mostly guesses, stays out of the pooled test, and a cell where one
    seed of three failed stays in."""
    df = trials()
    df["test_top_class_share"] = 0.7
    cb = (df["method"] == "bitfit") & (df["task"] == "CB")
    df.loc[cb, "test_score"] = [0.5, 0.5, 0.8]
    df.loc[cb & (df["seed"] < 2), "test_top_class_share"] = 1.0
    claim = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]
    assert claim["left_out"] == {} and claim["n_methods"] == 4 and "bitfit" not in claim["methods_below"]
    assert next(r for r in claim["methods"] if r["method"] == "bitfit")["tasks_tested"] == 1
    df.loc[cb, "test_score"] = [0.5, 0.8, 0.82]
    df.loc[cb, "test_top_class_share"] = [1.0, 0.7, 0.7]
    claim = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]
    assert next(r for r in claim["methods"] if r["method"] == "bitfit")["tasks_tested"] == 2  # CB's spread in


def test_one_failed_seed_of_three_does_not_make_a_method_that_learned_at_chance(published):
    """A bootstrap interval's low end over three seeds is the worst seed: bitfit, 20 points above the majority
    with one seed at it on each task, was ruled "not above the majority class" and left out (a third review)."""
    df = trials()
    for task, floor in MAJORITY.items():
        df.loc[(df["method"] == "bitfit") & (df["task"] == task) & (df["seed"] == 0), "test_score"] = floor
    res = analyze(df)
    claim = compare(df, res, published).claims["other_methods_vs_full_std"]
    assert claim["left_out"] == {} and res.summary["seeds_enough"]["left_out"] == {}
    assert next(r for r in claim["methods"] if r["method"] == "bitfit")["tasks_tested"] == 2
    for method in ("sam", "lora", "bitfit", "sam-global"):  # now every other method learned nothing
        df.loc[df["method"] == method, "test_score"] = df["task"].map(MAJORITY) - 0.01 * df["seed"]
    claim = compare(df, analyze(df), published).claims["other_methods_vs_full_std"]
    assert claim["n_methods"] == 0 and "no cell with ≥ 3 seeds on both sides is left to test" in claim["answer"]


def test_a_method_that_learned_nothing_by_a_hair_is_neither_most_stable_nor_significantly_smaller(published):
    """Four of lora's five seeds predicted one class on each task, the fifth a point above: not collapsed (one
    seed learned something), a mean 0.2 points above the majority, so "most stable on average: lora" and
    "1 significantly smaller (lora)" (a second review). Its means' intervals reach the majority: ruled out."""
    from dashboards.answer import answer

    scores = {("full", "CB"): [.70, .75, .80, .72, .78], ("full", "RTE"): [.62, .66, .70, .64, .68],
              ("sam", "CB"): [.74, .76, .78, .75, .77], ("sam", "RTE"): [.65, .67, .69, .66, .68],
              ("lora", "CB"): [.5, .5, .5, .5, .51], ("lora", "RTE"): [.55, .55, .55, .55, .56]}
    df = pd.DataFrame([{"method": m, "task": t, "seed": seed, "perturbation": None, "status": "FINISHED",
                        "test_score": v} for (m, t), values in scores.items() for seed, v in enumerate(values)])
    df["sparsity"] = np.where(df["method"] == "full", np.nan, 0.005)
    df["base_method"] = df["method"]
    df["majority_test_score"] = df["task"].map(MAJORITY)
    df["test_top_class_share"] = np.where((df["method"] == "lora") & (df["seed"] < 4), 1.0, 0.7)
    res = analyze(df)
    said = answer(res, df)
    assert said["most_stable"] == "sam", said["lines"]
    claim = compare(df, res, published).claims["other_methods_vs_full_std"]
    assert "lora" in claim["left_out"] and "lora" not in claim["significantly_smaller"]
    assert next(r for r in claim["methods"] if r["method"] == "lora")["p"] is None
    assert res.summary["seeds_enough"]["left_out"].keys() == {"lora"}
    # one task above the majority, the other not: ranked, and the line says where it did not learn
    df.loc[(df["method"] == "lora") & (df["task"] == "CB"), "test_score"] = [.80, .81, .80, .81, .80]
    said = answer(analyze(df), df)
    assert said["most_stable"] == "lora" and said["lines"][-1].endswith(
        "most seeds not above the majority class on RTE, where a small std may be a guess's)"), said["lines"]


def test_the_answer_and_the_claims_judge_a_cell_alike_on_either_scale(published):
    """A fourth review: a majority of 5/9 rounded (then ×100) differently on the two scales, so the answer ruled
    lora out and the claims credited it; a share recorded for two seeds of three turned the equal-scores fallback
    off; a tie for most stable said nothing of chance; a majority of "n/a" crashed the claims."""
    from dashboards.answer import answer

    df = trials()
    df["majority_test_score"] = df["task"].map({"CB": 5 / 9, "RTE": MAJORITY["RTE"]})
    lora = df["method"] == "lora"
    for task, floor in (("CB", 5 / 9), ("RTE", MAJORITY["RTE"])):
        df.loc[lora & (df["task"] == task), "test_score"] = [floor - 0.02, floor, floor + 0.03]
    res = analyze(df)
    claim = compare(df, res, published).claims["other_methods_vs_full_std"]
    assert "lora" in res.summary["seeds_enough"]["left_out"] and "lora" in claim["left_out"]
    df.loc[lora, "test_score"] = df.loc[lora, "task"].map({"CB": 5 / 9, "RTE": MAJORITY["RTE"]})
    df["test_top_class_share"] = np.where(lora & (df["seed"] == 2), np.nan, 1.0 * lora + 0.6 * ~lora)
    res = analyze(df)
    assert res.summary["seeds_enough"]["left_out"]["lora"].startswith("collapsed to a constant guess on CB, RTE")
    assert "lora" in compare(df, res, published).claims["other_methods_vs_full_std"]["left_out"]
    partial = trials()  # known one-class seeds still count where another seed lacks the share (a fifth review)
    partial["test_top_class_share"] = 0.6
    cb = (partial["method"] == "lora") & (partial["task"] == "CB")
    partial.loc[cb, "test_score"] = [0.5, 0.5, 0.9]
    partial.loc[cb, "test_top_class_share"] = [1.0, 1.0, np.nan]
    assert analyze(partial).summary["spearman"]["n_pairs_one_class"] == 1
    tied = trials()
    tied = tied[tied["method"].isin(["full", "sam"]) & (tied["status"] == "FINISHED")].copy()
    tied.loc[tied["method"] == "sam", "test_score"] = tied.loc[tied["method"] == "full", "test_score"].to_numpy()
    tied.loc[tied["task"] == "RTE", "majority_test_score"] = 0.75  # both at chance on RTE
    line = answer(analyze(tied), tied)["lines"][-1]
    assert line.startswith("most stable on average: full and sam, tied") and line.endswith(
        "; full: most seeds not above the majority class on RTE; sam: most seeds not above the majority class on "
        "RTE)"), line
    tied["majority_test_score"] = "n/a"
    assert compare(tied, analyze(tied), published).claims["other_methods_vs_full_std"]["answer"]
