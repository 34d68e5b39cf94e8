"""The tracking layer against a real MLflow on SQLite, without Ray: what a run looks like, attempts that
never mix, sync of missed evaluations, the parent run's answer, export from the store and the records."""
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator import driver, export, identity, records, sweep
from orchestrator.spec import spec_from_dict
from orchestrator.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING, TrackingError, artifact_root
from benchmarks.synthetic_trials import fake_result, trial_dict
from tests.tracking_fixtures import finish_all, make_spec, record_finished


def _steps(tr, run_id, metric="dev_score"):
    return sorted(m.step for m in tr.history(run_id, metric))


def _sam(spec):
    return next(t for t in spec.trials() if t.method == "sam")


def test_run_name_params_metrics_and_experiment_kind(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("PEFT_SWEEP_DATA_DIR", str(data_dir))
    spec = make_spec(tmp_path)  # data.dir unset: the folder comes from the environment
    tr = sweep.tracker_for(spec)
    cfg = _sam(spec)
    run_id = tr.start_trial(cfg.key, trial_dict(cfg))
    tr.finish(cfg.key, fake_result(cfg))
    run = tr.client.get_run(run_id)
    assert run.info.run_name == f"sam-{cfg.task}-s{cfg.seed}-p0.005"
    params = run.data.params
    assert params["lr"] == "0.01" and "training.lr" not in params and "method.lr" not in params  # one lr
    assert params["method.burnin"] != "" and params["sparsity"] == "0.005"  # defaults filled, plain values
    assert params["data.source"] == str(data_dir.resolve())
    assert "null" not in params.values() and "perturbation" not in params
    metrics = set(run.data.metrics)
    assert {"test_score", "final_dev_score", "test_accuracy", "majority_test_score", "wall_s", "train_s",
            "changed_params"} <= metrics
    assert not metrics & {"best_step", "eligible_params", "n_train", "steps", "final_best_step"}
    assert run.data.tags["result.best_step"] == "9" and run.data.tags["result.n_train"] == "200"
    assert run.data.tags["device"] == "cpu"
    assert tr.client.get_experiment(tr.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    assert tr.runs_url().endswith(f"#/experiments/{tr.experiment_id}/runs?workflowType=machine_learning")


def test_rerun_of_failed_and_forced_keys_is_a_new_clean_attempt(tmp_path, data_dir):
    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    cfg = _sam(spec)
    first = tr.start_trial(cfg.key, trial_dict(cfg))
    for step in (3, 6):
        tr.log_eval(cfg.key, {"step": step, "dev_score": 0.1, "train_loss": 1.0, "lr": 1e-3})
    tr.fail(cfg.key, "Traceback ...\nRuntimeError: boom")

    tr = sweep.tracker_for(spec)  # rerun-failed: a new driver
    second = tr.start_trial(cfg.key, trial_dict(cfg))
    for step in (3, 6, 9):
        tr.log_eval(cfg.key, {"step": step, "dev_score": 0.5, "train_loss": 0.5, "lr": 1e-3})
    tr.finish(cfg.key, fake_result(cfg))
    live = tr.trial_runs()[cfg.key]
    assert live.info.run_id == second != first and live.info.status == "FINISHED"
    assert "error" not in live.data.tags and live.data.tags["attempt"] == "2"
    assert "error.txt" not in [a.path for a in tr.client.list_artifacts(second)]
    assert _steps(tr, second) == [3, 6, 9]  # one value per step
    old = tr.client.get_run(first)
    assert old.data.tags["role"] == "superseded" and old.data.tags["mlflow.parentRunId"] == second
    assert old.data.tags["superseded_by"] == second and "boom" in old.data.tags["error"]

    tr = sweep.tracker_for(spec)  # --force: the finished key runs again
    third = tr.start_trial(cfg.key, trial_dict(cfg))
    for step in (3, 6, 9):
        tr.log_eval(cfg.key, {"step": step, "dev_score": 0.6, "train_loss": 0.4, "lr": 1e-3})
    tr.finish(cfg.key, fake_result(cfg, score=0.7))
    tr.finish(cfg.key, fake_result(cfg, score=0.7))  # e.g. a sync after a finish that half-failed
    assert third not in (first, second) and _steps(tr, third) == [3, 6, 9]
    assert [m.value for m in tr.history(third, "test_score")] == [0.7]
    assert len(tr.search("tags.role = 'trial'")) == 1 and tr.run_id(cfg.key) == third


def test_a_retry_in_the_same_attempt_keeps_its_run(tmp_path, data_dir):
    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    cfg = _sam(spec)
    run_id = tr.start_trial(cfg.key, trial_dict(cfg))
    assert sweep.tracker_for(spec).start_trial(cfg.key, trial_dict(cfg)) == run_id  # still RUNNING: same run



def test_a_resumed_run_logs_no_step_twice(tmp_path, data_dir):
    """A resumed trial replays the evaluations between its checkpoint and the kill (a killed driver had logged them
    already): its run keeps the first value of each step (a resume is bit-exact) and gets the steps after."""
    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    cfg = _sam(spec)
    run_id = tr.start_trial(cfg.key, trial_dict(cfg))
    for step in (3, 6, 9):
        tr.log_eval(cfg.key, {"step": step, "dev_score": step / 10, "train_loss": 1.0, "lr": 1e-3})

    tr = sweep.tracker_for(spec)  # the resumed driver; the trial resumes from its checkpoint of step 3
    assert tr.start_trial(cfg.key, trial_dict(cfg)) == run_id
    for step in (6, 9, 12):
        tr.log_eval(cfg.key, {"step": step, "dev_score": step / 10 + 0.05, "train_loss": 1.0, "lr": 1e-3})
    assert [(m.step, m.value) for m in sorted(tr.history(run_id, "dev_score"), key=lambda m: m.step)] == \
        [(3, 0.3), (6, 0.6), (9, 0.9), (12, 1.25)]
    assert _steps(tr, run_id, "train_loss") == [3, 6, 9, 12]

def test_sync_fills_evaluations_missed_during_an_outage(tmp_path, data_dir):
    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    cfg = _sam(spec)
    result = fake_result(cfg)
    tr.start_trial(cfg.key, trial_dict(cfg))
    tr.log_eval(cfg.key, result["curve"][0])  # steps 6 and 9 were lost while the store was down
    tr.finish(cfg.key, result)
    record_finished(spec, cfg, result, synced=False)
    assert sweep.sync(spec, sweep.tracker_for(spec)) == 1
    tr = sweep.tracker_for(spec)
    assert _steps(tr, tr.run_id(cfg.key)) == [3, 6, 9]
    assert [m.value for m in tr.history(tr.run_id(cfg.key), "test_score")] == [result["test_score"]]
    assert records.read(spec.sweep_dir, cfg.key)["synced"] is True
    assert sweep.sync(spec, tr) == 0


def test_a_store_rebuilt_from_the_records_keeps_what_each_trial_ran_with(tmp_path, data_dir):
    spec = make_spec(tmp_path, data_dir)
    for cfg in spec.trials():  # finished under an older commit; this store never saw them (another machine)
        record_finished(spec, cfg, fake_result(cfg))
        records.update(spec.sweep_dir, cfg.key, code_version="git:0123456789ab")
    tr = sweep.tracker_for(spec)
    assert sweep.sync(spec, tr) == len(spec.trials())
    runs = tr.trial_runs()
    assert len(runs) == len(spec.trials()) and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert {r.data.tags["code_version"] for r in runs.values()} == {"git:0123456789ab"}
    cfg = _sam(spec)
    assert _steps(tr, runs[cfg.key].info.run_id) == [3, 6, 9]


@pytest.mark.parametrize("fail", [0, 1])
def test_sync_closes_a_parent_left_running_with_the_analysis(tmp_path, data_dir, fail):
    spec = make_spec(tmp_path, data_dir)
    tr = finish_all(spec, fail)
    tr.start_sweep(sweep.spec_params(spec))  # a driver that died: the parent says RUNNING
    assert tr.parent_status() == "RUNNING"
    sweep.sync(spec, tr)
    parent = tr.client.get_run(tr.parent_run_id)
    assert parent.info.status == ("FAILED" if fail else "FINISHED")
    assert parent.data.params["grid.methods"] == '["sam", "bitfit"]' and parent.data.params["training.max_steps"] == "9"
    m = parent.data.metrics
    assert m["n_finished"] == len(spec.trials()) - fail and m["n_failed"] == fail
    assert {"spearman_rho", "spearman_permutation_p_value", "spearman_p_value", "best_mean.CB", "best_mean.RTE"} <= set(m)
    assert parent.data.tags["best_method.CB"] in ("sam", "bitfit")
    arts = {a.path for folder in ("analysis", "report") for a in tr.client.list_artifacts(tr.parent_run_id, folder)}
    assert {"analysis/table.csv", "analysis/summary.json", "report/index.html", "report/ranks.svg"} <= arts
    summary = json.loads((spec.sweep_dir / "analysis" / "summary.json").read_text())
    assert m["spearman_rho"] == pytest.approx(summary["spearman"]["rho"])


def test_parent_of_a_live_driver_is_left_alone(tmp_path, data_dir):
    spec = make_spec(tmp_path, data_dir)
    tr = finish_all(spec)
    tr.start_sweep({})
    driver.register(spec.sweep_dir)
    sweep.sync(spec, tr)
    assert tr.parent_status() == "RUNNING"


def test_deleted_experiment_says_how_to_restore(tmp_path, data_dir):
    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    tr.client.delete_experiment(tr.experiment_id)
    with pytest.raises(TrackingError, match=r"was deleted; restore it with `mlflow experiments restore "
                                            rf"--experiment-id {tr.experiment_id}`.*another name"):
        sweep.tracker_for(spec).check()


def test_export_joins_store_and_records_and_keeps_every_scalar_field(tmp_path, data_dir):
    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    in_store, only_local, failed = spec.trials()[:3]
    result = fake_result(in_store, variant="sam-global", head_params=1538, changed_outside_mask=0,
                         mask_anatomy=[{"layer": "0", "kind": "attn.q", "count": 3}])
    tr.start_trial(in_store.key, trial_dict(in_store))
    tr.finish(in_store.key, result)
    record_finished(spec, in_store, result)
    record_finished(spec, only_local, fake_result(only_local), synced=False)  # the store was down
    tr.start_trial(failed.key, trial_dict(failed))
    tr.log_eval(failed.key, {"step": 3, "dev_score": 0.2, "train_loss": 2.0, "lr": 1e-3})
    tr.fail(failed.key, "RuntimeError: boom")

    trials_path, curves_path = export.export(spec, tmp_path / "out")
    df = pd.read_parquet(trials_path).set_index("trial_key")
    assert df.loc[in_store.key, "source"] == "mlflow" and df.loc[only_local.key, "source"] == "records"
    assert df.loc[in_store.key, "method"] == "sam-global" and df.loc[in_store.key, "base_method"] == "sam"
    assert df.loc[only_local.key, "method"] == only_local.method
    assert df.loc[in_store.key, "head_params"] == 1538 and "mask_anatomy" not in df.columns
    anatomy = pq.read_table(tmp_path / "out" / "masks.parquet")
    assert anatomy.to_pylist() == [{"trial_key": in_store.key, "method": "sam-global", "task": in_store.task,
                                           "seed": in_store.seed, "sparsity": in_store.sparsity,
                                           "perturbation": None, "layer": "0", "kind": "attn.q", "count": 3}]
    for field in ("majority_test_score", "majority_dev_score", "device", "added_params", "resumed_from_step",
                  "n_train", "n_dev", "n_test", "setup_s", "train_s", "eval_s", "checkpoint_s"):
        assert field in df.columns, field
    assert df.loc[only_local.key, "majority_test_score"] == 0.45 and df.loc[in_store.key, "n_train"] == 200
    assert df.loc[failed.key, "status"] == "FAILED" and "boom" in df.loc[failed.key, "error"]
    curves = pd.read_parquet(curves_path)
    assert curves.groupby("trial_key")["step"].apply(list).to_dict() == {
        in_store.key: [3, 6, 9], only_local.key: [3, 6, 9], failed.key: [3]}


def test_a_result_too_long_for_a_tag_is_read_back_whole(tmp_path, data_dir):
    """MLflow's tags hold 8,000 characters: the result tag was cut there, and reading it back (export, sync)
    raised on the cut JSON. Past the limit the tag is left out and result.json is read instead."""
    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    cfg = spec.trials()[0]
    result = fake_result(cfg, note="x" * 9000)
    tr.start_trial(cfg.key, trial_dict(cfg))
    tr.finish(cfg.key, result)
    (run,) = tr.trial_runs().values()
    assert tr.result(run)["note"] == "x" * 9000 and tr.result(run)["test_score"] == result["test_score"]


def test_a_model_upload_waits_longer_than_the_drivers_short_timeout(tmp_path, data_dir, monkeypatch):
    """The driver's MLflow calls time out after 10 s so that a dead server cannot hang it; a model delta sent
    through a server with --artifacts-destination waits for the server's own write of hundreds of MB, and timed
    out on every retry. The real upload runs; the spy only reads the timeout MLflow's HTTP calls would use."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    cfg = spec.trials()[0]
    tr.start_trial(cfg.key, trial_dict(cfg))
    folder = tmp_path / "delta"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    seen = []
    upload = tr.client.log_artifacts

    def spy(*args, **kwargs):
        seen.append(MLFLOW_HTTP_REQUEST_TIMEOUT.get())
        return upload(*args, **kwargs)

    monkeypatch.setattr(tr.client, "log_artifacts", spy)
    tr.log_model(cfg.key, folder, trial_dict(cfg))
    assert seen == [600] and MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 10  # and back to short after it
    (run,) = tr.trial_runs().values()
    assert [a.path for a in tr.client.list_artifacts(run.info.run_id, "model")] == ["model/meta.json"]


def test_programming_error_in_tracking_is_not_an_outage():
    from orchestrator.tracking import is_outage
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    assert is_outage(ConnectionError("refused")) and is_outage(MlflowException("API request failed"))
    assert not is_outage(TypeError("bad argument")) and not is_outage(KeyError("trial_key"))
    assert not is_outage(MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE))


def test_stop_with_no_driver_left_marks_its_running_trials_and_they_resume_into_the_same_run(tmp_path, data_dir,
                                                                                            capsys):
    from orchestrator import control
    from orchestrator.cli import main

    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    tr.start_sweep({})
    cfg = _sam(spec)
    run_id = tr.start_trial(cfg.key, trial_dict(cfg))
    records.update(spec.sweep_dir, cfg.key, status="RUNNING", trial=trial_dict(cfg), synced=True)
    (spec.sweep_dir / sweep.SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json")))  # as `run` leaves it
    assert control.stop(spec.sweep_dir, timeout_s=5) == 0  # the driver that ran it was killed
    assert "1 trial(s) it left RUNNING are now STOPPED" in capsys.readouterr().out
    assert control.stop(spec.sweep_dir, timeout_s=5) == 0  # again: nothing is left RUNNING
    assert "nothing to stop (no trial was left RUNNING)" in capsys.readouterr().out
    run = tr.client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["stopped"] == "true" and tr.parent_status() == "KILLED"
    assert records.read(spec.sweep_dir, cfg.key)["status"] == "STOPPED"
    assert sweep.statuses(spec, tr)[cfg.key] == "STOPPED"  # as the records and the README say, not MLflow's KILLED
    assert main(["status", str(spec.sweep_dir)]) == 0 and "STOPPED 1" in capsys.readouterr().out
    again = sweep.tracker_for(spec).start_trial(cfg.key, trial_dict(cfg))  # the resumed trial
    run = tr.client.get_run(again)
    assert again == run_id and run.info.status == "RUNNING" and "stopped" not in run.data.tags


def test_force_after_a_stop_starts_a_new_attempt_instead_of_reopening(tmp_path, data_dir):
    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    cfg = _sam(spec)
    run_id = tr.start_trial(cfg.key, trial_dict(cfg))
    tr.stop_trial(cfg.key)
    assert tr.forget_stops() == 1  # what `run --force` does first
    again = sweep.tracker_for(spec).start_trial(cfg.key, trial_dict(cfg))
    run = tr.client.get_run(again)
    assert again != run_id and run.data.tags["attempt"] == "2" and run.data.tags["previous_run_id"] == run_id


def test_the_learning_rate_used_is_a_param_and_a_column_with_the_code_version_and_attempt(tmp_path, data_dir):
    from orchestrator.identity import code_version
    from trainables.methods import get_method

    spec = make_spec(tmp_path, data_dir)  # sam sets its lr; bitfit sets none and no training.lr: its default
    tr = sweep.tracker_for(spec)
    sam = _sam(spec)
    bitfit, only_local = [t for t in spec.trials() if t.method == "bitfit"][:2]
    default = get_method("bitfit").default_lr
    for cfg in (sam, bitfit):
        tr.start_trial(cfg.key, trial_dict(cfg))
        tr.finish(cfg.key, fake_result(cfg))
    assert tr.client.get_run(tr.run_id(bitfit.key)).data.params["lr"] == repr(default)
    tr.fail(bitfit.key, "RuntimeError: boom")  # make the next attempt a new run
    tr = sweep.tracker_for(spec)
    tr.start_trial(bitfit.key, trial_dict(bitfit))
    tr.finish(bitfit.key, fake_result(bitfit))
    record_finished(spec, only_local, fake_result(only_local), synced=False)  # the store was down

    df = pd.read_parquet(export.export(spec, tmp_path / "out")[0]).set_index("trial_key")
    assert df.loc[sam.key, "lr"] == 1e-2 and df.loc[bitfit.key, "lr"] == default
    assert df.loc[only_local.key, "lr"] == default  # no run: resolved from the record's config
    assert df.loc[sam.key, "attempt"] == 1 and df.loc[bitfit.key, "attempt"] == 2
    assert (df.loc[[sam.key, bitfit.key], "code_version"] == code_version()).all()
    schema = pq.read_schema(tmp_path / "out" / "trials.parquet")
    assert (str(schema.field("lr").type), str(schema.field("attempt").type),
            str(schema.field("code_version").type)) == ("double", "int64", "string")


def test_a_failed_runs_error_tag_opens_with_the_exception(tmp_path, data_dir):
    """The tag is a column of MLflow's runs table: it used to open with the middle of a traceback ('^^^^')."""
    spec = make_spec(tmp_path, data_dir)
    tr = sweep.tracker_for(spec)
    cfg = _sam(spec)
    tr.start_trial(cfg.key, trial_dict(cfg))
    traceback = "Traceback (most recent call last):\n" + '  File "x.py", line 1\n    ^^^^^\n' * 400 + \
        "RuntimeError: value cannot be converted to type float without overflow\n"
    tr.fail(cfg.key, traceback)
    tag = tr.trial_runs()[cfg.key].data.tags["error"]
    assert tag.startswith("RuntimeError: value cannot be converted") and len(tag) <= 4000


def test_the_resume_command_joins_the_cluster_a_job_ran_on(tmp_path, data_dir, monkeypatch, capsys):
    """Under `ray job submit` the cluster comes from $RAY_ADDRESS, which spec.yaml does not hold: the printed
    `peft-sweep run SPEC` would have started a local Ray on the login node and run the rest of the sweep there."""
    from orchestrator import control

    spec = make_spec(tmp_path, data_dir)
    spec.sweep_dir.mkdir(parents=True)
    cfg = _sam(spec)
    records.update(spec.sweep_dir, cfg.key, status="RUNNING", trial=trial_dict(cfg), synced=True)  # a dead driver's
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # as the job's driver sees it
    identity.record_run(spec)
    monkeypatch.delenv("RAY_ADDRESS")  # the shell that stops it later
    (spec.sweep_dir / sweep.SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    command = sweep.resume_command(spec)
    assert f"peft-sweep run {spec.sweep_dir / sweep.SPEC_FILE} --set ray.address=10.0.0.1:6379" in command
    assert "ray job submit" in command
    assert control.stop(spec.sweep_dir, timeout_s=5) == 0
    assert "--set ray.address=10.0.0.1:6379" in capsys.readouterr().out
    assert "queued 7 | stopped 1 (resumable)" in control.progress(spec).line()  # not counted as queued
    identity.record_run(spec)  # a later run on a local Ray
    assert sweep.resume_command(spec) == f"peft-sweep run {spec.sweep_dir / sweep.SPEC_FILE}"


@pytest.mark.parametrize("uri,kept", [
    ("sqlite:////x/mlflow.db", True), ("/x/mlflow.db", True),
    ("postgresql://u@db:5432/mlflow", True), ("mysql+pymysql://u@db/mlflow", True),  # MLflow: ./mlruns of the cwd
    ("http://mlflow:5000", False), ("https://mlflow.example.org", False), ("databricks", False),
])
def test_an_experiment_keeps_its_artifacts_in_the_sweep_folder_unless_a_server_stores_them(uri, kept, tmp_path):
    got = artifact_root(uri, tmp_path / "sweep")
    assert got == ((tmp_path / "sweep" / "mlartifacts").as_uri() if kept else None)


def test_export_without_the_sweeps_store_reads_the_records_and_makes_no_empty_store(tmp_path, data_dir, capsys):
    """A sweep folder whose mlflow.db was deleted (or not copied): export made a new, empty store there, silently."""
    spec = make_spec(tmp_path, data_dir)
    for cfg in spec.trials():
        record_finished(spec, cfg, fake_result(cfg))
    trials, _ = export.export(spec, tmp_path / "out")
    assert not (spec.sweep_dir / "mlflow.db").exists()
    assert f"the sweep's MLflow store {spec.sweep_dir / 'mlflow.db'} is missing" in capsys.readouterr().err
    got = pd.read_parquet(trials)
    assert len(got) == len(spec.trials()) and set(got["source"]) == {"records"}


def test_export_has_a_row_for_every_grid_trial_and_calls_a_stop_a_stop(tmp_path, data_dir, capsys):
    """A trial the grid holds but no driver started was in no file (the report said "2 of 3" of a 4-trial grid),
    and a stopped trial was exported as MLflow's KILLED where `status` says STOPPED."""
    from orchestrator import control

    spec = make_spec(tmp_path, data_dir, tasks=["CB"])  # sam, bitfit x seeds 0, 1
    tr = sweep.tracker_for(spec)
    tr.start_sweep({})
    done, stopped, *never = spec.trials()
    tr.start_trial(done.key, trial_dict(done))
    tr.finish(done.key, fake_result(done))
    record_finished(spec, done, fake_result(done))
    tr.start_trial(stopped.key, trial_dict(stopped))
    records.update(spec.sweep_dir, stopped.key, status="RUNNING", trial=trial_dict(stopped), synced=True)
    (spec.sweep_dir / sweep.SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    assert control.stop(spec.sweep_dir, timeout_s=5) == 0
    export.export(spec, tmp_path / "out")
    rows = pq.read_table(tmp_path / "out" / "trials.parquet").to_pandas().set_index("trial_key")
    assert sorted(rows.index) == sorted(t.key for t in spec.trials())
    assert rows.loc[stopped.key, "status"] == "STOPPED" and rows.loc[done.key, "status"] == "FINISHED"
    for cfg in never:
        row = rows.loc[cfg.key]
        assert (row["status"], row["method"], row["task"], row["seed"], row["source"]) == \
            ("PENDING", cfg.label, "CB", cfg.seed, "grid")
        assert bool(row["in_grid"]) and pd.isna(row["mlflow_run_id"])


def test_runs_of_trials_a_changed_spec_left_are_tagged_out_of_the_grid(tmp_path, data_dir):
    """After `run --force` with other settings the old runs kept role=trial and the same names and tags: MLflow's
    views mixed both specs, which only the export's in_grid told apart."""
    old = make_spec(tmp_path, data_dir, tasks=["CB"])
    tr = finish_all(old)
    new = spec_from_dict({**old.model_dump(mode="json"), "training": {"max_steps": 12, "eval_every": 3}})
    assert {r.data.tags["in_grid"] for r in tr.trial_runs().values()} == {"true"}  # as each run is made
    sweep.sync(new, tr, mend_parent=False)  # as `run` with the new spec, or `sync`, begins
    runs = tr.trial_runs()
    assert {runs[t.key].data.tags.get("in_grid") for t in old.trials()} == {"false"}
    assert len(tr.search("tags.in_grid = 'true'")) == 0  # what the README's filter shows
    assert sweep.mark_out_of_grid(new, tr) == 0  # tagged once
    assert sweep.mark_out_of_grid(old, tr) == 0  # back in the grid
    assert {r.data.tags["in_grid"] for r in tr.trial_runs().values()} == {"true"}


def test_a_stopped_runs_own_counts_leave_out_what_earlier_drivers_finished(tmp_path, data_dir):
    """A resumed experiment's Tune counts hold the trials earlier drivers finished in it: a stop said "this run 3
    FINISHED" of a run that finished one."""
    import os
    import time

    spec = make_spec(tmp_path, data_dir, tasks=["CB"])
    earlier, mine, failed, _ = spec.trials()
    record_finished(spec, earlier, fake_result(earlier))
    past = time.time() - 600
    os.utime(spec.sweep_dir / "records" / f"{earlier.key}.json", (past, past))  # an earlier driver's
    started = time.time() - 1
    record_finished(spec, mine, fake_result(mine))
    records.update(spec.sweep_dir, failed.key, status="FAILED", error="boom")
    assert sweep.ended_since(spec, started) == {"FINISHED": 1, "FAILED": 1}


def test_finished_trials_that_rekey_under_new_code_are_named(tmp_path, data_dir):
    """A method that gains a setting (diffprune's alpha_lr) changes the key of every trial of it, since keys hash
    every setting: `run` reran them with no word, and called the old ones trials the grid does not hold."""
    spec = make_spec(tmp_path, data_dir, tasks=["CB"])
    cfg = spec.trials()[0]
    older = cfg.model_copy(update={"method_params": {**cfg.method_params, "burnin": 99}})  # as older code keyed it
    assert older.key != cfg.key
    record_finished(spec, older, fake_result(older))
    record_finished(spec, spec.trials()[1], fake_result(spec.trials()[1]))
    assert sweep.rekeyed(spec) == {cfg.key: older.key}


def test_a_runs_own_counts_go_by_when_a_trial_ended_not_when_its_record_was_last_touched(tmp_path, data_dir):
    """Record times come from the file server's clock and change with any later update (a model logged, a sync):
    the end is stamped by the driver that saw it."""
    import time

    spec = make_spec(tmp_path, data_dir, tasks=["CB"])
    earlier = spec.trials()[0]
    local = records.SweepRecords(spec.sweep_dir)
    local.started(earlier.key, trial_dict(earlier))
    local.finished(earlier.key, fake_result(earlier))
    records.update(spec.sweep_dir, earlier.key, ended_at=time.time() - 600)  # ended under an earlier driver
    started = time.time() - 1
    records.update(spec.sweep_dir, earlier.key, model_logged=True)  # touched during this run
    assert sweep.ended_since(spec, started) == {}
    assert records.read(spec.sweep_dir, spec.trials()[0].key)["ended_at"] < started


def test_two_sweep_folders_of_one_name_cannot_share_a_tracking_store(tmp_path, tiny_model, data_dir, capsys,
                                                                    monkeypatch):
    """One MLflow experiment per sweep name: a second folder (another output_dir, same name, same server) found the
    first sweep's runs, said "2 already FINISHED, nothing to run" and trained nothing; with a changed spec it logged
    into the first sweep's experiment and parent run, re-tagged its runs out of the grid and overwrote its report.
    The experiment now names the sweep folder it belongs to (identity.json's sweep_id); another folder is refused,
    by `validate` and `run` alike, before anything is written."""
    from orchestrator.cli import main
    from orchestrator.spec import load_spec
    from tests.sweeps import write_spec

    monkeypatch.setenv("RAY_ADDRESS", "")
    store = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    (tmp_path / "shared").mkdir()
    first = load_spec(write_spec(tmp_path / "a", tiny_model, data_dir, tracking_uri=store))
    first.sweep_dir.mkdir(parents=True)
    mine = identity.ensure_sweep_id(first.sweep_dir)
    tracker = sweep.tracker_for(first)
    tracker.check()  # as `run` does once the folder is made: the experiment is created, and names its folder
    assert tracker.client.get_experiment(tracker.experiment_id).tags["peft_sweep.sweep_id"] == mine
    assert identity.ensure_sweep_id(first.sweep_dir) == mine  # kept, not drawn again

    other = write_spec(tmp_path / "b", tiny_model, data_dir, tracking_uri=store)
    for command in ("validate", "run"):
        assert main([command, str(other)]) == 2
        err = capsys.readouterr().err
        assert f"the MLflow experiment 't' in {store} belongs to another sweep folder ({first.sweep_dir})" in err, err
        assert "--set name=" in err
    assert not (tmp_path / "b" / "runs").exists()
    assert main(["validate", str(tmp_path / "a" / "spec.yaml")]) == 0  # its own folder is welcome


def test_a_copy_of_a_sweep_folder_is_refused_the_experiment_its_original_still_uses(tmp_path, tiny_model, data_dir,
                                                                                     capsys, monkeypatch):
    """`cp -r` of a sweep folder keeps its sweep_id: against one shared store, copy and original both passed the
    ownership check and wrote trials of the same keys into one experiment. A copy is refused while the original
    holds the sweep; a move (the original gone), the same folder by another path, or the copy given a store of its
    own go on."""
    import shutil

    from orchestrator.cli import main
    from orchestrator.spec import load_spec
    from tests.sweeps import write_spec

    monkeypatch.setenv("RAY_ADDRESS", "")
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    first = load_spec(write_spec(tmp_path / "a", tiny_model, data_dir, tracking_uri=store))
    first.sweep_dir.mkdir(parents=True)
    identity.ensure_sweep_id(first.sweep_dir)
    (first.sweep_dir / sweep.SPEC_FILE).write_text((tmp_path / "a" / "spec.yaml").read_text())
    sweep.tracker_for(first).check()
    done = first.trials()[0]
    record_finished(first, done, fake_result(done))
    copy = tmp_path / "b" / "runs" / "t"
    shutil.copytree(first.sweep_dir, copy)

    assert main(["validate", str(copy / sweep.SPEC_FILE)]) == 2
    err = capsys.readouterr().err
    assert f"{copy} is a copy of {first.sweep_dir}" in err and "remove the original" in err, err
    assert f"--set tracking_uri=sqlite:///{copy}/mlflow.db" in err, err
    assert main(["validate", str(copy / sweep.SPEC_FILE), "--set", f"tracking_uri=sqlite:///{copy}/mlflow.db"]) == 0
    own = load_spec(copy / sweep.SPEC_FILE, [f"tracking_uri=sqlite:///{copy}/mlflow.db", f"output_dir={copy.parent}"])
    own_store = sweep.tracker_for(own)
    assert sweep.sync(own, own_store, mend_parent=False) == 1  # as `run` does first: the copy's trial is in its store
    assert list(own_store.trial_runs()) == [done.key]
    (tmp_path / "link").symlink_to(tmp_path / "a")  # the same folder by another path is no copy
    assert main(["validate", str(tmp_path / "link" / "runs" / "t" / sweep.SPEC_FILE)]) == 0, capsys.readouterr().err
    shutil.rmtree(first.sweep_dir)  # moved, not copied
    assert main(["validate", str(copy / sweep.SPEC_FILE)]) == 0, capsys.readouterr().err


@pytest.mark.slow
def test_a_server_that_refuses_our_host_name_is_said_to_refuse_it_at_validate(tmp_path, tiny_model, data_dir, capsys,
                                                                              monkeypatch):
    """MLflow 3 answers /health to any host but refuses the API to a Host header outside --allowed-hosts (default:
    localhost and private IPs): `validate` said "valid" (it asked /health only), then `run` failed on "unreachable"
    with a 403 and no word of --allowed-hosts."""
    from benchmarks.mlflow_server import free_port, start_server, stop_server
    from orchestrator.cli import main
    from tests.sweeps import write_spec

    monkeypatch.setenv("RAY_ADDRESS", "")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_port()
    server = start_server(tmp_path / "db.sqlite", tmp_path / "artifacts", port, allowed_hosts="mlflow.example.com")
    try:
        spec = write_spec(tmp_path, tiny_model, data_dir, tracking_uri=f"http://127.0.0.1:{port}")
        for command in ("validate", "run"):
            assert main([command, str(spec)]) == 2
            err = capsys.readouterr().err
            assert f"refuses the host name '127.0.0.1:{port}' (HTTP 403, Invalid Host header" in err, err
            assert f"--allowed-hosts 127.0.0.1:{port}" in err and "unreachable" not in err, err
        assert not (tmp_path / "runs").exists()
    finally:
        stop_server(server)


def test_a_sweep_is_never_refused_its_own_experiment(tmp_path, tiny_model, data_dir, capsys, monkeypatch):
    """From a review of the check above: (1) a first run that failed after its experiment was made (a node that
    cannot read Tune's storage) had its folder removed, and every later run of it was refused as "another folder";
    (2) identity.json deleted, as its own error message advises, drew a new id that the folder's own store refused;
    (3) an experiment made before experiments named their folder, and holding runs, was taken over by a fresh
    folder of the same name (the collision the check exists for)."""
    import shutil

    from orchestrator.cli import main
    from orchestrator.spec import load_spec
    from orchestrator.tracking import SWEEP_ID_TAG
    from tests.sweeps import write_spec

    monkeypatch.setenv("RAY_ADDRESS", "")
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    path = write_spec(tmp_path / "a", tiny_model, data_dir, tracking_uri=store)
    spec = load_spec(path)
    spec.sweep_dir.mkdir(parents=True)
    identity.ensure_sweep_id(spec.sweep_dir)
    sweep.tracker_for(spec).check()
    shutil.rmtree(spec.sweep_dir)  # (1) the failed first run's folder, removed
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    spec.sweep_dir.mkdir(parents=True)
    again = identity.ensure_sweep_id(spec.sweep_dir)
    tracker = sweep.tracker_for(spec)
    tracker.check()
    assert tracker.client.get_experiment(tracker.experiment_id).tags[SWEEP_ID_TAG] == again  # re-adopted

    own = load_spec(write_spec(tmp_path / "o", tiny_model, data_dir))  # (2) the folder's own store
    own.sweep_dir.mkdir(parents=True)
    identity.ensure_sweep_id(own.sweep_dir)
    sweep.tracker_for(own).check()
    (own.sweep_dir / "identity.json").unlink()
    new = identity.ensure_sweep_id(own.sweep_dir)
    tracker = sweep.tracker_for(own)
    tracker.check()
    assert tracker.client.get_experiment(tracker.experiment_id).tags[SWEEP_ID_TAG] == new

    legacy = f"sqlite:///{tmp_path / 'legacy.db'}"  # (3) an untagged experiment with a run in it
    old = load_spec(write_spec(tmp_path / "old", tiny_model, data_dir, tracking_uri=legacy))
    client = sweep.tracker_for(old).client
    client.create_run(client.create_experiment("t"))
    fresh = write_spec(tmp_path / "fresh", tiny_model, data_dir, tracking_uri=legacy)
    capsys.readouterr()
    assert main(["validate", str(fresh)]) == 2
    assert "belongs to a sweep folder made before experiments named their folder" in capsys.readouterr().err
    records.SweepRecords(old.sweep_dir).finished(old.trials()[0].key, {"test_score": 0.5})  # the folder that ran
    assert main(["validate", str(tmp_path / "old" / "spec.yaml")]) == 0, capsys.readouterr().err


def test_a_port_chosen_for_later_is_one_the_kernel_never_hands_out():
    """The outage test restarts its MLflow server on the same port, the cluster test gives Ray ports chosen
    earlier: a port from bind(0) can be handed out again meanwhile, to any socket that binds port 0 (Ray's)."""
    from pathlib import Path

    from benchmarks.mlflow_server import RAY_WORKER_PORTS, free_port

    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(20)]
    assert all(p > RAY_WORKER_PORTS[1] and not low <= p <= high for p in ports), ports
