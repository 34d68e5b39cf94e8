"""Bad input fails before anything starts, in seconds, with exit 2 and one line that names the field or file,
the bad value and what would be valid, and writes nothing.

The rows of issue 17's table run the real CLI (``python -m orchestrator``) in a subprocess; the further cases
call the same ``orchestrator.cli.main`` in-process (an interpreter start with torch costs ~5 s of CPU each)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

from orchestrator.cli import MAX_LINE
from tests.sweeps import ROOT, write_spec


def _run(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; ``env`` values of None remove the variable."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=timeout)


def _one_line(out: subprocess.CompletedProcess, cmd: str, *needles: str) -> str:
    assert out.returncode == 2, f"rc {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-3000:]
    line = lines[0]
    assert line.startswith(f"peft-sweep {cmd}: error: ") and len(line) <= MAX_LINE, line
    for needle in needles:
        assert needle in line, line
    return line


def _expect_refusal(tmp_path, spec, *needles, cmd="run", env=None, extra=()):
    """In a subprocess: exit 2, one line with the needles, and no sweep folder, store or records."""
    out = _run(cmd, str(spec), *extra, env=env)
    _one_line(out, cmd, *needles)
    assert not (tmp_path / "runs").exists()  # no sweep folder, no tracking store, no records
    return out


@pytest.fixture
def refused(capsys, monkeypatch):
    """In-process: ``refused(*argv, *needles)`` runs ``main(argv)`` and checks exit 2 and one capped line."""
    from orchestrator.cli import main

    monkeypatch.setenv("RAY_ADDRESS", "")

    def call(*argv: str, needles: tuple[str, ...] = ()) -> str:
        rc = main(list(argv))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, (rc, err)
        assert err[0].startswith(f"peft-sweep {argv[0]}: error: ") and len(err[0]) <= MAX_LINE, err[0]
        for needle in needles:
            assert needle in err[0], err[0]
        return err[0]
    return call


@pytest.fixture
def refuse_spec(refused, tmp_path):
    """In-process ``run SPEC``: refused, and nothing under tmp_path/runs."""
    def call(spec, *needles, extra=()):
        line = refused("run", str(spec), *extra, needles=needles)
        assert not (tmp_path / "runs").exists()
        return line
    return call


def _cb_copy(tmp_path, data_dir):
    shutil.copytree(data_dir / "CB", tmp_path / "data" / "CB")
    return tmp_path / "data" / "CB"


# ---- the rows of issue 17's table ------------------------------------------------------------------------

def test_no_data_folder_and_no_hub_fails_in_preflight(tmp_path, tiny_model):
    """The Hub is really tried (a metadata call; here it answers with a refused connection), not skipped."""
    spec = write_spec(tmp_path, tiny_model, tmp_path, data={})
    start = time.time()
    _expect_refusal(tmp_path, spec, "task CB", "aps/super_glue/cb", "set data.dir", "PEFT_SWEEP_DATA_DIR",
                    env={"PEFT_SWEEP_DATA_DIR": None, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert time.time() - start < 60


def test_a_hub_model_without_the_hub_says_what_to_give_instead(tmp_path, tiny_model, data_dir):
    spec = write_spec(tmp_path, "roberta-base", data_dir)
    _expect_refusal(tmp_path, spec, "model 'roberta-base'", "Hub", "model: /path/to/roberta-base", "HF_HUB_OFFLINE=1",
                    cmd="validate", env={"HF_HUB_OFFLINE": "1"})


def test_a_hub_model_with_the_hub_unreachable_is_refused_at_once(tmp_path, data_dir):
    """transformers retried for half a minute, printing a warning per retry, before the one-line error."""
    spec = write_spec(tmp_path, "roberta-base", data_dir)
    _expect_refusal(tmp_path, spec, "model 'roberta-base': the Hugging Face Hub cannot serve it",
                    "model: /path/to/roberta-base", "HF_HUB_OFFLINE=1", "the model packed with this tool: minilm-l6",
                    cmd="validate", env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")})


def test_no_data_folder_in_offline_mode(tmp_path, tiny_model):
    spec = write_spec(tmp_path, tiny_model, tmp_path, data={})
    _expect_refusal(tmp_path, spec, "task CB", "PEFT_SWEEP_DATA_DIR", cmd="validate",
                    env={"PEFT_SWEEP_DATA_DIR": None, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})


def test_yaml_errors_inside_set(tmp_path, tiny_model, data_dir, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir)
    _expect_refusal(tmp_path, spec, "--set name=[unclosed:1:10: malformed YAML", extra=("--set", "name=[unclosed"))
    refuse_spec(spec, "--set name=!!python/name:os.system:1:1: malformed YAML", "could not determine a constructor",
                extra=("--set", "name=!!python/name:os.system"))
    refuse_spec(spec, "duplicate key 'a'", extra=("--set", "methods.sam={a: 1, a: 2}"))


def test_output_dir_that_is_a_file(tmp_path, tiny_model, data_dir, refused):
    (tmp_path / "runs").write_text("not a folder")
    spec = write_spec(tmp_path, tiny_model, data_dir)
    _one_line(_run("run", str(spec)), "run", "output_dir", str(tmp_path / "runs"), "is a file")
    refused("validate", str(spec), needles=("output_dir", "is a file"))
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_tracking_uri_with_an_unsupported_scheme(tmp_path, tiny_model, data_dir):
    spec = write_spec(tmp_path, tiny_model, data_dir, tracking_uri="ftp://example.org/mlflow")
    _expect_refusal(tmp_path, spec, "tracking_uri 'ftp://example.org/mlflow': unsupported scheme", "sqlite:///")


def test_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefgh"):
        prev = "a" if i == 0 else "bcdefgh"[i - 1]
        levels.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    text = "\n".join(levels) + "\nname: *h\ngrid: {methods: [sam], tasks: [CB]}\n"
    assert len(text) < 600
    (tmp_path / "bomb.yaml").write_text(text)
    _expect_refusal(tmp_path, tmp_path / "bomb.yaml", "bomb.yaml", "alias", cmd="validate")


def test_duplicate_key_is_refused(tmp_path, tiny_model, data_dir, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir)
    spec.write_text(spec.read_text() + "grid: {methods: [full], tasks: [RTE]}\n")
    refuse_spec(spec, "spec.yaml:", "duplicate key 'grid'")


def test_ray_address_that_accepts_tcp_but_is_not_ray(tmp_path, tiny_model, data_dir):
    with socket.socket() as server:  # listens (the kernel completes TCP) but never speaks gRPC
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        spec = write_spec(tmp_path, tiny_model, data_dir, ray={"address": address})
        start = time.time()
        _expect_refusal(tmp_path, spec, f"cannot reach the Ray cluster at '{address}'", "no Ray head")
        assert time.time() - start < 60


def test_a_ray_client_address_is_refused_with_what_to_give_instead(tmp_path, tiny_model, data_dir, refuse_spec,
                                                                   monkeypatch):
    """Under Ray Client (ray://) Tune's driver loop runs in an actor on the head: the callback would write the
    sweep's records on the head's disk, and `stop` signals a process Tune has no handler in."""
    spec = write_spec(tmp_path, tiny_model, data_dir, ray={"address": "ray://127.0.0.1:10001"})
    refuse_spec(spec, "the Ray address 'ray://127.0.0.1:10001' is a Ray Client address", "ray job submit")
    # first, not after the relative output folder no path would help with (and where the address came from)
    relative = write_spec(tmp_path, tiny_model, data_dir, output_dir="runs")
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:10001")
    refuse_spec(relative, "the Ray address 'ray://127.0.0.1:10001' (from $RAY_ADDRESS) is a Ray Client address")


def test_a_cluster_that_refuses_the_connection_hints_at_token_auth(monkeypatch):
    """`stop` prints `peft-sweep run SPEC --set ray.address=...` to resume a job's sweep; from a shell without
    RAY_AUTH_MODE=token, a cluster with token auth logged InvalidAuthToken for 20 s, then "Failed to connect", with
    no word of the token. (The message alone: a token-auth cluster cannot be started here without writing the token
    file other tests' Ray would read.)"""
    from orchestrator.tune_runner import init_failure

    failed = ConnectionError("Failed to connect to Ray cluster")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    line = init_failure("10.0.0.5:6379", failed)
    assert line.startswith("cannot reach the Ray cluster at '10.0.0.5:6379': Failed to connect to Ray cluster")
    assert "export RAY_AUTH_MODE=token" in line
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the token is set: the hint would send the user astray
    assert "RAY_AUTH_MODE" not in init_failure("10.0.0.5:6379", failed)
    assert "RAY_AUTH_MODE" not in init_failure(None, RuntimeError("no GPUs"))  # a local Ray has no cluster token


def test_unreachable_ray_address(tmp_path, tiny_model, data_dir, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir, ray={"address": "127.0.0.1:9"})
    refuse_spec(spec, "cannot reach the Ray cluster at '127.0.0.1:9'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_per_trial_on_a_machine_without_gpus(tmp_path, tiny_model, data_dir):
    spec = write_spec(tmp_path, tiny_model, data_dir, resources={"gpu_per_trial": 0.25})
    _expect_refusal(tmp_path, spec, "resources.gpu_per_trial 0.25", "0 GPU(s)", "gpu_per_trial: 0",
                     "--set ray.num_gpus=1")


def test_gpu_per_trial_beyond_the_logical_gpus(tmp_path, tiny_model, data_dir, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir, resources={"gpu_per_trial": 1}, ray={"num_cpus": 2,
                                                                                           "num_gpus": 0.5})
    refuse_spec(spec, "resources.gpu_per_trial 1", "ray.num_gpus is 0.5")


def test_empty_perturbations(tmp_path, tiny_model, data_dir):
    spec = write_spec(tmp_path, tiny_model, data_dir, grid__perturbations=[])
    _expect_refusal(tmp_path, spec, "grid.perturbations", "0 trials")


def test_data_dir_that_is_a_file(tmp_path, tiny_model, refuse_spec):
    (tmp_path / "data.txt").write_text("x")
    spec = write_spec(tmp_path, tiny_model, tmp_path / "data.txt")
    refuse_spec(spec, f"data dir '{tmp_path / 'data.txt'}' is a file")


# ---- further mistakes -------------------------------------------------------------------------------------

def test_data_folder_missing_a_task_file(tmp_path, tiny_model, data_dir, refuse_spec):
    (_cb_copy(tmp_path, data_dir) / "val.jsonl").unlink()
    spec = write_spec(tmp_path, tiny_model, tmp_path / "data")
    refuse_spec(spec, "missing task file", "CB/val.jsonl")


def test_empty_data_folder(tmp_path, tiny_model, refuse_spec):
    (tmp_path / "data").mkdir()
    spec = write_spec(tmp_path, tiny_model, tmp_path / "data")
    refuse_spec(spec, "missing task file", "CB/train.jsonl")


def test_task_file_with_a_malformed_row(tmp_path, tiny_model, data_dir, refuse_spec):
    path = _cb_copy(tmp_path, data_dir) / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[9] = '{"premise": "p", "label": "entailment", "idx": 9}'
    path.write_text("\n".join(lines) + "\n")
    spec = write_spec(tmp_path, tiny_model, tmp_path / "data")
    refuse_spec(spec, "train.jsonl:10: missing field 'hypothesis'")


def test_task_file_with_a_broken_json_line_in_the_middle(tmp_path, tiny_model, data_dir, refuse_spec):
    path = _cb_copy(tmp_path, data_dir) / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[100] = lines[100][: len(lines[100]) // 2]  # a truncated copy
    path.write_text("\n".join(lines) + "\n")
    spec = write_spec(tmp_path, tiny_model, tmp_path / "data")
    refuse_spec(spec, "train.jsonl:101: not a JSON object")


def test_empty_task_file(tmp_path, tiny_model, data_dir, refuse_spec):
    (_cb_copy(tmp_path, data_dir) / "val.jsonl").write_text("")
    spec = write_spec(tmp_path, tiny_model, tmp_path / "data")
    refuse_spec(spec, "val.jsonl: no examples")


def test_task_file_that_is_not_text(tmp_path, tiny_model, data_dir, refuse_spec):
    (_cb_copy(tmp_path, data_dir) / "val.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 10)
    spec = write_spec(tmp_path, tiny_model, tmp_path / "data")
    refuse_spec(spec, "val.jsonl: not UTF-8 text")


def test_label_outside_the_tasks_label_set(tmp_path, tiny_model, data_dir, refuse_spec):
    path = _cb_copy(tmp_path, data_dir) / "val.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[5]["label"] = "maybe"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = write_spec(tmp_path, tiny_model, tmp_path / "data")
    refuse_spec(spec, "val.jsonl:6: label 'maybe' is not one of ['entailment', 'contradiction', "
                                    "'neutral']")


def test_model_path_that_does_not_exist(tmp_path, data_dir, refuse_spec):
    spec = write_spec(tmp_path, str(tmp_path / "no-model"), data_dir)
    refuse_spec(spec, "does not exist")


def test_model_folder_without_a_tokenizer(tmp_path, tiny_model, data_dir, refuse_spec):
    model = tmp_path / "model"
    model.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_model, f), model / f)
    spec = write_spec(tmp_path, str(model), data_dir)
    refuse_spec(spec, f"model '{model}'", "no tokenizer")


def test_max_seq_length_beyond_the_models_positions(tmp_path, tiny_model, data_dir, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir, training__max_seq_length=1024)
    refuse_spec(spec, "training.max_seq_length 1024", "512 positions", "at most 512")


def test_batch_size_zero(tmp_path, tiny_model, data_dir, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir, training__batch_size=0)
    refuse_spec(spec, "training.batch_size: Input should be greater than 0 (got 0)")


@pytest.mark.parametrize("seeds,needle", [([0.5], "grid.seeds.0: Input should be a valid integer (got 0.5)"),
                                          (["1"], "grid.seeds.0: Input should be a valid integer (got '1')"),
                                          (5, "grid.seeds: Input should be a valid list; write a list of seeds: [5] runs seed 5 alone, [0, 1, 2, 3, 4] runs 5 seeds (got 5)")])
def test_seeds_that_are_not_integers(tmp_path, tiny_model, data_dir, seeds, needle, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir, grid__seeds=seeds)
    refuse_spec(spec, needle)


def test_sparsity_given_to_a_method_that_takes_none(tmp_path, tiny_model, data_dir, refuse_spec, refused):
    spec = write_spec(tmp_path, tiny_model, data_dir, methods={"full": {"sparsity": 0.01}})
    refuse_spec(spec, "methods.full: sparsity: unknown key")
    refused("train-one", "--task", "CB", "--method", "full", "--sparsity", "0.01", "--model", tiny_model,
            needles=("method 'full' takes no sparsity (got 0.01)",))


def test_a_grid_of_100000_trials_asks_for_yes(tmp_path, tiny_model, data_dir, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir, grid__seeds=list(range(10_000)),
                      grid__tasks=["CB", "RTE", "COPA", "WSC", "MRPC"])
    start = time.time()
    refuse_spec(spec, "grid: 100000 trials", "--yes")
    assert time.time() - start < 60  # counted, not built


def test_sweep_name_that_clashes_with_a_file(tmp_path, tiny_model, data_dir, refused):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "t").write_text("mine")
    spec = write_spec(tmp_path, tiny_model, data_dir)
    refused("run", str(spec), needles=("name 't'", "is a file"))
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["t"]


def test_sweep_name_that_is_a_folder_of_something_else(tmp_path, tiny_model, data_dir, refused):
    (tmp_path / "runs" / "t").mkdir(parents=True)
    (tmp_path / "runs" / "t" / "thesis.tex").write_text("mine")
    spec = write_spec(tmp_path, tiny_model, data_dir)
    refused("run", str(spec), needles=("name 't'", "thesis.tex", "no sweep folder"))
    assert [p.name for p in (tmp_path / "runs" / "t").iterdir()] == ["thesis.tex"]


def test_unwritable_cache_dir(tmp_path, tiny_model, data_dir, refuse_spec):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    spec = write_spec(tmp_path, tiny_model, data_dir, data={"dir": str(data_dir),
                                                            "cache_dir": str(tmp_path / "blocker" / "cache")})
    refuse_spec(spec, "data.cache_dir", "is a file")


def test_cpu_per_trial_beyond_the_local_cpus(tmp_path, tiny_model, data_dir, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir, resources={"cpu_per_trial": 4})
    refuse_spec(spec, "resources.cpu_per_trial 4", "2 CPU(s)", "at most 2")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a machine of 2 CPUs or more")
def test_a_local_ray_that_sees_fewer_cpus_than_the_machine_is_refused_once_started(tmp_path, tiny_model, data_dir):
    """Preflight counts the machine (os, torch); a local Ray counts for itself (GPUs through NVML) and can see less.
    A trial that asks for more than it sees would stay PENDING for ever: refused once it started instead, saying why.
    Ray's own override makes it see 1 CPU here; the same check covers a GPU machine whose Ray sees 0 GPUs."""
    spec = write_spec(tmp_path, tiny_model, data_dir, resources={"cpu_per_trial": 2}, ray={})
    start = time.time()
    out = _run("run", str(spec), env={"RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 1})}, timeout=150)
    assert out.returncode == 2, f"rc {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    line = out.stderr.strip().splitlines()[-1]  # after Ray's own start-up warnings
    assert line.startswith("peft-sweep run: error: ") and len(line) <= MAX_LINE, line
    for needle in ("resources.cpu_per_trial 2", "the largest node of the local Ray has 1 CPU(s)",
                   "set ray.num_cpus / ray.num_gpus"):
        assert needle in line, line
    assert time.time() - start < 120


def test_unreachable_tracking_uri(tmp_path, tiny_model, data_dir, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir, tracking_uri="http://127.0.0.1:9")
    refuse_spec(spec, "tracking store 'http://127.0.0.1:9' is unreachable")


def test_sqlite_tracking_uri_that_names_a_folder(tmp_path, tiny_model, data_dir, refuse_spec):
    (tmp_path / "db").mkdir()
    spec = write_spec(tmp_path, tiny_model, data_dir, tracking_uri=f"sqlite:///{tmp_path / 'db'}")
    refuse_spec(spec, "tracking_uri", "names a folder")


def test_unknown_task_and_task_names_in_any_case(tmp_path, tiny_model, data_dir, refuse_spec, refused, capsys):
    from orchestrator.cli import main

    spec = write_spec(tmp_path, tiny_model, data_dir, grid__tasks=["cb", "Qnli"])
    refuse_spec(spec, "unknown task 'Qnli'; valid tasks: CoLA, STS-B")
    refused("train-one", "--task", "qnli", "--method", "full", needles=("unknown task 'qnli'",))
    spec = write_spec(tmp_path, tiny_model, data_dir, grid__tasks=["cb", "sts-b"])
    assert main(["validate", str(spec)]) == 0
    assert "valid; 8 trials" in capsys.readouterr().out


def test_set_without_a_value_or_key(tmp_path, tiny_model, data_dir, refuse_spec):
    spec = write_spec(tmp_path, tiny_model, data_dir)
    refuse_spec(spec, "--set 'training.max_steps': expected dotted.key=value",
                    extra=("--set", "training.max_steps"))
    refuse_spec(spec, "--set 'training..lr=1'", extra=("--set", "training..lr=1"))


@pytest.mark.parametrize("text,needle", [("name: [unclosed\n", "malformed YAML"),
                                         ("name: t\ngrid: {methods: [sam], tasks: [CB]}\nbogus: 1\n", "bogus: unknown key"),
                                         ("name: t\ngrid: {methods: [sam], tasks: [CB], seeds: x}\n", "grid.seeds"),
                                         ("", "empty file"),
                                         ("- a\n- b\n", "a YAML mapping, got list"),
                                         ("name: !!python/object/apply:os.system [echo hi]\n", "malformed YAML")])
def test_bad_spec_files(tmp_path, text, needle, refused):
    (tmp_path / "s.yaml").write_text(text)
    refused("validate", str(tmp_path / "s.yaml"), needles=(needle,))


def test_run_given_a_sweep_folder_instead_of_a_spec(tmp_path, refused):
    (tmp_path / "runs" / "t").mkdir(parents=True)
    (tmp_path / "runs" / "t" / "spec.yaml").write_text("name: t\n")
    refused("run", str(tmp_path / "runs" / "t"), needles=("is a folder", "runs/t/spec.yaml"))


# ---- every command on a path that is not what it expects (in-process: the same main, no interpreter start) --

def _sweep_folder(tmp_path, tiny_model, data_dir):
    """A sweep folder as `run` leaves it before any trial (spec.yaml only), made without running anything."""
    from orchestrator.spec import load_spec

    spec = load_spec(write_spec(tmp_path / "w", tiny_model, data_dir))
    spec.sweep_dir.mkdir(parents=True)
    (spec.sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    (spec.sweep_dir / "tune" / "exp-001").mkdir(parents=True)
    return spec.sweep_dir


@pytest.mark.parametrize("cmd", ["status", "rerun-failed", "sync", "export", "report"])
def test_sweep_commands_on_wrong_paths(tmp_path, tiny_model, data_dir, refused, cmd):
    sweep = _sweep_folder(tmp_path, tiny_model, data_dir)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = {tmp_path / "missing": "no such folder", tmp_path / "file.txt": "is a file",
             tmp_path / "empty": "is an empty folder", sweep.parent: "holds sweeps (t)",
             sweep / "tune": "a folder without spec.yaml"}
    for path, needle in cases.items():
        assert needle in refused(cmd, str(path)), path
    assert sorted(p.name for p in sweep.iterdir()) == ["spec.yaml", "tune"]
    for name in ("u", "v", "w"):  # four sweeps: three named, and the rest counted (a user looked for the fourth)
        shutil.copytree(sweep, sweep.parent / name)
    assert f"holds sweeps (t, u, v and 1 more: `peft-sweep list {sweep.parent}`)" in refused(cmd, str(sweep.parent))


def test_sweep_folder_holding_another_sweeps_spec(tmp_path, tiny_model, data_dir, refused):
    sweep = _sweep_folder(tmp_path, tiny_model, data_dir)
    shutil.copytree(sweep, tmp_path / "other")
    assert "holds the spec of sweep 't'" in refused("status", str(tmp_path / "other"))


def test_analyze_and_report_on_wrong_files(tmp_path, refused):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "not.parquet").write_text("name: x\n")
    pq.write_table(pa.table({"trial_key": ["a"], "step": [1]}), tmp_path / "curves.parquet")
    cases = {tmp_path / "missing.parquet": "no such file", tmp_path: "is a folder",
             tmp_path / "not.parquet": "is not a Parquet file", tmp_path / "curves.parquet": "lacks the columns method"}
    for path, needle in cases.items():
        assert needle in refused("analyze", "--trials", str(path), "--out", str(tmp_path / "a")), path
        assert needle in refused("report", "--trials", str(path), "--out", str(tmp_path / "r")), path
    assert not (tmp_path / "a").exists() and not (tmp_path / "r").exists()
    from dashboards.analysis import NEEDED

    pq.write_table(pa.table({c: ["x"] for c in NEEDED}), tmp_path / "trials.parquet")
    (tmp_path / "out.txt").write_text("x")
    for cmd in ("analyze", "report"):
        assert "--out" in refused(cmd, "--trials", str(tmp_path / "trials.parquet"), "--out", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == "x"


def test_train_one_and_tasks_on_wrong_paths(tmp_path, tiny_model, refused):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    for data, needle in {tmp_path / "missing": "does not exist", tmp_path / "file.txt": "is a file",
                         tmp_path / "empty": "missing task file"}.items():
        assert needle in refused("tasks", "--data-dir", str(data)), data
        assert needle in refused("train-one", "--task", "cb", "--method", "full", "--model", tiny_model,
                               "--data-dir", str(data)), data
    assert "--checkpoint-dir" in refused("train-one", "--task", "cb", "--method", "full", "--model",
                                       tiny_model, "--checkpoint-dir", str(tmp_path / "file.txt"))
    assert "does not exist" in refused("train-one", "--task", "cb", "--method", "full", "--model",
                                     str(tmp_path / "no-model"))


# ---- loading untrusted state ------------------------------------------------------------------------------

def test_checkpoints_are_loaded_without_unpickling_code(tmp_path, tiny_trial, capfd):
    """Checkpoints are safetensors + JSON: a pickle where a checkpoint should be is never unpickled."""
    from trainables import run_trial

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "ck").mkdir()
    torch.save({"model": Evil()}, tmp_path / "ck" / "state.pt")
    with pytest.raises(FileNotFoundError, match="expected state.json and state.safetensors"):
        run_trial(tiny_trial("sam", method_params={"burnin": 1}), resume_dir=str(tmp_path / "ck"))
    assert "code ran" not in capfd.readouterr().out


def test_trial_keys_cannot_escape_the_records_folder(tmp_path):
    from orchestrator import records

    with pytest.raises(ValueError, match="invalid trial key"):
        records.write(tmp_path, "../../etc/x", {})


def test_a_cut_error_line_keeps_the_whole_list_of_valid_keys(tmp_path, tiny_model, data_dir, refused):
    """The 300-character cap cut training's key list after "patie": the valid key the user looked for could be
    the one cut off."""
    from trainables.config import TrainingConfig

    line = refused("validate", str(write_spec(tmp_path, tiny_model, data_dir)), "--set", "training.max_stepz=3",
                   needles=("did you mean 'max_steps'?",))
    assert "valid keys: " + ", ".join(TrainingConfig.model_fields) in line, line


def test_error_lines_are_capped(tmp_path, refused, monkeypatch):
    from orchestrator.cli import main
    from orchestrator.spec import SpecError

    long_name = "x" * 2000
    (tmp_path / "s.yaml").write_text(f"name: {long_name}\ngrid: {{methods: [sam], tasks: [CB]}}\n")
    line = refused("validate", str(tmp_path / "s.yaml"), needles=("name",))
    assert line.endswith("(PEFT_SWEEP_DEBUG=1 shows all)")
    monkeypatch.setenv("PEFT_SWEEP_DEBUG", "1")
    with pytest.raises(SpecError, match="x" * 1000):
        main(["validate", str(tmp_path / "s.yaml")])



@pytest.mark.slow
def test_gpu_per_trial_beyond_a_running_rays_gpus(tmp_path, tiny_model, data_dir):
    """A Ray that is already up (a cluster, or one this process started) is checked right after connecting."""
    import ray

    from orchestrator.spec import ClusterError, load_spec
    from orchestrator.tune_runner import init_ray

    spec = load_spec(write_spec(tmp_path, tiny_model, data_dir, resources={"gpu_per_trial": 0.5}))
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False)
    try:
        with pytest.raises(ClusterError, match=r"resources.gpu_per_trial 0.5: the largest node of the Ray this "
                                               r"process started has 0 GPU\(s\)"):
            init_ray(spec)
    finally:
        ray.shutdown()
    assert not (tmp_path / "runs").exists()


def test_a_node_report_lists_what_the_node_lacks_and_versions_that_differ(tmp_path, tiny_model, data_dir,
                                                                           monkeypatch):
    """What the per-node preflight task returns and the table lines made from it, here without a cluster (the
    two-node test's nodes share one disk, so none of them can lack a folder)."""
    from orchestrator.preflight import node_data, node_report, node_versions, nodes_problems
    from orchestrator.spec import load_spec

    spec = load_spec(write_spec(tmp_path, tiny_model, data_dir))
    data = node_data(spec)  # the driver's task files
    assert set(data) == {"CB"} and node_report(spec)["data"] == data
    missing = tmp_path / "not-on-this-node"
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"dir": str(missing)})})
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("PEFT_SWEEP_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # cannot be made here
    report = node_report(spec)
    assert len(report["lacks"]) == 2, report
    assert str(missing) in report["lacks"][0] and "a-file" in report["lacks"][1]
    driver = node_versions()
    other = {"versions": {**driver, "torch": "0.0"}, "lacks": []}
    # a sweep on the Hub: each node tries the Hub itself (here offline with an empty cache, as a node without it)
    monkeypatch.delenv("PEFT_SWEEP_CACHE_DIR")
    monkeypatch.delenv("PEFT_SWEEP_DATA_DIR", raising=False)  # no folder at all: the Hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    hub = node_report(spec.model_copy(update={"data": spec.data.model_copy(update={"dir": None})}))
    assert len(hub["lacks"]) == 1 and "task CB: no data folder is set" in hub["lacks"][0], hub
    stale = {"versions": driver, "lacks": [], "data": {"CB": "0" * 64}}  # an older copy of the data on that node
    lines = nodes_problems({"node A": report, "node B": other, "node C": {"versions": driver, "lacks": [], "data": data},
                            "node D": stale}, driver, data)
    assert lines == [f"node A: {report['lacks'][0]}", f"node A: {report['lacks'][1]}",
                     f"node B: torch 0.0 (driver: {driver['torch']})",
                     f"node D: the CB files differ from the driver's (sha256 000000000000, driver: {data['CB'][:12]}); "
                     f"copy the driver's data folder there"]


def test_slips_a_researcher_types_get_the_hint_at_once(tmp_path, tiny_model, data_dir, refused):
    """Each used to cost time or lack the hint: an alias in another case spent ~30 s retrying the Hub; train-one's
    errors had no "did you mean"; a bare value where a list goes did not say how to write the list."""
    import time

    t0 = time.monotonic()
    refused("validate", str(write_spec(tmp_path, tiny_model, data_dir)), "--set", "model=minilm-L6",
            needles=("model 'minilm-L6'", "did you mean 'minilm-l6'"))
    assert time.monotonic() - t0 < 10
    one = ("train-one", "--task", "CB", "--model", tiny_model, "--data-dir", str(data_dir))
    refused(*one, "--method", "Sam", needles=("--method 'Sam'", "did you mean 'sam'?"))
    refused("train-one", "--task", "CBB", "--method", "sam", "--model", tiny_model,
            needles=("--task 'CBB': unknown task 'CBB'; did you mean 'CB'?",))
    refused(*one, "--method", "sam", "--set", "methods.sam.burn_in=2",
            needles=("burn_in: unknown key; did you mean 'burnin'?",))
    refused(*one, "--method", "sam", "--set", "max_steps=1",
            needles=("max_steps: unknown key", "training.max_steps"))
    refused("validate", str(write_spec(tmp_path, tiny_model, data_dir)), "--set", "grid.seeds=3",
            needles=("grid.seeds", "[0, 1, 2] runs 3 seeds"))


def test_list_given_a_sweep_folder_says_what_to_run(tmp_path, refused):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "spec.yaml").write_text("name: s\n")
    refused("list", str(tmp_path / "s"), needles=("is a sweep folder", "`peft-sweep status`", "its parent folder"))
