"""What the report says about its own gaps and links: MLflow links follow the sweep's tracking store (a server,
a SQLite file, or unknown for a bare trials file), a method or cell with no finished trial is named under Table 1
instead of vanishing, the caption says its group in words, and the mask-overlap note matches the mask files."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dashboards.report import build_report, mlflow_command
from orchestrator import sweep
from orchestrator.cli import main
from tests.test_analysis import hand_made
from tests.tracking_fixtures import finish_all, make_spec
from trainables.anatomy import save_mask

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _hrefs(page: str) -> list[str]:
    return re.findall(r'href="([^"]*)"', page)


def test_links_follow_the_tracking_store(tmp_path):
    trials = tmp_path / "trials.parquet"
    pd.DataFrame([{"method": m, "task": "CB", "seed": s, "sparsity": None, "perturbation": None, "status": "FINISHED",
                   "test_score": 0.5 + s / 10 + (m == "sam") / 20, "mlflow_run_id": f"run{2 * i + s:04d}"}
                  for i, m in enumerate(("sam", "bitfit")) for s in range(2)]).to_parquet(trials)
    server = build_report(trials, None, tmp_path / "r1", tracking_uri="http://mlflow.cluster:5792/").read_text()
    assert "http://mlflow.cluster:5792/#/runs/run0000" in _hrefs(server)
    assert all(h.startswith("http://mlflow.cluster:5792/#/runs/") for h in _hrefs(server))
    assert "mlflow ui" not in server and "tracking server http://mlflow.cluster:5792." in server

    db = tmp_path / "my store" / "mlflow.db"
    local = build_report(trials, None, tmp_path / "r2", tracking_uri=f"sqlite:///{db}").read_text()
    assert "http://127.0.0.1:5000/#/runs/run0000" in _hrefs(local)
    assert f"{mlflow_command(relative=False)} ui --backend-store-uri &#x27;sqlite:///{db}&#x27; --port 5000" in local
    assert 'id="mlflow-runs"' not in local  # no experiment id in this hand-made file

    frame = pd.read_parquet(trials).assign(mlflow_experiment_id="7")  # as exported since it has the column
    frame.to_parquet(tmp_path / "with_experiment.parquet")
    training = build_report(tmp_path / "with_experiment.parquet", None, tmp_path / "r5",
                            tracking_uri="http://mlflow.cluster:5792/").read_text()
    assert "http://mlflow.cluster:5792/#/experiments/7/runs/run0000?workflowType=machine_learning" in _hrefs(training)
    assert "http://mlflow.cluster:5792/#/experiments/7/runs?workflowType=machine_learning" in _hrefs(training)
    frame.assign(mlflow_experiment_id=[7.0, None, 7.0, 7.0]).to_parquet(tmp_path / "numbers.parquet")  # re-saved
    numbers = build_report(tmp_path / "numbers.parquet", None, tmp_path / "r6",
                           tracking_uri="http://mlflow.cluster:5792/").read_text()
    assert "http://mlflow.cluster:5792/#/experiments/7/runs?workflowType=machine_learning" in _hrefs(numbers)
    assert not any("7.0" in h or "experiments//" in h for h in _hrefs(numbers)), _hrefs(numbers)
    relative = build_report(trials, None, tmp_path / "r7", tracking_uri="sqlite:///runs/x.db").read_text()
    assert f"--backend-store-uri sqlite:///{Path('runs/x.db').absolute()} --port 5000" in relative

    unknown = build_report(trials, None, tmp_path / "r3").read_text()
    assert not _hrefs(unknown) and "<code>run0000</code>" in unknown  # the run ids, no guessed server
    assert "does not know the tracking store" in unknown and "peft-sweep report SWEEP_DIR" in unknown
    pd.read_parquet(trials).drop(columns=["mlflow_run_id"]).to_parquet(trials)  # hand-made: no runs at all
    none = build_report(trials, None, tmp_path / "r4", tracking_uri="http://mlflow.cluster:5792").read_text()
    assert "No MLflow run ids in this trials file" in none and "tracking server" not in none


def test_sweep_end_and_report_command_link_the_sweeps_own_store(tmp_path, data_dir, capsys):
    """A real sweep on SQLite: the report written at the sweep's end and by `peft-sweep report SWEEP_DIR`
    link the real runs and name the real store; `report --trials` says it cannot link."""
    spec = make_spec(tmp_path, data_dir)
    tr = finish_all(spec)
    (spec.sweep_dir / sweep.SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    sweep.close_sweep(spec, tr, sweep.statuses(spec, tr), quiet=True)
    assert main(["report", str(spec.sweep_dir), "--out", str(tmp_path / "again")]) == 0
    run = next(iter(tr.trial_runs().values())).info
    run_id = run.run_id
    exported = pd.read_parquet(spec.sweep_dir / "export" / "trials.parquet")
    assert set(exported["mlflow_experiment_id"]) == {run.experiment_id}  # to open a run in its training view
    command = (f"{mlflow_command(relative=False)} ui --backend-store-uri sqlite:///{spec.sweep_dir / 'mlflow.db'} "
               "--port 5000")  # absolute: the page may be read from anywhere
    for index in (spec.sweep_dir / "report" / "index.html", tmp_path / "again" / "index.html"):
        page = index.read_text()
        link = f"http://127.0.0.1:5000/#/experiments/{run.experiment_id}/runs/{run_id}?workflowType=machine_learning"
        assert link in _hrefs(page) and command in page, index
        assert tr.runs_url() in _hrefs(page)  # the sweep's runs table
    assert main(["report", "--trials", str(spec.sweep_dir / "export" / "trials.parquet"), "--out",
                 str(tmp_path / "bare")]) == 0
    bare = (tmp_path / "bare" / "index.html").read_text()
    assert not _hrefs(bare) and f"<code>{run_id}</code>" in bare
    capsys.readouterr()
    (spec.sweep_dir / "analysis" / "summary.json").unlink()
    assert main(["analyze", str(spec.sweep_dir)]) == 0  # the sweep folder, as export and report take it
    out = capsys.readouterr().out
    assert str(spec.sweep_dir / "analysis" / "summary.json") in out and "most stable on average: " in out


@pytest.mark.slow
def test_a_sweep_tracked_on_a_server_links_the_server(tmp_path, data_dir):
    from benchmarks.mlflow_server import free_port, start_server, stop_server

    port = free_port()
    server = start_server(tmp_path / "server.db", tmp_path / "artifacts", port)
    try:
        spec = make_spec(tmp_path, data_dir, tracking_uri=f"http://127.0.0.1:{port}", tasks=["CB"], seeds=[0, 1])
        tr = finish_all(spec)
        sweep.close_sweep(spec, tr, sweep.statuses(spec, tr), quiet=True)
        runs = [r.info for r in tr.trial_runs().values()]
        page = (spec.sweep_dir / "report" / "index.html").read_text()
        assert {f"http://127.0.0.1:{port}/#/experiments/{r.experiment_id}/runs/{r.run_id}?workflowType="
                "machine_learning" for r in runs} | {tr.runs_url()} == set(_hrefs(page))
        assert "mlflow ui" not in page
        if CHROMIUM:  # what the links open: MLflow 3.18 showed `#/runs/<id>` in its GenAI view ("Evaluation runs")
            run_link = next(h for h in _hrefs(page) if runs[0].run_id in h)
            # the runs table: the sweep's run, its trials nested under it
            for url, shows in ((run_link, runs[0].run_id), (tr.runs_url(), spec.name)):
                dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                                      "--virtual-time-budget=20000", "--dump-dom", url],
                                     capture_output=True, text=True, timeout=120).stdout
                assert shows in dom, url
                assert ">Models<" in dom and "Evaluation runs" not in dom, url  # the training view's sidebar
    finally:
        stop_server(server)


def _table_rows(page: str) -> dict[str, list[str]]:
    table = re.search(r'<table id="main-table">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr[^>]*><th>(.*?)(?:<details.*?)?</th>(.*?)</tr>", table, re.S)
    return {name: re.findall(r"<td[^>]*>(.*?)</td>", cells, re.S) for name, cells in rows}


def test_a_method_or_cell_without_a_finished_trial_is_named_under_table_1(tmp_path):
    failed = {"sparsity": None, "perturbation": None, "status": "FAILED", "test_score": None, "train_score": None}
    trials = hand_made([{**failed, "method": "full-hot", "task": t, "seed": 0} for t in ("CB", "RTE")])
    lora_rte = (trials["method"] == "lora") & (trials["task"] == "RTE")
    trials.loc[lora_rte, ["status", "test_score"]] = ["FAILED", None]
    trials.loc[lora_rte & (trials["seed"] == 2), "status"] = "STOPPED"
    trials.to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "report").read_text()
    rows = _table_rows(page)
    assert rows["full-hot"] == ["0 of 1 finished (1 FAILED)"] * 2 + ["not ranked"]
    assert rows["lora"][1] == "0 of 3 finished (2 FAILED, 1 STOPPED)"
    note = re.search(r'<p class="missing" id="unfinished">(.*?)</p>', page).group(1)
    assert "<b>lora</b> (RTE: 0 of 3 finished (2 FAILED, 1 STOPPED)): its AVG covers its other tasks only" in note
    assert ("<b>full-hot</b> (CB: 0 of 1 finished (1 FAILED); RTE: 0 of 1 finished (1 FAILED)): not ranked, "
            "tested or drawn") in note
    assert "<h2>Table 1: sparsity 0.005; the standard split</h2>" in page


def test_a_sweep_whose_only_variant_failed_says_so_and_its_caption_has_no_none(tmp_path):
    """The review's rv2-fail: bitfit finished, its variant bitfit-hot failed; no sparsity anywhere."""
    trials = pd.DataFrame([{"method": m, "task": "CB", "seed": 0, "sparsity": None, "perturbation": None,
                            "status": s, "test_score": 0.385 if s == "FINISHED" else None, "train_score": None}
                           for m, s in (("bitfit", "FINISHED"), ("bitfit-hot", "FAILED"))])
    trials.to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "report").read_text()
    assert _table_rows(page)["bitfit-hot"] == ["0 of 1 finished (1 FAILED)", "not ranked"]
    assert 'id="unfinished"' in page and "<b>bitfit-hot</b> (CB: 0 of 1 finished (1 FAILED)): not ranked" in page
    caption = re.search(r"<h2>(Table 1.*?)</h2>", page).group(1)
    assert "None" not in caption and "no sparsity" in caption and "standard split" in caption


def _mask_sweep(tmp_path, methods_with_files):
    """A hand-made export whose masks.parquet has anatomy rows for every method (bitfit too, as the export
    writes them) and whose masks/ folder holds real mask files of ``methods_with_files`` only."""
    trials = hand_made()
    trials["trial_key"] = [f"{i:012x}" for i in range(len(trials))]
    export = tmp_path / "sweep" / "export"
    export.mkdir(parents=True)
    trials.to_parquet(export / "trials.parquet")
    anatomy = trials[trials["status"] == "FINISHED"].assign(layer="0", kind="attn.q", count=10)
    anatomy[["trial_key", "method", "task", "seed", "sparsity", "perturbation", "layer", "kind", "count"]] \
        .to_parquet(export / "masks.parquet")
    for r in trials[trials["method"].isin(methods_with_files) & (trials["status"] == "FINISHED")].itertuples():
        shift = 0 if r.method == "sam" else 1
        path = save_mask({"w": torch.tensor([shift, 2 + shift, 4])}, tmp_path / "tmp" / r.trial_key)
        (export / "masks").mkdir(exist_ok=True)
        path.rename(export / "masks" / f"{r.trial_key}.safetensors")
    return export / "trials.parquet"


def _overlap_note(page: str) -> str:
    return re.search(r'<p class="missing" id="missing-overlap">(.*?)</p>', page).group(1)


def test_overlap_note_without_mask_files_sends_nobody_to_analyze(tmp_path):
    trials = _mask_sweep(tmp_path, [])
    assert main(["analyze", "--trials", str(trials)]) == 0  # as the old note advised: it writes no overlap
    assert not (tmp_path / "sweep" / "analysis" / "mask_overlap.csv").exists()
    note = _overlap_note(build_report(trials, None, tmp_path / "report").read_text())
    assert "analyze" not in note and f"no mask files in {trials.parent / 'masks'}" in note


def test_overlap_note_names_the_methods_that_stored_masks(tmp_path, capsys):
    trials = _mask_sweep(tmp_path, ["sam"])  # anatomy rows of full, sam, lora, bitfit; files of sam only
    assert main(["analyze", "--trials", str(trials)]) == 0  # writes an overlap with no pair in it
    note = _overlap_note(build_report(trials, None, tmp_path / "report").read_text())
    assert "only sam stored masks" in note and not re.search(r"bitfit|lora|full", note)


def test_overlap_note_advice_to_analyze_is_followed_by_the_figure(tmp_path, capsys):
    trials = _mask_sweep(tmp_path, ["sam", "lora"])
    note = _overlap_note(build_report(trials, None, tmp_path / "report").read_text())
    assert f"peft-sweep analyze --trials {trials} writes it from the masks of lora, sam" in note
    assert main(["analyze", "--trials", str(trials)]) == 0  # the advice, taken
    page = build_report(trials, None, tmp_path / "report").read_text()
    assert '<figure id="fig-overlap">' in page and 'id="missing-overlap"' not in page
    capsys.readouterr()


def test_the_sweeps_answer_names_a_method_with_no_finished_trial(tmp_path, data_dir, capsys):
    """The console and the parent run said "best on average: bitfit" as if sam had lost, when every sam trial
    failed (on a cluster: `full` out of GPU memory on every task)."""
    spec = make_spec(tmp_path, data_dir, tasks=["CB"])
    tr = finish_all(spec, fail=2)  # both sam trials (the grid's first two)
    assert {c.method for c in spec.trials()[:2]} == {"sam"}
    lines = sweep.close_sweep(spec, tr, sweep.statuses(spec, tr), quiet=True)
    assert "not ranked, no finished trial: sam (2 FAILED)" in lines, lines
    assert tr.client.get_run(tr.parent_run_id).data.tags["unranked_methods"] == "sam"
    capsys.readouterr()
    # `analyze` prints the same answer (the README says so): it left this line out
    assert main(["analyze", "--trials", str(spec.sweep_dir / "export" / "trials.parquet"),
                 "--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "not ranked, no finished trial: sam (2 FAILED)" in printed
    assert [line for line in printed if not line.startswith(str(tmp_path))] == \
        [line for line in lines if line.startswith(("scored ", "not ranked", "best on", "its lead", "most stable"))
         or "is the only method ranked here" in line]


def svg_size(path) -> tuple[float, float]:
    head = path.read_text()[:2000]
    return tuple(float(re.search(rf'{k}="([\d.]+)pt"', head).group(1)) for k in ("width", "height"))


def test_the_anatomy_figure_of_one_method_is_tall_enough_for_its_legend(tmp_path):
    """One mask method (the quickstart's SAM) and ten module kinds: the figure was 83 pt high and cut its title,
    axis and legend."""
    from dashboards.figures import KIND_ORDER, anatomy_figure

    kinds = list(KIND_ORDER)[:10]
    masks = pd.DataFrame({"trial_key": "k", "method": "sam", "kind": kinds, "count": range(1, len(kinds) + 1)})
    anatomy_figure(masks, ["sam"], tmp_path / "a.svg")
    _, height = svg_size(tmp_path / "a.svg")
    assert height >= 10 * 9  # ten legend lines at fontsize 7


def test_fig_3b_with_two_pairs_has_integer_ticks_and_says_why_there_is_no_rho(tmp_path):
    from dashboards.analysis import analyze
    from dashboards.figures import rank_figure

    df = hand_made()
    df = df[df["method"].isin(["sam", "lora"]) & (df["task"] == "CB")]
    res = analyze(df)
    rank_figure(res.table, res.summary["spearman"], ["sam", "lora"], tmp_path / "r.svg")
    svg = (tmp_path / "r.svg").read_text()
    assert "no Spearman ρ: needs ≥3 (method, task) pairs" in svg
    texts = [t for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg) if re.fullmatch(r"[\d.]+", t)]
    assert texts == ["1", "2", "1", "2"], texts  # tick labels: ranks 1 and 2 on both axes (it drew 0.90, 1.05, ...)


def test_a_failed_trials_error_leads_with_its_own_line_and_folds_the_traceback(tmp_path):
    """The report showed the last 1,500 characters of the traceback, starting mid-filename."""
    tb = "Traceback (most recent call last):\n" + '  File "x.py", line 1, in f\n' * 200 + "RuntimeError: boom"
    extra = [{"method": "lora", "task": "CB", "seed": 0, "sparsity": 0.005, "perturbation": None, "status": "FAILED",
              "test_score": None, "train_score": None, "error": "RuntimeError: tracked\n\n" + tb},
             {"method": "lora", "task": "CB", "seed": 1, "sparsity": 0.005, "perturbation": None, "status": "FAILED",
              "test_score": None, "train_score": None, "error": tb}]  # a local record's raw traceback
    hand_made(extra).to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "r").read_text()
    failed = page[page.index('<table id="failed" class="trials">'):]
    assert "<td><b>RuntimeError: tracked</b><details><summary>traceback</summary>" in failed
    assert "<td><b>RuntimeError: boom</b><details>" in failed


def _finish_new(spec, done: set[str]):
    """Track and record as FINISHED the trials of ``spec`` whose keys are not in ``done``; returns all its keys."""
    from benchmarks.synthetic_trials import fake_result, trial_dict
    from tests.tracking_fixtures import record_finished

    tr = sweep.tracker_for(spec)
    for cfg in spec.trials():
        if cfg.key not in done:
            tr.start_trial(cfg.key, trial_dict(cfg))
            result = fake_result(cfg)
            tr.finish(cfg.key, result)
            record_finished(spec, cfg, result)
    return done | {cfg.key for cfg in spec.trials()}


def test_trials_no_longer_in_the_grid_are_left_out_of_the_results_and_named(tmp_path, data_dir):
    """A row fixed after its trials failed, then a `run --force` with another setting: the old trials stay in the
    records and MLflow, but they are not results of the sweep's spec. The report listed the fixed row's old
    failures as the sweep's failed trials, and the forced rerun's old results were averaged with the new ones
    (four trials for two seeds)."""
    from dashboards.analysis import analyze
    from orchestrator import export
    from orchestrator.spec import spec_from_dict

    spec = make_spec(tmp_path, data_dir, tasks=["CB"])
    finish_all(spec, fail=2)  # both sam trials failed (a bad learning rate, say)
    fixed = spec_from_dict({**spec.model_dump(mode="json"), "methods": {"sam": {"lr": 1e-3}}})
    done = _finish_new(fixed, {c.key for c in spec.trials()})
    trials_path = export.export(fixed, tmp_path / "fixed")[0]
    df = pd.read_parquet(trials_path)
    assert df.groupby("in_grid")["status"].apply(sorted).to_dict() == {False: ["FAILED"] * 2,
                                                                       True: ["FINISHED"] * 4}
    page = build_report(trials_path, None, tmp_path / "r").read_text()
    assert "Failed or unfinished trials (0)" in page, page
    gone = page.split('<details id="not-in-grid">')[1]
    assert "Trials no longer in the sweep's grid (2)" in gone and gone.count("FAILED") == 2
    assert "4 of 4 trials FINISHED" in page

    forced = spec_from_dict({**fixed.model_dump(mode="json"), "training": {"max_steps": 12, "eval_every": 3}})
    _finish_new(forced, done)
    res = analyze(pd.read_parquet(export.export(forced, tmp_path / "forced")[0]))
    assert set(res.table.loc[res.table["task"] == "CB", "n"]) == {2}, res.table
    assert (res.summary["n_finished"], res.summary["n_trials"], res.summary["n_not_in_grid"]) == (4, 4, 6)


def test_seeds_that_predicted_one_class_are_counted_per_cell_and_shown(tmp_path):
    """A seed whose every test prediction is the majority class scores near the majority baseline: one such seed
    among good ones makes the cell's std, and so its stability rank, by itself, and nothing said so."""
    from dashboards.analysis import analyze

    trials = hand_made()
    trials["test_top_class_share"] = 0.6
    collapsed = (trials["method"] == "sam") & (trials["task"] == "CB") & (trials["seed"] == 0)
    trials.loc[collapsed, "test_top_class_share"] = 1.0
    table = analyze(trials).table.set_index(["method", "task"])
    assert table.loc[("sam", "CB"), "n_one_class"] == 1
    assert table.loc[("full", "CB"), "n_one_class"] == 0
    path = tmp_path / "trials.parquet"
    trials.to_parquet(path)
    page = build_report(path, None, tmp_path / "r").read_text()
    assert page.count('class="collapsed"') == 1 and "1 one-class</span>" in page
    old = hand_made()  # an export from before the field: no count, no mark
    assert analyze(old).table["n_one_class"].isna().all()


def test_fig3b_plots_the_pairs_rho_is_computed_on(tmp_path, monkeypatch):
    """z's one-seed cell has no std, so ρ ranks T1 among x and y only; the figure plotted the table's ranks, taken
    with z (x's performance rank 2, not 1): its points were not the input of the ρ in its title."""
    from matplotlib.figure import Figure
    from scipy import stats

    scores = {("x", "T1"): [.80, .81, .82], ("y", "T1"): [.60, .70, .80], ("z", "T1"): [.99],
              ("x", "T2"): [.60, .70, .80], ("y", "T2"): [.80, .81, .82]}
    path = tmp_path / "trials.parquet"
    pd.DataFrame([{"method": m, "task": t, "seed": i, "sparsity": 0.01, "perturbation": None, "status": "FINISHED",
                   "test_score": v} for (m, t), values in scores.items() for i, v in enumerate(values)]).to_parquet(path)
    drawn = {}
    savefig = Figure.savefig

    def keep(fig, out, *args, **kwargs):
        if str(out).endswith("ranks.svg"):  # the points, less the jitter (±0.18 around whole or half ranks)
            points = [xy for c in fig.axes[0].collections for xy in c.get_offsets().tolist()]
            drawn["points"] = sorted((round(2 * x) / 2, round(2 * y) / 2) for x, y in points)
            drawn["title"] = fig.axes[0].get_title()
        return savefig(fig, out, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    build_report(path, None, tmp_path / "report")
    assert drawn["points"] == [(1.0, 1.0), (1.0, 1.0), (2.0, 2.0), (2.0, 2.0)]
    rho = stats.spearmanr([p[0] for p in drawn["points"]], [p[1] for p in drawn["points"]]).statistic
    assert f"Spearman ρ = {rho:.2f} over n = 4" in drawn["title"]


def test_fig3b_says_when_rho_is_of_ranks_scaled_within_tasks(tmp_path):
    """T1 ranks three cells, T2 two: ρ pools (rank − 0.5)/k, which the plotted raw ranks are not; the title says so
    (it showed ρ = -0.60 above points whose own ρ is -0.47)."""
    from dashboards import figures
    from dashboards.analysis import spearman, spearman_pairs

    table = pd.DataFrame({"method": ["x", "y", "z", "x", "y"], "task": ["T1"] * 3 + ["T2"] * 2,
                          "mean": [.9, .8, .7, .6, .7], "std": [.01, .02, .03, .01, .02]})
    figures.rank_figure(spearman_pairs(table), spearman(table), ["x", "y", "z"], tmp_path / "ranks.svg")
    assert "ranks scaled (r − 0.5)/k per task" in (tmp_path / "ranks.svg").read_text()


def test_the_mlflow_command_shown_is_one_this_shell_finds(monkeypatch):
    """`make demo` leaves .venv/bin off PATH: the bare `mlflow ui` that the run and the report printed was not
    found; the venv's own path is shown instead, and plain `mlflow` where PATH leads to this environment's."""
    import shutil
    import sys
    from pathlib import Path

    venv_bin = Path(sys.executable).parent
    assert (venv_bin / "mlflow").is_file()  # the project installs MLflow into its environment
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("mlflow") is None:
        shown = mlflow_command()
        assert shown != "mlflow" and Path(shown).resolve() == (venv_bin / "mlflow").resolve()
        assert Path(mlflow_command(relative=False)).is_absolute()  # for the report, read from anywhere
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")
    assert mlflow_command() == "mlflow"


def test_the_figures_show_the_reports_group_of_the_current_grid_only(tmp_path):
    """Table 1 is the first group's (sparsity, split) of the current grid, but the learning curves drew every
    trial of curves.parquet (another sparsity's, one no longer in the grid) and Fig. 4 took any trial's
    projection."""
    extra = [{"method": "samx", "task": "CB", "seed": s, "sparsity": 0.05, "perturbation": None,
              "status": "FINISHED", "test_score": 0.7, "train_score": 0.8} for s in range(3)]
    extra += [{"method": "oldm", "task": "CB", "seed": 0, "sparsity": None, "perturbation": None,
               "status": "FINISHED", "test_score": 0.7, "train_score": 0.8, "in_grid": False}]
    trials = hand_made(extra)
    trials["in_grid"] = trials["in_grid"].fillna(True).astype(bool)
    trials["trial_key"] = [f"k{i:03d}" for i in range(len(trials))]
    trials.to_parquet(tmp_path / "trials.parquet")
    rows = [{"trial_key": k, "method": m, "task": t, "seed": s, "kind": "eval", "step": step, "dev_score": 0.5,
             "train_loss": 1.0, "lr": 1e-3}
            for k, m, t, s in zip(trials["trial_key"], trials["method"], trials["task"], trials["seed"])
            for step in (3, 6)]
    samx = trials.loc[trials["method"] == "samx", "trial_key"].iloc[0]
    rows.append({"trial_key": samx, "method": "samx", "task": "CB", "seed": 0, "kind": "projection", "step": 4,
                 "dev_score": None, "train_loss": None, "lr": None, "flipped": 10, "loss_before": 1.0,
                 "loss_after": 2.0})
    pd.DataFrame(rows).to_parquet(tmp_path / "curves.parquet")
    page = build_report(tmp_path / "trials.parquet", tmp_path / "curves.parquet", tmp_path / "r").read_text()
    svg = (tmp_path / "r" / "curves.svg").read_text()
    assert "bitfit" in svg  # the group's own methods are drawn
    assert "samx" not in svg and "oldm" not in svg
    assert "no projections recorded" in page


def test_methods_tied_in_a_column_share_its_shading(tmp_path):
    """Two methods at 82.00 on CB: only the alphabetical first was bold, the other shaded second."""
    rows = [{"method": m, "task": "CB", "seed": s, "sparsity": None, "perturbation": None, "status": "FINISHED",
             "test_score": v, "train_score": v}
            for m, vals in {"lora": [.80, .82, .84], "sam": [.84, .82, .80], "full": [.70, .72, .74],
                            "bitfit": [.60, .62, .64]}.items() for s, v in enumerate(vals)]
    pd.DataFrame(rows).to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "r").read_text()
    table = re.search(r'<table id="main-table">(.*?)</table>', page, re.S).group(1)
    shade = {name: re.findall(r'<td(?: class="(b\d)")?>', cells)[0]
             for name, cells in re.findall(r"<tr[^>]*><th>(\w+).*?</th>(.*?)</tr>", table, re.S) if "<td" in cells}
    assert (shade["lora"], shade["sam"], shade["full"], shade["bitfit"]) == ("b1", "b1", "b3", ""), shade


def test_an_average_below_the_majority_rows_average_is_red_and_friedman_names_a_dropped_task(tmp_path):
    rows = [{"method": m, "task": t, "seed": s, "sparsity": None, "perturbation": None, "status": "FINISHED",
             "test_score": v + s / 100, "train_score": v,
             "majority_test_score": {"CB": 0.5, "RTE": 0.6, "WSC": 0.6}[t]}
            for m, scores in {"full": {"CB": .40, "RTE": .55, "WSC": .55}, "sam": {"CB": .80, "RTE": .70, "WSC": .7},
                              "bitfit": {"CB": .70, "RTE": .65, "WSC": .66}, "lora": {"CB": .75, "WSC": .6}}.items()
            for t, v in scores.items() for s in range(3)]
    pd.DataFrame(rows).to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "r").read_text()
    full = re.search(r"<tr><th>full.*?</tr>", page, re.S).group(0)
    assert full.count('class="below"') == 4, full  # each task and AVG (51.0 below the majority row's 56.7)
    assert "Friedman over 2 tasks as blocks (RTE left out: not every method has a score there)" in page


def test_a_perturbed_group_counts_runs_of_seeds_and_splits_not_seeds(tmp_path):
    rows = [{"method": m, "task": "CB", "seed": s, "sparsity": None, "perturbation": k, "status": "FINISHED",
             "test_score": v + s / 100 + k / 200, "train_score": v}
            for m, v in {"full": .6, "sam": .7, "bitfit": .65}.items() for s in range(3) for k in range(2)]
    pd.DataFrame(rows).to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "r").read_text()
    assert "over its <b>n</b> runs (seeds × perturbation splits)" in page


def test_the_seeds_enough_caption_names_a_method_left_out_as_collapsed(tmp_path):
    from tests.test_analysis import cb_trials

    trials = cb_trials({"full": [.60, .70, .80], "sam": [.65, .70, .76], "bitfit": [.5, .6, .55],
                        "diffprune": [.40, .40, .40]})
    trials["test_top_class_share"] = np.where(trials["method"] == "diffprune", 1.0, 0.6)
    path = tmp_path / "trials.parquet"
    trials.to_parquet(path)
    page = build_report(path, None, tmp_path / "r").read_text()
    caption = re.search(r'<figure id="fig-seeds-enough">.*?<figcaption>(.*?)</figcaption>', page, re.S).group(1)
    assert caption.endswith("not ranked on stability, its std there no measure of stability: diffprune (collapsed to "
                            "a constant guess on CB)"), caption


def test_a_reused_out_folder_keeps_no_figure_of_an_earlier_report(tmp_path):
    """Reports written into the same --out: a figure the second one does not draw (no sparsity grid, no masks) was
    left from the first, beside a page that says it is not drawn. The user's own files stay."""
    from dashboards.report import FIGURE_FILES

    first = tmp_path / "full.parquet"
    hand_made().to_parquet(first)
    out = tmp_path / "r"
    build_report(first, None, out)
    drawn = {p.name for p in out.glob("*.svg")}
    assert drawn <= set(FIGURE_FILES) and "cd.svg" in drawn  # every figure's name is known to the cleaner
    (out / "notes.txt").write_text("mine")
    for name in ("anatomy.svg", "sparsity.svg"):  # as an earlier sweep with masks and sparsities left them
        (out / name).write_text("<svg/>")
    from tests.test_analysis import cb_trials

    second = tmp_path / "small.parquet"
    cb_trials({"full": [.60, .70, .80], "sam": [.65, .70, .76]}).to_parquet(second)
    page = build_report(second, None, out).read_text()
    left = {p.name for p in out.iterdir()}
    assert "sparsity.svg" not in left and "anatomy.svg" not in left and "cd.svg" not in left, left
    assert "notes.txt" in left
    # each figure in the page (inline, as a data: URI) has its file beside it, and no other file is left
    assert {p.stem.replace("_", "-") for p in out.glob("*.svg")} == set(re.findall(r'<figure id="fig-([a-z-]+)"', page))
    kept = {p.name for p in out.glob("*.svg")}
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"method": ["sam"], "status": ["FINISHED"], "test_score": [0.5]}).to_parquet(bad)  # no task
    with pytest.raises(ValueError, match="lacks column"):
        build_report(bad, None, out)
    assert {p.name for p in out.glob("*.svg")} == kept  # a report that fails leaves the earlier one whole


def test_a_sweep_end_whose_analysis_fails_says_where_and_what_still_stands(tmp_path, data_dir, capsys, monkeypatch):
    """A bug in one statistic (seeds-enough on an empty cube, caught by CI) left the sweep's end with one line,
    "no analysis on the parent run: ValueError: cannot reshape array...", and nothing to place it by."""
    import dashboards.analysis

    spec = make_spec(tmp_path, data_dir)
    tr = finish_all(spec)
    (spec.sweep_dir / sweep.SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))

    def broken(df):  # a fault injected into our own statistics, as a bug would be
        raise ValueError("cannot reshape array of size 0")
    monkeypatch.setattr(dashboards.analysis, "analyze", broken)
    lines = sweep.close_sweep(spec, tr, sweep.statuses(spec, tr))
    err = capsys.readouterr().err
    assert any(line.startswith("no analysis on the parent run: ValueError: cannot reshape array of size 0; the trials "
                               f"are recorded and in MLflow all the same; `peft-sweep analyze {spec.sweep_dir}` tries "
                               "again") for line in lines), lines
    assert "Traceback" in err and "in broken" in err, err
    assert tr.parent_status() == "FINISHED"  # the status is set all the same


def test_the_report_opens_with_the_sweeps_answer_as_the_run_prints_it(tmp_path):
    """From a new user's trial: the page never said which method was best or most stable, only the console did;
    whoever is handed the report alone lost the conclusion."""
    import html

    from dashboards.analysis import analyze
    from dashboards.answer import answer

    trials = hand_made()
    trials.to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "report").read_text()
    said = re.search(r'<section id="answer"><h2>The answer</h2><ul>(.*?)</ul>', page)
    assert said, page[:2000]
    lines = answer(analyze(trials), trials)["lines"]
    assert lines and [html.unescape(li) for li in re.findall(r"<li>(.*?)</li>", said.group(1))] == lines
    assert page.index('id="answer"') < page.index("<h2>What the numbers are</h2>")
