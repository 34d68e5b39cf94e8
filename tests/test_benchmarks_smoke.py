"""The benchmark scripts run on CPU with tiny settings (a smoke check of the scripts, not a timing): the GPU
suite's --smoke runs trial_throughput, optimizer_step and sweep_packing once each, through gpu_suite.sh. The GPU
session gets one call of at most 600 s and only what is under its OUT folder back: the suite's budget and a kill
part-way are checked on one or two of its cheaper steps."""
import gc
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.sweeps import ROOT

pytestmark = pytest.mark.slow


def test_benchmarks_do_not_import_tests():
    """Read from the import statements (a docstring may say "tests")."""
    import ast

    for path in (ROOT / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n == "tests" or n.startswith("tests.") for n in names), f"{path.name}:{node.lineno}"


SUITE = ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")]


def suite_env() -> dict:
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}


def test_gpu_suite_smoke_writes_every_figure(tmp_path):
    # the budget is the GPU call's (540 s); here it would leave a loaded CI machine 210 s before packing starts
    out = subprocess.run([*SUITE, str(tmp_path), "--smoke", "--budget", "1200"], cwd=ROOT, capture_output=True,
                         text=True, timeout=1300, env=suite_env())
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = tmp_path.glob("*-cpu-smoke.json")
    # what a device call brings back: at most 8 files; the steps' output and stderr are among them
    assert sorted(f.name for f in tmp_path.rglob("*") if f.is_file()) == sorted([path.name, "suite.log", "suite.out"])
    assert "### step packing (limit" in (tmp_path / "suite.log").read_text()
    res = json.loads(path.read_text())
    assert res["errors"] == {}, res["errors"]
    assert [c["step"] for c in res["commands"]] == ["minilm", "packing", "roberta", "optim", "determinism"]
    assert all(c["rc"] == 0 and c["wall_s"] is not None for c in res["commands"])
    assert all(c["command"].startswith(sys.executable) for c in res["commands"])
    assert res["torch"] and res["smoke"] is True
    from benchmarks.suite_results import GOALS

    assert set(res["ratios"]) == set(GOALS)
    for k, v in res["ratios"].items():
        if "peak_mem" in k:
            assert v is None  # no peak memory on CPU
        else:
            assert v is not None and v > 0, k
    assert {"plain_pytorch", "ours_full", "ours_sam", "ours_random", "ours_lora", "cb_trial_overhead"} <= \
        set(res["figures"]["minilm-l6"])
    assert {"plain_pytorch", "ours_full", "ours_sam", "ours_lora"} <= set(res["figures"]["roberta-base-shape"])
    # the smoke's RoBERTa step has RoBERTa-base's vocabulary and positions at toy width
    assert {r["model"] for r in res["figures"]["roberta-base-shape"].values()} == {"tiny-roberta-vocab"}
    assert all("peak_mem_scope" in r for r in res["figures"]["minilm-l6"].values())
    packing = res["figures"]["packing"]
    assert [(r["gpu_per_trial"], r["reuse_workers"], r["finished"]) for r in packing] == \
        [(1.0, True, 2), (0.5, True, 2), (1.0, False, 2)]  # the whole-GPU setting again with a fresh process per trial
    for r in packing:  # the trials' own span, inside the sweep's wall; the rest is the sweep's fixed overhead
        assert 0 < r["trials_span_s"] < r["wall_s"] and r["sweep_overhead_s"] > 0
        # trial_wall_s is rounded to 0.01 s, the span is not; rounding keeps order (CI: 6.3387 >= 6.34 failed)
        assert round(r["trials_span_s"], 2) >= max(r["trial_wall_s"])
    assert len(res["figures"]["optimizer"]) == 2
    # on CPU a seed reruns bit for bit with either setting
    assert [(r["case"], r["identical"], r["same_test_score"]) for r in res["figures"]["determinism"]] == \
        [("deterministic_off", True, True), ("deterministic_on", True, True)]
    assert all(r["mask_entries"] > 0 for r in res["figures"]["determinism"])
    assert [r["trials_said_deterministic"] for r in res["figures"]["determinism"]] == [[False, False], [True, True]]
    assert set(res["profiles"]) == {"minilm-l6.full", "minilm-l6.sam"}
    # profiled after every timed case: a profiler that ran may slow what is timed after it (CUPTI on a GPU)
    minilm = (tmp_path / "suite.out").read_text().split("#start\tpacking")[0]
    cases = [json.loads(line)["case"] for line in minilm.splitlines() if line.startswith("{")]
    assert max(i for i, c in enumerate(cases) if c.startswith("ours_") or c == "cb_trial_overhead") < \
        min(i for i, c in enumerate(cases) if c.startswith("profile_")), cases
    assert all("Name" in t and "aten::" in t for t in res["profiles"].values())
    printed = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {p["ratio"] for p in printed if "ratio" in p and isinstance(p["ratio"], str)} == set(GOALS)


def test_gpu_suite_leaves_out_the_steps_its_budget_has_no_room_for(tmp_path):
    """optim (limit 90 s) fits a 200 s budget, packing (300 s) does not: it is left out, not started, and the
    results file holds optim's figures and says why packing is missing."""
    out = subprocess.run([*SUITE, str(tmp_path), "--smoke", "--only", "optim,packing", "--budget", "200"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=suite_env())
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(next(tmp_path.glob("*-cpu-smoke.json")).read_text())
    assert len(res["figures"]["optimizer"]) == 2
    assert "packing" not in res["figures"]
    assert set(res["errors"]) == {"packing"} and "budget of 200s" in res["errors"]["packing"]["skipped"]
    assert "#start\tpacking" not in (tmp_path / "suite.out").read_text()
    assert res["ratios"]["optimizer.masked_vs_dense_adamw"] > 0


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the suite's own session (timeout puts each step in a group of its own)."""
    pids = subprocess.run(["ps", "-o", "pid=", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def test_gpu_suite_killed_part_way_leaves_the_finished_steps_results(tmp_path):
    """As the device call's limit would: the suite is killed (SIGKILL, no trap runs) while its second step runs;
    OUT already holds the first step's results, and its stdout and stderr."""
    proc = subprocess.Popen([*SUITE, str(tmp_path), "--smoke", "--only", "roberta,optim"], cwd=ROOT, env=suite_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "#start\toptim" not in ((tmp_path / "suite.out").read_text() if (tmp_path / "suite.out").exists() else ""):
            assert proc.poll() is None, "the suite ended before its second step"
            assert time.monotonic() < deadline, "the second step never started"
            time.sleep(0.2)
    finally:
        _kill_session(proc)
    res = json.loads(next(tmp_path.glob("*-cpu-smoke.json")).read_text())
    assert {"plain_pytorch", "ours_full", "ours_sam", "ours_lora"} <= set(res["figures"]["roberta-base-shape"])
    assert [c["step"] for c in res["commands"]] == ["roberta"] and res["errors"] == {}
    assert "### step roberta (limit" in (tmp_path / "suite.log").read_text()
    # the returned suite.out rebuilds the results with the step that was cut off marked so
    from benchmarks.suite_results import collect

    again = collect(tmp_path / "suite.out", tmp_path / "suite.log", smoke=True)
    assert again["errors"]["optim"]["cut_off"] is True
    assert again["figures"]["roberta-base-shape"] == res["figures"]["roberta-base-shape"]


def test_suite_results_skips_lines_that_are_not_json(tmp_path):
    """A "{" line that is not JSON (a library's print, a line cut off by a kill) is recorded, not fatal."""
    from benchmarks.suite_results import collect

    row = {"case": "masked_adamw", "ms_per_step": 2.0}
    dense = {"case": "dense_adamw", "ms_per_step": 4.0}
    (tmp_path / "suite.out").write_text(
        "#start\toptim\t30\tpython benchmarks/optimizer_step.py\n"
        f"{json.dumps(dense)}\n{{not json from a library}}\n{json.dumps(row)}\n"
        "#end\toptim\t0\t12\n"
        "#start\tpacking\t200\tpython benchmarks/sweep_packing.py\n"
        '{"gpu_per_trial": 1.0, "reuse_w\n')  # cut off by a kill mid-line
    res = collect(tmp_path / "suite.out", None, smoke=True)
    assert res["ratios"]["optimizer.masked_vs_dense_adamw"] == 0.5
    assert res["errors"]["optim"] == {"not_json": ["{not json from a library}"]}
    assert res["errors"]["packing"]["cut_off"] is True
    assert res["errors"]["packing"]["not_json"] == ['{"gpu_per_trial": 1.0, "reuse_w']
    assert res["figures"]["packing"] == []


def _wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    tag = "cp312-cp312-manylinux_2_17_x86_64" if name == "pydantic-core" else "py3-none-any"
    with zipfile.ZipFile(folder / f"{dist}-{tag}.whl", "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", "Metadata-Version: 2.4\n"
                   f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires))


@pytest.mark.parametrize("core, ok", [("2.50.5", True), ("2.49.0", False)])
def test_devbundle_refuses_a_pydantic_core_that_pydantic_does_not_pin(tmp_path, core, ok):
    """The bundle's wheel set (devbundle.sh build runs this check): pydantic refuses any pydantic-core but the one
    it pins, at import, so a mismatched pair would stop every step on the GPU machine."""
    whl = tmp_path / "whl"
    whl.mkdir()
    _wheel(whl, "pydantic", "2.14.4", ["annotated-types>=0.6.0", "pydantic-core==2.50.5",
                                       "typing-extensions>=4.16.0", "typing-inspection>=0.4.2"])
    _wheel(whl, "pydantic-core", core, ["typing-extensions>=4.14.1"])
    for name, version in (("annotated-types", "0.8.0"), ("typing-inspection", "0.4.5"),
                          ("typing-extensions", "4.16.0")):
        _wheel(whl, name, version)
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "devbundle.sh"), "check-wheels", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode == 0) is ok, out.stderr
    if not ok:
        assert "requires pydantic-core==2.50.5, but the bundle ships pydantic-core 2.49.0" in out.stderr


def test_devbundle_wants_one_wheel_of_each_pinned_package(tmp_path):
    whl = tmp_path / "whl"
    whl.mkdir()
    _wheel(whl, "pydantic", "2.14.4", ["pydantic-core==2.50.5"])
    _wheel(whl, "pydantic-core", "2.50.5")
    _wheel(whl, "pydantic-core", "2.49.0")
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "devbundle.sh"), "check-wheels", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "2 wheels of pydantic-core" in out.stderr and "0 wheels of typing-extensions" in out.stderr


def test_devbundle_stubs_the_dashboard_ui_so_that_ray_still_serves_it(tmp_path, monkeypatch):
    """The bundle's Ray goes without the dashboard's web UI (0.8 MiB of the 64 a device call carries): what is
    left must satisfy Ray's own check, which on Linux refuses to start the dashboard without the folder."""
    from ray.dashboard import http_server_head

    build = tmp_path / "ray" / "dashboard" / "client" / "build"
    (build / "static" / "js").mkdir(parents=True)
    (build / "static" / "js" / "main.js").write_text("x" * 1000)
    (build / "speedscope-1.5.3").mkdir()
    for name in ("index.html", "favicon.ico"):
        (build / name).write_text(name)
    stub = ["bash", str(ROOT / "benchmarks" / "devbundle.sh"), "stub-dashboard", str(tmp_path / "ray")]
    for _ in range(2):  # idempotent: devbundle_check.sh stubs its venv's Ray on every run
        out = subprocess.run(stub, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in build.iterdir()) == ["favicon.ico", "index.html", "static"]
    assert not any((build / "static").iterdir()) and "left out of this bundle" in (build / "index.html").read_text()
    monkeypatch.setattr(http_server_head, "__file__", str(tmp_path / "ray" / "dashboard" / "http_server_head.py"))
    assert http_server_head.setup_static_dir() == str(build)
    out = subprocess.run(stub[:-1] + [str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no dashboard build in" in out.stderr


def test_trial_throughput_times_training_steps_only(tmp_path, data_dir, monkeypatch):
    """ours(): no evaluation and no best-state copy in the timed steps, the synthetic train split on the trial's
    device (moved as Trainer._setup_data moves real splits), and the case's Trainer freed when it returns (else
    its GPU memory would count in the next case's peak)."""
    from benchmarks import trial_throughput as tt
    from trainables.loop import Trainer

    calls = {"evaluate": 0, "_trained": 0}
    seen = []
    for name in calls:
        real = getattr(Trainer, name)

        def spy(self, *a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(Trainer, name, spy)
    real_train = Trainer.train

    def train(self, *a, **k):
        seen.append((self.splits.train.device == self.device, self.splits.train.host_lengths is not None))
        return real_train(self, *a, **k)

    monkeypatch.setattr(Trainer, "train", train)
    path = tt.model_folder("tiny", tmp_path)
    args = type("Args", (), {"batch_size": 4, "seq_len": 16, "steps": 3, "warmup": 1, "profile": False})()
    gc.collect()
    out = tt.ours(path, "full", args, tt.torch.device("cpu"), str(data_dir))
    assert out["samples_per_s"] > 0
    assert calls == {"evaluate": 0, "_trained": 0}
    assert seen == [(True, True), (True, True)]  # warm-up, timed
    assert not [o for o in gc.get_objects() if isinstance(o, Trainer)]


def test_packing_span_ends_where_the_workers_saw_their_trials_end(tmp_path):
    """From a review: a trial's end was when the driver wrote its record; trials that end together are recorded
    one after the other (record, MLflow, the final checkpoint's mask and delta), which stretched a packed span."""
    from benchmarks.sweep_packing import trial_span
    from orchestrator import records

    local = records.SweepRecords(tmp_path)
    now = time.time()
    for key, ended in (("a1b2c3d4e5f6", now - 100.0), ("0123456789ab", now - 98.0)):  # recorded now, 100 s after they ended
        local.finished(key, {"trial_ended_at": ended, "wall_s": 10.0, "steps": 5})
    span = trial_span(tmp_path, batch_size=4)
    assert span["trials_span_s"] == pytest.approx(12.0) and span["samples"] == 40


def test_the_benchmarks_import_their_own_modules_over_an_installed_benchmarks_package(tmp_path):
    """A `benchmarks` package installed on the GPU image (some wheels ship one) won over our namespace folder:
    determinism.py's `from benchmarks.trial_throughput import ...` would import the wrong module."""
    fake = tmp_path / "site" / "benchmarks"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "trial_throughput.py").write_text("raise ImportError('the installed benchmarks package')\n")
    for script in ("determinism.py", "tracking_scale.py"):
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and "usage" in out.stdout, (script, out.stderr[-2000:])
