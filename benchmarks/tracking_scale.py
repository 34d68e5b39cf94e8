"""How the tracking side scales with the number of trials (issue 15.12).

Starts an `mlflow server` on SQLite (as on a cluster), fills it with N synthetic finished trials through
the real driver callback (local record, then MLflow: start, 3 evaluations, finish), then times, per N:
one paged `search_runs` listing of the N runs (the floor), `status`, `sync` with nothing to do, `export`,
and the driver callback per evaluation event. Prints one JSON line per N, then the growth per 10x and
export / listing.

  python benchmarks/tracking_scale.py                      # N = 100, 1000, 10000 (the last takes long)
  python benchmarks/tracking_scale.py --sizes 100,1000
  python benchmarks/tracking_scale.py --smoke              # N = 10, 30 on a SQLite file, no server: for CI
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mlflow_server import free_port, start_server, stop_server  # noqa: E402
from benchmarks.synthetic_trials import fake_result, trial_dict  # noqa: E402
from orchestrator import export, sweep  # noqa: E402
from orchestrator.spec import spec_from_dict  # noqa: E402
from orchestrator.tune_runner import SweepCallback  # noqa: E402

METHODS, TASKS = ["sam", "bitfit"], ["CB", "RTE", "COPA", "WSC", "MRPC"]


def make_spec(root: Path, n: int, uri: str):
    seeds = list(range(max(1, n // (len(METHODS) * len(TASKS)))))
    return spec_from_dict({"name": f"scale-{n}", "output_dir": str(root / "runs"), "tracking_uri": uri,
                           "grid": {"methods": METHODS, "tasks": TASKS, "seeds": seeds},
                           "training": {"max_steps": 9, "eval_every": 3}})


def _trial(cfg) -> SimpleNamespace:
    return SimpleNamespace(config={"trial": trial_dict(cfg)}, status="TERMINATED", last_result={}, checkpoint=None)


def fill(spec, trials, threads: int) -> float:
    """Every trial through the callback, as a driver would log it; a few driver threads to save time."""
    def work(part):
        callback = SweepCallback(spec)
        for cfg, t in part:
            callback.on_trial_start(0, [], t)
            result = fake_result(cfg)
            for p in result["curve"]:
                callback.mlflow.tracker.log_eval(cfg.key, p, t.config["trial"])
            t.last_result = {"result_json": json.dumps(result)}
            callback.on_trial_complete(0, [], t)

    pairs = [(cfg, _trial(cfg)) for cfg in trials]
    sweep.tracker_for(spec).parent_run_id  # the experiment and the parent exist before the threads look
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        workers = [threading.Thread(target=work, args=(pairs[i::threads],)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return time.perf_counter() - start


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(root: Path, n: int, uri: str, threads: int) -> dict:
    spec = make_spec(root, n, uri)
    trials = spec.trials()
    fill_s = fill(spec, trials, threads)
    tracker = sweep.tracker_for(spec)
    tracker.end_sweep("FINISHED")  # a sweep that ended: `sync` finds nothing to mend
    callback = SweepCallback(spec)
    fakes = [_trial(cfg) for cfg in trials]
    events = 50
    for t in fakes[:events]:  # a live driver knows its running trials' runs from on_trial_start
        callback.mlflow.tracker.run_id(t.config["trial"]["trial_key"])

    def per_event():
        for i in range(events):
            t = fakes[i % len(fakes)]
            callback.on_trial_result(0, fakes, t, {"step": 100 + i, "dev_score": 0.5, "train_loss": 1.0, "lr": 1e-3})

    out = {"n": len(trials), "fill_s": round(fill_s, 1),
           "listing_s": timed(lambda: sweep.tracker_for(spec).trial_runs(), 3),
           "status_s": timed(lambda: sweep.status_table(spec), 3),
           "sync_s": timed(lambda: sweep.sync(spec, sweep.tracker_for(spec)), 3),
           "export_s": timed(lambda: export.export(spec, root / f"export-{n}"), 3),
           "callback_event_ms": 1000 * timed(per_event) / events}
    out["export_over_listing"] = out["export_s"] / out["listing_s"]
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--threads", type=int, default=4, help="driver threads that fill the store")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    sizes = [10, 30] if args.smoke else [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tracking-scale-") as tmp:
        root, port = Path(tmp), free_port()
        os.environ["PEFT_SWEEP_DATA_DIR"] = os.environ.get("PEFT_SWEEP_DATA_DIR") or str(root)
        server = None if args.smoke else start_server(root / "mlflow.db", root / "artifacts", port)
        uri = f"sqlite:///{root / 'mlflow.db'}" if args.smoke else f"http://127.0.0.1:{port}"
        try:
            for n in sizes:
                rows.append(measure(root, n, uri, 1 if args.smoke else args.threads))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            if server is not None:
                stop_server(server)
    for a, b in zip(rows, rows[1:]):
        scale = b["n"] / a["n"]
        growth = {k: round(b[k] / a[k], 2) for k in ("listing_s", "status_s", "sync_s", "export_s", "callback_event_ms")
                  if a[k] > 0}
        print(json.dumps({"from_n": a["n"], "to_n": b["n"], "n_ratio": scale, "growth": growth}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
