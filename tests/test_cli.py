"""The CLI's own checks and texts, in-process and without Ray: `validate` meets what `run` would meet,
options that would do nothing are refused, train-one's defaults, and the help texts."""
import argparse
from pathlib import Path

import pytest
import yaml

from orchestrator import driver, records, sweep
from orchestrator.cli import train_one_config, build_parser, main
from orchestrator.spec import DEFAULT_SPARSITY, Grid, load_spec
from tests.sweeps import write_spec


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*argv)`` -> (exit code, stdout, stderr) of ``main(argv)``."""
    monkeypatch.setenv("RAY_ADDRESS", "")

    def call(*argv: str):
        rc = main(list(argv))
        out = capsys.readouterr()
        return rc, out.out, out.err
    return call


@pytest.fixture
def ran(tmp_path, tiny_model, data_dir):
    """A spec whose sweep folder exists as `run` leaves it (its spec.yaml), with one trial FINISHED."""
    path = write_spec(tmp_path, tiny_model, data_dir)
    spec = load_spec(path)
    spec.sweep_dir.mkdir(parents=True)
    (spec.sweep_dir / sweep.SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    records.SweepRecords(spec.sweep_dir).finished(spec.trials()[0].key, {"test_score": 0.5})
    return path, spec


def test_validate_refuses_a_changed_spec_as_run_does(ran, cli):
    path, spec = ran
    rc, _, err = cli("validate", str(path), "--set", "training.max_steps=7")
    assert rc == 2 and "was run with another spec (training.max_steps: 6 -> 7)" in err and "--force" in err
    rc, out, _ = cli("validate", str(path), "--set", "training.max_steps=7", "--force")
    assert rc == 0 and "4 trials, 0 already FINISHED, 4 to run" in out  # --force reruns them all
    assert sorted(p.name for p in spec.sweep_dir.iterdir()) == ["records", "spec.yaml"]  # nothing written
    rc, out, _ = cli("validate", str(path), "--force")  # the same spec: its FINISHED trial runs again, said so
    assert rc == 0 and "4 trials, 1 FINISHED before, all 4 run again (--force)" in out, out  # was "1 already
    # FINISHED, 4 to run"


def test_validate_says_what_run_would_do_for_an_existing_sweep(ran, cli, tmp_path, tiny_model, data_dir):
    path, spec = ran
    rc, out, _ = cli("validate", str(path))
    assert rc == 0 and f"valid; 4 trials, 1 already FINISHED, 3 to run -> {spec.sweep_dir}" in out
    grown = write_spec(tmp_path, tiny_model, data_dir, grid__seeds=[0, 1, 2])  # growing the grid is fine
    rc, out, _ = cli("validate", str(grown))
    assert rc == 0 and "6 trials, 1 already FINISHED, 5 to run" in out


def test_validate_refuses_while_a_driver_runs_the_sweep(ran, cli):
    path, spec = ran
    driver.register(spec.sweep_dir)  # this process, alive
    try:
        rc, _, err = cli("validate", str(path))
    finally:
        driver.unregister(spec.sweep_dir)
    assert rc == 2 and "sweep 't' is running" in err and "two drivers" in err


def _train_one(*argv: str):
    return train_one_config(build_parser().parse_args(["train-one", "--task", "cb", *argv]))


def test_train_one_uses_the_spec_default_sparsity():
    assert _train_one("--method", "sam").sparsity == DEFAULT_SPARSITY == Grid.model_fields["sparsities"].default[0]
    assert _train_one("--method", "sam", "--sparsity", "0.01").sparsity == 0.01
    assert _train_one("--method", "bitfit").sparsity is None  # takes none
    help_text = _subcommands()["train-one"].format_help()
    assert f"(default: {DEFAULT_SPARSITY}" in help_text and "2000 training steps" in help_text


def test_train_one_refuses_settings_of_another_method(cli):
    rc, _, err = cli("train-one", "--task", "CB", "--method", "sam", "--sparsity", "0.01",
                     "--set", "methods.lora.rank=4")
    assert rc == 2 and "--set methods.lora.*" in err and "--method sam" in err and "methods.sam.<param>" in err


@pytest.mark.parametrize("argv,needle", [
    (["--interval", "5"], "--interval 5 is for the live view; add --watch"),
    (["--watch", "--interval", "0"], "--interval 0: seconds between updates must be > 0"),
    (["--watch", "--interval", "-3"], "--interval -3: seconds between updates must be > 0"),
])
def test_status_interval_needs_watch_and_a_positive_value(ran, cli, argv, needle):
    _, spec = ran
    rc, out, err = cli("status", str(spec.sweep_dir), *argv)
    assert rc == 2 and needle in err and not out


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    return build_parser()._subparsers._group_actions[0].choices


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_and_option_has_help(name):
    parser = _subcommands()[name]
    assert parser.description and len(parser.description) > 60, name  # says what the command does
    for action in parser._actions:
        assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
        if action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings:
            options = parser.format_help().split("options:", 1)[1]
            shown = options.split(f"  {action.option_strings[-1]} ", 1)[1].split("\n  -", 1)[0]
            assert "default" in shown, f"{name} {action.option_strings}: default not shown"


def test_run_help_says_it_resumes_and_refuses_a_changed_spec():
    text = " ".join(_subcommands()["run"].format_help().split())
    assert "resum" in text and "skips FINISHED" in text and "unless --force" in text
    assert "run this spec under the name of an existing sweep" in text  # --force's main use
    status = " ".join(_subcommands()["status"].format_help().split())
    assert "(default: 5)" in status


def test_analyze_writes_where_the_report_reads_by_default(tmp_path, cli):
    from tests.test_analysis import hand_made

    export = tmp_path / "sweep" / "export"
    export.mkdir(parents=True)
    hand_made().to_parquet(export / "trials.parquet")
    rc, out, _ = cli("analyze", "--trials", str(export / "trials.parquet"))
    assert rc == 0 and str(tmp_path / "sweep" / "analysis" / "summary.json") in out  # SWEEP_DIR/analysis
    hand_made().to_parquet(tmp_path / "trials.parquet")  # a trials file outside a sweep: beside it
    rc, out, _ = cli("analyze", "--trials", str(tmp_path / "trials.parquet"))
    assert rc == 0 and (tmp_path / "table.csv").is_file() and (tmp_path / "summary.json").is_file()


def test_an_unreadable_identity_file_is_named_not_skipped(ran, cli):
    """identity.json holds the data hashes that guard a sweep's results: a damaged one used to count as "not
    recorded", so a moved sweep went on without its data check (and the next run died on a JSON traceback)."""
    path, spec = ran
    (spec.sweep_dir / "identity.json").write_text('{"data": "/data", "data_files": {"CB": "ab')  # cut short
    rc, _, err = cli("validate", str(path))
    assert rc == 2 and f"{spec.sweep_dir / 'identity.json'} cannot be read (JSONDecodeError" in err
    assert "restore it from a copy of the sweep folder, or delete it" in err and "..." not in err
    assert sweep.resume_command(spec) == f"peft-sweep run {spec.sweep_dir / sweep.SPEC_FILE}"  # a hint stays a hint


def test_status_names_a_failed_trial_by_row_task_and_seed_not_only_its_key(ran, cli):
    path, spec = ran
    t = spec.trials()[1]
    records.update(spec.sweep_dir, t.key, status="FAILED", error="Traceback ...\nRuntimeError: boom")
    rc, out, _ = cli("status", str(spec.sweep_dir))
    assert rc == 0 and f"  FAILED {t.label}/{t.task} seed {t.seed} ({t.key}): RuntimeError: boom" in out


@pytest.mark.parametrize("setting, where", [("methods.sam.lr=1e38", "methods.sam: lr"),
                                            ("training.lr=5", "training.lr")])
def test_a_learning_rate_above_one_is_refused_before_anything_runs(tmp_path, tiny_model, data_dir, cli, setting, where):
    """lr 1e38 (a typo) used to validate, and every trial then died inside torch's Adam on a float32 overflow whose
    message named no setting; rerun-failed sent the user round the same loop."""
    rc, _, err = cli("validate", str(write_spec(tmp_path, tiny_model, data_dir)), "--set", setting)
    assert rc == 2 and f"{where}: Input should be less than or equal to 1" in err


def test_validate_refuses_a_lora_rank_or_adapter_bottleneck_the_budget_cannot_hold(tmp_path, tiny_model, data_dir,
                                                                                    cli):
    """Each trial of the row failed at setup, on the cluster, after `validate` had said the spec was valid."""
    grid = {"methods": ["lora", "adapter", "sam"], "tasks": ["CB"], "seeds": [0], "sparsities": [0.5]}
    fits = write_spec(tmp_path / "fits", tiny_model, data_dir, grid=grid)
    assert cli("validate", str(fits))[0] == 0
    rank = write_spec(tmp_path / "rank", tiny_model, data_dir, grid=grid, methods={"lora": {"rank": 4096}})
    rc, _, err = cli("validate", str(rank))
    assert rc == 2 and "grid row 'lora' at sparsity 0.5: lora: rank 4096 trains" in err and "set rank ≤" in err, err
    small = write_spec(tmp_path / "small", tiny_model, data_dir, grid={**grid, "sparsities": [0.5, 1e-6]})
    rc, _, err = cli("validate", str(small))
    assert rc == 2 and "at sparsity 1e-06: lora: a budget of 1 entries is below one rank" in err, err
    assert not (tmp_path / "rank" / "runs").exists()  # refused before anything is written


def test_export_says_what_it_wrote_and_counts_the_trials(tmp_path, data_dir, cli):
    from tests.tracking_fixtures import finish_all, make_spec

    spec = make_spec(tmp_path, data_dir, tasks=["CB"])
    finish_all(spec, fail=1)
    (spec.sweep_dir / sweep.SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    rc, out, _ = cli("export", str(spec.sweep_dir))
    export = spec.sweep_dir / "export"
    assert rc == 0 and f"{export / 'trials.parquet'}  (4 trials: 3 FINISHED, 1 FAILED)" in out, out
    assert str(export / "curves.parquet") in out and str(export / "masks.parquet") in out
    assert "no mask files" in out  # synthetic results store no masks


def test_help_lists_the_exit_codes():
    text = build_parser().format_help()
    assert "exit codes:" in text
    for code in ("0  done", "1  trials ended in error", "2  bad input"):
        assert code in text, code


def test_output_into_a_closed_pipe_ends_quietly():
    """`peft-sweep tasks --json | head -1` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "tasks", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything is written
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err


def test_validate_says_when_early_stopping_cannot_end_a_trial(tmp_path, tiny_model, data_dir, cli):
    """The defaults (2000 steps, an evaluation every 100, patience 40) and the quickstart train a fixed budget:
    said, not refused (a fixed budget with the best evaluation kept is a valid protocol)."""
    path = write_spec(tmp_path, tiny_model, data_dir)  # 6 steps, an evaluation every 3, patience 40
    rc, out, _ = cli("validate", str(path))
    assert rc == 0 and "note: early stopping cannot end a trial: its first chance is step 123 (eval_every 3 x " \
                       "(patience 40 + 1)), and max_steps is 6" in out
    rc, out, _ = cli("validate", str(path), "--set", "training.patience=1")  # can stop at step 6... the last one
    assert rc == 0 and "early stopping cannot" in out
    rc, out, _ = cli("validate", str(path), "--set", "training.patience=1", "--set", "training.max_steps=7")
    assert rc == 0 and "early stopping" not in out


def test_a_resume_that_names_no_data_folder_reads_the_one_the_sweep_recorded(ran, cli, monkeypatch, data_dir):
    """`make demo` sets $PEFT_SWEEP_DATA_DIR; `peft-sweep run configs/quickstart.yaml` from a plain shell then
    tried the Hub (which a sweep that read a folder refuses anyway) and failed."""
    path, spec = ran
    monkeypatch.delenv("PEFT_SWEEP_DATA_DIR", raising=False)
    rc, out, err = cli("validate", str(path), "--set", "data.dir=null")
    assert rc == 0, err
    assert f"note: no data folder given (data.dir, $PEFT_SWEEP_DATA_DIR); reading the one this sweep recorded: " \
           f"{spec.data.dir}" in out


@pytest.mark.parametrize("argv,flag", [
    (("export", "SWEEP", "--out", "/proc/no-folder-here"), "--out"),
    (("train-one", "--task", "CB", "--method", "bitfit", "--checkpoint-dir", "/proc/no-folder-here"),
     "--checkpoint-dir"),
])
def test_an_output_folder_that_cannot_be_made_is_named_at_once(ran, cli, argv, flag, tiny_model):
    """/proc passes a permission check (for root) and refuses a new folder: export said a bare "[Errno 2] ...",
    train-one trained for minutes first."""
    path, spec = ran
    argv = [str(spec.sweep_dir) if a == "SWEEP" else a for a in argv]
    rc, _, err = cli(*argv, *(["--model", tiny_model] if argv[0] == "train-one" else []))
    assert rc == 2 and f"{flag} '/proc/no-folder-here'" in err, err


def test_list_shows_when_the_sweep_first_ran(ran, cli):
    """Not when spec.yaml was last written: every `run`, one with nothing to run too, rewrites it."""
    import json
    import time
    from datetime import datetime

    path, spec = ran
    first, later = "2026-01-02T03:04:05+0000", "2026-03-04T05:06:07+0000"
    (spec.sweep_dir / "identity.json").write_text(json.dumps({"runs": [{"started": first}, {"started": later}]}))
    rc, out, _ = cli("list", str(spec.sweep_dir.parent))
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(datetime.strptime(first, "%Y-%m-%dT%H:%M:%S%z").timestamp()))
    assert rc == 0 and f"started {when}" in out, out


def test_status_watch_waits_for_a_starting_runs_spec(tmp_path, capsys, monkeypatch):
    """`run` makes the sweep folder and its store seconds before spec.yaml: a `status --watch` started beside it
    said "a folder without spec.yaml, not a sweep folder" and ended."""
    import time

    from orchestrator.cli import wait_for_spec

    folder = tmp_path / "runs" / "t"
    folder.mkdir(parents=True)
    (folder / "mlflow.db").write_bytes(b"")
    sleep, naps = time.sleep, []

    def the_run_writes_it_while_we_wait(seconds: float) -> None:  # after the first look, however slow the machine
        naps.append(seconds)
        (folder / "spec.yaml").write_text("name: t\n")
        sleep(seconds)

    monkeypatch.setattr(time, "sleep", the_run_writes_it_while_we_wait)
    assert wait_for_spec(folder, timeout_s=30, poll_s=0.05) and naps == [0.05]
    monkeypatch.setattr(time, "sleep", sleep)
    assert "waiting up to 30 s for" in capsys.readouterr().out
    (folder / "spec.yaml").unlink()
    assert not wait_for_spec(folder, timeout_s=0.2, poll_s=0.05)  # nobody writes it: _load_sweep says why
    (folder / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert not wait_for_spec(folder, timeout_s=30) and capsys.readouterr().out == ""  # not a starting run: at once


@pytest.mark.parametrize("uri, says", [
    ("{d}/mlflow.db", "is a path; a SQLite store is sqlite:///{d}/mlflow.db"),  # the file, not a URI
    ("sqlite:///{d}/none.db", "no such file"),  # MLflow would make an empty store there and find no run
    ("sqlite:///{d}/no/x.db", "no such file"),
    ("http://127.0.0.1:9", "unreachable"),  # MLflow would retry for minutes, then blame the run id
])
def test_load_from_a_store_that_is_not_there_fails_at_once_and_writes_nothing(tmp_path, cli, uri, says):
    (tmp_path / "mlflow.db").write_bytes(b"")
    uri, says = uri.format(d=tmp_path), says.format(d=tmp_path)
    rc, _, err = cli("load", "0" * 32, "--tracking-uri", uri, "--out", str(tmp_path / "out" / "model"))
    assert rc == 2 and len(err.splitlines()) == 1 and says in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"] and (tmp_path / "mlflow.db").stat().st_size == 0


def test_report_refuses_curves_beside_a_sweep_folder(ran, cli, tmp_path):
    """--curves goes with --trials; beside SWEEP_DIR (whose export has its own curves) it was ignored unsaid."""
    _, spec = ran
    rc, _, err = cli("report", str(spec.sweep_dir), "--curves", str(tmp_path / "none.parquet"))
    assert rc == 2 and "--curves goes with --trials" in err, err
    assert not (spec.sweep_dir / "report").exists()


def test_validate_refuses_an_output_dir_that_cannot_be_made_as_run_would(tmp_path, tiny_model, data_dir, cli):
    """/proc passes a permission check for root: validate said "valid", then run failed on a bare [Errno 2]."""
    path = write_spec(tmp_path, tiny_model, data_dir)
    rc, _, err = cli("validate", str(path), "--set", "output_dir=/proc/no-folder-here")
    assert rc == 2 and "output_dir '/proc/no-folder-here'" in err, err
    assert not any(p.name == "no-folder-here" for p in Path("/proc").iterdir())


def test_status_says_when_running_trials_have_no_driver(ran, cli):
    """After the driver was killed, status showed "RUNNING 1" as if the sweep ran; only list and --watch told."""
    from benchmarks.synthetic_trials import trial_dict

    path, spec = ran
    cfg = spec.trials()[1]
    records.SweepRecords(spec.sweep_dir).started(cfg.key, trial_dict(cfg))
    rc, out, _ = cli("status", str(spec.sweep_dir))
    assert rc == 0 and "RUNNING 1" in out
    assert f"no driver runs this sweep: its 1 RUNNING trial(s) were left by one that ended; `peft-sweep run " \
           f"{spec.sweep_dir / 'spec.yaml'}` resumes them" in out, out
    rc, out, _ = cli("status", str(spec.sweep_dir), "--json")
    import json

    assert json.loads(out)["driver"] == "not running"


def test_status_shows_a_failed_trials_error_short_and_how_to_rerun_it(ran, cli):
    """status printed Ray's whole error (a page of advice) on the trial's line, and not the rerun command."""
    from benchmarks.synthetic_trials import trial_dict

    path, spec = ran
    cfg = spec.trials()[1]
    recs = records.SweepRecords(spec.sweep_dir)
    recs.started(cfg.key, trial_dict(cfg))
    recs.failed(cfg.key, "ActorDiedError: The actor is dead because its worker process has died. " + "x" * 900)
    rc, out, _ = cli("status", str(spec.sweep_dir))
    line = next(ln for ln in out.splitlines() if ln.startswith("  FAILED"))
    assert rc == 0 and "ActorDiedError: The actor is dead" in line and line.endswith("…")
    assert len(line) < 300, line
    assert f"rerun the failed ones with: peft-sweep rerun-failed {spec.sweep_dir}" in out, out


def test_rerun_failed_names_the_trials_it_leaves_to_run(ran, cli):
    """rerun-failed on a sweep with stopped or never-started trials said "0 to run", "nothing to run": those
    trials went unaccounted for, and nothing said that `run` would run them."""
    from benchmarks.synthetic_trials import fake_result, trial_dict

    path, spec = ran
    cfg = spec.trials()[0]
    records.update(spec.sweep_dir, cfg.key, trial=trial_dict(cfg), result=fake_result(cfg))  # as a run leaves it
    rc, out, _ = cli("rerun-failed", str(spec.sweep_dir))
    assert rc == 0 and "nothing to run: no trial of this grid FAILED" in out
    assert f"3 trial(s) neither FINISHED nor FAILED (3 PENDING): rerun-failed runs FAILED ones only; " \
           f"`peft-sweep run {spec.sweep_dir / 'spec.yaml'}` runs them" in out, out
    rc, out, _ = cli("rerun-failed", str(spec.sweep_dir))  # the sweep's parent run is closed now: no answer printed
    assert rc == 0 and f"its answer again: peft-sweep analyze {spec.sweep_dir}" in out, out


def _nothing_scored(tmp_path):
    import pandas as pd

    rows = [{"method": "sam", "task": "CB", "seed": 0, "sparsity": 0.005, "perturbation": None, "status": "FAILED",
             "test_score": None, "error": "RuntimeError: out of memory"},
            *({"method": "sam", "task": "CB", "seed": s, "sparsity": 0.005, "perturbation": None,
               "status": "PENDING", "test_score": None, "error": None} for s in (1, 2))]
    path = tmp_path / "export" / "trials.parquet"
    path.parent.mkdir()
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_analyze_of_trials_none_of_which_has_a_score_says_what_became_of_them_and_writes_nothing(tmp_path, cli):
    path = _nothing_scored(tmp_path)
    rc, _, err = cli("analyze", "--trials", str(path), "--out", str(tmp_path / "analysis"))
    assert rc == 2 and "no FINISHED trial with a test score to analyse yet (3 trials: 1 FAILED, 2 PENDING)" in err, err
    assert not (tmp_path / "analysis").exists()


def test_a_report_of_trials_none_of_which_has_a_score_lists_them(tmp_path, cli):
    """The report, which lists failed trials, was refused for a sweep whose trials had all failed."""
    path = _nothing_scored(tmp_path)
    rc, out, err = cli("report", "--trials", str(path), "--out", str(tmp_path / "report"))
    assert rc == 0, err
    page = (tmp_path / "report" / "index.html").read_text()
    assert "No trial has a test score yet (3 trials: 1 FAILED, 2 PENDING)" in page
    assert "RuntimeError: out of memory" in page and page.count("<td>PENDING</td>") == 2


def test_status_watch_json_prints_one_json_object_per_update(ran, cli):
    """`status --watch --json` printed the text line: --json was ignored unsaid. A script watching a sweep gets
    one JSON object per update (JSON Lines), with the same counts as the line."""
    import json

    _, spec = ran
    rc, out, _ = cli("status", str(spec.sweep_dir), "--watch", "--json", "--interval", "0.1")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 1, out  # no driver: one update, then the watch ends
    update = json.loads(lines[0])
    assert update["total"] == len(spec.trials()) and update["counts"] == {"FINISHED": 1, "PENDING": 3}
    assert update["driver"] == "not running" and update["eta_s"] is None and "time" in update


def test_status_of_a_sweep_left_unfinished_says_how_to_resume(ran, cli):
    """`status` on a stopped or drained sweep listed STOPPED and PENDING trials and said nothing more: only `stop`'s
    own output had said how to resume."""
    import json

    path, spec = ran
    rc, out, _ = cli("status", str(spec.sweep_dir))
    left = len(spec.trials()) - 1  # one FINISHED, the others never started (as a drain leaves them)
    assert rc == 0 and f"{left} trial(s) neither FINISHED nor FAILED" in out, out
    assert f"`peft-sweep run {spec.sweep_dir / 'spec.yaml'}` runs them" in out, out
    rc, out, _ = cli("status", str(spec.sweep_dir), "--watch", "--json", "--interval", "0.1")
    assert json.loads(out)["elapsed_s"] is None  # no driver: no elapsed time to show (it read 0.0)


def test_watch_counts_only_trials_that_finished_under_the_driver_not_records_rewritten_since(ran, tmp_path):
    """`status --watch` took a FINISHED record written after the driver started for a trial finished under it: a
    `sync` marking an old record synced made it one, and the rate counted it."""
    import time

    from orchestrator import control, driver

    _, spec = ran  # one trial FINISHED before the driver below started
    key = spec.trials()[0].key
    records.update(spec.sweep_dir, key, ended_at=time.time() - 60)
    driver.register(spec.sweep_dir)
    try:
        records.update(spec.sweep_dir, key, synced=True)  # rewritten now, finished a minute ago
        assert control.progress(spec).finished_here == 0
        records.SweepRecords(spec.sweep_dir).finished(spec.trials()[1].key, {"test_score": 0.4})
        assert control.progress(spec).finished_here == 1
    finally:
        driver.unregister(spec.sweep_dir)


def test_version_names_the_code_and_the_libraries_a_bug_report_needs():
    """`peft-sweep --version`: the code_version every MLflow run carries, and the versions of what it runs on."""
    import subprocess
    import sys

    from orchestrator.identity import code_version

    out = subprocess.run([sys.executable, "-m", "orchestrator", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"peft-sweep {code_version()}" in out.stdout, out.stdout
    for lib in ("python", "torch", "transformers", "peft", "ray", "mlflow"):
        assert f"{lib} " in out.stdout, (lib, out.stdout)


def test_a_sparsity_whose_budget_is_zero_is_refused_not_run_as_head_only(tmp_path, tiny_model, data_dir, cli):
    """From a new user's trial: sparsity 1e-9 (a typo for 1e-3) was valid, and `train-one` ended 0 with
    trainable_params 0: only the head trained, under the method's name."""
    grid = {"methods": ["sam", "random"], "tasks": ["CB"], "seeds": [0], "sparsities": [1e-9]}
    rc, _, err = cli("validate", str(write_spec(tmp_path, tiny_model, data_dir, grid=grid)))
    assert rc == 2 and "grid row 'sam' at sparsity 1e-09" in err and "⌊m·p⌋ = 0" in err, err
    assert "the smallest sparsity that trains one entry is" in err, err
    import re

    from trainables.masking import budget

    m, smallest = re.search(r"of m = (\d+) .* trains one entry is ([0-9.e+-]+)", err).groups()
    assert budget(int(m), float(smallest)) == 1, (m, smallest)  # the advice works (1/m rounded could floor to 0)
    rc, out, err = cli("train-one", "--task", "CB", "--method", "random", "--sparsity", "1e-9", "--model", tiny_model,
                       "--data-dir", str(data_dir), "--set", "training.max_steps=2")
    assert rc == 2 and "⌊m·p⌋ = 0" in err and not out.strip(), (out, err)


def test_one_trial_is_not_one_trials(tmp_path, tiny_model, data_dir, cli):
    spec = write_spec(tmp_path, tiny_model, data_dir, grid={"methods": ["bitfit"], "tasks": ["CB"], "seeds": [0]})
    rc, out, _ = cli("validate", str(spec))
    assert rc == 0 and ": valid; 1 trial -> " in out, out


def test_an_invalid_value_from_set_is_said_to_come_from_set(tmp_path, tiny_model, data_dir, cli):
    """From a new user's trial: `--set training.lr=-1e-3` was reported as "tiny.yaml: invalid sweep spec", which
    sent them looking in a file that held no such value."""
    path = write_spec(tmp_path, tiny_model, data_dir)
    rc, _, err = cli("validate", str(path), "--set", "training.lr=-1e-3")
    assert rc == 2 and f"{path} with --set training.lr=-1e-3: invalid sweep spec: training.lr" in err, err
    rc, _, err = cli("validate", str(write_spec(tmp_path / "bad", tiny_model, data_dir, training__lr=-1e-3)))
    assert rc == 2 and "with --set" not in err and "spec.yaml: invalid sweep spec: training.lr" in err, err


def test_the_live_view_keeps_name_bar_and_count_on_an_80_column_terminal():
    """From a new user's trial: at 80 columns `status --watch` showed "qui… running 2 | ... | ETA 1h02…": the
    sweep's name, its bar and done/total were cut for the counts."""
    import io

    from rich.console import Console

    from orchestrator.control import live_bar

    out = io.StringIO()
    console = Console(width=80, file=out, force_terminal=False)
    bar = live_bar(console)
    bar.add_task("quickstart", total=9, completed=3,
                 info="running 2 | failed 0 | queued 4 | elapsed 17m54s | 6.7 trials/h | ETA 1h02m | driver alive")
    console.print(bar.get_renderable())
    text = out.getvalue()
    assert text.startswith("quickstart ") and "3/9" in text and "…" not in text, text
    assert "ETA 1h02m" in " ".join(text.split()), text
