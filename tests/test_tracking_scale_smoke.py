"""benchmarks/tracking_scale.py runs end to end with tiny sizes (a smoke check of the script, not a timing)."""
import json
import subprocess
import sys

import pytest

from tests.sweeps import ROOT

pytestmark = pytest.mark.slow


def test_tracking_scale_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tracking_scale.py"), "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    sizes, growth = rows[:2], rows[2:]
    assert [r["n"] for r in sizes] == [10, 30] and len(growth) == 1
    assert all(r["export_s"] > 0 and r["listing_s"] > 0 and r["callback_event_ms"] > 0 for r in sizes)
    assert set(growth[0]["growth"]) == {"listing_s", "status_s", "sync_s", "export_s", "callback_event_ms"}
