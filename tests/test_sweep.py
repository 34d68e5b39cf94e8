"""A real sweep on a local Ray: MLflow records, skip-finished, a failed trial, rerun-failed, export,
analysis and report."""
import json
import os

import pandas as pd
import pytest
import yaml

from orchestrator.masks import mask_path
from orchestrator.tracking import download_model
from tests.sweeps import ROOT, cli, here, records, tracker, write_spec

pytestmark = pytest.mark.slow


def test_sweep_lifecycle(tmp_path, tiny_model, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "")  # as `cli` does: the runs in this process join no cluster of the env
    # data and token cache named relative to where `run` is called (`cli`: the repository); Tune runs each trial in
    # a folder of its own, where these paths used to name nothing
    relative = {"dir": os.path.relpath(data_dir, ROOT), "cache_dir": os.path.relpath(tmp_path / "cache", ROOT)}
    spec = write_spec(tmp_path, tiny_model, data_dir, data=relative,
                      fault={"fail_at_step": 4, "fail_times": 2, "marker_dir": str(tmp_path / "markers"),
                             "match": {"method": "bitfit", "seed": 1}})
    sweep_dir = tmp_path / "runs" / "t"
    first = cli("run", str(spec), check_rc=1)
    assert "3/4 FINISHED, 1 FAILED" in first.stdout
    console = first.stdout + first.stderr  # our progress lines and errors, not Ray's informational noise
    for noise in ("Checkpoint successfully created", "TensorBoard", "deduplicates logs", "\x1b[",
                  "Creating initial MLflow database tables", "Started a local Ray instance"):
        assert noise not in console, noise
    assert "elapsed" in console and "queued" in console
    saved = yaml.safe_load((sweep_dir / "spec.yaml").read_text())["data"]
    assert saved["dir"] == os.path.abspath(data_dir) and saved["cache_dir"] == str(tmp_path / "cache")
    assert any((tmp_path / "cache").iterdir())  # the trials' token cache is where the spec said
    tr = tracker(sweep_dir)
    parent = tr.client.get_run(tr.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.metrics["n_failed"] == 1  # ended with a failure
    runs = tr.trial_runs()
    assert len(runs) == 4 and len(tr.search("tags.role = 'sweep'")) == 1
    statuses = {k: r.info.status for k, r in runs.items()}
    failed = [k for k, s in statuses.items() if s == "FAILED"]
    assert sorted(statuses.values()) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    assert "injected fault at step 4" in runs[failed[0]].data.tags["error"]
    assert all(r.data.tags["mlflow.parentRunId"] == tr.parent_run_id for r in runs.values())

    status = json.loads(here(capsys, "status", str(sweep_dir), "--json")[0])
    assert status["per_status"] == {"FINISHED": 3, "FAILED": 1}
    assert "injected fault" in status["errors"][failed[0]]

    before = {k: (r.info.run_id, r.info.end_time) for k, r in runs.items()}
    cli("rerun-failed", str(sweep_dir), check_rc=0)
    after = tracker(sweep_dir).trial_runs()
    assert {k: r.info.status for k, r in after.items()} == dict.fromkeys(statuses, "FINISHED")
    for k in statuses:
        if k not in failed:  # the others were not touched
            assert (after[k].info.run_id, after[k].info.end_time) == before[k]
    # the rerun is attempt 2, a new run: no error of attempt 1 on it; attempt 1 is nested under it
    live = after[failed[0]]
    assert live.info.run_id != before[failed[0]][0] and live.data.tags["attempt"] == "2"
    assert "error" not in live.data.tags
    assert "error.txt" not in [a.path for a in tr.client.list_artifacts(live.info.run_id)]
    old = tr.client.get_run(before[failed[0]][0])
    assert old.data.tags["role"] == "superseded" and old.data.tags["mlflow.parentRunId"] == live.info.run_id
    assert "injected fault" in old.data.tags["error"]

    parent = tr.client.get_run(tr.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_finished"] == 4
    # every finished trial (the rerun too) logged its model delta; a mask method's mask lies in the sweep folder
    for key, run in after.items():
        logged = {a.path for a in tr.client.list_artifacts(run.info.run_id, "model")}
        assert {"model/delta.safetensors", "model/meta.json"} <= logged, (key, logged)
        meta = json.loads((download_model(tr.uri, run.info.run_id, tmp_path / "dl" / key) / "meta.json").read_text())
        assert (meta["trial_key"], meta["method"]) == (key, run.data.tags["method"])
        assert mask_path(sweep_dir, key).is_file() == (run.data.tags["method"] == "sam"), key
    answer = first.stdout.splitlines()  # the three-line answer at the end of the first run
    best = [line for line in answer if line.startswith("best on average: ")]
    # sam has two seeds on CB, bitfit one (its seed 1 failed): a std only where there are two
    assert len(best) == 1 and (" ± " in best[0]) == best[0].startswith("best on average: sam "), best
    assert (best[0].startswith("best on average: sam ") or "one finished seed on CB, so no std" in best[0]
            or best[0].startswith("best on average: bitfit and sam, tied at ")), best  # tiny model: both majority
    assert any(line == f"report: {sweep_dir / 'report' / 'index.html'}" for line in answer)
    assert any(line.startswith("browse in MLflow: ") and " ui --backend-store-uri sqlite:///" in line and line.endswith(
        f"#/experiments/{tr.experiment_id}/runs?workflowType=machine_learning") for line in answer)

    # in this process: a sweep with nothing left to run, or refused before it writes, starts no Ray
    runs = json.loads((sweep_dir / "identity.json").read_text())["runs"]
    again, _ = here(capsys, "run", str(spec))
    assert "nothing to run" in again and "4 already FINISHED" in again
    assert json.loads((sweep_dir / "identity.json").read_text())["runs"] == runs  # a run that ran nothing: not one
    _, changed = here(capsys, "run", str(spec), "--set", "training.max_steps=7", rc=2)  # would mix two experiments
    assert "training.max_steps: 6 -> 7" in changed and "--force" in changed

    here(capsys, "export", str(sweep_dir))
    trials = pd.read_parquet(sweep_dir / "export" / "trials.parquet")
    assert sorted(trials["trial_key"]) == sorted(statuses) and set(trials["status"]) == {"FINISHED"}
    assert trials["test_score"].notna().all() and (trials["trainable_params"] > 0).all()
    curves = pd.read_parquet(sweep_dir / "export" / "curves.parquet")
    assert set(curves["kind"]) == {"eval"} and (curves.groupby("trial_key")["step"].apply(list) == [[3, 6]] * 4).all()
    import duckdb
    import polars

    assert polars.read_parquet(sweep_dir / "export" / "trials.parquet").height == 4
    path = sweep_dir / "export" / "trials.parquet"
    assert duckdb.sql(f"select count(*) from '{path}'").fetchall()[0][0] == 4

    here(capsys, "analyze", "--trials", str(sweep_dir / "export" / "trials.parquet"), "--out", str(tmp_path / "an"))
    summary = json.loads((tmp_path / "an" / "summary.json").read_text())
    assert summary["n_finished"] == 4 and set(summary["best"]["CB"]) == {"sam", "bitfit"}
    here(capsys, "report", str(sweep_dir), "--out", str(tmp_path / "report"))
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "report" / "ranks.svg").is_file()
    # the local records agree with MLflow
    assert {k: r["status"] for k, r in records(sweep_dir).items()} == dict.fromkeys(statuses, "FINISHED")

    # last (it grows the sweep the checks above count): a grown grid runs only its new trials
    grown = cli("run", str(spec), "--set", "grid.seeds=[0, 1, 2]", check_rc=0)  # growth: only the new trials run
    assert "6 trials, 4 already FINISHED, 2 to run" in grown.stdout and "6/6 FINISHED" in grown.stdout
    # the driver's line counts the grid, not the experiment that runs the new trials (it read "done 2/2")
    assert "done 6/6 | running 0 | failed 0 | queued 0 |" in grown.stdout, grown.stdout[-2000:]
    identity = json.loads((sweep_dir / "identity.json").read_text())
    # run, rerun-failed, the growth (the run with nothing to run is not one)
    assert len(identity["runs"]) == 3 and identity["runs"][-1]["code_version"] == \
        tr.client.get_run(tr.parent_run_id).data.tags["code_version"]


def test_the_answer_line_says_plus_minus_only_with_a_std():
    from dashboards.answer import best_line

    assert best_line("sam", 0.597, 0.035).startswith("best on average: sam 59.7 ± 3.5 (")
    one_seed = best_line("sam", 0.546, None)
    assert "±" not in one_seed and one_seed.startswith("best on average: sam 54.6 (") and "no std" in one_seed


def test_a_restored_grid_waits_for_no_trial_that_ended_before_the_restore():
    """Tune restores the grid generator from a state file that can be older than the experiment state it comes
    with (they sync to cloud storage one after the other). With a concurrency limit Tune's own generator then
    waits, forever, for a trial that had ended: the driver stepped on after every trial FINISHED (seen on S3)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from orchestrator.tune_runner import GridSearch

    def f(config):
        pass

    grid = GridSearch(max_concurrent=1)
    grid.add_configurations({"e": {"run": f, "config": {"x": tune.grid_search([1, 2, 3])}}})
    assert grid.next_trial() is not None and grid.next_trial() is None  # one live trial: the limit holds
    state = grid.get_state()  # the first trial still live, two to create
    plain = BasicVariantGenerator(max_concurrent=1)
    plain.set_state(state)
    assert not plain.is_finished() and plain.next_trial() is None  # Tune's: waits for a trial it will never see end
    restored = GridSearch(max_concurrent=1)
    restored.set_state(state)
    assert restored.is_finished() and restored.next_trial() is None  # the rest run in a new experiment


def test_a_retry_that_starts_over_leaves_its_failed_attempt_with_the_error_one_level_down(tmp_path, tiny_model,
                                                                                          data_dir):
    """A trial failing before its first checkpoint is retried from step 0 in a new MLflow attempt; the attempt
    that failed used to end KILLED with no error, and attempts nested in a chain (6 runs, 5 deep, in a review)."""
    spec = write_spec(tmp_path, tiny_model, data_dir, grid={"methods": ["bitfit"], "tasks": ["CB"], "seeds": [0]},
                      fault={"fail_at_step": 2, "fail_times": 2, "marker_dir": str(tmp_path / "markers")},
                      max_failures=2)
    out = cli("run", str(spec), check_rc=0).stdout
    assert "1/1 FINISHED" in out and "retrying from step 0 (it had no checkpoint): " in out
    tr = tracker(tmp_path / "runs" / "t")
    (live,) = tr.trial_runs().values()
    assert live.info.status == "FINISHED" and live.data.tags["attempt"] == "3"
    earlier = tr.search("tags.role = 'superseded'")
    assert sorted(r.data.tags["attempt"] for r in earlier) == ["1", "2"]
    for run in earlier:
        first_line = run.data.tags["error"].splitlines()[0]
        assert run.info.status == "FAILED" and "InjectedFault: injected fault" in first_line
        assert run.data.tags["mlflow.parentRunId"] == live.info.run_id


def test_an_infinite_max_grad_norm_is_no_tensorboard_warning(caplog):
    """Tune's TensorBoard logger writes each trial's config as hparams when it ends: `max_grad_norm: .inf` (no
    clipping, a valid setting) made tensorboardX warn "NaN or Inf found in input tensor" once per trial."""
    import logging

    from tensorboardX.summary import hparams

    import orchestrator.tune_runner  # noqa: F401 - its import sets the driver's loggers, as a sweep's driver has them

    with caplog.at_level(logging.WARNING):
        hparams({"trial/training/max_grad_norm": float("inf")}, {"test_score": 0.5})
    assert not [r for r in caplog.records if "NaN or Inf" in r.getMessage()], caplog.text
