"""``peft-sweep``: one command per step of the work, each shaped load → validate → act."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .progress import n_trials

if TYPE_CHECKING:  # pandas loads with the commands that use it
    import pandas as pd

EPILOG = """examples:
  peft-sweep run configs/quickstart.yaml            run (or resume) a sweep; finished trials are skipped
  peft-sweep status runs/quickstart                 counts per status and per (method, task)
  peft-sweep status runs/quickstart --watch         live progress: trials per hour and ETA
  peft-sweep list runs                              the sweeps under runs/ and whether a driver runs each
  peft-sweep stop runs/quickstart                   stop a sweep; `run` resumes it from the last checkpoints
  peft-sweep rerun-failed runs/quickstart           rerun only the trials that ended in error
  peft-sweep export runs/quickstart                 trials, curves and masks .parquet from MLflow
  peft-sweep analyze runs/quickstart                tables, ranks, tests and the answer (or --trials FILE)
  peft-sweep report runs/quickstart --out runs/quickstart/report
  peft-sweep train-one --task CB --method sam --sparsity 0.005 --set training.max_steps=100

exit codes:
  0  done: every trial of the grid FINISHED; also a sweep stopped or drained on request (`run` resumes it)
  1  trials ended in error (run, rerun-failed, train-one); `stop` whose driver had not stopped (or drained)
     within --timeout
  2  bad input, refused before anything started: the spec, a path, the model, the data, the tracking store,
     the cluster; one line names the value and what would be valid (PEFT_SWEEP_DEBUG=1: the traceback)
"""


# one line of error; PEFT_SWEEP_DEBUG=1 shows all of it. Room for the longest list of valid keys (training's, 15)
# after a long spec path: at 300 the list was cut before the key the user looked for, at 500 (with 15 keys) too.
MAX_LINE = 600
ERROR_SHOWN = 200  # characters of a failed trial's error that `status` prints
WATCH_INTERVAL = 5.0  # seconds between updates of `status --watch`
WATCH_START_S = 60.0  # how long `status --watch` waits for a starting run's spec.yaml (written after the store)


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


def train_one_config(args):
    """The one trial's TrialConfig from train-one's options: the sweep spec's defaults (its sparsity too),
    refusing a --set that would do nothing."""
    from trainables import TrialConfig
    from trainables.tasks import canonical_task
    from trainables.methods import METHODS, get_method
    from trainables.schema import did_you_mean
    from .spec import DEFAULT_SPARSITY, SpecError, first_error, apply_overrides
    from pydantic import ValidationError

    if args.method not in METHODS:
        raise SpecError(f"--method {args.method!r}: unknown method{did_you_mean(args.method, METHODS)}"
                        f"; valid: {', '.join(METHODS)}")
    unknown = [o.split("=", 1)[0] for o in args.set or [] if o.split(".", 1)[0] not in ("training", "methods", "data")]
    if unknown:
        key, last = unknown[0], unknown[0].split(".")[-1]
        flag = {"seeds": "--seed", "seed": "--seed", "tasks": "--task", "task": "--task", "methods": "--method",
                "sparsities": "--sparsity", "sparsity": "--sparsity", "perturbations": "--perturbation",
                "perturbation": "--perturbation", "model": "--model"}.get(last)
        if flag is None and last in TrialConfig.model_fields["training"].annotation.model_fields:
            flag = f"--set training.{last}=..."
        raise SpecError(f"--set {key}: unknown key" + (f"; use {flag}" if flag else "")
                        + f" (train-one takes training.<key>, methods.{args.method}.<param> or data.<key> with --set)")
    try:
        task = canonical_task(args.task)
    except ValueError as exc:
        raise SpecError(f"--task {args.task!r}: {exc}") from None
    sparsity = args.sparsity
    if sparsity is None and get_method(args.method).uses_sparsity:
        sparsity = DEFAULT_SPARSITY  # as a sweep spec's grid.sparsities
    base = {"task": task, "method": args.method, "seed": args.seed, "sparsity": sparsity,
            "perturbation": args.perturbation, "model": args.model, "data": {"dir": args.data_dir}}
    # --set takes the sweep spec's keys: methods.<m>.<param> goes to this trial's method_params
    data = apply_overrides({"training": {}, "methods": {}, "data": base.pop("data")}, args.set or [])
    methods = data.pop("methods")
    others = [m for m in methods if m != args.method]
    if others:
        raise SpecError(f"--set methods.{others[0]}.*: this trial runs --method {args.method}, so settings of "
                        f"{', '.join(others)} would do nothing; set methods.{args.method}.<param>")
    method_params = methods.get(args.method, {})
    try:
        get_method(args.method).Params.model_validate(method_params)
    except ValidationError as exc:  # named as in a spec, with its hint
        raise SpecError(f"invalid trial: {first_error(exc, get_method(args.method).Params)}") from None
    try:
        cfg = TrialConfig.model_validate({**base, **data, "method_params": method_params})
    except ValidationError as exc:
        raise SpecError(f"invalid trial: {first_error(exc, TrialConfig)}") from None
    return cfg


def _cmd_train_one(args) -> int:
    from trainables import run_trial
    from trainables.loop import EvalPoint
    from .preflight import check_cache, check_data, check_model

    cfg = train_one_config(args)
    if args.checkpoint_dir:
        _out_dir(args.checkpoint_dir, "--checkpoint-dir")  # before the training, not at its first checkpoint
    check_cache(cfg.data)
    check_model(cfg.model, cfg.training.max_seq_length)
    check_data(cfg.data, [cfg.task])
    if note := cfg.training.early_stopping_note():
        print(note, file=sys.stderr)  # stdout's last line is the result

    def report(event):
        if isinstance(event, EvalPoint):
            print(f"step {event.step:>6}  dev {event.dev_score:.4f}  train_loss {event.train_loss:.4f}"
                  f"  best {event.best_dev_score:.4f}", file=sys.stderr, flush=True)

    result = run_trial(cfg, report, checkpoint_dir=args.checkpoint_dir)
    print(strict_json(result))
    return 0


def strict_json(value: Any) -> str:
    """JSON that jq and JavaScript read: nan and infinities (a correlation of constant predictions) as null."""
    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        return [finite(x) for x in v] if isinstance(v, (list, tuple)) else v

    return json.dumps(finite(value), allow_nan=False, default=str)


def _load(args, check_world: bool):
    """The spec; with ``check_world``, also checked against everything it names (paths, resources, model,
    data, store, cluster, a driver already running it, a changed spec under its name) without starting or
    writing anything: ``sweep.check_before_run``, the checks `sweep.run` makes before it writes."""
    from . import sweep
    from .preflight import check_size
    from .spec import load_spec

    spec = sweep.follow_folder(load_spec(args.config, args.set), Path(args.config), args.set or [])
    check_size(spec, args.yes)
    if check_world:
        checked = sweep.check_before_run(spec, args.force)
        if checked.note:
            print(checked.note, flush=True)
        spec = checked.spec  # with the data folder `run` would record
    return spec


def _load_sweep(path: str):
    """A sweep folder's spec, or one line saying what the path is instead (missing, a file, an empty folder,
    the output folder above the sweeps, a folder of something else)."""
    from . import sweep
    from .spec import SpecError

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
            more = f" and {len(inside) - 3} more: `peft-sweep list {path}`" if len(inside) > 3 else ""
            raise SpecError(f"SWEEP_DIR {path!r} holds sweeps ({', '.join(inside[:3])}{more}); give one of them, "
                            f"e.g. {folder / inside[0]}")
        what = "an empty folder" if not any(folder.iterdir()) else "a folder without spec.yaml"
        raise SpecError(f"SWEEP_DIR {path!r} is {what}, not a sweep folder; give the folder `peft-sweep run` "
                        "printed, e.g. runs/<name>")
    return sweep.load_sweep(folder)  # follows a folder seen from elsewhere or moved


def wait_for_spec(folder: Path, timeout_s: float, poll_s: float = 0.5) -> bool:
    """`status --watch` started beside `run`: the run makes the sweep folder (and its store) seconds before it
    writes spec.yaml. Wait for it there, saying so, rather than call the folder no sweep; a folder that holds
    other things, or none, is answered at once by _load_sweep."""
    import time

    from . import sweep
    from .preflight import SWEEP_FILES

    def starting() -> bool:
        return folder.is_dir() and not (folder / sweep.SPEC_FILE).is_file() and all(
            p.name in SWEEP_FILES or p.name.startswith(".") for p in folder.iterdir())

    if not starting():
        return (folder / sweep.SPEC_FILE).is_file()
    print(f"waiting up to {timeout_s:g} s for {folder / sweep.SPEC_FILE} (a run that is starting?)", flush=True)
    deadline = time.monotonic() + timeout_s
    while starting() and time.monotonic() < deadline:
        time.sleep(poll_s)
    return (folder / sweep.SPEC_FILE).is_file()


def _cmd_validate(args) -> int:
    from . import sweep

    spec = _load(args, check_world=True)
    trials = spec.trials()
    if (spec.sweep_dir / sweep.SPEC_FILE).is_file():  # an existing sweep: what `run` would do (local records)
        done, pending = sweep.plan(trials, sweep.statuses(spec), args.force)
        print(f"{args.config}: valid; {n_trials(len(trials))}, {sweep.plan_line(done, pending, args.force)} "
              f"-> {spec.sweep_dir}")
    else:
        print(f"{args.config}: valid; {n_trials(len(trials))} -> {spec.sweep_dir}")
    if note := spec.training.early_stopping_note():
        print(note)
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
    from .spec import SpecError

    if args.interval is not None and not args.watch:
        raise SpecError(f"--interval {args.interval:g} is for the live view; add --watch, or leave --interval out")
    if args.interval is not None and not args.interval > 0:
        raise SpecError(f"--interval {args.interval:g}: seconds between updates must be > 0, e.g. 5")
    if args.watch:
        from . import control

        wait_for_spec(Path(args.sweep_dir), WATCH_START_S)
        return control.watch(_load_sweep(args.sweep_dir), args.interval or WATCH_INTERVAL, as_json=args.json)
    spec = _load_sweep(args.sweep_dir)
    table = sweep.status_table(spec)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{n_trials(table['total'])}: " + ", ".join(f"{k} {v}" for k, v in sorted(table["per_status"].items())))
    for pair, counts in sorted(table["per_method_task"].items()):
        print(f"  {pair:24} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for key, err in table["errors"].items():  # Ray's errors run to a page: the export's `error` column has it all
        shown = err if len(err) <= ERROR_SHOWN else err[:ERROR_SHOWN - 1] + "…"
        print(f"  FAILED {table['failed_trials'][key]} ({key}): {shown}")
    if table["errors"] and table["driver"] != "alive":
        print(f"{sweep.rerun_hint(spec, list(table['errors']))} (longer errors: the `error` column of "
              f"peft-sweep export {spec.sweep_dir})")
    running = table["per_status"].get("RUNNING", 0)
    left = sum(n for s, n in table["per_status"].items() if s not in ("FINISHED", "FAILED"))
    if running and table["driver"] != "alive":  # records a killed driver left: nothing runs them
        print(f"no driver runs this sweep: its {running} RUNNING trial(s) were left by one that ended; "
              f"`{sweep.resume_command(spec)}` resumes them")
    elif left and table["driver"] != "alive":  # stopped, drained or grown: `stop` said how to go on, this did not
        print(f"{left} trial(s) neither FINISHED nor FAILED, and no driver runs the sweep: "
              f"`{sweep.resume_command(spec)}` runs them")
    return 0


def _cmd_list(args) -> int:
    from . import control

    from .spec import SpecError
    from .sweep import SPEC_FILE

    folder = Path(args.output_dir)
    if (folder / SPEC_FILE).is_file():
        raise SpecError(f"{folder} is a sweep folder (it holds {SPEC_FILE}), not a folder of sweeps: give it to "
                        "`peft-sweep status`, or give its parent folder to `peft-sweep list`")
    rows = control.list_sweeps(folder)
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
        print(f"{r['sweep']:24} {r['total']:>5} {'trial ' if r['total'] == 1 else 'trials'}  {counts:48} started {r['started']}  driver {r['driver']}")
    return 0


def _cmd_stop(args) -> int:
    from . import control

    return control.stop(Path(args.sweep_dir), args.timeout, drain=args.drain)


def _cmd_sync(args) -> int:
    from . import driver, sweep

    spec = _load_sweep(args.sweep_dir)
    tracker = sweep.tracker_for(spec)
    tracker.check()
    if not driver.alive(spec.sweep_dir):  # a driver elsewhere may see the folder under its own path
        moved_from = tracker.follow_move()
        if moved_from:
            print(f"note: this sweep folder moved here from {moved_from}; its MLflow store's artifact paths now "
                  f"point into {spec.sweep_dir}")
    print(f"synced {sweep.sync(spec, tracker)} trial(s) into {spec.resolved_tracking_uri}")
    return 0


def _cmd_export(args) -> int:
    import pyarrow.parquet as pq

    from . import export
    from .masks import MASKS_DIR

    spec = _load_sweep(args.sweep_dir)
    out = _out_dir(args.out, "--out") if args.out else spec.sweep_dir / "export"
    trials_path, curves_path = export.export(spec, out)
    trials = pq.read_table(trials_path, columns=["status", "in_grid"]).to_pandas()
    counts = ", ".join(f"{n} {s}" for s, n in trials["status"].fillna("no status").value_counts().items())
    gone = int((~trials["in_grid"]).sum())
    print(f"{trials_path}  ({n_trials(len(trials))}: {counts or 'none'}"
          + (f"; {gone} no longer in the grid, left out by analyze and report" if gone else "") + ")")
    print(f"{curves_path}  (dev score and training loss per evaluation, and the projections)")
    print(f"{out / 'masks.parquet'}  (where each trial's budget went: entries per layer and module kind)")
    masks = sorted((out / MASKS_DIR).glob("*")) if (out / MASKS_DIR).is_dir() else []
    print(f"{out / MASKS_DIR}/  ({len(masks)} mask file(s), one per finished trial of a method that selects entries)"
          if masks else "no mask files (no finished trial of a method that selects entries)")
    return 0


def _cmd_analyze(args) -> int:
    import pandas as pd

    from dashboards.analysis import analyze
    from dashboards.answer import answer
    from dashboards.paper import compare
    from dashboards.report import analysis_dir_of
    from . import analysis, export
    from .preflight import check_writable_dir
    from .spec import SpecError

    if args.trials and args.sweep_dir:
        raise SpecError("give SWEEP_DIR or --trials FILE.parquet, not both")
    published = _published_table(args.paper) if args.paper else None
    if args.sweep_dir:  # as `report SWEEP_DIR`: exported afresh first
        spec = _load_sweep(args.sweep_dir)
        trials, _ = export.export(spec, spec.sweep_dir / "export")
    elif args.trials:
        trials = _trials_file(args.trials, "--trials")
    else:
        raise SpecError("give SWEEP_DIR or --trials FILE.parquet")
    out = args.out or str(analysis_dir_of(trials))
    check_writable_dir(Path(out), "--out")  # a bad --out fails before any work
    df = pd.read_parquet(trials)
    result = analyze(df)
    out = _out_dir(out, "--out")  # made once there is something to write
    comparison = compare(df, result, published) if published is not None else None
    for p in analysis.analyze_file(trials, out, result, comparison):
        print(p)
    for line in answer(result, df)["lines"]:  # the answer, as a sweep's end prints it
        print(line)
    return 0


def _published_table(path: str) -> pd.DataFrame:
    """A published table to compare with (``dashboards.paper.read_published``), read here so that a bad one fails
    before any analysis."""
    from dashboards.paper import read_published
    from .spec import SpecError

    file = Path(path)
    hint = "give a CSV with the columns method, task, mean, std (scores ×100), e.g. ../shared/paper/table1.csv"
    if not file.is_file():
        raise SpecError(f"--paper {path!r}: {'a folder' if file.is_dir() else 'no such file'}; {hint}")
    try:
        return read_published(file)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"--paper {exc}") from None


def _cmd_report(args) -> int:
    from dashboards.report import build_report
    from . import export

    from .spec import SpecError

    if args.trials and args.sweep_dir:
        raise SpecError("give SWEEP_DIR or --trials FILE.parquet, not both")
    if args.curves and not args.trials:
        raise SpecError("--curves goes with --trials FILE.parquet; a SWEEP_DIR's report reads the curves of its "
                        "own export")
    tracking_uri = None  # a trials file alone does not say where its runs are tracked
    published = _published_table(args.paper) if args.paper else None
    if args.trials:
        trials = _trials_file(args.trials, "--trials")
        curves = _trials_file(args.curves, "--curves", needed=["trial_key", "step"]) if args.curves else None
        out = _out_dir(args.out, "--out") if args.out else trials.parent / "report"
    elif args.sweep_dir:
        spec = _load_sweep(args.sweep_dir)
        out = _out_dir(args.out, "--out") if args.out else spec.sweep_dir / "report"
        trials, curves = export.export(spec, spec.sweep_dir / "export")
        tracking_uri = spec.resolved_tracking_uri
    else:
        raise SpecError("give SWEEP_DIR or --trials FILE.parquet")
    print(build_report(trials, curves, out, tracking_uri=tracking_uri, published=published))
    return 0


def _cmd_load(args) -> int:
    """A finished trial's model (base + its delta) as a ready folder: from an MLflow run or a local folder."""
    import re
    import tempfile

    from trainables import load_finetuned, save_finetuned
    from trainables.finetuned import check_out, read_meta

    from .preflight import undo_on_error
    from .spec import SpecError, check_tracking_uri

    source = Path(args.source)
    if not source.exists():
        if not re.fullmatch(r"[0-9a-f]{32}", args.source):
            raise SpecError(f"load {args.source!r}: neither a folder nor an MLflow run id (32 hex characters)")
        if not args.tracking_uri:
            raise SpecError("load RUN_ID needs --tracking-uri (e.g. sqlite:///runs/NAME/mlflow.db or "
                            "http://MLFLOW:5000)")
        check_tracking_uri(args.tracking_uri, "--tracking-uri")
    with undo_on_error(Path(args.out)), tempfile.TemporaryDirectory(prefix="peft-sweep-load-") as tmp:
        out = _out_dir(args.out, "--out")  # made now, removed again if the load fails
        if not source.exists():
            from .tracking import download_model

            source = download_model(args.tracking_uri, args.source, Path(tmp))
        check_out(out, read_meta(source)[2].get("trial_key"), args.force)  # before the base model is loaded
        net, tokenizer, meta = load_finetuned(source, model=args.model)
        print(save_finetuned(net, tokenizer, meta, out, force=args.force))
    return 0


def _out_dir(path: str, flag: str) -> Path:
    """The folder a command writes into, made now: where none can be made (a permission check passes for root,
    /proc refuses anyway), the command fails at once naming the flag, not after its work with a bare OSError."""
    from .preflight import check_writable_dir
    from .spec import SpecError

    check_writable_dir(Path(path), flag)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"{flag} {path!r}: cannot make the folder ({exc.strerror or exc})") from None
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
        reason = str(exc).splitlines()[0].split(". ")[0]  # pyarrow's first sentence, whole
        raise SpecError(f"{flag} {path!r} is not a Parquet file ({reason[:120]}); {hint}") from None
    missing = [c for c in (needed or NEEDED) if c not in names]
    if missing:
        raise SpecError(f"{flag} {path!r} lacks the columns {', '.join(missing)}; give a Parquet file, {hint}")
    return file


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written; an option's default shown where it has a real one (not None, False or [])."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == [] \
                or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Version(argparse.Action):
    """``--version``: what a bug report needs, the code_version every MLflow run carries and the versions of the
    libraries it runs on, read from their metadata (nothing imported, so it answers in a second)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version
        from .identity import code_version, git_commit

        commit = git_commit()
        lines = [f"peft-sweep {code_version()}" + (f" (git {commit})" if commit else ""),
                 f"python {sys.version.split()[0]}"]
        for lib in ("torch", "transformers", "peft", "ray", "mlflow", "datasets", "pydantic"):
            try:
                lines.append(f"{lib} {version(lib)}")
            except PackageNotFoundError:
                lines.append(f"{lib} not installed")
        print("\n".join(lines))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from trainables.config import TrainingConfig
    from .spec import DEFAULT_SPARSITY

    max_steps = TrainingConfig.model_fields["max_steps"].default
    p = argparse.ArgumentParser(prog="peft-sweep", description="Ray Tune sweeps of parameter-efficient "
                                "fine-tuning methods (Fu et al. 2023), tracked in MLflow, exported as Parquet.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_Version, help="the code's version and its libraries', then exit")
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name: str, text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=f"{text}.\n\n{textwrap.fill(description, 100)}",
                              formatter_class=_HelpFormatter)

    sets = dict(action="append", metavar="dotted.key=value", default=[],
                help="override a setting, e.g. training.max_steps=200 or methods.sam.burnin=8 (repeatable)")
    sweep_dir = "the sweep folder, <output_dir>/<name> (the path `peft-sweep run` printed)"

    s = command("train-one", "run one trial without Ray; prints its result as JSON on the last line",
                f"Trains, evaluates and tests one (task, method, seed, sparsity) on this machine, with the sweep "
                f"spec's defaults: {max_steps} training steps unless --set training.max_steps=N (on a CPU that "
                "is tens of minutes). Nothing is tracked in MLflow.")
    s.add_argument("--task", required=True, help="CoLA, STS-B, MRPC, RTE, CB, COPA or WSC (any capitalisation)")
    s.add_argument("--method", required=True, help="full, random, mixout, bitfit, magprune, adapter, lora, "
                   "diffprune, childprune or sam")
    s.add_argument("--sparsity", type=float, help="share p of trainable backbone entries, for the methods that "
                   f"take one (default: {DEFAULT_SPARSITY}, as in a sweep spec); the others take none")
    s.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and the method")
    s.add_argument("--perturbation", type=int, help="perturbation split k (drops a seeded 10%% of train)")
    s.add_argument("--model", default="minilm-l6", help="Hub id, local folder, or the alias minilm-l6 (embedded)")
    s.add_argument("--data-dir", help="folder of the original task files (default: $PEFT_SWEEP_DATA_DIR, "
                   "else the Hugging Face Hub)")
    s.add_argument("--checkpoint-dir", help="write a checkpoint at each evaluation here")
    s.add_argument("--set", **{**sets, "help": f"override a setting as in a sweep spec, e.g. training.max_steps=100 "
                                               f"(default {max_steps}) or methods.<--method>.lr=1e-3 (repeatable)"})
    s.set_defaults(fn=_cmd_train_one)

    s = command("tasks", "the seven tasks with metric, labels and split sizes under the protocol",
                "Reads the task files and prints each task's train/dev/test sizes as trials use them (dev split "
                "off train, the original dev set as test) and the perturbed train size.")
    s.add_argument("--data-dir", help="folder of the original task files (default: $PEFT_SWEEP_DATA_DIR, "
                   "else the Hugging Face Hub)")
    s.add_argument("--json", action="store_true", help="print the table as JSON")
    s.set_defaults(fn=_cmd_tasks)

    for name, fn, text, description in [
            ("validate", _cmd_validate, "check a sweep spec and count its trials; starts nothing",
             "Makes every check `run` makes before it starts anything (spec, paths, resources, model, data, "
             "tracking store, cluster, a driver already running the sweep, a changed spec under an existing "
             "sweep's name) and writes nothing. For an existing sweep it says what `run` would do: how many "
             "trials already FINISHED and how many it would run."),
            ("run", _cmd_run, "run a sweep; resumes an interrupted one and skips FINISHED trials",
             "Writes the sweep folder <output_dir>/<name> and runs every trial of the grid that has not "
             "FINISHED, resuming interrupted ones from their last checkpoint. Refuses to start while another "
             "driver runs the sweep, and refuses a spec that changes the results of an existing sweep of the "
             "same name (growing the grid is fine, and so is fixing or dropping a row none of whose trials "
             "finished) unless --force is given or the spec gets a new name. The cluster is ray.address, else "
             "$RAY_ADDRESS (which `ray job submit` sets for its job), else a local Ray of its own.")]:
        s = command(name, text, description)
        s.add_argument("config", help="sweep spec YAML, e.g. configs/quickstart.yaml")
        s.add_argument("--set", **sets)
        s.add_argument("--yes", action="store_true", help="accept a grid of more than 5000 trials")
        s.add_argument("--force", action="store_true",
                       help="run this spec under the name of an existing sweep even if it changed the results' "
                            "settings, and rerun all its trials, FINISHED ones included"
                            + (" (validate: check as `run --force` would)" if name == "validate" else ""))
        s.set_defaults(fn=fn)

    for name, fn, text, description in [
            ("rerun-failed", _cmd_rerun_failed, "rerun only the trials that ended in error",
             "Runs the sweep's FAILED trials again, with the sweep folder's saved spec; FINISHED "
             "and not yet run trials are left alone."),
            ("status", _cmd_status, "counts per status and per (method, task)",
             "Reads the local trial records and MLflow; the errors of FAILED trials are listed. With --watch, a "
             "live view from the sweep folder until no driver runs the sweep."),
            ("sync", _cmd_sync, "fill MLflow from the local trial records (after an outage)",
             "Trials the tracking store missed while it was down (ends, evaluations, stops) are written to it "
             "from the sweep folder's records; a parent run left RUNNING by a dead driver is closed."),
            ("export", _cmd_export, "write trials.parquet, curves.parquet and masks.parquet from MLflow and "
             "the local records",
             "One row per trial of the grid (status PENDING, source grid, for one not started yet) and per trial "
             "that started, also one no longer in the grid (trials.parquet, column in_grid), one per "
             "evaluation (curves.parquet) and one per saved mask (masks.parquet, with the masks/ files), read from "
             "the tracking store and the sweep folder's records (what the store missed while it was down).")]:
        s = command(name, text, description)
        s.add_argument("sweep_dir", help=sweep_dir)
        if name == "status":
            s.add_argument("--json", action="store_true", help="print the counts and errors as JSON; with --watch, "
                           "one JSON object per update (JSON Lines: counts, driver, elapsed_s, eta_s)")
            s.add_argument("--watch", action="store_true", help="a live view (done/running/failed/queued, "
                           "trials per hour, ETA) until no driver runs the sweep")
            s.add_argument("--interval", type=float, help=f"seconds between updates, with --watch "
                           f"(default: {WATCH_INTERVAL:g})")
        if name == "export":
            s.add_argument("--out", help="folder for the Parquet files (default: SWEEP_DIR/export)")
        s.set_defaults(fn=fn)

    s = command("list", "the sweeps in a folder: trials per status, start time, driver alive",
                "One line per sweep folder directly under OUTPUT_DIR, read from the folders (not MLflow).")
    s.add_argument("output_dir", nargs="?", default="runs", help="a spec's output_dir")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.set_defaults(fn=_cmd_list)

    s = command("stop", "stop a running sweep cleanly: running trials stay resumable, nothing is left RUNNING "
                "in MLflow", "Asks the sweep's driver to stop and waits for it; `peft-sweep run` with the same "
                "spec resumes the stopped trials from their last checkpoints. With --drain the running trials "
                "finish first and no new trial starts; the driver then ends (exit 0) and the trials that did not "
                "start run on the next `peft-sweep run`.")
    s.add_argument("sweep_dir", help=sweep_dir)
    s.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the driver (with --drain: "
                   "for the running trials to finish; if they have not, the drain goes on and the command exits 1)")
    s.add_argument("--drain", action="store_true", help="let the running trials finish and start no new ones "
                   "instead of stopping them (a time-boxed run that wastes no started trial); a later `stop` "
                   "without --drain stops the rest at once")
    s.set_defaults(fn=_cmd_stop)

    s = command("load", "rebuild a finished trial's fine-tuned model (base + delta) into a folder",
                "The folder holds the model, its tokenizer and finetuned.json (the trial's settings and scores); "
                "load it in Python with trainables.load_finetuned(DIR), which returns (model, tokenizer, "
                "settings). Its model.safetensors is this tool's model (backbone and task head), not a "
                "transformers layout: AutoModel.from_pretrained would load it with fresh random weights.")
    s.add_argument("source", help="an MLflow run id of a finished trial, or a folder holding its model/ delta")
    s.add_argument("--tracking-uri", help="where the run is (with RUN_ID), e.g. sqlite:///runs/NAME/mlflow.db")
    s.add_argument("--out", required=True, help="folder for the model, its tokenizer and finetuned.json")
    s.add_argument("--model", help="where to find the base model, if not where it was trained from "
                   "(checked by hash)")
    s.add_argument("--force", action="store_true", help="write into --out even if it holds another model or files")
    s.set_defaults(fn=_cmd_load)

    s = command("analyze", "mean/std, ranks, Spearman rho of a sweep or a trials Parquet file",
                "Writes table.csv, the rank tables and summary.json (the paper's stability analysis) into --out, "
                "then prints the answer (best on average, its lead, most stable). From a sweep folder it exports "
                "afresh into SWEEP_DIR/export first, as `report` does. With --paper, also ours beside a published "
                "table (paper_comparison.csv) and the paper's claims answered with numbers (claims.json, and "
                "claims.md for a results page).")
    s.add_argument("sweep_dir", nargs="?", help=f"{sweep_dir}; or give --trials")
    s.add_argument("--trials", help="a trials.parquet from `peft-sweep export`, instead of a sweep folder")
    s.add_argument("--paper", metavar="CSV", help="a published table to compare with: columns method, task, mean, "
                   "std (scores ×100), e.g. ../shared/paper/table1.csv (Fu et al.'s Table 1); its method names "
                   "match ours blind to case (FullTuning = full, MagPruning = magprune)")
    s.add_argument("--out", help="folder for the analysis files (default: SWEEP_DIR/analysis for a sweep's "
                   "export/trials.parquet, else the trials file's folder: where `report` looks for them)")
    s.set_defaults(fn=_cmd_analyze)

    s = command("report", "static HTML report (tables and figures) of a sweep or a trials file",
                "From a sweep folder (exported afresh into SWEEP_DIR/export first) or from --trials (with the "
                "masks.parquet beside it and, if given, --curves).")
    s.add_argument("sweep_dir", nargs="?", help=f"{sweep_dir}; or give --trials")
    s.add_argument("--trials", help="trials.parquet instead of a sweep folder")
    s.add_argument("--curves", help="curves.parquet to go with --trials")
    s.add_argument("--paper", metavar="CSV", help="a published table to show ours beside, with the paper's claims "
                   "answered (as `analyze --paper`), e.g. ../shared/paper/table1.csv")
    s.add_argument("--out", help="folder for the report (default: SWEEP_DIR/report, or report/ beside --trials)")
    s.set_defaults(fn=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)

    try:
        return args.fn(args)
    except BrokenPipeError:  # `peft-sweep status DIR | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else the flush at exit raises again
        return 0
    except Exception as exc:
        if os.environ.get("PEFT_SWEEP_DEBUG"):  # the full traceback instead of the one-line message
            raise
        return _explain(args, exc)


def _explain(args, exc: BaseException) -> int:
    """Bad input (a spec, a data file, a model, an unreachable store or cluster) gets one line and exit 2;
    anything else is a bug and keeps its traceback."""
    from trainables.loop import TrainingDiverged
    from trainables.models import ModelError
    from trainables.tasks import DataError
    from .spec import ClusterError, SpecError
    from .tracking import TrackingError

    if isinstance(exc, TrainingDiverged):  # the trial ran and failed (exit 1), as a sweep's trial would
        print(f"peft-sweep {args.cmd}: trial failed: {exc}", file=sys.stderr)
        return 1
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
