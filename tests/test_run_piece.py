"""results/paper-small/run_piece.sh refuses, before it starts anything, what could lose a GPU call's results: a
piece too long for a 10-minute call (a call killed at its limit brings back no state), a drain that starts outside
the piece, and deleting a sweep folder that a driver still runs (one an earlier call left on a warm machine)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.sweeps import ROOT


def _piece(tmp_path, *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STATE": str(tmp_path / "state.tar.xz"), "WORK": str(tmp_path / "machine"),
           "PYTHON": sys.executable, "RAY_ADDRESS": ""}
    return subprocess.run(["bash", "results/paper-small/run_piece.sh", str(tmp_path / "out"), *options], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("options,needle", [
    (("--minutes", "7"), "--minutes 7: with up to 45 s before the sweep's clock and 135 s after it"),
    (("--minutes", "6.5"), "use at most 6"),
    (("--minutes", "2", "--drain-minutes", "2"), "--drain-minutes 2: the drain must start inside the piece's 2 min"),
    (("--drain-minutes", "soon"), "--drain-minutes soon: give a number of minutes"),
    (("--budget", "200"), "--budget 200: a piece needs 45 s before the sweep's clock, 135 s after it and a minute"),
    (("--budget", "300", "--minutes", "3"), "past its budget of 300 s (--budget; a device call cut there"),
    (("--budget", "300", "--drain-minutes", "2"), "--drain-minutes 2: the drain must start inside the piece's 2.0"),
    (("--budget", "9m"), "--budget 9m: give whole seconds"),
    (("--budget", "0600"), "--budget 0600: give whole seconds"),  # bash would read it as octal (384 s)
])
def test_a_piece_that_could_outrun_its_call_or_drain_outside_it_is_refused(tmp_path, options, needle):
    out = _piece(tmp_path, *options, "--first")
    assert out.returncode == 2 and needle in out.stderr, out.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "machine").exists()


@pytest.mark.parametrize("options", [(), ("--budget", "360", "--drain-minutes", "1"), ("--budget", "300")])
def test_the_default_piece_fits_the_budget(tmp_path, options):
    """6 minutes with a 2-minute drain is accepted (it gets as far as the missing state); with less device time
    left (--budget) the default minutes shrink to what fits, and the default drain with them (300 s: 2 minutes,
    a 1-minute drain)."""
    out = _piece(tmp_path, *options)
    assert out.returncode == 2 and "pass --first for the first piece" in out.stderr, out.stderr


@pytest.mark.slow
def test_a_sweep_folder_that_a_live_driver_runs_is_not_deleted(tmp_path, data_dir):
    sweep = tmp_path / "machine" / "guarded"
    sweep.mkdir(parents=True)
    (sweep / "records").mkdir()
    (sweep / "records" / "kept.json").write_text("{}")
    (sweep / "driver.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # alive
    out = _piece(tmp_path, "--first", "--", "--set", "name=guarded", "--set", f"data.dir={data_dir}")
    assert out.returncode == 2 and f"a driver still runs {sweep}" in out.stderr, out.stderr
    assert (sweep / "records" / "kept.json").is_file()
