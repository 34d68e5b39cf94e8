"""Issue 20's piece loop (results/paper-small/run_piece.sh) on CPU: a piece ends part-way by draining (the running
trial finishes, none is thrown away), only its packed state (spec, identity, records) travels to the next machine
(another folder; the first is deleted), and the next piece rebuilds MLflow from the records and finishes the sweep
without rerunning a FINISHED trial."""
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pandas as pd
import pytest

from tests.sweeps import ROOT

pytestmark = pytest.mark.slow


def test_a_sweep_run_in_pieces_on_two_machines_finishes_each_trial_once(tmp_path, tiny_model, data_dir):
    from mlflow.tracking import MlflowClient

    state = tmp_path / "state.tar.xz"  # what results/paper-small/sweep/state.tar.xz is between device calls
    tiny = {"name": "piece-smoke", "model": tiny_model, "grid.methods": "[sam-global,bitfit]", "grid.tasks": "[CB]",
            "grid.seeds": "[0,1]", "training.max_steps": 60, "training.eval_every": 5, "training.batch_size": 8,
            "training.max_seq_length": 64, "methods.sam.burnin": 2, "resources.gpu_per_trial": 0,
            "resources.max_concurrent": 1, "ray.num_cpus": 2,
            "fault.step_delay_s": 0.1}  # a trial lasts 6 s or more: the stop lands before the last one ends
    extra = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]

    # the driver lets go of its sweep (driver.json gone), then its process takes a while more to end (Ray's
    # shutdown, seconds on a loaded machine): a drained piece must not call that a sweep still running
    python = tmp_path / "python-slow-exit"
    python.write_text(f'#!/usr/bin/env bash\n"{sys.executable}" "$@"; rc=$?\n'
                      '[ "$1 $2 $3" = "-m orchestrator run" ] && sleep 5\nexit $rc\n')
    python.chmod(0o755)

    def piece(n: int, *options: str, more: tuple[str, ...] = ()) -> dict:
        out, machine = tmp_path / f"out{n}", tmp_path / f"machine{n}"
        env = {**os.environ, "STATE": str(state), "WORK": str(machine), "PYTHON": str(python),
               "PEFT_SWEEP_DATA_DIR": str(data_dir), "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(["bash", "results/paper-small/run_piece.sh", str(out), *options, "--", *extra, *more],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        log = (out / "piece.log").read_text() if (out / "piece.log").is_file() else ""
        assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}\n{log[-3000:]}"
        shutil.copy(out / "state.tar.xz", state)  # what comes back from the device call
        if n == 1:
            shutil.rmtree(machine)  # the machine is given back
        return {**json.loads((out / "piece.json").read_text()), "stderr": proc.stderr}

    refused = subprocess.run(["bash", "results/paper-small/run_piece.sh", str(tmp_path / "out0")], cwd=ROOT,
                             env={**os.environ, "STATE": str(state)}, capture_output=True, text=True)
    assert refused.returncode == 2 and "pass --first for the first piece" in refused.stderr, refused.stderr
    first = piece(1, "--first", "--stop-after", "1")  # without --first a missing state is refused (above)
    assert 1 <= first["finished_in_this_piece"] < 4, first
    # drained: the trial running when the first one finished ran to its end, no trial was stopped part-way
    assert first["ended"] == "drained" and set(first["per_status"]) == {"FINISHED"}, first
    # packed as soon as the first trial finished, before the drain: a call cut short would have brought it back
    said = first["stderr"]
    assert "state packed with 1 FINISHED trial(s) (a snapshot" in said and said.index("state packed with") < \
        said.index("draining the sweep"), said[-3000:]
    assert "drain requested" in (tmp_path / "out1" / "piece.log").read_text()
    assert first["before_clock_s"] >= 0 and first["piece_wall_s"] < 6 * 60, first
    with tarfile.open(state) as tar:
        assert sorted({n.split("/")[0] for n in tar.getnames()}) == ["identity.json", "records", "spec.yaml"]
    second = piece(2, more=("--set", "fault.step_delay_s=0"))  # it runs to the end: no stop to land in time
    assert second["per_status"] == {"FINISHED": 4}, second
    assert second["finished_in_this_piece"] == 4 - first["finished_in_this_piece"]  # none ran twice
    trials = pd.read_parquet(tmp_path / "out2" / "trials.parquet")
    assert len(trials) == trials["trial_key"].nunique() == 4 and set(trials["status"]) == {"FINISHED"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'machine2' / 'piece-smoke' / 'mlflow.db'}")  # rebuilt there
    (exp,) = [e for e in client.search_experiments() if e.name == "piece-smoke"]
    live = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    assert len(live) == 4 and {r.info.status for r in live} == {"FINISHED"}
    assert not client.search_runs([exp.experiment_id], "tags.role = 'superseded'")
    recorded = {r["trial_key"]: r["code_version"] for r in
                (json.loads(p.read_text()) for p in (tmp_path / "machine2" / "piece-smoke" / "records").glob("*.json"))}
    assert {r.data.tags["trial_key"]: r.data.tags["code_version"] for r in live} == recorded  # as each one ran
    (parent,) = client.search_runs([exp.experiment_id], "tags.role = 'sweep'")
    assert parent.info.status == "FINISHED"
