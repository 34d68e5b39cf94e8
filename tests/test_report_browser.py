"""The report of a small sweep, opened in headless Chromium: table shape, figures load, no console errors."""
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest

from dashboards.report import build_report
from tests.test_analysis import hand_made

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _curves(trials):
    rows = []
    for step in (50, 100, 150, 200):
        rows.append({"trial_key": "aaaaaaaaaaaa", "method": "childprune", "task": "CB", "seed": 0, "kind": "eval",
                     "step": step, "dev_score": 0.5 + step / 1000, "train_loss": 1.0 - step / 400})
    rows.append({"trial_key": "aaaaaaaaaaaa", "method": "childprune", "task": "CB", "seed": 0, "kind": "projection",
                 "step": 100, "flipped": 120, "loss_before": 0.75, "loss_after": 0.9})
    return pd.DataFrame(rows)


@pytest.fixture
def report(tmp_path):
    trials = hand_made([{"method": "sam", "task": "CB", "seed": s, "sparsity": 0.05, "perturbation": None,
                         "status": "FINISHED", "test_score": 0.5 + s / 50, "train_score": 0.9} for s in range(3)])
    trials["sweep"] = "browser"
    trials["trial_key"] = [f"{i:012x}" for i in range(len(trials))]
    trials["error"] = None
    trials.loc[trials["status"] == "FAILED", "error"] = "RuntimeError: CUDA out of memory <script>x</script>"
    trials.to_parquet(tmp_path / "trials.parquet")
    _curves(trials).to_parquet(tmp_path / "curves.parquet")
    return build_report(tmp_path / "trials.parquet", tmp_path / "curves.parquet", tmp_path / "report")


def test_report_files(report):
    folder = report.parent
    assert {p.name for p in folder.iterdir()} >= {"index.html", "ranks.png", "sparsity.png", "projection.png"}
    page = report.read_text()
    assert "&lt;script&gt;x&lt;/script&gt;" in page  # error text is escaped, not run
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network


def test_report_in_headless_chromium(report, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium (.ci/run installs Debian's package)")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=5000", "--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(args + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-images-loaded="true"' in html  # every figure decoded with a width
    table = re.search(r'<table id="main-table">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    header = re.findall(r"<th>(.*?)</th>", rows[0])
    assert header == ["method", "CB", "RTE", "AVG"]
    assert sorted(re.search(r"<th>(.*?)</th>", r).group(1) for r in rows[1:]) == ["bitfit", "full", "lora", "sam"]
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and
                      re.search(r"error|uncaught", line, re.I)]
    assert not console_errors, console_errors
    shot = tmp_path / "shot.png"
    subprocess.run(args + ["--window-size=1200,1800", f"--screenshot={shot}", report.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.stat().st_size > 20_000
