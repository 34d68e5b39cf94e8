"""benchmarks/checkpoint_size.py on a tiny BERT: every method's checkpoint and delta, and the delta's round trip
(a smoke check of the script; the sizes themselves are the README's table on MiniLM-L6)."""
import json
import subprocess
import sys

import pytest

from tests.sweeps import ROOT
from trainables.methods import METHODS

pytestmark = pytest.mark.slow


def test_checkpoint_size_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "checkpoint_size.py"), "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["method"]: r for r in (json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))}
    assert set(rows) == set(METHODS)
    assert all(r["round_trip_exact"] for r in rows.values())
    assert rows["full"]["checkpoint_ratio"] == 1.0
    for m in ("sam", "random", "magprune", "childprune", "bitfit", "lora", "adapter"):
        assert rows[m]["checkpoint_ratio"] < 0.05, (m, rows[m])  # p = 0.01 on the tiny model
