"""The benchmark scripts run on CPU with tiny settings (a smoke check of the scripts, not a timing): the GPU
suite's --smoke runs trial_throughput, optimizer_step and sweep_packing once each, through gpu_suite.sh."""
import json
import os
import subprocess
import sys

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


def test_gpu_suite_smoke_writes_every_figure(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(tmp_path), "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = tmp_path.glob("*-cpu-smoke.json")
    res = json.loads(path.read_text())
    assert res["errors"] == {}, res["errors"]
    assert [c["step"] for c in res["commands"]] == ["minilm", "roberta", "optim", "packing"]
    assert all(c["command"].startswith(sys.executable) for c in res["commands"])
    assert res["torch"] and res["smoke"] is True
    from benchmarks.suite_results import GOALS

    assert set(res["ratios"]) == set(GOALS)
    for k, v in res["ratios"].items():
        if k.endswith("peak_mem_vs_full"):
            assert v is None  # no peak memory on CPU
        else:
            assert v is not None and v > 0, k
    assert {"plain_pytorch", "ours_full", "ours_sam", "ours_random", "ours_lora", "cb_trial_overhead"} <= \
        set(res["figures"]["minilm-l6"])
    assert {"plain_pytorch", "ours_full", "ours_sam", "ours_lora"} <= set(res["figures"]["roberta-base-shape"])
    assert [(r["gpu_per_trial"], r["reuse_workers"]) for r in res["figures"]["packing"]] == \
        [(1.0, True), (0.5, True), (1.0, False)]  # the whole-GPU setting again with a fresh process per trial
    assert len(res["figures"]["optimizer"]) == 2
    assert set(res["profiles"]) == {"minilm-l6.full", "minilm-l6.sam"}
    assert all("Name" in t and "aten::" in t for t in res["profiles"].values())
    printed = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {p["ratio"] for p in printed if "ratio" in p and isinstance(p["ratio"], str)} == set(GOALS)
