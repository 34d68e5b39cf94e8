"""``peft-sweep``: one command per step of the work, each shaped load → validate → act."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EPILOG = """examples:
  peft-sweep run configs/quickstart.yaml            run (or resume) a sweep; finished trials are skipped
  peft-sweep status runs/quickstart                 counts per status and per (method, task)
  peft-sweep status runs/quickstart --watch         live progress: trials per hour and ETA
  peft-sweep list runs                              the sweeps under runs/ and whether a driver runs each
  peft-sweep stop runs/quickstart                   stop a sweep; `run` resumes it from the last checkpoints
  peft-sweep rerun-failed runs/quickstart           rerun only the trials that ended in error
  peft-sweep export runs/quickstart                 trials.parquet + curves.parquet from MLflow
  peft-sweep analyze --trials runs/quickstart/export/trials.parquet --out runs/quickstart/analysis
  peft-sweep report runs/quickstart --out runs/quickstart/report
  peft-sweep train-one --task CB --method sam --sparsity 0.005 --set training.max_steps=100
"""


MAX_LINE = 300  # one line of error; PEFT_SWEEP_DEBUG=1 shows all of it


def _cmd_tasks(args) -> int:
    from trainables.config import DataConfig
    from trainables.data import protocol_indices
    from trainables.tasks import TASKS, load_task
    from .preflight import check_data

    cfg = DataConfig(dir=args.data_dir)
    check_data(cfg, list(TASKS))
    rows = []
    for name, task in TASKS.items():
        train, dev = load_task(name, cfg.dir)
        tr, dv = protocol_indices(len(train), cfg, None)
        tr_p, _ = protocol_indices(len(train), cfg, 0)
        rows.append({"task": name, "kind": task.kind, "metric": task.metric,
                     "labels": [str(x) for x in task.labels], "train": len(tr), "dev": len(dv), "test": len(dev),
                     "train_perturbed": len(tr_p), "original_train": len(train)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'task':6} {'metric':17} {'train':>6} {'dev':>5} {'test':>5} {'perturbed':>9}  labels")
        for r in rows:
            print(f"{r['task']:6} {r['metric']:17} {r['train']:>6} {r['dev']:>5} {r['test']:>5} "
                  f"{r['train_perturbed']:>9}  {','.join(r['labels']) or '(regression)'}")
    return 0


def _cmd_train_one(args) -> int:
    from trainables import TrialConfig, run_trial
    from trainables.loop import EvalPoint
    from trainables.tasks import canonical_task
    from .preflight import check_cache, check_data, check_model, check_writable_dir
    from .spec import SpecError, first_error, apply_overrides
    from pydantic import ValidationError

    base = {"task": canonical_task(args.task), "method": args.method, "seed": args.seed, "sparsity": args.sparsity,
            "perturbation": args.perturbation, "model": args.model, "data": {"dir": args.data_dir}}
    # --set takes the sweep spec's keys: methods.<m>.<param> goes to this trial's method_params
    data = apply_overrides({"training": {}, "methods": {}, "data": base.pop("data")}, args.set or [])
    method_params = data.pop("methods").get(args.method, {})
    try:
        cfg = TrialConfig.model_validate({**base, **data, "method_params": method_params})
    except ValidationError as exc:
        raise SpecError(f"invalid trial: {first_error(exc)}") from None
    if args.checkpoint_dir:
        check_writable_dir(Path(args.checkpoint_dir), "--checkpoint-dir")
    check_cache(cfg.data)
    check_model(cfg.model, cfg.training.max_seq_length)
    check_data(cfg.data, [cfg.task])

    def report(event):
        if isinstance(event, EvalPoint):
            print(f"step {event.step:>6}  dev {event.dev_score:.4f}  train_loss {event.train_loss:.4f}"
                  f"  best {event.best_dev_score:.4f}", file=sys.stderr, flush=True)

    result = run_trial(cfg, report, checkpoint_dir=args.checkpoint_dir)
    print(json.dumps(result))
    return 0


def _load(args, check_world: bool):
    """The spec; with ``check_world``, also checked against everything it names (paths, resources, model,
    data, store, cluster) without starting or writing anything: the checks `sweep.run` makes before it writes,
    so what `validate` reports is what `run` would meet."""
    import os

    from . import sweep
    from .preflight import check_cluster_paths, check_ray_address, check_size, preflight
    from .spec import load_spec

    spec = load_spec(args.config, args.set)
    check_size(spec, args.yes)
    if check_world:
        address = spec.ray.address or os.environ.get("RAY_ADDRESS")
        check_cluster_paths(spec, address)
        preflight(spec)
        sweep.tracker_for(spec).check_reachable()
        check_ray_address(address)
    return spec


def _load_sweep(path: str):
    """A sweep folder's spec, or one line saying what the path is instead (missing, a file, an empty folder,
    the output folder above the sweeps, a folder of something else)."""
    from . import sweep
    from .spec import SpecError, load_spec

    folder = Path(path)
    if not folder.exists():
        raise SpecError(f"SWEEP_DIR {path!r}: no such folder; give the folder `peft-sweep run` printed, "
                        "e.g. runs/<name>")
    if not folder.is_dir():
        raise SpecError(f"SWEEP_DIR {path!r} is a file; give the sweep folder that holds its spec.yaml, "
                        "e.g. runs/<name>")
    if not (folder / sweep.SPEC_FILE).is_file():
        inside = sorted(p.name for p in folder.iterdir() if (p / sweep.SPEC_FILE).is_file())
        if inside:
            raise SpecError(f"SWEEP_DIR {path!r} holds sweeps ({', '.join(inside[:3])}); give one of them, "
                            f"e.g. {folder / inside[0]}")
        what = "an empty folder" if not any(folder.iterdir()) else "a folder without spec.yaml"
        raise SpecError(f"SWEEP_DIR {path!r} is {what}, not a sweep folder; give the folder `peft-sweep run` "
                        "printed, e.g. runs/<name>")
    spec = load_spec(folder / sweep.SPEC_FILE)
    if spec.sweep_dir != folder.resolve():
        if spec.name != folder.resolve().name:
            raise SpecError(f"SWEEP_DIR {path!r} holds the spec of sweep {spec.name!r}, whose folder is "
                            f"{str(spec.sweep_dir)!r}; give that folder")
        # the same sweep, seen from another working directory (a relative output_dir) or moved: follow it
        spec = spec.model_copy(update={"output_dir": str(folder.resolve().parent)})
    return spec


def _cmd_validate(args) -> int:
    spec = _load(args, check_world=True)
    print(f"{args.config}: valid; {len(spec.trials())} trials -> {spec.sweep_dir}")
    return 0


def _cmd_run(args) -> int:
    from . import sweep

    spec = _load(args, check_world=False)  # sweep.run makes the same checks before it writes anything
    failed = sweep.run(spec, force=args.force)
    return 1 if failed else 0


def _cmd_rerun_failed(args) -> int:
    from . import sweep

    spec = _load_sweep(args.sweep_dir)
    return 1 if sweep.run(spec, only_failed=True) else 0


def _cmd_status(args) -> int:
    from . import sweep

    if args.watch:
        from . import control

        return control.watch(_load_sweep(args.sweep_dir), args.interval)
    table = sweep.status_table(_load_sweep(args.sweep_dir))
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{table['total']} trials: " + ", ".join(f"{k} {v}" for k, v in sorted(table["per_status"].items())))
    for pair, counts in sorted(table["per_method_task"].items()):
        print(f"  {pair:24} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for key, err in table["errors"].items():
        print(f"  FAILED {key}: {err}")
    return 0


def _cmd_list(args) -> int:
    from . import control

    rows = control.list_sweeps(Path(args.output_dir))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no sweeps in {args.output_dir}")
    for r in rows:
        if "error" in r:
            print(f"{r['sweep']:24} unreadable: {r['error']}")
            continue
        counts = ", ".join(f"{s} {r[s]}" for s in ("FINISHED", "FAILED", "RUNNING", "STOPPED", "PENDING") if r.get(s))
        print(f"{r['sweep']:24} {r['total']:>5} trials  {counts:48} started {r['started']}  driver {r['driver']}")
    return 0


def _cmd_stop(args) -> int:
    from . import control

    return control.stop(Path(args.sweep_dir), args.timeout)


def _cmd_sync(args) -> int:
    from . import sweep

    spec = _load_sweep(args.sweep_dir)
    tracker = sweep.tracker_for(spec)
    tracker.check()
    print(f"synced {sweep.sync(spec, tracker)} trial(s) into {spec.resolved_tracking_uri}")
    return 0


def _cmd_export(args) -> int:
    from . import export

    spec = _load_sweep(args.sweep_dir)
    out = _out_dir(args.out, "--out") if args.out else spec.sweep_dir / "export"
    paths = export.export(spec, out)
    for p in paths:
        print(p)
    return 0


def _cmd_analyze(args) -> int:
    from . import analysis

    for p in analysis.analyze_file(_trials_file(args.trials, "--trials"), _out_dir(args.out, "--out")):
        print(p)
    return 0


def _cmd_report(args) -> int:
    from dashboards.report import build_report
    from . import export

    from .spec import SpecError

    if args.trials and args.sweep_dir:
        raise SpecError("give SWEEP_DIR or --trials FILE.parquet, not both")
    if args.trials:
        trials = _trials_file(args.trials, "--trials")
        curves = _trials_file(args.curves, "--curves", needed=["trial_key", "step"]) if args.curves else None
        out = _out_dir(args.out, "--out") if args.out else trials.parent / "report"
    elif args.sweep_dir:
        spec = _load_sweep(args.sweep_dir)
        out = _out_dir(args.out, "--out") if args.out else spec.sweep_dir / "report"
        trials, curves = export.export(spec, spec.sweep_dir / "export")
    else:
        raise SpecError("give SWEEP_DIR or --trials FILE.parquet")
    print(build_report(trials, curves, out))
    return 0


def _cmd_load(args) -> int:
    """A finished trial's model (base + its delta) as a ready folder: from an MLflow run or a local folder."""
    import re
    import tempfile

    from trainables import load_finetuned, save_finetuned
    from trainables.finetuned import check_out, read_meta

    from .spec import SpecError

    out = _out_dir(args.out, "--out")
    with tempfile.TemporaryDirectory(prefix="peft-sweep-load-") as tmp:
        source = Path(args.source)
        if not source.exists():
            if not re.fullmatch(r"[0-9a-f]{32}", args.source):
                raise SpecError(f"load {args.source!r}: neither a folder nor an MLflow run id (32 hex characters)")
            if not args.tracking_uri:
                raise SpecError("load RUN_ID needs --tracking-uri (e.g. sqlite:///runs/NAME/mlflow.db or "
                                "http://MLFLOW:5000)")
            from .tracking import download_model

            source = download_model(args.tracking_uri, args.source, Path(tmp))
        check_out(out, read_meta(source)[2].get("trial_key"), args.force)  # before the base model is loaded
        net, tokenizer, meta = load_finetuned(source, model=args.model)
        print(save_finetuned(net, tokenizer, meta, out, force=args.force))
    return 0


def _out_dir(path: str, flag: str) -> Path:
    from .preflight import check_writable_dir

    check_writable_dir(Path(path), flag)
    return Path(path)


def _trials_file(path: str, flag: str, needed: list[str] | None = None) -> Path:
    """A Parquet file with the columns the command reads (trials.parquet by default)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dashboards.analysis import NEEDED
    from .spec import SpecError

    file = Path(path)
    hint = "e.g. SWEEP_DIR/export/trials.parquet from `peft-sweep export`" if needed is None else \
        "e.g. SWEEP_DIR/export/curves.parquet"
    if not file.exists():
        raise SpecError(f"{flag} {path!r}: no such file; give a Parquet file, {hint}")
    if file.is_dir():
        raise SpecError(f"{flag} {path!r} is a folder; give a Parquet file, {hint}")
    try:
        names = pq.read_schema(file).names
    except (pa.ArrowException, OSError) as exc:
        raise SpecError(f"{flag} {path!r} is not a Parquet file ({str(exc).splitlines()[0][:80]}); {hint}") from None
    missing = [c for c in (needed or NEEDED) if c not in names]
    if missing:
        raise SpecError(f"{flag} {path!r} lacks the columns {', '.join(missing)}; give a Parquet file, {hint}")
    return file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peft-sweep", description="Ray Tune sweeps of parameter-efficient "
                                "fine-tuning methods (Fu et al. 2023), tracked in MLflow, exported as Parquet.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sets = dict(action="append", metavar="dotted.key=value", default=[],
                help="override a setting, e.g. training.max_steps=200 or methods.sam.burnin=8 (repeatable)")

    s = sub.add_parser("train-one", help="run one trial without Ray; prints its result as JSON on the last line")
    s.add_argument("--task", required=True, help="CoLA, STS-B, MRPC, RTE, CB, COPA or WSC (any capitalisation)")
    s.add_argument("--method", required=True, help="full, random, mixout, bitfit, magprune, adapter, lora, "
                   "diffprune, childprune or sam")
    s.add_argument("--sparsity", type=float, help="share p of trainable backbone entries (methods that take one)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--perturbation", type=int, help="perturbation split k (drops a seeded 10%% of train)")
    s.add_argument("--model", default="minilm-l6", help="Hub id, local folder, or the alias minilm-l6 (embedded)")
    s.add_argument("--data-dir", help=f"folder of the original task files (else ${'PEFT_SWEEP_DATA_DIR'}, else the Hub)")
    s.add_argument("--checkpoint-dir", help="write a checkpoint at each evaluation here")
    s.add_argument("--set", **sets)
    s.set_defaults(fn=_cmd_train_one)

    s = sub.add_parser("tasks", help="the seven tasks with metric, labels and split sizes under the protocol")
    s.add_argument("--data-dir")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_tasks)

    for name, fn, text in [("validate", _cmd_validate, "check a sweep spec and count its trials; starts nothing"),
                           ("run", _cmd_run, "run a sweep; resumes an interrupted one and skips FINISHED trials")]:
        s = sub.add_parser(name, help=text)
        s.add_argument("config", help="sweep spec YAML, e.g. configs/quickstart.yaml")
        s.add_argument("--set", **sets)
        s.add_argument("--yes", action="store_true", help="accept a grid of more than 5000 trials")
        if name == "run":
            s.add_argument("--force", action="store_true", help="rerun trials that already FINISHED")
        s.set_defaults(fn=fn)

    for name, fn, text in [("rerun-failed", _cmd_rerun_failed, "rerun only the trials that ended in error"),
                           ("status", _cmd_status, "counts per status and per (method, task)"),
                           ("sync", _cmd_sync, "fill MLflow from the local trial records (after an outage)"),
                           ("export", _cmd_export, "write trials.parquet and curves.parquet from MLflow")]:
        s = sub.add_parser(name, help=text)
        s.add_argument("sweep_dir", help="the sweep folder, <output_dir>/<name>")
        if name == "status":
            s.add_argument("--json", action="store_true")
            s.add_argument("--watch", action="store_true", help="a live view (done/running/failed, trials per "
                           "hour, ETA) until no driver runs the sweep")
            s.add_argument("--interval", type=float, default=5.0, help="seconds between updates with --watch")
        if name == "export":
            s.add_argument("--out", help="folder for the Parquet files (default SWEEP_DIR/export)")
        s.set_defaults(fn=fn)

    s = sub.add_parser("list", help="the sweeps in a folder: trials per status, start time, driver alive")
    s.add_argument("output_dir", nargs="?", default="runs", help="a spec's output_dir (default ./runs)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_list)

    s = sub.add_parser("stop", help="stop a running sweep cleanly: running trials stay resumable, nothing is "
                       "left RUNNING in MLflow")
    s.add_argument("sweep_dir", help="the sweep folder, <output_dir>/<name>")
    s.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the driver (default 300)")
    s.set_defaults(fn=_cmd_stop)

    s = sub.add_parser("load", help="rebuild a finished trial's fine-tuned model (base + delta) into a folder")
    s.add_argument("source", help="an MLflow run id of a finished trial, or a folder holding its model/ delta")
    s.add_argument("--tracking-uri", help="where the run is (with RUN_ID), e.g. sqlite:///runs/NAME/mlflow.db")
    s.add_argument("--out", required=True, help="folder for the model, its tokenizer and finetuned.json")
    s.add_argument("--model", help="where to find the base model, if not where it was trained from "
                   "(checked by hash)")
    s.add_argument("--force", action="store_true", help="write into --out even if it holds another model or files")
    s.set_defaults(fn=_cmd_load)

    s = sub.add_parser("analyze", help="mean/std, ranks, Spearman rho from a trials Parquet file")
    s.add_argument("--trials", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_analyze)

    s = sub.add_parser("report", help="static HTML report (tables and figures) of a sweep or a trials file")
    s.add_argument("sweep_dir", nargs="?")
    s.add_argument("--trials", help="trials.parquet instead of a sweep folder")
    s.add_argument("--curves", help="curves.parquet to go with --trials")
    s.add_argument("--out")
    s.set_defaults(fn=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)

    try:
        return args.fn(args)
    except Exception as exc:
        if os.environ.get("PEFT_SWEEP_DEBUG"):  # the full traceback instead of the one-line message
            raise
        return _explain(args, exc)


def _explain(args, exc: BaseException) -> int:
    """Bad input (a spec, a data file, a model, an unreachable store or cluster) gets one line and exit 2;
    anything else is a bug and keeps its traceback."""
    from trainables.models import ModelError
    from trainables.tasks import DataError
    from .spec import ClusterError, SpecError
    from .tracking import TrackingError

    if not isinstance(exc, (SpecError, DataError, ModelError, TrackingError, ClusterError, FileNotFoundError,
                            NotADirectoryError, IsADirectoryError, PermissionError,
                            ValueError)):  # ValueError: settings that validate only in context (budget too small)
        raise exc
    line = f"peft-sweep {args.cmd}: error: " + " ".join(str(exc).split())
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE - 40].rstrip() + " ... (PEFT_SWEEP_DEBUG=1 shows all)"
    print(line, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
