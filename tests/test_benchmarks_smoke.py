"""The benchmark scripts run on CPU with tiny settings (a smoke check of the scripts, not a timing)."""
import json
import subprocess
import sys

import pytest

from tests.sweeps import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script,cases", [("trial_throughput.py", 5), ("sweep_packing.py", 2)])
def test_benchmark_smoke(script, cases):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == cases
    assert all(r.get("ratio", r.get("ratio_to_whole_gpu", 1.0)) > 0 for r in rows)
